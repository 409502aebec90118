"""Meters: every configured meter with its state and last values; one meter's curves and daily kWh.

State comes from the ledger, so the page tells the truth whether or not the gateway runs in
this process: the newest device_status of the meter (what the poller decided) against its
newest reading (a reading after an offline status means it answered again).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from decimal import Decimal, InvalidOperation
from zoneinfo import ZoneInfo

from ...clock import from_us, to_us
from ...ledger import queries
from ...ledger.queries import DeviceStatus, meter_state
from .charts import downsample

# What the overview shows, with the field each falls back to on three-phase models that have
# no single-phase total (voltage and current of phase L1 there).
SHOWN = {"voltage": ("voltage_v", "voltage_l1_v"), "current": ("current_a", "current_l1_a"),
         "power": ("power_kw",)}
ENERGY = "energy_kwh"
MINUTE_US = 60_000_000
HOUR_US = 60 * MINUTE_US
DAY_US = 24 * HOUR_US


def pick(values: dict[str, float], key: str) -> tuple[str | None, float | None]:
    for name in SHOWN[key]:
        if name in values:
            return name, values[name]
    return None, None


def last_status(db, device: str) -> dict | None:
    s = queries.device_status(db, device)
    return {"online": s.online, "ts_us": s.ts_us, "reason": s.reason} if s else None


def state_of(last: dict | None, status: dict | None) -> str:
    """online | offline | never, as the status read model decides it."""
    return meter_state(last["ts_us"] if last else None,
                       DeviceStatus(status["online"], status["ts_us"], status.get("reason")) if status else None)


def _num(v: float | None) -> float | None:
    return None if v is None or v != v else v      # NaN is not JSON


def meter_row(m, last: dict | None, status: dict | None, now_us: int, tz: ZoneInfo) -> dict:
    values = last["values"] if last else {}
    row = {"id": m.id, "name": m.name, "bus": m.bus, "unit": m.unit, "address": getattr(m, "address", None),
           "model": m.model, "circuit": m.circuit,
           "building": m.building, "poll_s": m.poll_s, "enabled": m.enabled, "state": state_of(last, status),
           "status_reason": status["reason"] if status else "", "last_seen_us": last["ts_us"] if last else None,
           "last_seen": from_us(last["ts_us"]).astimezone(tz).strftime("%m-%d %H:%M:%S") if last else "",
           "age_s": round((now_us - last["ts_us"]) / 1e6) if last else None}
    for key in SHOWN:
        name, v = pick(values, key)
        row[key] = _num(v)
        row[key + "_field"] = name
    counter = (last or {}).get("counters", {}).get(ENERGY)
    if counter is None and _num(values.get(ENERGY)) is not None:
        counter = str(values[ENERGY])
    row["energy_kwh"] = counter                 # text: the exact counter as the meter said it
    # a meter that still counts as online but has not been heard from for three polls
    row["stale"] = row["state"] == "online" and row["age_s"] is not None and row["age_s"] > max(3 * m.poll_s, 300)
    return row


def meters_overview(cfg, db, now: datetime) -> dict:
    """All meters of the site grouped by bus, in the site file's order."""
    tz, now_us = ZoneInfo(cfg.site.timezone), to_us(now)
    lasts = queries.last_readings(db, [m.id for m in cfg.meters]) if db is not None else {}
    buses = []
    for b in cfg.buses:
        rows = []
        for m in (m for m in cfg.meters if m.bus == b.id):
            last = lasts.get(m.id)
            status = last_status(db, m.id) if db is not None else None
            rows.append(meter_row(m, last, status, now_us, tz))
        buses.append({"id": b.id, "type": b.type, "meters": rows,
                      **{s: sum(1 for r in rows if r["state"] == s) for s in ("online", "offline", "never")}})
    return {"buses": buses, "meters": sum(len(b["meters"]) for b in buses),
            **{s: sum(b[s] for b in buses) for s in ("online", "offline", "never")}}


# ---- one meter --------------------------------------------------------------------------------

def samples(db, meter: str, start_us: int, end_us: int,
            keys=("power", "voltage")) -> dict[str, list[tuple[int, float]]]:
    """(ts_us, value) per shown key in [start_us, end_us), one index range of the meter."""
    out: dict[str, list[tuple[int, float]]] = {k: [] for k in keys}
    for ts, values in queries.meter_rows(db, meter, start_us, end_us):
        for k in keys:
            _, v = pick(values, k)
            if v is not None:
                out[k].append((ts, v))
    return out


def local_midnights(tz: ZoneInfo, first: date, days: int) -> list[int]:
    """UTC µs of local midnight of `first` and the `days` following midnights."""
    return [to_us(datetime.combine(first + timedelta(days=i), time(0), tz)) for i in range(days + 1)]


def daily_kwh(db, meter: str, midnights: list[int], gap_us: int) -> list[dict]:
    """kWh of each local day from the `energy` table: the counter at a midnight is the last one
    recorded before it; a day is the difference of its two midnights.

    status per day: ok; gap (the last reading before a midnight is older than `gap_us`: the
    total across the gap is right but how it splits between the two days is not known, so it
    all counts for the later day); unknown (the counter went down during the day: meter replaced
    or wrapped, the difference means nothing); no_data (no counter before the day's start or
    its end, or no reading during the day).
    """
    edges = [queries.energy_before(db, meter, m, -2**63) for m in midnights]
    # where the counter went down
    first = next((e[0] for e in edges if e is not None), midnights[0])
    downs, prev = [], None
    for ts, kwh in queries.energy_series(db, meter, first, midnights[-1] - 1):
        v = _real(kwh)
        if prev is not None and v is not None and v < prev:
            downs.append(ts)
        prev = v
    out = []
    for i in range(len(midnights) - 1):
        a, b = edges[i], edges[i + 1]
        day = {"start_us": midnights[i], "kwh": None, "status": "ok"}
        if a is None or b is None or b[0] < midnights[i]:
            day["status"] = "no_data"
        elif any(midnights[i] <= ts < midnights[i + 1] for ts in downs):
            day["status"] = "unknown"
        else:
            try:
                kwh = Decimal(b[1]) - Decimal(a[1])
            except (InvalidOperation, TypeError):
                day["status"] = "unknown"
            else:
                if kwh < 0:
                    day["status"] = "unknown"
                else:
                    day["kwh"] = str(kwh)
                    if midnights[i] - a[0] > gap_us or midnights[i + 1] - b[0] > gap_us:
                        day["status"] = "gap"
        out.append(day)
    return out


def _real(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def meter_detail(cfg, db, meter_id: str, now: datetime) -> dict | None:
    """The meter's row, all its last values, power and voltage over 24 h (2-minute means) and
    7 d (10-minute means; longer for a meter polled less often than every minute or five), and
    daily kWh over the last 30 local days (today last, partial)."""
    m = next((m for m in cfg.meters if m.id == meter_id), None)
    if m is None:
        return None
    tz, now_us = ZoneInfo(cfg.site.timezone), to_us(now)
    last = queries.last_reading(db, m.id) if db is not None else None
    status = last_status(db, m.id) if db is not None else None
    out = meter_row(m, last, status, now_us, tz)
    out["values"] = {k: _num(v) for k, v in (last["values"] if last else {}).items()}
    out["counters"] = last["counters"] if last else {}
    series = {}
    week = samples(db, m.id, now_us - 7 * DAY_US, now_us + 1) if db is not None else \
        {"power": [], "voltage": []}
    # a bucket holds at least two polls, so a slowly polled meter draws a line, not dots; an
    # empty bucket then really is a gap in the data
    poll_min = -(-int(2 * m.poll_s) // 60) * MINUTE_US
    for key, raw in week.items():
        day = [(ts, v) for ts, v in raw if ts >= now_us - DAY_US]
        series[f"{key}_24h"] = downsample(day, now_us - DAY_US, now_us + 1, max(2 * MINUTE_US, poll_min))
        series[f"{key}_7d"] = downsample(raw, now_us - 7 * DAY_US, now_us + 1, max(10 * MINUTE_US, poll_min))
    out["series"] = {k: [[ts, _num(v)] for ts, v in pts] for k, pts in series.items()}
    today = now.astimezone(tz).date()
    midnights = local_midnights(tz, today - timedelta(days=29), 29) + [now_us + 1]
    days = daily_kwh(db, m.id, midnights, int(cfg.allocation.gap_minutes * MINUTE_US)) if db is not None else \
        [{"start_us": s, "kwh": None, "status": "no_data"} for s in midnights[:-1]]
    for d in days:
        d["date"] = from_us(d["start_us"]).astimezone(tz).strftime("%Y-%m-%d")
    days[-1]["partial"] = True                    # today, up to now
    out["daily"] = days
    out["window"] = {"now_us": now_us, "day_start_us": now_us - DAY_US, "week_start_us": now_us - 7 * DAY_US}
    return out
