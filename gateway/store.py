"""The SQLite ledger: the gateway's local truth.

WAL mode with synchronous=FULL, so a committed transaction survives a power cut; commits are
batched (at most about once per `commit_interval_s`) to spare the SD card. The schema is
versioned with `PRAGMA user_version` and upgraded by the ordered MIGRATIONS below.
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import contextmanager
import logging
import sqlite3
import struct
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Iterable, Iterator

from .clock import from_us, to_us
from .events import AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, PatrolCheckin, Reading
from .hub import Hub

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
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _insert_field_events(db: sqlite3.Connection, events: list) -> None:
    swipes = [(to_us(e.ts), e.reader, e.door, e.direction, e.card_hash, e.card[-4:], e.category, e.holder,
               e.household, e.role) for e in events if isinstance(e, CardSwipe)]
    doors = [(to_us(e.ts), e.door, e.state, e.source) for e in events if isinstance(e, DoorEvent)]
    checkins = [(to_us(e.ts), to_us(e.received), e.reader, e.checkpoint, e.tag, e.guard, e.guard_hash, e.source)
                for e in events if isinstance(e, PatrolCheckin)]
    db.executemany("INSERT INTO swipes (ts_us, reader, door, direction, card_hash, card_tail, category, holder, "
                   "household, role) VALUES (?,?,?,?,?,?,?,?,?,?)", swipes)
    db.executemany("INSERT INTO door_events (ts_us, door, state, source) VALUES (?,?,?,?)", doors)
    db.executemany("INSERT OR IGNORE INTO patrol_checkins (ts_us, received_us, reader, checkpoint, tag, guard, "
                   "guard_hash, source) VALUES (?,?,?,?,?,?,?,?)", checkins)
    for change in (e for e in events if isinstance(e, AlertChange)):
        a = change.alert
        us = lambda t: to_us(t) if t else None  # noqa: E731
        db.execute("INSERT INTO alerts (id, rule, kind, source, severity, state, message, message_en, raised_us, "
                   "updated_us, cleared_us, acked_by, ack_note, acked_us, value, details) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT (id) DO UPDATE SET "
                   "severity = excluded.severity, state = excluded.state, message = excluded.message, "
                   "message_en = excluded.message_en, updated_us = excluded.updated_us, "
                   "cleared_us = excluded.cleared_us, acked_by = excluded.acked_by, ack_note = excluded.ack_note, "
                   "acked_us = excluded.acked_us, value = excluded.value, details = excluded.details",
                   (a.id, a.rule, a.kind, a.source, a.severity, a.state, a.message, a.message_en, us(a.raised_at),
                    us(a.updated_at), us(a.cleared_at), a.acked_by, a.ack_note, us(a.acked_at), a.value,
                    json.dumps(a.details, ensure_ascii=False, default=str)))
        db.execute("INSERT INTO alert_history (alert_id, what, ts_us, state, message) VALUES (?,?,?,?,?)",
                   (a.id, change.what, us(a.updated_at), a.state, a.message))


@contextmanager
def _transaction(db: sqlite3.Connection, mode: str = ""):
    db.execute(f"BEGIN {mode}")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


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
        self.outbox_depth, self.outbox_bytes = self._db.execute(
            "SELECT count(*), coalesce(sum(length(line)), 0) FROM outbox").fetchone()

    # ---- writing ----

    def add(self, event: object) -> None:
        if self.encoder is not None:
            row = self.encoder(event)
            if row is not None:
                self._outbox.append((row.measurement, row.priority, row.ts_ms, row.line, row.essential))
        if isinstance(event, Reading):
            # Values as packed doubles: formatting floats as text is most of a reading's cost.
            values = event.values
            ts_us = to_us(event.ts)
            self._readings.append((
                event.meter, ts_us, self._field_set(tuple(values)),
                struct.pack(f"<{len(values)}d", *values.values()),
                json.dumps({k: str(v) for k, v in event.counters.items()}, separators=(",", ":")),
            ))
            kwh = event.counters.get(ENERGY_FIELD)
            if kwh is not None:
                self._energy.append((event.meter, ts_us, str(kwh)))
        elif isinstance(event, DeviceStatus):
            self._statuses.append((event.device, event.kind, to_us(event.ts), int(event.online), event.reason))
        elif isinstance(event, (CardSwipe, DoorEvent, PatrolCheckin, AlertChange)):
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
        return len(self._readings) + len(self._statuses) + len(self._outbox) + len(self._field_events)

    def flush(self) -> int:
        """Commit everything added so far in one transaction; returns the rows written."""
        if not self.pending:
            return 0
        readings, statuses, outbox = self._readings, self._statuses, self._outbox
        energy = self._energy
        field_events = self._field_events
        with _transaction(self._db) as db:
            _insert_field_events(db, field_events)
            db.executemany("INSERT INTO readings (meter, ts_us, field_set, vals, counters) VALUES (?,?,?,?,?)",
                           readings)
            db.executemany(INSERT_ENERGY, energy)
            db.executemany("INSERT INTO device_status (device, kind, ts_us, online, reason) VALUES (?,?,?,?,?)",
                           statuses)
            db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) VALUES (?,?,?,?,?)",
                           outbox)
        self._readings, self._statuses, self._outbox, self._field_events = [], [], [], []
        self._energy = []
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
                            name="ledger")
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

    def _flush_logged(self) -> None:
        try:
            self.flush()
        except sqlite3.Error as e:
            # Keep the batch: the next flush retries it (disk full, locked file, ...).
            log.error("ledger %s: commit failed, will retry: %s", self.path, e)

    def close(self) -> None:
        self._flush_logged()
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

    def secret(self, name: str) -> bytes:
        """A random key kept in the ledger (created on first use), for when no env var gives one."""
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (f"secret:{name}",)).fetchone()
        if row:
            return bytes.fromhex(row[0])
        key = os.urandom(32)
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (f"secret:{name}", key.hex()))
        return key

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
                        outbox: Iterable[tuple] = ()) -> tuple[int, int]:
        """One allocation run with its household charges (household, group, amount) and its points
        for InfluxDB (outbox rows: measurement, priority, ts_ms, line, essential), atomically.
        Returns the run's id and the number of points queued."""
        counted = [0, 0]

        def count(rows):
            for r in rows:
                counted[0] += 1
                counted[1] += len(r[3])
                yield r
        with _transaction(self._db) as db:
            cur = db.execute("INSERT INTO allocations (month, created_us, bill, metered_cost, recovered, households, "
                             "quality, out_dir, summary) VALUES (?,?,?,?,?,?,?,?,?)",
                             (month, created_us, bill, metered_cost, recovered,
                              len({h for h, _, _ in charges}), quality, out_dir, summary))
            run = cur.lastrowid
            db.executemany("INSERT INTO allocation_charges (allocation, household, grp, amount) VALUES (?,?,?,?)",
                           [(run, h, g, a) for h, g, a in charges])
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
            "  (SELECT y.id FROM readings y WHERE y.meter = m.value AND y.ts_us < :before "
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
        ok = "CASE WHEN json_valid(r.counters) THEN json_extract(r.counters, :path) END IS NOT NULL"
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
        received_us, reader, checkpoint, tag, guard, guard_hash, source)."""
        return self._db.execute(
            "SELECT ts_us, received_us, reader, checkpoint, tag, guard, guard_hash, source FROM patrol_checkins "
            "WHERE ts_us >= ? AND ts_us < ? ORDER BY received_us, id", (start_us, end_us)).fetchall()

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
