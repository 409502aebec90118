"""`gateway allocate`: allocate a month, write the reports, keep the run in the ledger and send
its points to InfluxDB through the outbox."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from ..clock import to_us
from ..config import SiteConfig
from ..store import Ledger
from .allocate import allocate
from .model import AllocationResult
from .points import outbox_rows
from .tariffs import plan_month


@dataclass
class MonthRun:
    result: AllocationResult
    files: dict[str, Path]
    run_id: int | None
    points: int


def plain(d: Decimal) -> str:
    """Decimal text without an exponent: '0.00', never '0E-2' or '1E+3'."""
    return format(d, "f")


def summary_json(r: AllocationResult) -> str:
    return json.dumps({
        "groups": [{"id": g.id, "name": g.name, "kwh": plain(g.kwh), "metered_cost": plain(g.metered_cost),
                    "amount": plain(g.amount), "households": len(g.households)} for g in r.groups],
        "meters": [{"id": m.meter, "group": m.group, "kwh": plain(m.kwh), "estimated_kwh": plain(m.estimated_kwh),
                    "cost": plain(m.cost), "coverage": plain(m.coverage)} for m in r.meters + r.reference],
        "difference_rule": r.difference_rule,
        "waived": [en for _, en in r.waived],
    }, ensure_ascii=False)


def run_month(cfg: SiteConfig, month: str, out_dir: Path, bill: Decimal | None = None, lang: str = "zh",
              keep: bool = True, now: datetime | None = None, allow_partial: bool = False,
              force: bool = False) -> MonthRun:
    from .report import write_all
    now = now or datetime.now(timezone.utc)
    ledger = Ledger(cfg.storage_path)
    try:
        intervals: dict = {}
        plan = plan_month(month, cfg.site.timezone, cfg.tariffs)
        result = allocate(cfg, ledger, month, bill, now, intervals_out=intervals, plan=plan,
                          allow_partial=allow_partial, force=force)
        files = write_all(result, out_dir, lang=lang)
        run_id, points = None, 0
        if keep:
            where = {m.meter: (m.building, m.circuit, m.group) for m in result.meters + result.reference}
            rows = outbox_rows(result, plan, {k: v for k, v in intervals.items() if k in where}, where)
            if cfg.influxdb is None:
                rows = ()      # no server to send them to: the ledger keeps the run itself
            charges = [(c.household.id, g, plain(a)) for c in result.households for g, a in c.lines.items()]
            run_id, points = ledger.save_allocation(
                month, to_us(now), plain(result.bill) if result.bill is not None else None, plain(result.metered_cost),
                plain(result.recovered), len(result.quality), str(out_dir.resolve()), summary_json(result), charges, rows)
        return MonthRun(result, files, run_id, points)
    finally:
        ledger.close()
