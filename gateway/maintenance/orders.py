"""Repair orders (报修 → 派单 → 维修 → 回访): where they come from, the states they go through,
who may move them, and the service plan's targets.

    new → assigned (to whom) → on_site → done (what was done, parts) → followed_up (satisfaction)
                ↑                                                  ↘ reopened → assigned ...

Guards (the guard room) create and assign orders and record the resident's follow-up; the
electrician arrives and finishes; an admin may do everything. Every step is kept with who and
when (gateway/ledger/maintenance.py); the targets count from the report (or the reopening).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..clock import to_us
from ..config import RepairCategory, SiteConfig
from ..ledger import maintenance as book

STATES = ("new", "assigned", "on_site", "done", "followed_up", "reopened")
OPEN_STATES = ("new", "assigned", "on_site", "reopened")
ORIGINS = ("alarm", "resident", "inspection", "staff")


@dataclass(frozen=True)
class Step:
    name: str
    from_states: tuple[str, ...]
    to_state: str
    permission: str


STEPS = {s.name: s for s in (
    Step("assign", ("new", "assigned", "reopened"), "assigned", "order_assign"),
    Step("arrive", ("assigned",), "on_site", "order_work"),
    Step("finish", ("on_site",), "done", "order_work"),
    Step("follow_up", ("done",), "followed_up", "order_followup"),
    Step("reopen", ("done",), "reopened", "order_followup"),
)}

# Alarms of these rule kinds are an electrician's job; door and access alarms the gate's.
ELECTRICAL_KINDS = {"threshold", "offline", "counter", "daylight", "consumption", "lighting_stuck", "lighting_dark",
                    "lighting_readback"}
ACCESS_KINDS = {"access", "door"}
DEVICE_CATEGORY = {"meter": "electrical", "bus": "electrical", "serial_server": "electrical",
                   "lighting_circuit": "electrical", "lighting_output": "electrical", "street_light": "electrical",
                   "distribution_box": "electrical", "card_reader": "access", "door": "access", "pump": "water",
                   "lift": "lift", "fire_equipment": "fire", "fitness_equipment": "facility"}


class OrderError(Exception):
    """A change that cannot be made: `code` is the console's message key, `detail` the English line."""

    def __init__(self, code: str, detail: str, status: int = 400):
        super().__init__(detail)
        self.code, self.detail, self.status = code, detail, status


def category(cfg: SiteConfig, cid: str) -> RepairCategory:
    for c in cfg.maintenance.categories:
        if c.id == cid:
            return c
    raise OrderError("order_bad_category", f"no repair category {cid!r}")


def category_for_alert(cfg: SiteConfig, kind: str) -> str:
    wanted = "electrical" if kind in ELECTRICAL_KINDS else "access" if kind in ACCESS_KINDS else "facility"
    ids = [c.id for c in cfg.maintenance.categories]
    return wanted if wanted in ids else ids[0]


def _text(value, most: int = 500) -> str:
    return str(value or "").strip()[:most]


def create(cfg: SiteConfig, origin: str, fields: dict, by: str, role: str, now: datetime) -> int:
    """A new order. `fields`: category, what, device, location, household, phone, alert_id,
    inspection_task, inspection_item, note."""
    if origin not in ORIGINS:
        raise OrderError("order_bad_origin", f"unknown origin {origin!r}")
    order = {k: _text(fields.get(k)) for k in ("category", "what", "device", "location", "household", "phone",
                                               "inspection_item", "note")}
    order["alert_id"] = _text(fields.get("alert_id"), 300) or None
    order["inspection_task"] = fields.get("inspection_task")
    order["inspection_item"] = order["inspection_item"] or None
    order["origin"] = origin
    category(cfg, order["category"])
    if not order["what"]:
        raise OrderError("order_what_missing", "say what is wrong")
    if origin == "resident" and not (order["household"] or order["phone"]):
        raise OrderError("order_resident_missing", "a resident's report needs the household or a phone number")
    return book.create_order(cfg.storage_path, order, to_us(now), by, role)


def move(cfg: SiteConfig, order_id: int, step_name: str, form: dict, by: str, role: str, now: datetime,
         may=None) -> dict:
    """One step of an order (`may(role, permission)` checks who may); the order after it."""
    step = STEPS.get(step_name)
    if step is None:
        raise OrderError("not_found", f"no step {step_name!r}", 404)
    if may is not None and not may(role, step.permission):
        raise OrderError("forbidden", f"a {role} may not {step_name} an order", 403)
    at = to_us(now)
    note = _text(form.get("note"))
    changes: dict = {}
    if step.name == "assign":
        assignee = _text(form.get("assignee"), 64)
        if not assignee:
            raise OrderError("order_assignee_missing", "assign it to someone")
        changes["assignee"] = assignee
        note = note or assignee
    elif step.name == "arrive":
        current = _current(cfg, order_id)
        if current["on_site_us"] is None:
            changes["on_site_us"] = at
    elif step.name == "finish":
        work = _text(form.get("work_done"))
        if not work:
            raise OrderError("order_work_missing", "say what was done")
        changes.update(done_us=at, work_done=work, parts=_text(form.get("parts")))
        note = note or work
    elif step.name == "follow_up":
        try:
            satisfaction = int(str(form.get("satisfaction", "")))
        except ValueError:
            satisfaction = 0
        if not 1 <= satisfaction <= 5:
            raise OrderError("order_satisfaction_missing", "the resident's satisfaction: 1 to 5")
        changes.update(satisfaction=satisfaction, followed_by=by)
    elif step.name == "reopen":
        if not note:
            raise OrderError("order_reason_missing", "say why it is reopened")
        current = _current(cfg, order_id)
        # the targets count again from now: a new response and a new repair are owed
        changes.update(clock_us=at, on_site_us=None, done_us=None, reopened=current["reopened"] + 1)
    try:
        return book.move_order(cfg.storage_path, order_id, step.name, step.from_states, step.to_state, at, by, role,
                               note, **changes)
    except book.Conflict as e:
        raise OrderError("order_conflict", str(e), 409) from None


def _current(cfg: SiteConfig, order_id: int) -> dict:
    from ..ledger.queries import read_only
    with read_only(cfg.storage_path) as db:
        found = book.order(db, order_id) if db is not None else None
    if found is None:
        raise OrderError("not_found", "no such order", 404)
    return found


@dataclass(frozen=True)
class Targets:
    respond_due_us: int
    repair_due_us: int
    response_s: float | None          # report (or reopening) to the first arrival
    repair_s: float | None            # ... to done
    respond_missed: bool              # late, or not there yet and past due
    repair_missed: bool


def targets(cfg: SiteConfig, order: dict, now_us: int) -> Targets:
    c = next((c for c in cfg.maintenance.categories if c.id == order["category"]), None)
    respond = int((c.respond_minutes if c else 60) * 60e6)
    repair = int((c.repair_hours if c else 24) * 3600e6)
    start = order["clock_us"]
    arrived, done = order["on_site_us"], order["done_us"]
    return Targets(start + respond, start + repair,
                   None if arrived is None else (arrived - start) / 1e6,
                   None if done is None else (done - start) / 1e6,
                   (arrived if arrived is not None else now_us) > start + respond,
                   (done if done is not None else now_us) > start + repair)
