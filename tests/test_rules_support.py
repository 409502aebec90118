"""Helpers for the rules tests (a small site, a simulated clock, event builders)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal

from gateway.events import CardSwipe, DeviceStatus, DoorEvent, PatrolCheckin, Reading
from gateway.rules import Engine, SiteView
from gateway.rules.base import MeterInfo, RouteInfo

T0 = datetime(2025, 1, 15, 4, 0, tzinfo=timezone.utc)      # 12:00 in Changchun


def site(n_per_bus: int = 3, buses=("bus-a", "bus-b")) -> SiteView:
    meters = {}
    for b in buses:
        for i in range(n_per_bus):
            mid = f"{b[-1].upper()}{i + 1:02d}"
            meters[mid] = MeterInfo(mid, f"{i + 1}号楼楼道照明" if b == "bus-a" else f"{mid}路灯", b,
                                    "stairwell_lighting" if b == "bus-a" else "street_lighting", f"B{i + 1:02d}", 30.0)
    doors = {"gate-n": ("北门", 60.0), "gate-s": ("南门", 30.0)}
    cps = [f"CP{i:02d}" for i in range(1, 5)]
    routes = {"north": RouteInfo("north", "北环线", tuple(cps), (4.0, 4.0, 4.0), 3.0,
                                 (("20:00", "06:00", 120), ("06:00", "20:00", 240))),
              "wandy": RouteInfo("wandy", "周界线", ("CP11", "CP12", "CP13"), (5.0, 5.0), 3.0,
                                 (("20:00", "06:00", 120), ("06:00", "20:00", 240)))}
    checkpoints = {c: f"{int(c[2:])}号巡更点" for c in cps + ["CP11", "CP12", "CP13"]}
    return SiteView("万户新居", "Asia/Shanghai", 44.15, 125.83, meters, doors, routes, checkpoints,
                    {"pr-1": "mqtt", "pr-2": "mqtt", "wand-1": "wand"})


class Rec:
    def __init__(self):
        self.changes = []

    def __call__(self, alert, what):
        self.changes.append((what, alert.rule, alert.source, alert.snapshot()))

    def whats(self, what=None):
        return [(w, r, s) for w, r, s, _ in self.changes if what is None or w == what]

    def clear(self):
        self.changes.clear()


def engine(rules, s=None):
    rec = Rec()
    return Engine(s or site(), rules, on_change=rec), rec


def reading(meter, ts, counters=None, **values):
    return Reading(meter, ts, values, {k: Decimal(str(v)) for k, v in (counters or {}).items()})


def sec(n: float) -> timedelta:
    return timedelta(seconds=n)


def swipe(door, ts, category="resident", holder="", role="", card_hash="h1"):
    return CardSwipe("r1", door, "in", ts, "0000000001", card_hash, category, holder, "", role)


def door(d, state, ts):
    return DoorEvent(d, state, ts)


def status(device, kind, online, ts, reason=""):
    return DeviceStatus(device, kind, online, ts, reason)


def checkin(reader, cp, ts, received=None, source="online"):
    return PatrolCheckin(reader, cp, "TAG", "张三", "g1", ts, received or ts, source)
