"""Inspection plans as data (site file `maintenance.inspections`, the service plan's rhythms by
default): one task per plan and period, due at the period's end (site time), with the plan's
checklist; a task is done once every item has a result."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..clock import to_us
from ..config import InspectionPlan, SiteConfig


def period_of(every: str, day: date) -> tuple[str, date, date]:
    """(label, first day, day after the last) of the period holding `day`."""
    if every == "week":
        start = day - timedelta(days=day.weekday())
        iso = start.isocalendar()
        return f"{iso.year}-W{iso.week:02d}", start, start + timedelta(days=7)
    months = {"month": 1, "quarter": 3, "half_year": 6, "year": 12}[every]
    first_month = (day.month - 1) // months * months + 1
    start = date(day.year, first_month, 1)
    end_month = first_month + months
    end = date(day.year + (end_month - 1) // 12, (end_month - 1) % 12 + 1, 1)
    label = {"month": f"{day.year}-{first_month:02d}", "quarter": f"{day.year}-Q{(first_month - 1) // 3 + 1}",
             "half_year": f"{day.year}-H{(first_month - 1) // 6 + 1}", "year": f"{day.year}"}[every]
    return label, start, end


def wanted_tasks(cfg: SiteConfig, now: datetime, first_start_us: dict[str, int] | None = None
                 ) -> list[tuple[str, str, int, int]]:
    """(plan, period, starts_us, due_us) of the current period of every plan, and of the previous
    one for plans whose first task (`first_start_us`) began before the current period: a gateway
    that was off across a period's end still owes that period's task, but a plan new to the site
    starts with the current period, not overdue at once."""
    first_start_us = first_start_us or {}
    tz = ZoneInfo(cfg.site.timezone)
    today = now.astimezone(tz).date()
    out = []
    for plan in cfg.maintenance.inspections:
        label, start, end = period_of(plan.every, today)
        plabel, pstart, pend = period_of(plan.every, start - timedelta(days=1))
        periods = [(label, start, end)]
        current_us = to_us(datetime.combine(start, time(0), tz))
        if first_start_us.get(plan.id, current_us) < current_us:
            periods.insert(0, (plabel, pstart, pend))
        for lab, s, e in periods:
            out.append((plan.id, lab, to_us(datetime.combine(s, time(0), tz)), to_us(datetime.combine(e, time(0), tz))))
    return out


def plan(cfg: SiteConfig, plan_id: str) -> InspectionPlan | None:
    return next((p for p in cfg.maintenance.inspections if p.id == plan_id), None)


def month_inspection(cfg: SiteConfig, db, month: str, plan_id: str = "meters_lines") -> dict | None:
    """The month's meter-and-line inspection with its results (None: no such task), for the
    allocation report to print beside the meters' data-quality notes."""
    from ..ledger.maintenance import has_tables, results, task_by_period
    p = plan(cfg, plan_id)
    if p is None or db is None or not has_tables(db) or p.every != "month":
        return None
    t = task_by_period(db, plan_id, month)
    if t is None:
        return None
    found = results(db, t["id"])
    return {"plan": p.id, "name": p.name, "name_en": p.name_en, "period": month, "done_us": t["done_us"],
            "done_by": t["done_by"], "due_us": t["due_us"],
            "items": [{"id": i.id, "name": i.name, "name_en": i.name_en,
                       "ok": None if i.id not in found else bool(found[i.id]["ok"]),
                       "note": found.get(i.id, {}).get("note", ""), "by": found.get(i.id, {}).get("by", "")}
                      for i in p.items]}


def for_report(cfg: SiteConfig, month: str, plan_id: str = "meters_lines") -> dict | None:
    """The allocation report's inspection beside its data-quality notes: the month's task with its
    results, or the plan's checklist marked `missing` when the month has no task (nobody was due
    to inspect, or the gateway was off): the report says so rather than leave the section out.
    None when the site has no such monthly plan (no section)."""
    p = plan(cfg, plan_id)
    if p is None or p.every != "month":
        return None
    from ..ledger.queries import read_only
    with read_only(cfg.storage_path) as db:
        found = month_inspection(cfg, db, month, plan_id) if db is not None else None
    if found is not None:
        return {**found, "missing": False}
    return {"plan": p.id, "name": p.name, "name_en": p.name_en, "period": month, "done_us": None, "done_by": None,
            "due_us": None, "missing": True,
            "items": [{"id": i.id, "name": i.name, "name_en": i.name_en, "ok": None, "note": "", "by": ""}
                      for i in p.items]}
