"""The household tables of the reports: one column per fee item, a totals row, and subtotals per
building and per unit. Every figure here is a sum of whole-fen charges, so every row and column
adds up exactly as shown without any rounding of its own.

A fee item is a configured allocation group (楼道照明), whatever it expands into (one group per
building: B01 楼道照明, B02 楼道照明 ...): the billing system has one fee item for it, and the
clerk's CSV one column."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal

from .model import AllocationResult, HouseholdCharge

ZERO = Decimal(0)


@dataclass
class FeeItem:
    id: str
    name: str
    groups: list[str]                      # the result's groups billed as this item


@dataclass
class Subtotal:
    building: str
    unit: str | None                       # None: the building's subtotal
    households: int = 0
    area_m2: Decimal = ZERO
    amount: Decimal = ZERO
    items: list[Decimal] = field(default_factory=list)   # one per fee item

    def add(self, c: HouseholdCharge, items: list[Decimal]) -> None:
        self.households += 1
        self.area_m2 += c.household.area_m2
        self.amount += c.total
        self.items = [a + b for a, b in zip(self.items, items)] if self.items else list(items)


def fee_items(result: AllocationResult) -> list[FeeItem]:
    """In the order of the site file's groups (the difference line, if any, last)."""
    items: dict[str, FeeItem] = {}
    for g in result.groups:
        item = items.setdefault(g.fee_item, FeeItem(g.fee_item, g.fee_item_name, []))
        item.groups.append(g.id)
    return list(items.values())


def item_amounts(c: HouseholdCharge, items: list[FeeItem], item_of: dict[str, int] | None = None) -> list[Decimal]:
    """A household's charge per fee item (0 where it shares none of the item's groups)."""
    if item_of is None:
        item_of = {g: i for i, item in enumerate(items) for g in item.groups}
    out = [ZERO] * len(items)
    for g, amount in c.lines.items():
        out[item_of[g]] += amount
    return out


def subtotals(result: AllocationResult, items: list[FeeItem]) -> tuple[list[Subtotal], Subtotal]:
    """Per building, its units' rows then the building's subtotal (buildings and units in the
    order the households come); and the total row (building "")."""
    item_of = {g: i for i, item in enumerate(items) for g in item.groups}
    buildings: dict[str, dict[str, Subtotal]] = {}
    whole: dict[str, Subtotal] = {}
    total = Subtotal("", None, items=[ZERO] * len(items))
    for c in result.households:
        h = c.household
        amounts = item_amounts(c, items, item_of)
        units = buildings.setdefault(h.building, {})
        units.setdefault(h.unit, Subtotal(h.building, h.unit, items=[ZERO] * len(items))).add(c, amounts)
        whole.setdefault(h.building, Subtotal(h.building, None, items=[ZERO] * len(items))).add(c, amounts)
        total.add(c, amounts)
    rows: list[Subtotal] = []
    for b, units in buildings.items():
        rows += list(units.values())
        rows.append(whole[b])
    return rows, total
