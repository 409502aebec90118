"""Writes tests/golden/: the allocation of a generated month of the example site.

The month comes from simulators/month.py (seed 1, a reading every 15 minutes, with its four
faults) and is allocated with a bill; the household CSV (what the fee clerk imports) and a
summary of meters, groups and data-quality notes are the golden files that
tests/test_billing_golden.py compares against. Run it again only after a deliberate change to
the allocation, and review the diff line by line before committing it.
"""

from __future__ import annotations

import json
import sys
import tempfile
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOLDEN = ROOT / "tests" / "golden"
MONTH, SEED, EVERY_S, BILL = "2026-10", 1, 900, Decimal("51234.56")


def golden_month(work: Path):
    """(result, csv text, summary dict, the generator's summary) of the golden month, computed in `work`."""
    import yaml

    from gateway.billing.allocate import allocate
    from gateway.billing.report import write_csv
    from gateway.config import parse_site
    from gateway.ledger import Ledger
    from simulators.month import generate_month

    site = ROOT / "edge_config" / "site.example.yaml"
    data = yaml.safe_load(site.read_text(encoding="utf-8"))
    data["storage"]["path"] = str(work / "gateway.db")
    cfg = parse_site(data, base_dir=site.parent)
    truth = generate_month(cfg, cfg.storage_path, MONTH, seed=SEED, every_s=EVERY_S)
    ledger = Ledger(cfg.storage_path)
    try:
        result = allocate(cfg, ledger, MONTH, bill=BILL)
    finally:
        ledger.close()
    write_csv(result, work / "households.csv")
    summary = {
        "month": MONTH, "bill": str(BILL), "metered_cost": str(result.metered_cost),
        "recovered": str(result.recovered), "difference": str(result.difference),
        "meters": {m.meter: {"kwh": str(m.kwh), "estimated_kwh": str(m.estimated_kwh), "cost": str(m.cost)}
                   for m in result.meters + result.reference},
        "groups": {g.id: {"kwh": str(g.kwh), "metered_cost": str(g.metered_cost), "amount": str(g.amount),
                          "households": len(g.households)} for g in result.groups},
        "tariff_use": [[u.tariff, u.period, str(u.price), str(u.kwh), str(u.cost)] for u in result.tariff_use],
        "quality": [[q.kind, q.meter, q.start.isoformat(), q.end.isoformat(), None if q.kwh is None else str(q.kwh)]
                    for q in result.quality],
    }
    return result, (work / "households.csv").read_text(encoding="utf-8-sig"), summary, truth


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, csv_text, summary, _ = golden_month(Path(tmp))
    GOLDEN.mkdir(exist_ok=True)
    (GOLDEN / f"allocation-{MONTH}.csv").write_text(csv_text, encoding="utf-8")
    (GOLDEN / f"allocation-{MONTH}.json").write_text(json.dumps(summary, ensure_ascii=False, indent=1) + "\n",
                                                     encoding="utf-8")
    print(f"wrote {GOLDEN}/allocation-{MONTH}.csv and .json: recovered {summary['recovered']}")


if __name__ == "__main__":
    main()
