"""`gateway status`: what the ledger says about buses, meters and the outbox, read-only.

Reads the SQLite ledger through a read-only connection, so it works while `gateway run` is
writing (WAL lets readers in) and never changes anything.
"""

from __future__ import annotations

import sqlite3
from datetime import datetime, timezone

from .clock import from_us, to_us
from .config import SiteConfig
from .ledger import queries


class NoLedger(Exception):
    pass


def _ago(us: int | None, now_us: int) -> float | None:
    return None if us is None else max(0.0, (now_us - us) / 1e6)


def collect(cfg: SiteConfig, now: datetime | None = None) -> dict:
    path = cfg.storage_path
    if not path.exists():
        raise NoLedger(f"no ledger at {path} yet: has `gateway run -c ...` been started with this site file?")
    now_us = to_us(now or datetime.now(timezone.utc))
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        last_status = {d: (bool(o), ts, reason) for d, o, ts, reason in db.execute(
            "SELECT device, online, ts_us, reason FROM device_status WHERE id IN "
            "(SELECT max(id) FROM device_status GROUP BY device)")}
        last_reading = queries.last_reading_times(db) if queries.has_log(db) else \
            dict(db.execute("SELECT meter, max(ts_us) FROM readings GROUP BY meter"))   # not upgraded yet
        outbox = {"depth": 0, "bytes": 0, "oldest_age_s": None, "last_write_age_s": None, "rejected": 0}
        if version >= 2:
            depth, size, oldest_ms = queries.outbox_summary(db)
            last_ok = db.execute("SELECT value FROM meta WHERE key = 'influx_last_ok_us'").fetchone()
            outbox.update(depth=depth, bytes=size,
                          oldest_age_s=_ago(oldest_ms * 1000 if oldest_ms is not None else None, now_us),
                          last_write_age_s=_ago(int(last_ok[0]) if last_ok else None, now_us),
                          rejected=db.execute("SELECT count(*) FROM outbox_rejected").fetchone()[0])
        from .timesync import clock_report
        clock = clock_report(db)
    finally:
        db.close()

    buses = []
    for b in cfg.buses:
        meters = [m for m in cfg.meters if m.bus == b.id and m.enabled]
        states = {m.id: last_status.get(m.id) for m in meters}
        bus_state = last_status.get(b.id)
        latest = max((last_reading[m.id] for m in meters if m.id in last_reading), default=None)
        buses.append({
            "id": b.id, "type": b.type,
            "where": f"{b.host}:{b.port}" if b.type == "modbus_tcp" else b.port,
            "connected": None if bus_state is None else bus_state[0],
            "meters": len(meters),
            "online": sum(1 for s in states.values() if s and s[0]),
            "offline": [{"meter": mid, "since": from_us(s[1]).isoformat(), "reason": s[2]}
                        for mid, s in states.items() if s and not s[0]],
            "last_reading_age_s": _ago(latest, now_us),
        })
    return {"site": cfg.site.id, "ledger": str(path), "schema_version": version,
            "readings_meters": len(last_reading), "buses": buses,
            "influxdb": cfg.influxdb.url if cfg.influxdb else None, "outbox": outbox, "clock": clock}
