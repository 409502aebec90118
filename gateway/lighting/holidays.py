"""Named nights the plans know without being told.

The Spring Festival nights run from the eve (除夕, the day before the first day of the first
lunar month) to the Lantern Festival (元宵, the 15th day): estates keep all lights on. The lunar
new year's Gregorian date follows the published Chinese calendar (no lunar arithmetic here); a
year beyond the table has no built-in Spring Festival: name it in `lighting.holidays`.
"""

from __future__ import annotations

from datetime import date, timedelta

LUNAR_NEW_YEAR = {
    2024: date(2024, 2, 10), 2025: date(2025, 1, 29), 2026: date(2026, 2, 17), 2027: date(2027, 2, 6),
    2028: date(2028, 1, 26), 2029: date(2029, 2, 13), 2030: date(2030, 2, 3), 2031: date(2031, 1, 23),
    2032: date(2032, 2, 11), 2033: date(2033, 1, 31), 2034: date(2034, 2, 19), 2035: date(2035, 2, 8),
    2036: date(2036, 1, 28), 2037: date(2037, 2, 15), 2038: date(2038, 2, 4), 2039: date(2039, 1, 24),
    2040: date(2040, 2, 12),
}


def spring_festival(year: int) -> tuple[date, date] | None:
    """(eve, Lantern Festival) of the lunar new year falling in `year`, both evenings included."""
    first = LUNAR_NEW_YEAR.get(year)
    if first is None:
        return None
    return first - timedelta(days=1), first + timedelta(days=14)


def builtin(name: str, evening: date) -> bool:
    if name == "spring_festival":
        span = spring_festival(evening.year)
        return span is not None and span[0] <= evening <= span[1]
    return False
