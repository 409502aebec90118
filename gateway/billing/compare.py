"""This month against last month, per group and per household, before the bills go out.

Last month is its answer in the ledger: the approved run, else the newest (said as a draft). A
group or household whose amount moved by more than `allocation.change_band` (±30 % by default)
of last month's is flagged, and so is one that is new or gone (nothing to compare it with).
Groups are compared by their id (`stair-B01`), households by theirs."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal

from .model import AllocationResult

ZERO = Decimal(0)


@dataclass
class Change:
    key: str                               # group or household id
    name: str
    last: Decimal | None                   # None: not there last month
    this: Decimal | None                   # None: not there this month
    flagged: bool

    @property
    def delta(self) -> Decimal:
        return (self.this or ZERO) - (self.last or ZERO)

    @property
    def ratio(self) -> Decimal | None:
        """this ÷ last − 1, or None when last month had nothing to divide by."""
        if not self.last or self.this is None:
            return None
        return self.this / self.last - 1


@dataclass
class Comparison:
    month: str                             # last month, "2026-09"
    run: int | None                        # its run compared with; None: no run of it in the ledger
    approved: bool
    band: Decimal
    groups: list[Change] = field(default_factory=list)
    households: list[Change] = field(default_factory=list)

    @property
    def flagged_groups(self) -> list[Change]:
        return [c for c in self.groups if c.flagged]

    @property
    def flagged_households(self) -> list[Change]:
        return [c for c in self.households if c.flagged]


def previous_month(month: str) -> str:
    y, m = (int(x) for x in month.split("-"))
    return f"{y - 1}-12" if m == 1 else f"{y}-{m - 1:02d}"


def flag(last: Decimal | None, this: Decimal | None, band: Decimal) -> bool:
    if last is None or this is None:
        return (last or this or ZERO) != 0          # new or gone: flagged unless it is nothing either way
    if last == 0:
        return this != 0
    return abs(this - last) > band * abs(last)


def changes(last: dict[str, Decimal], this: dict[str, Decimal], names: dict[str, str], band: Decimal) -> list[Change]:
    keys = list(this) + sorted(k for k in last if k not in this)
    return [Change(k, names.get(k, k), last.get(k), this.get(k), flag(last.get(k), this.get(k), band)) for k in keys]


def compare(result: AllocationResult, band: Decimal, month: str, run: int | None, approved: bool, summary: str | None,
            charges: list[tuple[str, str, str]]) -> Comparison:
    """`result` against last month's run: its summary JSON (as kept in the ledger) and its charges
    (household, group, amount)."""
    out = Comparison(month, run, approved, band)
    if run is None:
        return out
    try:
        groups = json.loads(summary or "{}").get("groups", [])
    except ValueError:
        groups = []
    last_groups = {g["id"]: Decimal(g["amount"]) for g in groups if isinstance(g, dict) and "id" in g}
    names = {g["id"]: g.get("name") or g["id"] for g in groups if isinstance(g, dict) and "id" in g}
    names.update({g.id: g.name or g.id for g in result.groups})
    out.groups = changes(last_groups, {g.id: g.amount for g in result.groups}, names, band)
    last_homes: dict[str, Decimal] = {}
    for h, _, amount in charges:
        last_homes[h] = last_homes.get(h, ZERO) + Decimal(amount)
    # a household charged nothing last month has no charge lines: it paid 0, it is not new
    this_homes = {c.household.id: c.total for c in result.households}
    last_homes = {**{h: ZERO for h in this_homes}, **last_homes}
    out.households = changes(last_homes, this_homes, {}, band)
    return out
