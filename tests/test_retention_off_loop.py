"""Retention's batches run in the ledger's commit thread (docs/storage.md, "Stalls"): the event
loop goes on while a batch waits for the disk, and a run stopped in the middle of a batch lets
that batch end before it stops, so the ledger is never left half deleted nor written after it
closed.

A batch is held up by another connection holding SQLite's write lock (the batch waits in
BEGIN IMMEDIATE, as it would behind a slow card); a ticker task shows whether the loop runs."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from datetime import timedelta

import pytest
from test_retention import DAY, NOW, site

from gateway.events import Reading
from gateway.ledger import Ledger
from gateway.ledger.retention import Retention

HOLD_MAX_S = 5.0     # the blocker lets go by itself after this (the old code blocked the loop meanwhile)


async def until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def old_readings(cfg, n: int = 6000) -> Ledger:
    """A ledger whose `n` readings (without energy counters) are all older than raw_days and
    already in their per-meter form: the run's only work is to delete them."""
    ledger = Ledger(cfg.storage_path)
    for i in range(n):
        ledger.add(Reading(f"m{i % 3}", NOW - 100 * DAY + i * timedelta(seconds=10), {"voltage_v": 230.0}))
    ledger.flush()
    ledger.catch_up()
    return ledger


class Blocker:
    """Another connection holding the ledger file's write lock until `release()`, or until
    HOLD_MAX_S passed (from a timer thread, so that a loop stuck in a batch still gets free)."""

    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.db.execute("BEGIN IMMEDIATE")
        self._lock = threading.Lock()
        self._timer = threading.Timer(HOLD_MAX_S, self.release)
        self._timer.start()

    def release(self) -> None:
        with self._lock:
            if self.db.in_transaction:
                self.db.execute("COMMIT")
        self._timer.cancel()

    def close(self) -> None:
        self.release()
        self.db.close()


class Ticker:
    def __init__(self):
        self.ticks = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    async def stop(self):
        self.task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await self.task


def commit_threads(before=()) -> list[threading.Thread]:
    """The ledger's commit threads alive now and not in `before` (another test's ledger may
    still have its own): the first is started by the first job the ledger hands its commit
    thread (here: retention's first batch; `flush()` commits in the caller's thread)."""
    return [t for t in threading.enumerate() if t.name.startswith("ledger-commit") and t not in before]


def counts(path) -> tuple[str, int, int]:
    db = sqlite3.connect(path)
    try:
        return (db.execute("PRAGMA integrity_check").fetchone()[0],
                db.execute("SELECT count(*) FROM reading_log").fetchone()[0],
                db.execute("SELECT count(*) FROM readings_by_meter").fetchone()[0])
    finally:
        db.close()


async def test_the_event_loop_goes_on_while_a_retention_batch_waits_for_the_disk(tmp_path):
    cfg = site(tmp_path)
    ledger = old_readings(cfg)
    ret = Retention(ledger, cfg, batch_rows=500)
    batches: list[int] = []
    ret.after_batch = lambda what, n: batches.append(n)
    blocker = Blocker(cfg.storage_path)
    ticker = Ticker()
    others = commit_threads()
    try:
        run = asyncio.create_task(ret.run_once(NOW))
        # the first batch waits for the write lock; the loop must go on meanwhile
        await until(lambda: commit_threads(others) and ticker.ticks >= 50)
        assert batches == [] and not run.done() and ledger.count_readings() == 6000
        blocker.release()
        result = await run
    finally:
        await ticker.stop()
        blocker.close()
    assert result.batches == len(batches) == 12 and result.removed["readings"] == 6000
    assert max(ret.pauses) == result.longest_s > 0
    assert ledger.count_readings() == 0
    ledger.close()
    assert counts(cfg.storage_path) == ("ok", 0, 0)


async def test_a_run_cancelled_during_a_batch_lets_it_end_and_nothing_writes_after_close(tmp_path):
    cfg = site(tmp_path)
    ledger = old_readings(cfg)
    ret = Retention(ledger, cfg, batch_rows=500)
    batches: list[int] = []
    ret.after_batch = lambda what, n: batches.append(n)
    blocker = Blocker(cfg.storage_path)
    ticker = Ticker()
    others = commit_threads()
    try:
        run = asyncio.create_task(ret.run_once(NOW))
        await until(lambda: commit_threads(others) and ticker.ticks >= 20)
        assert batches == [] and not run.done()
        run.cancel()                   # the gateway stops while the first batch waits for the disk
        seen = ticker.ticks
        await until(lambda: ticker.ticks >= seen + 20)
        assert not run.done()          # it waits for the batch, and the loop goes on meanwhile
        blocker.release()
        with pytest.raises(asyncio.CancelledError):
            await run
    finally:
        await ticker.stop()
        blocker.close()
    assert batches == []               # stopped: no hook, no next batch
    ledger.close()
    assert commit_threads(others) == []
    # the batch in flight ended whole: exactly its 500 readings gone, with their per-meter entries
    assert counts(cfg.storage_path) == ("ok", 5500, 5500)
    with pytest.raises(sqlite3.ProgrammingError):
        await ledger.write_off_loop(lambda db: db.execute("DELETE FROM reading_log"))
    assert counts(cfg.storage_path) == ("ok", 5500, 5500)
