"""Tariffs, rounding to the fen and the monthly allocation through a real ledger and the CLI."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gateway.billing.allocate import AllocationError, allocate, parse_bill
from gateway.billing.model import FEN
from gateway.billing.shares import largest_remainder, to_fen
from gateway.billing.tariffs import TariffError, plan_month, split_by_minutes
from gateway.cli import app
from gateway.config import ConfigError, Tariff, load_site, parse_site
from gateway.events import Reading
from gateway.ledger import Ledger, Replacement

D = Decimal
ZERO = D(0)
JILIN = {"peak": ["08:00-10:00", "16:00-21:00"],
         "flat": ["05:00-08:00", "10:00-11:00", "14:00-16:00", "21:00-23:00"],
         "valley": ["00:00-05:00", "11:00-14:00", "23:00-24:00"]}


# ---- tariffs ------------------------------------------------------------------------------------

def tariff(**kw) -> Tariff:
    return Tariff.model_validate(kw)


def test_price_change_at_midnight_of_the_15th():
    old = tariff(name="old", valid_from="2026-01-01", valid_until="2026-10-15", price="0.50")
    new = tariff(name="new", valid_from="2026-10-15", price="0.60")
    plan = plan_month("2026-10", "Asia/Shanghai", [old, new])
    assert plan.slots == 31 * 96
    names = [plan.uses[parts[0][0]].tariff for parts in plan.slot_uses]
    assert names[:14 * 96] == ["old"] * (14 * 96) and names[14 * 96:] == ["new"] * (17 * 96)
    assert plan.slot_start(14 * 96) == datetime(2026, 10, 15, tzinfo=plan.tz)


def test_jilin_periods_by_local_time():
    plan = plan_month("2026-10", "Asia/Shanghai", [tariff(name="t", valid_from="2025-02-01",
                                                          prices={"peak": "0.8", "flat": "0.5", "valley": "0.3"},
                                                          periods=JILIN)])
    day = [plan.uses[p[0][0]].period for p in plan.slot_uses[:96]]
    assert day.count("peak") == 7 * 4 and day.count("flat") == 8 * 4 and day.count("valley") == 9 * 4
    assert day[8 * 4] == "peak" and day[8 * 4 - 1] == "flat" and day[23 * 4] == "valley"


def test_slot_spanning_a_period_boundary_is_split_by_minutes():
    t = tariff(name="t", valid_from="2026-01-01", prices={"day": "1.00", "night": "0.40"},
               periods={"night": ["00:00-08:10"], "day": ["08:10-24:00"]})
    plan = plan_month("2026-10", "Asia/Shanghai", [t])
    parts = plan.slot_uses[8 * 4]                    # 08:00-08:15: 10 night minutes, 5 day minutes
    assert sorted((plan.uses[u].period, n) for u, n in parts) == [("day", 5), ("night", 10)]
    split = split_by_minutes(D("0.30"), parts)
    assert sum(k for _, k in split) == D("0.30")
    assert {plan.uses[u].period: k for u, k in split} == {"night": D("0.200000000"), "day": D("0.100000000")}


def test_month_of_a_daylight_saving_change_has_its_own_slot_count():
    plan = plan_month("2026-10", "Europe/Berlin", [tariff(name="t", valid_from="2026-01-01", price="0.3")])
    assert plan.slots == 31 * 96 + 4                  # 25 October has 25 hours
    assert plan.slot_day[-1] == 30


def test_a_month_without_a_tariff_says_which_day():
    with pytest.raises(TariffError, match="no tariff for 2026-10-15"):
        plan_month("2026-10", "Asia/Shanghai", [tariff(name="t", valid_from="2026-01-01", valid_until="2026-10-15",
                                                       price="0.3")])
    with pytest.raises(TariffError, match="not a month"):
        plan_month("2026-13", "Asia/Shanghai", [])


@pytest.mark.parametrize("bad, message", [
    ({"price": "0.5", "prices": {"a": "1"}, "periods": {"a": ["00:00-24:00"]}}, "either 'price'"),
    ({"prices": {"a": "1", "b": "2"}, "periods": {"a": ["00:00-12:00"], "b": ["11:00-24:00"]}}, "overlaps"),
    ({"prices": {"a": "1"}, "periods": {"a": ["00:00-12:00"]}}, "12:00 has no period"),
    ({"prices": {"a": "1"}, "periods": {"b": ["00:00-24:00"]}}, "same periods"),
    ({"price": "0.5", "valid_until": "2025-01-01"}, "not after valid_from"),
])
def test_bad_tariffs_are_explained(bad, message):
    with pytest.raises(ValueError, match=message):
        tariff(name="t", valid_from="2026-01-01", **bad)


def test_overlapping_tariffs_are_refused_in_the_site_file(tmp_path):
    data = {"site": {"id": "s", "name": "s", "latitude": 44, "longitude": 125},
            "tariffs": [{"name": "a", "valid_from": "2026-01-01", "price": "0.5"},
                        {"name": "b", "valid_from": "2026-06-01", "price": "0.6"}]}
    with pytest.raises(ConfigError) as e:
        parse_site(data, tmp_path)
    assert any("'a' (from 2026-01-01) overlaps 'b'" in p for p in e.value.problems)


# ---- rounding -----------------------------------------------------------------------------------

@given(st.integers(-10**9, 10**9), st.lists(st.decimals(0, 10**6, places=3), min_size=1, max_size=60))
def test_largest_remainder_adds_up_and_stays_within_a_fen(total, weights):
    if sum(weights) == 0:
        weights = weights[:-1] + [D(1)]
    parts = largest_remainder(total, weights)
    assert sum(parts) == total
    whole = sum(weights)
    for p, w in zip(parts, weights):
        assert abs(D(p) - D(total) * w / whole) < 1


def test_to_fen_rounds_half_up():
    assert to_fen(D("0.005")) == 1 and to_fen(D("0.0049")) == 0 and to_fen(D("12.345")) == 1235


def test_bill_must_be_yuan_to_the_fen():
    assert parse_bill("12,345.67") == D("12345.67")
    for bad in ("12.345", "abc", "-1", "NaN"):
        with pytest.raises(AllocationError):
            parse_bill(bad)


@pytest.mark.parametrize("text, reason", [
    ("0", "'0': the bill must be more than 0 (to recover the metered cost, leave the bill out)"),
    ("0.00", "the bill must be more than 0"),
    ("-5", "'-5': the bill must be more than 0, not negative"),
    ("-0.001", "not negative"),
    ("1e-3", "two decimals at most"),
    ("Infinity", "is not an amount in yuan"),
    ("1,2,3", "is not an amount in yuan"),
    ("1e400", "is not an amount in yuan"),
])
def test_a_refused_bill_says_why(text, reason):
    with pytest.raises(AllocationError) as e:
        parse_bill(text)
    assert len(e.value.problems) == 1 and reason in e.value.problems[0]


def test_bills_are_kept_in_canonical_form():
    for text, canonical in (("1e3", "1000.00"), ("12,345.6", "12345.60"), (" 5 ", "5.00"), ("+0.5", "0.50"),
                            ("1.2E+3", "1200.00"), ("51234.560", "51234.56")):
        bill = parse_bill(text)
        assert str(bill) == canonical and bill.as_tuple().exponent == -2


def test_a_bill_far_from_the_meters_needs_force(tmp_path):
    cfg = make_site(tmp_path)
    ledger = fill(cfg)
    r = allocate(cfg, ledger, "2026-10")
    metered, main = r.metered_cost, r.reference[0].cost        # MAIN sees 3.5 of the sub-meters' 3.35 kWh
    assert allocate(cfg, ledger, "2026-10", bill=(main * D("1.1")).quantize(FEN)).waived == []
    for bill, why in (((main * D("2.46")).quantize(FEN), "2.46× the main meter MAIN's metered cost"),
                      ((metered * D("0.75")).quantize(FEN), "0.75× the sub-meters' metered cost")):
        with pytest.raises(AllocationError) as e:
            allocate(cfg, ledger, "2026-10", bill=bill)
        assert any(why in p and p.endswith("check the bill, or give --force to allocate it anyway")
                   for p in e.value.problems), e.value.problems
        forced = allocate(cfg, ledger, "2026-10", bill=bill, force=True)
        assert forced.recovered == bill and any(why in en for _, en in forced.waived)
        assert forced.note_texts("en")[0].startswith("allocated with --force: the bill")
    with pytest.raises(AllocationError, match="must be more than 0"):
        allocate(cfg, ledger, "2026-10", bill=D(0))
    ledger.close()
    # the band is the site's: ±200 % lets 2.46x through
    text = (tmp_path / "site.yaml").read_text(encoding="utf-8")
    (tmp_path / "site.yaml").write_text(text.replace("  difference_rule:", "  bill_tolerance: 2\n  difference_rule:"),
                                        encoding="utf-8")
    cfg = load_site(tmp_path / "site.yaml")
    ledger = Ledger(cfg.storage_path)
    assert allocate(cfg, ledger, "2026-10", bill=(main * D("2.46")).quantize(FEN)).waived == []
    ledger.close()


def test_cli_keeps_the_bill_in_canonical_form(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    site = str(tmp_path / "site.yaml")
    res = CliRunner().invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--bill", "5.4e3", "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    assert "bill 5400.00 (difference +5.16)" in res.output
    ledger = Ledger(cfg.storage_path)
    assert ledger.allocations()[0][5] == "5400.00"
    ledger.close()
    for bad, why in (("0", "the bill must be more than 0"), ("-5", "not negative")):
        res = CliRunner().invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--bill", bad])
        assert res.exit_code == 2 and why in res.output and "two decimals" not in res.output


# ---- the allocation through a ledger ------------------------------------------------------------

SITE = """
site: {{id: t, name: 测试小区, timezone: Asia/Shanghai, latitude: 44.15, longitude: 125.83}}
storage: {{path: gw.db}}
buses: [{{id: b1, type: modbus_tcp, host: 127.0.0.1}}]
meters:
  - {{id: A-stair, bus: b1, unit: 1, model: chint-ddsu666, circuit: stairwell_lighting, building: A}}
  - {{id: B-stair, bus: b1, unit: 2, model: chint-ddsu666, circuit: stairwell_lighting, building: B}}
  - {{id: A-lift1, bus: b1, unit: 3, model: chint-dtsu666, circuit: lift, building: A, unit_no: '1'}}
  - {{id: SL1, bus: b1, unit: 4, model: chint-ddsu666, circuit: street_lighting}}
  - {{id: GATE, bus: b1, unit: 5, model: chint-ddsu666, circuit: gate}}
  - {{id: MAIN, bus: b1, unit: 6, model: chint-dtsu666, circuit: main_supply}}
tariffs:
  - {{name: old, valid_from: 2026-01-01, valid_until: 2026-10-15, price: '0.50'}}
  - {{name: new, valid_from: 2026-10-15, prices: {{peak: '0.90', flat: '0.60', valley: '0.30'}},
     periods: {{peak: ['08:00-10:00', '16:00-21:00'], flat: ['05:00-08:00', '10:00-11:00', '14:00-16:00', '21:00-23:00'],
               valley: ['00:00-05:00', '11:00-14:00', '23:00-24:00']}}}}
allocation:
  difference_rule: {rule}
  groups:
    - {{id: stair, name: 楼道照明, scope: building, circuits: [stairwell_lighting], key: area}}
    - {{id: lift, name: 电梯, scope: unit, circuits: [lift], key: household, vacant: exclude}}
    - {{id: estate, name: 路灯, scope: estate, circuits: [street_lighting], key: area}}
    - {{id: gate, name: 门岗, scope: estate, meters: [GATE], key: fixed, shares: {{A-1-101: 1, B-1-101: 3}}}}
"""
HOUSEHOLDS = """id,building,unit,room,floor_area_m2,occupied
A-1-101,A,1,101,60.5,1
A-1-102,A,1,102,80,0
A-2-101,A,2,101,55.25,1
B-1-101,B,1,101,90,1
B-1-102,B,1,102,45.7,是
"""
START = datetime(2026, 9, 30, 16, 0, tzinfo=timezone.utc)      # 2026-10-01 00:00 in Shanghai


def make_site(tmp_path: Path, rule: str = "by_cost", households: str = HOUSEHOLDS):
    (tmp_path / "site.yaml").write_text(SITE.format(rule=rule), encoding="utf-8")
    (tmp_path / "households.csv").write_text(households, encoding="utf-8")
    return load_site(tmp_path / "site.yaml")


def fill(cfg, minutes=15, use=None, skip=lambda m, t: False, shown=lambda m, t, c: c):
    """Every meter read every `minutes` from an hour before the month to an hour after it;
    `shown` is what the meter's counter says when it uses `c` kWh in all."""
    use = use or {"A-stair": "0.10", "B-stair": "0.20", "A-lift1": "1.00", "SL1": "2.00", "GATE": "0.05",
                  "MAIN": "3.50"}
    ledger = Ledger(cfg.storage_path)
    for m in cfg.meters:
        c, t = D("1000.00"), START - timedelta(hours=1)
        while t <= START + timedelta(days=31, hours=1):
            if not skip(m.id, t):
                v = shown(m.id, t, c)
                ledger.add(Reading(m.id, t, {"energy_kwh": float(v)}, {"energy_kwh": v}))
            c += D(use[m.id])
            t += timedelta(minutes=minutes)
    ledger.flush()
    return ledger


def test_allocation_adds_up_to_the_fen_and_follows_each_key(tmp_path):
    cfg = make_site(tmp_path)
    ledger = fill(cfg)
    r = allocate(cfg, ledger, "2026-10")
    slots = 31 * 96
    kwh = {m.meter: m.kwh for m in r.meters}
    assert kwh == {"A-stair": D("0.10") * slots, "B-stair": D("0.20") * slots, "A-lift1": D("1.00") * slots,
                   "SL1": D("2.00") * slots, "GATE": D("0.05") * slots}
    assert [m.meter for m in r.reference] == ["MAIN"]
    # 14 days at 0.50 flat, 17 days of time of use (7 h peak, 8 h flat, 9 h valley a day)
    per_kwh_day = 14 * 96 * D("0.50") + 17 * 4 * (7 * D("0.90") + 8 * D("0.60") + 9 * D("0.30"))
    assert r.metered_cost == per_kwh_day * (D("0.10") + D("0.20") + D("1.00") + D("2.00") + D("0.05"))
    assert r.recovered == r.metered_cost.quantize(FEN)
    assert sum(c.total for c in r.households) == r.recovered
    groups = {g.id: g for g in r.groups}
    assert set(groups) == {"stair-A", "stair-B", "lift-A-1", "estate", "gate"}
    assert sum(g.amount for g in r.groups) == r.recovered
    assert groups["lift-A-1"].households == ["A-1-101"]             # vacant A-1-102 excluded, A-2 not in unit 1
    lines = {c.household.id: c.lines for c in r.households}
    assert lines["A-1-101"]["lift-A-1"] == groups["lift-A-1"].amount
    assert "stair-A" not in lines["B-1-101"]
    a = lines["A-1-102"]["stair-A"] / lines["A-2-101"]["stair-A"]     # by floor area: 80 : 55.25
    assert abs(a - D(80) / D("55.25")) < D("0.001")
    a_fen, b_fen = largest_remainder(to_fen(groups["gate"].amount), [D(1), D(3)])
    assert (lines["A-1-101"]["gate"], lines["B-1-101"]["gate"]) == (a_fen * FEN, b_fen * FEN)
    assert abs(b_fen - 3 * a_fen) <= 3
    assert "gate" not in lines["A-2-101"]
    assert r.quality == []


def test_bill_difference_by_cost_and_by_area(tmp_path):
    cfg = make_site(tmp_path)
    ledger = fill(cfg)
    # prices below 0.10 yuan/kWh are implausible (--force) but still have to add up
    metered = allocate(cfg, ledger, "2026-10", force=True).metered_cost
    bill = (metered * D("1.05")).quantize(FEN)
    r = allocate(cfg, ledger, "2026-10", bill=bill)
    assert r.recovered == bill and r.difference == bill - metered
    assert sum(g.difference_share for g in r.groups) == r.difference
    ledger.close()
    (tmp_path / "area").mkdir()
    cfg = make_site(tmp_path / "area", rule="by_area")
    ledger = fill(cfg)
    r2 = allocate(cfg, ledger, "2026-10", bill=bill)
    assert r2.recovered == bill
    diff = next(g for g in r2.groups if g.id == "difference")
    assert diff.amount == bill - metered.quantize(FEN) and len(diff.households) == 5
    assert sum(c.total for c in r2.households) == bill


def test_gap_replacement_and_spike_show_in_data_quality(tmp_path):
    cfg = make_site(tmp_path)
    gap = (START + timedelta(days=8), START + timedelta(days=8, hours=6))
    swap = START + timedelta(days=14, minutes=7)

    def shown(m, t, c):
        if m == "A-stair" and t > swap:
            return c - D("1134.84")          # the new meter started at 0 when the old one said 1134.84
        if m == "GATE" and t == START + timedelta(days=20):
            return D("99999.00")             # one impossible reading
        return c
    ledger = fill(cfg, skip=lambda m, t: m == "SL1" and gap[0] < t < gap[1], shown=shown)
    ledger.record_replacement(Replacement("A-stair", swap, D("1134.84"), D("0.00"), "electrician", "", START))
    r = allocate(cfg, ledger, "2026-10")
    kinds = {(q.kind, q.meter) for q in r.quality}
    # the rejected reading leaves GATE 30 minutes without a usable reading: interpolated too
    assert kinds == {("gap", "SL1"), ("replacement", "A-stair"), ("rejected_spike", "GATE"), ("gap", "GATE")}
    m = {x.meter: x for x in r.meters}
    assert m["SL1"].estimated_kwh == D("48.00") and m["SL1"].kwh == D("2.00") * 31 * 96
    assert m["A-stair"].kwh == D("0.10") * 31 * 96
    assert m["GATE"].kwh == D("0.05") * 31 * 96


def test_configuration_problems_are_listed(tmp_path):
    cfg = make_site(tmp_path, households="id,building,unit,room,floor_area_m2,occupied\nA-1-101,A,1,101,60,1\n")
    ledger = fill(cfg)
    with pytest.raises(AllocationError) as e:
        allocate(cfg, ledger, "2026-10")
    text = "\n".join(e.value.problems)
    assert "no households share stair-B (building B)" in text
    assert "no household B-1-101" in text


# ---- property: any households, areas, keys and prices add up --------------------------------------

def exact_fen(r, homes) -> tuple[dict, dict]:
    """Each household's exact share of what is recovered, and of each group, in fen (fractions):
    a group's exact amount (its metered cost; scaled by bill / metered cost by_cost; the bill less
    the metered cost for the by_area line) split by its key."""
    metered = Fraction(r.metered_cost)
    totals, lines = {h: Fraction(0) for h in homes}, {}
    for g in r.groups:
        if g.id == "difference":
            amount = Fraction(r.bill) - metered
        elif r.bill is not None and r.difference_rule == "by_cost":
            amount = Fraction(g.metered_cost) * Fraction(r.bill) / metered
        else:
            amount = Fraction(g.metered_cost)
        w = {h: Fraction(homes[h].area_m2) if g.key == "area" else Fraction(1) for h in g.households}
        whole = sum(w.values())
        for h in g.households:
            lines[h, g.id] = amount * w[h] / whole * 100
            totals[h] += lines[h, g.id]
    return totals, lines


@settings(max_examples=40, deadline=None)
@given(areas=st.lists(st.decimals(D("20"), D("200"), places=2), min_size=2, max_size=30),
       keys=st.sampled_from(["area", "household"]),
       rule=st.sampled_from(["by_cost", "by_area"]),
       price=st.decimals(D("0.01"), D("3"), places=4),
       use=st.decimals(D("0"), D("5"), places=2),
       bill_factor=st.one_of(st.none(), st.decimals(D("0.8"), D("1.3"), places=3)))
def test_any_households_add_up_exactly(tmp_path_factory, areas, keys, rule, price, use, bill_factor):
    tmp = tmp_path_factory.mktemp("prop")
    rows = "".join(f"H{i},{'A' if i % 2 else 'B'},1,{i},{a},{i % 3 != 0:d}\n" for i, a in enumerate(areas))
    site = SITE.format(rule=rule).replace("key: area}", f"key: {keys}}}").replace("'0.50'", f"'{price}'")
    site = site[:site.index("    - {id: gate")]
    (tmp / "site.yaml").write_text(site.replace("key: household, vacant: exclude", "key: household"), encoding="utf-8")
    (tmp / "households.csv").write_text("id,building,unit,room,floor_area_m2,occupied\n" + rows, encoding="utf-8")
    cfg = load_site(tmp / "site.yaml")
    ledger = fill(cfg, minutes=24 * 60, use={"A-stair": str(use), "B-stair": "0.20", "A-lift1": "1.00",
                                             "SL1": str(use), "GATE": "0.05", "MAIN": "3.50"})
    # prices below 0.10 yuan/kWh are implausible (--force) but still have to add up
    metered = allocate(cfg, ledger, "2026-10", force=True).metered_cost
    bill = (metered * bill_factor).quantize(FEN) if bill_factor is not None else None
    assume(bill != 0)
    # the bill is up to 30 % off the metered cost (further from MAIN's): beyond the default band
    r = allocate(cfg, ledger, "2026-10", bill=bill, force=True)
    assert sum(c.total for c in r.households) == r.recovered == (bill if bill is not None else to_fen(metered) * FEN)
    assert sum(g.amount for g in r.groups) == r.recovered
    for c in r.households:
        assert sum(c.lines.values()) == c.total and all(v == v.quantize(FEN) for v in c.lines.values())
    # every household's total, every line and every group's amount within a fen of its exact value
    homes = {c.household.id: c.household for c in r.households}
    totals, lines = exact_fen(r, homes)
    for c in r.households:
        assert abs(Fraction(c.total) * 100 - totals[c.household.id]) < 1, (c.household.id, c.total, totals[c.household.id])
    charged = {c.household.id: c.lines for c in r.households}
    for g in r.groups:
        assert sum(charged[h].get(g.id, ZERO) for h in g.households) == g.amount
        for h in g.households:
            assert abs(Fraction(charged[h].get(g.id, ZERO)) * 100 - lines[h, g.id]) < 1
        assert abs(Fraction(g.amount) * 100 - sum(lines[h, g.id] for h in g.households)) < 1
    ledger.close()


# ---- the command line ---------------------------------------------------------------------------

def test_cli_allocate_and_replace(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    runner = CliRunner()
    site = str(tmp_path / "site.yaml")
    # the filled counters go on at 1134.80, 1134.90 across 00:07: figures that do not fit them are
    # refused (tests/test_households_input.py) and recorded with --force
    args = ["meters", "replace", "A-stair", "--at", "2026-10-15 00:07", "--old-final", "1134.50",
            "--new-initial", "0", "--by", "王师傅", "-c", site]
    res = runner.invoke(app, args)
    assert res.exit_code == 2 and "nothing recorded" in res.output
    res = runner.invoke(app, args + ["--force"])
    assert res.exit_code == 0, res.output
    again = runner.invoke(app, ["meters", "replace", "A-stair", "--at", "2026-10-15 00:07", "--old-final", "1",
                                "--new-initial", "0", "--by", "x", "-c", site])
    assert again.exit_code == 2 and "already has a replacement" in again.output
    listed = runner.invoke(app, ["meters", "replacements", "-c", site])
    assert "2026-10-15 00:07  A-stair" in listed.output and "王师傅" in listed.output
    # the bill is 1.85x the metered cost: refused, and allocated with --force, which the report says
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--bill", "9999.99", "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 2 and "1.85× the sub-meters' metered cost" in res.output and "--force" in res.output
    assert not (tmp_path / "out").exists()
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--bill", "9999.99", "--out",
                              str(tmp_path / "out"), "--force"])
    assert res.exit_code == 0, res.output
    assert "recovered 9999.99 yuan from 5 households" in res.output
    assert "warning: allocated with --force: the bill 9,999.99 yuan is 1.85×" in res.output
    assert "按 --force 分摊" in (tmp_path / "out" / "allocation-2026-10.html").read_text(encoding="utf-8")
    # the run's own files, and the same as the month's answer (its first run is its answer, a draft)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        f"allocation-2026-10{run}.{kind}" for run in ("-run1", "") for kind in ("csv", "html", "xlsx")]
    for kind in ("csv", "html", "xlsx"):
        assert (tmp_path / "out" / f"allocation-2026-10.{kind}").read_bytes() == \
            (tmp_path / "out" / f"allocation-2026-10-run1.{kind}").read_bytes()
    ledger = Ledger(cfg.storage_path)
    runs = ledger.allocations()
    assert len(runs) == 1 and runs[0][1] == "2026-10" and runs[0][5] == "9999.99"
    total = ledger._db.execute("SELECT sum(CAST(amount AS REAL)) FROM allocation_charges").fetchone()[0]
    assert round(total, 2) == 9999.99
    bad = runner.invoke(app, ["allocate", "-c", site, "--month", "2025-10", "--out", str(tmp_path / "o2")])
    assert bad.exit_code == 2 and "no tariff for 2025-10-01" in bad.output and "Traceback" not in bad.output


# ---- the month's points in a real InfluxDB --------------------------------------------------------

async def test_month_points_reach_influxdb(tmp_path, influx1):
    import asyncio

    from gateway.billing.monthly import run_month
    from gateway.sinks.drainer import Drainer
    from gateway.sinks.influxdb import make_writer

    (tmp_path / "site.yaml").write_text(SITE.format(rule="by_cost") + f"influxdb: {{version: 1, url: '{influx1.url}', "
                                        f"database: {influx1.database}, batch_age_s: 0}}\n", encoding="utf-8")
    (tmp_path / "households.csv").write_text(HOUSEHOLDS, encoding="utf-8")
    cfg = load_site(tmp_path / "site.yaml")
    fill(cfg).close()
    run = run_month(cfg, "2026-10", tmp_path / "out", bill=D("9999.99"), force=True)   # 1.85x the metered cost
    slots = 31 * 96
    assert run.points == 6 * slots + 1 + 5 + 5 + 1      # meters x slots; site, groups, households; the run's state
    ledger = Ledger(cfg.storage_path)
    drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb)
    task = asyncio.create_task(drainer.run())
    try:
        async with asyncio.timeout(60):
            while ledger.outbox_depth:
                await asyncio.sleep(0.05)
    finally:
        drainer.stop()
        await asyncio.wait_for(task, 10)
        ledger.close()
    rows = influx1.query('SELECT sum("kwh") FROM "energy_interval" GROUP BY "meter"')["results"][0]["series"]
    by_meter = {s["tags"]["meter"]: s["values"][0][1] for s in rows}
    assert by_meter == pytest.approx({"A-stair": 0.10 * slots, "B-stair": 0.20 * slots, "A-lift1": 1.0 * slots,
                                      "SL1": 2.0 * slots, "GATE": 0.05 * slots, "MAIN": 3.5 * slots})
    households = [p for p in influx1.points("allocation") if p["level"] == "household"]
    assert len(households) == 5 and round(sum(p["amount"] for p in households), 2) == 9999.99
    site = next(p for p in influx1.points("allocation") if p["level"] == "site")
    assert site["recovered"] == 9999.99 and site["bill"] == 9999.99
    peak = influx1.query("SELECT count(kwh) FROM energy_interval WHERE period = 'peak' AND meter = 'SL1'")
    assert peak["results"][0]["series"][0]["values"][0][1] == 17 * 7 * 4
    state = influx1.points("allocation_run")
    assert [(p["month"], p["run"], p["approved"], p["state"]) for p in state] == [("2026-10", run.run_id, False,
                                                                                   "prepared")]
