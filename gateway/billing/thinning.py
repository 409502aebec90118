"""What billing asks of the ledger's thinning of energy counters (gateway/ledger/retention.py).

Retention decides which counters of a meter's month it would like to drop; whether that is safe
is billing's question: `thinning_check` reads the month's counters exactly as billing reads them
for the check, and its `exact_without(drop)` says whether billing computes the same month
without them. Retention needs nothing else of billing's internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..config import SiteConfig
from .allocate import BRACKET_US, meter_limits
from .intervals import MeterIntervals, MeterLimits, Replaced, meter_intervals


@dataclass
class ThinningCheck:
    meter: str
    start_us: int
    end_us: int
    tz: ZoneInfo
    points: list[tuple[int, Decimal]]   # (ts_us, counter) in time order, with the bracketing ones outside
    counters: int                        # how many of them lie inside the month
    limits: MeterLimits
    replaced: list[Replaced]

    @property
    def replacements_us(self) -> list[int]:
        return [r.at_us for r in self.replaced]

    def _month(self, points: list[tuple[int, Decimal]]) -> MeterIntervals:
        return meter_intervals(self.meter, points, self.start_us, self.end_us, self.limits, self.tz, self.replaced)

    def exact_without(self, drop: list[int]) -> bool:
        """Whether billing computes the same month (slots, estimates, counters, notes) without
        the counters at the timestamps `drop`."""
        gone = set(drop)
        was = self._month(self.points)
        now = self._month([p for p in self.points if p[0] not in gone])
        return (was.kwh == now.kwh and was.estimated == now.estimated and was.estimated_kwh == now.estimated_kwh
                and was.first_counter == now.first_counter and was.last_counter == now.last_counter
                and was.notes == now.notes)


def thinning_check(reader, cfg: SiteConfig, meter: str, start_us: int, end_us: int, tz: ZoneInfo) -> ThinningCheck:
    """The month [start_us, end_us) of `meter` as billing reads it (allocate.read_meter): its
    counters with the bracketing ones, the meter's limits and its replacements. `reader` has the
    ledger's energy_series, energy_before, energy_after and replacements."""
    m = next((x for x in cfg.meters if x.id == meter), None)
    a = cfg.allocation
    limits = meter_limits(cfg, m) if m is not None else \
        MeterLimits(None, None, a.resolution_kwh, int(a.gap_minutes * 60_000_000))
    series = [(t, Decimal(c)) for t, c in reader.energy_series(meter, start_us, end_us)]
    counters = sum(1 for t, _ in series if t < end_us)
    before = reader.energy_before(meter, start_us, start_us - BRACKET_US)
    after = reader.energy_after(meter, end_us, end_us + BRACKET_US)
    points = ([(before[0], Decimal(before[1]))] if before else []) + series + \
        ([(after[0], Decimal(after[1]))] if after else [])
    replaced = [Replaced(int(r.at.timestamp() * 1_000_000), r.old_final, r.new_initial)
                for r in reader.replacements(meter)]
    return ThinningCheck(meter, start_us, end_us, tz, points, counters, limits, replaced)
