"""What every rule kind shares: the site as rules see it, and the Rule base class.

After a restart (gateway/rules/restore.py) each open alert goes back to its rule through
`Rule.restore_alert`; rules are given plain data, never the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Iterable
from zoneinfo import ZoneInfo

from .alerts import AlertBook

# Field name -> (Chinese label, English label, unit) for messages.
FIELD_LABELS = {
    "voltage_v": ("电压", "voltage", "V"), "voltage_l1_v": ("A相电压", "L1 voltage", "V"),
    "voltage_l2_v": ("B相电压", "L2 voltage", "V"), "voltage_l3_v": ("C相电压", "L3 voltage", "V"),
    "current_a": ("电流", "current", "A"), "current_l1_a": ("A相电流", "L1 current", "A"),
    "current_l2_a": ("B相电流", "L2 current", "A"), "current_l3_a": ("C相电流", "L3 current", "A"),
    "power_kw": ("有功功率", "power", "kW"), "pf": ("功率因数", "power factor", ""),
    "freq_hz": ("频率", "frequency", "Hz"), "energy_kwh": ("电量", "energy", "kWh"),
}


def label(field_name: str) -> tuple[str, str, str]:
    return FIELD_LABELS.get(field_name, (field_name, field_name, ""))


def fmt(v: float, unit: str = "") -> str:
    text = f"{v:.3f}".rstrip("0").rstrip(".") if abs(v) < 10 else f"{v:.1f}"
    return f"{text} {unit}".rstrip()


@dataclass(frozen=True, slots=True)
class MeterInfo:
    id: str
    name: str
    bus: str
    circuit: str
    building: str | None
    poll_s: float


@dataclass(frozen=True, slots=True)
class RouteInfo:
    id: str
    name: str
    checkpoints: tuple[str, ...]
    legs_min: tuple[float, ...]
    tolerance_min: float
    shifts: tuple[tuple[str, str, int], ...]      # (start HH:MM, end HH:MM, every minutes)


@dataclass
class SiteView:
    """The parts of the site file the rules need (built from a SiteConfig, or by hand in tests)."""
    name: str = ""
    timezone: str = "Asia/Shanghai"
    latitude: float = 44.15
    longitude: float = 125.83
    meters: dict[str, MeterInfo] = field(default_factory=dict)
    doors: dict[str, tuple[str, float]] = field(default_factory=dict)        # id -> (name, held_open_s)
    routes: dict[str, RouteInfo] = field(default_factory=dict)
    checkpoints: dict[str, str] = field(default_factory=dict)                # id -> name
    readers: dict[str, str] = field(default_factory=dict)                    # id -> "mqtt" | "wand"

    def __post_init__(self) -> None:
        self.tz = ZoneInfo(self.timezone)
        self.buses: dict[str, list[str]] = {}
        for m in self.meters.values():
            self.buses.setdefault(m.bus, []).append(m.id)

    @classmethod
    def from_config(cls, cfg: Any) -> "SiteView":
        """From a gateway.config.SiteConfig (duck-typed, so rules never import the loader)."""
        meters = {m.id: MeterInfo(m.id, m.name or m.id, m.bus, m.circuit, m.building, m.poll_s)
                  for m in cfg.meters if getattr(m, "enabled", True)}
        doors = {d.id: (d.name or d.id, d.held_open_s) for d in cfg.doors}
        routes = {r.id: RouteInfo(r.id, r.name or r.id, tuple(r.checkpoints), tuple(r.legs()),
                                  r.tolerance_minutes, tuple((s.start, s.end, s.every_minutes) for s in r.shifts))
                  for r in cfg.patrol.routes}
        return cls(cfg.site.name, cfg.site.timezone, cfg.site.latitude, cfg.site.longitude, meters, doors, routes,
                   {c.id: c.name or c.id for c in cfg.patrol.checkpoints},
                   {r.id: r.type for r in cfg.patrol.readers})

    def meter_name(self, meter: str) -> str:
        m = self.meters.get(meter)
        return m.name if m else meter

    def door_name(self, door: str) -> str:
        d = self.doors.get(door)
        return d[0] if d else door


class Rule:
    """Base of every rule kind. Subclasses set which events they want and for which keys:
    `meters()` (Reading / meter DeviceStatus), `doors()`, and override the on_* handlers."""

    kind = ""
    wants: tuple[type, ...] = ()
    # Judged at once even while the wall clock is untrusted (gateway/timesync.py): rules that need
    # only the event itself (an unknown card, a forced door), which the guards must see at once.
    # The others wait for the clock and judge the held events with their repaired times.
    judged_untrusted = False

    def shift_times(self, repaired) -> None:
        """The clock was repaired: move the times this rule keeps (`repaired(t)` gives the true
        time of a time recorded under the untrusted clock). Only rules judged untrusted keep any."""

    def __init__(self, cfg: Any, site: SiteView, book: AlertBook):
        self.cfg = cfg
        self.id: str = cfg.id
        self.severity: str = cfg.severity
        self.site = site
        self.book = book

    # routing keys; None means "every event of the type"
    def keys(self, event_type: type) -> Iterable[str] | None:
        return None

    def select_meters(self) -> list[str]:
        c = self.cfg
        out = []
        for m in self.site.meters.values():
            if c.meters and m.id not in c.meters:
                continue
            if c.circuits and m.circuit not in c.circuits:
                continue
            if c.buildings and m.building not in c.buildings:
                continue
            out.append(m.id)
        return out

    def select_doors(self) -> list[str]:
        return list(self.cfg.doors) if self.cfg.doors else list(self.site.doors)

    def raise_(self, source: str, at: datetime, message: str, message_en: str, value: float | None = None,
               details: dict | None = None, severity: str | None = None, latching: bool = False):
        return self.book.raise_(self.id, source, kind=self.kind, severity=severity or self.severity, at=at,
                                message=message, message_en=message_en, value=value, details=details,
                                latching=latching)

    def clear(self, source: str, at: datetime, reason: str = ""):
        return self.book.clear(self.id, source, at, reason)

    def active(self, source: str):
        return self.book.get(self.id, source)

    # handlers
    def on_event(self, event: Any) -> None:  # pragma: no cover - overridden
        pass

    def tick(self, now: datetime) -> None:
        pass

    # after a restart
    def restore_alert(self, alert: Any) -> bool | None:
        """Take back an alert of this rule that was open when the gateway stopped (the engine
        puts it in the AlertBook). Returns None when the rule no longer watches its source (the
        engine then clears it), else whether the alert is latching. A rule whose alert would not
        clear by itself sets up here what clearing it needs (the accepted counter, the bus that
        is down, the time of the last case ...)."""
        return False
