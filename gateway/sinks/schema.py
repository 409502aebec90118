"""Which events become which InfluxDB measurements: the schema, described as data.

Adding a measurement is adding one `Measurement` to MEASUREMENTS: its event type, tags,
fields, the fields that may never be shed, and its shed priority. The README documents the
resulting schema; it is stable once released (dashboards and head office depend on it).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from ..clock import to_us
from ..config import SiteConfig
from ..events import (AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, LightingCommand, PatrolCheckin,
                      Reading)
from .lineprotocol import Unwritable, line

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiteIndex:
    """What tags need to know about the site, looked up once."""

    site: str
    meter_tags: Mapping[str, Mapping[str, str]]

    @classmethod
    def from_config(cls, cfg: SiteConfig) -> "SiteIndex":
        return cls(cfg.site.id, {m.id: {"building": m.building or "", "circuit": m.circuit} for m in cfg.meters})


@dataclass(frozen=True)
class Measurement:
    name: str
    event: type
    tags: Callable[[Any, SiteIndex], Mapping[str, Any]]
    fields: Callable[[Any], Mapping[str, Any]]
    # Shed order when the outbox is over its disk budget: lower goes first.
    priority: int
    # Fields that survive shedding (the point is thinned to these instead of dropped).
    essential: Callable[[Any], Mapping[str, Any]] | None = None


MEASUREMENTS: list[Measurement] = [
    Measurement(
        "meter", Reading,
        tags=lambda e, s: {"site": s.site, "meter": e.meter, **s.meter_tags.get(e.meter, {})},
        fields=lambda e: {**e.values, **e.counters},  # counters overwrite their float twins: exact text
        essential=lambda e: e.counters,
        priority=1,
    ),
    Measurement(
        "device_status", DeviceStatus,
        tags=lambda e, s: {"site": s.site, "device": e.device, "kind": e.kind},
        fields=lambda e: {"online": e.online, "reason": e.reason},
        priority=2,
    ),
    Measurement(
        "access", CardSwipe,
        tags=lambda e, s: {"site": s.site, "reader": e.reader, "door": e.door, "direction": e.direction,
                           "category": e.category},
        # never the card number: its keyed hash, and who holds it where the registry knows
        fields=lambda e: {"card_hash": e.card_hash, "holder": e.holder, "household": e.household, "role": e.role},
        priority=3,
    ),
    Measurement(
        "door", DoorEvent,
        tags=lambda e, s: {"site": s.site, "door": e.door, "state": e.state},
        fields=lambda e: {"event": e.state, "source": e.source},
        priority=3,
    ),
    Measurement(
        "patrol", PatrolCheckin,
        tags=lambda e, s: {"site": s.site, "reader": e.reader, "checkpoint": e.checkpoint, "source": e.source},
        fields=lambda e: {"guard": e.guard, "guard_hash": e.guard_hash, "tag": e.tag,
                          "delay_s": (e.received - e.ts).total_seconds()},
        priority=3,
    ),
    Measurement(
        "alert", AlertChange,
        tags=lambda e, s: {"site": s.site, "rule": e.alert.rule, "kind": e.alert.kind, "source": e.alert.source,
                           "severity": e.alert.severity},
        fields=lambda e: {"id": e.alert.id, "event": e.what, "state": e.alert.state, "message": e.alert.message,
                          "message_en": e.alert.message_en,
                          **({"value": float(e.alert.value)} if e.alert.value is not None else {})},
        priority=4,
    ),
    Measurement(
        "lighting", LightingCommand,
        tags=lambda e, s: {"site": s.site, "circuit": e.circuit, "source": e.source, "result": e.result},
        fields=lambda e: {"on": e.on, "by": e.by, "reason": e.reason, "detail": e.detail,
                          **({"latency_s": float(e.latency_s)} if e.latency_s is not None else {})},
        priority=4,
    ),
    Measurement(
        "gateway", GatewayStats,
        tags=lambda e, s: {"site": s.site, "bus": e.bus},
        fields=lambda e: e.values,
        priority=0,
    ),
]


@dataclass(frozen=True, slots=True)
class OutboxRow:
    measurement: str
    priority: int
    ts_ms: int
    line: str
    essential: str | None


class Refusals:
    """Points that line protocol cannot carry: each distinct reason logged once (bounded), all counted."""

    def __init__(self) -> None:
        self.count = 0
        self._said: set[str] = set()

    def __call__(self, text: str) -> None:
        self.count += 1
        if text not in self._said:
            if len(self._said) >= 1000:
                self._said.clear()
            self._said.add(text)
            log.warning("InfluxDB: %s; the point is not sent (the ledger keeps the event)", text)


class Encoder:
    """Turns an event into its outbox row (line protocol), or None if it has no measurement or
    cannot be written (see lineprotocol.py; logged once per reason)."""

    def __init__(self, index: SiteIndex, measurements: list[Measurement] = MEASUREMENTS):
        self.index = index
        self._by_type = {m.event: m for m in measurements}
        self.refused = Refusals()

    def __call__(self, event: object) -> OutboxRow | None:
        m = self._by_type.get(type(event))
        if m is None:
            return None
        ts_ms = to_us(event.ts) // 1000
        tags = m.tags(event, self.index)
        try:
            full = line(m.name, tags, m.fields(event), ts_ms)
            if full is None:
                return None
            essential = line(m.name, tags, m.essential(event), ts_ms) if m.essential else None
        except Unwritable as e:
            self.refused(f"{m.name} point: {e}")
            return None
        return OutboxRow(m.name, m.priority, ts_ms, full, essential)
