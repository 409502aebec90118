"""The ledger's part of the estate's own work (gateway/maintenance/): the equipment register,
repair orders and their steps, the shift log and inspection tasks with their results.

The only module that knows these tables. Writes come from people (the console, the CLI), not
from the hub: each is one short transaction on a connection of its own (`writer`), which WAL lets
in beside the gateway's batched writer; a transition checks the state it starts from inside its
transaction, so two people pressing the same button cannot both move an order.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

# Appended to gateway/ledger/schema.py's MIGRATIONS (one version); never edited once released.
MIGRATION = """
    -- The estate's own work (gateway/maintenance/): the equipment register (设备台账), repair
    -- orders (报修 -> 派单 -> 维修 -> 回访) with every step's who and when, the guards' shifts
    -- and handovers, and inspection tasks with a result per checklist item.
    CREATE TABLE equipment (
        id             TEXT    NOT NULL,        -- a device id of the site file, or the register's own
        kind           TEXT    NOT NULL,        -- a lighting circuit may share its meter's id: (id, kind) is one
        name           TEXT    NOT NULL,
        building       TEXT    NOT NULL DEFAULT '',
        unit           TEXT    NOT NULL DEFAULT '',
        location       TEXT    NOT NULL DEFAULT '',
        model          TEXT    NOT NULL DEFAULT '',
        serial         TEXT    NOT NULL DEFAULT '',
        installed      TEXT,                    -- ISO dates
        warranty_until TEXT,
        status         TEXT    NOT NULL DEFAULT 'in_service',   -- in_service | retired
        notes          TEXT    NOT NULL DEFAULT '',
        updated_us     INTEGER NOT NULL,
        updated_by     TEXT    NOT NULL,
        PRIMARY KEY (id, kind)
    );
    CREATE TABLE repair_orders (
        id              INTEGER PRIMARY KEY,
        category        TEXT    NOT NULL,
        origin          TEXT    NOT NULL,       -- alarm | resident | inspection | staff
        alert_id        TEXT,
        inspection_task INTEGER,
        inspection_item TEXT,
        device          TEXT    NOT NULL DEFAULT '',
        household       TEXT    NOT NULL DEFAULT '',
        phone           TEXT    NOT NULL DEFAULT '',
        what            TEXT    NOT NULL,
        location        TEXT    NOT NULL DEFAULT '',
        state           TEXT    NOT NULL,       -- new | assigned | on_site | done | followed_up | reopened
        assignee        TEXT    NOT NULL DEFAULT '',
        created_us      INTEGER NOT NULL,
        created_by      TEXT    NOT NULL,
        clock_us        INTEGER NOT NULL,       -- the targets count from here: the report, or the reopening
        on_site_us      INTEGER,                -- first arrival after clock_us
        done_us         INTEGER,
        work_done       TEXT    NOT NULL DEFAULT '',
        parts           TEXT    NOT NULL DEFAULT '',
        satisfaction    INTEGER,                -- 1..5, the resident's word at the follow-up
        followed_by     TEXT    NOT NULL DEFAULT '',
        reopened        INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX repair_orders_alert ON repair_orders (alert_id) WHERE alert_id IS NOT NULL;
    CREATE INDEX repair_orders_created ON repair_orders (created_us);
    CREATE INDEX repair_orders_device ON repair_orders (device, created_us);
    CREATE INDEX repair_orders_open ON repair_orders (state);
    CREATE TABLE repair_steps (
        id       INTEGER PRIMARY KEY,
        order_id INTEGER NOT NULL REFERENCES repair_orders (id),
        step     TEXT    NOT NULL,              -- create | assign | arrive | finish | follow_up | reopen
        state    TEXT    NOT NULL,              -- the order's state after it
        ts_us    INTEGER NOT NULL,
        by       TEXT    NOT NULL,
        role     TEXT    NOT NULL,
        note     TEXT    NOT NULL DEFAULT ''
    );
    CREATE INDEX repair_steps_order ON repair_steps (order_id, id);
    CREATE INDEX repair_steps_ts ON repair_steps (ts_us);
    CREATE TABLE shifts (
        id           INTEGER PRIMARY KEY,
        guard        TEXT    NOT NULL,
        started_us   INTEGER NOT NULL,
        ended_us     INTEGER,                   -- handed over (the outgoing guard's notes are final)
        notes        TEXT    NOT NULL DEFAULT '',
        confirmed_by TEXT,                      -- the incoming guard
        confirmed_us INTEGER
    );
    CREATE INDEX shifts_started ON shifts (started_us);
    CREATE TABLE inspection_tasks (
        id         INTEGER PRIMARY KEY,
        plan       TEXT    NOT NULL,
        period     TEXT    NOT NULL,            -- 2026-11, 2026-W47, 2026-Q4, 2026-H2, 2026
        starts_us  INTEGER NOT NULL,
        due_us     INTEGER NOT NULL,            -- the period's end
        done_us    INTEGER,
        done_by    TEXT,
        UNIQUE (plan, period)
    );
    CREATE INDEX inspection_tasks_due ON inspection_tasks (due_us);
    CREATE TABLE inspection_results (
        task   INTEGER NOT NULL REFERENCES inspection_tasks (id),
        item   TEXT    NOT NULL,
        ok     INTEGER NOT NULL,
        note   TEXT    NOT NULL DEFAULT '',
        photo  TEXT,                            -- file name under <ledger>.photos/
        ts_us  INTEGER NOT NULL,
        by     TEXT    NOT NULL,
        PRIMARY KEY (task, item)
    );
    -- an order shows its alarm's history; a handover and the monthly report look alarms up by time
    CREATE INDEX alert_history_alert ON alert_history (alert_id);
    CREATE INDEX alerts_raised ON alerts (raised_us);
    CREATE INDEX alerts_acked ON alerts (acked_us) WHERE acked_us IS NOT NULL;
"""


class Conflict(Exception):
    """The row is not in the state the change starts from (someone else was first), or is gone."""


@contextmanager
def writer(path: Path) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: the state checks inside it hold until COMMIT)."""
    db = sqlite3.connect(path, timeout=10, isolation_level=None)
    try:
        db.execute("PRAGMA busy_timeout=10000")
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
    finally:
        db.close()


def has_tables(db: sqlite3.Connection) -> bool:
    """An older ledger (before this migration) opened read-only has none of them."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'repair_orders'").fetchone() \
        is not None


# ---- equipment --------------------------------------------------------------------------------

EQUIPMENT_COLS = ("id", "kind", "name", "building", "unit", "location", "model", "serial", "installed",
                  "warranty_until", "status", "notes", "updated_us", "updated_by")


def equipment_rows(db: sqlite3.Connection) -> list[dict]:
    return [dict(zip(EQUIPMENT_COLS, r)) for r in
            db.execute(f"SELECT {', '.join(EQUIPMENT_COLS)} FROM equipment ORDER BY id, kind")]


def save_equipment(path: Path, rows: Iterable[dict], at_us: int, by: str) -> tuple[int, int]:
    """Every row in one transaction (a register is imported whole or not at all): (added, changed)."""
    cols = EQUIPMENT_COLS[:-2]
    added = changed = 0
    with writer(path) as db:
        known = set(db.execute("SELECT id, kind FROM equipment"))
        for row in rows:
            values = [row.get(c) for c in cols]
            db.execute(f"INSERT INTO equipment ({', '.join(EQUIPMENT_COLS)}) VALUES ({','.join('?' * len(EQUIPMENT_COLS))}) "
                       "ON CONFLICT (id, kind) DO UPDATE SET "
                       + ", ".join(f"{c} = excluded.{c}" for c in EQUIPMENT_COLS[2:]), (*values, at_us, by))
            if (row["id"], row["kind"]) in known:
                changed += 1
            else:
                added += 1
    return added, changed


# ---- repair orders ----------------------------------------------------------------------------

ORDER_COLS = ("id", "category", "origin", "alert_id", "inspection_task", "inspection_item", "device", "household",
              "phone", "what", "location", "state", "assignee", "created_us", "created_by", "clock_us", "on_site_us",
              "done_us", "work_done", "parts", "satisfaction", "followed_by", "reopened")
STEP_COLS = ("id", "order_id", "step", "state", "ts_us", "by", "role", "note")


def create_order(path: Path, order: dict, at_us: int, by: str, role: str) -> int:
    fields = ("category", "origin", "alert_id", "inspection_task", "inspection_item", "device", "household", "phone",
              "what", "location")
    with writer(path) as db:
        cur = db.execute(f"INSERT INTO repair_orders ({', '.join(fields)}, state, created_us, created_by, clock_us) "
                         f"VALUES ({','.join('?' * len(fields))}, 'new', ?, ?, ?)",
                         (*(order.get(f) for f in fields), at_us, by, at_us))
        oid = cur.lastrowid
        db.execute("INSERT INTO repair_steps (order_id, step, state, ts_us, by, role, note) VALUES (?,?,?,?,?,?,?)",
                   (oid, "create", "new", at_us, by, role, order.get("note", "")))
    return oid


def move_order(path: Path, order_id: int, step: str, from_states: Iterable[str], to_state: str, at_us: int, by: str,
               role: str, note: str = "", **changes) -> dict:
    """Move an order from one of `from_states` to `to_state`, setting `changes` (columns of
    repair_orders), and record the step; Conflict if it is in another state (or gone)."""
    bad = set(changes) - set(ORDER_COLS)
    if bad:
        raise ValueError(f"not a column of repair_orders: {sorted(bad)}")
    from_states = tuple(from_states)
    with writer(path) as db:
        row = db.execute("SELECT state FROM repair_orders WHERE id = ?", (order_id,)).fetchone()
        if row is None:
            raise Conflict("no such order")
        if row[0] not in from_states:
            raise Conflict(f"the order is {row[0]}")
        sets = ", ".join([f"{c} = ?" for c in changes] + ["state = ?"])
        db.execute(f"UPDATE repair_orders SET {sets} WHERE id = ?", (*changes.values(), to_state, order_id))
        db.execute("INSERT INTO repair_steps (order_id, step, state, ts_us, by, role, note) VALUES (?,?,?,?,?,?,?)",
                   (order_id, step, to_state, at_us, by, role, note))
        return dict(zip(ORDER_COLS, db.execute(f"SELECT {', '.join(ORDER_COLS)} FROM repair_orders WHERE id = ?",
                                               (order_id,)).fetchone()))


def order(db: sqlite3.Connection, order_id: int) -> dict | None:
    row = db.execute(f"SELECT {', '.join(ORDER_COLS)} FROM repair_orders WHERE id = ?", (order_id,)).fetchone()
    return dict(zip(ORDER_COLS, row)) if row else None


def order_steps(db: sqlite3.Connection, order_id: int) -> list[dict]:
    return [dict(zip(STEP_COLS, r)) for r in db.execute(
        f"SELECT {', '.join(STEP_COLS)} FROM repair_steps WHERE order_id = ? ORDER BY id", (order_id,))]


def orders(db: sqlite3.Connection, states: Iterable[str] | None = None, created_from_us: int | None = None,
           created_until_us: int | None = None, limit: int | None = None) -> list[dict]:
    """Orders newest first, optionally in these states and created in [from, until)."""
    sql = f"SELECT {', '.join(ORDER_COLS)} FROM repair_orders"
    where, args = [], []
    if states is not None:
        states = tuple(states)
        where.append(f"state IN ({','.join('?' * len(states))})")
        args += states
    if created_from_us is not None:
        where.append("created_us >= ?")
        args.append(created_from_us)
    if created_until_us is not None:
        where.append("created_us < ?")
        args.append(created_until_us)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [dict(zip(ORDER_COLS, r)) for r in db.execute(sql, args)]


def orders_for_alerts(db: sqlite3.Connection, alert_ids: Iterable[str]) -> dict[str, list[tuple[int, str]]]:
    """alert id -> [(order id, state)] of the orders made from it."""
    ids = list(dict.fromkeys(alert_ids))
    out: dict[str, list[tuple[int, str]]] = {}
    for k in range(0, len(ids), 500):
        chunk = ids[k:k + 500]
        for aid, oid, state in db.execute(f"SELECT alert_id, id, state FROM repair_orders WHERE alert_id IN "
                                          f"({','.join('?' * len(chunk))}) ORDER BY id", chunk):
            out.setdefault(aid, []).append((oid, state))
    return out


def steps_between(db: sqlite3.Connection, start_us: int, end_us: int) -> list[dict]:
    """Every order step in [start, end), oldest first, with the order's category and what."""
    cols = STEP_COLS + ("category", "what", "device")
    return [dict(zip(cols, r)) for r in db.execute(
        "SELECT s.id, s.order_id, s.step, s.state, s.ts_us, s.by, s.role, s.note, o.category, o.what, o.device "
        "FROM repair_steps s JOIN repair_orders o ON o.id = s.order_id WHERE s.ts_us >= ? AND s.ts_us < ? "
        "ORDER BY s.ts_us, s.id", (start_us, end_us))]


def device_orders_since(db: sqlite3.Connection, since_us: int, until_us: int) -> list[tuple[str, int, int]]:
    """(device, order id, created_us) of the orders naming a device created in [since, until)."""
    return db.execute("SELECT device, id, created_us FROM repair_orders WHERE device != '' AND created_us >= ? "
                      "AND created_us < ? ORDER BY device, created_us", (since_us, until_us)).fetchall()


# ---- shifts -----------------------------------------------------------------------------------

SHIFT_COLS = ("id", "guard", "started_us", "ended_us", "notes", "confirmed_by", "confirmed_us")


def shifts(db: sqlite3.Connection, limit: int = 20) -> list[dict]:
    return [dict(zip(SHIFT_COLS, r)) for r in db.execute(
        f"SELECT {', '.join(SHIFT_COLS)} FROM shifts ORDER BY id DESC LIMIT ?", (limit,))]


def shift(db: sqlite3.Connection, shift_id: int) -> dict | None:
    row = db.execute(f"SELECT {', '.join(SHIFT_COLS)} FROM shifts WHERE id = ?", (shift_id,)).fetchone()
    return dict(zip(SHIFT_COLS, row)) if row else None


def start_shift(path: Path, guard: str, at_us: int) -> int:
    """A guard goes on duty. The shift on duty (if any) is not ended here: its guard hands it
    over (`hand_over`), and the incoming guard confirms (`confirm_handover`)."""
    with writer(path) as db:
        if db.execute("SELECT 1 FROM shifts WHERE ended_us IS NULL").fetchone():
            raise Conflict("a shift is on duty: it is handed over first")
        return db.execute("INSERT INTO shifts (guard, started_us) VALUES (?, ?)", (guard, at_us)).lastrowid


def hand_over(path: Path, shift_id: int, guard: str, notes: str, at_us: int) -> None:
    with writer(path) as db:
        row = db.execute("SELECT guard, ended_us FROM shifts WHERE id = ?", (shift_id,)).fetchone()
        if row is None or row[1] is not None:
            raise Conflict("the shift is not on duty")
        if guard is not None and row[0] != guard:
            raise Conflict(f"the shift is {row[0]}'s")
        db.execute("UPDATE shifts SET ended_us = ?, notes = ? WHERE id = ?", (at_us, notes, shift_id))


def confirm_handover(path: Path, shift_id: int, guard: str, at_us: int) -> int:
    """The incoming guard confirms the handed-over shift and goes on duty: the new shift's id."""
    with writer(path) as db:
        row = db.execute("SELECT ended_us, confirmed_us, guard FROM shifts WHERE id = ?", (shift_id,)).fetchone()
        if row is None or row[0] is None or row[1] is not None:
            raise Conflict("no handover waiting")
        if db.execute("SELECT 1 FROM shifts WHERE ended_us IS NULL").fetchone():
            raise Conflict("a shift is on duty")
        db.execute("UPDATE shifts SET confirmed_by = ?, confirmed_us = ? WHERE id = ?", (guard, at_us, shift_id))
        # the new shift starts where the old one was handed over: no event falls between the two
        return db.execute("INSERT INTO shifts (guard, started_us) VALUES (?, ?)", (guard, row[0])).lastrowid


def handover_window(db: sqlite3.Connection, start_us: int, end_us: int) -> dict:
    """What happened in [start, end): the raw rows a handover page and a report are made of."""
    alert_cols = ("id", "rule", "kind", "source", "severity", "state", "message", "message_en", "raised_us",
                  "acked_by", "acked_us", "cleared_us")
    raised = [dict(zip(alert_cols, r)) for r in db.execute(
        f"SELECT {', '.join(alert_cols)} FROM alerts WHERE raised_us >= ? AND raised_us < ? ORDER BY raised_us, id",
        (start_us, end_us))]
    acked = [dict(zip(alert_cols, r)) for r in db.execute(
        f"SELECT {', '.join(alert_cols)} FROM alerts WHERE acked_us >= ? AND acked_us < ? ORDER BY acked_us, id",
        (start_us, end_us))]
    # open at the end: raised before it, and neither cleared before it (nor acknowledged, for "unhandled")
    still_open = [dict(zip(alert_cols, r)) for r in db.execute(
        f"SELECT {', '.join(alert_cols)} FROM alerts WHERE raised_us < ? AND (cleared_us IS NULL OR cleared_us >= ?) "
        "ORDER BY raised_us, id", (end_us, end_us))]
    swipe_cols = ("ts_us", "reader", "door", "direction", "card_tail", "category", "holder", "household")
    cards = [dict(zip(swipe_cols, r)) for r in db.execute(
        f"SELECT {', '.join(swipe_cols)} FROM swipes WHERE ts_us >= ? AND ts_us < ? AND category IN "
        "('unknown', 'revoked', 'expired') ORDER BY ts_us, id", (start_us, end_us))]
    doors = db.execute("SELECT ts_us, door, state FROM door_events WHERE ts_us >= ? AND ts_us < ? AND state IN "
                       "('forced_open', 'held_open') ORDER BY ts_us, id", (start_us, end_us)).fetchall()
    override_cols = ("circuit", "state", "until_us", "by", "role", "reason", "created_us", "cancelled_us",
                     "cancelled_by")
    overrides = [dict(zip(override_cols, r)) for r in db.execute(
        f"SELECT {', '.join(override_cols)} FROM lighting_overrides WHERE (created_us >= ? AND created_us < ?) "
        "OR (cancelled_us >= ? AND cancelled_us < ?) ORDER BY created_us, id", (start_us, end_us, start_us, end_us))]
    return {"raised": raised, "acked": acked, "open": still_open, "cards": cards,
            "doors": [{"ts_us": t, "door": d, "state": s} for t, d, s in doors],
            "steps": steps_between(db, start_us, end_us), "overrides": overrides}


# ---- inspections ------------------------------------------------------------------------------

TASK_COLS = ("id", "plan", "period", "starts_us", "due_us", "done_us", "done_by")
RESULT_COLS = ("task", "item", "ok", "note", "photo", "ts_us", "by")


def ensure_tasks(path: Path, wanted: Iterable[tuple[str, str, int, int]]) -> int:
    """Create the tasks (plan, period, starts_us, due_us) that are not there yet: how many were new."""
    with writer(path) as db:
        n = 0
        for plan, period, starts, due in wanted:
            n += db.execute("INSERT OR IGNORE INTO inspection_tasks (plan, period, starts_us, due_us) VALUES (?,?,?,?)",
                            (plan, period, starts, due)).rowcount
        return n


def task_plans(db: sqlite3.Connection) -> dict[str, int]:
    """plan -> the start of its first task (the plans that have had one)."""
    return dict(db.execute("SELECT plan, min(starts_us) FROM inspection_tasks GROUP BY plan"))


def tasks(db: sqlite3.Connection, since_us: int | None = None, until_us: int | None = None,
          open_only: bool = False) -> list[dict]:
    """Tasks whose period overlaps [since, until) (all without bounds), newest due first."""
    sql = f"SELECT {', '.join(TASK_COLS)} FROM inspection_tasks WHERE 1"
    args: list = []
    if since_us is not None:
        sql += " AND due_us > ?"
        args.append(since_us)
    if until_us is not None:
        sql += " AND starts_us < ?"
        args.append(until_us)
    if open_only:
        sql += " AND done_us IS NULL"
    return [dict(zip(TASK_COLS, r)) for r in db.execute(sql + " ORDER BY due_us DESC, plan", args)]


def task(db: sqlite3.Connection, task_id: int) -> dict | None:
    row = db.execute(f"SELECT {', '.join(TASK_COLS)} FROM inspection_tasks WHERE id = ?", (task_id,)).fetchone()
    return dict(zip(TASK_COLS, row)) if row else None


def task_by_period(db: sqlite3.Connection, plan: str, period: str) -> dict | None:
    row = db.execute(f"SELECT {', '.join(TASK_COLS)} FROM inspection_tasks WHERE plan = ? AND period = ?",
                     (plan, period)).fetchone()
    return dict(zip(TASK_COLS, row)) if row else None


def results(db: sqlite3.Connection, task_id: int) -> dict[str, dict]:
    return {r[1]: dict(zip(RESULT_COLS, r)) for r in db.execute(
        f"SELECT {', '.join(RESULT_COLS)} FROM inspection_results WHERE task = ?", (task_id,))}


def record_result(path: Path, task_id: int, item: str, ok: bool, note: str, photo: str | None, at_us: int, by: str,
                  all_items: Iterable[str]) -> bool:
    """One item's result (a photo kept unless a new one is given); the task is done once every item
    of its checklist has one. True when this made it done."""
    with writer(path) as db:
        row = db.execute("SELECT done_us FROM inspection_tasks WHERE id = ?", (task_id,)).fetchone()
        if row is None:
            raise Conflict("no such task")
        db.execute("INSERT INTO inspection_results (task, item, ok, note, photo, ts_us, by) VALUES (?,?,?,?,?,?,?) "
                   "ON CONFLICT (task, item) DO UPDATE SET ok = excluded.ok, note = excluded.note, "
                   "photo = coalesce(excluded.photo, inspection_results.photo), ts_us = excluded.ts_us, "
                   "by = excluded.by", (task_id, item, int(ok), note, photo, at_us, by))
        if row[0] is not None:
            return False
        have = {r[0] for r in db.execute("SELECT item FROM inspection_results WHERE task = ?", (task_id,))}
        if set(all_items) <= have:
            db.execute("UPDATE inspection_tasks SET done_us = ?, done_by = ? WHERE id = ?", (at_us, by, task_id))
            return True
        return False
