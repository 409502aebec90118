"""The SQLite ledger's write path: the gateway's local truth.

Commits are batched (at most about once per `commit_interval_s`) to spare the SD card, each
synced (WAL, synchronous=FULL: a committed transaction survives a power cut); rows are held in
memory while the disk is full (gateway/ledger/retention.py, DiskGuard). The schema and its
migrations: gateway/ledger/schema.py; what is read: gateway/ledger/queries.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import logging
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple

from ..clock import from_us, to_us
from ..events import (AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, LightingCommand, PatrolCheckin,
                      Reading)
from ..hub import Hub
from ..private import replace_file, tighten
from .queries import ENERGY_FIELD, LOG_COLS, Names, SLOT_SQL, activity, all_rows, count_readings, counters_around, counters_of, energy_after, energy_before, energy_series, has_readings, indexed, last_counters, slot, values_of
from .checkpoint import WAL_BYTES, Checkpointer
from .codec import encodable_counter, encode_counter_values, encode_vals, varint
from .indexer import Indexer
from .allocations import AllocationRuns
from .clock_repair import ClockEpisodes
from .lighting import LightingRecords
from .schema import INSERT_OUTBOX, LedgerError, connect, last_reading as _last_reading, migrate, transaction

log = logging.getLogger(__name__)

UPGRADE_ROWS = 20_000   # schema-8 readings copied per transaction at the first start
CONFIRM_DELAY_S = 60.0  # InfluxDB's confirmations are written this often (with a commit of rows)
LAZY_S = 30.0           # self metrics wait this long at most for a commit of rows to go with
SELF_METRICS = "gateway"  # their measurement
# Two readings of one meter at one instant: the higher counter stands, whichever came first.
INSERT_ENERGY = ("INSERT INTO energy (meter, ts_us, kwh) VALUES (?,?,?) ON CONFLICT (meter, ts_us) DO UPDATE SET "
                 "kwh = excluded.kwh WHERE CAST(excluded.kwh AS REAL) > CAST(energy.kwh AS REAL)")
NEVER_SHED = 100  # outbox priority of what the disk budget may never drop (energy counters)


@dataclass(frozen=True, slots=True)
class Replacement:
    """A meter swapped for another: the old meter's last counter and the new one's first."""

    meter: str
    at: datetime
    old_final: Decimal
    new_initial: Decimal
    by: str = ""
    note: str = ""
    recorded: datetime | None = None
    id: int = 0


@dataclass(frozen=True, slots=True)
class StoredReading:
    id: int
    meter: str
    ts: datetime
    values: dict[str, float]
    counters: dict[str, Decimal]


def _insert_field_events(db: sqlite3.Connection, events: list, ep: int | None = None) -> None:
    """Swipes, door events, patrol reads, alert changes and lighting commands; `ep` is the clock episode they were
    recorded in (None: the clock was trusted; see clock_episodes)."""
    swipes = [(to_us(e.ts), e.reader, e.door, e.direction, e.card_hash, e.card[-4:], e.category, e.holder,
               e.household, e.role, ep) for e in events if isinstance(e, CardSwipe)]
    doors = [(to_us(e.ts), e.door, e.state, e.source, ep) for e in events if isinstance(e, DoorEvent)]
    checkins = [(to_us(e.ts), to_us(e.received), e.reader, e.checkpoint, e.tag, e.guard, e.guard_hash, e.source, ep)
                for e in events if isinstance(e, PatrolCheckin)]
    db.executemany("INSERT INTO swipes (ts_us, reader, door, direction, card_hash, card_tail, category, holder, "
                   "household, role, episode) VALUES (?,?,?,?,?,?,?,?,?,?,?)", swipes)
    db.executemany("INSERT INTO door_events (ts_us, door, state, source, episode) VALUES (?,?,?,?,?)", doors)
    db.executemany("INSERT OR IGNORE INTO patrol_checkins (ts_us, received_us, reader, checkpoint, tag, guard, "
                   "guard_hash, source, episode) VALUES (?,?,?,?,?,?,?,?,?)", checkins)
    db.executemany("INSERT INTO lighting_commands (ts_us, circuit, state, source, by, reason, result, detail, "
                   "latency_s, episode) VALUES (?,?,?,?,?,?,?,?,?,?)",
                   [(to_us(e.ts), e.circuit, int(e.on), e.source, e.by, e.reason, e.result, e.detail, e.latency_s, ep)
                    for e in events if isinstance(e, LightingCommand)])
    for change in (e for e in events if isinstance(e, AlertChange)):
        a = change.alert
        us = lambda t: to_us(t) if t else None  # noqa: E731
        db.execute("INSERT INTO alerts (id, rule, kind, source, severity, state, message, message_en, raised_us, "
                   "updated_us, cleared_us, acked_by, ack_note, acked_us, value, details, episode) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                   "severity = excluded.severity, state = excluded.state, message = excluded.message, "
                   "message_en = excluded.message_en, updated_us = excluded.updated_us, "
                   "cleared_us = excluded.cleared_us, acked_by = excluded.acked_by, ack_note = excluded.ack_note, "
                   "acked_us = excluded.acked_us, value = excluded.value, details = excluded.details, "
                   "episode = coalesce(excluded.episode, alerts.episode)",
                   (a.id, a.rule, a.kind, a.source, a.severity, a.state, a.message, a.message_en, us(a.raised_at),
                    us(a.updated_at), us(a.cleared_at), a.acked_by, a.ack_note, us(a.acked_at), a.value,
                    json.dumps(a.details, ensure_ascii=False, default=str), ep))
        db.execute("INSERT INTO alert_history (alert_id, what, ts_us, state, message, episode) VALUES (?,?,?,?,?,?)",
                   (a.id, change.what, us(a.updated_at), a.state, a.message, ep))


def _counter(v) -> Decimal:
    return v if isinstance(v, Decimal) else Decimal(str(v))


def _log_row(event: Reading, *episode) -> tuple:
    """A reading as it waits for the commit: (meter, ts_us, field names, vals, kwh text, counter
    names, counters, [episode]). Compact (gateway/ledger/codec.py) unless a counter is not a
    finite decimal: then as schema 8 wrote it (float64 values, JSON counters; counter names None)."""
    values, counters = event.values, event.counters
    kwh = counters.get(ENERGY_FIELD)
    kwh = None if kwh is None else str(kwh)
    others = [_counter(v) for k, v in counters.items() if k != ENERGY_FIELD]
    if all(encodable_counter(v) for v in others):
        return (event.meter, to_us(event.ts), tuple(values), encode_vals(values.values()), kwh, tuple(counters),
                encode_counter_values(others), *episode)
    return (event.meter, to_us(event.ts), tuple(values), struct.pack(f"<{len(values)}d", *values.values()), kwh,
            None, json.dumps({k: str(v) for k, v in counters.items()}, separators=(",", ":")), *episode)


class _Ids:
    """Meter and field-set ids for one transaction, resolved on its connection: known ones from
    the ledger's caches, new ones inserted in the transaction itself (in the commit thread, never
    on the event loop: an insert of its own there waited for the commit thread's or the indexer's
    write lock) and added to the caches only once it committed, since a rolled-back id may later
    go to another name."""

    def __init__(self, db: sqlite3.Connection, meters: dict, field_sets: dict):
        self.db, self.meters, self.field_sets = db, meters, field_sets
        self.new_meters: dict[str, int] = {}
        self.new_field_sets: dict[tuple[str, ...], int] = {}

    def meter(self, name: str) -> int:
        found = self.meters.get(name, self.new_meters.get(name))
        if found is None:
            self.db.execute("INSERT INTO meters (name) VALUES (?) ON CONFLICT (name) DO NOTHING", (name,))
            found = self.new_meters[name] = self.db.execute("SELECT id FROM meters WHERE name = ?",
                                                            (name,)).fetchone()[0]
        return found

    def field_set(self, names: tuple[str, ...]) -> int:
        found = self.field_sets.get(names, self.new_field_sets.get(names))
        if found is None:
            text = ",".join(names)
            self.db.execute("INSERT INTO field_sets (names) VALUES (?) ON CONFLICT (names) DO NOTHING", (text,))
            found = self.new_field_sets[names] = self.db.execute("SELECT id FROM field_sets WHERE names = ?",
                                                                 (text,)).fetchone()[0]
        return found

    def row(self, row: tuple) -> tuple:
        """A pending reading (see _log_row) as the reading_log row it is written as."""
        meter, ts_us, names, vals, kwh, cnames, counters, *ep = row
        if cnames is not None:          # compact counters: the counter set's id goes first
            counters = varint(self.field_set(cnames) if cnames else 0) + counters
        return (self.meter(meter), ts_us, self.field_set(names), vals, kwh, counters, *ep)

    def committed(self) -> None:
        self.meters.update(self.new_meters)
        self.field_sets.update(self.new_field_sets)


@dataclass
class _Batch:
    """One commit's rows, taken from the pending lists (as they were pending, put back as they
    are if the commit fails) and, when due, the InfluxDB confirmations written with them."""
    readings: list
    statuses: list
    outbox: list
    energy: list
    field_events: list
    pending_marked: list
    marked: dict | None
    ok_us: int | None = None
    confirmed_o: list = field(default_factory=list)
    cursor: str | None = None


class WriteDone(NamedTuple):
    result: object
    seconds: float       # the transaction in its thread, write lock held


async def to_the_end(fut: asyncio.Future) -> tuple[object, asyncio.CancelledError | None]:
    """Await a worker thread's job until it has ended, even when the awaiting task is cancelled
    meanwhile (a cancellation cannot stop a thread halfway through a transaction). Returns the
    job's result (its exception is raised) and the cancellation to re-raise, if any."""
    cancelled = None
    while not fut.done():
        try:
            await asyncio.wait((fut,))     # unlike awaiting it, cancels nothing but the wait
        except asyncio.CancelledError as e:
            cancelled = e
    return fut.result(), cancelled


class Ledger(AllocationRuns, ClockEpisodes, LightingRecords):
    """Readings, statuses and the outbox. `encoder` (an event -> OutboxRow) turns the outbox on:
    every row is then committed in the same transaction as the reading it comes from."""

    def __init__(self, path: Path, commit_interval_s: float = 1.0, encoder=None, wal_bytes: int = WAL_BYTES,
                 index: dict | None = None, monotonic=time.monotonic):
        self.path = Path(path)
        self.monotonic = monotonic        # seconds, for how long confirmations wait (a bench simulates it)
        self.commit_interval_s = commit_interval_s
        self.encoder = encoder
        self._db = connect(self.path)
        migrate(self._db, self.path)
        self.page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        if wal_bytes > WAL_BYTES:
            self._db.execute(f"PRAGMA journal_size_limit={4 * wal_bytes}")
        self.checkpointer = Checkpointer(self.path, self.page_size, wal_bytes)
        self.checkpointer.start()
        self._finish_upgrade()
        # Commits run in a thread of their own ("ledger-commit") on a connection of their own:
        # the event loop never waits for a commit's write lock or its sync (docs/storage.md,
        # "Stalls"). `_write_lock` is held for each commit and each of the indexer's group
        # transactions, so a commit waits at most one short group instead of SQLite's busy
        # back-off, which sleeps past the gaps between groups.
        self._writer = connect(self.path)
        self._write_lock = threading.Lock()
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self.indexer = Indexer(self.path, write_lock=self._write_lock, **(index or {}))
        self.indexer.start()
        self._meters: dict[str, int] = {}
        self._readings: list[tuple] = []
        self._energy: list[tuple] = []
        self._statuses: list[tuple] = []
        self._outbox: list[tuple] = []
        self._field_events: list = []
        self.readings_written = 0
        self.commits = 0
        self.committed = asyncio.Event()  # set after each commit that added points for InfluxDB
        self._field_sets: dict[tuple[str, ...], int] = {}
        self._o_depth, self._o_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(line)), 0) FROM outbox").fetchone()
        self._outbox_start()
        # Storage care (gateway/ledger/retention.py): `write_gate()` False holds the batches in memory
        # (the disk is nearly full); held or failing, at most `hold_max_bytes` are kept, then the
        # InfluxDB points, the readings' other fields and the oldest energy counters go, in that order.
        self.write_gate = None
        self.gate_closed = False
        self.hold_max_bytes = 64 * 1024 * 1024
        self.dropped = {"points": 0, "readings": 0, "energy": 0}
        self.commit_failures = 0      # consecutive failed commits (the batch is kept and retried)
        self._dropping = False
        # Clock safety (gateway/timesync.py): `timeline` tells which untrusted clock episode an
        # event's time belongs to (None or empty: all trusted, nothing looked up). Events of an
        # untrusted episode wait in `_marked` and are written with their episode (see _marked_rows).
        self.timeline = None
        self._marked: list[tuple] = []    # (episode, event, outbox row or None)
        self.outbox_held = self._db.execute("SELECT count(*) FROM outbox_held").fetchone()[0]
        self._move_keys_out()

    def _finish_upgrade(self) -> None:
        """Copy the readings of a schema-8 ledger into reading_log, in transactions of
        UPGRADE_ROWS in id order, each deleting what it copied: the pages freed take the next
        copies, so the file grows by a batch, not by the readings. A start cut short goes on
        where it stopped. Rows keep their id and their bytes; their counters are in `energy`
        already (schema 6), so they count as moved (`indexed` was set by the migration)."""
        db = self._db
        if not db.execute("SELECT 1 FROM sqlite_master WHERE name = 'readings_old'").fetchone():
            return
        began, copied = time.monotonic(), 0
        total = db.execute("SELECT count(*) FROM readings_old").fetchone()[0]
        if total:
            log.warning("ledger %s: upgrading %d readings to the new layout (a few minutes per ten million; "
                        "readings and InfluxDB wait meanwhile)", self.path, total)
        while True:
            with transaction(db, "IMMEDIATE"):
                lo = db.execute("SELECT min(id) FROM readings_old").fetchone()[0]
                if lo is None:
                    db.execute("DROP TABLE readings_old")
                    break
                hi = db.execute("SELECT max(id) FROM (SELECT id FROM readings_old WHERE id >= ? ORDER BY id LIMIT ?)",
                                (lo, UPGRADE_ROWS)).fetchone()[0]
                db.execute("INSERT INTO meters (name) SELECT DISTINCT meter FROM readings_old WHERE id BETWEEN ? AND ? "
                           "ON CONFLICT (name) DO NOTHING", (lo, hi))
                copied += db.execute(
                    "INSERT INTO reading_log (id, meter, ts_us, field_set, vals, kwh, counters, episode) "
                    "SELECT r.id, m.id, r.ts_us, r.field_set, r.vals, NULL, r.counters, r.episode "
                    "FROM readings_old r JOIN meters m ON m.name = r.meter WHERE r.id BETWEEN ? AND ? ORDER BY r.id",
                    (lo, hi)).rowcount
                db.execute(f"INSERT INTO readings_by_meter (slot, meter, ts_us, id) SELECT {SLOT_SQL}, meter, "
                           "ts_us, id FROM reading_log WHERE id BETWEEN ? AND ? ORDER BY 1, 2, 3, 4", (lo, hi))
                db.execute("DELETE FROM readings_old WHERE id BETWEEN ? AND ?", (lo, hi))
            self.checkpointer.note_commit()
        if total:
            log.warning("ledger %s: %d readings upgraded in %.0f s", self.path, copied, time.monotonic() - began)

    # ---- writing ----

    def add(self, event: object) -> None:
        if self.timeline is not None and self.timeline.spans:
            event, episode = self.timeline.place(event)   # moved to true time if its episode is repaired
            if episode is not None:
                self._marked.append((episode, event, self.encoder(event) if self.encoder is not None else None))
                return
        if self.encoder is not None and not isinstance(event, Reading):   # a reading's point: the cursor
            row = self.encoder(event)
            if row is not None:
                if not self._outbox:
                    self._outbox_since = self.monotonic()
                self._outbox.append((row.measurement, row.priority, row.ts_ms, row.line, row.essential))
        if isinstance(event, Reading):
            # Meter, field sets and counter set are resolved when the batch is committed: an
            # insert here would raise out of the ledger's task when the disk is full.
            self._readings.append(_log_row(event))
        elif isinstance(event, DeviceStatus):
            self._statuses.append((event.device, event.kind, to_us(event.ts), int(event.online), event.reason))
        elif isinstance(event, (CardSwipe, DoorEvent, PatrolCheckin, AlertChange, LightingCommand)):
            self._field_events.append(event)

    def _ids(self, db: sqlite3.Connection) -> _Ids:
        return _Ids(db, self._meters, self._field_sets)

    @property
    def pending(self) -> int:
        """Rows waiting for the commit; a reading's energy counter counts as a row of its own (it
        becomes one in `energy`)."""
        return len(self._readings) + len(self._statuses) + len(self._outbox) + len(self._field_events) \
            + len(self._energy) + len(self._marked) + sum(1 for r in self._readings if r[4] is not None) \
            + self._confirmations_due()

    def _due(self) -> bool:
        """Whether the commit interval's commit should happen (Ledger.run). Everything the
        gateway stored waits at most commit_interval_s, except what only InfluxDB needs: self
        metrics wait up to LAZY_S and confirmations up to 2 × CONFIRM_DELAY_S for a commit of
        rows to go with (each commit costs the card a sync)."""
        if self._readings or self._statuses or self._field_events or self._energy or self._marked \
                or any(r[0] != SELF_METRICS for r in self._outbox):
            return True
        now = self.monotonic()
        return bool(self._outbox) and now - self._outbox_since >= LAZY_S \
            or self._ok_us is not None and now - self._ok_since >= 2 * CONFIRM_DELAY_S

    def flush(self) -> int:
        """Commit everything added so far in one transaction, in the caller's thread; returns
        the rows written."""
        batch = self._take()
        if batch is None:
            return 0
        try:
            self._write(batch)
        except BaseException:
            self._put_back(batch)
            raise
        return self._done(batch)

    def _take(self) -> _Batch | None:
        """On the event loop: what the next commit writes, taken out of the pending lists (rows
        added while it is written wait for the commit after). Nothing here touches the database:
        meters and field sets are resolved in the commit's transaction (_Ids)."""
        if not self.pending:
            return None
        marked = self._marked_rows() if self._marked else None
        b = _Batch(self._readings, self._statuses, self._outbox, self._energy, self._field_events,
                   self._marked, marked)
        if self._confirmations_due():
            b.ok_us, b.confirmed_o = self._ok_us, list(self._confirmed_o)
            b.cursor = self._cursor_text()
        self._readings, self._statuses, self._outbox, self._field_events = [], [], [], []
        self._energy, self._marked = [], []
        return b

    def _write(self, b: _Batch) -> None:
        """The commit itself (any thread; `_write_lock` makes it one at a time, on the writer
        connection): every row of the batch in one synced transaction."""
        with self._write_lock:
            ids = self._ids(self._writer)
            with transaction(self._writer, "IMMEDIATE") as db:
                self._write_rows(db, b, ids)
            ids.committed()

    def _write_rows(self, db: sqlite3.Connection, b: _Batch, ids: _Ids) -> None:
        last = _last_reading(db) if b.outbox else 0
        _insert_field_events(db, b.field_events)
        db.executemany("INSERT INTO reading_log (meter, ts_us, field_set, vals, kwh, counters) "
                       "VALUES (?,?,?,?,?,?)", [ids.row(r) for r in b.readings])
        db.executemany(INSERT_ENERGY, b.energy)     # counters of readings dropped from memory
        db.executemany("INSERT INTO device_status (device, kind, ts_us, online, reason) VALUES (?,?,?,?,?)",
                       b.statuses)
        db.executemany(INSERT_OUTBOX, [(*r, last) for r in b.outbox])
        if b.marked is not None:
            self._insert_marked(db, dict(b.marked, readings=[ids.row(r) for r in b.marked["readings"]]))
        if b.ok_us is not None:
            self._set_meta(db, "influx_last_ok_us", str(b.ok_us))
            db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in b.confirmed_o])
            if b.cursor is not None:
                self._set_meta(db, "outbox_cursor", b.cursor)

    def _put_back(self, b: _Batch) -> None:
        """A commit that failed: its rows go back in front of what came meanwhile (retried)."""
        self._readings[:0] = b.readings
        self._statuses[:0] = b.statuses
        self._outbox[:0] = b.outbox
        self._energy[:0] = b.energy
        self._field_events[:0] = b.field_events
        self._marked[:0] = b.pending_marked

    def _done(self, b: _Batch) -> int:
        """On the event loop, after the commit: counters, the workers told, the drainer woken."""
        if b.ok_us is not None:
            # confirmations noted while the commit was written wait for the next one
            if self._confirmed_o[:len(b.confirmed_o)] == b.confirmed_o:
                del self._confirmed_o[:len(b.confirmed_o)]
            if self._ok_us == b.ok_us and not self._confirmed_o:
                self._ok_us = None
        readings, marked, outbox = b.readings, b.marked, b.outbox
        if marked is not None:
            self.outbox_held += len(marked["outbox"])
            self.readings_written += len(marked["readings"])
        self.readings_written += len(readings)
        self.commits += 1
        self.checkpointer.note_commit()
        self.indexer.note_rows(len(readings) + (len(marked["readings"]) if marked is not None else 0))
        if self._points is not None:
            self._r_depth += len(readings)
        if outbox:
            self._o_depth += len(outbox)
            self._o_bytes += sum(len(r[3]) for r in outbox)
        if outbox or (readings and self._points is not None):
            self.committed.set()
        return len(readings) + len(b.statuses) + len(outbox) + len(b.field_events)

    async def run(self, hub: Hub) -> None:
        """Take readings and statuses from the hub and commit them every `commit_interval_s`
        until cancelled; on cancellation everything received so far is committed first.

        Events wait in the subscription between commits: waking up for each one would cost
        more than storing it.
        """
        self.influx_off()
        sub = hub.subscribe(Reading, DeviceStatus, GatewayStats, CardSwipe, DoorEvent, PatrolCheckin, AlertChange,
                            LightingCommand, name="ledger")
        try:
            while True:
                await asyncio.sleep(self.commit_interval_s)
                for event in sub.take_all():
                    self.add(event)
                await self._commit_off_loop()
        finally:
            for event in sub.take_all():
                self.add(event)
            sub.close()
            self._flush_logged()

    @property
    def holding(self) -> bool:
        """Rows wait in memory because the write gate is closed (the disk is nearly full) or the
        last commit failed; they are committed as soon as that is over."""
        return bool(self.pending) and (self.commit_failures > 0 or self.gate_closed)

    def _may_commit(self, force: bool, lazy: bool) -> bool:
        self.gate_closed = self.write_gate is not None and not self.write_gate()
        if self.gate_closed and not force:
            self._bound_pending()
            return False
        return not (lazy and not self._due())

    def _flush_logged(self, force: bool = False, lazy: bool = False) -> None:
        if not self._may_commit(force, lazy):
            return
        try:
            written = self.flush()
        except sqlite3.Error as e:
            self._commit_failed(e)
            return
        self._commit_ok(written)

    async def _commit_off_loop(self) -> None:
        """Ledger.run's commit: taken on the loop, written and synced in the commit thread.
        Cancelled meanwhile (the gateway stops), it waits for that commit to end before going
        on: a batch is committed or put back, never both nor neither."""
        if not self._may_commit(False, True):
            return
        batch = self._take()
        if batch is None:
            return
        job = self._commit_thread().submit(self._write, batch)
        try:
            await asyncio.wrap_future(job)
        except asyncio.CancelledError:
            # Cancelling the awaited future cancels a job the thread has not started yet: that
            # batch was not written and goes back like a failed one.
            try:
                job.result()
            except (sqlite3.Error, concurrent.futures.CancelledError):
                self._put_back(batch)
            except BaseException:
                self._put_back(batch)
                raise
            else:
                self._commit_ok(self._done(batch))
            raise
        except sqlite3.Error as e:
            self._put_back(batch)
            self._commit_failed(e)
            return
        except BaseException:
            self._put_back(batch)     # as flush() does: a batch is never dropped by an error
            raise
        self._commit_ok(self._done(batch))

    def _commit_thread(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._closed:
            raise sqlite3.ProgrammingError(f"ledger {self.path} is closed")
        if self._committer is None:
            self._committer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="ledger-commit")
        return self._committer

    def _write_job(self, fn, args: tuple) -> WriteDone:
        """In the commit thread: `fn(db, *args)` in one synced transaction on the writer
        connection, holding the write lock as commits and the indexer's groups do."""
        with self._write_lock:
            began = time.perf_counter()
            with transaction(self._writer, "IMMEDIATE") as db:
                result = fn(db, *args)
            return WriteDone(result, time.perf_counter() - began)

    async def write_off_loop(self, fn, *args, done=None) -> WriteDone:
        """For the ledger package's background batches (retention): `fn(db, *args)` in one
        transaction in the commit thread, queued with the commits; the event loop goes on
        meanwhile. Returns fn's result and how long the transaction took in the thread.
        `done(result)`, if given, is called on the loop once it committed. Cancelled
        meanwhile, it waits for the transaction to end (committed or rolled back, never half
        done, nothing left writing when the ledger closes), calls `done`, then re-raises."""
        out, cancelled = await to_the_end(asyncio.wrap_future(self._commit_thread().submit(self._write_job, fn, args)))
        if done is not None:
            done(out.result)
        if cancelled is not None:
            raise cancelled
        return out

    def _commit_failed(self, e: sqlite3.Error) -> None:
        # Keep the batch: the next flush retries it (disk full, locked file, ...). Said once
        # per episode (and every 10 minutes while it lasts), not at every attempt.
        self.commit_failures += 1
        if self.commit_failures == 1 or self.commit_failures % max(1, int(600 / self.commit_interval_s)) == 0:
            log.error("ledger %s: commit failed (%d attempts so far), %d rows kept in memory, will retry: %s",
                      self.path, self.commit_failures, self.pending, e)
        self._bound_pending()

    def _commit_ok(self, written: int) -> None:
        if self.commit_failures:
            log.warning("ledger %s: committing again after %d failed attempts; %d rows kept in memory were "
                        "written", self.path, self.commit_failures, written)
            self.commit_failures = 0
        if self._dropping:
            log.warning("ledger %s: writing again; while the ledger could not be written %d InfluxDB points, "
                        "the other fields of %d readings and %d energy counters were dropped from memory (since "
                        "start)", self.path, self.dropped["points"], self.dropped["readings"], self.dropped["energy"])
            self._dropping = False

    # rough sizes in memory of one pending row (tuples, strings, bytes), for the hold bound
    _HELD_READING, _HELD_ENERGY, _HELD_POINT = 480, 130, 250

    def held_bytes(self) -> int:
        counters = len(self._energy) + sum(1 for r in self._readings if r[4] is not None)
        return (len(self._readings) * self._HELD_READING + counters * self._HELD_ENERGY
                + sum(len(r[3]) + len(r[4] or "") for r in self._outbox) + len(self._outbox) * self._HELD_POINT
                + (len(self._statuses) + len(self._field_events)) * self._HELD_READING)

    def _bound_pending(self) -> None:
        """While nothing can be committed, keep at most `hold_max_bytes` in memory: drop the
        oldest InfluxDB points first (copies of what the ledger keeps), then the oldest readings'
        rows (their energy counters stay, so billing loses nothing), then the oldest energy
        counters. Statuses, swipes, door events, checkins and alerts are never dropped."""
        over = self.held_bytes() - self.hold_max_bytes
        if over <= 0:
            return
        dropped = {"points": 0, "readings": 0, "energy": 0}
        if over > 0 and self._outbox:
            n = 0
            while n < len(self._outbox) and over > 0:
                r = self._outbox[n]
                over -= len(r[3]) + len(r[4] or "") + self._HELD_POINT
                n += 1
            del self._outbox[:n]
            dropped["points"] = n
        if over > 0 and self._readings:
            n = min(len(self._readings), -(-over // self._HELD_READING))
            # their energy counters stay, written straight into `energy` when the ledger can write
            self._energy.extend((r[0], r[1], r[4]) for r in self._readings[:n] if r[4] is not None)
            del self._readings[:n]
            over -= n * self._HELD_READING
            dropped["readings"] = n
        if over > 0 and self._energy:
            n = min(len(self._energy), -(-over // self._HELD_ENERGY))
            del self._energy[:n]
            dropped["energy"] = n
        for k, v in dropped.items():
            self.dropped[k] += v
        if not self._dropping:
            self._dropping = True
            log.error("ledger %s: cannot write and %.0f MB are held in memory (storage.hold_max_mb): dropping the "
                      "oldest held rows: InfluxDB points first, then readings' other fields (their energy counters "
                      "are kept for billing), then the oldest energy counters; this time %d points, %d readings, "
                      "%d energy counters", self.path, self.hold_max_bytes / 2**20, dropped["points"],
                      dropped["readings"], dropped["energy"])

    @property
    def connection(self) -> sqlite3.Connection:
        """The ledger's own connection, on the event loop's thread: for the ledger package's own
        modules (retention's reads; its batches go through write_off_loop), never for code
        outside gateway/ledger/."""
        return self._db

    def close(self) -> None:
        self._closing = True
        self._flush_logged(force=True)  # the last chance, even with the write gate closed
        if self.pending:
            log.error("ledger %s: %d rows could not be written before closing and are lost", self.path, self.pending)
        self._closed = True             # no more jobs for the commit thread; those queued run first
        if self._committer is not None:
            self._committer.shutdown(wait=True)
            self._committer = None
        self.indexer.stop()
        self.checkpointer.stop()
        self._writer.close()
        self._db.close()

    # ---- the outbox (drained by a sink) ----
    #
    # Two sources, sent in this order: the `outbox` table (statuses, access, alerts, self metrics,
    # allocations: a copy of each point in line protocol, deleted when confirmed), and the
    # readings' points, encoded from reading_log when sent: a cursor over the log instead of a
    # second copy of every reading. meta 'outbox_cursor' = {"c": every reading up to this id is
    # sent (or has no point), "done": [first, last] id spans beyond it that are sent too (batches
    # confirmed out of order)}; saved in the transaction that notes the confirmation, so a point
    # is sent once. Readings of an untrusted clock episode are passed over: their points wait in
    # outbox_held (see repair_clock). meta 'influx_index' keeps the tags the points need (the
    # site and each meter's building and circuit), so any ledger of the site can send them.
    # A row's key is (0, outbox id) or (1, reading id).

    _OUTBOX, _READING = 0, 1

    def _outbox_start(self) -> None:
        from ..sinks.schema import Encoder, SiteIndex
        db = self._db
        self._spans: list[list] = []      # [first, last, ids handed and not confirmed] beyond the cursor
        self._o_after = 0                 # the last outbox id handed
        self._outbox_since = 0.0          # when the oldest pending outbox row was added
        self._confirmed_o: list[int] = []  # outbox rows confirmed, deleted with the next commit
        self._ok_us: int | None = None    # the last confirmation, not written yet
        self._ok_since = 0.0              # ... since (monotonic)
        self._closing = False
        self._r_depth = 0
        cur = self.meta("outbox_cursor")
        state = json.loads(cur) if cur else {"c": 0, "done": []}
        index = self.meta("influx_index")
        if self.encoder is not None:
            mine = json.dumps({"site": self.encoder.index.site, "meters": self.encoder.index.meter_tags},
                              sort_keys=True, ensure_ascii=False)
            if index is None:
                # InfluxDB from now on (or again): the readings so far are not sent
                top = db.execute("SELECT coalesce(max(id), 0) FROM reading_log").fetchone()[0]
                state = {"c": max(state["c"], top), "done": []}
            if index != mine:
                with transaction(db, "IMMEDIATE"):
                    self._set_meta(db, "influx_index", mine)
                    self._set_meta(db, "outbox_cursor", json.dumps(state))
                index = mine
        self._points = None               # encodes a reading's point; None: InfluxDB is not used
        if index is not None:
            ix = json.loads(index)
            self._points = self.encoder if self.encoder is not None else \
                Encoder(SiteIndex(ix["site"], ix["meters"]))
        self._cursor = state["c"]
        self._spans = [[a, b, set()] for a, b in state["done"]]
        self._scanned = self._seen = self._cursor   # scanned up to (this pass / ever)
        if self._points is not None:
            n = db.execute("SELECT count(*) FROM reading_log WHERE id > ? AND episode IS NULL",
                           (self._cursor,)).fetchone()[0]
            for a, b, _ in self._spans:
                n -= db.execute("SELECT count(*) FROM reading_log WHERE id BETWEEN ? AND ? AND episode IS NULL",
                                (a, b)).fetchone()[0]
            self._r_depth = n

    @staticmethod
    def _set_meta(db: sqlite3.Connection, key: str, value: str) -> None:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                   (key, value))

    def influx_off(self) -> None:
        """The gateway runs without InfluxDB: forget the cursor, so that InfluxDB configured
        again later starts with the readings of then, as a new one would."""
        if self.encoder is None and self.meta("influx_index") is not None:
            with transaction(self._db, "IMMEDIATE") as db:
                db.execute("DELETE FROM meta WHERE key IN ('influx_index', 'outbox_cursor')")
            self._points, self._r_depth, self._spans = None, 0, []

    @property
    def outbox_depth(self) -> int:
        """Points waiting for InfluxDB: rows of `outbox` and readings after the cursor."""
        return self._o_depth + self._r_depth

    @property
    def outbox_bytes(self) -> int:
        """What the waiting points take on disk beyond the ledger's own rows: the `outbox`
        table's lines (a reading's point is the reading itself)."""
        return self._o_bytes

    def _in_done(self, rid: int) -> list | None:
        for span in self._spans:
            if span[0] <= rid <= span[1] and not span[2]:
                return span
        return None

    def outbox_batch(self, limit: int, after=0) -> list[tuple[tuple[int, int], str]]:
        """The oldest points not sent yet, in send order, as (key, line). `after`: the last key of
        the previous batch (its successors follow), or 0 to start again from the oldest point
        not confirmed (after a failure)."""
        if not after:
            self._o_after = 0
            self._spans = [sp for sp in self._spans if not sp[2]]
            self._scanned = self._cursor
        others = self._db.execute("SELECT id, line, after_reading FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                  (self._o_after, limit + len(self._confirmed_o))).fetchall()
        if self._confirmed_o:             # confirmed, deleted with the next commit
            done = set(self._confirmed_o)
            others = [r for r in others if r[0] not in done][:limit]
        if self._points is None:
            out = [((self._OUTBOX, i), line) for i, line, _ in others]
        else:
            # in commit order: a point of `outbox` goes right after the reading committed before it
            out = self._reading_points(limit, others)
        if any(k[0] == self._OUTBOX for k, _ in out):
            self._o_after = max(k[1] for k, _ in out if k[0] == self._OUTBOX)
        return out

    def _reading_points(self, room: int, others: list[tuple]) -> list[tuple[tuple[int, int], str]]:
        """Up to `room` points: readings' after the cursor, with `others` (rows of `outbox`:
        id, line, after_reading) each put right after the reading it follows."""
        names = Names(self._db)
        out: list = []
        k = 0

        def before(rid: int) -> None:
            nonlocal k
            while k < len(others) and others[k][2] < rid and len(out) < room:
                out.append(((self._OUTBOX, others[k][0]), others[k][1]))
                k += 1
        first = self._scanned + 1
        handed: set[int] = set()
        while len(out) < room:
            rows = self._db.execute(f"SELECT {LOG_COLS} FROM reading_log WHERE id > ? ORDER BY id LIMIT ?",
                                    (self._scanned, max(256, room - len(out)))).fetchall()
            if not rows:
                break
            for rid, mid, ts, fset, vals, kwh, counters, episode in rows:
                before(rid)
                if len(out) >= room:
                    break
                if rid <= self._scanned:
                    continue                  # inside a sent span passed over just now
                done = self._in_done(rid)
                if done is not None:
                    self._scanned = done[1]
                    continue
                self._scanned = rid
                if episode is not None:
                    continue                  # its point waits in outbox_held
                try:
                    point = self._points(Reading(names.meter_name(mid), from_us(ts),
                                                 values_of(names, fset, vals, counters),
                                                 counters_of(names, kwh, counters)))
                except (ValueError, ArithmeticError, struct.error):
                    point = None              # a damaged row of schema 8: nothing to send
                if point is None:
                    if rid > self._seen:
                        self._r_depth -= 1
                    continue
                out.append(((self._READING, rid), point.line))
                handed.add(rid)
        if len(out) < room:
            before(2**62)                     # no more readings: the rest of `outbox`
        self._seen = max(self._seen, self._scanned)
        if self._scanned >= first:
            self._spans.append([first, self._scanned, handed])
            self._spans.sort(key=lambda sp: sp[0])
        return out

    def _split(self, rows) -> tuple[list[int], list[int]]:
        o = [k[1] for k, _ in rows if k[0] == self._OUTBOX]
        r = [k[1] for k, _ in rows if k[0] == self._READING]
        return o, r

    def _ack(self, ids: list[int]) -> None:
        """Readings whose points are done (confirmed or set aside): move the cursor."""
        gone = set(ids)
        for span in self._spans:
            span[2] -= gone
        while self._spans and not self._spans[0][2] and self._spans[0][0] <= self._cursor + 1:
            self._cursor = max(self._cursor, self._spans.pop(0)[1])
        self._r_depth -= len(ids)

    def _save_cursor(self, db: sqlite3.Connection) -> None:
        if self._points is not None:
            self._set_meta(db, "outbox_cursor", self._cursor_text())

    def _cursor_text(self) -> str | None:
        if self._points is None:
            return None
        done = [[a, b] for a, b, left in self._spans if not left]
        return json.dumps({"c": self._cursor, "done": done})

    def outbox_ts_ms(self, key) -> int | None:
        kind, rid = key
        if kind == self._OUTBOX:
            row = self._db.execute("SELECT ts_ms FROM outbox WHERE id = ?", (rid,)).fetchone()
            return row[0] if row else None
        row = self._db.execute("SELECT ts_us FROM reading_log WHERE id = ?", (rid,)).fetchone()
        return row[0] // 1000 if row else None

    def outbox_oldest_ms(self) -> int | None:
        row = self._db.execute("SELECT min(ts_ms) FROM outbox WHERE id = (SELECT min(id) FROM outbox)").fetchone()
        oldest = row[0]
        if self._points is not None and self._r_depth > 0:
            r = self._db.execute("SELECT ts_us FROM reading_log WHERE id > ? AND episode IS NULL ORDER BY id LIMIT 1",
                                 (self._cursor,)).fetchone()
            if r is not None:
                oldest = r[0] // 1000 if oldest is None else min(oldest, r[0] // 1000)
        return oldest

    def _outbox_delete(self, db: sqlite3.Connection, ids: list[int]) -> None:
        if ids:
            db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (min(ids), max(ids)))

    def _outbox_forget(self, rows) -> None:
        o = [line for k, line in rows if k[0] == self._OUTBOX]
        self._o_depth -= len(o)
        self._o_bytes -= sum(len(line) for line in o)

    def outbox_confirmed(self, rows: list[tuple[tuple[int, int], str]], now_us: int) -> None:
        """Points the server confirmed. Written once a minute (CONFIRM_DELAY_S), with a commit of
        rows: the outbox rows deleted, the readings' cursor moved, and when, in one transaction;
        a transaction per batch would cost the card a synced commit every few seconds. Killed
        before that, the ledger sends those points again, and the server keeps them once (a
        point is its series and its own time: the same point overwrites itself)."""
        o, r = self._split(rows)
        self._confirmed_o.extend(o)
        if r:
            self._ack(r)
        if self._ok_us is None:
            self._ok_since = self.monotonic()
        self._ok_us = now_us
        self._outbox_forget(rows)

    def _write_confirmations(self, db: sqlite3.Connection) -> None:
        """In the caller's transaction: what outbox_confirmed noted."""
        if self._ok_us is None:
            return
        self._set_meta(db, "influx_last_ok_us", str(self._ok_us))
        db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in self._confirmed_o])
        self._save_cursor(db)

    def _confirmations_written(self) -> None:
        self._ok_us = None
        self._confirmed_o = []

    def _confirmations_due(self) -> bool:
        """Confirmations are written once they waited CONFIRM_DELAY_S, with a commit of rows if
        one comes (readings come in bursts), else alone."""
        return self._ok_us is not None and (self._closing or self.monotonic() - self._ok_since >= CONFIRM_DELAY_S)

    def outbox_reject(self, rows: list[tuple[tuple[int, int], str]], status: int, reason: str, now_us: int) -> None:
        """Move points the server refused as bad data aside, with its reason, in one transaction."""
        o, r = self._split(rows)
        if r:
            self._ack(r)
        with transaction(self._db) as db:
            db.executemany("INSERT INTO outbox_rejected (line, status, reason, rejected_us) VALUES (?,?,?,?)",
                           [(line, status, reason, now_us) for _, line in rows])
            self._outbox_delete(db, o)
            self._save_cursor(db)
            self._write_confirmations(db)
        self._confirmations_written()
        self._outbox_forget(rows)

    def shed(self, target_bytes: int) -> dict[str, int]:
        """Bring the outbox under `target_bytes`, lowest priority and oldest first.

        Points with an essential part (meter points: their energy counters) are thinned to it
        and marked never to be shed again; other points are deleted. Returns rows per measurement.
        """
        shed: dict[str, int] = {}
        db = self._db
        while self._o_bytes > target_bytes:
            rows = db.execute(
                "SELECT id, measurement, length(line), essential FROM outbox WHERE priority < ? "
                "ORDER BY priority, id LIMIT 1000", (NEVER_SHED,)).fetchall()
            if not rows:
                break
            freed = deleted = 0
            with transaction(db):
                for rid, measurement, size, essential in rows:
                    if essential is None:
                        db.execute("DELETE FROM outbox WHERE id = ?", (rid,))
                        deleted += 1
                        freed += size
                    else:
                        db.execute("UPDATE outbox SET line = essential, essential = NULL, priority = ? "
                                   "WHERE id = ?", (NEVER_SHED, rid))
                        freed += size - len(essential)
                    shed[measurement] = shed.get(measurement, 0) + 1
                    if self._o_bytes - freed <= target_bytes:
                        break
            self._o_depth -= deleted
            self._o_bytes -= freed
        return shed

    # ---- keys: beside the ledger, not in it ----

    @property
    def keys_path(self) -> Path:
        return self.path.with_name(self.path.name + ".keys")

    def secret(self, name: str) -> bytes:
        """A random key of the gateway's own (made on first use), for when no env var gives one.

        Kept in `<ledger>.keys` (0600), not in the ledger: whoever can read the ledger must not
        also get the key that signs console cookies, nor the one that makes card hashes (with it,
        a stored hash and the card's last 4 digits give the card number in about 10^6 tries)."""
        keys = self._read_keys()
        if name not in keys:
            keys[name] = os.urandom(32).hex()
            self._write_keys(keys)
        return bytes.fromhex(keys[name])

    def _read_keys(self) -> dict[str, str]:
        path = self.keys_path
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise LedgerError(f"key file {path}: cannot read: {e.strerror or e}") from None
        tighten(path)
        try:
            keys = json.loads(text)
            if not isinstance(keys, dict) or not all(isinstance(v, str) and bytes.fromhex(v) for v in keys.values()):
                raise ValueError("not an object of hex keys")
        except ValueError as e:
            raise LedgerError(f"key file {path}: damaged ({e}); the keys in it are lost: remove it to make new "
                              "ones (card hashes change, console users log in again)") from None
        return keys

    def _write_keys(self, keys: dict[str, str]) -> None:
        st = os.stat(self.path)
        # root (a command run by hand) makes it the ledger owner's, as SQLite does for the -wal
        owner = (st.st_uid, st.st_gid) if os.geteuid() == 0 else None
        try:
            replace_file(self.keys_path, (json.dumps(keys, indent=1) + "\n").encode(), owner=owner)
        except OSError as e:
            raise LedgerError(f"key file {self.keys_path}: cannot write: {e.strerror or e}") from None

    def _move_keys_out(self) -> None:
        """Keys an older gateway kept in the `meta` table move to the key file unchanged (card
        hashes stay the same), and are then wiped from the ledger and its write-ahead log."""
        rows = self._db.execute("SELECT key, value FROM meta WHERE key LIKE 'secret:%'").fetchall()
        if not rows:
            return
        self._write_keys({k.removeprefix("secret:"): v for k, v in rows} | self._read_keys())
        self._db.execute("PRAGMA secure_delete = ON")     # deleted values are overwritten, not just unlinked
        try:
            with transaction(self._db) as db:
                db.execute("DELETE FROM meta WHERE key LIKE 'secret:%'")
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.execute("PRAGMA secure_delete = OFF")
        log.warning("ledger %s: %d key(s) moved out of the ledger to %s", self.path, len(rows), self.keys_path)

    # ---- console sessions (gateway/web/sessions.py) ----

    def web_sessions(self) -> list[tuple[str, str, str, int, int]]:
        """(key, user, pw, created_us, seen_us) of every session kept."""
        return self._db.execute("SELECT key, user, pw, created_us, seen_us FROM web_sessions").fetchall()

    def save_web_session(self, key: str, user: str, pw: str, created_us: int, seen_us: int) -> None:
        self._db.execute("INSERT INTO web_sessions (key, user, pw, created_us, seen_us) VALUES (?,?,?,?,?) "
                         "ON CONFLICT (key) DO UPDATE SET seen_us = excluded.seen_us",
                         (key, user, pw, created_us, seen_us))

    def delete_web_sessions(self, keys: list[str]) -> None:
        with transaction(self._db) as db:
            db.executemany("DELETE FROM web_sessions WHERE key = ?", [(k,) for k in keys])

    def ack_requests(self) -> list[tuple[int, str, str, str, int]]:
        return self._db.execute("SELECT id, alert_id, by, note, ts_us FROM ack_requests WHERE done = 0 "
                                "ORDER BY id").fetchall()

    def ack_done(self, request_id: int, result: str) -> None:
        self._db.execute("UPDATE ack_requests SET done = 1, result = ? WHERE id = ?", (result, request_id))

    # ---- meter replacements and allocations ----

    def record_replacement(self, r: "Replacement") -> None:
        try:
            self._db.execute("INSERT INTO meter_replacements (meter, at_us, old_final, new_initial, by, note, "
                             "recorded_us) VALUES (?,?,?,?,?,?,?)",
                             (r.meter, to_us(r.at), str(r.old_final), str(r.new_initial), r.by, r.note,
                              to_us(r.recorded)))
        except sqlite3.IntegrityError:
            raise LedgerError(f"meter {r.meter} already has a replacement recorded at {r.at.isoformat()}") from None

    def replacements(self, meter: str | None = None, after_id: int = 0) -> list["Replacement"]:
        sql = ("SELECT id, meter, at_us, old_final, new_initial, by, note, recorded_us FROM meter_replacements "
               "WHERE id > ?")
        args: tuple = (after_id,)
        if meter is not None:
            sql += " AND meter = ?"
            args += (meter,)
        return [Replacement(m, from_us(at), Decimal(old), Decimal(new), by, note, from_us(rec), rid)
                for rid, m, at, old, new, by, note, rec in self._db.execute(sql + " ORDER BY at_us, id", args)]

    def energy_series(self, meter: str, start_us: int, end_us: int) -> list[tuple[int, str]]:
        """(ts_us, exact counter text) of one meter in [start_us, end_us], in time order."""
        return energy_series(self._db, meter, start_us, end_us)

    def energy_before(self, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
        """The last counter before `ts_us` but not before `limit_us`."""
        return energy_before(self._db, meter, ts_us, limit_us)

    def energy_after(self, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
        return energy_after(self._db, meter, ts_us, limit_us)

    # ---- what the rules engine takes back after a restart (gateway/rules/restore.py) ----

    def alert_rows(self, states: tuple[str, ...] = ("active", "acknowledged"),
                   raised_since_us: int | None = None) -> list[dict]:
        """Alerts in these states (open ones by default), oldest first, as dicts keyed by the
        `alerts` columns (details is the JSON text as stored), and `revision`: the changes of
        the alert in its history (retention keeps an open alert's history whole)."""
        cols = ("id", "rule", "kind", "source", "severity", "state", "message", "message_en", "raised_us",
                "updated_us", "cleared_us", "acked_by", "ack_note", "acked_us", "value", "details")
        revision = "(SELECT count(*) FROM alert_history h WHERE h.alert_id = alerts.id)"
        cols_sql = ", ".join(cols + (revision,))
        cols += ("revision",)
        sql = (f"SELECT {cols_sql} FROM alerts WHERE state IN ({','.join('?' * len(states))})"
               + (" AND raised_us >= ?" if raised_since_us is not None else "") + " ORDER BY raised_us, id")
        args = tuple(states) + ((raised_since_us,) if raised_since_us is not None else ())
        return [dict(zip(cols, row)) for row in self._db.execute(sql, args)]

    def last_counters(self, meters: list[str], field: str, before_us: int) -> list[tuple[str, int, object, int]]:
        """Per meter, its last reading before `before_us` that has the counter `field`:
        (meter, ts_us, counter as stored, corrupt) where corrupt is 1 when newer readings were
        passed over because their counters were not valid JSON. One index probe per meter."""
        return last_counters(self._db, meters, field, before_us)

    def counters_around(self, meters: list[str], field: str, times_us: list[int], max_gap_us: int,
                        before_us: int) -> list[tuple]:
        """The counter `field` either side of each instant, per meter (gateway/ledger/queries.py)."""
        return counters_around(self._db, meters, field, times_us, max_gap_us, before_us)

    def patrol_checkins_between(self, start_us: int, end_us: int) -> list[tuple]:
        """Checkins recorded (ts) in [start_us, end_us), in the order they arrived: (ts_us,
        received_us, reader, checkpoint, tag, guard, guard_hash, source); not those of an
        unrepaired clock episode (their times are wrong)."""
        return self._db.execute(
            "SELECT ts_us, received_us, reader, checkpoint, tag, guard, guard_hash, source FROM patrol_checkins "
            "WHERE ts_us >= ? AND ts_us < ? AND episode IS NULL ORDER BY received_us, id",
            (start_us, end_us)).fetchall()

    def activity(self, devices: list[str], start_us: int, end_us: int, bucket_us: int) -> list[int]:
        """The time buckets (ts_us // bucket_us) in [start_us, end_us) in which the gateway wrote
        anything that shows it was running: a reading or a status of one of `devices` (meters,
        buses, readers), a swipe, a door event, a patrol checkin (by arrival), an alert change.
        Sorted. Index ranges only."""
        args = {"s": start_us, "e": end_us, "b": bucket_us, "devices": json.dumps(list(devices))}
        found = activity(self._db, devices, start_us, end_us, bucket_us)
        rows = self._db.execute(
            "SELECT ts_us / :b FROM device_status WHERE device IN (SELECT value FROM json_each(:devices)) "
            "AND ts_us >= :s AND ts_us < :e "
            "UNION SELECT ts_us / :b FROM swipes WHERE ts_us >= :s AND ts_us < :e "
            "UNION SELECT ts_us / :b FROM door_events WHERE ts_us >= :s AND ts_us < :e "
            "UNION SELECT received_us / :b FROM patrol_checkins WHERE ts_us >= :s - 86400000000 "
            "AND received_us >= :s AND received_us < :e "
            "UNION SELECT ts_us / :b FROM alert_history WHERE ts_us >= :s AND ts_us < :e ORDER BY 1", args)
        found.update(b for (b,) in rows)
        return sorted(found)

    # ---- reading ----

    def count_readings(self, meter: str | None = None) -> int:
        return count_readings(self._db, meter)

    def readings(self, meter: str | None = None) -> Iterator[StoredReading]:
        for rid, m, ts, values, counters in all_rows(self._db, meter):
            yield StoredReading(rid, m, from_us(ts), values, counters)

    def has_readings(self, meter: str, start_us: int, end_us: int) -> bool:
        """Any reading of `meter` in [start_us, end_us]."""
        return has_readings(self._db, meter, start_us, end_us)

    def write_meter(self, meter: str, names: tuple[str, ...], rows: Iterable[tuple[int, tuple, str | None]],
                    replacement: "Replacement | None" = None) -> int:
        """One meter's readings (ts_us, values in `names` order, energy counter text or None) in
        one transaction, with a meter replacement if given: a generated month
        (simulators/month.py), in the rows a commit writes. Returns the readings written."""
        ids = self._ids(self._db)
        with transaction(self._db, "IMMEDIATE") as db:
            mid, fset = ids.meter(meter), ids.field_set(names)
            with_kwh, without = varint(ids.field_set((ENERGY_FIELD,))), varint(0)
            data = [(mid, ts, fset, encode_vals(vals), kwh, without if kwh is None else with_kwh)
                    for ts, vals, kwh in rows]
            db.executemany("INSERT INTO reading_log (meter, ts_us, field_set, vals, kwh, counters) "
                           "VALUES (?,?,?,?,?,?)", data)
            if replacement is not None:
                self.record_replacement(replacement)
        ids.committed()
        self.readings_written += len(data)
        self.indexer.note_rows(len(data))
        self.checkpointer.note_commit()
        return len(data)

    # ---- retention of readings (gateway/ledger/retention.py) ----

    def reading_id_after(self, lo: int | None, n: int) -> tuple[int, int] | None:
        """(first, last) id of the next `n` readings from `lo` (None: the oldest) in id order."""
        if lo is None:
            lo = self._db.execute("SELECT min(id) FROM reading_log").fetchone()[0]
            if lo is None:
                return None
        hi = self._db.execute("SELECT max(id) FROM (SELECT id FROM reading_log WHERE id >= ? ORDER BY id LIMIT ?)",
                              (lo, n)).fetchone()[0]
        return None if hi is None else (lo, hi)

    def delete_readings(self, lo: int, hi: int, before_us: int) -> int:
        """Delete the readings with lo <= id <= hi older than `before_us`, of trusted time and
        already in their per-meter form (their counters are in `energy`), with their per-meter
        entries; one transaction, on the loop's connection (tools and tests; retention awaits
        `delete_readings_off_loop`)."""
        with transaction(self._db, "IMMEDIATE") as db:
            n, parked = self._delete_readings(db, self._sent(), lo, hi, before_us)
        return self._parked(n, parked)

    async def delete_readings_off_loop(self, lo: int, hi: int, before_us: int) -> WriteDone:
        """delete_readings in the commit thread (write_off_loop): the rows deleted, and how long it took."""
        d = await self.write_off_loop(self._delete_readings, self._sent(), lo, hi, before_us,
                                         done=lambda r: self._parked(*r))
        return WriteDone(d.result[0], d.seconds)

    def _delete_readings(self, db: sqlite3.Connection, sent, lo: int, hi: int, before_us: int) -> tuple[int, list]:
        hi = min(hi, indexed(db))
        args = (lo, hi, before_us)
        parked = self._park(db, sent, f"SELECT {LOG_COLS} FROM reading_log WHERE id BETWEEN ? AND ? AND ts_us < ? "
                                      "AND episode IS NULL AND id > ?", (*args, sent[0]))
        db.execute(f"DELETE FROM readings_by_meter WHERE (slot, meter, ts_us, id) IN (SELECT {SLOT_SQL}, "
                   "meter, ts_us, id FROM reading_log WHERE id BETWEEN ? AND ? AND ts_us < ? AND episode IS NULL)",
                   args)
        return db.execute("DELETE FROM reading_log WHERE id BETWEEN ? AND ? AND ts_us < ? AND episode IS NULL",
                          args).rowcount, parked

    def _sent(self) -> tuple[int, list[tuple[int, int]]]:
        """On the loop: the readings whose points are done (the cursor, and the spans beyond it
        whose points were all confirmed), for a park in another thread. Confirmed after this,
        a point may be parked and sent once more; InfluxDB keeps it once."""
        return self._cursor, [(a, b) for a, b, left in self._spans if not left]

    def _park(self, db: sqlite3.Connection, sent, sql: str, args: tuple) -> list:
        """Readings about to be deleted whose points InfluxDB has not taken yet (it has been
        unreachable for longer than storage.raw_days): their points go into `outbox` as lines,
        where the outbox's own budget (influxdb.outbox_max_mb, shedding) looks after them.
        Any thread, in the caller's transaction; returns the points parked, for `_parked`."""
        if self._points is None:
            return []
        names = Names(db)
        last = _last_reading(db)
        rows = []
        for rid, mid, ts, fset, vals, kwh, counters, _ in db.execute(sql, args).fetchall():
            if any(a <= rid <= b for a, b in sent[1]):
                continue
            try:
                p = self._points(Reading(names.meter_name(mid), from_us(ts), values_of(names, fset, vals, counters),
                                         counters_of(names, kwh, counters)))
            except (ValueError, ArithmeticError, struct.error):
                p = None
            rows.append(None if p is None else (p.measurement, p.priority, p.ts_ms, p.line, p.essential, last))
        db.executemany(INSERT_OUTBOX, [r for r in rows if r is not None])
        return rows

    def _parked(self, n: int, parked: list) -> int:
        """On the loop, once the park committed: the outbox's figures."""
        self._r_depth -= len(parked)
        rows = [r for r in parked if r is not None]
        self._o_depth += len(rows)
        self._o_bytes += sum(len(r[3]) for r in rows)
        return n

    def delete_old_readings(self, before_us: int, limit: int) -> int:
        """Delete up to `limit` readings older than `before_us` (of trusted time, already in
        their per-meter form) by time, oldest first: those the pass in id order did not reach
        (they arrived late). The per-meter form is ordered by hour: they are its first rows.
        On the loop's connection (tools and tests; retention awaits the _off_loop one)."""
        with transaction(self._db, "IMMEDIATE") as db:
            n, parked = self._delete_old_readings(db, self._sent(), before_us, limit)
        return self._parked(n, parked)

    async def delete_old_readings_off_loop(self, before_us: int, limit: int) -> WriteDone:
        """delete_old_readings in the commit thread (write_off_loop): the rows deleted, and how long it took."""
        d = await self.write_off_loop(self._delete_old_readings, self._sent(), before_us, limit,
                                         done=lambda r: self._parked(*r))
        return WriteDone(d.result[0], d.seconds)

    def _delete_old_readings(self, db: sqlite3.Connection, sent, before_us: int, limit: int) -> tuple[int, list]:
        rows = db.execute("SELECT b.slot, b.meter, b.ts_us, b.id FROM readings_by_meter b JOIN reading_log r "
                          "ON r.id = b.id WHERE b.slot <= ? AND b.ts_us < ? AND b.id <= ? AND r.episode IS NULL "
                          "ORDER BY b.slot LIMIT ?",
                          (slot(before_us), before_us, indexed(db), limit)).fetchall()
        ids = [r[3] for r in rows if r[3] > sent[0]]
        parked = []
        if ids:
            parked = self._park(db, sent, f"SELECT {LOG_COLS} FROM reading_log WHERE id IN "
                                          "(SELECT value FROM json_each(?))", (json.dumps(ids),))
        db.executemany("DELETE FROM readings_by_meter WHERE slot = ? AND meter = ? AND ts_us = ? AND id = ?", rows)
        db.executemany("DELETE FROM reading_log WHERE id = ?", [(r[3],) for r in rows])
        return len(rows), parked

    # ---- the per-meter form (gateway/ledger/indexer.py) ----

    def catch_up(self) -> int:
        """Move every reading appended so far into readings_by_meter and `energy` now (the
        indexer's worker does it by itself every hour); returns the readings moved."""
        return self.indexer.catch_up()

    async def catch_up_async(self) -> int:
        """catch_up in a worker thread: the event loop goes on meanwhile."""
        return await asyncio.to_thread(self.indexer.catch_up)

    def latest_status(self) -> dict[str, bool]:
        rows = self._db.execute(
            "SELECT device, online FROM device_status WHERE id IN "
            "(SELECT max(id) FROM device_status GROUP BY device)")
        return {d: bool(o) for d, o in rows}

    # ---- clock safety: untrusted episodes, marked rows, repair (gateway/timesync.py) ----

    def _marked_rows(self) -> dict:
        """The batch's events of untrusted clock episodes as rows (field sets resolved here, before
        the transaction, as for the others)."""
        from ..timesync import own_time
        out: dict = {"readings": [], "energy": [], "statuses": [], "fields": {}, "outbox": [], "last": {}}
        tl = self.timeline
        for ep, e, row in self._marked:
            own = to_us(own_time(e))
            if own > out["last"].get(ep, own - 1):
                out["last"][ep] = own
            if row is not None:
                ts_us = to_us(e.alert.updated_at) if isinstance(e, AlertChange) else to_us(e.ts)
                shift_ts = 1
                if isinstance(e, PatrolCheckin):   # its point's time is the reader's: moved only if it was ours
                    span = tl.get(ep) if tl is not None else None
                    shift_ts = int(e.source != "wand" and span is not None and tl.contains(span, ts_us))
                out["outbox"].append((ep, row.measurement, row.priority, ts_us, row.line, row.essential, shift_ts,
                                      int(isinstance(e, PatrolCheckin) and not shift_ts),
                                      len(out["readings"]) if isinstance(e, Reading) else None))
            if isinstance(e, Reading):
                row = _log_row(e, ep)       # meter and field sets resolved in the commit (_Ids)
                out["readings"].append(row)
                if row[4] is not None:
                    out["energy"].append((e.meter, row[1], row[4], ep))
            elif isinstance(e, DeviceStatus):
                out["statuses"].append((e.device, e.kind, to_us(e.ts), int(e.online), e.reason, ep))
            elif isinstance(e, (CardSwipe, DoorEvent, PatrolCheckin, AlertChange, LightingCommand)):
                out["fields"].setdefault(ep, []).append(e)
        return out

    @staticmethod
    def _insert_marked(db: sqlite3.Connection, m: dict) -> None:
        ids = [db.execute("INSERT INTO reading_log (meter, ts_us, field_set, vals, kwh, counters, episode) "
                          "VALUES (?,?,?,?,?,?,?)", r).lastrowid for r in m["readings"]]
        db.executemany("INSERT INTO energy_held (meter, ts_us, kwh, episode) VALUES (?,?,?,?)", m["energy"])
        db.executemany("INSERT INTO device_status (device, kind, ts_us, online, reason, episode) VALUES (?,?,?,?,?,?)",
                       m["statuses"])
        for ep, events in m["fields"].items():
            _insert_field_events(db, events, ep)
        db.executemany("INSERT INTO outbox_held (episode, measurement, priority, ts_us, line, essential, shift_ts, "
                       "shift_delay, reading) VALUES (?,?,?,?,?,?,?,?,?)",
                       [(*o[:8], None if o[8] is None else ids[o[8]]) for o in m["outbox"]])
        db.executemany("UPDATE clock_episodes SET last_wall_us = max(last_wall_us, ?) WHERE id = ?",
                       [(us, ep) for ep, us in m["last"].items()])

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                         "value = excluded.value", (key, value))


