"""The month's 15-minute slots and what each slot's kWh costs.

Slots are 15 minutes of UTC time starting at local midnight of the month's first day, so in
every timezone with a quarter-hour offset they are also aligned to the local clock. Each slot
is priced minute by minute from the tariff valid on that local date and the period of that
local minute; a slot whose minutes fall into two periods (a period boundary off the quarter
hour) is split between them in proportion to its minutes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from ..config import PLAUSIBLE_PRICE_MAX, PLAUSIBLE_PRICE_MIN, Tariff, implausible_price
from .model import SLOT_MINUTES

SLOT_US = SLOT_MINUTES * 60_000_000


class TariffError(ValueError):
    """The site's tariffs do not price the month (one line for a person)."""


@dataclass(frozen=True)
class PriceUse:
    """One price in force: which tariff, which period, how much per kWh."""

    tariff: str
    period: str
    price: Decimal


@dataclass
class MonthPlan:
    month: str
    tz: ZoneInfo
    start: datetime                     # local midnight of the 1st
    end: datetime                       # local midnight of the next month's 1st
    start_us: int
    end_us: int
    days: list[date]
    slot_day: list[int]                 # slot -> index into days
    slot_uses: list[tuple[tuple[int, int], ...]]  # slot -> ((price use index, minutes), ...)
    uses: list[PriceUse]

    @property
    def slots(self) -> int:
        return len(self.slot_day)

    def slot_start(self, i: int) -> datetime:
        return datetime.fromtimestamp((self.start_us + i * SLOT_US) / 1e6, timezone.utc).astimezone(self.tz)


def parse_month(month: str) -> tuple[int, int]:
    try:
        y, m = month.split("-")
        y, m = int(y), int(m)
        if not (1 <= m <= 12 and 2000 <= y <= 2100) or len(month) != 7:
            raise ValueError
        return y, m
    except ValueError:
        raise TariffError(f"month '{month}' is not a month such as 2026-10") from None


def plan_month(month: str, tz_name: str, tariffs: list[Tariff]) -> MonthPlan:
    y, m = parse_month(month)
    tz = ZoneInfo(tz_name)
    start = datetime(y, m, 1, tzinfo=tz)
    end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=tz)
    start_us = int(start.timestamp()) * 1_000_000
    end_us = int(end.timestamp()) * 1_000_000
    days = [start.date() + timedelta(days=k) for k in range((end.date() - start.date()).days)]
    minutes_of = {id(t): t.period_of_minute() for t in tariffs}
    uses: list[PriceUse] = []
    use_index: dict[tuple[int, str], int] = {}
    slot_day: list[int] = []
    slot_uses: list[tuple[tuple[int, int], ...]] = []
    n_slots = (end_us - start_us) // SLOT_US
    day_tariff: dict[date, Tariff] = {}
    for d in days:
        t = next((t for t in tariffs if t.valid_from <= d and (t.valid_until is None or d < t.valid_until)), None)
        if t is None:
            raise TariffError(f"no tariff for {d.isoformat()} in the site file (tariffs: "
                              + (", ".join(f"'{t.name}' {t.valid_from}..{t.valid_until or ''}" for t in tariffs)
                                 or "none") + ")")
        day_tariff[d] = t
    first_day = days[0]
    for i in range(n_slots):
        counts: dict[int, int] = {}
        slot_local = datetime.fromtimestamp((start_us + i * SLOT_US) / 1e6, timezone.utc).astimezone(tz)
        for k in range(SLOT_MINUTES):
            t_local = (slot_local + timedelta(minutes=k)).astimezone(tz)
            tariff = day_tariff[t_local.date()]
            period = minutes_of[id(tariff)][t_local.hour * 60 + t_local.minute]
            key = (id(tariff), period)
            u = use_index.get(key)
            if u is None:
                u = use_index[key] = len(uses)
                uses.append(PriceUse(tariff.name, period, tariff.price_of(period)))
            counts[u] = counts.get(u, 0) + 1
        slot_uses.append(tuple(sorted(counts.items())))
        slot_day.append((slot_local.date() - first_day).days)
    return MonthPlan(month, tz, start, end, start_us, end_us, days, slot_day, slot_uses, uses)


def split_by_minutes(kwh: Decimal, parts: tuple[tuple[int, int], ...]) -> list[tuple[int, Decimal]]:
    """A slot's kWh over its price uses by minutes; the last part takes the remainder, so the
    parts add up to `kwh` exactly."""
    if len(parts) == 1:
        return [(parts[0][0], kwh)]
    out, given = [], Decimal(0)
    for u, minutes in parts[:-1]:
        share = (kwh * minutes / SLOT_MINUTES).quantize(Decimal("1e-9"))
        out.append((u, share))
        given += share
    out.append((parts[-1][0], kwh - given))
    return out


def implausible_prices(plan: MonthPlan) -> list[tuple[str, str]]:
    """(zh, en) for each price in force in the month outside the plausible band (config.py):
    a slipped decimal point would otherwise bill the month a thousand times over."""
    band = f"{PLAUSIBLE_PRICE_MIN}–{PLAUSIBLE_PRICE_MAX}"
    return [(f"电价 '{u.tariff}' {u.period} 时段 {u.price} 元/kWh 不在合理范围 {band} 元/kWh 之内",
             f"tariff '{u.tariff}' ({u.period}) prices a kWh at {u.price} yuan, outside the plausible "
             f"{band} yuan/kWh")
            for u in plan.uses if implausible_price(u.price)]
