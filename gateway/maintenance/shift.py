"""The night shift's handover: what happened between a shift's start and its handover, from the
ledger (alarms raised, acknowledged and still open; patrol rounds and missed checkpoints;
unknown, revoked or expired cards and forced doors; repair orders opened and closed; lighting
overrides) beside the outgoing guard's notes."""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from ..clock import from_us
from ..config import SiteConfig
from ..ledger import maintenance as book
from ..ledger.queries import last_download_us, patrol_checkins


def patrol_rounds(cfg: SiteConfig, db, start_us: int, end_us: int, now: datetime) -> list[dict]:
    """Every route's rounds that started in [start, end), judged as the patrol page judges them:
    a wand route's unread checkpoint is missed only once a download has arrived after the round."""
    from ..web.views.patrol import judge, schedules
    tz = ZoneInfo(cfg.site.timezone)
    first = from_us(start_us).astimezone(tz).date()
    last = from_us(max(start_us, end_us - 1)).astimezone(tz).date()
    lo = start_us - 86_400_000_000
    rows = patrol_checkins(db, lo, end_us + 86_400_000_000)
    out = []
    names = {c.id: c.name or c.id for c in cfg.patrol.checkpoints}
    kinds = [r.id for r in cfg.patrol.readers]
    for route in schedules(cfg):
        downloaded = last_download_us(db, lo, sorted(route.readers or kinds)) if route.wand else None
        day = first
        while day <= last:
            for rd in judge(route, day, rows, now, tz, downloaded):
                if start_us <= rd["start_us"] < end_us:
                    missed = [names.get(p["checkpoint"], p["checkpoint"]) for p in rd["checkpoints"]
                              if p["status"] == "missed"]
                    guards = sorted({p["guard"] for p in rd["checkpoints"] if p["guard"]})
                    out.append({"route": route.id, "name": route.name, "start_us": rd["start_us"],
                                "counts": rd["counts"], "missed": missed, "guards": guards, "phase": rd["phase"],
                                "points": len(rd["checkpoints"])})
            day += timedelta(days=1)
    out.sort(key=lambda r: (r["start_us"], r["route"]))
    return out


def handover(cfg: SiteConfig, db, shift: dict, now: datetime) -> dict:
    """The handover of a shift (to its handover, or to now while it is on duty)."""
    from ..clock import to_us
    start = shift["started_us"]
    end = shift["ended_us"] if shift["ended_us"] is not None else to_us(now)
    w = book.handover_window(db, start, end)
    opened = [s for s in w["steps"] if s["step"] == "create"]
    closed = [s for s in w["steps"] if s["step"] in ("finish", "follow_up")]
    return {"shift": shift, "start_us": start, "end_us": end, "raised": w["raised"], "acked": w["acked"],
            "open": w["open"], "cards": w["cards"], "doors": w["doors"], "orders_opened": opened,
            "orders_closed": closed, "steps": w["steps"], "overrides": w["overrides"],
            "rounds": patrol_rounds(cfg, db, start, end, now)}
