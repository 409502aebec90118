"""The ledger's write path on an SD card: checkpoints off the event loop, small pages."""

from __future__ import annotations

import sqlite3
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from gateway.events import Reading
from gateway.ledger.checkpoint import wal_frames
from gateway.store import PAGE_SIZE, Ledger

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_new_ledger_takes_small_pages_and_an_old_one_keeps_its_own(tmp_path):
    Ledger(tmp_path / "new.db").close()
    old = sqlite3.connect(tmp_path / "old.db")
    old.execute("PRAGMA page_size = 4096")
    old.execute("CREATE TABLE x (a)")
    old.close()
    Ledger(tmp_path / "old.db").close()
    assert sqlite3.connect(tmp_path / "new.db").execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 1024
    assert sqlite3.connect(tmp_path / "old.db").execute("PRAGMA page_size").fetchone()[0] == 4096


def test_checkpoints_run_in_the_worker_thread_once_the_log_is_long_enough(tmp_path):
    ledger = Ledger(tmp_path / "l.db", wal_bytes=256 * 1024)
    # SQLite's own checkpoint would run inside a commit, on the event loop
    assert ledger._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    for i in range(20):
        ledger.add(Reading("m1", T0 + timedelta(seconds=i), {"voltage_v": 230.0 + i, "x": 1.0 * i},
                           {"energy_kwh": Decimal(i)}))
        ledger.flush()
    assert ledger.checkpointer.checkpoints == 0      # not yet 256 KiB of log
    for i in range(20, 3000):
        ledger.add(Reading("m1", T0 + timedelta(seconds=i), {"voltage_v": 230.0 + i, "x": 1.0 * i},
                           {"energy_kwh": Decimal(i)}))
        ledger.flush()
    wait_for(lambda: ledger.checkpointer.checkpoints >= 1 and not ledger.checkpointer.due())
    # everything in the log is in the database file: the next commit starts it from its beginning
    ledger.add(Reading("m1", T0, {"voltage_v": 1.0}))
    ledger.flush()
    assert wal_frames(tmp_path / "l.db") < 10
    assert ledger.count_readings() == 3001
    ledger.close()
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 3001
