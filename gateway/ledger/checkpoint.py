"""WAL checkpoints in a worker thread with its own connection, never inside a commit.

SQLite's automatic checkpoint runs inside whichever COMMIT pushes the log past its limit, on
the event loop: it copies every page changed since the last one into the database file and
syncs it, which on an SD card's random writes can take seconds. The ledger's connection runs
with `wal_autocheckpoint=0` and this thread does it instead: after each commit it looks at the
log's length (the frames of the -wal file written since it last restarted) and runs `PRAGMA wal_checkpoint(PASSIVE)`
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
import os
import sqlite3
import struct
import threading
from pathlib import Path

log = logging.getLogger(__name__)

WAL_BYTES = 16 * 1024 * 1024       # checkpoint once the log holds this much (docs/storage.md: measured)
IDLE_CHECK_S = 30.0                # look at the log now and then even without a commit noted


def wal_state(path: Path) -> tuple[int, int]:
    """(frames in the log since it last restarted, the log's salt), (0, 0) if unknown.

    Read from the -wal file (sqlite.org/fileformat2.html, "The Write-Ahead Log"), never from the
    -shm file: POSIX locks belong to the process, and closing any descriptor of a file drops every
    lock the process holds on it, SQLite's included. Without its lock on the WAL index another
    process (`gateway status`, a backup) takes the log for closed, rebuilds the index under this
    process's mapping of it and the gateway dies of SIGBUS. SQLite locks nothing in the -wal file.

    The header's salt changes at every restart and each frame carries the salt of the log it was
    written in, so the frames of the current log are the leading run of frames with the header's
    salt: found by bisection, a few reads whatever the log's length."""
    try:
        with open(f"{path}-wal", "rb") as f:
            head = f.read(32)
            if len(head) < 32:
                return 0, 0
            page_size, salt = struct.unpack(">I", head[8:12])[0], head[16:24]
            frame_bytes = page_size + 24
            size = os.fstat(f.fileno()).st_size

            def current(i: int) -> bool:
                return os.pread(f.fileno(), 8, 32 + i * frame_bytes + 8) == salt

            lo, hi = 0, (size - 32) // frame_bytes      # frames [0, lo) are current, [hi, ...) not
            while lo < hi:
                mid = (lo + hi) // 2
                if current(mid):
                    lo = mid + 1
                else:
                    hi = mid
            return lo, struct.unpack(">I", salt[:4])[0]
    except OSError:
        return 0, 0


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
