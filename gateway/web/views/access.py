"""Access: the latest card swipes and the door alarms of the last 24 hours."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from ...clock import from_us, to_us

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
    sql = ("SELECT ts_us, reader, door, direction, card_tail, category, holder, household, role FROM swipes")
    where, args = [], []
    for col, val in (("door", door), ("category", category)):
        if val:
            where.append(f"{col} = ?")
            args.append(val)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = [] if db is None else db.execute(sql + " ORDER BY ts_us DESC, id DESC LIMIT ?", (*args, limit)).fetchall()
    keys = ("ts_us", "reader", "door", "direction", "card_tail", "category", "holder", "household", "role")
    swipes = []
    for r in rows:
        s = dict(zip(keys, r))
        s["time"] = from_us(s["ts_us"]).astimezone(tz).strftime("%m-%d %H:%M:%S")
        s["door_name"] = doors.get(s["door"], s["door"])
        s["denied"] = s["category"] in DENIED
        swipes.append(s)
    alarms = []
    if db is not None:
        for ts_us, d, state, source in db.execute(
                "SELECT ts_us, door, state, source FROM door_events WHERE ts_us >= ? AND ts_us <= ? AND state IN "
                "(?, ?) ORDER BY ts_us DESC, id DESC", (now_us - DAY_US, now_us, *ALARM_STATES)):
            alarms.append({"ts_us": ts_us, "time": from_us(ts_us).astimezone(tz).strftime("%m-%d %H:%M:%S"),
                           "door": d, "door_name": doors.get(d, d), "state": state, "source": source})
    return {"swipes": swipes, "door_alarms": alarms, "filter": {"door": door, "category": category},
            "doors": [{"id": k, "name": v} for k, v in doors.items()], "categories": list(CATEGORIES),
            "limit": limit}
