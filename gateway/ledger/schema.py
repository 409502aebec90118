"""The ledger's schema: its migrations (`PRAGMA user_version`), how a connection to it is
opened, and transactions.

WAL mode with synchronous=FULL, so a committed transaction survives a power cut; the ledger's
commits are batched (gateway/ledger/writer.py). The schema is versioned with `PRAGMA
user_version` and upgraded by the ordered MIGRATIONS below.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from contextlib import contextmanager
from pathlib import Path

from ..private import create_private, make_private_dir, tighten
from .checkpoint import WAL_BYTES
from .maintenance import MIGRATION as MAINTENANCE_MIGRATION

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
    -- The write path of an SD card (docs/storage.md): readings are appended in the order they
    -- arrive, a commit touches the log's tail and no per-meter page; a worker moves them into
    -- readings_by_meter and their counters into `energy` in large batches
    -- (gateway/ledger/indexer.py), and `meta` 'indexed' says how far (gateway/ledger/queries.py
    -- reads both). A schema-8 reading keeps its id and its row as written (counters TEXT); the
    -- ledger copies them over in batches at its first start (writer.py, _finish_upgrade).
    CREATE TABLE meters (
        id   INTEGER PRIMARY KEY,
        name TEXT    NOT NULL UNIQUE
    );
    CREATE TABLE reading_log (
        id        INTEGER PRIMARY KEY,      -- arrival order
        meter     INTEGER NOT NULL,         -- meters.id
        ts_us     INTEGER NOT NULL,         -- UTC microseconds since the epoch
        field_set INTEGER NOT NULL,         -- field_sets.id: the names of vals
        vals      BLOB    NOT NULL,         -- gateway/ledger/codec.py (float64 LE when counters is TEXT)
        kwh       TEXT,                     -- the energy_kwh counter, exact decimal text: what `energy` gets
        counters  BLOB,                     -- codec.py: counter set id, then the other counters; TEXT: JSON (schema 8)
        episode   INTEGER                   -- clock_episodes.id while its time is not trusted
    );
    CREATE INDEX reading_log_episode ON reading_log (episode) WHERE episode IS NOT NULL;
    -- Hour by hour, then meter: a batch of whole hours goes at the end of the table (pages
    -- written once, full), not into 145 places; a meter's readings of an hour are one range.
    CREATE TABLE readings_by_meter (
        slot  INTEGER NOT NULL,             -- ts_us / 3600000000: the hour
        meter INTEGER NOT NULL,
        ts_us INTEGER NOT NULL,
        id    INTEGER NOT NULL,             -- reading_log.id
        PRIMARY KEY (slot, meter, ts_us, id)
    ) WITHOUT ROWID;
    DROP INDEX readings_meter_ts;
    ALTER TABLE readings RENAME TO readings_old;
    INSERT OR REPLACE INTO meta (key, value) SELECT 'indexed', coalesce(max(id), 0) FROM readings_old;
    -- InfluxDB points of readings are read from reading_log by a cursor (writer.py, "the outbox"),
    -- no longer copied into `outbox`; those of schema-8 readings are in `outbox` already.
    INSERT OR REPLACE INTO meta (key, value) SELECT 'outbox_cursor', json_object('c', coalesce(max(id), 0),
        'done', json('[]')) FROM readings_old;
    ALTER TABLE outbox_held ADD COLUMN reading INTEGER;   -- the held point's reading_log.id
    -- the last reading committed before the point: readings' points and these go out in that order
    ALTER TABLE outbox ADD COLUMN after_reading INTEGER NOT NULL DEFAULT 0;
    -- for people and tools with SQL: the readings as schema 8 named them
    CREATE VIEW readings AS SELECT l.id AS id, m.name AS meter, l.ts_us AS ts_us, l.field_set AS field_set,
        l.vals AS vals, l.kwh AS kwh, l.counters AS counters, l.episode AS episode
        FROM reading_log l JOIN meters m ON m.id = l.meter;
    """,
    """
    -- Public lighting (gateway/lighting/): every command with who and why, and the overrides
    -- people set from the console (back to the plan at until_us, or when cancelled). IF NOT
    -- EXISTS: a ledger the lighting release made has these tables at version 10 (see migrate).
    CREATE TABLE IF NOT EXISTS lighting_commands (
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
    CREATE INDEX IF NOT EXISTS lighting_commands_circuit ON lighting_commands (circuit, ts_us);
    CREATE TABLE IF NOT EXISTS lighting_overrides (
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
    CREATE INDEX IF NOT EXISTS lighting_overrides_until ON lighting_overrides (until_us);
    """,
    MAINTENANCE_MIGRATION,
    """
    -- The monthly service report's refused cards and door alarms (gateway/ledger/service.py,
    -- whose queries repeat these conditions word for word): a few hundred among a month's
    -- ~240,000 resident swipes and ~60,000 door events, found without reading the month.
    CREATE INDEX IF NOT EXISTS swipes_refused ON swipes (ts_us)
        WHERE category IN ('unknown', 'revoked', 'expired');
    CREATE INDEX IF NOT EXISTS door_events_alarms ON door_events (ts_us)
        WHERE state IN ('forced_open', 'held_open');
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)
WRITE_PATH_VERSION = 10   # reading_log, readings_by_meter (the migration before lighting's)
PAGE_SIZE = 1024  # of a new ledger (docs/storage.md: measured)
JOURNAL_SIZE_LIMIT = 4 * WAL_BYTES    # a ledger with a longer log (wal_bytes) keeps four times that


class LedgerError(Exception):
    pass


def connect(path: Path) -> sqlite3.Connection:
    try:
        # The ledger is the gateway user's alone: SQLite would create it 0644, and its -wal and
        # -shm copy the database file's mode, so making the file 0600 first covers all three.
        make_private_dir(path.parent)
        if not create_private(path):
            for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                tighten(p)
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        if os.path.getsize(path) == 0:
            # Only a new file takes a page size (an existing one keeps its own until rewritten:
            # `python3 -m gateway.ledger.retention vacuum`). Each commit writes whole pages; small ones
            # make the rewritten tail of a table a quarter of the bytes (docs/storage.md).
            db.execute(f"PRAGMA page_size={PAGE_SIZE}")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA busy_timeout=5000")
        # Checkpoints run in the ledger's worker thread (gateway/ledger/checkpoint.py), not
        # inside a commit on the event loop; a log that grew once (a migration, a long outage
        # of the checkpoint thread) is cut back to this when it restarts, and otherwise kept at
        # its size: overwriting a file in place needs no filesystem journal commit per sync.
        db.execute("PRAGMA wal_autocheckpoint=0")
        db.execute(f"PRAGMA journal_size_limit={JOURNAL_SIZE_LIMIT}")
        return db
    except (OSError, sqlite3.Error) as e:
        raise LedgerError(f"ledger {path}: cannot open: {e}") from None


def migrate(db: sqlite3.Connection, path: Path) -> None:
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise LedgerError(f"ledger {path}: schema version {version} is newer than this gateway "
                          f"understands ({SCHEMA_VERSION}); upgrade the gateway")
    if version == WRITE_PATH_VERSION and not _has_table(db, "reading_log") and _has_table(db, "lighting_commands"):
        # Made by the release whose 10th migration was lighting's (the write path's came later
        # and took number 10): it has lighting and lacks the write path. Lighting's migration
        # runs again harmlessly (IF NOT EXISTS).
        version = WRITE_PATH_VERSION - 1
    for v in range(version, SCHEMA_VERSION):
        try:
            with transaction(db, "IMMEDIATE"):
                for stmt in _statements(MIGRATIONS[v]):
                    db.execute(stmt)
                db.execute(f"PRAGMA user_version = {v + 1}")
        except sqlite3.Error as e:
            raise LedgerError(f"ledger {path}: migration to version {v + 1} failed: {e}") from None
        log.info("ledger %s: schema upgraded to version %d", path, v + 1)


def _has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None


@contextmanager
def transaction(db: sqlite3.Connection, mode: str = ""):
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


# statements the writer's parts share
INSERT_OUTBOX = ("INSERT INTO outbox (measurement, priority, ts_ms, line, essential, after_reading) "
                 "VALUES (?,?,?,?,?,?)")


def last_reading(db: sqlite3.Connection) -> int:
    return db.execute("SELECT coalesce(max(id), 0) FROM reading_log").fetchone()[0]
