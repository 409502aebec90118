"""The golden month: a generated month of the example site, allocated with a bill, must give
exactly the checked-in household file and summary (tools/make_golden_month.py writes them)."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

from make_golden_month import GOLDEN, MONTH, golden_month  # noqa: E402


@pytest.fixture(scope="module")
def month(tmp_path_factory):
    return golden_month(tmp_path_factory.mktemp("golden"))


def test_every_meter_matches_the_generators_truth(month):
    result, _, _, truth = month
    kwh = {m.meter: m.kwh for m in result.meters + result.reference}
    assert kwh == truth.consumption_kwh
    planted = {("rejected_spike" if f.kind == "spike" else f.kind, f.meter) for f in truth.faults}
    assert len(planted) == 4
    assert planted <= {(q.kind, q.meter) for q in result.quality}


def test_household_file_is_the_golden_one(month):
    result, csv_text, _, _ = month
    golden = (GOLDEN / f"allocation-{MONTH}.csv").read_text(encoding="utf-8")
    lines, want = csv_text.splitlines(), golden.splitlines()
    assert len(lines) == len(want) == len(result.households) + 1
    diff = [(i + 1, a, b) for i, (a, b) in enumerate(zip(lines, want)) if a != b]
    assert diff == [], f"{len(diff)} lines differ, first: {diff[:3]}"


def test_summary_is_the_golden_one(month):
    _, _, summary, _ = month
    golden = json.loads((GOLDEN / f"allocation-{MONTH}.json").read_text(encoding="utf-8"))
    assert json.loads(json.dumps(summary, ensure_ascii=False)) == golden
    assert summary["recovered"] == summary["bill"]


def test_every_household_is_within_a_fen_of_its_exact_share(month):
    from fractions import Fraction

    from test_billing_allocate import exact_fen

    result, _, _, _ = month
    totals, lines = exact_fen(result, {c.household.id: c.household for c in result.households})
    off = [c.household.id for c in result.households if abs(Fraction(c.total) * 100 - totals[c.household.id]) >= 1]
    assert off == []
    assert all(abs(Fraction(a) * 100 - lines[c.household.id, g]) < 1 for c in result.households
               for g, a in c.lines.items())


def test_each_fee_item_column_adds_up_to_its_groups(month):
    """The household file has one column per fee item: each adds up to the golden summary's
    amounts of the groups billed as that item, and each row to the household's amount."""
    import csv
    from decimal import Decimal

    result, csv_text, _, _ = month
    golden = json.loads((GOLDEN / f"allocation-{MONTH}.json").read_text(encoding="utf-8"))
    header, *rows = list(csv.reader(csv_text.splitlines()))
    items = {}
    for g in result.groups:
        items.setdefault(g.fee_item_name, []).append(g.id)
    assert header[8:] == [f"{name}(元)" for name in items]
    assert len(items) == 4 and len(result.groups) > 4            # per-building groups share one column
    for i, (name, groups) in enumerate(items.items()):
        column = sum(Decimal(r[8 + i]) for r in rows)
        assert column == sum(Decimal(golden["groups"][g]["amount"]) for g in groups), name
    assert all(sum(Decimal(v) for v in r[8:]) == Decimal(r[7]) for r in rows)
