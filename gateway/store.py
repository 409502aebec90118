"""The SQLite ledger: the gateway's local truth.

WAL mode with synchronous=FULL, so a committed transaction survives a power cut; commits are
batched (at most about once per `commit_interval_s`) to spare the SD card. The schema is
versioned with `PRAGMA user_version` and upgraded by the ordered MIGRATIONS below.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from contextlib import contextmanager
import logging
import sqlite3
import struct
import zlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator

from .clock import from_us, to_us
from .events import (AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, LightingCommand, PatrolCheckin,
                     Reading)
from .hub import Hub
from .ledger.maintenance import MIGRATION as MAINTENANCE_MIGRATION
from .private import create_private, make_private_dir, replace_file, tighten

log = logging.getLogger(__name__)

# Each entry upgrades the schema by one version; never edit a released entry, append a new one.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE field_sets (
        id       INTEGER PRIMARY KEY,
        names    TEXT    NOT NULL UNIQUE    -- "voltage_v,current_a,...": the order of `vals`
    );
    CREATE TABLE readings (
        id        INTEGER PRIMARY KEY,
        meter     TEXT    NOT NULL,
        ts_us     INTEGER NOT NULL,         -- UTC microseconds since the epoch
        field_set INTEGER NOT NULL REFERENCES field_sets (id),
        vals      BLOB    NOT NULL,         -- float64 little-endian, one per name of the field set
        counters  TEXT    NOT NULL          -- JSON {field: "exact decimal"}
    );
    CREATE INDEX readings_meter_ts ON readings (meter, ts_us);
    CREATE TABLE device_status (
        id     INTEGER PRIMARY KEY,
        device TEXT    NOT NULL,
        kind   TEXT    NOT NULL,
        ts_us  INTEGER NOT NULL,
        online INTEGER NOT NULL,
        reason TEXT    NOT NULL
    );
    CREATE INDEX device_status_device_ts ON device_status (device, ts_us);
    """,
    """
    CREATE TABLE outbox (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- send order; never reused
        measurement TEXT    NOT NULL,
        priority    INTEGER NOT NULL,       -- shed order when over budget (lowest first)
        ts_ms       INTEGER NOT NULL,       -- the point's own time
        line        TEXT    NOT NULL,       -- line protocol, precision ms
        essential   TEXT                    -- the point thinned to what is never shed, or NULL
    );
    CREATE INDEX outbox_priority ON outbox (priority, id);
    CREATE TABLE outbox_rejected (
        id          INTEGER PRIMARY KEY,
        line        TEXT    NOT NULL,
        status      INTEGER NOT NULL,
        reason      TEXT    NOT NULL,
        rejected_us INTEGER NOT NULL
    );
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE swipes (
        id        INTEGER PRIMARY KEY,
        ts_us     INTEGER NOT NULL,
        reader    TEXT    NOT NULL,
        door      TEXT    NOT NULL,
        direction TEXT    NOT NULL,
        card_hash TEXT    NOT NULL,         -- keyed hash; the clear number stays in cards.csv
        card_tail TEXT    NOT NULL,         -- last 4 digits, what a guard can read off the card
        category  TEXT    NOT NULL,
        holder    TEXT    NOT NULL,
        household TEXT    NOT NULL,
        role      TEXT    NOT NULL
    );
    CREATE INDEX swipes_ts ON swipes (ts_us);
    CREATE TABLE door_events (
        id     INTEGER PRIMARY KEY,
        ts_us  INTEGER NOT NULL,
        door   TEXT    NOT NULL,
        state  TEXT    NOT NULL,
        source TEXT    NOT NULL
    );
    CREATE INDEX door_events_ts ON door_events (ts_us);
    CREATE TABLE patrol_checkins (
        id          INTEGER PRIMARY KEY,
        ts_us       INTEGER NOT NULL,       -- when the reader recorded it
        received_us INTEGER NOT NULL,
        reader      TEXT    NOT NULL,
        checkpoint  TEXT    NOT NULL,
        tag         TEXT    NOT NULL,
        guard       TEXT    NOT NULL,
        guard_hash  TEXT    NOT NULL,
        source      TEXT    NOT NULL,
        UNIQUE (reader, tag, ts_us, guard_hash)  -- a wand downloaded twice is stored once
    );
    CREATE INDEX patrol_checkins_ts ON patrol_checkins (ts_us);
    """,
    """
    CREATE TABLE alerts (
        id         TEXT    PRIMARY KEY,     -- rule/source/raised µs
        rule       TEXT    NOT NULL,
        kind       TEXT    NOT NULL,
        source     TEXT    NOT NULL,
        severity   TEXT    NOT NULL,
        state      TEXT    NOT NULL,        -- active | acknowledged | cleared
        message    TEXT    NOT NULL,
        message_en TEXT    NOT NULL,
        raised_us  INTEGER NOT NULL,
        updated_us INTEGER NOT NULL,
        cleared_us INTEGER,
        acked_by   TEXT    NOT NULL,
        ack_note   TEXT    NOT NULL,
        acked_us   INTEGER,
        value      REAL,
        details    TEXT    NOT NULL         -- JSON
    );
    CREATE INDEX alerts_state ON alerts (state, raised_us);
    CREATE TABLE alert_history (
        id       INTEGER PRIMARY KEY,
        alert_id TEXT    NOT NULL,
        what     TEXT    NOT NULL,          -- raised | updated | acknowledged | cleared | renotify
        ts_us    INTEGER NOT NULL,
        state    TEXT    NOT NULL,
        message  TEXT    NOT NULL
    );
    CREATE INDEX alert_history_ts ON alert_history (ts_us);
    CREATE TABLE ack_requests (           -- written by `gateway alarms ack`, applied by the runtime
        id        INTEGER PRIMARY KEY,
        alert_id  TEXT    NOT NULL,
        by        TEXT    NOT NULL,
        note      TEXT    NOT NULL,
        ts_us     INTEGER NOT NULL,
        done      INTEGER NOT NULL DEFAULT 0,
        result    TEXT    NOT NULL DEFAULT ''
    );
    """,
    """
    CREATE TABLE meter_replacements (      -- written by `gateway meters replace`
        id          INTEGER PRIMARY KEY,
        meter       TEXT    NOT NULL,
        at_us       INTEGER NOT NULL,       -- when the old meter stopped and the new one started
        old_final   TEXT    NOT NULL,       -- exact decimal kWh: the old meter's last counter
        new_initial TEXT    NOT NULL,       -- exact decimal kWh: the new meter's first counter
        by          TEXT    NOT NULL,
        note        TEXT    NOT NULL,
        recorded_us INTEGER NOT NULL,
        UNIQUE (meter, at_us)
    );
    CREATE TABLE allocations (             -- one row per `gateway allocate` run
        id           INTEGER PRIMARY KEY,
        month        TEXT    NOT NULL,      -- "2026-10"
        created_us   INTEGER NOT NULL,
        bill         TEXT,                  -- exact decimal yuan, or NULL
        metered_cost TEXT    NOT NULL,
        recovered    TEXT    NOT NULL,
        households   INTEGER NOT NULL,
        quality      INTEGER NOT NULL,      -- data-quality notes
        out_dir      TEXT    NOT NULL,
        summary      TEXT    NOT NULL       -- JSON: groups and meters of the month
    );
    CREATE INDEX allocations_month ON allocations (month, id);
    CREATE TABLE allocation_charges (
        allocation INTEGER NOT NULL REFERENCES allocations (id),
        household  TEXT    NOT NULL,
        grp        TEXT    NOT NULL,
        amount     TEXT    NOT NULL,        -- exact decimal yuan, to the fen
        PRIMARY KEY (allocation, household, grp)
    );
    """,
    """
    -- Every reading's total energy counter again, clustered by meter and time: billing reads one
    -- meter's month as one contiguous range instead of picking it out of all meters' readings.
    CREATE TABLE energy (
        meter TEXT    NOT NULL,
        ts_us INTEGER NOT NULL,
        kwh   TEXT    NOT NULL,             -- exact decimal text, as in readings.counters
        PRIMARY KEY (meter, ts_us)
    ) WITHOUT ROWID;
    INSERT INTO energy (meter, ts_us, kwh)
        SELECT meter, ts_us, json_extract(counters, '$.energy_kwh') AS kwh FROM readings WHERE kwh IS NOT NULL
        ORDER BY meter, ts_us, CAST(kwh AS REAL)
        ON CONFLICT (meter, ts_us) DO UPDATE SET kwh = excluded.kwh;
    """,
    """
    -- Clock safety (gateway/timesync.py). A stretch of time during which the wall clock was not
    -- trusted is an episode; what was recorded in it carries the episode's id (NULL: trusted)
    -- until the episode is repaired, when its timestamps are moved to true time and the id
    -- cleared. Its energy counters and InfluxDB points wait aside meanwhile (never billed, never sent).
    CREATE TABLE clock_episodes (
        id           INTEGER PRIMARY KEY,
        boot         TEXT    NOT NULL,      -- kernel boot id: the monotonic clock mono_us belongs to
        state        TEXT    NOT NULL,      -- untrusted | repaired | unrepairable (an earlier boot's)
        reason       TEXT    NOT NULL,
        wall_us      INTEGER NOT NULL,      -- the (wrong) wall clock when it began ...
        mono_us      INTEGER NOT NULL,      -- ... and the monotonic clock then
        last_wall_us INTEGER NOT NULL,      -- the wall clock last seen in it: its times lie in [wall_us, last_wall_us]
        after_us     INTEGER,               -- true time: it began after this (newest trusted time known then)
        before_us    INTEGER,               -- true time: it ended before this (set for unrepairable ones)
        offset_us    INTEGER,               -- added to its timestamps when it was repaired
        rows         INTEGER NOT NULL DEFAULT 0,
        repaired_us  INTEGER
    );
    CREATE TABLE clock_steps (
        id      INTEGER PRIMARY KEY,
        boot    TEXT    NOT NULL,
        wall_us INTEGER NOT NULL,           -- the wall clock just after the step
        mono_us INTEGER NOT NULL,
        step_us INTEGER NOT NULL,           -- positive: forward
        trusted INTEGER NOT NULL,           -- the clock was trusted after it
        note    TEXT    NOT NULL
    );
    ALTER TABLE readings ADD COLUMN episode INTEGER;
    ALTER TABLE device_status ADD COLUMN episode INTEGER;
    ALTER TABLE swipes ADD COLUMN episode INTEGER;
    ALTER TABLE door_events ADD COLUMN episode INTEGER;
    ALTER TABLE patrol_checkins ADD COLUMN episode INTEGER;
    ALTER TABLE alerts ADD COLUMN episode INTEGER;
    ALTER TABLE alert_history ADD COLUMN episode INTEGER;
    CREATE INDEX readings_episode ON readings (episode) WHERE episode IS NOT NULL;
    CREATE INDEX device_status_episode ON device_status (episode) WHERE episode IS NOT NULL;
    CREATE INDEX swipes_episode ON swipes (episode) WHERE episode IS NOT NULL;
    CREATE INDEX door_events_episode ON door_events (episode) WHERE episode IS NOT NULL;
    CREATE INDEX patrol_checkins_episode ON patrol_checkins (episode) WHERE episode IS NOT NULL;
    CREATE INDEX alerts_episode ON alerts (episode) WHERE episode IS NOT NULL;
    CREATE INDEX alert_history_episode ON alert_history (episode) WHERE episode IS NOT NULL;
    CREATE TABLE energy_held (              -- `energy` rows of untrusted time: into `energy` once repaired
        meter   TEXT    NOT NULL,
        ts_us   INTEGER NOT NULL,
        kwh     TEXT    NOT NULL,
        episode INTEGER NOT NULL
    );
    CREATE INDEX energy_held_episode ON energy_held (episode, meter);
    CREATE TABLE outbox_held (              -- points of untrusted time: into `outbox` once repaired
        id          INTEGER PRIMARY KEY,
        episode     INTEGER NOT NULL,
        measurement TEXT    NOT NULL,
        priority    INTEGER NOT NULL,
        ts_us       INTEGER NOT NULL,       -- the point's time, exact (its line has it in ms)
        line        TEXT    NOT NULL,
        essential   TEXT,
        shift_ts    INTEGER NOT NULL,       -- the point's time is the gateway's (else a reader's own)
        shift_delay INTEGER NOT NULL        -- its delay_s field (arrival - reader time) moves with the repair
    );
    CREATE INDEX outbox_held_episode ON outbox_held (episode, id);
    """,
    """
    -- Console sessions (gateway/web/sessions.py), so that a reload or restart logs nobody out.
    CREATE TABLE web_sessions (
        key        TEXT    PRIMARY KEY,     -- sha256 of the cookie's session id (the id is not kept)
        user       TEXT    NOT NULL,
        pw         TEXT    NOT NULL,        -- fingerprint of the user's password hash at login
        created_us INTEGER NOT NULL,
        seen_us    INTEGER NOT NULL
    );
    """,
    """
    -- Allocation runs (gateway/billing/runs.py): who made a run and for which utility bill, its
    -- sign-off, the newer approved run that superseded it, and which run's points InfluxDB holds
    -- for the month (`published`: the month's answer, the newest approved run else the newest).
    ALTER TABLE allocations ADD COLUMN by TEXT NOT NULL DEFAULT '';
    ALTER TABLE allocations ADD COLUMN invoice TEXT;            -- the utility bill's number
    ALTER TABLE allocations ADD COLUMN bill_from TEXT;          -- the bill's own period: local dates, inclusive
    ALTER TABLE allocations ADD COLUMN bill_until TEXT;
    ALTER TABLE allocations ADD COLUMN superseded_by INTEGER;
    ALTER TABLE allocations ADD COLUMN published INTEGER NOT NULL DEFAULT 0;
    -- before runs were kept apart, every run queued its points: the month's newest was sent last
    UPDATE allocations SET published = 1 WHERE id IN (SELECT max(id) FROM allocations GROUP BY month);
    CREATE TABLE allocation_signoffs (
        run   INTEGER NOT NULL REFERENCES allocations (id),
        role  TEXT    NOT NULL,             -- reviewed | approved (the run itself is the preparation)
        by    TEXT    NOT NULL,
        at_us INTEGER NOT NULL,
        PRIMARY KEY (run, role)
    );
    CREATE TABLE allocation_points (        -- a run's InfluxDB points while it may become the answer
        run   INTEGER NOT NULL REFERENCES allocations (id),
        chunk INTEGER NOT NULL,
        lines BLOB    NOT NULL,             -- zlib of line-protocol lines, one per line
        PRIMARY KEY (run, chunk)
    );
    CREATE TABLE allocation_outbox (        -- outbox rows queued for a run, as id ranges
        run      INTEGER NOT NULL REFERENCES allocations (id),
        first_id INTEGER NOT NULL,
        last_id  INTEGER NOT NULL,
        zeros    INTEGER NOT NULL           -- 1: zeros over an earlier run's series, never taken back
    );
    CREATE INDEX allocation_outbox_run ON allocation_outbox (run);
    CREATE TABLE allocation_results (       -- a run's whole result (zlib JSON), to print it again when signed
        run  INTEGER PRIMARY KEY REFERENCES allocations (id),
        data BLOB    NOT NULL
    );
    """,
    """
    -- Public lighting (gateway/lighting/): every command with who and why, and the overrides
    -- people set from the console (back to the plan at until_us, or when cancelled).
    CREATE TABLE lighting_commands (
        id        INTEGER PRIMARY KEY,
        ts_us     INTEGER NOT NULL,
        circuit   TEXT    NOT NULL,
        state     INTEGER NOT NULL,         -- 1 on, 0 off
        source    TEXT    NOT NULL,         -- plan | override | emergency | reassert | restart
        by        TEXT    NOT NULL,
        reason    TEXT    NOT NULL,
        result    TEXT    NOT NULL,         -- confirmed | unchanged | mismatch | no_answer | held
        detail    TEXT    NOT NULL DEFAULT '',
        latency_s REAL,
        episode   INTEGER
    );
    CREATE INDEX lighting_commands_circuit ON lighting_commands (circuit, ts_us);
    CREATE TABLE lighting_overrides (
        id           INTEGER PRIMARY KEY,
        circuit      TEXT    NOT NULL,
        state        INTEGER NOT NULL,
        until_us     INTEGER NOT NULL,
        by           TEXT    NOT NULL,
        role         TEXT    NOT NULL,
        reason       TEXT    NOT NULL,
        created_us   INTEGER NOT NULL,
        cancelled_us INTEGER,
        cancelled_by TEXT
    );
    CREATE INDEX lighting_overrides_until ON lighting_overrides (until_us);
    """,
    MAINTENANCE_MIGRATION,
]
ENERGY_FIELD = "energy_kwh"   # the counter billing uses, kept in the `energy` table
# Two readings of one meter at one instant: the higher counter stands, whichever came first.
INSERT_ENERGY = ("INSERT INTO energy (meter, ts_us, kwh) VALUES (?,?,?) ON CONFLICT (meter, ts_us) DO UPDATE SET "
                 "kwh = excluded.kwh WHERE CAST(excluded.kwh AS REAL) > CAST(energy.kwh AS REAL)")
SCHEMA_VERSION = len(MIGRATIONS)
NEVER_SHED = 100  # outbox priority of what the disk budget may never drop (energy counters)


class LedgerError(Exception):
    pass


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


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # The ledger is the gateway user's alone: SQLite would create it 0644, and its -wal and
        # -shm copy the database file's mode, so making the file 0600 first covers all three.
        make_private_dir(path.parent)
        if not create_private(path):
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                tighten(p)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        return db
    except (OSError, sqlite3.Error) as e:
        raise LedgerError(f"ledger {path}: cannot open: {e}") from None


def migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"ledger {path}: schema version {version} is newer than this gateway "
                          f"understands ({SCHEMA_VERSION}); upgrade the gateway")
    for v in range(version, SCHEMA_VERSION):
        try:
            with _transaction(db, "IMMEDIATE"):
                for stmt in _statements(MIGRATIONS[v]):
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {v + 1}")
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {path}: migration to version {v + 1} failed: {e}") from None
        log.info("ledger %s: schema upgraded to version %d", path, v + 1)


def _insert_field_events(db: sqlite3.Connection, events: list, ep: int | None = None) -> None:
    """Swipes, door events, patrol reads and alert changes; `ep` is the clock episode they were
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


@contextmanager
def _transaction(db: sqlite3.Connection, mode: str = ""):
    db.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        # SQLite may have rolled back by itself (SQLITE_FULL, SQLITE_IOERR): a second ROLLBACK
        # would fail and hide the error that matters.
        if db.in_transaction:
            db.execute("ROLLBACK")
        raise
    try:
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a COMMIT that failed (disk full while writing the log) leaves it open
            db.execute("ROLLBACK")
        raise


def _statements(script: str):
    """Split a migration into statements (sqlite decides where one ends, comments included)."""
    buf = ""
    for text_line in script.splitlines(keepends=True):
        buf += text_line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        raise sqlite3.OperationalError(f"incomplete statement at the end of a migration: {buf.strip()[:80]}")


POINTS_CHUNK = 20_000      # lines per compressed chunk of a run's kept points
RUN_COLS = ("id", "month", "created_us", "by", "invoice", "bill_from", "bill_until", "bill", "metered_cost",
            "recovered", "households", "quality", "out_dir", "summary", "superseded_by", "published")


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def allocation_runs(db: sqlite3.Connection, month: str | None = None, run: int | None = None) -> list[dict]:
    """Allocation runs, oldest first, as dicts of RUN_COLS plus `signoffs` {role: (by, at_us)};
    of one month or one run if given. Takes any connection, so the console can read them through
    its read-only one."""
    sql = f"SELECT {', '.join(RUN_COLS)} FROM allocations"
    where, args = [], []
    if month is not None:
        where.append("month = ?")
        args.append(month)
    if run is not None:
        where.append("id = ?")
        args.append(run)
    if where:
        sql += " WHERE " + " AND ".join(where)
    runs = [dict(zip(RUN_COLS, r)) for r in db.execute(sql + " ORDER BY month, id", args)]
    signed: dict[int, dict] = {}
    ids = [r["id"] for r in runs]
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        for rid, role, by, at in db.execute(f"SELECT run, role, by, at_us FROM allocation_signoffs WHERE run IN "
                                            f"({','.join('?' * len(part))})", part):
            signed.setdefault(rid, {})[role] = (by, at)
    for r in runs:
        r["signoffs"] = signed.get(r["id"], {})
    return runs


class Ledger:
    """Readings, statuses and the outbox. `encoder` (an event -> OutboxRow) turns the outbox on:
    every row is then committed in the same transaction as the reading it comes from."""

    def __init__(self, path: Path, commit_interval_s: float = 1.0, encoder=None):
        self.path = Path(path)
        self.commit_interval_s = commit_interval_s
        self.encoder = encoder
        self._db = _connect(self.path)
        migrate(self._db, self.path)
        self._readings: list[tuple] = []
        self._energy: list[tuple] = []
        self._statuses: list[tuple] = []
        self._outbox: list[tuple] = []
        self._field_events: list = []
        self.readings_written = 0
        self.commits = 0
        self.committed = asyncio.Event()  # set after each commit that added outbox rows
        self._field_sets: dict[tuple[str, ...], int] = {}
        self._field_names: dict[int, tuple[str, ...]] = {}
        self._unresolved = False      # a pending reading names a field set not yet in the ledger
        self.outbox_depth, self.outbox_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(line)), 0) FROM outbox").fetchone()
        # Storage care (gateway/retention.py): `write_gate()` False holds the batches in memory
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

    # ---- writing ----

    def add(self, event: object) -> None:
        if self.timeline is not None and self.timeline.spans:
            event, episode = self.timeline.place(event)   # moved to true time if its episode is repaired
            if episode is not None:
                self._marked.append((episode, event, self.encoder(event) if self.encoder is not None else None))
                return
        if self.encoder is not None:
            row = self.encoder(event)
            if row is not None:
                self._outbox.append((row.measurement, row.priority, row.ts_ms, row.line, row.essential))
        if isinstance(event, Reading):
            # Values as packed doubles: formatting floats as text is most of a reading's cost.
            values = event.values
            ts_us = to_us(event.ts)
            names = tuple(values)
            fset = self._field_sets.get(names)
            if fset is None:
                # A new field set is inserted when the batch is committed: an insert here would
                # raise out of the ledger's task when the disk is full.
                fset = names
                self._unresolved = True
            self._readings.append((
                event.meter, ts_us, fset,
                struct.pack(f"<{len(values)}d", *values.values()),
                json.dumps({k: str(v) for k, v in event.counters.items()}, separators=(",", ":")),
            ))
            kwh = event.counters.get(ENERGY_FIELD)
            if kwh is not None:
                self._energy.append((event.meter, ts_us, str(kwh)))
        elif isinstance(event, DeviceStatus):
            self._statuses.append((event.device, event.kind, to_us(event.ts), int(event.online), event.reason))
        elif isinstance(event, (CardSwipe, DoorEvent, PatrolCheckin, AlertChange, LightingCommand)):
            self._field_events.append(event)

    def _field_set(self, names: tuple[str, ...]) -> int:
        found = self._field_sets.get(names)
        if found is None:
            text = ",".join(names)
            db = self._db
            db.execute("INSERT INTO field_sets (names) VALUES (?) ON CONFLICT (names) DO NOTHING", (text,))
            found = db.execute("SELECT id FROM field_sets WHERE names = ?", (text,)).fetchone()[0]
            self._field_sets[names] = found
            self._field_names[found] = names
        return found

    @property
    def pending(self) -> int:
        return len(self._readings) + len(self._statuses) + len(self._outbox) + len(self._field_events) \
            + len(self._energy) + len(self._marked)

    def flush(self) -> int:
        """Commit everything added so far in one transaction; returns the rows written."""
        if not self.pending:
            return 0
        if self._unresolved:
            self._readings = [r if isinstance(r[2], int) else (r[0], r[1], self._field_set(r[2]), r[3], r[4])
                              for r in self._readings]
            self._unresolved = False
        readings, statuses, outbox = self._readings, self._statuses, self._outbox
        energy = self._energy
        field_events = self._field_events
        marked = self._marked_rows() if self._marked else None
        with _transaction(self._db) as db:
            _insert_field_events(db, field_events)
            db.executemany("INSERT INTO readings (meter, ts_us, field_set, vals, counters) VALUES (?,?,?,?,?)",
                           readings)
            db.executemany(INSERT_ENERGY, energy)
            db.executemany("INSERT INTO device_status (device, kind, ts_us, online, reason) VALUES (?,?,?,?,?)",
                           statuses)
            db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) VALUES (?,?,?,?,?)",
                           outbox)
            if marked is not None:
                self._insert_marked(db, marked)
        self._readings, self._statuses, self._outbox, self._field_events = [], [], [], []
        self._energy = []
        if marked is not None:
            self._marked = []
            self.outbox_held += len(marked["outbox"])
            self.readings_written += len(marked["readings"])
        self.readings_written += len(readings)
        self.commits += 1
        if outbox:
            self.outbox_depth += len(outbox)
            self.outbox_bytes += sum(len(r[3]) for r in outbox)
            self.committed.set()
        return len(readings) + len(statuses) + len(outbox) + len(field_events)

    async def run(self, hub: Hub) -> None:
        """Take readings and statuses from the hub and commit them every `commit_interval_s`
        until cancelled; on cancellation everything received so far is committed first.

        Events wait in the subscription between commits: waking up for each one would cost
        more than storing it.
        """
        sub = hub.subscribe(Reading, DeviceStatus, GatewayStats, CardSwipe, DoorEvent, PatrolCheckin, AlertChange,
                            LightingCommand, name="ledger")
        try:
            while True:
                await asyncio.sleep(self.commit_interval_s)
                for event in sub.take_all():
                    self.add(event)
                self._flush_logged()
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

    def _flush_logged(self, force: bool = False) -> None:
        self.gate_closed = self.write_gate is not None and not self.write_gate()
        if self.gate_closed and not force:
            self._bound_pending()
            return
        try:
            written = self.flush()
        except sqlite3.Error as e:
            # Keep the batch: the next flush retries it (disk full, locked file, ...). Said once
            # per episode (and every 10 minutes while it lasts), not at every attempt.
            self.commit_failures += 1
            if self.commit_failures == 1 or self.commit_failures % max(1, int(600 / self.commit_interval_s)) == 0:
                log.error("ledger %s: commit failed (%d attempts so far), %d rows kept in memory, will retry: %s",
                          self.path, self.commit_failures, self.pending, e)
            self._bound_pending()
            return
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
        return (len(self._readings) * self._HELD_READING + len(self._energy) * self._HELD_ENERGY
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

    def close(self) -> None:
        self._flush_logged(force=True)  # the last chance, even with the write gate closed
        if self.pending:
            log.error("ledger %s: %d rows could not be written before closing and are lost", self.path, self.pending)
        self._db.close()

    # ---- the outbox (drained by a sink) ----

    def outbox_batch(self, limit: int, after_id: int = 0) -> list[tuple[int, str]]:
        """The oldest rows after `after_id`, in send order; a batch is an id range."""
        return self._db.execute("SELECT id, line FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                                (after_id, limit)).fetchall()

    def outbox_ts_ms(self, row_id: int) -> int | None:
        row = self._db.execute("SELECT ts_ms FROM outbox WHERE id = ?", (row_id,)).fetchone()
        return row[0] if row else None

    def outbox_oldest_ms(self) -> int | None:
        row = self._db.execute("SELECT min(ts_ms) FROM outbox WHERE id = (SELECT min(id) FROM outbox)").fetchone()
        return row[0]

    def _outbox_delete(self, db: sqlite3.Connection, rows: list[tuple[int, str]]) -> None:
        db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (rows[0][0], rows[-1][0]))

    def _outbox_forget(self, rows: list[tuple[int, str]]) -> None:
        self.outbox_depth -= len(rows)
        self.outbox_bytes -= sum(len(line) for _, line in rows)

    def outbox_confirmed(self, rows: list[tuple[int, str]], now_us: int) -> None:
        """Delete rows the server confirmed (an id range) and note when, in one transaction."""
        with _transaction(self._db) as db:
            db.execute("INSERT INTO meta (key, value) VALUES ('influx_last_ok_us', ?) "
                       "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(now_us),))
            self._outbox_delete(db, rows)
        self._outbox_forget(rows)

    def outbox_reject(self, rows: list[tuple[int, str]], status: int, reason: str, now_us: int) -> None:
        """Move rows the server refused as bad data aside, with its reason, in one transaction."""
        with _transaction(self._db) as db:
            db.executemany("INSERT INTO outbox_rejected (line, status, reason, rejected_us) VALUES (?,?,?,?)",
                           [(line, status, reason, now_us) for _, line in rows])
            self._outbox_delete(db, rows)
        self._outbox_forget(rows)

    def shed(self, target_bytes: int) -> dict[str, int]:
        """Bring the outbox under `target_bytes`, lowest priority and oldest first.

        Points with an essential part (meter points: their energy counters) are thinned to it
        and marked never to be shed again; other points are deleted. Returns rows per measurement.
        """
        shed: dict[str, int] = {}
        db = self._db
        while self.outbox_bytes > target_bytes:
            rows = db.execute(
                "SELECT id, measurement, length(line), essential FROM outbox WHERE priority < ? "
                "ORDER BY priority, id LIMIT 1000", (NEVER_SHED,)).fetchall()
            if not rows:
                break
            freed = deleted = 0
            with _transaction(db):
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
                    if self.outbox_bytes - freed <= target_bytes:
                        break
            self.outbox_depth -= deleted
            self.outbox_bytes -= freed
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
            with _transaction(self._db) as db:
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
        with _transaction(self._db) as db:
            db.executemany("DELETE FROM web_sessions WHERE key = ?", [(k,) for k in keys])

    def ack_requests(self) -> list[tuple[int, str, str, str, int]]:
        return self._db.execute("SELECT id, alert_id, by, note, ts_us FROM ack_requests WHERE done = 0 "
                                "ORDER BY id").fetchall()

    def ack_done(self, request_id: int, result: str) -> None:
        self._db.execute("UPDATE ack_requests SET done = 1, result = ? WHERE id = ?", (result, request_id))

    # ---- public lighting (gateway/lighting/) ----

    def add_lighting_override(self, circuit: str, on: bool, until_us: int, by: str, role: str, reason: str,
                              created_us: int) -> int:
        """A person's override; it replaces any still active for the circuit."""
        with _transaction(self._db) as db:
            db.execute("UPDATE lighting_overrides SET cancelled_us = ?, cancelled_by = ? WHERE circuit = ? AND "
                       "cancelled_us IS NULL AND until_us > ?", (created_us, by, circuit, created_us))
            cur = db.execute("INSERT INTO lighting_overrides (circuit, state, until_us, by, role, reason, created_us) "
                             "VALUES (?,?,?,?,?,?,?)", (circuit, int(on), until_us, by, role, reason, created_us))
        return cur.lastrowid

    def cancel_lighting_override(self, circuit: str, by: str, at_us: int) -> int:
        cur = self._db.execute("UPDATE lighting_overrides SET cancelled_us = ?, cancelled_by = ? WHERE circuit = ? "
                               "AND cancelled_us IS NULL AND until_us > ?", (at_us, by, circuit, at_us))
        return cur.rowcount

    def active_lighting_overrides(self, now_us: int) -> list[dict]:
        """The newest active override of each circuit."""
        rows = self._db.execute("SELECT id, circuit, state, until_us, by, role, reason, created_us FROM "
                                "lighting_overrides WHERE cancelled_us IS NULL AND until_us > ? ORDER BY id",
                                (now_us,)).fetchall()
        keys = ("id", "circuit", "on", "until_us", "by", "role", "reason", "created_us")
        return list({r[1]: {**dict(zip(keys, r)), "on": bool(r[2])} for r in rows}.values())

    def lighting_commands(self, circuit: str | None = None, since_us: int = 0, limit: int = 1000) -> list[dict]:
        sql = ("SELECT ts_us, circuit, state, source, by, reason, result, detail, latency_s FROM lighting_commands "
               "WHERE ts_us >= ?")
        args: tuple = (since_us,)
        if circuit is not None:
            sql += " AND circuit = ?"
            args += (circuit,)
        keys = ("ts_us", "circuit", "on", "source", "by", "reason", "result", "detail", "latency_s")
        return [dict(zip(keys, r)) for r in self._db.execute(sql + " ORDER BY id DESC LIMIT ?", args + (limit,))]

    def last_lighting_switch(self) -> dict[str, tuple[int, bool]]:
        """circuit -> (time, state) of its last confirmed switching: the contactor's minimum
        times hold across a restart."""
        rows = self._db.execute("SELECT circuit, max(ts_us), state FROM lighting_commands WHERE result = 'confirmed' "
                                "GROUP BY circuit").fetchall()
        return {c: (ts, bool(s)) for c, ts, s in rows}

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
        return self._db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us BETWEEN ? AND ? "
                                "ORDER BY ts_us", (meter, start_us, end_us)).fetchall()

    def energy_before(self, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
        """The last counter before `ts_us` but not before `limit_us`."""
        return self._db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us < ? AND ts_us >= ? "
                                "ORDER BY ts_us DESC LIMIT 1", (meter, ts_us, limit_us)).fetchone()

    def energy_after(self, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
        return self._db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us > ? AND ts_us <= ? "
                                "ORDER BY ts_us LIMIT 1", (meter, ts_us, limit_us)).fetchone()

    def save_allocation(self, month: str, created_us: int, bill: str | None, metered_cost: str, recovered: str,
                        quality: int, out_dir: str, summary: str, charges: list[tuple[str, str, str]],
                        outbox: Iterable[tuple] = (), *, by: str = "", invoice: str | None = None,
                        bill_period: tuple[str, str] | None = None, result: str | None = None,
                        points: Iterable[tuple] = (), queue: bool = False) -> tuple[int, int]:
        """One allocation run with its household charges (household, group, amount), atomically.
        `outbox` rows (measurement, priority, ts_ms, line, essential) are queued at once; `points`
        (outbox rows too) are kept with the run (their lines), for `publish_allocation` to queue
        when the run becomes the month's answer, and with `queue` also queued now, as the run's own
        (a run that is the answer the moment it is made: one pass instead of two). `result` (JSON)
        is kept to print the run again. Returns the run's id and the number of points queued."""
        counted = [0, 0]
        queued: list[tuple] = []

        def count(rows):
            for r in rows:
                counted[0] += 1
                counted[1] += len(r[3])
                yield r

        def kept(rows):
            # a chunk's rows are queued as the chunk is kept: the month is never all in memory
            for i, chunk in enumerate(_chunks(rows, POINTS_CHUNK)):
                if queue:
                    queued.extend(chunk)
                yield run, i, zlib.compress("\n".join(r[3] for r in chunk).encode(), 1)

        with _transaction(self._db, "IMMEDIATE") as db:
            cur = db.execute("INSERT INTO allocations (month, created_us, bill, metered_cost, recovered, households, "
                             "quality, out_dir, summary, by, invoice, bill_from, bill_until) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             (month, created_us, bill, metered_cost, recovered,
                              len({h for h, _, _ in charges}), quality, out_dir, summary, by, invoice,
                              *(bill_period or (None, None))))
            run = cur.lastrowid
            db.executemany("INSERT INTO allocation_charges (allocation, household, grp, amount) VALUES (?,?,?,?)",
                           [(run, h, g, a) for h, g, a in charges])
            first = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0] + 1
            for row in kept(points):
                db.execute("INSERT INTO allocation_points (run, chunk, lines) VALUES (?,?,?)", row)
                if queued:
                    db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) "
                                   "VALUES (?,?,?,?,?)", count(queued))
                    queued.clear()
            if counted[0]:
                last = db.execute("SELECT max(id) FROM outbox").fetchone()[0]
                db.execute("INSERT INTO allocation_outbox (run, first_id, last_id, zeros) VALUES (?,?,?,0)",
                           (run, first, last))
            if result is not None:
                db.execute("INSERT INTO allocation_results (run, data) VALUES (?,?)",
                           (run, zlib.compress(result.encode(), 6)))
            db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) "
                           "VALUES (?,?,?,?,?)", count(outbox))
        self.outbox_depth += counted[0]
        self.outbox_bytes += counted[1]
        if counted[0]:
            self.committed.set()
        return run, counted[0]

    def allocations(self) -> list[tuple]:
        return self._db.execute("SELECT id, month, created_us, bill, metered_cost, recovered, households, quality, "
                                "out_dir FROM allocations ORDER BY month DESC, id DESC").fetchall()

    def allocation_runs(self, month: str | None = None, run: int | None = None) -> list[dict]:
        return allocation_runs(self._db, month, run)

    def allocation_charges(self, run: int) -> list[tuple[str, str, str]]:
        """(household, group, amount as exact text) of one run."""
        return self._db.execute("SELECT household, grp, amount FROM allocation_charges WHERE allocation = ? "
                                "ORDER BY household, grp", (run,)).fetchall()

    def allocation_result(self, run: int) -> str | None:
        row = self._db.execute("SELECT data FROM allocation_results WHERE run = ?", (run,)).fetchone()
        return zlib.decompress(row[0]).decode() if row else None

    def allocation_point_lines(self, run: int) -> Iterator[str]:
        """The points kept with a run, in the order they were made (empty once they are dropped)."""
        chunks = [c for (c,) in self._db.execute("SELECT chunk FROM allocation_points WHERE run = ? ORDER BY chunk",
                                                 (run,))]
        for c in chunks:
            row = self._db.execute("SELECT lines FROM allocation_points WHERE run = ? AND chunk = ?",
                                   (run, c)).fetchone()
            if row:
                yield from zlib.decompress(row[0]).decode().split("\n")

    def has_allocation_points(self, run: int) -> bool:
        return self._db.execute("SELECT 1 FROM allocation_points WHERE run = ? LIMIT 1", (run,)).fetchone() is not None

    def sign_allocation(self, run: int, role: str, by: str, at_us: int, supersede: Iterable[int] = ()) -> None:
        """Record a sign-off (reviewed | approved) of a run, and mark `supersede` (older runs of its
        month) as superseded by it, in one transaction."""
        try:
            with _transaction(self._db, "IMMEDIATE") as db:
                db.execute("INSERT INTO allocation_signoffs (run, role, by, at_us) VALUES (?,?,?,?)",
                           (run, role, by, at_us))
                for old in supersede:
                    db.execute("UPDATE allocations SET superseded_by = ? WHERE id = ? AND superseded_by IS NULL",
                               (run, old))
        except sqlite3.IntegrityError:
            raise LedgerError(f"allocation run {run} is already {role}") from None

    def drop_superseded_points(self, month: str) -> None:
        """Forget the kept points of the month's superseded runs (none of them becomes the answer
        again); call it once the answer is published, which reads the previous answer's series."""
        with _transaction(self._db) as db:
            db.execute("DELETE FROM allocation_points WHERE run IN (SELECT id FROM allocations WHERE month = ? AND "
                       "superseded_by IS NOT NULL AND published = 0)", (month,))

    def publish_allocation(self, month: str, run: int, rows: Iterable[tuple], zeros: Iterable[tuple] = (),
                           replace: bool = True, keep_own: bool = False) -> dict[str, int]:
        """Make `run` the month's answer in InfluxDB, in one transaction: the month's points still
        waiting in the outbox (of any run: the run's own are queued again in full) are taken out,
        `rows` (the run's points) and `zeros` (an earlier answer's series this run does not have,
        set to zero) are queued, and the run is marked published. Zeros queued earlier stay: they
        clear series no run has any more. With keep_own the run's own points queued when it was
        saved stay; with replace=False `rows` are only added (a new state of the published run).
        Outbox rows: (measurement, priority, ts_ms, line, essential)."""
        out = {"removed": 0, "queued": 0, "zeros": 0}
        removed_bytes = added_bytes = 0
        with _transaction(self._db, "IMMEDIATE") as db:
            ranges = db.execute("SELECT o.rowid, o.first_id, o.last_id FROM allocation_outbox o JOIN allocations a "
                                "ON a.id = o.run WHERE a.month = ? AND o.zeros = 0 AND o.run != ?",
                                (month, run if keep_own else -1)).fetchall() if replace else []
            for rowid, first, last in ranges:
                n, size = db.execute("SELECT count(*), coalesce(sum(length(line)), 0) FROM outbox "
                                     "WHERE id BETWEEN ? AND ?", (first, last)).fetchone()
                db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (first, last))
                db.execute("DELETE FROM allocation_outbox WHERE rowid = ?", (rowid,))
                out["removed"] += n
                removed_bytes += size
            for key, batch, zero in (("queued", rows, 0), ("zeros", zeros, 1)):
                before = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
                sizes = [0, 0]

                def count(rows):
                    for r in rows:
                        sizes[0] += 1
                        sizes[1] += len(r[3])
                        yield r
                db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) "
                               "VALUES (?,?,?,?,?)", count(batch))
                if sizes[0]:
                    after = db.execute("SELECT max(id) FROM outbox").fetchone()[0]
                    db.execute("INSERT INTO allocation_outbox (run, first_id, last_id, zeros) VALUES (?,?,?,?)",
                               (run, before + 1, after, zero))
                out[key] = sizes[0]
                added_bytes += sizes[1]
            if replace:
                db.execute("UPDATE allocations SET published = (id = ?) WHERE month = ?", (run, month))
        self.outbox_depth += out["queued"] + out["zeros"] - out["removed"]
        self.outbox_bytes += added_bytes - removed_bytes
        if out["queued"] or out["zeros"]:
            self.committed.set()
        return out

    # ---- what the rules engine takes back after a restart (gateway/rules/restore.py) ----

    def alert_rows(self, states: tuple[str, ...] = ("active", "acknowledged"),
                   raised_since_us: int | None = None) -> list[dict]:
        """Alerts in these states (open ones by default), oldest first, as dicts keyed by the
        `alerts` columns (details is the JSON text as stored)."""
        cols = ("id", "rule", "kind", "source", "severity", "state", "message", "message_en", "raised_us",
                "updated_us", "cleared_us", "acked_by", "ack_note", "acked_us", "value", "details")
        sql = (f"SELECT {', '.join(cols)} FROM alerts WHERE state IN ({','.join('?' * len(states))})"
               + (" AND raised_us >= ?" if raised_since_us is not None else "") + " ORDER BY raised_us, id")
        args = tuple(states) + ((raised_since_us,) if raised_since_us is not None else ())
        return [dict(zip(cols, row)) for row in self._db.execute(sql, args)]

    def last_counters(self, meters: list[str], field: str, before_us: int) -> list[tuple[str, int, object, int]]:
        """Per meter, its last reading before `before_us` that has the counter `field`:
        (meter, ts_us, counter as stored, corrupt) where corrupt is 1 when newer readings were
        passed over because their counters were not valid JSON. One index probe per meter."""
        path = f"$.{field}"
        return self._db.execute(
            "SELECT m.value, r.ts_us, json_extract(r.counters, :path), "
            "  (SELECT NOT json_valid(x.counters) FROM readings x WHERE x.meter = m.value AND x.ts_us < :before "
            "   ORDER BY x.ts_us DESC LIMIT 1) "
            "FROM json_each(:meters) m JOIN readings r ON r.id = "
            "  (SELECT y.id FROM readings y WHERE y.meter = m.value AND y.ts_us < :before AND y.episode IS NULL "
            "   AND CASE WHEN json_valid(y.counters) THEN json_extract(y.counters, :path) END IS NOT NULL "
            "   ORDER BY y.ts_us DESC LIMIT 1)",
            {"path": path, "before": before_us, "meters": json.dumps(list(meters))}).fetchall()

    def counters_around(self, meters: list[str], field: str, times_us: list[int], max_gap_us: int,
                        before_us: int) -> list[tuple]:
        """The counter `field` either side of each instant, per meter: the last reading before t
        (not more than max_gap_us before) and the first at or after t (not more than max_gap_us
        after, and before `before_us`). Rows (meter, t_us, before_ts_us, before_counter,
        after_ts_us, after_counter, corrupt), None where there is no such reading; corrupt counts
        the nearest readings passed over because their counters were not valid JSON. Index
        probes only: what a window edge needs, not the readings in between."""
        path = f"$.{field}"
        # (episode IS NULL: not a reading of an unrepaired clock episode, whose time is wrong)
        ok = ("r.episode IS NULL AND "
              "CASE WHEN json_valid(r.counters) THEN json_extract(r.counters, :path) END IS NOT NULL")
        return self._db.execute(
            f"""WITH probes (meter, t, b, a, bad) AS (
                SELECT m.value, e.value,
                  (SELECT r.id FROM readings r WHERE r.meter = m.value AND r.ts_us < e.value
                     AND r.ts_us >= e.value - :gap AND {ok} ORDER BY r.ts_us DESC LIMIT 1),
                  (SELECT r.id FROM readings r WHERE r.meter = m.value AND r.ts_us >= e.value
                     AND r.ts_us <= e.value + :gap AND r.ts_us < :before AND {ok} ORDER BY r.ts_us LIMIT 1),
                  coalesce((SELECT NOT json_valid(r.counters) FROM readings r WHERE r.meter = m.value
                     AND r.ts_us < e.value AND r.ts_us >= e.value - :gap ORDER BY r.ts_us DESC LIMIT 1), 0)
                  + coalesce((SELECT NOT json_valid(r.counters) FROM readings r WHERE r.meter = m.value
                     AND r.ts_us >= e.value AND r.ts_us <= e.value + :gap AND r.ts_us < :before
                     ORDER BY r.ts_us LIMIT 1), 0)
                FROM json_each(:meters) m, json_each(:times) e)
            SELECT p.meter, p.t, rb.ts_us, json_extract(rb.counters, :path), ra.ts_us,
                   json_extract(ra.counters, :path), p.bad
            FROM probes p LEFT JOIN readings rb ON rb.id = p.b LEFT JOIN readings ra ON ra.id = p.a""",
            {"path": path, "gap": max_gap_us, "before": before_us, "meters": json.dumps(list(meters)),
             "times": json.dumps(list(times_us))}).fetchall()

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
        rows = self._db.execute(
            "SELECT DISTINCT ts_us / :b FROM readings WHERE meter IN (SELECT value FROM json_each(:devices)) "
            "AND ts_us >= :s AND ts_us < :e "
            "UNION SELECT ts_us / :b FROM device_status WHERE device IN (SELECT value FROM json_each(:devices)) "
            "AND ts_us >= :s AND ts_us < :e "
            "UNION SELECT ts_us / :b FROM swipes WHERE ts_us >= :s AND ts_us < :e "
            "UNION SELECT ts_us / :b FROM door_events WHERE ts_us >= :s AND ts_us < :e "
            "UNION SELECT received_us / :b FROM patrol_checkins WHERE ts_us >= :s - 86400000000 "
            "AND received_us >= :s AND received_us < :e "
            "UNION SELECT ts_us / :b FROM alert_history WHERE ts_us >= :s AND ts_us < :e ORDER BY 1", args)
        return [b for (b,) in rows]

    # ---- reading ----

    def count_readings(self, meter: str | None = None) -> int:
        if meter is None:
            return self._db.execute("SELECT count(*) FROM readings").fetchone()[0]
        return self._db.execute("SELECT count(*) FROM readings WHERE meter = ?", (meter,)).fetchone()[0]

    def readings(self, meter: str | None = None) -> Iterator[StoredReading]:
        sql = "SELECT id, meter, ts_us, field_set, vals, counters FROM readings"
        args: tuple = ()
        if meter is not None:
            sql += " WHERE meter = ?"
            args = (meter,)
        sets = {i: tuple(n.split(",")) for i, n in self._db.execute("SELECT id, names FROM field_sets")}
        for rid, m, ts, fset, vals, counters in self._db.execute(sql + " ORDER BY id", args):
            names = sets[fset]
            yield StoredReading(rid, m, from_us(ts), dict(zip(names, struct.unpack(f"<{len(names)}d", vals))),
                                {k: Decimal(v) for k, v in json.loads(counters).items()})

    def latest_status(self) -> dict[str, bool]:
        rows = self._db.execute(
            "SELECT device, online FROM device_status WHERE id IN "
            "(SELECT max(id) FROM device_status GROUP BY device)")
        return {d: bool(o) for d, o in rows}

    # ---- clock safety: untrusted episodes, marked rows, repair (gateway/timesync.py) ----

    def _marked_rows(self) -> dict:
        """The batch's events of untrusted clock episodes as rows (field sets resolved here, before
        the transaction, as for the others)."""
        from .timesync import own_time
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
                                      int(isinstance(e, PatrolCheckin) and not shift_ts)))
            if isinstance(e, Reading):
                ts_us, values = to_us(e.ts), e.values
                out["readings"].append((e.meter, ts_us, self._field_set(tuple(values)),
                                        struct.pack(f"<{len(values)}d", *values.values()),
                                        json.dumps({k: str(v) for k, v in e.counters.items()}, separators=(",", ":")),
                                        ep))
                kwh = e.counters.get(ENERGY_FIELD)
                if kwh is not None:
                    out["energy"].append((e.meter, ts_us, str(kwh), ep))
            elif isinstance(e, DeviceStatus):
                out["statuses"].append((e.device, e.kind, to_us(e.ts), int(e.online), e.reason, ep))
            elif isinstance(e, (CardSwipe, DoorEvent, PatrolCheckin, AlertChange, LightingCommand)):
                out["fields"].setdefault(ep, []).append(e)
        return out

    @staticmethod
    def _insert_marked(db: sqlite3.Connection, m: dict) -> None:
        db.executemany("INSERT INTO readings (meter, ts_us, field_set, vals, counters, episode) VALUES (?,?,?,?,?,?)",
                       m["readings"])
        db.executemany("INSERT INTO energy_held (meter, ts_us, kwh, episode) VALUES (?,?,?,?)", m["energy"])
        db.executemany("INSERT INTO device_status (device, kind, ts_us, online, reason, episode) VALUES (?,?,?,?,?,?)",
                       m["statuses"])
        for ep, events in m["fields"].items():
            _insert_field_events(db, events, ep)
        db.executemany("INSERT INTO outbox_held (episode, measurement, priority, ts_us, line, essential, shift_ts, "
                       "shift_delay) VALUES (?,?,?,?,?,?,?,?)", m["outbox"])
        db.executemany("UPDATE clock_episodes SET last_wall_us = max(last_wall_us, ?) WHERE id = ?",
                       [(us, ep) for ep, us in m["last"].items()])

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                         "value = excluded.value", (key, value))

    def newest_trusted_us(self) -> int | None:
        """The newest time the gateway's own clock wrote while trusted: its latest readings and
        statuses (by insertion, a few index steps) and the time it last noted (meta clock_seen_us).
        A wall clock before it after a reboot is wrong (fake-hwclock restores an older time)."""
        return self._db.execute(
            "SELECT max(t) FROM ("
            " SELECT (SELECT max(ts_us) FROM (SELECT ts_us FROM readings WHERE episode IS NULL "
            "         ORDER BY id DESC LIMIT 100)) AS t"
            " UNION ALL SELECT (SELECT max(ts_us) FROM (SELECT ts_us FROM device_status WHERE episode IS NULL "
            "         ORDER BY id DESC LIMIT 100))"
            " UNION ALL SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'clock_seen_us')").fetchone()[0]

    def open_clock_episode(self, boot: str, reason: str, wall_us: int, mono_us: int, after_us: int | None) -> int:
        return self._db.execute(
            "INSERT INTO clock_episodes (boot, state, reason, wall_us, mono_us, last_wall_us, after_us) "
            "VALUES (?, 'untrusted', ?, ?, ?, ?, ?)", (boot, reason, wall_us, mono_us, wall_us, after_us)).lastrowid

    def set_clock_episode(self, episode: int, state: str | None = None, last_wall_us: int | None = None) -> None:
        if state is not None:
            self._db.execute("UPDATE clock_episodes SET state = ? WHERE id = ?", (state, episode))
        if last_wall_us is not None:
            self._db.execute("UPDATE clock_episodes SET last_wall_us = max(last_wall_us, ?) WHERE id = ?",
                             (last_wall_us, episode))

    _EPISODE_COLS = ("id", "boot", "state", "reason", "wall_us", "mono_us", "last_wall_us", "after_us", "before_us",
                     "offset_us", "rows", "repaired_us")
    CLOCK_TABLES = ("readings", "device_status", "swipes", "door_events", "patrol_checkins", "alerts",
                    "alert_history", "lighting_commands")

    def clock_episodes(self, states: tuple[str, ...] | None = None) -> list[dict]:
        sql = f"SELECT {', '.join(self._EPISODE_COLS)} FROM clock_episodes"
        args: tuple = ()
        if states is not None:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(states)
        return [dict(zip(self._EPISODE_COLS, r)) for r in self._db.execute(sql + " ORDER BY id", args)]

    def clock_episode_rows(self, episode: int) -> dict[str, int]:
        """Rows still marked with the episode, per table (energy: held counters, outbox: held points)."""
        db = self._db
        out = {t: db.execute(f"SELECT count(*) FROM {t} WHERE episode = ?", (episode,)).fetchone()[0]
               for t in self.CLOCK_TABLES}
        out["energy"] = db.execute("SELECT count(*) FROM energy_held WHERE episode = ?", (episode,)).fetchone()[0]
        out["outbox"] = db.execute("SELECT count(*) FROM outbox_held WHERE episode = ?", (episode,)).fetchone()[0]
        return out

    def unrepaired_clock(self) -> list[dict]:
        """Episodes not (yet) repaired, oldest first: the episode's columns, `rows` per table and
        `energy` {meter: (counters held, first and last ts_us as the wrong clock said)}. Billing
        never sees their counters (they are not in `energy`); it notes them (billing/allocate.py)."""
        out = []
        for e in self.clock_episodes(("untrusted", "unrepairable")):
            e["rows"] = self.clock_episode_rows(e["id"])
            e["energy"] = {m: (n, lo, hi) for m, n, lo, hi in self._db.execute(
                "SELECT meter, count(*), min(ts_us), max(ts_us) FROM energy_held WHERE episode = ? GROUP BY meter "
                "ORDER BY meter", (e["id"],))}
            out.append(e)
        return out

    def record_clock_step(self, boot: str, wall_us: int, mono_us: int, step_us: int, trusted: bool, note: str) -> None:
        self._db.execute("INSERT INTO clock_steps (boot, wall_us, mono_us, step_us, trusted, note) "
                         "VALUES (?,?,?,?,?,?)",
                         (boot, wall_us, mono_us, step_us, int(trusted), note))

    def clock_steps(self) -> list[dict]:
        cols = ("id", "boot", "wall_us", "mono_us", "step_us", "trusted", "note")
        return [dict(zip(cols, r)) for r in self._db.execute(f"SELECT {', '.join(cols)} FROM clock_steps ORDER BY id")]

    def repair_clock(self, fixes: list[tuple[int, int, int, int]], now_us: int,
                     boot_start_us: int | None = None) -> dict[int, dict[str, int]]:
        """Move the rows of untrusted episodes to true time, in one transaction. `fixes` are
        (episode, offset_us, lo_us, hi_us): every timestamp the gateway's clock gave in the episode
        (they lie in [lo, hi] of the wrong timeline) gets offset_us added; a patrol read's own
        time does so only if it was the gateway's (online reader, in range), an alert's times
        only those in range. Held energy counters go into `energy`, held points into the outbox
        with their line's time (and a patrol point's delay_s) rebuilt. `boot_start_us` (true time
        of this boot's start) bounds the unrepairable episodes that had no upper bound yet.
        Returns rows moved per episode and table."""
        out: dict[int, dict[str, int]] = {}
        points: list[tuple] = []
        held = 0
        with _transaction(self._db, "IMMEDIATE") as db:
            for ep, off, lo, hi in fixes:
                n: dict[str, int] = {}
                for t in ("readings", "device_status", "swipes", "door_events", "alert_history"):
                    n[t] = db.execute(f"UPDATE {t} SET ts_us = ts_us + ?, episode = NULL WHERE episode = ?",
                                      (off, ep)).rowcount
                moved = db.execute("UPDATE lighting_commands SET ts_us = ts_us + ?, episode = NULL WHERE episode = ?",
                                   (off, ep)).rowcount
                if moved:   # said only where there is lighting
                    n["lighting_commands"] = moved
                args = {"off": off, "lo": lo, "hi": hi, "ep": ep}
                n["patrol_checkins"] = db.execute(
                    "UPDATE OR REPLACE patrol_checkins SET received_us = received_us + :off, ts_us = CASE WHEN "
                    "source != 'wand' AND ts_us BETWEEN :lo AND :hi THEN ts_us + :off ELSE ts_us END, episode = NULL "
                    "WHERE episode = :ep", args).rowcount
                n["alerts"] = db.execute(
                    "UPDATE alerts SET "
                    + ", ".join(f"{c} = CASE WHEN {c} BETWEEN :lo AND :hi THEN {c} + :off ELSE {c} END"
                                for c in ("raised_us", "updated_us", "cleared_us", "acked_us"))
                    + ", episode = NULL WHERE episode = :ep", args).rowcount
                db.execute("INSERT INTO energy (meter, ts_us, kwh) SELECT meter, ts_us + :off, kwh FROM energy_held "
                           "WHERE episode = :ep ORDER BY meter, ts_us, CAST(kwh AS REAL) ON CONFLICT (meter, ts_us) "
                           "DO UPDATE SET kwh = excluded.kwh "
                           "WHERE CAST(excluded.kwh AS REAL) > CAST(energy.kwh AS REAL)",
                           args)
                n["energy"] = db.execute("DELETE FROM energy_held WHERE episode = ?", (ep,)).rowcount
                rows = db.execute("SELECT measurement, priority, ts_us, line, essential, shift_ts, shift_delay "
                                  "FROM outbox_held WHERE episode = ? ORDER BY id", (ep,)).fetchall()
                moved = [_retimed_point(r, off) for r in rows]
                db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) VALUES (?,?,?,?,?)",
                               moved)
                db.execute("DELETE FROM outbox_held WHERE episode = ?", (ep,))
                n["outbox"] = len(rows)
                held += len(rows)
                points += moved
                db.execute("UPDATE clock_episodes SET state = 'repaired', offset_us = ?, rows = ?, repaired_us = ?, "
                           "last_wall_us = max(last_wall_us, ?) WHERE id = ?", (off, sum(n.values()), now_us, hi, ep))
                out[ep] = n
            if boot_start_us is not None:
                db.execute("UPDATE clock_episodes SET before_us = ? WHERE state = 'unrepairable' AND before_us IS NULL",
                           (boot_start_us,))
        self.outbox_held -= held
        if points:
            self.outbox_depth += len(points)
            self.outbox_bytes += sum(len(p[3]) for p in points)
            self.committed.set()
        return out


_DELAY = re.compile(r"([ ,])delay_s=([^ ,]+)( -?\d+)$")


def _retimed_point(row: tuple, off: int) -> tuple:
    """An outbox_held row as an outbox row (measurement, priority, ts_ms, line, essential), moved by
    `off` µs: the line's timestamp (the last token) when the point's time was the gateway's, and a
    patrol point's delay_s (its last field: arrival - reader time) when only the arrival moved."""
    measurement, priority, ts_us, line, essential, shift_ts, shift_delay = row
    ms = (ts_us + off if shift_ts else ts_us) // 1000

    def fix(text: str | None) -> str | None:
        if text is None:
            return None
        text = text[:text.rindex(" ") + 1] + str(ms)
        if shift_delay:
            def delay(m: re.Match) -> str:
                us = round(float(m.group(2)) * 1_000_000) + off
                return f"{m.group(1)}delay_s={timedelta(microseconds=us).total_seconds()!r}{m.group(3)}"
            text = _DELAY.sub(delay, text)
        return text
    return measurement, priority, ms, fix(line), fix(essential)
