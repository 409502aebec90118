"""Ledger.run's commits in the commit thread (docs/storage.md, "Stalls"): a batch is taken on
the event loop and written off it, so rows arrive while a commit is in flight, a commit can fail
after more rows came, and the gateway can stop in the middle of one. Each batch must end up
committed exactly once, in the order its rows were added.

A commit is held in flight by another connection holding SQLite's write lock (the commit thread
waits in BEGIN IMMEDIATE), and made to fail by a trigger on the ledger file that refuses every
new reading, as a full disk would."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from gateway.events import DeviceStatus, Reading
from gateway.hub import Hub
from gateway.ledger import Ledger

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=timezone.utc)
REFUSE = ("CREATE TRIGGER refuse BEFORE INSERT ON reading_log "
          "BEGIN SELECT RAISE(ABORT, 'database or disk is full (injected)'); END")


async def until(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def readings(first: int, n: int, meter: str = "m1") -> list[Reading]:
    return [Reading(meter, T0 + timedelta(seconds=i), {"voltage_v": float(i)}) for i in range(first, first + n)]


def other_connection(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA busy_timeout=5000")
    return db


def stored(path) -> list[tuple[str, float]]:
    """Every reading in the ledger file as (meter, voltage) in the order they were committed."""
    ledger = Ledger(path)
    try:
        return [(r.meter, r.values["voltage_v"]) for r in sorted(ledger.readings(), key=lambda r: r.id)]
    finally:
        ledger.close()


async def start(path):
    ledger = Ledger(path, commit_interval_s=0.02)
    task = asyncio.create_task(ledger.run(Hub()))
    await asyncio.sleep(0)
    return ledger, task


async def in_flight(ledger, first: list[Reading], commits: int) -> None:
    """Add `first` and wait until the commit thread has taken it (nothing pending, not committed)."""
    for r in first:
        ledger.add(r)
    await until(lambda: ledger.pending == 0)
    assert ledger.commits == commits


async def test_rows_added_during_a_commit_go_in_the_next_one_none_lost_or_doubled(tmp_path):
    path = tmp_path / "l.db"
    ledger, task = await start(path)
    c0 = ledger.commits
    blocker = other_connection(path)
    blocker.execute("BEGIN IMMEDIATE")
    first, then = readings(0, 50), readings(50, 30, meter="m2")    # m2: a meter new during the commit
    await in_flight(ledger, first, c0)
    for r in then:
        ledger.add(r)
    assert ledger.pending == len(then)
    blocker.execute("COMMIT")
    await until(lambda: ledger.count_readings() == 80 and ledger.pending == 0)
    assert ledger.commits == c0 + 2 and ledger.readings_written == 80
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ledger.close()
    blocker.close()
    assert stored(path) == [(r.meter, r.values["voltage_v"]) for r in first + then]


async def test_a_failed_commit_puts_its_batch_back_in_front_of_what_came_meanwhile(tmp_path):
    path = tmp_path / "l.db"
    ledger, task = await start(path)
    c0 = ledger.commits
    blocker = other_connection(path)
    blocker.execute(REFUSE)
    blocker.execute("BEGIN IMMEDIATE")
    first, then = readings(0, 40), readings(40, 40)
    ledger.add(DeviceStatus("m1", "meter", False, T0, "no answer"))
    await in_flight(ledger, first, c0)
    for r in then:
        ledger.add(r)
    ledger.add(DeviceStatus("m1", "meter", True, T0 + timedelta(seconds=1), "answering"))
    blocker.execute("COMMIT")              # the commit goes on and is refused
    await until(lambda: ledger.commit_failures >= 2)     # and so is the retry with both batches
    assert ledger.count_readings() == 0 and ledger.holding
    blocker.execute("DROP TRIGGER refuse")
    await until(lambda: ledger.count_readings() == 80 and ledger.pending == 0)
    assert ledger.commit_failures == 0 and ledger.readings_written == 80
    assert ledger.latest_status() == {"m1": True}       # the statuses kept their order too
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    ledger.close()
    blocker.close()
    assert stored(path) == [(r.meter, r.values["voltage_v"]) for r in first + then]


async def test_stopping_during_a_commit_waits_for_it_and_loses_nothing(tmp_path):
    path = tmp_path / "l.db"
    ledger, task = await start(path)
    c0 = ledger.commits
    blocker = other_connection(path)
    blocker.execute("BEGIN IMMEDIATE")
    first, then = readings(0, 60), readings(60, 20)
    await in_flight(ledger, first, c0)
    for r in then:
        ledger.add(r)
    task.cancel()                          # the gateway stops while the commit waits for the disk
    blocker.execute("COMMIT")
    await asyncio.gather(task, return_exceptions=True)
    assert ledger.pending == 0 and ledger.readings_written == 80     # both batches, each once
    ledger.close()
    blocker.close()
    assert stored(path) == [(r.meter, r.values["voltage_v"]) for r in first + then]


async def test_stopping_during_a_commit_that_fails_keeps_its_batch_for_the_last_flush(tmp_path):
    path = tmp_path / "l.db"
    ledger, task = await start(path)
    c0 = ledger.commits
    blocker = other_connection(path)
    blocker.execute(REFUSE)
    blocker.execute("BEGIN IMMEDIATE")
    first, then = readings(0, 60), readings(60, 20)
    await in_flight(ledger, first, c0)
    for r in then:
        ledger.add(r)
    task.cancel()
    blocker.execute("COMMIT")              # the commit in flight is refused after the stop
    await asyncio.gather(task, return_exceptions=True)
    assert ledger.pending == 80 and ledger.holding and ledger.count_readings() == 0
    blocker.execute("DROP TRIGGER refuse")
    ledger.close()                         # its last flush writes both batches, in order
    blocker.close()
    assert stored(path) == [(r.meter, r.values["voltage_v"]) for r in first + then]
