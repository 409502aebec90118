"""What the lighting plans saved: each circuit's kWh of a month against its own baseline.

The baseline is the same circuit in the days before its schedule changed (`baseline:` of the
circuit in the site file, e.g. the month before), as kWh per hour of darkness, because nights
grow and shrink between the two periods (sunset to the next sunrise, from astral). What the
month would have taken at the baseline's habits is that rate times the month's hours of
darkness; the saving is that minus what the meters counted. Its money is at the month's tariff,
averaged over the hours of darkness (when street lights burn; a time-of-use tariff prices them
at its evening and night periods): what the households do not pay in the allocation.

Counters are the ledger's exact decimal text; a period whose edge has no counter within
`edge_hours` is not judged (None, with a note).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal

from ..clock import to_us
from ..config import SiteConfig, parse_date_span
from ..ledger.queries import counter_near
from .plan import Planner

EDGE_HOURS = 6


@dataclass(frozen=True)
class CircuitSaving:
    circuit: str
    name: str
    baseline: str                       # the span, as written
    baseline_kwh: Decimal | None
    baseline_dark_h: float
    month_kwh: Decimal | None
    month_dark_h: float
    expected_kwh: Decimal | None
    saved_kwh: Decimal | None
    price: Decimal | None               # yuan per kWh, mean over the month's dark hours
    saved_yuan: Decimal | None
    note: str = ""


def _kwh(db, meters: list[str], start: datetime, end: datetime) -> tuple[Decimal | None, str]:
    total = Decimal(0)
    within = EDGE_HOURS * 3_600_000_000
    for m in meters:
        a = counter_near(db, m, to_us(start), within)
        b = counter_near(db, m, to_us(end), within)
        if a is None or b is None:
            return None, f"no counter of {m} near {(start if a is None else end).isoformat()}"
        diff = Decimal(b[1]) - Decimal(a[1])
        if diff < 0:
            return None, f"the counter of {m} went back (replaced?)"
        total += diff
    return total, ""


def _dark_hours(planner: Planner, first: date, last: date) -> float:
    h, d = 0.0, first
    while d <= last:
        h += planner.night_hours(d)
        d += timedelta(days=1)
    return h


def _dark_price(cfg: SiteConfig, planner: Planner, first: date, last: date) -> Decimal | None:
    """The mean tariff price over the dark minutes of the days (each minute priced by the
    tariff valid on its day)."""
    total, n = Decimal(0), 0
    d = first
    while d <= last:
        tariff = next((t for t in cfg.tariffs if t.valid_from <= d and (t.valid_until is None or d < t.valid_until)),
                      None)
        if tariff is None:
            return None
        owner = tariff.period_of_minute()
        _, set_ = planner.sun.times(d)
        rise, _ = planner.sun.times(d + timedelta(days=1))
        if set_ is not None and rise is not None:
            start = set_.hour * 60 + set_.minute
            end = 24 * 60 + rise.hour * 60 + rise.minute
            for m in range(start, end):
                total += tariff.price_of(owner[m % 1440])
                n += 1
        d += timedelta(days=1)
    return (total / n).quantize(Decimal("0.0001"), ROUND_HALF_UP) if n else None


def month_savings(cfg: SiteConfig, db, month: str, planner: Planner | None = None) -> list[CircuitSaving]:
    """The savings of every lighting circuit with a baseline and meters, for `month` (YYYY-MM)."""
    planner = planner or Planner(cfg)
    tz = planner.tz
    y, m = map(int, month.split("-"))
    first = date(y, m, 1)
    last = (date(y + (m == 12), m % 12 + 1, 1)) - timedelta(days=1)
    start = datetime.combine(first, time(0), tz)
    end = datetime.combine(last + timedelta(days=1), time(0), tz)
    price = _dark_price(cfg, planner, first, last)
    month_dark = _dark_hours(planner, first, last)
    out = []
    for c in cfg.lighting.circuits:
        if c.baseline is None or not c.meters:
            continue
        b0, b1 = parse_date_span(c.baseline)
        base_kwh, note = _kwh(db, c.meters, datetime.combine(b0, time(0), tz),
                              datetime.combine(b1 + timedelta(days=1), time(0), tz))
        base_dark = _dark_hours(planner, b0, b1)
        kwh, note2 = _kwh(db, c.meters, start, end)
        expected = saved = money = None
        if base_kwh is not None and kwh is not None and base_dark > 0:
            expected = (base_kwh / Decimal(repr(base_dark)) * Decimal(repr(month_dark))).quantize(Decimal("0.01"))
            saved = expected - kwh
            money = (saved * price).quantize(Decimal("0.01"), ROUND_HALF_UP) if price is not None else None
        out.append(CircuitSaving(c.id, c.name, c.baseline, base_kwh, round(base_dark, 2), kwh, round(month_dark, 2),
                                 expected, saved, price, money, note or note2))
    return out


def totals(rows: list[CircuitSaving]) -> dict:
    known = [r for r in rows if r.saved_kwh is not None]
    return {"circuits": len(rows), "judged": len(known),
            "saved_kwh": sum((r.saved_kwh for r in known), Decimal(0)),
            "saved_yuan": sum((r.saved_yuan for r in known if r.saved_yuan is not None), Decimal(0))}


def for_report(cfg: SiteConfig, month: str) -> list[CircuitSaving] | None:
    """The rows of the allocation report's lighting section; None when no circuit has a baseline
    (no section) or there is no ledger yet."""
    if not any(c.baseline and c.meters for c in cfg.lighting.circuits):
        return None
    from ..ledger.queries import read_only
    with read_only(cfg.storage_path) as db:
        return month_savings(cfg, db, month) if db is not None else None
