"""Monthly service and safety report for the reference site: time and peak memory.

A busy year of history (2026) for the example site (edge_config/site.example.yaml: 145 meters,
9,216 households, 4 gates with 5 card readers, 3 patrol routes of 12-14 checkpoints walked 9
times a day) is generated once by tests/service_history.py and kept in a cache directory: three
times the generator's ordinary day of alarms (about 5,500 in the year), repair orders (about
1,600, some late, one device failing every 25 days), every inspection plan's tasks, about
124,000 patrol checkins with missed checkpoints, `--swipes` resident swipes a day (default
8,000: about 2.9 million in the year) among the refused cards, and 2,000 ordinary door events a
day among the forced and held-open doors.

Every stage runs in a fresh process of its own; its peak is that process's VmHWM:
- year: the twelve monthly reports one after the other as `gateway report service` writes them
  (HTML, XLSX, InfluxDB points queued in the outbox), each month's trend reusing the months
  already built: the time of each month and of the year;
- cold: one month (December) built alone with its five months of trend, as the CLI and the
  console build it.

Targets (issue 16): a month under 5 s and under 200 MB. The last line printed is one JSON object
with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

TARGET_S, TARGET_MB = 5.0, 200.0
MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]
AS_OF = datetime(2027, 1, 2, 3, 0, tzinfo=timezone.utc)


from common import peak_mb  # noqa: E402  (bench/ is sys.path[0])


def site_for(db: Path):
    from service_history import example_site
    data, _ = example_site(db)
    data["influxdb"] = {"version": 1, "url": "http://127.0.0.1:8086", "database": "bench"}   # points are queued
    from gateway.config import parse_site
    return parse_site(data, base_dir=ROOT / "edge_config")


def stage(name: str, db: Path, out_dir: Path, swipes: int) -> dict:
    from gateway.maintenance.service_run import run_service
    cfg = site_for(db)
    t0 = time.perf_counter()
    figures: dict = {}
    if name == "generate":
        from service_history import generate
        totals: dict = {}
        for m in MONTHS:      # a month at a time: the generator holds one month's rows
            got = generate(cfg, [m], seed=int(m[-2:]), busy=3.0, resident_swipes=swipes, door_events=2000,
                           as_of=AS_OF)
            for k in ("alarms", "orders", "swipes", "checkins"):
                totals[k] = totals.get(k, 0) + got[k]
        figures.update(totals, ledger_mb=round(db.stat().st_size / 2**20, 1))
    elif name == "year":
        known: dict = {}
        months = []
        for m in MONTHS:
            t = time.perf_counter()
            run = run_service(cfg, m, out_dir, trend=5, now=AS_OF, known=known)
            months.append({"month": m, "seconds": round(time.perf_counter() - t, 3), "points": run.points,
                           "alarms": run.report.alarm_total.raised, "orders": run.report.order_total.created,
                           "refused": sum(g.unknown + g.revoked + g.expired for g in run.report.gates),
                           "rounds": sum(r.rounds for r in run.report.routes)})
        figures.update(months=months, slowest_month_s=max(x["seconds"] for x in months),
                       files={k: p.stat().st_size for k, p in run.files.items()})
    elif name == "cold":
        run = run_service(cfg, MONTHS[-1], out_dir, trend=5, now=AS_OF, send=False)
        figures.update(month=MONTHS[-1], trend_months=len(run.report.trend))
    figures["seconds"] = round(time.perf_counter() - t0, 2)
    figures["peak_rss_mb"] = peak_mb()
    return figures


def run_stage(name: str, db: Path, out_dir: Path, swipes: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--stage", name, "--db", str(db), "--out", str(out_dir),
                           "--swipes", str(swipes)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"stage {name} failed:\n{proc.stderr[-2000:]}")
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{name:<9} {f['seconds']:7.2f} s  peak RSS {f['peak_rss_mb']:6.1f} MB", flush=True)
    return f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "estate-gateway-bench",
                   help="where the generated year is kept between runs")
    p.add_argument("--swipes", type=int, default=8000, help="resident swipes a day (default 8000)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.stage:
        print(json.dumps(stage(args.stage, args.db, args.out, args.swipes)))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    source = args.cache / f"service-year-2026-{args.swipes}.db"
    result: dict = {"year": "2026", "resident_swipes_per_day": args.swipes}
    if not source.exists():
        print(f"generating a busy 2026 for the example site into {source} (once) ...", flush=True)
        part = source.with_suffix(".part")
        part.unlink(missing_ok=True)
        result["generate"] = run_stage("generate", part, args.cache, args.swipes)
        part.rename(source)
    work = Path(tempfile.mkdtemp(prefix="bench-report-"))
    try:
        db = work / "gateway.db"
        shutil.copy(source, db)        # the year queues points in the outbox: every run starts alike
        from gateway.ledger import Ledger
        Ledger(db).close()             # the current schema (a cache made by an older release lacks its indexes)
        for name in ("year", "cold"):
            result[name] = run_stage(name, db, work / "out", args.swipes)
        year, cold = result["year"], result["cold"]
        for m in year["months"]:
            print(f"  {m['month']}: {m['seconds']:5.2f} s  {m['alarms']:4} alarms {m['orders']:4} orders "
                  f"{m['refused']:4} refused cards {m['rounds']:4} rounds  {m['points']} points", flush=True)
        worst = max(year["slowest_month_s"], cold["seconds"])
        peak = max(year["peak_rss_mb"], cold["peak_rss_mb"])
        result["targets_met"] = {"time": worst < TARGET_S, "memory": peak < TARGET_MB}
        print(f"a year of monthly reports {year['seconds']:.1f} s (slowest month {year['slowest_month_s']:.2f} s), "
              f"peak {year['peak_rss_mb']:.0f} MB; one month alone with five months of trend {cold['seconds']:.2f} s, "
              f"peak {cold['peak_rss_mb']:.0f} MB (targets {TARGET_S:g} s, {TARGET_MB:g} MB a month: "
              f"{'met' if all(result['targets_met'].values()) else 'MISSED'})", flush=True)
        print(json.dumps(result, ensure_ascii=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
