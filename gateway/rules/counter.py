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

Meter replacements (`note_replacement(meter, at)`: readings before `at` are the old meter's, from
`at` on the new one's), in either order:
- recorded before the new meter's first reading arrives: the first reading at or after `at`
  starts the counter again (no comparison with the old meter), and clears a backwards / jump
  alert of the meter;
- recorded after (the drop has been seen and maybe alerted): when `at` is after the last
  accepted reading (the old meter's), the latest reading (the new meter's) becomes the accepted
  value and the backwards / jump alert clears ("meter replacement recorded"). Times written by
  people are rough: an open backwards / jump alert is explained by a replacement after the last
  accepted reading even when `at` is later than the drop;
- a replacement at or before the last accepted reading is history and changes nothing (so all
  recorded replacements can be given again after a restart).
After a restart, `warm(meter, ts, value)` gives each meter the last counter in the ledger, and
`restore_alert` takes back the accepted value of an open alert (its `before`).
"""

from __future__ import annotations

from bisect import insort
from datetime import datetime

from ..events import Reading
from .base import Rule, fmt

REPLACEABLE = ("backwards", "jump")   # the alerts a recorded replacement explains


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
        self.last: dict[str, tuple[datetime, float]] = {}      # the last accepted reading
        self.latest: dict[str, tuple[datetime, float]] = {}    # the last reading, accepted or not
        self.jump: dict[str, tuple[datetime, float]] = {}
        self.replaced: dict[str, list[datetime]] = {}         # replacements no reading has reached yet

    def keys(self, event_type):
        return self.meters

    def note_replacement(self, meter: str, at: datetime, now: datetime | None = None) -> None:
        if meter not in self.max_kw:
            return
        prev = self.last.get(meter)
        if prev is not None and at <= prev[0]:
            return                                  # before the last accepted reading: history
        latest = self.latest.get(meter)
        if prev is None or latest is None or latest[0] < at:
            insort(self.replaced.setdefault(meter, []), at)    # the new meter has not been read yet
            a = self.active(meter)
            if prev is None or latest is None or a is None or a.details.get("what") not in REPLACEABLE:
                return
            # A drop (or jump) is alerted and the record's time is after the latest reading: times
            # written by people are rough, the swap explains it all the same.
        self.last[meter] = latest                   # the new meter's reading(s) came already
        self.jump.pop(meter, None)
        self._explained(meter, now or max(at, latest[0]))

    def _explained(self, m: str, at: datetime) -> None:
        a = self.active(m)
        if a is not None and a.details.get("what") in REPLACEABLE:
            self.clear(m, at, "meter replacement recorded")

    # ---- after a restart ---------------------------------------------------------------------
    def warm(self, meter: str, ts: datetime, value: float) -> None:
        """The meter's last counter in the ledger: the next reading is judged against it (unless
        an open alert already said which value is accepted)."""
        if meter in self.max_kw:
            pending = self.jump.get(meter)
            if pending is not None and ts > pending[0]:
                # a reading after the jump was judged live and the jump alert stayed open: the
                # counter really moved (accepted; the alert waits for a person)
                del self.jump[meter]
                self.last[meter] = (ts, value)
            self.last.setdefault(meter, (ts, value))
            if meter not in self.latest or self.latest[meter][0] < ts:
                self.latest[meter] = (ts, value)

    def restore_alert(self, a) -> bool | None:
        m = a.source
        if m not in self.max_kw:
            return None
        what = a.details.get("what")
        try:
            before = (datetime.fromisoformat(a.details["before_ts"]), float(a.details["before"]))
        except (KeyError, TypeError, ValueError):
            before = None
        if what == "backwards" and before is not None:
            self.last[m] = before                   # the accepted value: the alert clears when it is reached again
        elif what == "jump" and before is not None and not a.details.get("accepted"):
            self.last[m] = before
            try:
                self.jump[m] = (a.updated_at, float(a.details["after"]))
            except (KeyError, TypeError, ValueError):
                pass
        return what == "jump"

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
        self.latest[m] = (r.ts, v)
        pending = self.replaced.get(m)
        if pending and r.ts >= pending[0]:
            # the new meter's first reading: its counter starts here, nothing to compare it with
            while pending and pending[0] <= r.ts:
                pending.pop(0)
            if not pending:
                del self.replaced[m]
            self.last[m] = (r.ts, v)
            self.jump.pop(m, None)
            self._explained(m, r.ts)
            return
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
