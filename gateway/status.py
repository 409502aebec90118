"""`gateway status`: the ledger's status read model (gateway/ledger/queries.py) as JSON.

Reads the SQLite ledger through a read-only connection, so it works while `gateway run` is
writing (WAL lets readers in) and never changes anything.
"""

from __future__ import annotations

from datetime import datetime, timezone

from .clock import from_us, to_us
from .config import SiteConfig
from .ledger.queries import Status, read_only, read_status


class NoLedger(Exception):
    pass


def _ago(us: int | None, now_us: int) -> float | None:
    return None if us is None else max(0.0, (now_us - us) / 1e6)


def as_json(st: Status, now_us: int) -> dict:
    buses = [{
        "id": b.id, "type": b.type, "where": b.where, "connected": b.connected,
        "meters": len(b.meters), "online": b.count("online"),
        "offline": [{"meter": m.id, "since": from_us(m.offline_since_us).isoformat(), "reason": m.reason}
                    for m in b.meters if m.state == "offline"],
        "never": [m.id for m in b.meters if m.state == "never"],
        "last_reading_age_s": _ago(b.last_reading_us, now_us),
    } for b in st.buses]
    o = st.outbox
    outbox = {"depth": o.depth, "bytes": o.bytes, "oldest_age_s": _ago(o.oldest_us, now_us),
              "last_write_age_s": _ago(o.last_write_us, now_us), "rejected": o.rejected}
    return {"site": st.site, "ledger": st.ledger, "schema_version": st.schema_version,
            "readings_meters": st.readings_meters, "buses": buses,
            "meters": {"total": st.meters_total, "online": st.count("online"), "offline": st.count("offline"),
                       "never": st.count("never")},
            "influxdb": st.influxdb, "outbox": outbox, "clock": st.clock,
            "disk": {"path": st.disk.path, "total": st.disk.total, "free": st.disk.free},
            "ledger_bytes": st.ledger_bytes}


def collect(cfg: SiteConfig, now: datetime | None = None) -> dict:
    if not cfg.storage_path.exists():
        raise NoLedger(f"no ledger at {cfg.storage_path} yet: has `gateway run -c ...` been started with this "
                       "site file?")
    with read_only(cfg.storage_path) as db:
        st = read_status(cfg, db)
    return as_json(st, to_us(now or datetime.now(timezone.utc)))
