"""The figures a report shows: every amount and kWh rounded to 0.01 so that rows and columns add
up exactly as printed (an accountant checks a sheet by adding what it shows).

- The billed meters' kWh and costs are rounded together (largest remainder), so they add up to the
  month's allocated kWh and metered cost rounded; a period's kWh of a meter add up to its kWh.
- A group shows the kWh and cost of its meters as shown; its amount is what its households pay
  (already whole fen); its difference share is amount − metered cost as shown, so that column takes
  the rounding (the exact share differs from it by less than a fen per group).
- The summary's difference is the bill − the metered cost as shown; the tariff table's kWh and
  costs are rounded together to the same totals.
- Meters not billed (unallocated, main supply) are rounded each on its own; counters likewise.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from typing import Sequence

from .model import FEN, AllocationResult
from .shares import round_to_total, to_fen

ZERO = Decimal(0)


def fen(d: Decimal) -> Decimal:
    """One figure to 0.01, half up (the way the bill is rounded)."""
    return d.quantize(FEN, rounding=ROUND_HALF_UP)


def together(values: Sequence[Decimal], total: Decimal | None = None) -> list[Decimal]:
    """Values to 0.01, each rounded down or up, adding up to `total` (default: their exact sum
    rounded half up)."""
    exact = [Fraction(v) * 100 for v in values]
    target = to_fen(sum(values, ZERO)) if total is None else to_fen(total)
    return [Decimal(x) * FEN for x in round_to_total(exact, target)]


@dataclass
class MeterShown:
    kwh: Decimal
    estimated_kwh: Decimal
    kwh_by_period: list[Decimal]        # in the order of the report's periods
    cost: Decimal
    first_counter: Decimal | None
    last_counter: Decimal | None


@dataclass
class GroupShown:
    kwh: Decimal
    metered_cost: Decimal
    difference_share: Decimal           # amount − metered_cost: takes the rounding
    amount: Decimal


@dataclass
class Shown:
    meters: dict[str, MeterShown]       # every meter, reference ones too
    groups: dict[str, GroupShown]
    tariff: list[tuple[Decimal, Decimal]]   # (kWh, cost) per result.tariff_use row
    allocated_kwh: Decimal
    metered_cost: Decimal               # the billed meters' cost as shown, added up
    difference: Decimal | None          # bill − metered_cost


def shown(result: AllocationResult, periods: Sequence[str]) -> Shown:
    billed = [m for m in result.meters if m.group is not None]
    kwh = dict(zip((m.meter for m in billed), together([m.kwh for m in billed])))
    cost = dict(zip((m.meter for m in billed), together([m.cost for m in billed])))
    meters: dict[str, MeterShown] = {}
    for m in result.meters + result.reference:
        k = kwh.get(m.meter, fen(m.kwh))
        meters[m.meter] = MeterShown(
            k, fen(m.estimated_kwh), together([m.kwh_by_period.get(p, ZERO) for p in periods], k),
            cost.get(m.meter, fen(m.cost)),
            None if m.first_counter is None else fen(m.first_counter),
            None if m.last_counter is None else fen(m.last_counter))
    groups = {}
    for g in result.groups:
        g_kwh = sum((meters[x].kwh for x in g.meters), ZERO)
        g_cost = sum((meters[x].cost for x in g.meters), ZERO)
        groups[g.id] = GroupShown(g_kwh, g_cost, g.amount - g_cost, g.amount)
    allocated = sum((g.kwh for g in groups.values()), ZERO)
    metered = sum((g.metered_cost for g in groups.values()), ZERO)
    use = result.tariff_use
    tariff = list(zip(together([u.kwh for u in use], allocated) if use else [],
                      together([u.cost for u in use], metered) if use else []))
    return Shown(meters, groups, tariff, allocated, metered,
                 None if result.bill is None else result.bill - metered)
