"""Events that flow through the hub: small, frozen, timezone-aware (UTC)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Mapping


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
    kind: str  # "meter" | "bus" | "reader" (card readers and patrol wands on serial lines)
    online: bool
    ts: datetime
    reason: str = ""





@dataclass(frozen=True, slots=True)
class LightingCommand:
    """A lighting circuit commanded on or off (gateway/lighting/control.py), with who and why.

    `source`: plan | override | emergency | reassert (the module had lost it) | restart (the
    state found at start, adopted without switching). `result`: confirmed (read back as
    written) | unchanged (already so: nothing written) | mismatch (read back otherwise after
    the retries) | no_answer (the module did not answer) | held (not switched: see `detail`)."""

    circuit: str
    ts: datetime
    on: bool
    source: str
    by: str
    reason: str
    result: str
    detail: str = ""
    latency_s: float | None = None     # from the first write to the confirming readback


@dataclass(frozen=True, slots=True)
class GatewayStats:
    """The gateway's own health, published periodically (self metrics)."""

    ts: datetime
    values: Mapping[str, float | int]
    bus: str = ""  # empty for the gateway as a whole


@dataclass(frozen=True, slots=True)
class CardSwipe:
    """A card presented at a reader, classified against the card registry.

    `card` is the canonical number and never leaves the gateway; `card_hash` (keyed) does.
    """

    reader: str
    door: str
    direction: str          # "in" | "out" | ""
    ts: datetime
    card: str = field(repr=False)
    card_hash: str
    category: str           # resident | staff | visitor | unknown | revoked | expired
    holder: str = ""
    household: str = ""
    role: str = ""


@dataclass(frozen=True, slots=True)
class DoorEvent:
    door: str
    state: str              # opened | closed | forced_open | held_open
    ts: datetime
    source: str = ""


@dataclass(frozen=True, slots=True)
class PatrolCheckin:
    """A checkpoint read: `ts` is when the reader recorded it (a wand's own clock), `received`
    when it reached the gateway (a wand download arrives hours later)."""

    reader: str
    checkpoint: str         # checkpoint id, or "" for a tag no checkpoint has
    tag: str
    guard: str              # the guard's name from the registry, or "" if unknown
    guard_hash: str
    ts: datetime
    received: datetime
    source: str             # "online" | "wand"


@dataclass(slots=True)
class Alert:
    id: str
    rule: str
    kind: str
    source: str                 # meter / bus / door / route / reader id (or route@round)
    severity: str               # info | warning | critical
    state: str                  # active | acknowledged | cleared
    message: str                # Chinese, for the guards
    message_en: str
    raised_at: datetime
    updated_at: datetime
    cleared_at: datetime | None = None
    acked_by: str = ""
    ack_note: str = ""
    acked_at: datetime | None = None
    value: float | None = None
    details: dict[str, Any] = field(default_factory=dict)
    revision: int = 0           # changes announced so far: the first (raised) is 1

    @property
    def open(self) -> bool:
        return self.state != "cleared"

    def snapshot(self) -> "Alert":
        """A copy that later changes do not touch (what a subscriber should keep)."""
        return dataclasses.replace(self, details=dict(self.details))


@dataclass(frozen=True, slots=True)
class AlertChange:
    """An alert was raised, updated, acknowledged, cleared or announced again (`what`)."""

    alert: Alert            # a snapshot: later changes do not touch it
    what: str

    @property
    def ts(self) -> datetime:
        return self.alert.updated_at
