"""Access: the latest card swipes and the door alarms of the last 24 hours."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ...clock import from_us, to_us
from ...ledger.queries import door_events_in, recent_swipes

CATEGORIES = ("resident", "staff", "visitor", "unknown", "revoked", "expired")
# Swipes the guard must notice: the card opened nothing (or should not have).
DENIED = frozenset({"unknown", "revoked", "expired"})
ALARM_STATES = ("forced_open", "held_open")
DAY_US = 86_400_000_000


def access_view(cfg, db, now: datetime, door: str = "", category: str = "", limit: int = 200) -> dict:
    """Swipes newest first (at most `limit`, filtered by door and category when given) and the
    forced-open / held-open door events of the 24 hours before `now`."""
    tz, now_us = ZoneInfo(cfg.site.timezone), to_us(now)
    doors = {d.id: d.name or d.id for d in cfg.doors}
    rows = [] if db is None else recent_swipes(db, door, category, limit)
    swipes = []
    for s in rows:
        s["time"] = from_us(s["ts_us"]).astimezone(tz).strftime("%m-%d %H:%M:%S")
        s["door_name"] = doors.get(s["door"], s["door"])
        s["denied"] = s["category"] in DENIED
        swipes.append(s)
    alarms = []
    if db is not None:
        for ts_us, d, state, source in door_events_in(db, now_us - DAY_US, now_us, ALARM_STATES):
            alarms.append({"ts_us": ts_us, "time": from_us(ts_us).astimezone(tz).strftime("%m-%d %H:%M:%S"),
                           "door": d, "door_name": doors.get(d, d), "state": state, "source": source})
    return {"swipes": swipes, "door_alarms": alarms, "filter": {"door": door, "category": category},
            "doors": [{"id": k, "name": v} for k, v in doors.items()], "categories": list(CATEGORIES),
            "limit": limit}
