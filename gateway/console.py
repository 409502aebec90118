"""What the terminal shows while the gateway runs in front of a person (the demo)."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from rich.console import Console
from rich.table import Table

from .events import AlertChange, CardSwipe, DoorEvent, PatrolCheckin, Reading
from .runtime import Gateway

CIRCUIT_NAMES = {
    "stairwell_lighting": "楼道照明 stairwell lights", "street_lighting": "路灯 street lights",
    "lift": "电梯 lifts", "pump": "水泵 pumps", "gate": "门岗道闸 gates", "main_supply": "总表 main supply",
    "other": "其他 other",
}


class LiveView:
    """Keeps the latest reading per meter and prints a status line and a closing table."""

    def __init__(self, gw: Gateway, console: Console | None = None):
        self.gw = gw
        self.console = console or Console(stderr=False)
        self.latest: dict[str, Reading] = {}
        self.circuit = {m.id: m.circuit for m in gw.cfg.meters}
        self.swipes: dict[str, int] = defaultdict(int)
        self.doors: dict[str, int] = defaultdict(int)
        self.checkins = 0
        self.alerts: dict[str, object] = {}  # open alerts by id

    async def follow(self, every_s: float = 5.0) -> None:
        sub = self.gw.hub.subscribe(Reading, CardSwipe, DoorEvent, PatrolCheckin, AlertChange, maxlen=10_000,
                                    name="console")
        loop = asyncio.get_running_loop()
        start = loop.time()
        next_line = start + every_s
        try:
            while True:
                try:
                    async with asyncio.timeout(max(0.0, next_line - loop.time())):
                        for e in await sub.get_batch():
                            self._take(e)
                except TimeoutError:
                    pass
                if loop.time() >= next_line:
                    self.console.print(f"[{loop.time() - start:4.0f}s] {self.status_line()}", highlight=False,
                                       soft_wrap=True)
                    next_line += every_s
        finally:
            sub.close()

    def _take(self, e) -> None:
        if isinstance(e, Reading):
            self.latest[e.meter] = e
        elif isinstance(e, CardSwipe):
            self.swipes[e.category] += 1
        elif isinstance(e, DoorEvent):
            self.doors[e.state] += 1
        elif isinstance(e, AlertChange):
            if e.alert.state == "cleared":
                self.alerts.pop(e.alert.id, None)
            else:
                self.alerts[e.alert.id] = e.alert
        else:
            self.checkins += 1

    def _by_circuit(self) -> dict[str, list[Reading]]:
        groups: dict[str, list[Reading]] = defaultdict(list)
        for meter, r in self.latest.items():
            groups[self.circuit.get(meter, "other")].append(r)
        return groups

    def status_line(self) -> str:
        s = self.gw.summary()
        parts = [f"{len(self.latest)}/{s['meters']} meters read, {s['offline']} offline, "
                 f"{s['readings_stored']} readings stored"]
        groups = self._by_circuit()
        for kind in ("main_supply", "street_lighting", "lift"):
            if groups.get(kind):
                kw = sum(r.values.get("power_kw", 0.0) for r in groups[kind])
                parts.append(f"{CIRCUIT_NAMES[kind].split()[0]} {kw:.1f} kW")
        if self.swipes or self.doors or self.checkins:
            odd = sum(n for k, n in self.swipes.items() if k in ("unknown", "revoked", "expired"))
            parts.append(f"门禁 {sum(self.swipes.values())} swipes ({odd} unknown/revoked/expired), "
                         f"{self.doors.get('forced_open', 0) + self.doors.get('held_open', 0)} door alarms")
            parts.append(f"巡更 {self.checkins} check-ins")
        if self.gw.rules is not None:
            parts.append(f"告警 {len(self.alerts)} open alarms")
        return " · ".join(parts)

    def alarm_lines(self, limit: int = 8) -> list[str]:
        alerts = sorted(self.alerts.values(), key=lambda a: ("info", "warning", "critical").index(a.severity),
                        reverse=True)
        return [f"  {a.severity:<8} {a.message}" for a in alerts[:limit]] + (
            [f"  … and {len(alerts) - limit} more"] if len(alerts) > limit else [])

    def table(self) -> Table:
        t = Table(title="公共用电 public-area meters (latest readings)")
        for col, just in (("circuit", "left"), ("meters", "right"), ("power kW", "right"),
                          ("energy kWh (sum of counters)", "right")):
            t.add_column(col, justify=just)
        for kind, readings in sorted(self._by_circuit().items()):
            kw = sum(r.values.get("power_kw", 0.0) for r in readings)
            kwh = sum(r.counters.get("energy_kwh", 0) for r in readings)
            t.add_row(CIRCUIT_NAMES.get(kind, kind), str(len(readings)), f"{kw:.2f}", f"{kwh:,.2f}")
        return t
