"""The maintenance pages' data: repair orders, the equipment register, inspections and the
shift handover (gateway/maintenance/, read through gateway/ledger/maintenance.py)."""

from __future__ import annotations

from datetime import datetime

from ...clock import from_us, to_us
from ...ledger import maintenance as book
from ...maintenance.inspections import plan as plan_of
from ...maintenance.orders import OPEN_STATES, STEPS, targets
from ...maintenance.register import KINDS, STATUSES, merged
from ...maintenance.shift import handover


def _local(us, tz, fmt="%Y-%m-%d %H:%M"):
    return from_us(us).astimezone(tz).strftime(fmt) if us else ""


def _ready(db) -> bool:
    return db is not None and book.has_tables(db)


def _categories(cfg) -> dict:
    return {c.id: c for c in cfg.maintenance.categories}


def order_row(cfg, o: dict, now: datetime, tz) -> dict:
    t = targets(cfg, o, to_us(now))
    c = _categories(cfg).get(o["category"])
    return {**o, "category_name": c.name if c else o["category"], "category_name_en": (c.name_en or c.id) if c else "",
            "created": _local(o["created_us"], tz), "on_site": _local(o["on_site_us"], tz),
            "done": _local(o["done_us"], tz), "respond_due": _local(t.respond_due_us, tz),
            "repair_due": _local(t.repair_due_us, tz), "response_min": None if t.response_s is None else
            round(t.response_s / 60, 1), "repair_h": None if t.repair_s is None else round(t.repair_s / 3600, 2),
            "respond_missed": t.respond_missed, "repair_missed": t.repair_missed, "open": o["state"] in OPEN_STATES}


def orders_view(cfg, db, now: datetime, tz, users: list) -> dict:
    rows = book.orders(db, limit=300) if _ready(db) else []
    out = [order_row(cfg, o, now, tz) for o in rows]
    return {"open": [o for o in out if o["open"]], "closed": [o for o in out if not o["open"]][:100],
            "categories": [{"id": c.id, "name": c.name, "name_en": c.name_en} for c in cfg.maintenance.categories],
            "workers": users}


def order_view(cfg, db, order_id: int, now: datetime, tz) -> dict | None:
    o = book.order(db, order_id) if _ready(db) else None
    if o is None:
        return None
    row = order_row(cfg, o, now, tz)
    steps = [{**s, "time": _local(s["ts_us"], tz, "%Y-%m-%d %H:%M:%S")} for s in book.order_steps(db, order_id)]
    alarm = _alarm_history(db, o["alert_id"], tz) if o["alert_id"] else []
    return {"order": row, "steps": steps, "alarm": alarm,
            "next": [name for name, s in STEPS.items() if o["state"] in s.from_states]}


def _alarm_history(db, alert_id: str, tz) -> list[dict]:
    # one alert's changes: the read model's history filtered to it (at most a handful of rows)
    from ...ledger.queries import alert_changes
    return [{**h, "time": _local(h["ts_us"], tz, "%Y-%m-%d %H:%M:%S")} for h in alert_changes(db, alert_id)]


def equipment_view(cfg, db) -> dict:
    stored = book.equipment_rows(db) if _ready(db) else []
    rows = merged(cfg, stored)
    return {"rows": [{**r, "kind_name": KINDS.get(r["kind"], (r["kind"], r["kind"])),
                      "status_name": STATUSES.get(r["status"], (r["status"], r["status"]))} for r in rows],
            "count": len(rows), "site": sum(1 for r in rows if r["site"])}


def inspections_view(cfg, db, now: datetime, tz) -> dict:
    tasks = book.tasks(db) if _ready(db) else []
    now_us = to_us(now)
    out = []
    for t in tasks[:200]:
        p = plan_of(cfg, t["plan"])
        if p is None:
            continue
        state = "done" if t["done_us"] else "overdue" if t["due_us"] <= now_us else \
            "due" if t["starts_us"] <= now_us else "upcoming"
        out.append({**t, "name": p.name, "name_en": p.name_en, "every": p.every, "state": state,
                    "due": _local(t["due_us"] - 1, tz, "%Y-%m-%d"), "done": _local(t["done_us"], tz),
                    "items": len(p.items)})
    order = {"overdue": 0, "due": 1, "upcoming": 2, "done": 3}
    out.sort(key=lambda t: (order[t["state"]], t["due_us"] if t["state"] != "done" else -t["due_us"]))
    return {"tasks": out, "plans": [{"id": p.id, "name": p.name, "name_en": p.name_en, "every": p.every,
                                     "items": len(p.items)} for p in cfg.maintenance.inspections]}


def task_view(cfg, db, task_id: int, now: datetime, tz) -> dict | None:
    t = book.task(db, task_id) if _ready(db) else None
    p = plan_of(cfg, t["plan"]) if t else None
    if t is None or p is None:
        return None
    found = book.results(db, task_id)
    items = []
    for i in p.items:
        r = found.get(i.id)
        items.append({"id": i.id, "name": i.name, "name_en": i.name_en, "ok": None if r is None else bool(r["ok"]),
                      "note": r["note"] if r else "", "photo": r["photo"] if r else None,
                      "by": r["by"] if r else "", "time": _local(r["ts_us"], tz) if r else ""})
    state = "done" if t["done_us"] else "overdue" if t["due_us"] <= to_us(now) else "due"
    return {"task": {**t, "name": p.name, "name_en": p.name_en, "state": state,
                     "due": _local(t["due_us"] - 1, tz, "%Y-%m-%d"), "done": _local(t["done_us"], tz)},
            "items": items}


def shift_view(cfg, db, now: datetime, tz) -> dict:
    rows = book.shifts(db, 30) if _ready(db) else []
    on_duty = next((s for s in rows if s["ended_us"] is None), None)
    waiting = next((s for s in rows if s["ended_us"] is not None and s["confirmed_us"] is None), None)
    for s in rows:
        s["started"], s["ended"] = _local(s["started_us"], tz), _local(s["ended_us"], tz)
        s["confirmed"] = _local(s["confirmed_us"], tz)
    return {"on_duty": on_duty, "waiting": waiting, "shifts": rows}


def handover_view(cfg, db, shift_id: int, now: datetime, tz) -> dict | None:
    s = book.shift(db, shift_id) if _ready(db) else None
    if s is None:
        return None
    h = handover(cfg, db, s, now)
    fmt = "%m-%d %H:%M:%S"
    for key in ("raised", "acked", "open"):
        for a in h[key]:
            a["raised"] = _local(a["raised_us"], tz, fmt)
            a["acked"] = _local(a["acked_us"], tz, fmt)
    for c in h["cards"]:
        c["time"] = _local(c["ts_us"], tz, fmt)
    for d in h["doors"]:
        d["time"] = _local(d["ts_us"], tz, fmt)
    for st in h["steps"]:
        st["time"] = _local(st["ts_us"], tz, fmt)
    for o in h["overrides"]:
        o["time"] = _local(o["created_us"], tz, fmt)
        o["until"] = _local(o["until_us"], tz, fmt)
        o["cancelled"] = _local(o["cancelled_us"], tz, fmt)
    for r in h["rounds"]:
        r["start"] = _local(r["start_us"], tz, "%m-%d %H:%M")
    h["shift"] = {**s, "started": _local(s["started_us"], tz, fmt), "ended": _local(s["ended_us"], tz, fmt),
                  "confirmed": _local(s["confirmed_us"], tz, fmt)}
    h["start"], h["end"] = _local(h["start_us"], tz, fmt), _local(h["end_us"], tz, fmt)
    return h
