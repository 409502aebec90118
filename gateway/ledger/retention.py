"""Storage care: how long the ledger keeps what, and what happens when the disk fills up.

**Retention** (`Retention`, run by the runtime once shortly after start and then every
`storage.retention_every_h`; also `python3 -m gateway.ledger.retention run -c SITE`). Every delete is a
small transaction of at most `batch_rows` rows, written and synced in the ledger's commit
thread on its connection (`Ledger.write_off_loop`, holding the ledger's write lock as commits and
the indexer do): the event loop goes on while a batch waits for the card, and a commit waits for
at most one batch (`bench/storage.py` measures the longest). A run stopped during a batch lets
that batch end first: nothing is left half deleted, and nothing writes after the ledger closed.
What a run still does on the loop's connection is read: the keys it walks, the id spans, how far
each meter's thinning got.

- `readings` (every field of every poll) are kept `storage.raw_days` (62).
- `energy` (each reading's energy counter again, what billing reads) is kept
  `storage.energy_years` (10). A meter's local month that ended more than `raw_days` ago is
  thinned once to what billing needs: in each 15-minute slot of local time the first and the
  last counter (and the second when the first lies exactly on the boundary, because billing's
  bracket reading after a month is the first one strictly after it). The interval code spreads
  the step across a boundary in proportion to time, so exact slot kWh need the readings on
  *both* sides of every boundary; the steps between two kept readings inside a slot add up
  to the same kWh. Only plain slots are thinned: the counter never goes down, never rises
  faster than the circuit's maximum power, no step is longer than the gap threshold and no
  replacement lies near; the others keep every counter. Then the interval walk of billing
  (`billing.intervals.meter_intervals`, with the bracket readings `allocate.read_meter` uses) is
  run on the month before and after: slot kWh, estimates, counters at the month's edges and
  data-quality notes must be identical, or the month stays raw. The check uses the limits of the
  site file in force (`max_power_kw`, `allocation.gap_minutes`, `resolution_kwh`); the only
  thing that changes is the count of readings used. A month is marked done in `meta`
  (`retention:energy_thinned:<meter>`), so it is looked at once.
- `device_status` (the newest row of each device always stays), `swipes`, `door_events`,
  `patrol_checkins`, `alert_history` (not of alerts still open), cleared `alerts` and done
  `ack_requests` are kept `storage.events_days` (400: a year of access disputes);
  `outbox_rejected` is kept `raw_days`.
- The InfluxDB `outbox` is never touched: its rows are independent copies in line protocol
  (no reference to `readings`), so a reading can go while its point still waits, and the
  outbox has its own budget (`influxdb.outbox_max_mb`).
- Rows recorded while the wall clock was not trusted (`episode` set, gateway/timesync.py) are
  left alone, and nothing is removed while the clock is not trusted: a clock stepped years
  ahead must not empty the ledger.

Space: SQLite puts freed pages on its free list and uses them for new rows before it grows
the file, so once retention removes a day a day, the file stops growing; it never shrinks by
itself. `auto_vacuum` stays off: incremental vacuum would give pages back to the filesystem
only for the ledger to take them again the next day, and its pointer-map pages cost a write
on every page the ledger allocates. After lowering a retention limit, `vacuum()` (`python3 -m
gateway.ledger.retention vacuum --db PATH`, gateway stopped) rewrites the file once; it needs free
space about the size of the ledger.

**Disk guard** (`DiskGuard`, asked by the ledger before each commit: one `statvfs`).
Below `storage.min_free_mb` on the ledger's filesystem it logs one ERROR per episode,
publishes a `DeviceStatus` (device `ledger`, kind `storage`, offline) and sheds the InfluxDB
outbox with the drainer's own order (self metrics, then meter points thinned to their energy
counters, ...; `Ledger.shed`): the freed pages take the next readings without growing the file.
Below `storage.floor_free_mb`, when SQLite has no free pages of its own left either, the ledger
stops committing and holds the batches in memory (`storage.hold_max_mb`; beyond that the oldest
InfluxDB points go first, then the readings' instantaneous fields, keeping their energy counters,
then the oldest counters), rather than let a transaction hit a full disk. Both lift with a
margin when space is back, each said once. A commit that fails anyway (SQLITE_FULL) keeps its
batch and is retried every commit interval (`Ledger._flush_logged`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable, Iterable
from zoneinfo import ZoneInfo

from ..clock import REAL_CLOCK, Clock, to_us
from ..events import DeviceStatus
from .writer import Ledger, to_the_end

log = logging.getLogger(__name__)

DAY_US = 86_400_000_000
HOUR_US = 3_600_000_000
MB = 1024 * 1024
THINNED_KEY = "retention:energy_thinned:"   # + meter -> the last local month looked at, "2026-08"


# ---- energy compaction --------------------------------------------------------------------------

def month_bounds_us(year: int, month: int, tz: ZoneInfo) -> tuple[int, int]:
    """UTC µs of local midnight on the 1st of the month and of the next month."""
    nxt = (year + month // 12, month % 12 + 1)
    return to_us(datetime(year, month, 1, tzinfo=tz)), to_us(datetime(*nxt, 1, tzinfo=tz))


def month_of(us: int, tz: ZoneInfo) -> tuple[int, int]:
    local = datetime.fromtimestamp(us / 1e6, timezone.utc).astimezone(tz)
    return local.year, local.month


def next_month(ym: tuple[int, int]) -> tuple[int, int]:
    return ym[0] + ym[1] // 12, ym[1] % 12 + 1


def thinnable(points: list[tuple[int, Decimal]], start_us: int, end_us: int, limits,
              replacements_us: Iterable[int] = ()) -> list[int]:
    """The timestamps of the counters in [start_us, end_us) that billing does not need.

    `points` are (ts_us, counter) in time order and include the neighbours just outside the
    range (the last before it, the first after it). Slot k is [start_us + k·15 min, …). In a
    plain slot all but its first and last counter can go (and the second when the first lies
    exactly on the boundary); a slot is plain when every step from the last counter before it to
    the first after it rises by no less than 0 and no more than the maximum power allows, lasts
    no longer than the gap threshold, and no replacement falls inside that span.
    """
    from ..billing.tariffs import SLOT_US
    per_us = Decimal(repr(limits.max_power_kw)) / HOUR_US if limits.max_power_kw else None
    gap = limits.gap_us
    reps = sorted(replacements_us)
    n = len(points)
    ok = [False] * n        # ok[j]: the step from j-1 to j is plain
    for j in range(1, n):
        (t0, c0), (t1, c1) = points[j - 1], points[j]
        dt, d = t1 - t0, c1 - c0
        ok[j] = 0 < dt <= gap and d >= 0 and (per_us is None or d <= per_us * dt)
    drop: list[int] = []
    i = 0
    while i < n and points[i][0] < start_us:
        i += 1
    while i < n and points[i][0] < end_us:
        k = (points[i][0] - start_us) // SLOT_US
        j = i
        while j + 1 < n and points[j + 1][0] < end_us and (points[j + 1][0] - start_us) // SLOT_US == k:
            j += 1
        if j - i >= 2:
            lo, hi = max(i, 1), min(j + 1, n - 1)
            a, b = points[max(i - 1, 0)][0], points[min(j + 1, n - 1)][0]
            if (all(ok[lo:hi + 1]) and points[j][0] - points[i][0] <= gap
                    and not any(a <= r <= b for r in reps)):
                first = i + 1 if points[i][0] == start_us + k * SLOT_US else i
                drop.extend(points[x][0] for x in range(first + 1, j))
        i = j + 1
    return drop


@dataclass
class Thinning:
    meter: str
    month: str
    drop: list[int] = field(default_factory=list)   # ts_us of the counters to delete
    counters: int = 0                                 # in the month before thinning
    kept_raw: str = ""                                # why nothing is thinned (empty: thinned or nothing to do)


class _Reader:
    """A connection of its own for the thinning check, which runs in a worker thread while the
    event loop goes on with the ledger's connection. It reads with the ledger's own queries."""

    energy_series = Ledger.energy_series
    energy_before = Ledger.energy_before
    energy_after = Ledger.energy_after
    replacements = Ledger.replacements

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA busy_timeout=5000")

    def close(self) -> None:
        self._db.close()


def plan_thinning(reader, cfg, meter: str, ym: tuple[int, int]) -> Thinning:
    """What can go of one meter's local month, checked against billing's interval walk."""
    from ..billing.thinning import thinning_check
    tz = ZoneInfo(cfg.site.timezone)
    s, e = month_bounds_us(*ym, tz)
    plan = Thinning(meter, f"{ym[0]:04d}-{ym[1]:02d}")
    # exactly what billing reads for the month (allocate.read_meter)
    month = thinning_check(reader, cfg, meter, s, e, tz)
    plan.counters = month.counters
    if plan.counters < 3:
        return plan
    drop = thinnable(month.points, s, e, month.limits, month.replacements_us)
    if not drop:
        return plan
    if not month.exact_without(drop):
        plan.kept_raw = "thinning would change what billing computes for the month"
        return plan
    plan.drop = drop
    return plan


# ---- retention ----------------------------------------------------------------------------------

@dataclass
class RetentionRun:
    removed: Counter = field(default_factory=Counter)   # what -> rows
    batches: int = 0
    longest_s: float = 0.0                              # the longest batch's transaction, in the commit thread
    thinned_months: int = 0
    raw_months: list[str] = field(default_factory=list)  # "meter month: why" kept raw
    seconds: float = 0.0
    skipped: str = ""

    def line(self) -> str:
        if self.skipped:
            return f"retention: nothing removed: {self.skipped}"
        r = self.removed
        parts = [f"{r[k]} {k}" for k in ("readings", "energy counters older than the limit", "energy counters thinned",
                                         "device statuses", "swipes", "door events", "patrol checkins",
                                         "alert history", "cleared alerts", "ack requests", "rejected points") if r[k]]
        what = ", ".join(parts) or "nothing"
        thin = f"; {self.thinned_months} meter-months thinned" if self.thinned_months else ""
        raw = f", {len(self.raw_months)} kept raw ({'; '.join(self.raw_months[:3])})" if self.raw_months else ""
        return (f"retention: removed {what}{thin}{raw}; {self.batches} batches, longest "
                f"{self.longest_s * 1000:.0f} ms, {self.seconds:.1f} s in all")


class Retention:
    def __init__(self, ledger: Ledger, cfg, clock: Clock = REAL_CLOCK, batch_rows: int = 2000,
                 pause_s: float = 0.0, offload: bool = True, trusted: Callable[[], bool] | None = None):
        self.ledger = ledger
        self.cfg = cfg
        self.st = cfg.storage
        self.clock = clock
        self.batch_rows = batch_rows
        self.pause_s = pause_s          # between two batches (0: just let the loop run)
        self.offload = offload          # run the thinning check in a worker thread
        self.trusted = trusted or (lambda: True)
        self.tz = ZoneInfo(cfg.site.timezone)
        self.after_batch: Callable[[str, int], None] | None = None   # (what, rows): for tests and the bench
        self.last: RetentionRun | None = None
        self.pauses: list[float] = []   # every batch's duration, of the last run
        db = ledger.connection
        self._episode = {t: "episode" in {r[1] for r in db.execute(f"PRAGMA table_info({t})")}
                         for t in ("device_status", "swipes", "door_events", "patrol_checkins",
                                   "alerts", "alert_history")}

    def _trusted_only(self, table: str) -> str:
        return " AND episode IS NULL" if self._episode.get(table) else ""

    # -- one batch ---------------------------------------------------------------------------------
    async def _batch(self, run: RetentionRun, what: str, sql: str, args: tuple) -> int:
        return await self._call(run, what, self.ledger.write_off_loop, lambda db, *a: db.execute(sql, a).rowcount,
                                *args)

    async def _call(self, run: RetentionRun, what: str, write, *args) -> int:
        """One batch: `write(*args)` runs its transaction in the ledger's commit thread
        (Ledger.write_off_loop) and returns the rows it removed and how long it took there.
        Cancelled meanwhile, the batch still ends before the cancellation goes on."""
        done = await write(*args)
        n, took = done.result, done.seconds
        if n:
            run.batches += 1
            run.removed[what] += n
            run.longest_s = max(run.longest_s, took)
            self.pauses.append(took)
            if self.after_batch is not None:
                self.after_batch(what, n)
            await asyncio.sleep(self.pause_s)
        return n

    async def _drain(self, run: RetentionRun, what: str, sql: str, args: tuple) -> None:
        """Run a `DELETE ... LIMIT ?` until it removes fewer than a batch."""
        while await self._batch(run, what, sql, args + (self.batch_rows,)) == self.batch_rows:
            pass

    def _keys(self, table: str, column: str) -> list[str]:
        """The distinct values of an indexed leading column, one index probe each."""
        db = self.ledger.connection
        keys, last = [], db.execute(f"SELECT min({column}) FROM {table}").fetchone()[0]
        while last is not None:
            keys.append(last)
            last = db.execute(f"SELECT min({column}) FROM {table} WHERE {column} > ?", (last,)).fetchone()[0]
        return keys

    # -- a run -------------------------------------------------------------------------------------
    async def run_once(self, now: datetime | None = None) -> RetentionRun:
        began = time.perf_counter()
        run = RetentionRun()
        self.pauses = []
        if not self.trusted():
            run.skipped = "the wall clock is not trusted"
            self.last = run
            log.info(run.line())
            return run
        now_us = to_us(now or self.clock.now())
        raw_cut = now_us - self.st.raw_days * DAY_US
        events_cut = now_us - self.st.events_days * DAY_US
        energy_cut = now_us - round(self.st.energy_years * 365.25) * DAY_US
        ep = self._trusted_only
        # Readings in the order they were written (their id): a batch then empties whole pages of
        # the log instead of picking one meter's rows out of thousands of pages. It stops at the
        # first batch with nothing old; a reading that arrived late is found through its meter.
        # What the ledger has not moved into its per-meter form yet is moved first: a reading's
        # energy counter outlives it (gateway/ledger/indexer.py).
        await self.ledger.catch_up_async()
        span = self.ledger.reading_id_after(None, self.batch_rows)
        while span is not None:
            if not await self._call(run, "readings", self.ledger.delete_readings_off_loop, *span, raw_cut):
                break
            span = self.ledger.reading_id_after(span[1] + 1, self.batch_rows)
        while await self._call(run, "readings", self.ledger.delete_old_readings_off_loop,
                               raw_cut, self.batch_rows) == self.batch_rows:
            pass
        meters = self._keys("energy", "meter")
        for meter in meters:
            await self._drain(run, "energy counters older than the limit",
                              "DELETE FROM energy WHERE meter = ?1 AND ts_us < coalesce((SELECT ts_us FROM energy "
                              "WHERE meter = ?1 AND ts_us < ?2 ORDER BY ts_us LIMIT 1 OFFSET ?3), ?2)",
                              (meter, energy_cut))
        await self._thin_energy(run, meters, raw_cut)
        for device in self._keys("device_status", "device"):
            await self._drain(run, "device statuses",
                              "DELETE FROM device_status WHERE id IN (SELECT id FROM device_status WHERE device = ?1 "
                              f"AND ts_us < ?2{ep('device_status')} AND id < (SELECT max(id) FROM device_status "
                              "WHERE device = ?1) LIMIT ?3)", (device, events_cut))
        for table, what in (("swipes", "swipes"), ("door_events", "door events"),
                            ("patrol_checkins", "patrol checkins")):
            await self._drain(run, what, f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE ts_us < ?"
                              f"{ep(table)} ORDER BY ts_us LIMIT ?)", (events_cut,))
        await self._drain(run, "alert history",
                          "DELETE FROM alert_history WHERE id IN (SELECT id FROM alert_history WHERE ts_us < ?"
                          f"{ep('alert_history')} AND alert_id NOT IN (SELECT id FROM alerts WHERE state != "
                          "'cleared') ORDER BY ts_us LIMIT ?)", (events_cut,))
        await self._drain(run, "cleared alerts",
                          "DELETE FROM alerts WHERE id IN (SELECT id FROM alerts WHERE state = 'cleared' AND "
                          f"cleared_us < ?{ep('alerts')} LIMIT ?)", (events_cut,))
        await self._drain(run, "ack requests", "DELETE FROM ack_requests WHERE id IN (SELECT id FROM ack_requests "
                          "WHERE done = 1 AND ts_us < ? LIMIT ?)", (events_cut,))
        await self._drain(run, "rejected points", "DELETE FROM outbox_rejected WHERE id IN (SELECT id FROM "
                          "outbox_rejected WHERE rejected_us < ? LIMIT ?)", (raw_cut,))
        run.seconds = time.perf_counter() - began
        self.last = run
        log.info(run.line())
        return run

    async def _thin_energy(self, run: RetentionRun, meters: list[str], raw_cut: int) -> None:
        db = self.ledger.connection
        reader = None
        try:
            for meter in meters:
                done = db.execute("SELECT value FROM meta WHERE key = ?", (THINNED_KEY + meter,)).fetchone()
                if done:
                    ym = next_month(tuple(int(x) for x in done[0].split("-")))
                else:
                    first = db.execute("SELECT min(ts_us) FROM energy WHERE meter = ?", (meter,)).fetchone()[0]
                    if first is None:
                        continue
                    ym = month_of(first, self.tz)
                while month_bounds_us(*ym, self.tz)[1] <= raw_cut:
                    if reader is None:
                        reader = _Reader(self.ledger.path)
                    if self.offload:
                        # the reader is closed below: a cancelled run waits for the plan first
                        plan, cancelled = await to_the_end(asyncio.ensure_future(
                            asyncio.to_thread(plan_thinning, reader, self.cfg, meter, ym)))
                        if cancelled is not None:
                            raise cancelled
                    else:
                        plan = plan_thinning(reader, self.cfg, meter, ym)
                    for k in range(0, len(plan.drop), self.batch_rows):
                        chunk = plan.drop[k:k + self.batch_rows]
                        await self._batch(run, "energy counters thinned",
                                          "DELETE FROM energy WHERE meter = ? AND ts_us IN "
                                          "(SELECT value FROM json_each(?))", (meter, "[%s]" % ",".join(map(str, chunk))))
                    if plan.drop:
                        run.thinned_months += 1
                    if plan.kept_raw:
                        run.raw_months.append(f"{meter} {plan.month}: {plan.kept_raw}")
                        log.warning("retention: energy counters of %s in %s kept as they are: %s", meter, plan.month,
                                    plan.kept_raw)
                    await self.ledger.write_off_loop(
                        lambda w, *a: w.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) "
                                                "DO UPDATE SET value = excluded.value", a), THINNED_KEY + meter, plan.month)
                    ym = next_month(ym)
        finally:
            if reader is not None:
                reader.close()


# ---- the disk guard -----------------------------------------------------------------------------

def ledger_files_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


class DiskGuard:
    """Free space on the ledger's filesystem: the ledger's write gate, and the signals."""

    RESERVE = 16 * MB   # SQLite's own free pages that let writing go on below the floor

    def __init__(self, ledger: Ledger, storage, publish: Callable[[object], None] | None = None,
                 clock: Clock = REAL_CLOCK, usage: Callable[[Path], object] = shutil.disk_usage):
        self.ledger = ledger
        self.min_free = int(storage.min_free_mb * MB)
        self.floor = int(storage.floor_free_mb * MB)
        self.margin = max(10 * MB, self.min_free // 10)   # space must come back this far beyond a limit
        self.publish = publish
        self.clock = clock
        self.usage = usage
        self.where = ledger.path.parent
        self.free: int | None = None
        self.low = False        # below min_free: outbox shed, loud
        self.held = False       # below the floor: the ledger holds its batches in memory
        self.episodes = 0
        self.shed_wanted = False
        self.error = ""

    def _reusable(self) -> int:
        """Bytes of pages SQLite has freed and will use before it grows the file."""
        try:
            db = self.ledger.connection
            return db.execute("PRAGMA freelist_count").fetchone()[0] * db.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error:
            return 0

    def check(self) -> bool:
        """Look at the disk; True when the ledger may commit."""
        try:
            free = self.usage(self.where).free
        except OSError as e:
            if str(e) != self.error:
                self.error = str(e)
                log.error("ledger disk: cannot see the free space of %s: %s", self.where, e)
            return True
        self.error = ""
        self.free = free
        was = (self.low, self.held)
        if not self.low and free < self.min_free:
            self.low = True
            self.episodes += 1
            self.shed_wanted = True
            log.error("LEDGER DISK LOW: %.0f MB free on %s (storage.min_free_mb %.0f): shedding the InfluxDB outbox; "
                      "readings are still written; free some space", free / MB, self.where, self.min_free / MB)
        elif self.low and free >= self.min_free + self.margin:
            self.low = False
            log.warning("ledger disk: space is back, %.0f MB free on %s", free / MB, self.where)
        if not self.held and free < self.floor and self._reusable() < self.RESERVE:
            self.held = True
            log.error("LEDGER DISK FULL: %.0f MB free on %s (storage.floor_free_mb %.0f): the ledger stops writing and "
                      "holds readings in memory (up to storage.hold_max_mb %.0f MB) until space is back",
                      free / MB, self.where, self.floor / MB, self.ledger.hold_max_bytes / MB)
        elif self.held and (free >= self.floor + self.margin or self._reusable() >= 2 * self.RESERVE):
            self.held = False
            log.warning("ledger disk: writing again (%.0f MB free on %s); %d rows held in memory are committed now",
                        free / MB, self.where, self.ledger.pending)
        if (self.low, self.held) != was:
            self._status(not (self.low or self.held),
                         f"disk full: {free / MB:.0f} MB free, writing held" if self.held else
                         f"disk low: {free / MB:.0f} MB free" if self.low else f"{free / MB:.0f} MB free")
        return not self.held

    allow_write = check

    def _status(self, online: bool, reason: str) -> None:
        if self.publish is not None:
            self.publish(DeviceStatus("ledger", "storage", online, self.clock.now(), reason))

    async def shed(self) -> dict[str, int]:
        """Shed the whole sheddable outbox (energy counters stay), a little at a time."""
        self.shed_wanted = False
        total: Counter = Counter()
        ledger = self.ledger
        while self.low:
            step = ledger.shed(max(0, ledger.outbox_bytes - 4 * MB))
            if not step:
                break
            total.update(step)
            await asyncio.sleep(0)
        if total:
            log.warning("ledger disk low: shed from the InfluxDB outbox %s (energy counters are kept)",
                        ", ".join(f"{n} {m}" for m, n in total.items()))
        return dict(total)

    def stats(self) -> dict:
        path = self.ledger.path
        return {"disk_free_mb": round((self.free or 0) / MB, 1),
                "ledger_mb": round(ledger_files_bytes(path) / MB, 1) if path.exists() else 0.0,
                "ledger_reusable_mb": round(self._reusable() / MB, 1),
                "disk_low": int(self.low), "writes_held": int(self.held),
                "held_rows": self.ledger.pending if self.held or self.ledger.commit_failures else 0,
                "dropped_readings": self.ledger.dropped["readings"],
                "dropped_energy": self.ledger.dropped["energy"]}


# ---- the runtime's task -------------------------------------------------------------------------

class StorageCare:
    """Retention once `first_s` after start and every `retention_every_h`; the disk looked at
    every `check_s` (the ledger also asks before each commit)."""

    def __init__(self, ledger: Ledger, cfg, clock: Clock = REAL_CLOCK, publish=None,
                 trusted: Callable[[], bool] | None = None, check_s: float = 10.0, first_s: float = 30.0):
        self.retention = Retention(ledger, cfg, clock, trusted=trusted)
        self.guard = DiskGuard(ledger, cfg.storage, publish, clock)
        self.clock = clock
        self.every_s = cfg.storage.retention_every_h * 3600
        self.check_s = check_s
        self.first_s = first_s
        ledger.hold_max_bytes = int(cfg.storage.hold_max_mb * MB)
        ledger.write_gate = self.guard.allow_write

    async def run(self) -> None:
        due = self.clock.monotonic() + self.first_s
        while True:
            self.guard.check()
            if self.guard.shed_wanted:
                await self.guard.shed()
            if self.clock.monotonic() >= due:
                due = self.clock.monotonic() + self.every_s
                try:
                    await self.retention.run_once()
                except sqlite3.Error as e:   # a locked or full disk: the next run tries again
                    log.error("retention: stopped by the ledger: %s; trying again in %.0f h", e, self.every_s / 3600)
            await asyncio.sleep(self.check_s)

    def stats(self) -> dict:
        return self.guard.stats()


# ---- by hand --------------------------------------------------------------------------------------

def vacuum(path: Path) -> tuple[int, int]:
    """Rewrite the ledger once (gateway stopped): give freed pages back to the filesystem, and
    take the page size of a new ledger (schema.PAGE_SIZE: a ledger made by an older gateway keeps
    its 4 KiB pages until rewritten, and writes about twice as much; docs/storage.md).
    Returns the size before and after, bytes."""
    from .schema import PAGE_SIZE
    path = Path(path)
    before = ledger_files_bytes(path)
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        if db.execute("PRAGMA page_size").fetchone()[0] != PAGE_SIZE:
            db.execute("PRAGMA journal_mode=DELETE")     # a WAL ledger cannot change its page size
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
            db.execute("VACUUM")
            db.execute("PRAGMA journal_mode=WAL")
        else:
            db.execute("VACUUM")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    return before, ledger_files_bytes(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python3 -m gateway.ledger.retention", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="apply the site file's retention to its ledger now")
    r.add_argument("-c", "--config", required=True, type=Path)
    v = sub.add_parser("vacuum", help="rewrite the ledger to give freed pages back and take small pages "
                                      "(gateway stopped)")
    v.add_argument("--db", required=True, type=Path)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.cmd == "vacuum":
        free = shutil.disk_usage(args.db.parent).free
        size = ledger_files_bytes(args.db)
        if free < size * 1.1:
            print(f"not enough free space: {free / MB:.0f} MB free, the copy needs about {size / MB:.0f} MB")
            return 1
        before, after = vacuum(args.db)
        print(f"{args.db}: {before / MB:.1f} MB -> {after / MB:.1f} MB")
        return 0
    from ..config import load_site
    cfg = load_site(args.config)
    ledger = Ledger(cfg.storage_path)
    try:
        asyncio.run(Retention(ledger, cfg, offload=False).run_once())   # logs its line
    finally:
        ledger.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
