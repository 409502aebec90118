"""A month's results as InfluxDB points (outbox rows), committed with the allocation run.

- `energy_interval`: kWh per meter per 15-minute slot (time = the slot's start), with the
  slot's tariff period and whether it was estimated over a gap;
- `allocation`: the month per household, per group and for the site (time = the month's start,
  so allocating the month again overwrites the points instead of adding to them).
"""

from __future__ import annotations

from typing import Iterator

from ..sinks.lineprotocol import Unwritable, line as point_line
from ..sinks.schema import Refusals
from .model import AllocationResult
from .tariffs import SLOT_US, MonthPlan

PRIORITY_INTERVAL = 5   # shed after alerts: billing evidence
PRIORITY_ALLOCATION = 6


def outbox_rows(result: AllocationResult, plan: MonthPlan, intervals: dict, buildings: dict) -> Iterator[tuple]:
    """The rows, one at a time (a month is about 440,000 of them).
    `intervals`: meter -> MeterIntervals; `buildings`: meter -> (building, circuit, group).
    A point whose tags line protocol cannot carry (a household id with a newline) is left out
    (said once)."""
    return (row for row in _rows(result, plan, intervals, buildings, Refusals()) if row[3] is not None)


def _rows(result: AllocationResult, plan: MonthPlan, intervals: dict, buildings: dict, refused) -> Iterator[tuple]:
    def line(measurement: str, tags: dict, fields: dict, ts_ms: int) -> str | None:
        try:
            return point_line(measurement, tags, fields, ts_ms)
        except Unwritable as e:
            refused(f"{measurement} point: {e}")
            return None

    site = result.site_id
    period_of = [plan.uses[max(parts, key=lambda p: p[1])[0]].period for parts in plan.slot_uses]
    for meter, iv in intervals.items():
        building, circuit, group = buildings[meter]
        tags = {"site": site, "meter": meter, "building": building or "", "circuit": circuit, "group": group or ""}
        for i, kwh in enumerate(iv.kwh):
            ts_ms = (plan.start_us + i * SLOT_US) // 1000
            text = line("energy_interval", tags, {"kwh": kwh, "estimated": i in iv.estimated,
                                                  "period": period_of[i]}, ts_ms)
            yield "energy_interval", PRIORITY_INTERVAL, ts_ms, text, None
    ts_ms = plan.start_us // 1000
    month = result.month

    def point(tags: dict, fields: dict) -> tuple:
        return ("allocation", PRIORITY_ALLOCATION, ts_ms,
                line("allocation", {"site": site, "month": month, **tags}, fields, ts_ms), None)

    yield point({"level": "site"}, {"metered_cost": result.metered_cost, "recovered": result.recovered,
                            **({"bill": result.bill, "difference": result.difference} if result.bill is not None else {}),
                            "households": len(result.households), "quality_notes": len(result.quality)})
    for g in result.groups:
        yield point({"level": "group", "group": g.id}, {"kwh": g.kwh, "metered_cost": g.metered_cost, "amount": g.amount,
                                                "households": len(g.households)})
    for c in result.households:
        h = c.household
        yield point({"level": "household", "household": h.id, "building": h.building, "unit": h.unit},
            {"amount": c.total, "area_m2": h.area_m2})
