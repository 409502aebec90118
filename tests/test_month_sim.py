"""The month generator: deterministic ledger readings with known faults and known true consumption."""

import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
import yaml

from gateway.config import load_site
from gateway.ledger import Ledger
from simulators.__main__ import main
from simulators.month import LINE_LOSSES, generate_month

TZ = ZoneInfo("Asia/Shanghai")
EVERY = 300
MONTH_START = datetime(2026, 10, 1, tzinfo=TZ)
MONTH_END = datetime(2026, 11, 1, tzinfo=TZ)
PER_METER = ((MONTH_END - MONTH_START) + timedelta(hours=4)) // timedelta(seconds=EVERY) + 1


def site_dict(counter_max: bool = True) -> dict:
    def meter(id_, unit, model, circuit, **extra):
        return {"id": id_, "bus": "bus-a", "unit": unit, "model": model, "circuit": circuit, **extra}

    street = {"counter_max_kwh": 100000} if counter_max else {}
    return {
        "site": {"id": "small", "name": "小区", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83},
        "buses": [{"id": "bus-a", "type": "modbus_tcp", "host": "127.0.0.1", "port": 502}],
        "meters": [
            meter("MAIN", 1, "chint-dtsu666", "main_supply"),
            meter("B01-stair", 2, "chint-ddsu666", "stairwell_lighting", building="B01"),
            meter("B02-stair", 3, "chint-ddsu666", "stairwell_lighting", building="B02"),
            meter("B02-lift1", 4, "chint-dtsu666", "lift", building="B02"),
            meter("ST1", 5, "chint-ddsu666", "street_lighting", **street),
            meter("PUMP1", 6, "chint-dtsu666", "pump"),
            meter("GATE1", 7, "chint-ddsu666", "gate"),
            meter("OLD", 8, "chint-ddsu666", "other", enabled=False),
        ],
    }


def write_site(path, **kw):
    path.write_text(yaml.safe_dump(site_dict(**kw), allow_unicode=True), encoding="utf-8")
    return path


def rows(db) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT meter, ts_us, field_set, vals, kwh, counters FROM readings ORDER BY id").fetchall()
    finally:
        con.close()


def by_meter(db) -> dict[str, list]:
    ledger = Ledger(db)
    try:
        out: dict[str, list] = {}
        for r in ledger.readings():
            out.setdefault(r.meter, []).append(r)
        return out
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return load_site(write_site(tmp_path_factory.mktemp("site") / "site.yaml"))


@pytest.fixture(scope="module")
def month(site, tmp_path_factory):
    db = tmp_path_factory.mktemp("month") / "ledger.db"
    summary = generate_month(site, db, "2026-10", seed=1, every_s=EVERY)
    return summary, db, by_meter(db)


def test_summary_names_the_month_and_every_fault(month):
    s, _, _ = month
    assert s.meters == 7 and s.every_s == EVERY
    assert s.month_start_utc == MONTH_START.astimezone(timezone.utc)
    assert s.start_utc == s.month_start_utc - timedelta(hours=2)
    assert s.end_utc == MONTH_END.astimezone(timezone.utc) + timedelta(hours=2)
    kinds = {f.kind: f for f in s.faults}
    assert sorted(kinds) == ["gap", "replacement", "rollover", "spike"] and not s.skipped
    assert kinds["rollover"].meter == "ST1"       # the only meter with a counter maximum
    assert kinds["replacement"].meter in ("B01-stair", "B02-stair")
    assert len({f.meter for f in s.faults}) == 4  # each fault on its own meter
    assert "MAIN" not in {f.meter for f in s.faults}
    local = {k: f.when.astimezone(TZ) for k, f in kinds.items()}
    assert local["gap"].day == 9 and local["spike"].day == 20
    assert local["replacement"] == datetime(2026, 10, 15, 10, tzinfo=TZ)
    assert MONTH_START <= local["rollover"] < MONTH_END


def test_row_counts(month):
    s, db, readings = month
    gap = next(f for f in s.faults if f.kind == "gap")
    missing = timedelta(hours=6) // timedelta(seconds=EVERY)
    assert "OLD" not in readings  # disabled
    for meter, rs in readings.items():
        assert len(rs) == PER_METER - (missing if meter == gap.meter else 0), meter
        assert rs[0].ts == s.start_utc and rs[-1].ts == s.end_utc
    assert s.rows == sum(len(rs) for rs in readings.values()) == len(rows(db))
    gap_rows = [r for r in readings[gap.meter] if gap.when <= r.ts < gap.when + timedelta(hours=6)]
    assert gap_rows == []


def test_same_seed_gives_identical_rows_and_another_seed_does_not(site, month, tmp_path):
    s1, db1, _ = month
    s2 = generate_month(site, tmp_path / "again.db", "2026-10", seed=1, every_s=EVERY)
    assert rows(tmp_path / "again.db") == rows(db1)
    assert s2.faults == s1.faults and s2.consumption_kwh == s1.consumption_kwh
    s3 = generate_month(site, tmp_path / "other.db", "2026-10", seed=2, every_s=EVERY)
    other = rows(tmp_path / "other.db")
    assert len(other) == len(rows(db1))
    assert [r[4] for r in other] != [r[4] for r in rows(db1)]
    assert s3.consumption_kwh != s1.consumption_kwh


def test_values_are_plausible_and_follow_the_profiles(month):
    _, _, readings = month
    for meter, rs in readings.items():
        phases = 3 if meter in ("MAIN", "B02-lift1", "PUMP1") else 1
        for r in rs:
            v, p = r.values["voltage_v"], r.values["power_kw"]
            assert 220.0 <= v <= 230.0 and p >= 0.0
            assert r.values["current_a"] == pytest.approx(p * 1000.0 / phases / v)
            assert r.values["energy_kwh"] == pytest.approx(float(r.counters["energy_kwh"]))
            assert r.counters["energy_kwh"] == r.counters["energy_kwh"].quantize(Decimal("0.01"))
    street = {r.ts.astimezone(TZ).replace(tzinfo=None): r.values["power_kw"] for r in readings["ST1"]}
    for day in (3, 17, 28):  # dark at midnight, off at noon
        assert street[datetime(2026, 10, day, 0, 0)] > 1.0
        assert street[datetime(2026, 10, day, 12, 0)] == 0.0


def test_main_meter_reads_the_sum_plus_line_losses(month):
    s, _, readings = month
    power: dict[datetime, float] = {}
    for meter, rs in readings.items():
        if meter != "MAIN":
            for r in rs:
                power[r.ts] = power.get(r.ts, 0.0) + r.values["power_kw"]
    gap = next(f for f in s.faults if f.kind == "gap")
    for r in readings["MAIN"]:
        if not gap.when <= r.ts < gap.when + timedelta(hours=6):  # the gap meter's load still ran
            assert r.values["power_kw"] == pytest.approx(power[r.ts] * (1 + LINE_LOSSES))
    subs = sum(kwh for m, kwh in s.consumption_kwh.items() if m != "MAIN")
    assert subs > 100
    # each counter is floored to 0.01 kWh: the ratio holds to a few hundredths of a kWh
    assert abs(s.consumption_kwh["MAIN"] - subs * Decimal("1.035")) < Decimal("0.1")


def test_replacement_is_in_the_ledger(month):
    s, db, readings = month
    fault = next(f for f in s.faults if f.kind == "replacement")
    ledger = Ledger(db)
    try:
        reps = ledger.replacements()
    finally:
        ledger.close()
    assert len(reps) == 1
    r = reps[0]
    assert (r.meter, r.at, r.new_initial, r.by, r.note) == (fault.meter, fault.when, Decimal("0.00"), "demo",
                                                            "generated")
    before = [x for x in readings[r.meter] if x.ts < r.at][-1]
    first_new = next(x for x in readings[r.meter] if x.ts >= r.at)
    assert before.counters["energy_kwh"] <= r.old_final <= before.counters["energy_kwh"] + Decimal("5")
    assert first_new.ts == r.at and first_new.counters["energy_kwh"] == Decimal("0.00")


def counter_anomalies(rs) -> list[tuple[str, datetime]]:
    """Every place a counter goes down or jumps by more than any circuit could use in 5 minutes."""
    out = []
    for a, b in zip(rs, rs[1:]):
        d = b.counters["energy_kwh"] - a.counters["energy_kwh"]
        if d < 0:
            out.append(("down", b.ts))
        elif d > 100:
            out.append(("jump", b.ts))
    return out


def test_counters_never_decrease_except_at_the_faults(month):
    s, _, readings = month
    step = timedelta(seconds=EVERY)
    expected: dict[str, list] = {}
    for f in s.faults:
        if f.kind in ("rollover", "replacement"):
            expected[f.meter] = [("down", f.when)]
        elif f.kind == "spike":
            expected[f.meter] = [("jump", f.when), ("down", f.when + step)]
    for meter, rs in readings.items():
        assert counter_anomalies(rs) == expected.get(meter, []), meter
    spike = next(f for f in s.faults if f.kind == "spike")
    rs = {r.ts: r.counters["energy_kwh"] for r in readings[spike.meter]}
    assert rs[spike.when] - rs[spike.when - step] > 5000
    assert 0 <= rs[spike.when + step] - rs[spike.when - step] < 1


def test_true_consumption_equals_the_counter_differences(month):
    """Walk the ledger independently: counter steps, plus the wrap and the replacement, minus the spike."""
    s, db, readings = month
    ledger = Ledger(db)
    try:
        reps = {r.meter: r for r in ledger.replacements()}
    finally:
        ledger.close()
    spike = next(f for f in s.faults if f.kind == "spike")
    wrap = Decimal(100000)
    for meter, rs in readings.items():
        inside = [r for r in rs if s.month_start_utc <= r.ts <= s.month_end_utc
                  and not (meter == spike.meter and r.ts == spike.when)]
        assert inside[0].ts == s.month_start_utc and inside[-1].ts == s.month_end_utc
        total = Decimal(0)
        for a, b in zip(inside, inside[1:]):
            ca, cb = a.counters["energy_kwh"], b.counters["energy_kwh"]
            rep = reps.get(meter)
            if rep and a.ts < rep.at <= b.ts:
                total += (rep.old_final - ca) + (cb - rep.new_initial)
            elif cb < ca:
                assert meter == "ST1"
                total += cb + wrap - ca
            else:
                total += cb - ca
        assert s.consumption_kwh[meter] == total, meter
    assert set(s.consumption_kwh) == set(readings)


def test_without_faults_the_other_meters_are_unchanged(site, month, tmp_path):
    s, _, readings = month
    clean = generate_month(site, tmp_path / "clean.db", "2026-10", seed=1, every_s=EVERY, faults=False)
    assert clean.faults == [] and clean.rows == 7 * PER_METER
    clean_readings = by_meter(tmp_path / "clean.db")
    faulty = {f.meter for f in s.faults}
    for meter, rs in clean_readings.items():
        assert counter_anomalies(rs) == []
        if meter not in faulty:
            assert [(r.ts, r.counters, r.values) for r in rs] == \
                [(r.ts, r.counters, r.values) for r in readings[meter]], meter
            assert clean.consumption_kwh[meter] == s.consumption_kwh[meter]
    # the replaced meter's old final reading is what it would have shown at the replacement instant
    ledger = Ledger(month[1])
    try:
        (rep,) = ledger.replacements()
    finally:
        ledger.close()
    assert next(r for r in clean_readings[rep.meter] if r.ts == rep.at).counters["energy_kwh"] == rep.old_final


def test_rollover_is_skipped_without_a_counter_maximum(tmp_path):
    cfg = load_site(write_site(tmp_path / "site.yaml", counter_max=False))
    s = generate_month(cfg, tmp_path / "ledger.db", "2026-02", seed=3, every_s=900, margin_h=0)
    assert sorted(f.kind for f in s.faults) == ["gap", "replacement", "spike"]
    assert "rollover" in s.skipped
    assert s.rows == 7 * (28 * 96 + 1) - 6 * 4


def test_a_month_follows_the_one_before_and_silent_meters_send_nothing(site, tmp_path):
    db = tmp_path / "two.db"
    silent = (datetime(2026, 10, 31, 12, tzinfo=TZ).astimezone(timezone.utc),
              datetime(2026, 11, 1, 8, tzinfo=TZ).astimezone(timezone.utc))
    october = generate_month(site, db, "2026-10", seed=1, every_s=900, faults=False, margin_h=0,
                             silent={"GATE1": silent})
    with pytest.raises(ValueError, match="already has readings"):   # not a follower: its counters would jump
        generate_month(site, db, "2026-11", seed=1, every_s=900, faults=False, margin_h=0)
    november = generate_month(site, db, "2026-11", seed=1, every_s=900, faults=False, margin_h=0,
                              silent={"GATE1": silent}, follow=october)
    assert [(f.meter, f.kind) for f in november.faults] == [("GATE1", "silent")]
    readings = by_meter(db)
    for meter, rs in readings.items():
        assert counter_anomalies(rs) == [], meter            # no jump at 1 November: one counter, two months
        assert len({r.ts for r in rs}) == len(rs)            # the instant they share is written once
        first, last = rs[0].counters["energy_kwh"], rs[-1].counters["energy_kwh"]
        assert october.consumption_kwh[meter] + november.consumption_kwh[meter] == last - first, meter
    assert [r for r in readings["GATE1"] if silent[0] <= r.ts < silent[1]] == []
    assert len(readings["GATE1"]) == len(readings["PUMP1"]) - 20 * 4
    with pytest.raises(ValueError, match="cannot follow"):
        generate_month(site, tmp_path / "x.db", "2026-11", every_s=900, follow=month_summary_with_margin(site, tmp_path))


def month_summary_with_margin(site, tmp_path):
    return generate_month(site, tmp_path / "margin.db", "2026-10", seed=1, every_s=3600)


def test_bad_arguments(site, tmp_path):
    with pytest.raises(ValueError, match="every_s"):
        generate_month(site, tmp_path / "a.db", every_s=7)
    with pytest.raises(ValueError, match="YYYY-MM"):
        generate_month(site, tmp_path / "a.db", month="October")


def test_cli_month(tmp_path, capsys):
    site_file = write_site(tmp_path / "site.yaml")
    db = tmp_path / "cli.db"
    args = ["month", "-c", str(site_file), "--month", "2026-10", "--seed", "1", "--db", str(db), "--every", "300"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"2026-10: {7 * PER_METER - 72} readings of 7 meters every 300 s")
    assert sorted(line.split("\t")[0].strip() for line in out[1:]) == ["gap", "replacement", "rollover", "spike"]
    assert any("2026-10-15 10:00 local" in line for line in out[1:])
    # a second run into the same ledger would mix two sets of counters: refused
    assert main(args) == 2
    assert "already has readings" in capsys.readouterr().err
    assert main(["month", "-c", str(tmp_path / "missing.yaml"), "--db", str(db)]) == 2
