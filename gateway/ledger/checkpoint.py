"""WAL checkpoints in a worker thread with its own connection, never inside a commit.

SQLite's automatic checkpoint runs inside whichever COMMIT pushes the log past its limit, on
the event loop: it copies every page changed since the last one into the database file and
syncs it, which on an SD card's random writes can take seconds. The ledger's connection runs
with `wal_autocheckpoint=0` and this thread does it instead: after each commit it looks at the
log's length in the WAL index (the -shm file's header) and runs `PRAGMA wal_checkpoint(PASSIVE)`
once `wal_bytes` have been added to it since the last one. PASSIVE never waits for a reader or a
writer, so a commit on the event loop is never held up by it; commits that land while it copies,
or before the log restarted from its beginning, are copied by short further passes: SQLite
restarts the log at the first commit that begins after everything in it is in the database
file, and a log that never restarts only grows. A longer log lets a page that is changed many times
(the tail of a table, a meter's newest index leaf) be copied once instead of once per
checkpoint: the log's size is chosen by measurement (docs/storage.md).
"""

from __future__ import annotations

import logging
import sqlite3
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

WAL_BYTES = 16 * 1024 * 1024       # checkpoint once the log holds this much (docs/storage.md: measured)
IDLE_CHECK_S = 30.0                # look at the log now and then even without a commit noted


def wal_state(path: Path) -> tuple[int, int]:
    """(frames in the log since it last restarted, the log's salt) from the WAL index header,
    (0, 0) if unknown. The header is the first 48 bytes of the -shm file
    (sqlite.org/walformat.html, "The WAL-Index Header"), in the machine's byte order: mxFrame
    is the u32 at offset 16, the first salt (changed at every restart) the u32 at 32."""
    try:
        with open(f"{path}-shm", "rb") as f:
            head = f.read(36)
    except OSError:
        return 0, 0
    if len(head) < 36:
        return 0, 0
    return struct.unpack("=I", head[16:20])[0], struct.unpack("=I", head[32:36])[0]


def wal_frames(path: Path) -> int:
    return wal_state(path)[0]


class Checkpointer:
    """Runs PASSIVE checkpoints of the ledger at `path` in a daemon thread."""

    def __init__(self, path: Path, page_size: int, wal_bytes: int = WAL_BYTES):
        self.path = Path(path)
        self.frame_bytes = page_size + 24
        self.wal_bytes = wal_bytes
        self.checkpoints = 0           # checkpoints run (catch-up passes included)
        self.failures = 0
        self._done = 0                 # frames of the current log already in the database file
        self._salt = None              # ... of the log with this salt (a restarted log has another)
        self._wake = threading.Event()
        self._stop = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ledger-checkpoint", daemon=True)
        self._thread.start()

    def note_commit(self) -> None:
        """Called after each commit: cheap (sets an event); the thread decides."""
        self._wake.set()

    def due(self) -> bool:
        frames, salt = wal_state(self.path)
        if salt != self._salt:         # the log restarted from its beginning
            self._done, self._salt = 0, salt
        # Once a checkpoint ran in this log, every commit after it is copied at once until the
        # log restarts: a commit that began while the checkpoint ran keeps the log from
        # restarting at the next one, and the log would grow to the next limit.
        return frames > self._done > 0 or (frames - self._done) * self.frame_bytes >= self.wal_bytes

    def step(self, db: sqlite3.Connection) -> None:
        """Checkpoint if due, with up to two short passes for the commits that landed meanwhile."""
        if not self.due():
            return
        for _ in range(3):
            if not self.run_once(db):
                return

    def _run(self) -> None:
        db = None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            while not self._stop:
                self._wake.wait(IDLE_CHECK_S)
                self._wake.clear()
                if self._stop:
                    break
                self.step(db)
        except sqlite3.Error as e:
            log.error("ledger %s: the checkpoint thread stopped: %s", self.path, e)
        finally:
            if db is not None:
                db.close()

    def run_once(self, db: sqlite3.Connection) -> bool:
        """One PASSIVE checkpoint; True if commits landed meanwhile (frames left to copy)."""
        try:
            busy, frames, done = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error as e:
            # the next commit tries again; the log grows meanwhile, nothing is lost
            self.failures += 1
            if self.failures == 1 or self.failures % 100 == 0:
                log.warning("ledger %s: checkpoint failed (%d times so far), will retry: %s",
                            self.path, self.failures, e)
            return False
        self.checkpoints += 1
        self._done = max(0, done)
        return 0 <= done < frames

    def stop(self) -> None:
        self._stop = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
