"""`gateway allocate`: allocate a month, keep it in the ledger as a run, write its reports, and
send its points to InfluxDB through the outbox when it is the month's answer (runs.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from ..clock import to_us
from ..config import SiteConfig
from ..ledger import Ledger
from .allocate import allocate
from .compare import Comparison
from .model import AllocationResult, RunInfo
from .points import outbox_rows
from .runs import Published, answer, comparison_for, runs, settle
from .stored import dumps
from .tariffs import plan_month


@dataclass
class MonthRun:
    result: AllocationResult
    files: dict[str, Path]
    run_id: int | None
    points: int                            # points queued for InfluxDB by this run
    comparison: Comparison | None = None
    info: RunInfo | None = None            # the run as kept (None: --dry-run)
    published: Published | None = None     # it became the month's answer (None: it waits for approval)
    answer: int | None = None              # the month's answer after this run


def plain(d: Decimal) -> str:
    """Decimal text without an exponent: '0.00', never '0E-2' or '1E+3'."""
    return format(d, "f")


def summary_json(r: AllocationResult, lang: str = "zh") -> str:
    return json.dumps({
        "groups": [{"id": g.id, "name": g.name, "kwh": plain(g.kwh), "metered_cost": plain(g.metered_cost),
                    "amount": plain(g.amount), "households": len(g.households), "item": g.fee_item}
                   for g in r.groups],
        "meters": [{"id": m.meter, "group": m.group, "kwh": plain(m.kwh), "estimated_kwh": plain(m.estimated_kwh),
                    "cost": plain(m.cost), "coverage": plain(m.coverage)} for m in r.meters + r.reference],
        "difference_rule": r.difference_rule,
        "waived": [en for _, en in r.waived],
        "placeholder_tariffs": r.placeholder_tariffs,
        "lang": lang,
    }, ensure_ascii=False)


def run_month(cfg: SiteConfig, month: str, out_dir: Path, bill: Decimal | None = None, lang: str = "zh",
              keep: bool = True, now: datetime | None = None, allow_partial: bool = False,
              force: bool = False, by: str = "", invoice: str | None = None,
              bill_period: tuple[date, date] | None = None) -> MonthRun:
    """Allocate the month, keep it in the ledger as a new run (unless not `keep`: reports only),
    make it the month's answer when no run of the month is approved (runs.py), and write its
    reports. `by`: who ran it; `invoice` and `bill_period`: the utility bill it answers."""
    from ..lighting.savings import for_report
    from ..maintenance.inspections import for_report as inspection_for
    from .report import write_all
    now = now or datetime.now(timezone.utc)
    ledger = Ledger(cfg.storage_path)
    try:
        intervals: dict = {}
        plan = plan_month(month, cfg.site.timezone, cfg.tariffs)
        result = allocate(cfg, ledger, month, bill, now, intervals_out=intervals, plan=plan,
                          allow_partial=allow_partial, force=force)
        comparison = comparison_for(cfg, ledger, result)
        if not keep:
            files = write_all(result, out_dir, lang=lang, comparison=comparison, lighting=for_report(cfg, month),
                              inspection=inspection_for(cfg, month))
            return MonthRun(result, files, None, 0, comparison)
        where = {m.meter: (m.building, m.circuit, m.group) for m in result.meters + result.reference}
        points = outbox_rows(result, plan, {k: v for k, v in intervals.items() if k in where}, where)
        if cfg.influxdb is None:
            points = ()     # no server to send them to: the ledger keeps the run itself
        charges = [(c.household.id, g, plain(a)) for c in result.households for g, a in c.lines.items()]
        # while no run of the month is approved the new run is its answer: its points are queued as
        # they are kept (runs.settle then only takes the previous answer's out)
        standing = [r for r in runs(ledger, month) if r.approved and r.superseded_by is None]
        queue = cfg.influxdb is not None and not standing
        run_id, queued = ledger.save_allocation(
            month, to_us(now), plain(result.bill) if result.bill is not None else None, plain(result.metered_cost),
            plain(result.recovered), len(result.quality), str(Path(out_dir).resolve()), summary_json(result, lang),
            charges, by=by, invoice=invoice,
            bill_period=(bill_period[0].isoformat(), bill_period[1].isoformat()) if bill_period else None,
            result=dumps(result), points=points, queue=queue)
        del points, intervals
        published = settle(cfg, ledger, month, queued=(run_id, queued))
        month_runs = runs(ledger, month)
        ans = answer(month_runs)
        this = next(r for r in month_runs if r.id == run_id)
        info = this.info(ZoneInfo(cfg.site.timezone), ans is not None and ans.id == run_id)
        files = write_all(result, out_dir, lang=lang, run=info, comparison=comparison,
                          lighting=for_report(cfg, month), inspection=inspection_for(cfg, month))
        mine = published if published is not None and published.run == run_id else None
        return MonthRun(result, files, run_id, mine.queued if mine else 0, comparison, info, mine,
                        ans.id if ans else None)
    finally:
        ledger.close()
