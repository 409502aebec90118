"""Checks of a meter replacement as it is recorded (`gateway meters replace`).

A replacement bridges the old meter's counter to the new one's in every later allocation. A
mistyped final reading (`--old-final 5` on a counter at 10,922) would either count the old
meter's last stretch as nothing or bill kWh the circuit could never have drawn, and nothing
would say so until the month is allocated. So the numbers are held against the counters the
ledger already has around `--at`, with the circuit's maximum power as the limit of what a
meter can have added in the time between.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..clock import from_us, to_us
from ..config import Meter, SiteConfig
from ..ledger import Ledger
from .allocate import meter_limits

HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class Proposed:
    meter: Meter
    at: datetime                  # timezone-aware
    old_final: Decimal
    new_initial: Decimal


def _most(kw: float | None, a_us: int, b_us: int) -> Decimal | None:
    """The most a circuit of `kw` can add to a counter from a_us to b_us, kWh (None: no limit known)."""
    if not kw:
        return None
    return Decimal(repr(kw)) * Decimal(b_us - a_us) / HOUR_US


def replacement_problems(cfg: SiteConfig, ledger: Ledger, r: Proposed, now: datetime) -> list[str]:
    """What is wrong with recording `r`, one line each, with the numbers; [] when it fits."""
    tz = ZoneInfo(cfg.site.timezone)
    at_us = to_us(r.at)

    def when(us: int) -> str:
        return f"{from_us(us).astimezone(tz):%Y-%m-%d %H:%M}"

    mid = r.meter.id
    if r.at > now:
        return [f"--at {r.at.astimezone(tz):%Y-%m-%d %H:%M}: that is in the future"]
    lim = meter_limits(cfg, r.meter)
    res = lim.resolution_kwh
    kw = lim.max_power_kw
    problems = []
    before = ledger.energy_before(mid, at_us, 0)
    if before is None:
        first = ledger.energy_after(mid, at_us, 2 ** 62)
        problems.append(f"--at {when(at_us)}: meter {mid} has no stored reading before it "
                        + (f"(its first is {first[1]} kWh at {when(first[0])})" if first else "(no readings at all)")
                        + ": a replacement before a meter's first reading changes nothing; give the time of the swap")
    else:
        t0, c0 = before[0], Decimal(before[1])
        most = _most(kw, t0, at_us)
        if r.old_final < c0 - res:
            problems.append(f"--old-final {r.old_final} kWh is below the old meter's last stored reading, {c0} kWh "
                            f"at {when(t0)}: a counter does not go back; read the old meter's final figure again")
        elif most is not None and r.old_final > c0 + most + res:
            problems.append(f"--old-final {r.old_final} kWh is {r.old_final - c0} kWh above the old meter's last "
                            f"stored reading, {c0} kWh at {when(t0)}, but its circuit ({kw:g} kW at most) can add "
                            f"at most {most.quantize(Decimal('0.01'))} kWh by {when(at_us)}")
    after = ledger.energy_after(mid, at_us, 2 ** 62)
    if after is not None:
        t1, c1 = after[0], Decimal(after[1])
        most = _most(kw, at_us, t1)
        if r.new_initial > c1 + res:
            problems.append(f"--new-initial {r.new_initial} kWh is above the first reading stored after --at, "
                            f"{c1} kWh at {when(t1)}: the new meter's counter would go back")
        elif most is not None and c1 > r.new_initial + most + res:
            problems.append(f"the first reading stored after --at, {c1} kWh at {when(t1)}, is {c1 - r.new_initial} "
                            f"kWh above --new-initial {r.new_initial}, more than the circuit ({kw:g} kW at most) "
                            f"can use in between ({most.quantize(Decimal('0.01'))} kWh): is that reading the old "
                            f"meter's, i.e. was it swapped later than --at?")
    return problems


def already_recorded(ledger: Ledger, meter: str, at: datetime, tz: ZoneInfo) -> str | None:
    """Why a replacement at `at` cannot be recorded whatever its figures: there is one already
    (--force does not replace it: the ledger keeps one a meter and time)."""
    at_us = to_us(at)
    for old in ledger.replacements(meter):
        if to_us(old.at) == at_us:
            return (f"meter {meter} already has a replacement recorded at {at.astimezone(tz):%Y-%m-%d %H:%M} "
                    f"(old final {old.old_final}, new first {old.new_initial}, by {old.by})")
    return None


def forced_note(note: str, problems: list[str]) -> str:
    """The replacement's note with what --force overrode, so the record says it."""
    said = "recorded with --force: " + "; ".join(problems)
    return f"{note} [{said}]" if note else f"[{said}]"
