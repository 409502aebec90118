"""Events that flow through the hub: small, frozen, timezone-aware (UTC)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Mapping


@dataclass(frozen=True, slots=True)
class Reading:
    """One poll of one meter: every field that was read, at one instant.

    `values` holds every field as a float for rules and dashboards; `counters` holds the
    energy counters again as exact decimals (what the meter's registers said, scaled without
    binary rounding) because billing must add them up to the fen.
    """

    meter: str
    ts: datetime
    values: Mapping[str, float]
    counters: Mapping[str, Decimal] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class DeviceStatus:
    """A device (meter, bus, reader) went online or offline."""

    device: str
    kind: str  # "meter" | "bus"
    online: bool
    ts: datetime
    reason: str = ""





@dataclass(frozen=True, slots=True)
class GatewayStats:
    """The gateway's own health, published periodically (self metrics)."""

    ts: datetime
    values: Mapping[str, float | int]
    bus: str = ""  # empty for the gateway as a whole
