"""A deterministic month of ledger readings for a site: test and demo data for the monthly allocation.

Every enabled meter gets a reading every `every_s` seconds, written straight into the SQLite
ledger (the gateway's own schema) instead of being polled over Modbus, so a whole month of the
reference site (145 meters, about 6.5 million rows at 60 s) takes well under a minute. Power
follows the circuit profiles of `profiles.py` (the same per-meter seeds as the live simulator);
the energy counter is the integral of that power, kept in exact hundredths of a kWh.

Known faults are planted (a gap, a meter replacement, a counter spike, a rollover) and listed in
the summary with each meter's true consumption, so the allocation's handling of them can be
checked against the truth. On request, meters fall silent for a given span (`silent`: no readings,
the counter keeps counting), and a month can follow the one generated before it into the same
ledger (`follow`: every counter goes on from where it was), so a silence across a month's end can
be checked over both months.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import random
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import ROUND_FLOOR, Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.config import Meter, SiteConfig
from gateway.ledger import Ledger, Replacement

from .profiles import Profile
from .site import meter_seed

FIELDS = ("voltage_v", "current_a", "power_kw", "energy_kwh")
LINE_LOSSES = 0.035      # the main meter also sees the losses of the estate's own cables
SPIKE_CENTS = 500_000    # +5000 kWh: far beyond what any circuit can draw between two readings
GAP_HOURS = 6


@dataclass(frozen=True)
class Fault:
    meter: str
    kind: str                # gap | replacement | spike | rollover | silent
    when: datetime | None    # UTC: gap start, replacement instant, spiked reading, first wrapped reading
    detail: str


@dataclass
class MonthSummary:
    month: str
    seed: int
    every_s: int
    rows: int
    meters: int
    start_utc: datetime          # first reading (local month start - margin)
    end_utc: datetime            # last reading (local month end + margin), inclusive
    month_start_utc: datetime    # local midnight of the 1st
    month_end_utc: datetime      # local midnight of the next month's 1st
    seconds: float
    faults: list[Fault] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)          # fault kind -> why it was not planted
    consumption_kwh: dict[str, Decimal] = field(default_factory=dict)  # meter -> true kWh of the month
    # meter -> its counter at end_utc in hundredths of a kWh, unrounded: where a following month goes on
    end_counters: dict[str, float] = field(default_factory=dict)

    def line(self) -> str:
        return (f"{self.month}: {self.rows} readings of {self.meters} meters every {self.every_s} s, "
                f"{self.start_utc:%Y-%m-%dT%H:%MZ} .. {self.end_utc:%Y-%m-%dT%H:%MZ}, "
                f"{len(self.faults)} faults, {self.seconds:.1f} s")


def month_bounds(month: str, tz: ZoneInfo) -> tuple[datetime, datetime]:
    """UTC instants of local midnight on the 1st of `month` ("2026-10") and of the next month."""
    try:
        year, mon = (int(x) for x in month.split("-"))
        first = datetime(year, mon, 1, tzinfo=tz)
    except ValueError:
        raise ValueError(f"month '{month}' is not YYYY-MM") from None
    nxt = datetime(year + mon // 12, mon % 12 + 1, 1, tzinfo=tz)
    return first.astimezone(timezone.utc), nxt.astimezone(timezone.utc)


def _cents_text(c: int) -> str:
    return "%d.%02d" % divmod(c, 100)


def _kwh(cents: int) -> Decimal:
    return Decimal(cents).scaleb(-2)


@dataclass
class _Plan:
    """What happens to one meter's series besides plain integration."""

    gap: tuple[int, int] | None = None       # sample indexes [a, b) with no reading
    replaced_at: int | None = None           # sample index from which the new meter reads
    spike_at: int | None = None
    wrap_cents: int | None = None            # counter maximum, in cents


def _choose_faults(rng: random.Random, subs: list[Meter], meters: list[Meter], k_of, tz: ZoneInfo,
                   year: int, mon: int, every_s: int, summary: MonthSummary, following: bool) -> dict[str, _Plan]:
    """Pick the faulty meters and moments from the seed; distinct meters so each fault stands alone."""
    plans: dict[str, _Plan] = {}
    used: set[str] = set()

    def pick(kind: str, candidates: list[Meter], why_none: str) -> Meter | None:
        free = [m for m in candidates if m.id not in used]
        if not free:
            summary.skipped[kind] = why_none
            return None
        m = rng.choice(free)
        used.add(m.id)
        return m

    # rollover first: it is the only fault that needs a particular kind of meter config
    if following:
        summary.skipped["rollover"] = "the counters go on from the month before"
        m = None
    else:
        m = pick("rollover", [m for m in meters if m.counter_max_kwh is not None], "no meter has counter_max_kwh")
    if m is not None:
        plans[m.id] = _Plan(wrap_cents=int((m.counter_max_kwh * 100).to_integral_value(ROUND_FLOOR)))

    m = pick("replacement", [m for m in subs if m.circuit == "stairwell_lighting"], "no stairwell meter")
    if m is not None:
        at = datetime(year, mon, 15, 10, tzinfo=tz)
        plans[m.id] = _Plan(replaced_at=k_of(at))

    m = pick("gap", subs, "no meter left for a gap")
    if m is not None:
        a = datetime(year, mon, 9, rng.randrange(0, 24 - GAP_HOURS), tzinfo=tz)
        plans[m.id] = _Plan(gap=(k_of(a), k_of(a + timedelta(hours=GAP_HOURS))))
        summary.faults.append(Fault(m.id, "gap", a.astimezone(timezone.utc),
                                    f"no readings {a:%Y-%m-%d %H:%M}–{a + timedelta(hours=GAP_HOURS):%H:%M} local"))

    m = pick("spike", subs, "no meter left for a spike")
    if m is not None:
        k = k_of(datetime(year, mon, 20, tzinfo=tz)) + rng.randrange(24 * 3600 // every_s)
        plans[m.id] = _Plan(spike_at=k)
    return plans


def generate_month(cfg: SiteConfig, db_path: Path, month: str = "2026-10", seed: int = 1,
                   every_s: int = 60, faults: bool = True, margin_h: int = 2,
                   silent: dict[str, tuple[datetime, datetime]] | None = None,
                   follow: MonthSummary | None = None) -> MonthSummary:
    """Write a month of readings of every enabled meter of `cfg` into the ledger at `db_path`.

    `silent`: meter -> [from, until) in UTC with no readings (the meter still uses energy).
    `follow`: the summary of the month generated before into the same ledger, which must end
    at or before this month's start (margin_h=0): the readings go on from its last instant with
    its counters (that instant itself is not written again; no rollover is planted)."""
    began = time.perf_counter()
    if every_s <= 0 or 3600 % every_s:
        raise ValueError(f"every_s must divide an hour (60, 300, 900 ...), not {every_s}")
    if margin_h < 0:
        raise ValueError(f"margin_h cannot be negative ({margin_h})")
    tz = ZoneInfo(cfg.site.timezone)
    month_start, month_end = month_bounds(month, tz)
    start, end = month_start - timedelta(hours=margin_h), month_end + timedelta(hours=margin_h)
    if follow is not None:
        if follow.every_s != every_s or not follow.end_utc <= month_start < month_end:
            raise ValueError(f"{month} cannot follow {follow.month}: it must end by this month's start "
                             f"(margin_h=0) with readings every {every_s} s")
        start = follow.end_utc
    start_s, end_s = int(start.timestamp()), int(end.timestamp())
    times = range(start_s, end_s + 1, every_s)

    def k_of(local: datetime) -> int:
        # every planted instant is a whole local hour, on the reading grid for every_s | 3600
        offset = int(local.timestamp()) - start_s
        if offset % every_s:
            raise ValueError(f"{local} is not on the reading grid (every {every_s} s from {start})")
        return offset // every_s

    k_ms, k_me = k_of(month_start), k_of(month_end)
    meters = [m for m in cfg.meters if m.enabled]
    subs = [m for m in meters if m.circuit != "main_supply"]
    mains = [m for m in meters if m.circuit == "main_supply"]
    summary = MonthSummary(month, seed, every_s, 0, len(meters), start, end, month_start, month_end, 0.0)

    rng = random.Random(seed)
    # drawn before the faults, so a run without faults has the same counters and voltages
    start_cents: dict[str, float] = {m.id: rng.randrange(100_000, 6_000_000) for m in meters}
    if follow is not None:
        start_cents = {m.id: follow.end_counters[m.id] for m in meters}
    volt_seed = {m.id: rng.getrandbits(64) for m in meters}
    year, mon = (int(x) for x in month.split("-"))
    plans = _choose_faults(rng, subs, meters, k_of, tz, year, mon, every_s, summary,
                           follow is not None) if faults else {}
    for mid, (a, b) in (silent or {}).items():
        summary.faults.append(Fault(mid, "silent", a, f"no readings {a:%Y-%m-%d %H:%M}–{b:%Y-%m-%d %H:%M} UTC"))

    ledger = Ledger(Path(db_path))
    first_us = start_s * 1_000_000 + (1 if follow is not None else 0)   # a follower's first instant is written
    for m in meters:  # refuse to mix two runs: the counters would jump between them
        if ledger.has_readings(m.id, first_us, end_s * 1_000_000):
            ledger.close()
            raise ValueError(f"{db_path} already has readings of {m.id} between {start} and {end}; "
                             f"use a new ledger file")
    site = cfg.site
    total = [0.0] * len(times)  # all sub-meters' power at each instant, for the main meter
    jobs = [(m.circuit, meter_seed(seed, m.id), site.timezone, site.latitude, site.longitude, times,
             m.max_power_kw) for m in subs]
    # The profiles are half the work: other processes compute them while this one writes rows.
    workers = max(1, min(4, (os.cpu_count() or 2) - 1))
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            series = pool.map(_power_series, *zip(*jobs)) if jobs else iter(())
            for m in [*subs, *mains]:
                if m.circuit == "main_supply":
                    power = [p * (1.0 + LINE_LOSSES) for p in total]
                else:
                    power = next(series)
                    total = [a + b for a, b in zip(total, power)]
                summary.rows += _write_meter(ledger, m, times, power, start_cents[m.id], volt_seed[m.id],
                                             cfg.models[m.model].phases, every_s, plans.get(m.id, _Plan()),
                                             k_ms, k_me, summary, (silent or {}).get(m.id), follow is not None)
        ledger.catch_up()      # into the per-meter form now: the month is read at once
    finally:
        ledger.close()
    summary.faults.sort(key=lambda f: (f.when or end, f.kind))
    summary.seconds = time.perf_counter() - began
    return summary


def _power_series(circuit: str, seed: int, tz: str, latitude: float, longitude: float, times: range,
                  max_power_kw: float | None) -> list[float]:
    """One sub-meter's power (kW) at each reading time, from its circuit's daily profile."""
    prof = Profile.for_circuit(circuit, seed, tz=tz, latitude=latitude, longitude=longitude)
    power = [prof.power_kw(t) for t in times]
    if max_power_kw is not None:  # the allocation would reject more than that as a spike
        power = [min(p, max_power_kw) for p in power]
    return power


def _write_meter(ledger: Ledger, m: Meter, times: range, power: list[float], start: float,
                 volt_seed: int, phases: int, every_s: int, plan: _Plan, k_ms: int, k_me: int,
                 summary: MonthSummary, silent: tuple[datetime, datetime] | None, following: bool) -> int:
    # energy up to each reading (left rectangle rule, in cents): power holds until the next reading
    per_step = every_s / 36.0  # kW over every_s seconds -> hundredths of a kWh
    acc = list(itertools.accumulate((p * per_step for p in power[:-1]), initial=0.0))
    utc = lambda k: datetime.fromtimestamp(times[k], timezone.utc)  # noqa: E731

    if plan.wrap_cents is not None:
        # 30 kWh below the maximum at the month's start, so the wrap falls inside the month
        start = max(0, plan.wrap_cents - 3000 - int(acc[k_ms]))
    unwrapped = [int(start + a) for a in acc]  # floor: the counter shows whole hundredths
    counters = unwrapped
    shown_end = start + acc[-1]                 # the counter at the last instant, before the floor
    if plan.wrap_cents is not None:
        w = plan.wrap_cents
        counters = [c % w for c in unwrapped]
        shown_end %= w
        k = next((k for k in range(1, len(counters)) if counters[k] < counters[k - 1]), None)
        summary.faults.append(Fault(
            m.id, "rollover", None if k is None else utc(k),
            f"counter max {_cents_text(w)}: {_cents_text(counters[k - 1])} -> {_cents_text(counters[k])}"
            if k is not None else f"counter max {_cents_text(w)}: did not wrap (too little use)"))
    true_cents = unwrapped[k_me] - unwrapped[k_ms]

    replacement = None
    if plan.replaced_at is not None:
        k = plan.replaced_at
        old_final = unwrapped[k]  # the old meter's counter at the replacement instant
        counters = counters[:k] + [int(a - acc[k]) for a in acc[k:]]  # the new meter starts at 0.00
        shown_end = acc[-1] - acc[k]
        true_cents = (old_final - counters[k_ms]) + counters[k_me]
        at = utc(k)
        replacement = Replacement(m.id, at, _kwh(old_final), Decimal("0.00"), by="demo", note="generated",
                                  recorded=at)
        summary.faults.append(Fault(m.id, "replacement", at,
                                    f"old meter's final {_cents_text(old_final)}, new meter's first 0.00"))
    if plan.spike_at is not None:
        k = plan.spike_at
        counters = list(counters)
        counters[k] += SPIKE_CENTS
        summary.faults.append(Fault(m.id, "spike", utc(k),
                                    f"one reading {_cents_text(counters[k])} instead of "
                                    f"{_cents_text(counters[k] - SPIKE_CENTS)} (+5000 kWh)"))
    summary.consumption_kwh[m.id] = _kwh(true_cents)
    summary.end_counters[m.id] = shown_end

    vrnd = random.Random(volt_seed).random
    amps_per_kw = 1000.0 / phases  # current per phase of a balanced load; pf taken as 1 for simplicity
    mid = m.id
    rows = [(t * 1_000_000, (v, p * amps_per_kw / v, p, c / 100.0), "%d.%02d" % divmod(c, 100))
            for t, p, c, v in zip(times, power, counters, (220.0 + 10.0 * vrnd() for _ in times))]
    if plan.gap is not None:
        del rows[plan.gap[0]:plan.gap[1]]
    if silent is not None:
        a_us, b_us = (int(x.timestamp()) * 1_000_000 for x in silent)
        rows = [r for r in rows if not a_us <= r[0] < b_us]
    if following:
        rows = [r for r in rows if r[0] != times[0] * 1_000_000]   # the month before wrote that instant
    # one transaction per meter: its readings and its replacement, or nothing
    return ledger.write_meter(mid, FIELDS, rows, replacement)
