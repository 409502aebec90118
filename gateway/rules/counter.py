"""Energy counters: backwards without a recorded replacement, or an implausible jump.

Each meter's counter (`field`, exact decimal from Reading.counters when present, else the float)
is compared with the last accepted value:
- lower by more than `resolution_kwh`: "backwards" alert (value = the drop). The accepted value
  is kept, so further lower reads keep the alert; it clears when the counter reaches the accepted
  value again (a glitch) or when a replacement is recorded (`note_replacement`).
- higher by more than max_power_kw × elapsed hours + resolution: "jump" alert. The jumped read is
  not accepted; the next read decides: plausible from the old value -> it was a glitch, clear;
  plausible from the jumped value -> the counter really moved (accept the new value, the alert
  stays until acknowledged, cleared by acknowledgement).
max power: by meter, else by circuit, else `max_power_kw`; none -> jumps are not judged.
"""

from __future__ import annotations

from datetime import datetime

from ..events import Reading
from .base import Rule, fmt


class CounterRuleImpl(Rule):
    kind = "counter"
    wants = (Reading,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.meters = self.select_meters()
        self.field = cfg.field
        self.res = cfg.resolution_kwh
        self.max_kw = {}
        for m in self.meters:
            circuit = site.meters[m].circuit
            self.max_kw[m] = cfg.max_power_kw_by_meter.get(m, cfg.max_power_kw_by_circuit.get(circuit, cfg.max_power_kw))
        self.last: dict[str, tuple[datetime, float]] = {}
        self.jump: dict[str, tuple[datetime, float]] = {}

    def keys(self, event_type):
        return self.meters

    def note_replacement(self, meter: str, at: datetime) -> None:
        self.last.pop(meter, None)
        self.jump.pop(meter, None)
        self.clear(meter, at, "meter replacement recorded")

    def _is(self, meter: str, what: str) -> bool:
        a = self.active(meter)
        return a is not None and a.details.get("what") == what

    def _plausible(self, m: str, t0: datetime, v0: float, t1: datetime, v1: float) -> bool:
        kw = self.max_kw[m]
        if kw is None:
            return True
        hours = max((t1 - t0).total_seconds(), 0.0) / 3600
        return v1 - v0 <= kw * hours + self.res + 1e-9

    def on_event(self, r: Reading) -> None:
        v = r.counters.get(self.field) if r.counters else None
        v = float(v) if v is not None else r.values.get(self.field)
        if v is None:
            return
        m = r.meter
        prev = self.last.get(m)
        if prev is None:
            self.last[m] = (r.ts, v)
            return
        t0, v0 = prev
        name = self.site.meter_name(m)
        if v < v0 - self.res - 1e-9:
            if self._is(m, "backwards"):
                return  # already said; the new counter creeping up is no news for the people on duty
            drop = v0 - v
            self.raise_(m, r.ts, f"{name} 电量读数倒退 {fmt(drop, 'kWh')}（{fmt(v0, 'kWh')} → {fmt(v, 'kWh')}），未登记换表",
                        f"{name} energy counter went backwards by {fmt(drop, 'kWh')} ({v0} -> {v}), no replacement recorded",
                        value=drop, details={"what": "backwards", "meter": m, "before": v0, "after": v,
                                             "before_ts": t0.isoformat()})
            return
        if self._is(m, "backwards"):
            self.clear(m, r.ts, "counter back at its previous value")
        pending = self.jump.pop(m, None)
        if not self._plausible(m, t0, v0, r.ts, v):
            if pending is not None and self._plausible(m, pending[0], pending[1], r.ts, v):
                self.last[m] = (r.ts, v)            # the counter really moved; alert waits for a person
                a = self.active(m)
                if a is not None:
                    a.details["accepted"] = True
                return
            jump = v - v0
            hours = (r.ts - t0).total_seconds() / 3600
            kw = self.max_kw[m]
            self.jump[m] = (r.ts, v)
            self.raise_(m, r.ts, f"{name} 电量跳变 {fmt(jump, 'kWh')}（{hours * 60:.0f} 分钟内，最大功率 {fmt(kw, 'kW')} "
                                 f"最多 {fmt(kw * hours, 'kWh')}）",
                        f"{name} energy counter jumped {fmt(jump, 'kWh')} in {hours * 60:.0f} min "
                        f"(at most {fmt(kw * hours, 'kWh')} at {kw:g} kW)",
                        value=jump, details={"what": "jump", "meter": m, "before": v0, "after": v,
                                             "before_ts": t0.isoformat()}, latching=True)
            return
        if pending is not None and self._is(m, "jump"):
            self.clear(m, r.ts, "the jump was a glitch: the counter continues from before it")
        if v >= v0:                                 # a dip within the resolution keeps the higher value
            self.last[m] = (r.ts, v)
