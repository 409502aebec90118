"""Clock safety (gateway/timesync.py): a wall clock that is not set yet (1970, or fake-hwclock's
saved time) or that jumps is detected; what is recorded meanwhile is marked, its points held
back, and repaired exactly when the clock becomes trustworthy; an episode of an earlier boot is
kept and reported, never sent; the rules do not judge patrol deadlines on an untrusted clock.

Time is a FakeClockSource (a wall clock and a monotonic clock in µs that the test moves and
steps); the ledger, the encoder, the drainer and InfluxDB 1.x are the real ones.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import sqlite3
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from types import SimpleNamespace
from zoneinfo import ZoneInfo

from gateway.billing.allocate import clock_notes
from gateway.clock import from_us, to_us
from gateway.config import parse_site
from gateway.events import (Alert, AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, PatrolCheckin,
                            Reading)
from gateway.runtime import Gateway
from gateway.sinks.drainer import Drainer
from gateway.sinks.influxdb import make_writer
from gateway.sinks.schema import Encoder, SiteIndex
from gateway.ledger import Ledger
from gateway.ledger.queries import clock_report
from gateway.timesync import (STA_UNSYNC, TIME_ERROR, FakeClockSource, HeldEvents, KernelClock, SourceClock,
                              SyncState, SystemClockSource, TimeSync, _TimexHead, read_adjtimex)
from simulators.site import SiteSimulation

UTC = timezone.utc
TZ = ZoneInfo("Asia/Shanghai")
SITE = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}
EPOCH_WALL = datetime(1970, 1, 1, 0, 0, 30, 123, tzinfo=UTC)        # what the box says after a power cut
TRUE_SYNC = datetime(2026, 11, 23, 14, 0, 0, 500_007, tzinfo=UTC)   # what NTP says when it comes
INDEX = SiteIndex("wanhu", {"M1": {"building": "B01", "circuit": "stairwell_lighting"}})


def reading(clock, kwh: str, volts: float = 220.0) -> Reading:
    return Reading("M1", clock.now(), {"voltage_v": volts, "energy_kwh": float(kwh)}, {"energy_kwh": Decimal(kwh)})


def rows(ledger: Ledger, sql: str, *args) -> list:
    return ledger._db.execute(sql, args).fetchall()


class FakeWriter:
    """Stands in for InfluxDB where only what was sent matters."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    async def write(self, lines) -> None:
        self.lines += lines

    async def close(self) -> None:
        pass


def influx_cfg(tmp_path, server):
    return parse_site({"site": SITE, "storage": {"path": str(tmp_path / "gw.db")},
                       "influxdb": {"version": 1, "url": server.url, "database": server.database,
                                    "batch_age_s": 0}}, base_dir=tmp_path).influxdb


async def drain(ledger: Ledger, drainer: Drainer) -> None:
    task = asyncio.create_task(drainer.run())
    try:
        async with asyncio.timeout(20):
            while ledger.outbox_depth:
                await asyncio.sleep(0.05)
    finally:
        drainer.stop()
        await asyncio.wait_for(task, 10)


# ---- the kernel's answer on this machine ------------------------------------------------------

def test_adjtimex_reader_on_this_machine_answers_or_says_it_cannot():
    head = {8: 40, 4: 20}[ctypes.sizeof(ctypes.c_long)]         # byte offset of `status` in struct timex
    assert _TimexHead.status.offset == head
    k = read_adjtimex()
    if k is not None:                                          # either answer is fine; a crash is not
        assert 0 <= k.state <= TIME_ERROR and isinstance(k.status, int) and k.maxerror_us >= 0
        assert k.synced == (k.state != TIME_ERROR and not k.status & STA_UNSYNC)
    state = SystemClockSource().sync_state()
    assert state.synced in (True, False, None) and state.detail
    src = SystemClockSource()
    assert src.boot_id() == src.boot_id() and src.mono_us() > 0
    assert KernelClock(TIME_ERROR, 0, 16_000_000, 16_000_000).synced is False
    assert KernelClock(0, STA_UNSYNC, 0, 0).synced is False and KernelClock(0, 0x2001, 0, 0).synced is True


# ---- untrusted at start, marked, synchronised, repaired, released ----------------------------------

async def test_untrusted_start_is_marked_then_repaired_exactly_and_the_held_points_released(tmp_path, influx1,
                                                                                            caplog):
    caplog.set_level(logging.INFO, logger="gateway.timesync")
    src = FakeClockSource(EPOCH_WALL, mono_s=12.345678, boot="b1", synced=False)
    clock = SourceClock(src)
    ledger = Ledger(tmp_path / "gw.db", encoder=Encoder(INDEX))
    ts = TimeSync(src, ledger)
    ts.start()
    assert not ts.trusted and "before this software was released" in ts.reason
    d0 = to_us(EPOCH_WALL) - src.mono                          # wall - mono of the wrong timeline

    recorded = []
    for i in range(4):
        src.advance(1.5, us=7)
        ts.check()
        e = reading(clock, f"100.{i}")
        recorded.append(to_us(e.ts))
        ledger.add(e)
    ledger.add(DeviceStatus("M1", "meter", True, clock.now(), "answering"))
    ledger.add(CardSwipe("r1", "gate-n", "in", clock.now(), "0001234567", "h1", "resident", "张三", "B01-101", ""))
    ledger.add(DoorEvent("gate-n", "opened", clock.now(), "acs"))
    wand_ts = datetime(2026, 11, 23, 13, 10, tzinfo=UTC)       # the wand's own clock: right all along
    ledger.add(PatrolCheckin("wand-1", "CP01", "TAG1", "张三", "g1", wand_ts, clock.now(), "wand"))
    ledger.add(PatrolCheckin("pr-1", "CP02", "TAG2", "张三", "g1", clock.now(), clock.now(), "online"))
    alert = Alert("v/M1/1", "v", "threshold", "M1", "warning", "active", "过压", "over", clock.now(), clock.now())
    ledger.add(AlertChange(alert, "raised"))
    ledger.add(GatewayStats(clock.now(), {"readings_stored": 4}))
    ledger.flush()
    src.advance(0.1)
    late = reading(clock, "100.9")                             # made now, still on its way at the repair

    # Marked, counters and points aside: nothing for billing or InfluxDB yet.
    for table in Ledger.CLOCK_TABLES:
        assert rows(ledger, f"SELECT count(*) FROM {table} WHERE episode IS NULL") == [(0,)], table
    assert rows(ledger, "SELECT count(*) FROM energy") == [(0,)]
    assert rows(ledger, "SELECT count(*) FROM energy_held WHERE episode = 1") == [(4,)]
    assert ledger.outbox_depth == 0 and ledger.outbox_held == 11
    writer = FakeWriter()
    await drain(ledger, Drainer(ledger, writer, influx_cfg(tmp_path, influx1), clock))
    assert writer.lines == []

    # NTP steps the clock to true time.
    src.advance(0.15)
    src.step(to=TRUE_SYNC)
    src.synced = True
    ts.check()
    assert ts.trusted and ts.settled
    offset = (to_us(TRUE_SYNC) - src.mono) - d0                # true = trusted wall now - (mono now - mono then)
    (repair,) = ts.repairs
    assert repair.offset_us == offset
    assert repair.rows == {"readings": 4, "device_status": 1, "swipes": 1, "door_events": 1, "alert_history": 1,
                           "patrol_checkins": 2, "alerts": 1, "energy": 4, "outbox": 11}
    got = [to_us(r.ts) for r in ledger.readings("M1")]
    assert got == [t + offset for t in recorded]
    assert got[-1] == to_us(TRUE_SYNC) - 250_000                # the last one, a quarter second before the sync
    assert [t for t, _ in ledger.energy_series("M1", 0, 2**62)] == got
    for table in Ledger.CLOCK_TABLES:
        assert rows(ledger, f"SELECT count(*) FROM {table} WHERE episode IS NOT NULL") == [(0,)], table
    (wand, online) = rows(ledger, "SELECT ts_us, received_us FROM patrol_checkins ORDER BY id")
    assert wand == (to_us(wand_ts), got[-1]) and online == (got[-1], got[-1])
    assert rows(ledger, "SELECT raised_us, updated_us FROM alerts") == [(got[-1], got[-1])]
    (ep,) = ledger.clock_episodes()
    assert (ep["state"], ep["offset_us"], ep["rows"]) == ("repaired", offset, repair.total)
    assert ledger.unrepaired_clock() == [] and ledger.outbox_held == 0
    steps = ledger.clock_steps()
    assert len(steps) == 1 and steps[0]["trusted"] == 1 and steps[0]["step_us"] == offset
    assert sum("clock episode 1 repaired: 26 rows" in r.getMessage() for r in caplog.records) == 1

    ledger.add(late)                                           # the straggler is moved as it arrives
    ledger.flush()
    assert to_us(list(ledger.readings("M1"))[-1].ts) == to_us(late.ts) + offset == to_us(TRUE_SYNC) - 150_000
    assert rows(ledger, "SELECT count(*) FROM readings WHERE episode IS NOT NULL") == [(0,)]

    # The held points reach InfluxDB at their true times, the patrol delay recomputed; no 1970 point.
    drainer = Drainer(ledger, make_writer(influx_cfg(tmp_path, influx1), tmp_path), influx_cfg(tmp_path, influx1),
                      clock)
    await drain(ledger, drainer)
    meter = sorted(influx1.points("meter"), key=lambda p: p["time"])
    assert [p["time"] for p in meter] == [t // 1000 for t in got] + [(to_us(late.ts) + offset) // 1000]
    assert [p["energy_kwh"] for p in meter] == [100.0, 100.1, 100.2, 100.3, 100.9]
    (patrol_wand,) = [p for p in influx1.points("patrol") if p["source"] == "wand"]
    assert patrol_wand["time"] == to_us(wand_ts) // 1000
    assert patrol_wand["delay_s"] == (from_us(got[-1]) - wand_ts).total_seconds()
    everything = [p["time"] for m in ("meter", "device_status", "access", "door", "patrol", "alert", "gateway")
                  for p in influx1.points(m)]
    assert len(everything) == 12 and min(everything) >= to_us(datetime(2026, 11, 1, tzinfo=UTC)) // 1000
    ledger.close()


class LiveFakeClock(FakeClockSource):
    """A fake source that runs: both clocks advance with the machine's monotonic clock; the wall
    clock starts where the test says and is stepped by the test (what NTP would do)."""

    def __init__(self, wall: datetime, synced: bool | None = False):
        super().__init__(wall, mono_s=5, boot="live", synced=synced)
        self._real0 = time.monotonic_ns() // 1000

    def _run(self) -> int:
        return time.monotonic_ns() // 1000 - self._real0

    def wall_us(self) -> int:
        return self.wall + self._run()

    def mono_us(self) -> int:
        return self.mono + self._run()

    def step(self, seconds: float = 0.0, us: int = 0, to: datetime | None = None) -> None:
        self.wall = (to_us(to) - self._run()) if to is not None else self.wall + round(seconds * 1e6) + us


async def test_the_running_gateway_polls_in_1970_then_repairs_and_sends_only_true_times(tmp_path, influx1):
    data = {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
            "meters": [{"id": "B01-stair", "bus": "b", "unit": 1, "model": "chint-ddsu666", "poll_s": 1,
                        "circuit": "stairwell_lighting", "building": "B01"}],
            "influxdb": {"version": 1, "url": influx1.url, "database": influx1.database, "batch_age_s": 0}}
    cfg = parse_site(data, base_dir=tmp_path)
    src = LiveFakeClock(EPOCH_WALL, synced=False)

    def count(sql: str) -> int:
        db = sqlite3.connect(f"file:{cfg.storage_path}?mode=ro", uri=True)
        try:
            return db.execute(sql).fetchone()[0]
        finally:
            db.close()

    async with SiteSimulation(cfg) as sim:
        gw = Gateway(sim.patched_config(), clock=SourceClock(src))
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))
        try:
            async with asyncio.timeout(30):
                while gw.ledger is None or count("SELECT count(*) FROM readings WHERE episode = 1") < 3:
                    await asyncio.sleep(0.1)
            assert not gw.timesync.trusted
            assert count("SELECT count(*) FROM readings WHERE episode IS NULL") == 0
            assert gw.ledger.outbox_held >= 3 and influx1.points("meter") == []
            src.step(to=datetime.now(UTC))                     # NTP: the machine's time is the truth here
            src.synced = True
            async with asyncio.timeout(30):
                while not (gw.timesync.settled and gw.ledger.outbox_held == 0 and gw.ledger.outbox_depth == 0
                           and count("SELECT count(*) FROM readings WHERE episode IS NULL") >= 6):
                    await asyncio.sleep(0.1)
        finally:
            gw.stop()
            await asyncio.wait_for(task, 15)
    db = sqlite3.connect(cfg.storage_path)
    stamps = [t for (t,) in db.execute("SELECT ts_us FROM readings WHERE meter = 'B01-stair' ORDER BY id")]
    assert db.execute("SELECT count(*) FROM readings WHERE episode IS NOT NULL").fetchone()[0] == 0
    assert db.execute("SELECT state FROM clock_episodes").fetchall() == [("repaired",)]
    assert stamps == sorted(stamps) and len(set(stamps)) == len(stamps)   # one timeline across the repair
    assert min(stamps) >= to_us(datetime(2026, 11, 1, tzinfo=UTC))
    db.close()
    sent = sorted(p["time"] for p in influx1.points("meter"))
    assert sent == [t // 1000 for t in stamps]


# ---- steps while trusted -------------------------------------------------------------------------

def test_forward_and_backward_steps_while_trusted_are_logged_once_and_the_rows_stay_as_recorded(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.timesync")
    src = FakeClockSource(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), boot="b1", synced=True)
    clock = SourceClock(src)
    ledger = Ledger(tmp_path / "gw.db", encoder=Encoder(INDEX))
    ts = TimeSync(src, ledger)
    ts.start()
    assert ts.trusted
    seen = []

    def poll(n: int, start: int = 0) -> None:
        for i in range(n):
            src.advance(1)
            ts.check()
            e = reading(clock, f"{200 + start + i}")
            seen.append(to_us(e.ts))
            ledger.add(e)

    poll(3)
    src.step(seconds=90, us=5)                                  # NTP steps forward 90 s
    poll(3, 3)
    src.step(seconds=-30)                                       # ... and back 30 s
    poll(3, 6)
    src.step(seconds=1.5)                                       # below the threshold: no step
    poll(2, 9)
    ledger.flush()
    assert ts.trusted and ledger.clock_episodes() == []
    assert [s["step_us"] for s in ledger.clock_steps()] == [90_000_005, -30_000_000]
    assert all(s["trusted"] for s in ledger.clock_steps())
    logged = [r.getMessage() for r in caplog.records if "clock stepped" in r.getMessage()]
    assert len(logged) == 2
    assert logged[0].startswith("clock stepped forward by 1 min 30.000005 s") and "stays trusted" in logged[0]
    assert logged[1].startswith("clock stepped backward by 30.000000 s") and "stays trusted" in logged[1]
    # The rows are what the clock said, in the order they were taken; nothing marked or moved.
    stored = rows(ledger, "SELECT ts_us, episode FROM readings ORDER BY id")
    assert [t for t, _ in stored] == seen and {e for _, e in stored} == {None}
    assert seen[3] - seen[2] == 91_000_005 and seen[6] - seen[5] == -29_000_000
    assert ledger.outbox_depth == 11 and ledger.outbox_held == 0
    ledger.close()


def test_a_step_to_an_implausible_time_is_an_episode_repaired_when_stepped_back(tmp_path):
    src = FakeClockSource(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), boot="b1", synced=True)
    clock = SourceClock(src)
    ledger = Ledger(tmp_path / "gw.db")
    ts = TimeSync(src, ledger)
    ts.start()
    src.advance(1)
    ts.check()
    ledger.add(reading(clock, "1.0"))
    src.advance(1)
    d_before = src.wall - src.mono
    src.step(to=datetime(1970, 1, 1, 0, 5, tzinfo=UTC))       # someone set the date to 1970
    ts.check()
    assert not ts.trusted and "implausible" in ts.reason
    src.advance(2)
    ts.check()
    wrong = reading(clock, "1.1")
    ledger.add(wrong)
    src.advance(3)
    src.step(to=from_us(d_before + src.mono))                   # set right again: back on the old timeline
    ts.check()
    assert ts.trusted
    ledger.flush()
    (_, moved) = [to_us(r.ts) for r in ledger.readings("M1")]
    d_wrong = to_us(datetime(1970, 1, 1, 0, 5, tzinfo=UTC)) - (src.mono - 5_000_000)   # wall - mono after the step
    assert moved == to_us(wrong.ts) + d_before - d_wrong
    assert moved == to_us(clock.now()) - 3_000_000             # it was taken 3 s before now
    assert [e["state"] for e in ledger.clock_episodes()] == ["repaired"]
    ledger.close()


# ---- fake-hwclock: plausible-looking, but before what the ledger already holds ----------------------

def test_fake_hwclock_time_before_the_ledger_is_untrusted_until_ntp_steps_it(tmp_path):
    newest = datetime(2026, 11, 23, 9, 59, tzinfo=UTC)
    ledger = Ledger(tmp_path / "gw.db")
    ledger.add(Reading("M1", newest, {"v": 1.0}))
    ledger.flush()
    saved = datetime(2026, 11, 23, 9, 2, tzinfo=UTC)           # fake-hwclock's last save, an hour old
    src = FakeClockSource(saved, mono_s=7, boot="b2", synced=None)   # no time-sync service says otherwise
    ts = TimeSync(src, ledger)
    ts.start()
    assert not ts.trusted and "before the newest time already in the ledger" in ts.reason
    src.advance(3600)                                           # running on: past the newest row, still wrong
    ts.check()
    assert not ts.trusted
    ledger.add(Reading("M1", SourceClock(src).now(), {"v": 2.0}))
    src.advance(5)
    src.step(to=datetime(2026, 11, 23, 11, 30, tzinfo=UTC))
    ts.check()
    assert ts.trusted
    assert [r.ts for r in ledger.readings("M1")] == [newest, datetime(2026, 11, 23, 11, 29, 55, tzinfo=UTC)]
    assert ledger.clock_episodes()[0]["after_us"] == to_us(newest)
    ledger.close()


def test_a_sync_by_slewing_repairs_by_the_drift_to_the_microsecond(tmp_path):
    ledger = Ledger(tmp_path / "gw.db")
    start = datetime(2026, 11, 23, 9, 2, tzinfo=UTC)
    src = FakeClockSource(start, mono_s=7, boot="b2", synced=False)  # plausible, but NTP has not spoken
    ts = TimeSync(src, ledger)
    ts.start()
    assert not ts.trusted and "not synchronised" in ts.reason
    src.advance(60)
    ts.check()
    ledger.add(Reading("M1", SourceClock(src).now(), {"v": 2.0}))
    src.advance(1, us=400)
    src.step(us=1_200_003)                                      # less than the step threshold: not a step
    src.synced = True
    ts.check()
    assert ts.trusted and ledger.clock_steps() == [] and ts.repairs[0].offset_us == 1_200_003
    assert [r.ts for r in ledger.readings("M1")] == [start + timedelta(seconds=60, microseconds=1_200_003)]
    ledger.close()


def test_without_a_time_sync_service_a_plausible_clock_is_trusted():
    src = FakeClockSource(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), synced=None)
    ts = TimeSync(src)
    ts.start()
    assert ts.trusted
    src2 = FakeClockSource(datetime(2026, 11, 23, 8, 0, tzinfo=UTC), synced=False)
    ts2 = TimeSync(src2)
    ts2.start()
    assert not ts2.trusted and "not synchronised" in ts2.reason


# ---- restarts while untrusted -----------------------------------------------------------------------

async def test_restart_in_a_new_boot_while_untrusted_leaves_an_unrepairable_episode_kept_reported_never_sent(
        tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.timesync")
    path = tmp_path / "gw.db"
    # A trusted day first: the ledger knows 2026-11-23 10:00.
    src = FakeClockSource(datetime(2026, 11, 23, 10, 0, tzinfo=UTC), boot="b0", synced=True)
    clock = SourceClock(src)
    ledger = Ledger(path, encoder=Encoder(INDEX))
    TimeSync(src, ledger).start()
    ledger.add(reading(clock, "500.0"))
    ledger.close()

    # Power cut; boot b1 comes up in 1970 and records for a while; another power cut before NTP.
    src.reboot(EPOCH_WALL, mono_s=6, boot="b1", synced=False)
    ledger = Ledger(path, encoder=Encoder(INDEX))
    ts = TimeSync(src, ledger)
    ts.start()
    assert not ts.trusted
    lost = []
    for i in range(3):
        src.advance(30)
        ts.check()
        e = reading(clock, f"500.{i + 1}")
        lost.append(to_us(e.ts))
        ledger.add(e)
    ledger.add(PatrolCheckin("pr-1", "CP01", "TAG1", "张三", "g1", clock.now(), clock.now(), "online"))
    ledger.close()

    # Boot b2: again 1970 (monotonic from 5 s again), then NTP.
    src.reboot(EPOCH_WALL, mono_s=5, boot="b2", synced=False)
    ledger = Ledger(path, encoder=Encoder(INDEX))
    ts = TimeSync(src, ledger)
    ts.start()
    assert [e["id"] for e in ts.unrepairable] == [1] and not ts.trusted
    said = [r.getMessage() for r in caplog.records if "cannot be tied to true time" in r.getMessage()]
    assert len(said) == 1 and "clock episode 1 " in said[0] and "its 11 rows" in said[0]
    src.advance(20)
    ts.check()
    kept = reading(clock, "500.9")
    ledger.add(kept)
    src.advance(1)
    true_now = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    src.step(to=true_now)
    src.synced = True
    ts.check()
    assert ts.trusted and [r.episode for r in ts.repairs] == [2]

    # Episode 1 keeps its 1970 times, marked; its counters are not billed, its points never sent.
    assert rows(ledger, "SELECT ts_us FROM readings WHERE episode = 1 ORDER BY id") == [(t,) for t in lost]
    assert [t for t, _ in ledger.energy_series("M1", 0, 2**62)] == \
        [to_us(datetime(2026, 11, 23, 10, 0, tzinfo=UTC)), to_us(true_now) - 1_000_000]
    (ep,) = ledger.unrepaired_clock()
    assert (ep["id"], ep["state"], ep["boot"]) == (1, "unrepairable", "b1")
    assert ep["rows"]["readings"] == 3 and ep["rows"]["energy"] == 3 and ep["rows"]["outbox"] == 4
    assert ep["energy"] == {"M1": (3, lost[0], lost[-1])}
    assert ep["after_us"] == to_us(datetime(2026, 11, 23, 10, 0, tzinfo=UTC))      # after the trusted reading
    assert ep["before_us"] == to_us(true_now) - 26_000_000                          # before boot b2 began
    # What the rules take back after a restart leaves them out too (gateway/rules/restore.py).
    assert ledger.last_counters(["M1"], "energy_kwh", lost[-1] + 1) == []
    assert [c[0] for c in ledger.counters_around(["M1"], "energy_kwh", [lost[1]], 10**9, 2**62)] == ["M1"]
    assert ledger.counters_around(["M1"], "energy_kwh", [lost[1]], 10**9, 2**62)[0][2:6] == (None,) * 4
    assert ledger.patrol_checkins_between(0, 2**62) == []
    writer = FakeWriter()
    drainer = Drainer(ledger, writer, SimpleNamespace(outbox_max_mb=100, batch_size=100, batch_age_s=0,
                                                      max_in_flight=1, backoff_max_s=1, url="fake"), clock)
    await drain(ledger, drainer)
    assert len(writer.lines) == 2 and all(int(line.rsplit(" ", 1)[1]) > 1_700_000_000_000 for line in writer.lines)
    assert ledger.outbox_held == 4 and drainer.stats()["outbox_held"] == 4

    # Billing: a data-quality note over the span of true time the episode lies in, no 1970 counter.
    plan = SimpleNamespace(start_us=to_us(datetime(2026, 11, 1, tzinfo=TZ)),
                           end_us=to_us(datetime(2026, 12, 1, tzinfo=TZ)), tz=TZ)
    (note,) = clock_notes(ledger.unrepaired_clock(), SimpleNamespace(id="M1"), plan)
    assert (note.meter, note.kind, note.kwh) == ("M1", "gap", None)
    assert note.start == datetime(2026, 11, 23, 18, 0, tzinfo=TZ) and note.end == from_us(ep["before_us"])
    assert "cannot be repaired" in note.detail_en and "1970-01-01" in note.detail_en
    assert clock_notes(ledger.unrepaired_clock(), SimpleNamespace(id="M2"), plan) == []
    ledger.close()

    # `gateway status` reads it from the ledger (read-only).
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    report = clock_report(ro)
    ro.close()
    assert report["untrusted_now"] is False and report["steps"] == 1
    (r,) = report["unrepaired"]
    assert (r["id"], r["state"], r["boot"], r["points_held"], r["rows"]["readings"]) == (1, "unrepairable", "b1", 4, 3)
    assert r["clock_said"][0].startswith("1970-01-01") and r["true_time_between"][0] == "2026-11-23T10:00:00+00:00"

    # The next start (same boot, clock still trusted) reports it again, and never repairs it.
    ledger = Ledger(path)
    ts = TimeSync(src, ledger)
    ts.start()
    assert ts.trusted and [e["id"] for e in ts.unrepairable] == [1]
    assert [(e["id"], e["state"]) for e in ledger.unrepaired_clock()] == [(1, "unrepairable")]
    ledger.close()


def test_restart_in_the_same_boot_while_untrusted_goes_on_in_the_episode_and_is_repaired(tmp_path):
    path = tmp_path / "gw.db"
    src = FakeClockSource(EPOCH_WALL, mono_s=9, boot="b1", synced=False)
    clock = SourceClock(src)
    ledger = Ledger(path)
    ts = TimeSync(src, ledger)
    ts.start()
    d0 = src.wall - src.mono
    src.advance(10)
    first = reading(clock, "1.0")
    ledger.add(first)
    ledger.close()
    src.advance(4)                                              # the gateway restarts: same boot
    ledger = Ledger(path)
    ts = TimeSync(src, ledger)
    ts.start()
    assert not ts.trusted and ts.status()["episode"] == 1 and ts.unrepairable == []
    src.advance(10)
    second = reading(clock, "1.1")
    ledger.add(second)
    src.step(to=TRUE_SYNC)
    src.synced = True
    ts.check()
    off = (to_us(TRUE_SYNC) - src.mono) - d0
    assert [to_us(r.ts) for r in ledger.readings("M1")] == [to_us(first.ts) + off, to_us(second.ts) + off]
    assert [(e["id"], e["state"]) for e in ledger.clock_episodes()] == [(1, "repaired")]
    ledger.close()


# ---- the rules: no patrol judgement on an untrusted clock ---------------------------------------------

def patrol_site(tmp_path):
    cps = [f"CP0{i}" for i in range(1, 5)]
    return parse_site({
        "site": SITE, "storage": {"path": str(tmp_path / "gw.db")},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "patrol": {"checkpoints": [{"id": c, "tag": f"04A1000{c[-1]}", "name": f"{c[-1]}号巡更点"} for c in cps],
                   "readers": [{"id": "pr-1", "type": "mqtt", "topic": "wanhu/patrol/pr-1/read"}],
                   "routes": [{"id": "north", "name": "北环线", "checkpoints": cps, "leg_minutes": 4,
                               "tolerance_minutes": 3,
                               "shifts": [{"start": "20:00", "end": "06:00", "every_minutes": 120}]}]},
        "rules": [{"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["pr-1"]}]}, base_dir=tmp_path)


async def test_a_round_walked_while_the_clock_is_untrusted_is_judged_after_the_repair_not_missed(tmp_path):
    boot = datetime(2026, 11, 23, 21, 55, tzinfo=TZ)            # true time at power-up; the box says 1970
    src = FakeClockSource(datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC), mono_s=5, boot="b1", synced=False)
    mono0 = src.mono
    clock = SourceClock(src)
    gw = Gateway(patrol_site(tmp_path), clock=clock)
    gw.ledger = Ledger(gw.cfg.storage_path)
    gw._watch_clock()
    ts = gw.timesync
    assert not ts.trusted
    gw._alerting()
    changes = gw.hub.subscribe(AlertChange, name="test")
    task = asyncio.create_task(gw._run_rules())

    def true_now() -> datetime:
        return boot + timedelta(microseconds=src.mono - mono0)

    async def until(true_local: datetime) -> None:
        src.advance(us=to_us(true_local) - to_us(true_now()))
        ts.check()
        await asyncio.sleep(0.01)

    async def read(cp: str, true_local: datetime) -> None:
        await until(true_local)
        now = clock.now()
        gw.hub.publish(PatrolCheckin("pr-1", cp, f"04A1000{cp[-1]}", "张三", "g1", now, now, "online"))
        await asyncio.sleep(0.01)

    async def ticked_to(t: datetime) -> None:
        async with asyncio.timeout(30):
            while gw.rules.last_tick is None or gw.rules.last_tick < t:
                await asyncio.sleep(0.02)

    try:
        # The 22:00 round, walked perfectly while the box thinks it is 1970.
        for k, minute in enumerate((0, 4, 8, 12)):
            await read(f"CP0{k + 1}", boot.replace(hour=22, minute=minute, second=10))
        await until(boot.replace(hour=22, minute=20))
        assert gw.rules.last_tick is None and gw.restored is None  # nothing judged on the wrong clock
        assert len(gw._held_events) == 4
        # NTP at 22:20: the clock is stepped to true time.
        src.step(to=true_now())
        src.synced = True
        ts.check()
        assert ts.trusted
        await ticked_to(boot.replace(hour=22, minute=20))
        assert gw.restored is not None and gw.started_at == boot
        # The 00:00 round, in trusted time, skips CP03: that one is missed (the rules judge again).
        midnight = datetime(2026, 11, 24, 0, 0, tzinfo=TZ)
        for cp, minute in (("CP01", 0), ("CP02", 4), ("CP04", 12)):
            await read(cp, midnight.replace(minute=minute, second=10))
        await until(midnight.replace(minute=20))
        await ticked_to(midnight.replace(minute=20))
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gw.ledger.close()
    issues = {}
    for c in changes.take_all():
        issues[c.alert.source] = sorted((i["what"], i.get("checkpoint", "")) for i in c.alert.details["issues"])
    assert issues == {"north@2026-11-24T00:00": [("missed", "CP03")]}


def test_held_events_are_bounded_and_given_back_only_once_repaired():
    src = FakeClockSource(EPOCH_WALL, synced=False)
    ts = TimeSync(src)
    ts.start()
    held = HeldEvents(ts.timeline, limit=3)
    clock = SourceClock(src)
    held.hold([reading(clock, str(i)) for i in range(5)])
    assert len(held) == 3 and held.dropped == 2
    assert held.release() == [] and held.unplaced == 3          # episode not repaired: nothing to judge
    held.hold([reading(clock, "9")])
    src.step(to=TRUE_SYNC)
    src.synced = True
    ts.check()
    (e,) = held.release()
    assert e.ts == TRUE_SYNC and isinstance(ts.source.sync_state(), SyncState)


def test_ledger_schema_keeps_untrusted_rows_apart(tmp_path):
    Ledger(tmp_path / "gw.db").close()
    db = sqlite3.connect(tmp_path / "gw.db")
    for t in Ledger.CLOCK_TABLES:
        assert "episode" in [c[1] for c in db.execute(f"PRAGMA table_info({t})")], t
    assert {"clock_episodes", "clock_steps", "energy_held", "outbox_held"} <= \
        {n for (n,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


async def test_an_unknown_card_and_a_forced_door_reach_the_guards_while_the_clock_is_untrusted(tmp_path):
    """Rules that need only the event judge at once on an untrusted clock; their open alerts move
    to true time when it is repaired; the rules that need the time of day still wait."""
    boot = datetime(2026, 11, 23, 3, 0, tzinfo=TZ)               # true time at power-up; the box says 1970
    src = FakeClockSource(datetime(1970, 1, 1, 0, 0, 5, tzinfo=UTC), mono_s=5, boot="b1", synced=False)
    mono0 = src.mono
    clock = SourceClock(src)
    (tmp_path / "cards.csv").write_text("number,holder,household,role,valid_from,valid_to,revoked\n"
                                        "1234567890,张伟,B01-1-101,staff:guard,,,\n", encoding="utf-8")
    cfg = parse_site({
        "site": SITE, "storage": {"path": str(tmp_path / "gw.db")},
        "doors": [{"id": "gate-s", "name": "南门"}],
        "cards": {"file": "cards.csv"},
        "rules": [{"id": "door-forced", "kind": "door", "check": "forced_open", "severity": "critical"},
                  {"id": "bad-card", "kind": "access", "check": "invalid_card"},
                  {"id": "staff-hours", "kind": "access", "check": "staff_hours",
                   "hours": {"start": "06:00", "end": "22:00"}}]}, base_dir=tmp_path)
    gw = Gateway(cfg, clock=clock)
    gw.ledger = Ledger(gw.cfg.storage_path)
    gw._watch_clock()
    ts = gw.timesync
    assert not ts.trusted
    gw._alerting()
    changes = gw.hub.subscribe(AlertChange, name="test")
    task = asyncio.create_task(gw._run_rules())

    def true_now() -> datetime:
        return boot + timedelta(microseconds=src.mono - mono0)

    async def settle() -> None:
        for _ in range(20):
            await asyncio.sleep(0.01)
    try:
        await settle()                          # the rules task subscribes to the hub
        src.advance(seconds=60)
        ts.check()
        gw.hub.publish(DoorEvent("gate-s", "forced_open", clock.now(), "mqtt"))
        gw.hub.publish(CardSwipe("r1", "gate-s", "in", clock.now(), "3999999999", "h", "unknown"))
        # a guard's own card at 03:01 true time: staff hours would object, but only on a trusted clock
        gw.hub.publish(CardSwipe("r1", "gate-s", "in", clock.now(), "1234567890", "h2", "staff", holder="张伟",
                                 role="staff:guard"))
        await settle()
        live = [(c.what, c.alert.rule) for c in changes.take_all()]
        assert sorted(live) == [("raised", "bad-card"), ("raised", "door-forced")]    # at once, not held
        forced = gw.rules.book.get("door-forced", "gate-s")
        assert forced.raised_at.year == 1970
        # NTP: the clock is stepped to true time and repaired
        src.advance(seconds=30)
        src.step(to=true_now())
        src.synced = True
        ts.check()
        assert ts.trusted
        async with asyncio.timeout(10):          # the rules' next turn gives the held events back
            while len(gw._held_events):
                await asyncio.sleep(0.05)
        await settle()
        assert abs((forced.raised_at - (boot + timedelta(seconds=60))).total_seconds()) < 1
        assert gw.rules.book.get("door-forced", "gate-s") is forced            # the same alert, not a second one
        after = [(c.what, c.alert.rule) for c in changes.take_all()]
        assert ("raised", "door-forced") not in after and ("raised", "bad-card") not in after
        assert ("raised", "staff-hours") in after         # judged after the repair, at its true 03:01
        staff = gw.rules.book.get("staff-hours", "gate-s")
        assert abs((staff.raised_at - (boot + timedelta(seconds=60))).total_seconds()) < 1 and "03:01" in staff.message
        gw.hub.publish(DoorEvent("gate-s", "closed", clock.now(), "mqtt"))
        await settle()
        assert ("cleared", "door-forced") in [(c.what, c.alert.rule) for c in changes.take_all()]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        gw.ledger.close()
