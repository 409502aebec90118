"""Health: buses and meters, the InfluxDB outbox, disk, uptime and the clock.

The figures are the ledger's status read model, the same as `gateway status` and `/metrics`;
when the console is served by the running gateway, its poll counters add success rates and bus
utilisation.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from ...clock import from_us, to_us
from ...ledger.queries import BusCounters, read_status

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


def bus_counters(gw) -> dict | None:
    """The running gateway's poll counters per bus; None when the console runs on its own."""
    if gw is None or getattr(gw, "buses", None) is None:
        return None
    out = {}
    for b in gw.buses:
        s = b.stats()
        out[b.bus.id] = BusCounters(s.get("polls", 0), s.get("ok", 0), s.get("failures", 0), s.get("busy_s", 0.0))
    return out


def _bus_row(b, uptime_s: float, tz: ZoneInfo) -> dict:
    c = b.counters
    row = {"id": b.id, "meters": len(b.meters), "online": b.count("online"), "offline": b.count("offline"),
           "offline_meters": [{"meter": m.id, "since_us": m.offline_since_us, "reason": m.reason,
                               "since": from_us(m.offline_since_us).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")}
                              for m in b.meters if m.state == "offline"],
           "connected": b.connected, "polls": None, "ok": None, "failures": None, "success_rate": None,
           "busy_s": None, "utilisation": None}
    if c is not None:
        row.update(polls=c.polls, ok=c.ok, failures=c.failures, success_rate=c.ok / c.polls if c.polls else None,
                   busy_s=c.busy_s, utilisation=min(1.0, c.busy_s / uptime_s) if uptime_s > 0 else None)
    return row


def health_view(ctx, db, now: datetime, synced: bool | None, counters: dict | None = None) -> dict:
    """The status read model (gateway/ledger/queries.py) for the health page and its JSON twin.
    `counters`: the buses' poll counters when taken on the event loop (else read here)."""
    cfg, gw = ctx.cfg, ctx.gateway
    tz = ZoneInfo(cfg.site.timezone)
    started = getattr(gw, "started_at", None) if gw is not None else None
    if started is not None:
        uptime_s, uptime_of = (now - started).total_seconds(), "gateway"
    else:
        uptime_s, uptime_of = time.monotonic() - ctx.started, "console"
    if counters is None:
        counters = bus_counters(gw)
    st = read_status(cfg, db, counters)
    now_us = to_us(now)
    o = st.outbox
    if o is None and gw is not None and getattr(gw, "ledger", None) is not None:
        outbox = {"depth": gw.ledger.outbox_depth, "bytes": gw.ledger.outbox_bytes, "oldest_age_s": None,
                  "last_write_age_s": None, "rejected": None}
    elif o is None:
        outbox = {"depth": None, "bytes": None, "oldest_age_s": None, "last_write_age_s": None, "rejected": None}
    else:
        outbox = {"depth": o.depth, "bytes": o.bytes, "rejected": o.rejected,
                  "oldest_age_s": None if o.oldest_us is None else max(0.0, (now_us - o.oldest_us) / 1e6),
                  "last_write_age_s": None if o.last_write_us is None else max(0.0, (now_us - o.last_write_us) / 1e6)}
    disk = st.disk
    return {
        "source": "live" if counters is not None else "ledger",
        "buses": [_bus_row(b, uptime_s, tz) for b in st.buses],
        "meters": {"total": st.meters_total, "online": st.count("online"), "offline": st.count("offline"),
                   "never": st.count("never")},
        "outbox": {**outbox, "influxdb": cfg.influxdb is not None},
        "disk": {"path": disk.path, "total": disk.total, "used": disk.used, "free": disk.free,
                 "used_share": disk.used_share},
        "ledger": {"path": st.ledger, "bytes": st.ledger_bytes, "schema_version": st.schema_version},
        "uptime": {"seconds": round(uptime_s), "of": uptime_of},
        "clock": {"local": now.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"), "timezone": cfg.site.timezone,
                  "utc": now.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S"), "utc_us": now_us,
                  "synchronized": synced, "untrusted_now": st.clock["untrusted_now"],
                  "unrepaired_episodes": len(st.clock["unrepaired"])},
    }
