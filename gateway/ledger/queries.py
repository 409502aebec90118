"""The ledger's read model: what people and programs read, as typed values.

`read_status` is the one status figure set (buses, meters online/offline and why, the outbox,
the last write to InfluxDB, the clock, the disk). `gateway status`, the console's health page,
`/metrics` and the demo's summary all show what it returns, so they cannot disagree. It reads a
connection that may be read-only (WAL lets a reader in while `gateway run` writes) and changes
nothing. A running gateway adds what only it knows: its poll counters per bus (`BusCounters`).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..config import SiteConfig


@contextmanager
def read_only(path: Path, timeout: float = 5.0) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the ledger at `path`, or None while there is no ledger yet."""
    if not path.exists():
        yield None
        return
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)
    try:
        yield db
    finally:
        db.close()


@dataclass(frozen=True)
class DeviceStatus:
    """The newest online/offline decision the poller recorded for a device (meter or bus)."""
    online: bool
    ts_us: int
    reason: str | None


def device_status(db: sqlite3.Connection, device: str) -> DeviceStatus | None:
    """The newest online/offline decision about one device (a seek in its index, not a scan)."""
    row = db.execute("SELECT online, ts_us, reason FROM device_status WHERE device = ? "
                     "ORDER BY ts_us DESC, id DESC LIMIT 1", (device,)).fetchone()
    return DeviceStatus(bool(row[0]), row[1], row[2]) if row else None


def last_reading_us(db: sqlite3.Connection, meter: str) -> int | None:
    return db.execute("SELECT max(ts_us) FROM readings WHERE meter = ?", (meter,)).fetchone()[0]


def meter_state(last_reading_us: int | None, status: DeviceStatus | None) -> str:
    """online | offline | never (no reading and never reported online)."""
    if status is not None and not status.online and (last_reading_us is None or last_reading_us <= status.ts_us):
        return "offline"                  # the poller gave up on it and it has not answered since
    if last_reading_us is not None or (status is not None and status.online):
        return "online"
    return "never"


@dataclass(frozen=True)
class MeterStatus:
    id: str
    state: str                            # online | offline | never
    last_reading_us: int | None
    offline_since_us: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BusCounters:
    """What only the running gateway knows about a bus: its poll counters since it started."""
    polls: int
    ok: int
    failures: int
    busy_s: float


@dataclass(frozen=True)
class BusStatus:
    id: str
    type: str
    where: str | None
    connected: bool | None                # the bus's own newest status; None: never reported
    meters: tuple[MeterStatus, ...]
    counters: BusCounters | None = None   # None outside the gateway process

    def count(self, state: str) -> int:
        return sum(1 for m in self.meters if m.state == state)

    @property
    def last_reading_us(self) -> int | None:
        return max((m.last_reading_us for m in self.meters if m.last_reading_us is not None), default=None)


@dataclass(frozen=True)
class OutboxStatus:
    depth: int
    bytes: int
    oldest_us: int | None
    last_write_us: int | None             # the last batch InfluxDB accepted
    rejected: int


def outbox_status(db: sqlite3.Connection) -> OutboxStatus:
    depth, size, oldest_ms = db.execute(
        "SELECT count(*), coalesce(sum(length(line)), 0), min(ts_ms) FROM outbox").fetchone()
    last_ok = db.execute("SELECT value FROM meta WHERE key = 'influx_last_ok_us'").fetchone()
    rejected = db.execute("SELECT count(*) FROM outbox_rejected").fetchone()[0]
    return OutboxStatus(depth, size, oldest_ms * 1000 if oldest_ms is not None else None,
                        int(last_ok[0]) if last_ok else None, rejected)


@dataclass(frozen=True)
class DiskStatus:
    path: str
    total: int
    used: int
    free: int

    @property
    def used_share(self) -> float | None:
        return self.used / self.total if self.total else None


def ledger_bytes(path: Path) -> int | None:
    """The database with its write-ahead log and shared-memory index (all of it is on disk)."""
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    return sum(p.stat().st_size for p in files) if path.exists() else None


@dataclass(frozen=True)
class Status:
    site: str
    ledger: str
    schema_version: int | None            # None: no ledger yet
    buses: tuple[BusStatus, ...]
    outbox: OutboxStatus | None           # None: no ledger yet
    influxdb: str | None
    clock: dict
    disk: DiskStatus
    ledger_bytes: int | None
    readings_meters: int = 0
    meters_total: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "meters_total", sum(len(b.meters) for b in self.buses))

    def count(self, state: str) -> int:
        return sum(b.count(state) for b in self.buses)


def _where(b) -> str | None:
    return f"{b.host}:{b.port}" if b.type == "modbus_tcp" else b.port


def bus_statuses(cfg: SiteConfig, db: sqlite3.Connection | None,
                 counters: dict[str, BusCounters] | None = None) -> tuple[BusStatus, ...]:
    """Every bus of the site file with its enabled meters' states: a few index seeks per meter,
    so it costs the same whatever the ledger's size."""
    buses = []
    for b in cfg.buses:
        meters = []
        for m in (m for m in cfg.meters if m.bus == b.id and m.enabled):
            s = device_status(db, m.id) if db is not None else None
            last = last_reading_us(db, m.id) if db is not None else None
            state = meter_state(last, s)
            off = state == "offline"
            meters.append(MeterStatus(m.id, state, last, s.ts_us if off else None, s.reason if off else None))
        bus = device_status(db, b.id) if db is not None else None
        buses.append(BusStatus(b.id, b.type, _where(b), None if bus is None else bus.online, tuple(meters),
                               (counters or {}).get(b.id)))
    return tuple(buses)


def read_status(cfg: SiteConfig, db: sqlite3.Connection | None,
                counters: dict[str, BusCounters] | None = None) -> Status:
    """The status of the site's ledger (and, with `counters`, of the running gateway's buses)."""
    from ..timesync import clock_report

    buses = bus_statuses(cfg, db, counters)
    path = cfg.storage_path
    where = path.parent if path.parent.exists() else Path(".")
    usage = shutil.disk_usage(where)
    return Status(
        site=cfg.site.id, ledger=str(path),
        schema_version=db.execute("PRAGMA user_version").fetchone()[0] if db is not None else None,
        buses=buses, outbox=outbox_status(db) if db is not None else None,
        influxdb=cfg.influxdb.url if cfg.influxdb else None,
        clock=clock_report(db) if db is not None else {"untrusted_now": False, "unrepaired": [], "steps": 0,
                                                       "last_step": None},
        disk=DiskStatus(str(where), usage.total, usage.used, usage.free),
        ledger_bytes=ledger_bytes(path),
        readings_meters=sum(1 for b in buses for m in b.meters if m.last_reading_us is not None))


def alert_counts(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Open alerts by (state, severity)."""
    rows = db.execute("SELECT state, severity, count(*) FROM alerts WHERE state != 'cleared' "
                      "GROUP BY state, severity")
    return {(s, v): n for s, v, n in rows}


# ---- alerts ---------------------------------------------------------------------------------

ALERT_KEYS = ("id", "rule", "kind", "source", "severity", "state", "message", "message_en", "raised_us",
              "updated_us", "acked_by", "ack_note")
HISTORY_KEYS = ("ts_us", "what", "state", "message", "message_en", "id", "severity", "rule", "source", "acked_by")


def open_alerts(db: sqlite3.Connection) -> list[dict]:
    """Alerts not cleared, newest raised first."""
    rows = db.execute(f"SELECT {', '.join(ALERT_KEYS)} FROM alerts WHERE state != 'cleared' "
                      "ORDER BY raised_us DESC")
    return [dict(zip(ALERT_KEYS, r)) for r in rows]


def alert_kind_state(db: sqlite3.Connection, alert_id: str) -> tuple[str, str] | None:
    row = db.execute("SELECT kind, state FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return (row[0], row[1]) if row else None


def alert_history(db: sqlite3.Connection, since_us: int, severity: str = "", rule: str = "", what: str = "",
                  limit: int | None = None, newest_first: bool = True) -> list[dict]:
    """Every change of an alert since `since_us`, optionally of one severity, rule or kind of change."""
    sql = ("SELECT h.ts_us, h.what, h.state, h.message, a.message_en, h.alert_id, a.severity, a.rule, a.source, "
           "a.acked_by FROM alert_history h JOIN alerts a ON a.id = h.alert_id WHERE h.ts_us >= ?")
    args: list = [since_us]
    for col, val in (("a.severity", severity), ("a.rule", rule), ("h.what", what)):
        if val:
            sql += f" AND {col} = ?"
            args.append(val)
    sql += " ORDER BY h.id DESC" if newest_first else " ORDER BY h.id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [dict(zip(HISTORY_KEYS, r)) for r in db.execute(sql, args)]


def alert_changes(db: sqlite3.Connection, alert_id: str) -> list[dict]:
    """One alert's changes, oldest first."""
    sql = ("SELECT h.ts_us, h.what, h.state, h.message, a.message_en, h.alert_id, a.severity, a.rule, a.source, "
           "a.acked_by FROM alert_history h JOIN alerts a ON a.id = h.alert_id WHERE h.alert_id = ? ORDER BY h.id")
    return [dict(zip(HISTORY_KEYS, r)) for r in db.execute(sql, (alert_id,))]


def request_ack(path: Path, alert_id: str, by: str, note: str, ts_us: int) -> None:
    """An acknowledgement asked for outside the gateway's process (the CLI, a console on its
    own): the running gateway applies it within a second (`Ledger.ack_requests`)."""
    db = sqlite3.connect(path, timeout=5)
    try:
        with db:
            db.execute("INSERT INTO ack_requests (alert_id, by, note, ts_us) VALUES (?,?,?,?)",
                       (alert_id, by, note, ts_us))
    finally:
        db.close()


# ---- access and patrol ----------------------------------------------------------------------

SWIPE_KEYS = ("ts_us", "reader", "door", "direction", "card_tail", "category", "holder", "household", "role")


def recent_swipes(db: sqlite3.Connection, door: str = "", category: str = "", limit: int = 200) -> list[dict]:
    """Swipes newest first, filtered by door and category when given."""
    sql = f"SELECT {', '.join(SWIPE_KEYS)} FROM swipes"
    where, args = [], []
    for col, val in (("door", door), ("category", category)):
        if val:
            where.append(f"{col} = ?")
            args.append(val)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = db.execute(sql + " ORDER BY ts_us DESC, id DESC LIMIT ?", (*args, limit))
    return [dict(zip(SWIPE_KEYS, r)) for r in rows]


def door_events_in(db: sqlite3.Connection, start_us: int, end_us: int, states: tuple[str, ...]) -> list[tuple]:
    """(ts_us, door, state, source) of the door events in [start, end] in these states, newest first."""
    marks = ",".join("?" * len(states))
    return db.execute(f"SELECT ts_us, door, state, source FROM door_events WHERE ts_us >= ? AND ts_us <= ? "
                      f"AND state IN ({marks}) ORDER BY ts_us DESC, id DESC", (start_us, end_us, *states)).fetchall()


def patrol_checkins(db: sqlite3.Connection, start_us: int, end_us: int) -> list[tuple]:
    """(ts_us, reader, checkpoint, guard) of the checkins in [start, end), oldest first."""
    return db.execute("SELECT ts_us, reader, checkpoint, guard FROM patrol_checkins WHERE ts_us >= ? AND ts_us < ? "
                      "ORDER BY ts_us, id", (start_us, end_us)).fetchall()


def last_download_us(db: sqlite3.Connection, since_us: int, readers: list[str]) -> int | None:
    """When the newest checkin read since `since_us` from these readers (wands) arrived."""
    marks = ",".join("?" * len(readers))
    return db.execute(f"SELECT max(received_us) FROM patrol_checkins WHERE ts_us >= ? AND reader IN ({marks})",
                      (since_us, *readers)).fetchone()[0]


# ---- clock ----------------------------------------------------------------------------------

EPISODE_TABLES = ("readings", "device_status", "swipes", "door_events", "patrol_checkins", "alert_history")


@dataclass(frozen=True)
class ClockRows:
    """The ledger's clock record: episodes not repaired (with their rows per table and points
    held back), the number of steps seen and the newest (wall_us, step_us)."""
    episodes: list[dict]
    steps: int
    last_step: tuple[int, int] | None


def clock_rows(db: sqlite3.Connection) -> ClockRows:
    """A ledger older than clock safety gives an empty record."""
    try:
        episodes = db.execute(
            "SELECT id, boot, state, reason, wall_us, last_wall_us, after_us, before_us FROM clock_episodes "
            "WHERE state IN ('untrusted', 'unrepairable') ORDER BY id").fetchall()
        steps, last_step = db.execute("SELECT count(*), max(id) FROM clock_steps").fetchone()
        last = db.execute("SELECT wall_us, step_us FROM clock_steps WHERE id = ?", (last_step,)).fetchone()
    except sqlite3.OperationalError:
        return ClockRows([], 0, None)
    out = []
    for eid, boot, state, reason, wall, last_wall, after, before in episodes:
        rows = {t: db.execute(f"SELECT count(*) FROM {t} WHERE episode = ?", (eid,)).fetchone()[0]
                for t in EPISODE_TABLES}
        held = db.execute("SELECT count(*) FROM outbox_held WHERE episode = ?", (eid,)).fetchone()[0]
        out.append({"id": eid, "boot": boot, "state": state, "reason": reason, "wall_us": wall,
                    "last_wall_us": last_wall, "after_us": after, "before_us": before, "rows": rows, "held": held})
    return ClockRows(out, steps, tuple(last) if last else None)


def counter_near(db: sqlite3.Connection, meter: str, ts_us: int, within_us: int) -> tuple[int, str] | None:
    """The energy counter of `meter` nearest to `ts_us` within `within_us` either side (the last
    at or before it if there is one, else the first after): what a savings figure reads at the
    edge of a period (gateway/lighting/savings.py)."""
    before = db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us <= ? AND ts_us >= ? "
                        "ORDER BY ts_us DESC LIMIT 1", (meter, ts_us, ts_us - within_us)).fetchone()
    after = db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us > ? AND ts_us <= ? "
                       "ORDER BY ts_us LIMIT 1", (meter, ts_us, ts_us + within_us)).fetchone()
    if before is None or after is None:
        return before or after
    return before if ts_us - before[0] <= after[0] - ts_us else after
