"""What a monthly allocation produces: plain data that the reports, the ledger, InfluxDB and the
web console read. Money is Decimal yuan; kWh are Decimal; times are timezone-aware local times
of the site unless named `_utc`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal

SLOT_MINUTES = 15
FEN = Decimal("0.01")

# Data-quality kinds, in the order the report lists them.
QUALITY_KINDS = ("no_data", "partial", "carried", "gap", "replacement", "rollover", "rejected_spike", "rejected_low",
                 "restarted", "ignored_jitter", "unallocated")


@dataclass(frozen=True)
class QualityNote:
    """One adjustment the accountant must be able to explain: what, where, when, how much."""

    meter: str
    kind: str               # one of QUALITY_KINDS
    start: datetime         # the span the note concerns (local time)
    end: datetime
    kwh: Decimal | None     # energy estimated / added / rejected; None when it cannot be known
    detail: str             # Chinese, for the report
    detail_en: str


@dataclass
class MeterMonth:
    """One meter's month: consumption, its time-of-use split and its cost (not yet rounded)."""

    meter: str
    name: str
    circuit: str
    building: str | None
    group: str | None                      # allocation group id; None for reference / unallocated
    kwh: Decimal
    estimated_kwh: Decimal                 # part of kwh spread over gaps by interpolation
    kwh_by_period: dict[str, Decimal]      # period name -> kWh (e.g. peak/flat/valley)
    cost: Decimal                          # yuan, exact (unrounded)
    cost_by_period: dict[str, Decimal]
    daily_kwh: list[Decimal]               # one per day of the month
    readings: int                          # readings used (accepted)
    first_counter: Decimal | None          # counter at the start of the month (interpolated) ...
    last_counter: Decimal | None           # ... and at its end, on the meter then installed
    coverage: Decimal = Decimal(1)         # part of the month its counters measure (intervals.py)


@dataclass
class GroupMonth:
    """A set of meters whose cost is shared by a set of households with one key."""

    id: str
    name: str
    scope: str                             # estate | building | unit
    key: str                               # area | household | fixed
    meters: list[str]
    households: list[str]                  # the households that share it (after vacancy rules)
    kwh: Decimal
    metered_cost: Decimal                  # exact, from the meters
    difference_share: Decimal              # its part of bill - metered (exact), 0 without a bill
    amount: Decimal                        # to recover, rounded to the fen (sums exactly over groups)
    daily_kwh: list[Decimal]
    # The fee item it is billed as: the configured group it was expanded from (every building's
    # "stair-B01", "stair-B02" ... is the one item "stair", 楼道照明), one column of the clerk's CSV.
    item: str = ""                         # "" = the group itself
    item_name: str = ""
    vacant: str = "include"                # include | exclude: whether vacant flats share it

    @property
    def fee_item(self) -> str:
        return self.item or self.id

    @property
    def fee_item_name(self) -> str:
        return self.item_name or self.name or self.fee_item


@dataclass
class Household:
    id: str
    building: str
    unit: str
    room: str
    area_m2: Decimal
    occupied: bool


@dataclass
class HouseholdCharge:
    household: Household
    lines: dict[str, Decimal]              # group id -> yuan, to the fen
    total: Decimal


@dataclass
class TariffUse:
    """A tariff period's use over the month (one row of the peak/flat/valley table)."""

    tariff: str                            # tariff name (its validity makes it unique)
    period: str                            # period name, "flat" for a one-price tariff
    price: Decimal                         # yuan per kWh
    kwh: Decimal
    cost: Decimal


@dataclass
class AllocationResult:
    site_id: str
    site_name: str
    month: str                             # "2026-10"
    timezone: str
    start: datetime                        # local midnight of the 1st
    end: datetime                          # local midnight of the next month's 1st
    days: list[date]
    meters: list[MeterMonth]               # allocated and unallocated meters
    reference: list[MeterMonth]            # main_supply meters: shown, never allocated
    groups: list[GroupMonth]
    households: list[HouseholdCharge]
    quality: list[QualityNote]
    tariff_use: list[TariffUse]
    metered_cost: Decimal                  # exact sum over allocated meters
    bill: Decimal | None                   # the utility bill total, if given
    difference: Decimal | None             # bill - metered cost
    difference_rule: str                   # how the difference was spread (config value)
    recovered: Decimal                     # what households pay in all: sum of charges, to the fen
    generated_at: datetime
    notes: list[tuple[str, str]] = field(default_factory=list)   # remarks for the report header: (zh, en)
    # checks that refuse a month, overridden with --allow-partial or --force: (zh, en), shown first
    waived: list[tuple[str, str]] = field(default_factory=list)
    placeholder_tariffs: list[str] = field(default_factory=list)   # tariffs used whose prices are examples

    def note_texts(self, lang: str) -> list[str]:
        return [zh if lang == "zh" else en for zh, en in self.waived + self.notes]



@dataclass
class SignOff:
    by: str
    at: datetime                           # local time of the site


@dataclass
class RunInfo:
    """A run kept in the ledger as its reports show it (gateway/billing/runs.py): prepared (编制)
    when it was made, then reviewed (审核) and approved (批准)."""

    id: int
    state: str                             # prepared | reviewed | approved | superseded
    prepared: SignOff | None               # None: made by a version that did not record who
    reviewed: SignOff | None = None
    approved: SignOff | None = None
    invoice: str | None = None             # the utility bill's number
    bill_period: tuple[date, date] | None = None   # the utility bill's own period (inclusive)
    superseded_by: int | None = None
    answer: bool = False                   # the month's answer now (what InfluxDB and the console show)
