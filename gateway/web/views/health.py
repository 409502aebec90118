"""Health: buses and meters, the InfluxDB outbox, disk, uptime and the clock.

From the running gateway when the console is served by it (poll counters, bus utilisation);
otherwise (console started on its own) from the ledger, which knows states but not counters.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from ...clock import to_us
from ...ledger import queries
from .meters import last_status, state_of

TIMESYNC_FLAG = Path("/run/systemd/timesync/synchronized")


def clock_synced(flag: Path = TIMESYNC_FLAG, timedatectl: str | None = "timedatectl") -> bool | None:
    """True/False when the system can tell whether NTP synchronised the clock, None if unknown.
    systemd-timesyncd touches the flag file once synchronised; timedatectl also knows chrony's
    and ntpd's view. No timedatectl (or no systemd): unknown, not false."""
    if flag.exists():
        return True
    exe = shutil.which(timedatectl) if timedatectl else None
    if exe is None:
        return None
    try:
        done = subprocess.run([exe, "show", "-p", "NTPSynchronized", "--value"], capture_output=True, text=True,
                              timeout=2)
    except (OSError, subprocess.SubprocessError):
        return None
    answer = done.stdout.strip().lower()
    if done.returncode != 0 or answer not in ("yes", "no"):
        return None
    return answer == "yes"


def ledger_size(path: Path) -> int:
    """The database with its write-ahead log and shared-memory index (all of it is on disk)."""
    return sum(p.stat().st_size for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists())


def live_buses(cfg, gw, uptime_s: float) -> list[dict]:
    out = []
    for b in gw.buses:
        s = b.stats()
        polls = s.get("polls", 0)
        out.append({"id": b.bus.id, "meters": s.get("meters", 0), "online": s.get("online", 0),
                    "offline": s.get("offline", 0), "polls": polls, "ok": s.get("ok", 0),
                    "failures": s.get("failures", 0), "success_rate": s.get("ok", 0) / polls if polls else None,
                    "busy_s": s.get("busy_s", 0.0),
                    "utilisation": min(1.0, s.get("busy_s", 0.0) / uptime_s) if uptime_s > 0 else None,
                    "connected": None})
    return out


def ledger_buses(cfg, db) -> list[dict]:
    """What the ledger says: each meter's state as on the meters page, each bus's last status."""
    lasts = queries.last_readings(db, [m.id for m in cfg.meters]) if db is not None else {}
    out = []
    for b in cfg.buses:
        states = []
        for m in (m for m in cfg.meters if m.bus == b.id):
            last = lasts.get(m.id)
            states.append(state_of(last, last_status(db, m.id) if db is not None else None))
        bus_status = last_status(db, b.id) if db is not None else None
        out.append({"id": b.id, "meters": len(states), "online": states.count("online"),
                    "offline": states.count("offline"), "polls": None, "ok": None, "failures": None,
                    "success_rate": None, "busy_s": None, "utilisation": None,
                    "connected": bus_status["online"] if bus_status else None})
    return out


def health_view(ctx, db, now: datetime, synced: bool | None) -> dict:
    cfg, gw = ctx.cfg, ctx.gateway
    tz = ZoneInfo(cfg.site.timezone)
    started = getattr(gw, "started_at", None) if gw is not None else None
    if started is not None:
        uptime_s, uptime_of = (now - started).total_seconds(), "gateway"
    else:
        uptime_s, uptime_of = time.monotonic() - ctx.started, "console"
    if gw is not None and getattr(gw, "buses", None) is not None:
        buses, source = live_buses(cfg, gw, uptime_s), "live"
    else:
        buses, source = ledger_buses(cfg, db), "ledger"
    ledger = getattr(gw, "ledger", None) if gw is not None else None
    if ledger is not None:
        depth, size = ledger.outbox_depth, ledger.outbox_bytes
    elif db is not None:
        depth, size, _ = queries.outbox_summary(db)
    else:
        depth, size = None, None
    path = cfg.storage_path
    where = path.parent if path.parent.exists() else Path(".")
    disk = shutil.disk_usage(where)
    return {
        "source": source, "buses": buses,
        "meters": {"total": sum(b["meters"] for b in buses), "online": sum(b["online"] for b in buses),
                   "offline": sum(b["offline"] for b in buses)},
        "outbox": {"depth": depth, "bytes": size, "influxdb": cfg.influxdb is not None},
        "disk": {"path": str(where), "total": disk.total, "used": disk.used, "free": disk.free,
                 "used_share": disk.used / disk.total if disk.total else None},
        "ledger": {"path": str(path), "bytes": ledger_size(path) if path.exists() else None},
        "uptime": {"seconds": round(uptime_s), "of": uptime_of},
        "clock": {"local": now.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"), "timezone": cfg.site.timezone,
                  "utc": now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), "utc_us": to_us(now),
                  "synchronized": synced},
    }
