"""The read model of the monthly service and safety report (gateway/maintenance/service_report.py):
a month's alarms, repair orders, inspection tasks, card refusals and door alarms as typed rows,
and the report's InfluxDB points queued in the outbox beside the allocation's.

Every query takes a half-open window [start, end) of µs and reads by an indexed time column.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from .maintenance import has_tables, writer
from .schema import INSERT_OUTBOX, last_reading


class AlarmTimes(NamedTuple):
    rule: str
    kind: str
    source: str
    severity: str
    raised_us: int
    acked_us: int | None
    cleared_us: int | None


class OrderTimes(NamedTuple):
    id: int
    category: str
    origin: str
    device: str
    state: str
    created_us: int
    clock_us: int               # the targets count from here (the report, or the reopening)
    on_site_us: int | None
    done_us: int | None
    satisfaction: int | None
    reopened: int


class TaskDue(NamedTuple):
    id: int
    plan: str
    period: str
    starts_us: int
    due_us: int
    done_us: int | None
    failed: int                 # checklist items recorded not ok


class CardRefusal(NamedTuple):
    ts_us: int
    door: str
    reader: str
    category: str               # unknown | revoked | expired


class DoorAlarm(NamedTuple):
    ts_us: int
    door: str
    state: str                  # forced_open | held_open


REFUSED = ("unknown", "revoked", "expired")
DOOR_ALARMS = ("forced_open", "held_open")
# the conditions of the partial indexes swipes_refused and door_events_alarms (schema), written
# out: SQLite uses a partial index only when the query names its condition literally, not bound
REFUSED_SQL = "category IN (" + ", ".join(f"'{c}'" for c in REFUSED) + ")"
DOOR_ALARMS_SQL = "state IN (" + ", ".join(f"'{s}'" for s in DOOR_ALARMS) + ")"


def alarms_raised(db: sqlite3.Connection, start_us: int, end_us: int) -> list[AlarmTimes]:
    """The alarms raised in [start, end), with when they were acknowledged and cleared (whenever
    that was: an alarm of the 31st acknowledged on the 1st counts in the month it was raised)."""
    return [AlarmTimes(*r) for r in db.execute(
        "SELECT rule, kind, source, severity, raised_us, acked_us, cleared_us FROM alerts "
        "WHERE raised_us >= ? AND raised_us < ? ORDER BY raised_us, id", (start_us, end_us))]


def orders_created(db: sqlite3.Connection, start_us: int, end_us: int) -> list[OrderTimes]:
    if not has_tables(db):
        return []
    return [OrderTimes(*r) for r in db.execute(
        "SELECT id, category, origin, device, state, created_us, clock_us, on_site_us, done_us, satisfaction, "
        "reopened FROM repair_orders WHERE created_us >= ? AND created_us < ? ORDER BY id", (start_us, end_us))]


def device_orders(db: sqlite3.Connection, start_us: int, end_us: int) -> list[tuple[str, int, int]]:
    """(device, order id, created_us) of the orders naming a device created in [start, end)."""
    if not has_tables(db):
        return []
    return db.execute("SELECT device, id, created_us FROM repair_orders WHERE device != '' AND created_us >= ? "
                      "AND created_us < ? ORDER BY device, created_us, id", (start_us, end_us)).fetchall()


def tasks_due(db: sqlite3.Connection, start_us: int, end_us: int) -> list[TaskDue]:
    """Inspection tasks due in (start, end]: a month's task is due at the month's end, so it
    belongs to that month, not to the next."""
    if not has_tables(db):
        return []
    return [TaskDue(*r) for r in db.execute(
        "SELECT t.id, t.plan, t.period, t.starts_us, t.due_us, t.done_us, "
        "(SELECT count(*) FROM inspection_results r WHERE r.task = t.id AND r.ok = 0) "
        "FROM inspection_tasks t WHERE t.due_us > ? AND t.due_us <= ? ORDER BY t.plan, t.due_us",
        (start_us, end_us))]


def card_refusals(db: sqlite3.Connection, start_us: int, end_us: int) -> list[CardRefusal]:
    return [CardRefusal(*r) for r in db.execute(
        f"SELECT ts_us, door, reader, category FROM swipes WHERE ts_us >= ? AND ts_us < ? AND {REFUSED_SQL} "
        "ORDER BY ts_us, id", (start_us, end_us))]


def door_alarms(db: sqlite3.Connection, start_us: int, end_us: int) -> list[DoorAlarm]:
    return [DoorAlarm(*r) for r in db.execute(
        f"SELECT ts_us, door, state FROM door_events WHERE ts_us >= ? AND ts_us < ? AND {DOOR_ALARMS_SQL} "
        "ORDER BY ts_us, id", (start_us, end_us))]


def first_checkin_us(db: sqlite3.Connection) -> int | None:
    """When the oldest patrol read the ledger holds was recorded (None: none yet)."""
    return db.execute("SELECT min(ts_us) FROM patrol_checkins").fetchone()[0]


def queue_points(path: Path, rows: Iterable[tuple]) -> int:
    """Outbox rows (measurement, priority, ts_ms, line, essential) queued for InfluxDB in one
    transaction, as `gateway allocate` queues a month's: the gateway's sender reads the outbox
    table, so points queued by the CLI beside a running gateway go out with its next batch."""
    rows = list(rows)
    if not rows:
        return 0
    with writer(path) as db:
        last = last_reading(db)
        db.executemany(INSERT_OUTBOX, [(*r, last) for r in rows])
    return len(rows)
