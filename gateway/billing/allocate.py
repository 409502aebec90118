"""The monthly allocation: meters -> interval kWh -> cost -> groups -> households, to the fen.

What households pay adds up exactly to what is recovered: the bill when it is given, else the
metered cost rounded to the fen. The whole table of households × groups is rounded at once
(shares.round_table): every line, every household's total and every group's amount is whole fen
and within a fen of its exact value, each group's lines add up to its amount, and nothing is lost
or created by rounding.

A month is refused (one line per reason) while it is not over by the clock, when its billed
meters' counters cover less of it than `allocation.min_coverage` (both: unless --allow-partial),
and when the bill is further than `allocation.bill_tolerance` from the sub-meters' metered cost or
the main meter's, or when a price in force is outside the plausible band of config.py (both:
unless --force); an override is said first in the report.

The difference between the bill and the metered cost (line losses, unmetered loads) is spread
by `allocation.difference_rule`:
- by_cost: every group carries it in proportion to its metered cost (everyone's charge is
  scaled by bill / metered cost);
- by_area: one extra estate-wide line, "线损及未计量", over all households by floor area.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction

from ..circuit_ratings import MAX_POWER_KW
from ..config import AllocationGroup, Meter, SiteConfig
from ..ledger import Ledger
from .households import site_households
from .intervals import MeterIntervals, MeterLimits, Replaced, meter_intervals
from .model import (FEN, QUALITY_KINDS, AllocationResult, GroupMonth, Household, HouseholdCharge, MeterMonth, QualityNote,
                    TariffUse)
from .shares import Column, round_table, round_to_total, to_fen
from .tariffs import MonthPlan, implausible_prices, plan_month, split_by_minutes

log = logging.getLogger(__name__)

ZERO = Decimal(0)
BRACKET_US = 62 * 86_400_000_000       # how far outside the month to look for the bracketing readings
DIFFERENCE_GROUP = "difference"
GROUPED = re.compile(r"^[+-]?\d{1,3}(,\d{3})*(\.\d*)?$")   # 12,345.67


class AllocationError(ValueError):
    """The allocation cannot be made as configured; `problems` are one line each."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class GroupPlan:
    id: str
    name: str
    scope: str
    key: str
    meters: list[str]
    households: list[Household]
    weights: list[Decimal]
    item: str = ""              # the configured group (fee item) it was expanded from
    item_name: str = ""
    vacant: str = "include"


def parse_bill(text: str | None) -> Decimal | None:
    """The bill as typed (`12345.67`, `12,345.67`, `1e3`) in canonical form, yuan to the fen."""
    if text is None:
        return None
    raw = text.strip()
    try:
        if "," in raw and not GROUPED.match(raw):
            raise InvalidOperation
        bill = Decimal(raw.replace(",", ""))
        if not bill.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise AllocationError([f"--bill {text!r} is not an amount in yuan such as 12345.67"]) from None
    return check_bill(bill, f"--bill {text!r}")


def check_bill(bill: Decimal, shown: str) -> Decimal:
    """A bill more than 0 and to the fen, as `Decimal('1000.00')` (never `1E+3`)."""
    if bill == 0:
        raise AllocationError([f"{shown}: the bill must be more than 0 (to recover the metered cost, leave the "
                               f"bill out)"])
    if bill < 0:
        raise AllocationError([f"{shown}: the bill must be more than 0, not negative"])
    try:
        canonical = bill.quantize(FEN)
    except InvalidOperation:         # more digits than any bill has
        raise AllocationError([f"{shown} is not an amount in yuan such as 12345.67"]) from None
    if canonical != bill:
        raise AllocationError([f"{shown}: give the bill's total in yuan to the fen (two decimals at most)"])
    return canonical


def unfinished(cfg: SiteConfig, plan: MonthPlan, now: datetime) -> str | None:
    """Why the month cannot be allocated yet by the clock, or None. A month is over once a step
    across its end can no longer be shorter than the gap threshold: until then the reading that
    closes it may still come (and the month would otherwise lose what the next one no longer bills)."""
    final = plan.end + timedelta(minutes=cfg.allocation.gap_minutes)
    if now >= final:
        return None
    if now < plan.start:
        return f"{plan.month} has not begun (it starts {plan.start:%Y-%m-%d %H:%M} {cfg.site.timezone})"
    return (f"{plan.month} is not over: it ends {plan.end:%Y-%m-%d %H:%M} {cfg.site.timezone} and its readings "
            f"are complete {cfg.allocation.gap_minutes:g} min later")


def _percent(x: Decimal) -> str:
    """0.95 -> '95 %', 0.00281 -> '0.3 %'."""
    return f"{(x * 100).quantize(Decimal('0.1'), ROUND_HALF_UP).normalize():f} %"


def coverage_problem(cfg: SiteConfig, month: str, meters: list[MeterMonth]) -> tuple[str, str] | None:
    """(zh, en) when some billed meter's counters measure less of the month than the site wants."""
    billed = [m for m in meters if m.group is not None]
    need = cfg.allocation.min_coverage
    low = sorted((m for m in billed if m.coverage < need), key=lambda m: (m.coverage, m.meter))
    if not low:
        return None
    w = low[0]
    return (f"{month}：{len(billed)} 块分摊电表中有 {len(low)} 块的读数覆盖不足本月的 {_percent(need)}"
            f"（最低 {w.meter} {_percent(w.coverage)}；allocation.min_coverage）",
            f"{month}: the counters of {len(low)} of {len(billed)} billed meters cover less than {_percent(need)} "
            f"of the month (lowest {w.meter}, {_percent(w.coverage)}; allocation.min_coverage)")


def bill_problems(cfg: SiteConfig, bill: Decimal, metered: Decimal, reference: list[MeterMonth]) -> list[tuple[str, str]]:
    """(zh, en) for each reference the bill is too far from: the sub-meters' metered cost and the
    main meter's (the utility's own meter, so the bill should be close to what it measured)."""
    band = cfg.allocation.bill_tolerance
    mains = [r for r in reference if r.kwh > 0]
    refs = [("分表计量电费", "the sub-meters' metered cost", metered)]
    if mains:
        ids = ", ".join(r.meter for r in mains)
        refs.append((f"总表 {ids} 的计量电费", f"the main meter {ids}'s metered cost",
                     sum((r.cost for r in mains), ZERO)))
    out = []
    for zh, en, x in refs:
        if x <= 0:
            out.append((f"{zh}为 0：账单 {bill:,} 元将全部作为线损分摊", f"{en} is 0: all of the bill, {bill:,} yuan, "
                        f"would be shared as line losses"))
        elif abs(bill - x) > band * x:
            ratio = bill / x
            out.append((f"账单 {bill:,} 元是{zh} {x:,.2f} 元的 {ratio:.2f} 倍，超出 allocation.bill_tolerance（±{_percent(band)}）",
                        f"the bill {bill:,} yuan is {ratio:.2f}× {en} {x:,.2f} yuan, beyond allocation.bill_tolerance "
                        f"(±{_percent(band)})"))
    return out


# ---- groups ---------------------------------------------------------------------------------------

def plan_groups(cfg: SiteConfig, households: list[Household]) -> tuple[list[GroupPlan], list[str]]:
    """Expand the configured groups into concrete ones; returns (groups, problems)."""
    meters = [m for m in cfg.meters if m.enabled and m.circuit != "main_supply"]
    known = {m.id for m in cfg.meters}
    problems: list[str] = []
    owner: dict[str, str] = {}
    plans: list[GroupPlan] = []
    # a building's (unit's) households looked up, not searched for: one group per building
    # would otherwise read the whole file once per building
    index: dict[tuple[str, str | None], list[Household]] = {}
    for h in households:
        index.setdefault((h.building, None), []).append(h)
        index.setdefault((h.building, h.unit), []).append(h)
    for gi, g in enumerate(cfg.allocation.groups):
        where = f"allocation.groups[{gi}] ({g.id})"
        for mid in g.meters:
            if mid not in known:
                problems.append(f"{where}.meters: no meter named '{mid}'")
        chosen = [m for m in meters if m.id in g.meters or (m.circuit in g.circuits and _in_scope(m, g))]
        for key, ms in _split(g, chosen).items():
            gid, name = _group_name(g, key)
            members = _members(g, key, households, index)
            if g.vacant == "exclude":
                members = [h for h in members if h.occupied]
            if g.key == "fixed":
                unknown = sorted(set(g.shares) - {h.id for h in households})
                if unknown:
                    problems.append(f"{where}.shares: no household {', '.join(unknown[:5])} in the households file")
                members = [h for h in members if g.shares.get(h.id, ZERO) > 0]
            if not members:
                problems.append(f"{where}: no households share {gid} ({_scope_text(g, key)}); its meters "
                                f"{', '.join(m.id for m in ms)} could not be charged to anyone")
                continue
            weights = [h.area_m2 if g.key == "area" else g.shares[h.id] if g.key == "fixed" else Decimal(1)
                       for h in members]
            if sum(weights, ZERO) <= 0:
                problems.append(f"{where}: the households of {gid} have no floor area to share by")
                continue
            for m in ms:
                if m.id in owner:
                    problems.append(f"{where}: meter {m.id} is already in group {owner[m.id]}")
                owner[m.id] = gid
            plans.append(GroupPlan(gid, name, g.scope, g.key, [m.id for m in ms], members, weights, g.id,
                                   g.name or g.id, g.vacant))
    return plans, problems


def _in_scope(m: Meter, g: AllocationGroup) -> bool:
    if g.scope == "estate":
        return True
    if g.building and m.building != g.building:
        return False
    if g.scope == "unit" and g.unit and m.unit_no != g.unit:
        return False
    return m.building is not None and (g.scope == "building" or m.unit_no is not None)


def _split(g: AllocationGroup, ms: list[Meter]) -> dict[tuple[str, str], list[Meter]]:
    out: dict[tuple[str, str], list[Meter]] = {}
    for m in ms:
        key = ("", "") if g.scope == "estate" else (m.building or "", "" if g.scope == "building" else m.unit_no or "")
        out.setdefault(key, []).append(m)
    return dict(sorted(out.items()))


def _group_name(g: AllocationGroup, key: tuple[str, str]) -> tuple[str, str]:
    b, u = key
    if g.scope == "estate" or g.building and (g.scope == "building" or g.unit):
        return g.id, g.name or g.id
    gid = f"{g.id}-{b}" + (f"-{u}" if u else "")
    return gid, f"{b}{'-' + u if u else ''} {g.name or g.id}"


def _scope_text(g: AllocationGroup, key: tuple[str, str]) -> str:
    b, u = key
    return {"estate": "the whole estate", "building": f"building {b}", "unit": f"building {b} unit {u}"}[g.scope]


def _members(g: AllocationGroup, key: tuple[str, str], households: list[Household],
             index: dict[tuple[str, str | None], list[Household]]) -> list[Household]:
    b, u = key
    if g.scope == "estate":
        return list(households)
    return list(index.get((b, None if g.scope == "building" else u), []))


# ---- meters ---------------------------------------------------------------------------------------

def meter_limits(cfg: SiteConfig, m: Meter) -> MeterLimits:
    a = cfg.allocation
    kw = m.max_power_kw or a.max_power_kw_by_circuit.get(m.circuit) or MAX_POWER_KW.get(m.circuit)
    return MeterLimits(kw, m.counter_max_kwh, a.resolution_kwh, int(a.gap_minutes * 60_000_000))


def read_meter(ledger: Ledger, cfg: SiteConfig, m: Meter, plan: MonthPlan) -> MeterIntervals:
    s, e = plan.start_us, plan.end_us
    points = [(t, Decimal(c)) for t, c in ledger.energy_series(m.id, s, e)]
    before = ledger.energy_before(m.id, s, 0)    # however long ago: a silence across the start is billed here
    after = ledger.energy_after(m.id, e, e + BRACKET_US)
    if before:
        points.insert(0, (before[0], Decimal(before[1])))
    if after:
        points.append((after[0], Decimal(after[1])))
    reps = [Replaced(int(r.at.timestamp() * 1_000_000), r.old_final, r.new_initial)
            for r in ledger.replacements(m.id)]
    return meter_intervals(m.id, points, s, e, meter_limits(cfg, m), plan.tz, reps)


def price_meter(m: Meter, iv: MeterIntervals, plan: MonthPlan, group: str | None) -> tuple[MeterMonth, list[Decimal]]:
    """The meter's month, and its kWh per price use of the plan (for the month's tariff table)."""
    by_use = [ZERO] * len(plan.uses)
    daily = [ZERO] * len(plan.days)
    for i, k in enumerate(iv.kwh):
        if not k:
            continue
        daily[plan.slot_day[i]] += k
        for u, part in split_by_minutes(k, plan.slot_uses[i]):
            by_use[u] += part
    kwh_p: dict[str, Decimal] = {}
    cost_p: dict[str, Decimal] = {}
    for u, k in zip(plan.uses, by_use):
        kwh_p[u.period] = kwh_p.get(u.period, ZERO) + k
        cost_p[u.period] = cost_p.get(u.period, ZERO) + k * u.price
    return MeterMonth(m.id, m.name, m.circuit, m.building, group, iv.total, iv.estimated_kwh, kwh_p,
                      sum(cost_p.values(), ZERO), cost_p, daily, iv.used, iv.first_counter, iv.last_counter,
                      iv.coverage), by_use


# ---- the month ------------------------------------------------------------------------------------

def allocate(cfg: SiteConfig, ledger: Ledger, month: str, bill: Decimal | None = None,
             now: datetime | None = None, intervals_out: dict[str, MeterIntervals] | None = None,
             plan: MonthPlan | None = None, allow_partial: bool = False, force: bool = False) -> AllocationResult:
    """The month's allocation; `intervals_out`, if given, receives each meter's slots.

    Refused (AllocationError, one line per reason) when the month is not over by the clock or its
    billed meters' counters cover too little of it, unless `allow_partial`, and when the bill is
    too far from the metered cost or the main meter's or a price is implausible, unless `force`;
    what was overridden is listed first in the report (`waived`)."""
    plan = plan or plan_month(month, cfg.site.timezone, cfg.tariffs)
    now = now or datetime.now(timezone.utc)
    if bill is not None:
        bill = check_bill(bill, f"bill {bill}")
    waived: list[tuple[str, str]] = []
    why = unfinished(cfg, plan, now)
    if why and not allow_partial:
        raise AllocationError([f"{why}: give --allow-partial to allocate it anyway"])
    if why:
        waived.append((f"按 --allow-partial 分摊：{plan.month} 尚未结束（{plan.end:%Y-%m-%d %H:%M} 结束）",
                       f"allocated with --allow-partial: {why}"))
    households = sorted(site_households(cfg), key=lambda h: h.id)
    groups, problems = plan_groups(cfg, households)
    if problems:
        raise AllocationError(problems)
    group_of = {mid: g.id for g in groups for mid in g.meters}
    meters: list[MeterMonth] = []
    reference: list[MeterMonth] = []
    quality: list[QualityNote] = []
    use_kwh = [ZERO] * len(plan.uses)
    unrepaired = ledger.unrepaired_clock() if hasattr(ledger, "unrepaired_clock") else []
    for m in cfg.meters:
        if not m.enabled:
            continue
        iv = read_meter(ledger, cfg, m, plan)
        if intervals_out is not None:
            intervals_out[m.id] = iv
        quality += iv.notes + clock_notes(unrepaired, m, plan)
        mm, by_use = price_meter(m, iv, plan, group_of.get(m.id))
        if m.circuit == "main_supply":
            reference.append(mm)
            continue
        meters.append(mm)
        if mm.group is not None:
            use_kwh = [a + b for a, b in zip(use_kwh, by_use)]
        if mm.group is None:
            quality.append(QualityNote(m.id, "unallocated", plan.start, plan.end, mm.kwh,
                                       f"不属于任何分摊组：{mm.kwh} kWh、{mm.cost.quantize(FEN)} 元未向住户分摊",
                                       f"in no allocation group: {mm.kwh} kWh, {mm.cost.quantize(FEN)} yuan not "
                                       f"charged to households"))
    by_id = {mm.meter: mm for mm in meters}
    metered = sum((by_id[mid].cost for g in groups for mid in g.meters), ZERO)
    refused = []
    low = coverage_problem(cfg, month, meters)
    if low and not allow_partial:
        refused.append(f"{low[1]}: give --allow-partial to allocate it anyway")
    elif low:
        waived.append((f"按 --allow-partial 分摊：{low[0]}", f"allocated with --allow-partial: {low[1]}"))
    forcible = [(zh, en, "the tariffs in the site file") for zh, en in implausible_prices(plan)]
    forcible += [(zh, en, "the bill") for zh, en in (bill_problems(cfg, bill, metered, reference) if bill is not None
                                                    else [])]
    for zh, en, check in forcible:
        if force:
            waived.append((f"按 --force 分摊：{zh}", f"allocated with --force: {en}"))
        else:
            refused.append(f"{en}: check {check}, or give --force to allocate it anyway")
    if refused:
        raise AllocationError(refused)
    rule = cfg.allocation.difference_rule
    difference = bill - metered if bill is not None else None
    notes: list[tuple[str, str]] = []
    if bill is not None and metered == 0:
        rule = "by_area"   # nothing metered to scale: the whole bill by floor area
        notes.append(("本月计量电费为 0：账单全额按建筑面积分摊", "nothing metered: the whole bill shared by floor area"))
    target_fen = to_fen(bill) if bill is not None else to_fen(metered)

    # Each group's exact amount (fen) and the rounding of it wanted for the group table.
    costs = [sum((by_id[mid].cost for mid in g.meters), ZERO) for g in groups]
    exact = [Fraction(c) * 100 for c in costs]
    if bill is not None and rule == "by_area":
        # the metered groups recover the metered cost rounded to the fen, the extra line the rest
        targets = round_to_total(exact, to_fen(metered)) + [target_fen - to_fen(metered)]
        exact.append(Fraction(difference) * 100)
        diff_share = [ZERO] * len(groups) + [difference]
        area = [h.area_m2 for h in households]
        groups = groups + [GroupPlan(DIFFERENCE_GROUP, "线损及未计量用电", "estate", "area", [], households, area,
                                     DIFFERENCE_GROUP, "线损及未计量用电", "include")]
        costs = costs + [ZERO]
    else:
        if bill is not None:                    # by_cost: every group scaled by bill / metered cost
            exact = [e * Fraction(bill) / Fraction(metered) for e in exact]
        targets = round_to_total(exact, target_fen)
        diff_share = [difference * c / metered if difference is not None else ZERO for c in costs]

    # Households' lines: every line, every household's total and every group's amount is its exact
    # value rounded down or up, and they all add up to the target (shares.round_table).
    row = {h.id: i for i, h in enumerate(households)}
    cells = round_table(len(households), [Column(e, t, [row[h.id] for h in g.households], g.weights)
                                          for g, e, t in zip(groups, exact, targets)])
    charges: dict[str, dict[str, Decimal]] = {h.id: {} for h in households}
    group_months: list[GroupMonth] = []
    for g, cost, fens, share in zip(groups, costs, cells, diff_share):
        for h, f in zip(g.households, fens):
            if f:
                charges[h.id][g.id] = Decimal(f) * FEN
        daily = [sum(x, ZERO) for x in zip(*(by_id[mid].daily_kwh for mid in g.meters))] or [ZERO] * len(plan.days)
        group_months.append(GroupMonth(g.id, g.name, g.scope, g.key, g.meters, [h.id for h in g.households],
                                       sum((by_id[mid].kwh for mid in g.meters), ZERO), cost, share,
                                       Decimal(sum(fens)) * FEN, daily, g.item, g.item_name, g.vacant))
    hh = [HouseholdCharge(h, charges[h.id], sum(charges[h.id].values(), ZERO)) for h in households]
    recovered = sum((c.total for c in hh), ZERO)
    assert recovered == Decimal(target_fen) * FEN, "allocation does not add up"  # by construction

    tariff_use = [TariffUse(u.tariff, u.period, u.price, k, k * u.price) for u, k in zip(plan.uses, use_kwh)]
    sub_kwh = sum((m.kwh for m in meters), ZERO)
    for ref in reference:
        if ref.kwh > 0:
            gap = ref.kwh - sub_kwh
            notes.append((f"总表 {ref.meter} {ref.kwh:.2f} kWh，分表合计 {sub_kwh:.2f} kWh，相差 {gap:.2f} kWh"
                          f"（{gap / ref.kwh:.1%}，线损及未计量）",
                          f"main meter {ref.meter} {ref.kwh:.2f} kWh, sub-meters {sub_kwh:.2f} kWh, {gap:.2f} kWh "
                          f"apart ({gap / ref.kwh:.1%}: losses, unmetered loads)"))
    used = {u.tariff for u in plan.uses}
    placeholders = [t.name for t in cfg.tariffs if t.placeholder and t.name in used]
    if bill is None:
        notes.append(("未提供电费账单：按计量电费回收（四舍五入到分）",
                      "no bill given: the metered cost is recovered, rounded to the fen"))
    return AllocationResult(
        site_id=cfg.site.id, site_name=cfg.site.name, month=month, timezone=cfg.site.timezone,
        start=plan.start, end=plan.end, days=plan.days, meters=meters, reference=reference,
        groups=group_months, households=hh, quality=sorted(quality, key=_quality_order), tariff_use=tariff_use,
        metered_cost=metered, bill=bill, difference=difference, difference_rule=rule, recovered=recovered,
        generated_at=now.astimezone(plan.tz), notes=notes, waived=waived, placeholder_tariffs=placeholders)


def clock_notes(unrepaired: list[dict], m: Meter, plan: MonthPlan) -> list[QualityNote]:
    """Counters recorded while the wall clock was wrong and not repaired (the box restarted before
    the clock was set, or it is still not set: gateway/timesync.py) are not in `energy`, so the
    month never reads a 1970 counter; the energy of that stretch is interpolated between the
    trusted counters around it, like any gap. One note per meter and clock episode, over the span
    of true time the episode is known to lie in (after the newest trusted time known when it began,
    before this boot's start), clipped to the month. `unrepaired`: Ledger.unrepaired_clock()."""
    notes = []
    for ep in unrepaired:
        held = ep["energy"].get(m.id)
        if held is None:
            continue
        lo = ep["after_us"] if ep["after_us"] is not None else plan.start_us
        hi = ep["before_us"] if ep["before_us"] is not None else plan.end_us
        if hi < plan.start_us or lo >= plan.end_us:
            continue
        n, first, last = held
        said = f"{datetime.fromtimestamp(first / 1e6, timezone.utc):%Y-%m-%d %H:%M}…" \
               f"{datetime.fromtimestamp(last / 1e6, timezone.utc):%Y-%m-%d %H:%M} UTC"
        later = ep["state"] == "untrusted"
        notes.append(QualityNote(
            m.id, "gap", datetime.fromtimestamp(max(lo, plan.start_us) / 1e6, timezone.utc).astimezone(plan.tz),
            datetime.fromtimestamp(min(hi, plan.end_us) / 1e6, timezone.utc).astimezone(plan.tz), None,
            f"网关时钟不可信期间记录的 {n} 个读数（时钟显示 {said}，时钟段 {ep['id']}）"
            f"{'尚未修复' if later else '无法修复（时钟校准前网关重启过）'}：真实时间只知在此区间内，未计入，"
            f"该段电量按前后可信读数插值",
            f"{n} counters recorded while the gateway's clock was wrong (it said {said}; clock episode {ep['id']}) "
            f"{'are not repaired yet' if later else 'cannot be repaired (the box restarted before its clock was set)'}"
            f": their true time is only known to lie in this span, so they are left out and the span is "
            f"interpolated between trusted counters"))
    return notes


def _quality_order(q: QualityNote):
    return (QUALITY_KINDS.index(q.kind), q.meter, q.start)
