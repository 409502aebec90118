"""The ledger's write path on an SD card: checkpoints off the event loop, small pages."""

from __future__ import annotations

import sqlite3
import time

import pytest
from datetime import datetime, timedelta, timezone
from decimal import Decimal

from gateway.clock import to_us
from gateway.events import Reading
from gateway.ledger.checkpoint import wal_frames
from gateway.ledger import Ledger
from gateway.ledger.schema import PAGE_SIZE

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
    # Everything in the log is in the database file: a commit starts it from its beginning
    # instead of growing it. Usually the next one; under load a worker thread (the checkpoint's
    # catch-up pass, the per-meter batch) may still be reading the log then, and a later one does.
    restarted = False
    deadline = time.monotonic() + 15
    i = -1
    while not restarted and time.monotonic() < deadline:
        i += 1
        ledger.add(Reading("m1", T0 + timedelta(hours=1, seconds=i), {"voltage_v": 1.0}))
        ledger.flush()
        restarted = wal_frames(tmp_path / "l.db") < 10
        time.sleep(0.05)
    assert restarted
    assert ledger.count_readings() == 3001 + i
    ledger.close()
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] == 3001 + i


# ---- the appended log and its per-meter form -----------------------------------------------------

def answers(ledger, db) -> dict:
    """Every question the gateway asks about readings and counters, through the ledger and the
    read model other processes use."""
    from gateway.ledger import queries
    meters = ["m1", "m2", "m3", "nobody"]
    t = [to_us(T0 + timedelta(seconds=s)) for s in (-1, 0, 45, 90, 95, 299, 600, 10_000)]
    return {
        "rows": [(r.id, r.meter, r.ts, r.values, r.counters) for r in ledger.readings()],
        "count": [ledger.count_readings(m) for m in (*meters, None)],
        "series": [ledger.energy_series(m, 0, 2**62) for m in meters],
        "before": [ledger.energy_before(m, x, 0) for m in meters for x in t],
        "after": [ledger.energy_after(m, x, 2**62) for m in meters for x in t],
        "last": [ledger.last_counters(meters, f, x) for f in ("energy_kwh", "export_kwh") for x in t],
        "around": ledger.counters_around(meters, "energy_kwh", t, 60_000_000, t[-2]),
        "activity": ledger.activity(meters, 0, 2**62, 30_000_000),
        "has": [ledger.has_readings(m, a, b) for m in meters for a, b in zip(t, t[1:])],
        "console": queries.last_readings(db, meters),
        "samples": [queries.meter_rows(db, m, t[0], t[-1]) for m in meters],
        "times": queries.last_reading_times(db),
    }


def test_readers_answer_the_same_whenever_the_worker_moved_the_readings(tmp_path):
    from gateway.ledger.indexer import move, state
    ledger = Ledger(tmp_path / "l.db")
    ledger.indexer.stop()                    # moved by hand below
    for i in range(60):
        ts = T0 + timedelta(seconds=5 * i)
        ledger.add(Reading("m1", ts, {"voltage_v": 230.0 + i / 10, "energy_kwh": 10.0 + i},
                           {"energy_kwh": Decimal("10.00") + i, "export_kwh": Decimal("0.5")}))
        if i % 3 == 0:
            ledger.add(Reading("m2", ts, {"energy_kwh": 7.0}, {"energy_kwh": Decimal("7.0") + i // 10}))
        if i % 20 == 5:                       # a second reading at the same instant: the higher stands
            ledger.add(Reading("m2", ts, {"energy_kwh": 7.5}, {"energy_kwh": Decimal("7.50") + i // 10}))
            ledger.add(Reading("m2", ts, {"energy_kwh": 7.5}, {"energy_kwh": Decimal("7.5") + i // 10}))  # as high
            ledger.add(Reading("m2", ts, {"energy_kwh": 1.0}, {"energy_kwh": Decimal("1")}))
        if i == 40:                           # one that arrived late
            ledger.add(Reading("m3", T0 - timedelta(seconds=3), {"x": 1.0}, {"energy_kwh": Decimal("3.3")}))
        ledger.add(Reading("m3", ts, {"x": float(i)}))
        if i % 7 == 0:
            ledger.flush()
    ledger.flush()
    db = sqlite3.connect(tmp_path / "l.db")
    tail_only = answers(ledger, db)
    assert tail_only["series"][1] and tail_only["last"][0]
    worker = sqlite3.connect(tmp_path / "l.db", isolation_level=None)

    class Cut(Exception):
        pass

    def cut():
        raise Cut
    with pytest.raises(Cut):                 # a batch cut short after its first group (a kill)
        move(worker, group_rows=10, pause=cut)
    lo, hi, after = state(worker)
    assert lo == 0 and hi is not None and after >= 1      # half moved: the first meter only
    assert answers(ledger, db) == tail_only
    move(worker, group_rows=10)
    assert state(worker)[1] is None and state(worker)[0] > 0
    assert answers(ledger, db) == tail_only
    # and again with readings appended after the batch
    ledger.add(Reading("m1", T0 + timedelta(seconds=301), {"energy_kwh": 99.0}, {"energy_kwh": Decimal("99.00")}))
    ledger.flush()
    mixed = answers(ledger, db)
    move(worker)
    assert answers(ledger, db) == mixed
    worker.close()
    ledger.close()


# ---- SIGKILL during the worker's batch and during a checkpoint --------------------------------------

async def _run_until(path, mode: str, marker: str) -> tuple[int, list[str]]:
    """Start the writer, kill it (SIGKILL) as soon as it prints `marker`; returns the readings it
    said were committed and everything it printed."""
    import asyncio
    import signal
    import sys
    from pathlib import Path
    child = Path(__file__).parent / "ledger_kill_child.py"
    proc = await asyncio.create_subprocess_exec(sys.executable, str(child), str(path), mode,
                                                stdout=asyncio.subprocess.PIPE)
    lines: list[str] = []
    committed = 0
    async with asyncio.timeout(60):
        while True:
            line = (await proc.stdout.readline()).decode().strip()
            assert line, "the writer stopped by itself"
            lines.append(line)
            if line.startswith("committed "):
                committed = int(line.split()[1])
            if line == marker and committed:
                proc.send_signal(signal.SIGKILL)
                break
    rest = (await proc.stdout.read()).decode().split()
    await proc.wait()
    return committed, lines + rest


def _whole(path, committed: int) -> None:
    """Nothing committed is lost, nothing is there twice, and the per-meter form is exact."""
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    ledger = Ledger(path)
    ledger.catch_up()
    db = sqlite3.connect(path)
    n = db.execute("SELECT count(*) FROM reading_log").fetchone()[0]
    assert n >= committed
    assert db.execute("SELECT count(*) FROM readings_by_meter").fetchone()[0] == n        # each once
    assert db.execute("SELECT count(*) FROM energy").fetchone()[0] == n                   # distinct instants
    assert db.execute("SELECT count(*) FROM reading_log l JOIN meters m ON m.id = l.meter LEFT JOIN energy e "
                      "ON e.meter = m.name AND e.ts_us = l.ts_us AND e.kwh = l.kwh WHERE e.kwh IS NULL"
                      ).fetchone()[0] == 0
    assert db.execute("SELECT value FROM meta WHERE key = 'indexing'").fetchone() is None
    db.close()
    ledger.close()


async def test_sigkill_during_the_per_meter_batch_loses_and_doubles_nothing(tmp_path):
    path = tmp_path / "l.db"
    for _ in range(3):
        committed, said = await _run_until(path, "batch", "group")
        db = sqlite3.connect(path)
        # killed inside a batch: it had begun (a group moved) and not finished
        assert db.execute("SELECT value FROM meta WHERE key = 'indexing'").fetchone() is not None
        db.close()
        _whole(path, committed)


async def test_sigkill_during_a_checkpoint_loses_nothing_committed(tmp_path):
    path = tmp_path / "l.db"
    cut_short = 0
    for _ in range(3):
        committed, said = await _run_until(path, "checkpoint", "checkpoint")
        cut_short += said[-1] == "checkpoint"          # it never said "checkpointed": killed inside
        _whole(path, committed)
    assert cut_short >= 1


def test_vacuum_gives_an_old_ledger_the_small_pages_of_a_new_one(tmp_path):
    from gateway.ledger.retention import vacuum
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.execute("PRAGMA page_size = 4096")
    db.execute("CREATE TABLE x (a)")
    db.close()
    ledger = Ledger(path)
    for i in range(500):
        ledger.add(Reading("m1", T0 + timedelta(seconds=i), {"voltage_v": 230.0}, {"energy_kwh": Decimal(i)}))
    ledger.flush()
    want = [(r.id, r.ts, r.values, r.counters) for r in ledger.readings()]
    ledger.close()
    vacuum(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    ledger = Ledger(path)
    assert [(r.id, r.ts, r.values, r.counters) for r in ledger.readings()] == want
    assert ledger.energy_series("m1", 0, 2**62)[-1] == (to_us(T0 + timedelta(seconds=499)), "499")
    ledger.close()


SHM_DMS_BYTE = 128   # the -shm byte whose shared lock says "a connection has this log open"
                     # (SQLite's os_unix.c: UNIX_SHM_DMS, after the 8 lock bytes at 120)

PROBE = """
import fcntl, sys
with open(sys.argv[1] + "-shm", "r+b") as f:
    try:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, %d)
    except OSError:
        print("held")
    else:
        print("free")
""" % SHM_DMS_BYTE


def test_looking_at_the_log_keeps_the_ledgers_lock_on_its_wal_index(tmp_path):
    """POSIX locks belong to the process and closing any descriptor of a file drops all of them:
    a look at the log that opened and closed the -shm file let another process (`gateway
    status`, a backup) think the log was closed, rebuild the index under the ledger's mapping of
    it and crash the gateway with SIGBUS. Another process must find the lock still held."""
    import subprocess
    import sys
    ledger = Ledger(tmp_path / "l.db", wal_bytes=256 * 1024)
    for i in range(3000):
        ledger.add(Reading("m1", T0 + timedelta(seconds=i), {"voltage_v": 230.0 + i}))
        if i % 100 == 0:
            ledger.flush()
    ledger.flush()
    wait_for(lambda: ledger.checkpointer.checkpoints >= 1)
    ledger.checkpointer.due()
    probe = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path / "l.db")],
                           capture_output=True, text=True, check=True)
    assert probe.stdout.strip() == "held"
    ledger.close()
