"""`gateway replay`: recorded device traffic through the real drivers and rules, simulated time.

The recording (see gateway/recording.py) is fed record by record into the same objects the
running gateway uses — the Modbus scheduler's poll (its requests answered from the recording),
the serial readers' parsers, the MQTT handlers, the card registry and the rules engine — while a
simulated clock stands at each record's time and ticks the rules once per simulated second. Only
the transports are left out, so a day replays in seconds and gives the alerts the gateway gave.

The replay's ledger starts empty, so the rules are restored from nothing (gateway/rules/restore.py)
at the recording's first timestamp: that is when they start "observing", and a patrol round
already under way then is judged only from there (what was due before is unknown, not missed).
"""

from __future__ import annotations

import asyncio
import logging
import tempfile
from collections import deque
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

from .clock import Clock
from .config import SiteConfig
from .drivers.modbus import BadAnswer, BusDown, ExceptionReply, Garbled, NoAnswer
from .events import AlertChange, CardSwipe, DeviceStatus, DoorEvent, PatrolCheckin, Reading
from .mqtt import topic_matches
from .recording import read
from .runtime import Gateway
from .ledger import Ledger

log = logging.getLogger(__name__)

ERRORS = {"NoAnswer": NoAnswer, "Garbled": Garbled, "BadAnswer": BadAnswer, "BusDown": BusDown}


class SimClock(Clock):
    def __init__(self, start: datetime):
        self.t = start

    def now(self) -> datetime:
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()

    async def sleep(self, seconds: float) -> None:
        self.t += timedelta(seconds=max(0.0, seconds))


class _Subscriptions:
    """Stands in for the MQTT link: keeps the handlers the drivers register."""

    connected = True

    def __init__(self) -> None:
        self.handlers: list[tuple[str, Callable]] = []

    def subscribe(self, topic_filter: str, handler, qos=None) -> None:
        self.handlers.append((topic_filter, handler))

    async def publish(self, *args, **kwargs) -> bool:
        return True


def _scripted(script: deque):
    async def read_registers(unit, req, timeout):
        if not script:
            raise NoAnswer("not in the recording")
        x = script.popleft()
        if "error" in x:
            if x["error"] == "ExceptionReply":
                raise ExceptionReply(int(x.get("code", 0)))
            raise ERRORS.get(x["error"], Garbled)(x.get("detail", x["error"]))
        return x["regs"]
    return read_registers


async def replay(cfg: SiteConfig, recording: Path, speed: float | None = None, tail_s: float = 0.0,
                 on_alert: Callable[[AlertChange], None] | None = None) -> list[AlertChange]:
    """Replay a recording; returns every alert change, in order. `speed` None = as fast as possible."""
    records = read(recording)
    header = next(records, None)
    if not header or header.get("type") != "header":
        raise ValueError(f"{recording}: not a gateway recording (no header line)")
    clock = SimClock(datetime.fromtimestamp(header["t"], timezone.utc))
    data = cfg.model_dump(mode="json")
    tmp = tempfile.TemporaryDirectory(prefix="gateway-replay-")
    data["storage"]["path"] = str(Path(tmp.name) / "replay.db")
    data.pop("influxdb", None)
    from .config import parse_site
    gw = Gateway(parse_site(data, base_dir=cfg.base_dir), clock=clock)
    gw.ledger = Ledger(gw.cfg.storage_path)
    gw.mqtt = _Subscriptions()
    gw._field_devices()
    gw._alerting()
    engine = gw.rules
    if engine is None:
        raise ValueError("the site file has no rules: nothing to replay into")
    gw.restore_rules(clock.t)
    feed_events = gw.hub.subscribe(Reading, DeviceStatus, CardSwipe, DoorEvent, PatrolCheckin, name="replay")
    alerts_sub = gw.hub.subscribe(AlertChange, name="replay alerts")
    changes: list[AlertChange] = []
    meters = {st.meter.id: (bus, st) for bus in gw.buses for st in bus.meters}
    scripts = {}
    for bus in gw.buses:
        scripts[bus.bus.id] = deque()
        bus.read_registers = _scripted(scripts[bus.bus.id])
    serial = {d.cfg.id: d for d in gw.field_drivers if hasattr(d, "feed")}
    skipped = 0

    def drain() -> None:
        for e in feed_events.take_all():
            engine.handle(e)
        for c in alerts_sub.take_all():
            changes.append(c)
            if on_alert:
                on_alert(c)

    next_tick = clock.t.replace(microsecond=0) + timedelta(seconds=1)

    def advance(to: datetime) -> None:
        nonlocal next_tick
        while next_tick <= to:
            clock.t = next_tick
            drain()
            engine.tick(next_tick)
            drain()
            next_tick += timedelta(seconds=1)
        clock.t = max(clock.t, to)

    last_real, last_sim = None, None
    try:
        for rec in records:
            kind = rec.get("type")
            if kind == "bad" or "t" not in rec:
                skipped += 1
                continue
            t = datetime.fromtimestamp(rec["t"], timezone.utc)
            if speed:
                loop = asyncio.get_running_loop()
                if last_real is not None:
                    wait = (t - last_sim).total_seconds() / speed - (loop.time() - last_real)
                    if wait > 0:
                        await asyncio.sleep(wait)
                last_real, last_sim = loop.time(), t
            advance(t)
            if kind == "poll":
                found = meters.get(rec.get("meter"))
                if found is None:
                    skipped += 1
                    continue
                bus, st = found
                scripts[bus.bus.id].clear()
                scripts[bus.bus.id].extend(rec.get("exchanges", []))
                await bus.poll(st)
            elif kind == "serial":
                driver = serial.get(rec.get("device"))
                if driver is None:
                    skipped += 1
                    continue
                driver.feed(bytes.fromhex(rec["data"]), t)
            elif kind == "mqtt":
                payload = (rec["payload"].encode() if "payload" in rec else bytes.fromhex(rec.get("payload_hex", "")))
                handled = False
                for topic_filter, handler in gw.mqtt.handlers:
                    if topic_matches(topic_filter, rec["topic"]):
                        handler(rec["topic"], payload, t)
                        handled = True
                skipped += not handled
            elif kind == "ack":
                alert = engine.book.get(rec.get("rule", ""), rec.get("source", ""))
                if alert is None or engine.ack(alert.id, rec.get("by", ""), rec.get("note", ""), t) is None:
                    log.warning("replay: acknowledgement at %s of %s/%s: no such open alert", t.isoformat(),
                                rec.get("rule"), rec.get("source"))
                    skipped += 1
            elif kind == "replacement":
                engine.note_replacement(rec["meter"], datetime.fromtimestamp(rec["at"], timezone.utc), t)
            else:
                skipped += 1
            drain()
        advance(clock.t + timedelta(seconds=tail_s))
    finally:
        gw.ledger.close()
        tmp.cleanup()
    if skipped:
        log.warning("replay: %d records skipped (unknown meters, devices or topics, or not JSON)", skipped)
    return changes
