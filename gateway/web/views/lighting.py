"""Lighting: each circuit's plan for today, what it was commanded and what its meters measure,
and the overrides (gateway/lighting/control.py). With the console inside the gateway the
controller's live state is shown; otherwise the ledger's last commands."""

from __future__ import annotations

from datetime import datetime, timedelta

from ...clock import from_us, to_us
from ...lighting.plan import Planner
from ...ledger import queries


def _last_power(db, meter: str, names) -> tuple[float | None, int | None]:
    found = queries.last_reading(db, meter, names)
    if found is None:
        return None, None
    return found["values"].get("power_kw"), found["ts_us"]


def lighting_view(cfg, db, now: datetime, controller=None, planner: Planner | None = None) -> dict:
    planner = planner or Planner(cfg)
    tz = planner.tz
    today = now.astimezone(tz).date()
    rise, set_ = planner.sun.times(today)
    live = {s["circuit"]: s for s in controller.status(now)} if controller is not None else {}
    last = {}
    overrides = {}
    if db is not None:
        last = queries.lighting_last_commands(db)
        overrides = {cid: {"on": o["on"], "until": from_us(o["until_us"]).astimezone(tz).strftime("%m-%d %H:%M"),
                           "by": o["by"], "role": o["role"], "reason": o["reason"]}
                     for cid, o in queries.lighting_overrides(db, to_us(now)).items()}
    rows = []
    names = queries.Names(db) if db is not None else None
    for c in cfg.lighting.circuits:
        at_midnight, switches = planner.day(c.id, today)
        wanted, iv = planner.state_at(c.id, now)
        l = live.get(c.id)
        kw, kw_us = None, None
        for m in c.meters:
            p, ts = _last_power(db, m, names) if db is not None else (None, None)
            if p is not None:
                kw = (kw or 0.0) + p
                kw_us = max(kw_us or 0, ts)
        if l is not None and l["measured_kw"] is not None:
            kw = l["measured_kw"]
        commanded = l["commanded"] if l is not None else (last.get(c.id) or {}).get("on")
        o = overrides.get(c.id)
        rows.append({
            "id": c.id, "name": c.name, "schedule": c.schedule,
            "plan": [{"at": s.at.strftime("%H:%M:%S"), "on": s.on} for s in switches],
            "on_at_midnight": at_midnight, "plan_now": wanted,
            "commanded": commanded, "measured_kw": None if kw is None else round(kw, 3),
            "measured_at": from_us(kw_us).astimezone(tz).strftime("%H:%M:%S") if kw_us else "",
            "agrees": None if commanded is None or kw is None else
            (kw > (c.lit_kw if c.lit_kw is not None else c.idle_kw)) if commanded else kw <= c.idle_kw,
            "proven": l["proven"] if l is not None else "",
            "override": o, "last": last.get(c.id),
            "alerts": [a.message for a in l["alerts"]] if l is not None else [],
        })
    savings = []
    if db is not None and any(c.baseline for c in cfg.lighting.circuits):
        from ...lighting.savings import month_savings, totals
        try:
            found = month_savings(cfg, db, today.strftime("%Y-%m"), planner)
        except Exception:  # noqa: BLE001 - an older ledger without counters: no section
            found = []
        t = totals(found)
        savings = {"month": today.strftime("%Y-%m"), "saved_kwh": str(t["saved_kwh"]), "saved_yuan": str(t["saved_yuan"]),
                   "judged": t["judged"], "circuits": t["circuits"],
                   "rows": [{"circuit": r.circuit, "saved_kwh": None if r.saved_kwh is None else str(r.saved_kwh),
                             "saved_yuan": None if r.saved_yuan is None else str(r.saved_yuan), "note": r.note}
                            for r in found]}
    return {"date": today.isoformat(), "savings": savings or None, "sunrise": rise.strftime("%H:%M:%S") if rise else "",
            "sunset": set_.strftime("%H:%M:%S") if set_ else "", "live": controller is not None,
            "now": now.astimezone(tz).strftime("%H:%M:%S"),
            "default_until": (now.astimezone(tz) + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M"),
            "circuits": rows}
