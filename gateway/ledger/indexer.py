"""Moving appended readings into their per-meter form, in large batches off the event loop.

A commit appends readings to the tail of `reading_log` and touches no per-meter page: that is
what keeps a commit to a page or two of the log (docs/storage.md). This worker, in a thread
with its own connection, moves what was appended into `readings_by_meter` (meter, time, id:
what the console and the rules restore look a meter up by) and the energy counters into
`energy` (billing's clustered counters), once an hour or when the tail is long: a batch then
touches each meter's newest pages once instead of at every commit.

A batch covers the ids (indexed, high]; it goes meter by meter in groups of about
`group_rows` readings, one short transaction each, so that a commit on the event loop never
waits long for the write lock. `meta` says how far it got in the same transactions: `indexed`
(every reading up to that id is moved) and, while a batch is under way, `indexing` ("high
meter": the batch's end and the last meter moved). A batch cut short (SIGKILL, power cut)
goes on from there at the next start; moving a reading twice would change nothing anyway
(`readings_by_meter` is keyed by its id, and `energy` keeps the higher of two counters at one
instant, as the commit did on schema 8). Readers do not wait for it: they read the tail after
`indexed` with the per-meter form (gateway/ledger/queries.py).

Its connection syncs its own commits (`synchronous=FULL`), in its own thread: left unsynced,
the ledger's next commit had to sync them (about 2 MB after a batch: 1.35 s on a throttled
card, docs/storage.md "Stalls"). Each group transaction holds the ledger's write lock
(`write_lock`), which the ledger's commits hold too: a commit waits for at most one group,
where SQLite's busy handler, sleeping between retries, missed the short gaps between
back-to-back groups for hundreds of milliseconds.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from contextlib import nullcontext
from pathlib import Path

from .queries import SLOT_SQL, SLOT_US

log = logging.getLogger(__name__)

EVERY_S = 3600.0          # a batch at least this often (docs/storage.md: measured)
TAIL_ROWS = 50_000        # ... or when this many readings wait
BATCH_ROWS = 200_000      # at most this many readings per batch (a long tail: several)
GROUP_ROWS = 2_000        # about this many readings per transaction

INSERT_ENERGY_FROM_LOG = (
    "INSERT INTO energy (meter, ts_us, kwh) SELECT m.name, l.ts_us, l.kwh FROM reading_log l "
    "JOIN meters m ON m.id = l.meter WHERE l.id > ? AND l.id <= ? AND l.meter > ? AND l.meter <= ? "
    "AND l.kwh IS NOT NULL AND l.episode IS NULL ORDER BY l.meter, l.ts_us, l.id "
    "ON CONFLICT (meter, ts_us) DO UPDATE SET kwh = excluded.kwh "
    "WHERE CAST(excluded.kwh AS REAL) > CAST(energy.kwh AS REAL)")
INSERT_BY_METER = (
    f"INSERT OR IGNORE INTO readings_by_meter (slot, meter, ts_us, id) SELECT {SLOT_SQL}, meter, ts_us, id "
    "FROM reading_log WHERE id > ? AND id <= ? AND meter > ? AND meter <= ? ORDER BY 1, 2, 3, 4")


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def _set(db: sqlite3.Connection, key: str, value: str | None) -> None:
    if value is None:
        db.execute("DELETE FROM meta WHERE key = ?", (key,))
    else:
        db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET "
                   "value = excluded.value", (key, value))


def state(db: sqlite3.Connection) -> tuple[int, int | None, int]:
    """(indexed, the batch's end or None, the last meter moved in it)."""
    lo = int(_meta(db, "indexed") or 0)
    doing = _meta(db, "indexing")
    if doing is None:
        return lo, None, 0
    hi, meter = (int(x) for x in doing.split())
    return lo, hi, meter


def plan_groups(db: sqlite3.Connection, lo: int, hi: int, after_meter: int, group_rows: int) -> list[int]:
    """The last meter id of each group of about `group_rows` readings of (lo, hi]."""
    counts = db.execute("SELECT meter, count(*) FROM reading_log WHERE id > ? AND id <= ? AND meter > ? "
                        "GROUP BY meter ORDER BY meter", (lo, hi, after_meter)).fetchall()
    ends, n = [], 0
    for meter, c in counts:
        n += c
        if n >= group_rows:
            ends.append(meter)
            n = 0
    if n and counts:
        ends.append(counts[-1][0])
    return ends


def move(db: sqlite3.Connection, batch_rows: int = BATCH_ROWS, group_rows: int = GROUP_ROWS,
         pause=None, whole_hours: bool = False, lock=None) -> int:
    """Move everything appended so far, in transactions of about `group_rows` readings.
    Returns the readings moved. `pause` (if given) is called between two transactions of a batch.
    `whole_hours`: only up to the last reading before the newest reading's hour (the worker's
    batches: the hour still being written stays in the tail, and each batch adds whole hours at
    the end of readings_by_meter). `lock` (a threading.Lock, if given) is held for each
    transaction."""
    guard = lock if lock is not None else nullcontext()
    moved = 0
    while True:
        lo, hi, after = state(db)
        if hi is None:
            top = db.execute("SELECT max(id) FROM reading_log").fetchone()[0] or 0
            if whole_hours and top > lo:
                newest = db.execute("SELECT ts_us FROM reading_log WHERE id = ?", (top,)).fetchone()[0]
                top = db.execute("SELECT max(id) FROM reading_log WHERE id > ? AND ts_us < ?",
                                 (lo, newest // SLOT_US * SLOT_US)).fetchone()[0] or lo
            if top <= lo:
                return moved
            hi, after = min(top, lo + batch_rows), 0
        for k, end in enumerate(plan_groups(db, lo, hi, after, group_rows) + [None]):   # None: the batch is done
            if k and pause is not None:
                pause()
            with guard:
                db.execute("BEGIN IMMEDIATE")
                try:
                    now = state(db)
                    if now[0] != lo or (now[1:] != (hi, after) and not (now[1] is None and after == 0)):
                        db.execute("ROLLBACK")      # another process moved some meanwhile: look again
                        break
                    if end is None:
                        _set(db, "indexed", str(hi))
                        _set(db, "indexing", None)
                    else:
                        moved += db.execute(INSERT_BY_METER, (lo, hi, after, end)).rowcount
                        db.execute(INSERT_ENERGY_FROM_LOG, (lo, hi, after, end))
                        _set(db, "indexing", f"{hi} {end}")
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            if end is not None:
                after = end


class Indexer:
    """Runs `move` in a daemon thread with its own connection: every `every_s`, when
    `tail_rows` readings wait, at start when a batch was cut short, and on `catch_up()`."""

    def __init__(self, path: Path, every_s: float = EVERY_S, tail_rows: int = TAIL_ROWS,
                 group_rows: int = GROUP_ROWS, write_lock: threading.Lock | None = None):
        self.path = Path(path)
        self.every_s = every_s
        self.tail_rows = tail_rows
        self.group_rows = group_rows
        self.write_lock = write_lock
        self.batches = 0
        self.moved = 0
        self.failures = 0
        self._pending = 0             # readings appended since the last batch (this process)
        self._lock = threading.Lock()  # one batch at a time in this process
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA wal_autocheckpoint=0")
            self._db = db
        return self._db

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-indexer", daemon=True)
        self._thread.start()

    def note_rows(self, n: int) -> None:
        self._pending += n
        if self._pending >= self.tail_rows:
            self._wake.set()

    def catch_up(self, whole_hours: bool = False) -> int:
        """Move everything appended so far, now, in the caller's thread (tests, tools, the
        retention before it deletes, a bulk writer). Returns the readings moved. `whole_hours`:
        as the worker's own batches (a bench simulating them)."""
        with self._lock:
            return self._batch(whole_hours)

    def _batch(self, whole_hours: bool = True) -> int:
        db = self._connection()
        self._pending = 0
        n = move(db, group_rows=self.group_rows, whole_hours=whole_hours, lock=self.write_lock)
        self.batches += 1
        self.moved += n
        return n

    def _run(self) -> None:
        next_at = 0.0                  # at start: whatever an earlier run left
        while not self._stop:
            self._wake.wait(max(0.0, next_at - time.monotonic()))
            self._wake.clear()
            if self._stop:
                break
            if time.monotonic() < next_at and self._pending < self.tail_rows:
                continue
            try:
                with self._lock:
                    self._batch()
            except Exception as e:      # noqa: BLE001 (the worker must outlive any one batch)
                # the tail is read with the per-meter form, so nothing is missing meanwhile
                self.failures += 1
                if self.failures == 1 or self.failures % 10 == 0:
                    log.warning("ledger %s: moving readings into their per-meter form failed (%d times so "
                                "far), will retry: %s", self.path, self.failures, e)
            next_at = time.monotonic() + self.every_s

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
