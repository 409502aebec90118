"""This month against last month (gateway/billing/compare.py), and a run kept as JSON and read
back exactly (gateway/billing/stored.py)."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal

import openpyxl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from gateway.billing.compare import Change, changes, compare, flag, previous_month
from gateway.billing.monthly import run_month
from gateway.billing.stored import dumps, loads
from gateway.cli import app
from gateway.events import Reading
from gateway.ledger import Ledger

from test_billing_allocate import make_site
from test_billing_report import build

D = Decimal
SEP = datetime(2026, 8, 31, 16, 0, tzinfo=timezone.utc)          # 2026-09-01 00:00 in Shanghai
NOW = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)


def test_the_band_is_beyond_not_at():
    band = D("0.30")
    assert not flag(D("100"), D("130"), band) and flag(D("100"), D("130.01"), band)
    assert not flag(D("100"), D("70"), band) and flag(D("100"), D("69.99"), band)
    assert flag(None, D("1"), band) and flag(D("1"), None, band)        # new, gone
    assert not flag(None, D("0"), band) and not flag(D(0), D(0), band)
    assert flag(D(0), D("0.01"), band)


@given(last=st.decimals(min_value=D("0.01"), max_value=D("100000"), places=2),
       this=st.decimals(min_value=D("0"), max_value=D("100000"), places=2),
       band=st.decimals(min_value=D("0.01"), max_value=D("5"), places=2))
def test_flagged_exactly_when_the_change_exceeds_the_band(last, this, band):
    c = Change("x", "x", last, this, flag(last, this, band))
    assert c.flagged == (abs(c.ratio) > band)
    assert c.delta == this - last


def test_changes_keep_this_months_order_and_list_what_is_gone():
    got = changes({"a": D(1), "gone": D(5)}, {"b": D(2), "a": D(1)}, {"a": "A"}, D("0.3"))
    assert [(c.key, c.name, c.last, c.this, c.flagged) for c in got] == [
        ("b", "b", None, D(2), True), ("a", "A", D(1), D(1), False), ("gone", "gone", D(5), None, True)]


def test_previous_month():
    assert previous_month("2026-10") == "2026-09" and previous_month("2026-01") == "2025-12"


def test_without_last_month_there_is_nothing_to_flag():
    c = compare(build(), D("0.3"), "2026-09", None, False, None, [])
    assert c.groups == c.households == [] and c.run is None


def test_households_without_charges_last_month_paid_nothing():
    r = build()
    first = r.households[0]
    charges = [(c.household.id, g, str(a)) for c in r.households[1:] for g, a in c.lines.items()]
    summary = '{"groups": [' + ",".join(f'{{"id": "{g.id}", "name": "{g.name}", "amount": "{g.amount}"}}'
                                        for g in r.groups) + "]}"
    c = compare(r, D("0.3"), "2026-09", 4, True, summary, charges)
    assert [g.flagged for g in c.groups] == [False] * len(r.groups)
    homes = {h.key: h for h in c.households}
    assert homes[first.household.id].last == 0 and homes[first.household.id].flagged
    assert [h.key for h in c.flagged_households] == [first.household.id]


# ---- two months through the ledger ---------------------------------------------------------------------

def fill_two_months(cfg, september: dict[str, str], october: dict[str, str]) -> None:
    ledger = Ledger(cfg.storage_path)
    october_starts = SEP + timedelta(days=30)
    for m in cfg.meters:
        c, t = D("1000.00"), SEP - timedelta(hours=1)
        while t <= october_starts + timedelta(days=31, hours=1):
            ledger.add(Reading(m.id, t, {"energy_kwh": float(c)}, {"energy_kwh": c}))
            c += D((september if t < october_starts else october)[m.id])
            t += timedelta(minutes=15)
    ledger.flush()
    ledger.close()


def test_a_month_is_compared_with_last_months_answer(tmp_path):
    cfg = make_site(tmp_path)
    same = {"A-stair": "0.10", "B-stair": "0.20", "A-lift1": "1.00", "GATE": "0.05", "MAIN": "3.50"}
    fill_two_months(cfg, {**same, "SL1": "1.00"}, {**same, "SL1": "2.00"})     # the street lights doubled
    site = str(tmp_path / "site.yaml")
    res = CliRunner().invoke(app, ["allocate", "-c", site, "--month", "2026-09", "--out", str(tmp_path / "sep")])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--out", str(tmp_path / "oct")])
    assert res.exit_code == 0, res.output
    # the street-light group (路灯) doubles; every household shares it, by floor area, with other groups
    def totals(path):
        return {r[1]: D(r[7]) for r in (line.split(",") for line in
                                         path.read_text(encoding="utf-8-sig").splitlines()[1:])}
    last, this = totals(tmp_path / "sep" / "allocation-2026-09.csv"), totals(tmp_path / "oct" / "allocation-2026-10.csv")
    beyond = sorted(h for h in this if abs(this[h] - last[h]) > D("0.3") * last[h])
    assert 0 < len(beyond) < 5
    assert f"compared with 2026-09 (run 1, a draft): 1 of 5 groups and {len(beyond)} of 5 households changed by " \
           f"more than ±30 %" in res.output
    wb = openpyxl.load_workbook(tmp_path / "oct" / "allocation-2026-10-run2.xlsx")
    rows = list(wb["与上月比较"].iter_rows(values_only=True))
    assert rows[0] == ("组号", "名称", "上月(元)", "本月(元)", "变化(元)", "变化率", "标记")
    assert rows[1][0] == "上月(2026-09)第 1 次分摊,草稿,未批准"
    groups = {r[0]: r for r in rows if r[0] in ("estate", "stair-A", "gate")}
    assert groups["estate"][6] == "超出" and groups["estate"][5].startswith("+")
    assert groups["stair-A"][6] is None and groups["gate"][6] is None
    html = (tmp_path / "oct" / "allocation-2026-10-run2.html").read_text(encoding="utf-8")
    section = html[html.index('<section class="comparison"'):]
    assert 'class="flag" data-group="estate"' in section and 'data-group="stair-A"' in section
    assert sorted(h for h in this if f'class="flag" data-household="{h}"' in section) == beyond
    assert f"1 个分摊组、{len(beyond)} 户变化超出 ±30 %" in section
    # the band is the site's: wide enough, nothing is flagged
    (tmp_path / "site.yaml").write_text((tmp_path / "site.yaml").read_text(encoding="utf-8").replace(
        "  difference_rule:", "  change_band: 1.5\n  difference_rule:"), encoding="utf-8")
    res = CliRunner().invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--out", str(tmp_path / "oct")])
    assert "0 of 5 groups and 0 of 5 households changed by more than ±150 %" in res.output


# ---- a run kept and read back ----------------------------------------------------------------------------

@pytest.mark.parametrize("with_bill", [True, False])
def test_a_result_reads_back_exactly(with_bill):
    r = build(with_bill=with_bill)
    r.placeholder_tariffs = ["吉林峰谷电价2026"]
    r.waived = [("按 --force 分摊", "allocated with --force")]
    back = loads(dumps(r))
    assert back == r
    assert back.start.tzinfo is not None and str(back.start.tzinfo) == "Asia/Shanghai"
    assert back.households[0].lines == r.households[0].lines
    assert all(type(v) is Decimal for v in back.households[0].lines.values())


def test_a_month_kept_in_the_ledger_reads_back_exactly(tmp_path):
    cfg = make_site(tmp_path)
    fill_two_months(cfg, {m.id: "0.10" for m in cfg.meters}, {m.id: "0.20" for m in cfg.meters})
    run = run_month(cfg, "2026-10", tmp_path / "out", now=NOW)
    ledger = Ledger(cfg.storage_path)
    try:
        assert loads(ledger.allocation_result(run.run_id)) == run.result
    finally:
        ledger.close()
