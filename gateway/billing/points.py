"""A month's results as InfluxDB points (outbox rows), committed with the allocation run.

- `energy_interval`: kWh per meter per 15-minute slot (time = the slot's start), with the
  slot's tariff period and whether it was estimated over a gap;
- `allocation`: the month per household, per group and for the site (time = the month's start,
  so allocating the month again overwrites the points instead of adding to them);
- `allocation_run`: which run InfluxDB holds for the month and whether it is approved.

A run's points are kept with it in the ledger and queued only when it becomes the month's answer
(gateway/billing/runs.py). Then the answer before it may have had series this one does not (a
household gone, a meter moved to another group): those get zeros at the same times (`zero_row`),
because InfluxDB overwrites a point only with one of the same series and time.
"""

from __future__ import annotations

from typing import Iterator

from ..sinks.lineprotocol import Unwritable, line as point_line
from ..sinks.schema import Refusals
from .model import AllocationResult
from .tariffs import SLOT_US, MonthPlan

PRIORITY_INTERVAL = 5   # shed after alerts: billing evidence
PRIORITY_ALLOCATION = 6
PRIORITIES = {"energy_interval": PRIORITY_INTERVAL, "allocation": PRIORITY_ALLOCATION,
              "allocation_run": PRIORITY_ALLOCATION}


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


# ---- lines read back: what a kept point says -------------------------------------------------------

def _unescaped(text: str, char: str, start: int = 0, end: int | None = None) -> int:
    """Index of the first `char` in text[start:end] not escaped by a backslash, or -1. In names
    and tag values a backslash only ever stands before the character it escapes (line() refuses
    any other), so looking one character back is enough; str.find keeps this cheap for the
    440,000 points of a month."""
    i = text.find(char, start, end)
    while i > 0 and text[i - 1] == "\\":
        i = text.find(char, i + 1, end)
    return i


def _end_of_series(line: str) -> int:
    """Index of the space that ends the measurement and tags."""
    i = _unescaped(line, " ")
    if i < 0:
        raise ValueError(f"not a line-protocol point: {line[:80]!r}")
    return i


def series_key(line: str) -> str:
    """Measurement and tags as written: two points are one series exactly when these are equal
    (line() writes tags sorted and escaped the same way every time)."""
    return line[:_end_of_series(line)]


def measurement_of(line: str) -> str:
    end = _end_of_series(line)
    comma = _unescaped(line, ",", 0, end)
    return line[:comma if comma >= 0 else end].replace("\\,", ",").replace("\\ ", " ")


def split_fields(text: str) -> list[tuple[str, str]]:
    """A field set (`kwh=1.5,period="peak"`) as (key, value text) pairs, escapes kept."""
    out, i, n = [], 0, len(text)
    while i < n:
        j = i
        while text[j] != "=":
            j += 2 if text[j] == "\\" else 1
        k = j + 1
        if k < n and text[k] == '"':
            k += 1
            while text[k] != '"':
                k += 2 if text[k] == "\\" else 1
            k += 1
        else:
            while k < n and text[k] != ",":
                k += 1
        out.append((text[i:j], text[j + 1:k]))
        i = k + 1
    return out


def split_line(line: str) -> tuple[str, list[tuple[str, str]], int]:
    """(series key, fields, timestamp in ms) of one point as line() writes it."""
    end = _end_of_series(line)
    body, _, ts = line[end + 1:].rpartition(" ")
    return line[:end], split_fields(body), int(ts)


def outbox_row(line: str) -> tuple:
    """A kept line as an outbox row (measurement, priority, ts_ms, line, essential)."""
    m = measurement_of(line)
    return m, PRIORITIES.get(m, PRIORITY_ALLOCATION), int(line.rpartition(" ")[2]), line, None


def _zero(value: str) -> str | None:
    if value.startswith('"'):
        return None                      # text (a tariff period) is no amount: left as it was
    if value in ("t", "T", "true", "True", "TRUE", "f", "F", "false", "False", "FALSE"):
        return "false"
    if value.endswith("i"):
        return "0i"
    if value.endswith("u"):
        return "0u"
    return "0"


def zero_row(line: str) -> tuple | None:
    """The point of `line` with every number zero and every flag false, at the same series and
    time (so it overwrites `line` in InfluxDB); None when it has nothing to zero."""
    key, fields, ts = split_line(line)
    body = ",".join(f"{k}={z}" for k, v in fields if (z := _zero(v)) is not None)
    if not body:
        return None
    return outbox_row(f"{key} {body} {ts}")


def state_row(site: str, month: str, start_ms: int, run: int, state: str) -> tuple | None:
    """`allocation_run`: which run the month's points in InfluxDB are, and its state."""
    try:
        text = point_line("allocation_run", {"site": site, "month": month},
                          {"run": run, "approved": state == "approved", "state": state}, start_ms)
    except Unwritable:
        return None
    return "allocation_run", PRIORITY_ALLOCATION, start_ms, text, None
