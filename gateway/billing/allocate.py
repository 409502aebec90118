"""The monthly allocation: meters -> interval kWh -> cost -> groups -> households, to the fen.

What households pay adds up exactly to what is recovered: the bill when it is given, else the
metered cost rounded to the fen. Groups are rounded first (largest remainder over the groups),
then each group over its households (largest remainder by the group's key), so every group's
lines and every household's total are whole fen and nothing is lost or created by rounding.

The difference between the bill and the metered cost (line losses, unmetered loads) is spread
by `allocation.difference_rule`:
- by_cost: every group carries it in proportion to its metered cost (everyone's charge is
  scaled by bill / metered cost);
- by_area: one extra estate-wide line, "线损及未计量", over all households by floor area.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation

from ..config import AllocationGroup, Meter, SiteConfig
from ..rules.models import MAX_POWER_KW
from ..store import Ledger
from .households import load_households
from .intervals import MeterIntervals, MeterLimits, Replaced, meter_intervals
from .model import (FEN, QUALITY_KINDS, AllocationResult, GroupMonth, Household, HouseholdCharge, MeterMonth, QualityNote,
                    TariffUse)
from .shares import largest_remainder, to_fen
from .tariffs import MonthPlan, plan_month, split_by_minutes

log = logging.getLogger(__name__)

ZERO = Decimal(0)
BRACKET_US = 62 * 86_400_000_000       # how far outside the month to look for the bracketing readings
DIFFERENCE_GROUP = "difference"


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


def parse_bill(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        bill = Decimal(text.replace(",", "").strip())
    except InvalidOperation:
        raise AllocationError([f"--bill {text!r} is not an amount in yuan such as 12345.67"]) from None
    if not bill.is_finite() or bill < 0 or bill != bill.quantize(FEN):
        raise AllocationError([f"--bill {text!r}: give the bill's total in yuan to the fen (two decimals at most)"])
    return bill


# ---- groups ---------------------------------------------------------------------------------------

def plan_groups(cfg: SiteConfig, households: list[Household]) -> tuple[list[GroupPlan], list[str]]:
    """Expand the configured groups into concrete ones; returns (groups, problems)."""
    meters = [m for m in cfg.meters if m.enabled and m.circuit != "main_supply"]
    known = {m.id for m in cfg.meters}
    problems: list[str] = []
    owner: dict[str, str] = {}
    plans: list[GroupPlan] = []
    for gi, g in enumerate(cfg.allocation.groups):
        where = f"allocation.groups[{gi}] ({g.id})"
        for mid in g.meters:
            if mid not in known:
                problems.append(f"{where}.meters: no meter named '{mid}'")
        chosen = [m for m in meters if m.id in g.meters or (m.circuit in g.circuits and _in_scope(m, g))]
        for key, ms in _split(g, chosen).items():
            gid, name = _group_name(g, key)
            members = _members(g, key, households)
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
            plans.append(GroupPlan(gid, name, g.scope, g.key, [m.id for m in ms], members, weights))
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


def _members(g: AllocationGroup, key: tuple[str, str], households: list[Household]) -> list[Household]:
    b, u = key
    if g.scope == "estate":
        return list(households)
    if g.scope == "building":
        return [h for h in households if h.building == b]
    return [h for h in households if h.building == b and h.unit == u]


# ---- meters ---------------------------------------------------------------------------------------

def meter_limits(cfg: SiteConfig, m: Meter) -> MeterLimits:
    a = cfg.allocation
    kw = m.max_power_kw or a.max_power_kw_by_circuit.get(m.circuit) or MAX_POWER_KW.get(m.circuit)
    return MeterLimits(kw, m.counter_max_kwh, a.resolution_kwh, int(a.gap_minutes * 60_000_000))


def read_meter(ledger: Ledger, cfg: SiteConfig, m: Meter, plan: MonthPlan) -> MeterIntervals:
    s, e = plan.start_us, plan.end_us
    points = [(t, Decimal(c)) for t, c in ledger.energy_series(m.id, s, e)]
    before = ledger.energy_before(m.id, s, s - BRACKET_US)
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
                      sum(cost_p.values(), ZERO), cost_p, daily, iv.used, iv.first_counter, iv.last_counter), by_use


# ---- the month ------------------------------------------------------------------------------------

def allocate(cfg: SiteConfig, ledger: Ledger, month: str, bill: Decimal | None = None,
             now: datetime | None = None, intervals_out: dict[str, MeterIntervals] | None = None,
             plan: MonthPlan | None = None) -> AllocationResult:
    """The month's allocation; `intervals_out`, if given, receives each meter's slots."""
    plan = plan or plan_month(month, cfg.site.timezone, cfg.tariffs)
    households = sorted(load_households(cfg.base_dir / cfg.allocation.households_file), key=lambda h: h.id)
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
    rule = cfg.allocation.difference_rule
    difference = bill - metered if bill is not None else None
    notes: list[str] = []
    if bill is not None and metered == 0 and bill > 0:
        rule = "by_area"   # nothing metered to scale: the whole bill by floor area
        notes.append(("本月计量电费为 0：账单全额按建筑面积分摊", "nothing metered: the whole bill shared by floor area"))
    target_fen = to_fen(bill) if bill is not None else to_fen(metered)

    # Group amounts, rounded together so that they add up to the target exactly.
    costs = [sum((by_id[mid].cost for mid in g.meters), ZERO) for g in groups]
    if bill is not None and rule == "by_area":
        metered_fen = largest_remainder(to_fen(metered), costs) if metered > 0 else [0] * len(groups)
        group_fen = metered_fen + [target_fen - sum(metered_fen)]
        diff_share = [ZERO] * len(groups) + [difference]
        area = [h.area_m2 for h in households]
        groups = groups + [GroupPlan(DIFFERENCE_GROUP, "线损及未计量用电", "estate", "area", [], households, area)]
        costs = costs + [ZERO]
    elif metered > 0:
        group_fen = largest_remainder(target_fen, costs)
        diff_share = [difference * c / metered if difference is not None else ZERO for c in costs]
    else:
        group_fen = [0] * len(groups)
        diff_share = [ZERO] * len(groups)

    charges: dict[str, dict[str, Decimal]] = {h.id: {} for h in households}
    group_months: list[GroupMonth] = []
    for g, cost, fen, share in zip(groups, costs, group_fen, diff_share):
        for h, f in zip(g.households, largest_remainder(fen, g.weights) if fen else [0] * len(g.households)):
            if f:
                charges[h.id][g.id] = Decimal(f) * FEN
        daily = [sum(x, ZERO) for x in zip(*(by_id[mid].daily_kwh for mid in g.meters))] or [ZERO] * len(plan.days)
        group_months.append(GroupMonth(g.id, g.name, g.scope, g.key, g.meters, [h.id for h in g.households],
                                       sum((by_id[mid].kwh for mid in g.meters), ZERO), cost, share,
                                       Decimal(fen) * FEN, daily))
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
    if bill is None:
        notes.append(("未提供电费账单：按计量电费回收（四舍五入到分）",
                      "no bill given: the metered cost is recovered, rounded to the fen"))
    return AllocationResult(
        site_id=cfg.site.id, site_name=cfg.site.name, month=month, timezone=cfg.site.timezone,
        start=plan.start, end=plan.end, days=plan.days, meters=meters, reference=reference,
        groups=group_months, households=hh, quality=sorted(quality, key=_quality_order), tariff_use=tariff_use,
        metered_cost=metered, bill=bill, difference=difference, difference_rule=rule, recovered=recovered,
        generated_at=(now or datetime.now(timezone.utc)).astimezone(plan.tz), notes=notes)


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
