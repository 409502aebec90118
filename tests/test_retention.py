"""Storage care: retention limits, exact energy compaction, batches, the disk guard, a full disk."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import subprocess
from collections import namedtuple
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest

from gateway.billing.allocate import allocate, meter_limits
from gateway.billing.intervals import MeterLimits, meter_intervals
from gateway.billing.tariffs import SLOT_US
from gateway.clock import to_us
from gateway.config import ConfigError, parse_site
from gateway.events import Alert, AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, PatrolCheckin, Reading
from gateway.ledger.retention import DiskGuard, Retention, StorageCare, plan_thinning, thinnable, _Reader
from gateway.sinks.schema import Encoder, SiteIndex
from gateway.ledger import Ledger, Replacement
from gateway.ledger.writer import INSERT_ENERGY
from test_billing_allocate import START, make_site

D = Decimal
DAY = timedelta(days=1)
NOW = datetime(2027, 3, 1, 4, 0, tzinfo=timezone.utc)
MB = 1024 * 1024


def site(tmp_path, influx: bool = False, **storage):
    data = {"site": {"id": "t", "name": "t", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83},
            "storage": {"path": str(tmp_path / "gw.db"), **storage},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
            "meters": [{"id": "m1", "bus": "b", "unit": 1, "model": "chint-ddsu666", "circuit": "stairwell_lighting",
                        "building": "B01"},
                       {"id": "m2", "bus": "b", "unit": 2, "model": "chint-ddsu666", "circuit": "pump"}]}
    if influx:
        data["influxdb"] = {"version": 1, "url": "http://127.0.0.1:1", "database": "gw"}
    return parse_site(data, base_dir=tmp_path)


def reading(meter: str, ts: datetime, kwh: str = "100.00") -> Reading:
    return Reading(meter, ts, {"voltage_v": 230.0, "energy_kwh": float(kwh)}, {"energy_kwh": D(kwh)})


def alert(aid: str, state: str, raised: datetime, updated: datetime, cleared: datetime | None = None) -> Alert:
    return Alert(aid, "r", "k", "m1", "warning", state, "消息", "message", raised, updated, cleared)


def run(retention: Retention, now: datetime = NOW):
    return asyncio.run(retention.run_once(now))


def column(db, sql: str, *args) -> list:
    return [r[0] for r in db.execute(sql, args)]


# ---- what goes and what stays -------------------------------------------------------------------

def test_retention_removes_exactly_what_is_older_than_its_limit_and_nothing_else(tmp_path, caplog):
    cfg = site(tmp_path, influx=True)
    ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    raw, events = NOW - 62 * DAY, NOW - 400 * DAY
    s = timedelta(seconds=1)
    for ts in (raw - s, raw + s, NOW - 100 * DAY, NOW - DAY):
        ledger.add(reading("m1", ts))
    ledger.add(reading("m2", NOW - 70 * DAY))
    for dev, ts in (("m1", NOW - 500 * DAY), ("m1", events - s), ("m1", events + s), ("m2", NOW - 500 * DAY),
                    ("m3", NOW - 600 * DAY), ("m3", NOW - 500 * DAY)):
        ledger.add(DeviceStatus(dev, "meter", True, ts, ""))
    for ts in (events - s, events + s):
        ledger.add(CardSwipe("r1", "d1", "in", ts, "0012345678", "h", "resident"))
        ledger.add(DoorEvent("d1", "opened", ts))
        ledger.add(PatrolCheckin("p1", "cp1", "tag", "g", "gh", ts, ts, "online"))
    old = NOW - 500 * DAY
    ledger.add(AlertChange(alert("A1", "active", old, old), "raised"))
    ledger.add(AlertChange(alert("A1", "cleared", old, old + s, old + s), "cleared"))
    ledger.add(AlertChange(alert("A2", "active", old, old), "raised"))              # still open: all of it stays
    ledger.add(AlertChange(alert("A3", "active", old, old), "raised"))
    ledger.add(AlertChange(alert("A3", "cleared", old, NOW - 10 * DAY, NOW - 10 * DAY), "cleared"))
    ledger.add(GatewayStats(NOW - 500 * DAY, {"x": 1}))
    ledger.flush()
    db = ledger._db
    db.executemany("INSERT INTO outbox_rejected (line, status, reason, rejected_us) VALUES ('x', 400, 'bad', ?)",
                   [(to_us(raw - s),), (to_us(raw + s),)])
    db.executemany("INSERT INTO ack_requests (alert_id, by, note, ts_us, done) VALUES ('A1', 'w', '', ?, ?)",
                   [(to_us(events - s), 1), (to_us(events - s), 0), (to_us(events + s), 1)])
    energy_cut = NOW - 3652 * DAY          # round(10 × 365.25) days
    db.executemany(INSERT_ENERGY, [("m1", to_us(energy_cut - s), "1.00"), ("m1", to_us(energy_cut + s), "2.00")])
    has_episode = "episode" in {r[1] for r in db.execute("PRAGMA table_info(readings)")}
    if has_episode:   # recorded while the clock was untrusted: its time is not known, so it stays
        db.execute("INSERT INTO reading_log (meter, ts_us, field_set, vals, kwh, counters, episode) "
                   "SELECT meter, ?, field_set, vals, kwh, counters, 7 FROM reading_log LIMIT 1",
                   (to_us(NOW - 300 * DAY),))
    outbox = ledger.outbox_depth
    readings_before = column(db, "SELECT ts_us FROM readings ORDER BY ts_us")

    caplog.set_level(logging.INFO, logger="gateway.ledger.retention")
    r = run(Retention(ledger, cfg, offload=False))

    us = to_us
    assert column(db, "SELECT ts_us FROM readings WHERE meter = 'm1' ORDER BY ts_us") == \
        ([us(NOW - 300 * DAY)] if has_episode else []) + [us(raw + s), us(NOW - DAY)]
    assert column(db, "SELECT count(*) FROM readings WHERE meter = 'm2'") == [0]
    assert r.removed["readings"] == 3 and len(readings_before) - 3 == ledger.count_readings()
    # energy: only what is older than 10 years; the recent counters (all of them) stay
    assert column(db, "SELECT ts_us FROM energy WHERE ts_us < ?", us(NOW - 3000 * DAY)) == [us(energy_cut + s)]
    assert column(db, "SELECT count(*) FROM energy WHERE ts_us > ?", us(NOW - 3000 * DAY)) == [5]
    assert sorted(db.execute("SELECT device, ts_us FROM device_status")) == sorted([
        ("m1", us(events + s)), ("m2", us(NOW - 500 * DAY)), ("m3", us(NOW - 500 * DAY))])   # each device's newest stays
    for table in ("swipes", "door_events", "patrol_checkins"):
        assert column(db, f"SELECT ts_us FROM {table}") == [us(events + s)], table
    assert column(db, "SELECT id FROM alerts ORDER BY id") == ["A2", "A3"]
    assert sorted(db.execute("SELECT alert_id, ts_us FROM alert_history")) == [
        ("A2", us(old)), ("A3", us(NOW - 10 * DAY))]
    assert column(db, "SELECT rejected_us FROM outbox_rejected") == [us(raw + s)]
    assert sorted(db.execute("SELECT ts_us, done FROM ack_requests")) == [(us(events - s), 0), (us(events + s), 1)]
    # nothing waiting for InfluxDB is lost: the points of the deleted readings (not sent: InfluxDB is
    # unreachable) wait in the outbox as lines; the two recent readings of m1 send their own
    assert ledger.outbox_depth == outbox and column(db, "SELECT count(*) FROM outbox")[0] == outbox - 2
    lines = [rec.getMessage() for rec in caplog.records if rec.getMessage().startswith("retention:")]
    assert len(lines) == 1 and "3 readings" in lines[0] and "1 swipes" in lines[0], lines

    again = run(Retention(ledger, cfg, offload=False))
    assert sum(again.removed.values()) == 0 and again.batches == 0


def test_nothing_is_removed_while_the_clock_is_not_trusted(tmp_path):
    cfg = site(tmp_path)
    ledger = Ledger(cfg.storage_path)
    ledger.add(reading("m1", NOW - 100 * DAY))
    ledger.flush()
    r = run(Retention(ledger, cfg, offload=False, trusted=lambda: False))
    assert r.skipped and ledger.count_readings() == 1
    run(Retention(ledger, cfg, offload=False))
    assert ledger.count_readings() == 0


def test_storage_limits_are_checked(tmp_path):
    assert site(tmp_path).storage.raw_days == 62
    with pytest.raises(ConfigError, match="floor_free_mb"):
        site(tmp_path, min_free_mb=100, floor_free_mb=150)
    with pytest.raises(ConfigError, match="raw_days"):
        site(tmp_path, raw_days=7)


# ---- thinning the energy counters ----------------------------------------------------------------

LIMITS = MeterLimits(max_power_kw=4, counter_max_kwh=None, resolution_kwh=D("0.01"), gap_us=20 * 60_000_000)
S = 1_000_000


def test_a_plain_slot_keeps_its_first_and_last_counter_and_an_odd_one_keeps_all():
    m = 60 * S
    slot0 = [(0 + 5 * S + k * m, D("10.00") + D("0.01") * k) for k in range(15)]      # 00:00:05 … 00:14:05
    slot1 = [(SLOT_US + 5 * S + k * m, D("10.20") + D("0.01") * k) for k in range(15)]
    pts = [(-55 * S, D("9.99"))] + slot0 + slot1 + [(2 * SLOT_US + 5 * S, D("10.40"))]
    drop = thinnable(pts, 0, 2 * SLOT_US, LIMITS)
    assert drop == [t for t, _ in slot0[1:-1]] + [t for t, _ in slot1[1:-1]]
    # a counter lower than the one before (jitter, a rollover, a rejected reading): the slot stays
    bad = list(slot1)
    bad[7] = (bad[7][0], D("10.10"))
    assert thinnable([(-55 * S, D("9.99"))] + slot0 + bad, 0, 2 * SLOT_US, LIMITS) == [t for t, _ in slot0[1:-1]]
    # ... also when the odd step is the one into the next slot
    last = [(-55 * S, D("9.99"))] + slot0 + [(SLOT_US + 5 * S, D("9.00"))]
    assert thinnable(last, 0, 2 * SLOT_US, LIMITS) == []
    # faster than the circuit's 4 kW (a spike), a step longer than the gap, a replacement nearby
    spike = list(slot0)
    spike[3:] = [(t, c + D("0.20")) for t, c in spike[3:]]        # 0.2 kWh in a minute = 12 kW
    assert thinnable(spike, 0, SLOT_US, LIMITS) == []
    assert thinnable(slot0, 0, SLOT_US, dataclasses.replace(LIMITS, gap_us=10 * 60 * S)) == []
    assert thinnable(slot0, 0, SLOT_US, LIMITS, [slot0[6][0]]) == []
    # the first counter right on the boundary: the one after it stays too (billing's bracket is
    # the first reading strictly after the end of the month before)
    on = [(k * m, D("10.00") + D("0.01") * k) for k in range(15)]
    assert thinnable(on, 0, SLOT_US, LIMITS) == [t for t, _ in on[2:-1]]


def fill_month(cfg, seed: int = 7) -> tuple[Ledger, dict]:
    """Energy counters of the billing test site every minute (a few seconds late, as polls are),
    from an hour before October 2026 to an hour after, with the faults billing must handle."""
    ledger = Ledger(cfg.storage_path)
    rng = random.Random(seed)
    use = {"A-stair": "0.10", "B-stair": "0.20", "A-lift1": "1.00", "SL1": "2.00", "GATE": "0.05", "MAIN": "3.50"}
    t0, t1 = to_us(START - timedelta(hours=1)), to_us(START + timedelta(days=31, hours=1))
    at = lambda day, hour: to_us(START + timedelta(days=day, hours=hour))  # noqa: E731
    rows = []
    for m in cfg.meters:
        c, t, k = D("1000.00"), t0, 0
        per_s = D(use[m.id]) / 900
        while t <= t1:
            ts = t if m.id == "MAIN" else t + rng.randrange(0, 5 * S)    # MAIN right on the minute
            shown = c.quantize(D("0.01"))
            if m.id == "A-stair" and at(9, 3) <= t < at(9, 3) + 60 * S:
                shown += 5000                                            # a spike
            if m.id == "B-stair" and at(11, 2) <= t < at(11, 5):
                shown = None                                             # three hours offline
            if m.id == "A-lift1" and t >= at(14, 2):
                shown = (c - D("900")).quantize(D("0.01"))               # replaced: the new meter's counter
            if m.id == "SL1" and at(19, 7) <= t < at(19, 7) + 60 * S:
                shown = prev - D("0.01")                                 # jitter
            if m.id == "GATE" and t >= at(24, 12):
                shown -= 500                                             # a restart nobody recorded
            if shown is not None:
                rows.append((m.id, ts, str(shown)))
                prev = shown
            c += per_s * 60 * D(rng.uniform(0.2, 1.8)).quantize(D("0.0001"))
            t += 60 * S
            k += 1
    db = ledger._db
    db.execute("BEGIN")
    db.executemany(INSERT_ENERGY, rows)
    db.execute("COMMIT")
    rep_at = START + timedelta(days=14, hours=2)
    old_final = D(db.execute("SELECT kwh FROM energy WHERE meter = 'A-lift1' AND ts_us < ? ORDER BY ts_us DESC "
                             "LIMIT 1", (to_us(rep_at),)).fetchone()[0])
    new_first = D(db.execute("SELECT kwh FROM energy WHERE meter = 'A-lift1' AND ts_us >= ? ORDER BY ts_us LIMIT 1",
                             (to_us(rep_at),)).fetchone()[0])
    ledger.record_replacement(Replacement("A-lift1", rep_at, old_final, new_first - D("0.05"), "w", "", rep_at))
    return ledger, {"rows": len(rows)}


def essence(result):
    """The allocation without what thinning is allowed to change (how many readings were used)."""
    strip = lambda ms: [dataclasses.replace(m, readings=0) for m in ms]  # noqa: E731
    return dataclasses.replace(result, meters=strip(result.meters), reference=strip(result.reference))


def test_compaction_keeps_the_allocation_of_an_old_month_identical(tmp_path):
    cfg = make_site(tmp_path)
    ledger, info = fill_month(cfg)
    when = datetime(2027, 1, 1, tzinfo=timezone.utc)
    # September and November are the partial months around the filled one
    before = {m: allocate(cfg, ledger, m, now=when, allow_partial=True) for m in ("2026-09", "2026-10", "2026-11")}
    assert {n.kind for n in before["2026-10"].quality} >= {"rejected_spike", "gap", "replacement",
                                                            "ignored_jitter", "restarted"}
    ret = Retention(ledger, cfg, offload=False)
    # 62 days after October: October (and the hour of September) are thinned, November not yet
    r1 = run(ret, datetime(2027, 1, 2, tzinfo=timezone.utc))
    left_oct = ledger._db.execute("SELECT count(*) FROM energy").fetchone()[0]
    assert r1.thinned_months >= 6 and r1.removed["energy counters thinned"] > 0.8 * info["rows"]
    assert essence(allocate(cfg, ledger, "2026-10", now=when, allow_partial=True)) == essence(before["2026-10"])
    # then November: October's bracket reading after its end must survive that too
    r2 = run(ret, datetime(2027, 2, 2, tzinfo=timezone.utc))
    assert r2.thinned_months >= 1 and ledger._db.execute("SELECT count(*) FROM energy").fetchone()[0] < left_oct
    for month, was in before.items():
        now = allocate(cfg, ledger, month, now=when, allow_partial=True)
        assert essence(now) == essence(was), month
    oct_ = allocate(cfg, ledger, "2026-10", now=when, allow_partial=True)
    used = {m.meter: m.readings for m in oct_.meters + oct_.reference}
    # about two per slot; three for MAIN, read right on the minute (the first after the boundary stays too)
    assert all(n < 2 * 31 * 96 + 200 for m, n in used.items() if m != "MAIN") and used["MAIN"] < 3 * 31 * 96 + 200, used
    # around the faults every counter stayed: the spike is still there to be rejected
    assert ledger._db.execute("SELECT count(*) FROM energy WHERE meter = 'A-stair' AND CAST(kwh AS REAL) > 5000"
                              ).fetchone()[0] == 1
    # a run later finds nothing more to do
    r3 = run(ret, datetime(2027, 2, 2, 1, tzinfo=timezone.utc))
    assert r3.removed["energy counters thinned"] == 0 and r3.thinned_months == 0


def test_one_counter_per_slot_would_not_be_exact(tmp_path):
    """Why two counters per slot: keeping only the first reading at or after each boundary moves
    energy between neighbouring slots (the step across a boundary is spread in proportion to
    time), so the slot kWh (and so a time-of-use bill) change."""
    cfg = make_site(tmp_path)
    ledger, _ = fill_month(cfg)
    m = next(x for x in cfg.meters if x.id == "SL1")
    s, e = to_us(START), to_us(START + timedelta(days=31))
    pts = [(t, D(c)) for t, c in ledger.energy_series("SL1", s - SLOT_US, e + SLOT_US)]
    tz = START.tzinfo
    full = meter_intervals("SL1", pts, s, e, meter_limits(cfg, m), tz)
    seen, one = set(), []
    for t, c in pts:
        k = (t - s) // SLOT_US
        if k not in seen:
            seen.add(k)
            one.append((t, c))
    thin = meter_intervals("SL1", one, s, e, meter_limits(cfg, m), tz)
    assert thin.kwh != full.kwh
    plan = plan_thinning(_Reader(cfg.storage_path), cfg, "SL1", (2026, 10))
    assert plan.drop and not plan.kept_raw


def test_a_thinning_that_would_change_billing_is_refused(tmp_path, monkeypatch, caplog):
    cfg = make_site(tmp_path)
    ledger, info = fill_month(cfg)

    def one_per_slot(points, start_us, end_us, limits, replacements_us=()):
        seen, drop = set(), []
        for t, _ in points:
            if start_us <= t < end_us:
                k = (t - start_us) // SLOT_US
                if k in seen:
                    drop.append(t)
                seen.add(k)
        return drop
    monkeypatch.setattr("gateway.ledger.retention.thinnable", one_per_slot)
    counts = dict(ledger._db.execute("SELECT meter, count(*) FROM energy GROUP BY meter"))
    caplog.set_level(logging.WARNING, logger="gateway.ledger.retention")
    r = run(Retention(ledger, cfg, offload=False), datetime(2027, 1, 2, tzinfo=timezone.utc))
    # refused for every meter read off the boundaries, in both months it has; MAIN is read right on
    # the minute, so one counter per slot is exact for it, and the check lets that through
    assert sorted(m.split(":")[0] for m in r.raw_months) == sorted(
        f"{m} {month}" for m in ("A-stair", "B-stair", "A-lift1", "SL1", "GATE") for month in ("2026-09", "2026-10"))
    after = dict(ledger._db.execute("SELECT meter, count(*) FROM energy GROUP BY meter"))
    assert {m: n for m, n in after.items() if m != "MAIN"} == {m: n for m, n in counts.items() if m != "MAIN"}
    assert counts["MAIN"] - after["MAIN"] == r.removed["energy counters thinned"] > 0
    assert len([rec for rec in caplog.records if "kept as they are" in rec.getMessage()]) == 10


# ---- batches ------------------------------------------------------------------------------------

async def test_retention_works_in_batches_and_polls_get_in_between(tmp_path):
    cfg = site(tmp_path)
    ledger = Ledger(cfg.storage_path)
    for i in range(6000):   # readings without an energy counter: only the readings table has work
        ledger.add(Reading(f"m{i % 3}", NOW - 100 * DAY + i * timedelta(seconds=10), {"voltage_v": 230.0}))
    ledger.flush()
    ret = Retention(ledger, cfg, batch_rows=500)
    order: list[str] = []
    ret.after_batch = lambda what, n: order.append(f"batch {n}")
    done = asyncio.Event()

    async def poller():
        i = 0
        while not done.is_set():
            ledger.add(reading("m1", NOW + i * timedelta(seconds=1)))
            ledger.flush()                  # what the ledger's task does every commit interval
            order.append("poll")
            i += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(poller())
    result = await ret.run_once(NOW)
    done.set()
    await task
    batches = [k for k, x in enumerate(order) if x.startswith("batch")]
    assert result.batches == len(batches) == 12 and result.removed["readings"] == 6000
    # every batch was followed by a committed poll before the next batch began
    assert all("poll" in order[a + 1:b] for a, b in zip(batches, batches[1:])), order
    assert ledger.count_readings() == order.count("poll")
    assert max(ret.pauses) == result.longest_s


# ---- the disk guard -----------------------------------------------------------------------------

class FakeDisk:
    def __init__(self, free_mb: float):
        self.free = int(free_mb * MB)

    def __call__(self, path):
        return namedtuple("usage", "total used free")(10**12, 0, self.free)


async def test_low_disk_is_said_once_sheds_the_outbox_and_clears(tmp_path, caplog):
    cfg = site(tmp_path, influx=True)
    ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    published = []
    disk = FakeDisk(1000)
    guard = DiskGuard(ledger, cfg.storage, published.append, usage=disk)
    ledger.write_gate = guard.allow_write
    for i in range(50):
        ledger.add(reading("m1", NOW + i * timedelta(seconds=30), f"{100 + i}.00"))
        ledger.add(GatewayStats(NOW + i * timedelta(seconds=30), {"x": i}))
    ledger._flush_logged()
    assert ledger.outbox_depth == 100
    caplog.set_level(logging.WARNING)
    disk.free = 150 * MB
    for _ in range(5):
        assert guard.check()            # low, but writing goes on
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "DISK LOW" in r.getMessage()]
    assert len(errors) == 1 and guard.low and guard.episodes == 1
    assert [(p.device, p.kind, p.online) for p in published] == [("ledger", "storage", False)]
    assert guard.shed_wanted
    shed = await guard.shed()
    # the readings' points are the readings themselves (no outbox space): they all stay, whole;
    # meter points as lines are thinned to their counters (tests/test_influx.py, the budget)
    assert shed == {"gateway": 50}
    db = ledger._db
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0 and ledger.outbox_depth == 50
    assert guard.stats()["disk_low"] == 1 and guard.stats()["disk_free_mb"] == 150
    disk.free = 205 * MB                # not yet: space must come back with a margin
    guard.check()
    assert guard.low
    disk.free = 400 * MB
    guard.check()
    guard.check()
    assert not guard.low and [p.online for p in published] == [False, True]
    assert len([r for r in caplog.records if "space is back" in r.getMessage()]) == 1
    disk.free = 100 * MB
    guard.check()
    assert guard.episodes == 2


def test_below_the_floor_readings_wait_in_memory_within_a_bound(tmp_path, caplog):
    cfg = site(tmp_path, influx=True)
    ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    published = []
    disk = FakeDisk(30)
    guard = DiskGuard(ledger, cfg.storage, published.append, usage=disk)
    ledger.write_gate = guard.allow_write
    caplog.set_level(logging.WARNING)
    ledger.add(DeviceStatus("m1", "meter", True, NOW))
    for i in range(10):
        ledger.add(reading("m1", NOW + i * timedelta(seconds=30), f"{100 + i}.00"))
        ledger._flush_logged()
    assert ledger.count_readings() == 0 and ledger.holding and guard.held
    assert len([r for r in caplog.records if "DISK FULL" in r.getMessage()]) == 1
    # the bound: InfluxDB points go first, then whole readings (their counters stay), never the statuses
    ledger.hold_max_bytes = ledger.held_bytes() - 1
    ledger._flush_logged()
    assert ledger.dropped["points"] >= 1 and ledger.dropped["readings"] == 0
    ledger.hold_max_bytes = 10 * ledger._HELD_ENERGY + 2 * ledger._HELD_READING + ledger._HELD_READING
    ledger._flush_logged()
    # the status's point (a reading's point is the reading itself: not held apart), then 8 readings'
    # rows (10 × 480 + 480 > the bound)
    assert ledger.dropped["points"] == 1 and ledger.dropped["readings"] == 8 and ledger.dropped["energy"] == 0
    assert len([r for r in caplog.records if "dropping the oldest held rows" in r.getMessage()]) == 1
    disk.free = 500 * MB
    ledger._flush_logged()
    assert not guard.held and not ledger.holding
    db = ledger._db
    ledger.catch_up()           # the readings' counters into `energy` now, not within the hour
    assert column(db, "SELECT count(*) FROM readings") == [2]
    assert column(db, "SELECT kwh FROM energy ORDER BY ts_us") == [f"{100 + i}.00" for i in range(10)]
    assert column(db, "SELECT count(*) FROM device_status WHERE device = 'm1'") == [1]
    assert [(p.device, p.online) for p in published] == [("ledger", False), ("ledger", True)]
    assert "writing held" in published[0].reason
    assert any("writing again" in r.getMessage() for r in caplog.records)


def test_sqlite_full_on_commit_keeps_the_batch_and_retries(tmp_path, caplog):
    cfg = site(tmp_path)
    ledger = Ledger(cfg.storage_path)
    ledger.add(reading("m1", NOW))
    ledger.flush()
    db = ledger._db
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    # SQLite answers SQLITE_FULL as on a full disk; the limit is a connection's: the commits' own
    # connection (written in the commit thread) and the one new field sets are inserted with
    for con in (db, ledger._writer):
        con.execute(f"PRAGMA max_page_count = {pages}")
    caplog.set_level(logging.WARNING, logger="gateway.ledger.writer")
    for i in range(1, 400):
        ledger.add(Reading("m1", NOW + i * timedelta(seconds=30), {"voltage_v": 230.0, "new_field": float(i),
                                                                   "energy_kwh": 100.0 + i},
                           {"energy_kwh": D(100 + i)}))   # a field set the ledger has not seen: no insert yet
    for _ in range(3):
        ledger._flush_logged()
    assert ledger.commit_failures == 3 and ledger.holding and ledger.pending == 2 * 399
    fails = [r.getMessage() for r in caplog.records if "commit failed" in r.getMessage()]
    assert len(fails) == 1 and "full" in fails[0], fails          # the real error, said once
    assert ledger.count_readings() == 1
    for con in (db, ledger._writer):
        con.execute("PRAGMA max_page_count = 1073741823")
    ledger._flush_logged()
    assert ledger.commit_failures == 0 and ledger.pending == 0 and not ledger.holding
    ledger.catch_up()           # the readings' counters into `energy` now, not within the hour
    assert ledger.count_readings() == 400 and db.execute("SELECT count(*) FROM energy").fetchone()[0] == 400
    assert [r.values.get("new_field") for r in ledger.readings("m1")][1:] == [float(i) for i in range(1, 400)]
    assert any("committing again after 3 failed attempts" in r.getMessage() for r in caplog.records)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


@pytest.fixture
def small_fs(tmp_path):
    where = tmp_path / "small"
    where.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_really_full_filesystem_keeps_the_batch_and_the_ledger_sound(small_fs, caplog):
    ledger = Ledger(small_fs / "gw.db")
    ledger.add(reading("m1", NOW))
    ledger.flush()
    filler = small_fs / "filler"
    with open(filler, "wb", buffering=0) as f:  # take every byte the filesystem has left
        try:
            while True:
                f.write(b"\0" * 4096)
                f.flush()
        except OSError:
            pass
    caplog.set_level(logging.WARNING, logger="gateway.ledger.writer")
    n = 1
    while not ledger.commit_failures and n < 5000:
        for _ in range(50):
            ledger.add(reading("m1", NOW + n * timedelta(seconds=30), f"{100 + n}.00"))
            n += 1
        ledger._flush_logged()
    assert ledger.commit_failures, "the filesystem never filled up"
    committed = ledger.count_readings()
    assert ledger.pending and committed < n
    os.unlink(filler)
    ledger._flush_logged()
    assert ledger.commit_failures == 0 and ledger.pending == 0
    assert ledger.count_readings() == n
    assert [int(c["energy_kwh"]) for c in (r.counters for r in ledger.readings("m1"))][1:] == \
        list(range(101, 100 + n))
    assert ledger._db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    ledger.close()


def test_the_runtime_wires_the_guard_into_the_ledger(tmp_path):
    from gateway.runtime import Gateway
    cfg = site(tmp_path)
    gw = Gateway(cfg)
    gw.ledger = Ledger(cfg.storage_path)
    runs = gw._storage_care()
    assert [what for what, _ in runs] == ["storage care"] and isinstance(gw.storage, StorageCare)
    assert gw.ledger.write_gate == gw.storage.guard.allow_write
    assert gw.ledger.hold_max_bytes == 64 * MB
    stats = gw.self_metrics()[-1].values
    assert {"disk_free_mb", "ledger_mb", "disk_low", "writes_held"} <= set(stats)
