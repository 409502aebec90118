"""Monthly allocation for the reference site: time and peak memory.

A month of the example site (145 meters read every minute, about 6.5 million readings; 9,216
households) is generated once into a ledger (simulators/month.py, seed 1, with its four faults)
and kept in a cache directory. Every stage, the generation too, runs in a fresh process of its
own, and its peak is that process's own high-water mark (VmHWM: a process started by a large
parent through vfork would otherwise report the parent's peak as its ru_maxrss):

- generate (only when the month is not cached yet): the month generator;
- baseline: read every meter's month of counters out of the ledger into Decimals and nothing
  else: the least any allocation must spend;
- allocate: interval consumption, tariffs, groups and households (gateway.billing.allocate);
- full: what `gateway allocate` does: allocate, write CSV/XLSX/HTML, keep the run in the ledger
  and queue its InfluxDB points (energy_interval and allocation) in the outbox;
- again: the month allocated a second time while the first run's points still wait in the
  outbox: the new run is the month's answer (a draft), its points replace the first's;
- approve: the first run reviewed and approved (`gateway allocate approve`): it becomes the
  answer again, its kept points are queued in place of the second's, and its reports are
  printed again with the sign-off.

`--quick` reads every 5 minutes instead of every minute (1.3 million readings, same meters and
households): the same stages in a fraction of the time.

Targets (issue 6): the full month under 30 s and 300 MB on this machine. The last line printed
is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_S, TARGET_MB = 30.0, 300.0
SITE = ROOT / "edge_config" / "site.example.yaml"


from common import peak_mb  # noqa: E402  (bench/ is sys.path[0])


def site_for(db: Path):
    import yaml

    from gateway.config import parse_site
    data = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    data["storage"]["path"] = str(db)
    data["influxdb"] = {"version": 1, "url": "http://127.0.0.1:8086", "database": "bench"}  # points are queued
    return parse_site(data, base_dir=SITE.parent)


def stage(name: str, db: Path, month: str, out_dir: Path, every: int) -> dict:
    from decimal import Decimal

    from gateway.billing.allocate import allocate
    from gateway.billing.monthly import run_month
    from gateway.billing.tariffs import plan_month
    from gateway.ledger import Ledger

    cfg = site_for(db)
    t0 = time.perf_counter()
    figures: dict = {}
    if name == "generate":
        from simulators.month import generate_month
        s = generate_month(cfg, db, month, seed=1, every_s=every)
        figures.update(rows=s.rows, line=s.line())
    elif name == "baseline":
        plan = plan_month(month, cfg.site.timezone, cfg.tariffs)
        ledger = Ledger(db)
        n = 0
        for m in cfg.meters:
            n += len([(t, Decimal(c)) for t, c in ledger.energy_series(m.id, plan.start_us, plan.end_us)])
        ledger.close()
        figures["readings"] = n
    elif name == "allocate":
        ledger = Ledger(db)
        r = allocate(cfg, ledger, month)
        ledger.close()
        figures.update(households=len(r.households), groups=len(r.groups), quality_notes=len(r.quality),
                       recovered=str(r.recovered))
    elif name == "approve":
        from gateway.billing.runs import sign
        ledger = Ledger(db)
        sign(cfg, ledger, 1, "reviewed", "bench")
        done = sign(cfg, ledger, 1, "approved", "bench")
        ledger.close()
        p = done.published
        figures.update(queued=p.queued, removed=p.removed, zeros=p.zeros,
                       files={k: f.stat().st_size for k, f in done.files.items()})
    else:
        run = run_month(cfg, month, out_dir, keep=True)
        p = run.published
        figures.update(points=run.points, removed=p.removed if p else 0,
                       files={k: p.stat().st_size for k, p in run.files.items()},
                       recovered=str(run.result.recovered))
        import sqlite3
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)        # what a run keeps beside itself
        figures["kept_points_bytes"], figures["kept_result_bytes"] = con.execute(
            "SELECT (SELECT sum(length(lines)) FROM allocation_points WHERE run = ?), "
            "(SELECT length(data) FROM allocation_results WHERE run = ?)", (run.run_id, run.run_id)).fetchone()
        figures["outbox_rows"] = con.execute("SELECT count(*) FROM outbox").fetchone()[0]
        con.close()
    figures["seconds"] = round(time.perf_counter() - t0, 2)
    figures["peak_rss_mb"] = peak_mb()
    return figures


def run_stage(name: str, db: Path, month: str, out_dir: Path, every: int, label: str | None = None) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--stage", name, "--db", str(db), "--month", month,
                           "--out", str(out_dir), "--every", str(every)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"stage {name} failed:\n{proc.stderr[-2000:]}")
    f = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{label or name:<9} {f['seconds']:6.2f} s  peak RSS {f['peak_rss_mb']:6.1f} MB", flush=True)
    return f


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--month", default="2026-10")
    p.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "estate-gateway-bench",
                   help="where the generated month is kept between runs")
    p.add_argument("--every", type=int, default=60, help="seconds between readings (default 60)")
    p.add_argument("--quick", action="store_true", help="readings every 300 s (same as --every 300)")
    p.add_argument("--stage", help=argparse.SUPPRESS)
    p.add_argument("--db", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.quick:
        args.every = 300
    if args.stage:
        print(json.dumps(stage(args.stage, args.db, args.month, args.out, args.every)))
        return

    args.cache.mkdir(parents=True, exist_ok=True)
    source = args.cache / f"month-{args.month}-{args.every}s.db"
    result: dict = {"month": args.month, "every_s": args.every}
    if not source.exists():
        print(f"generating {args.month} for the example site into {source} (once) ...", flush=True)
        part = source.with_suffix(".part")
        part.unlink(missing_ok=True)
        result["generate"] = run_stage("generate", part, args.month, args.cache, args.every)
        print(result["generate"].pop("line"), flush=True)
        part.rename(source)
    work = Path(tempfile.mkdtemp(prefix="bench-billing-"))
    try:
        db = work / "gateway.db"
        shutil.copy(source, db)   # `full` writes into the ledger: every run starts from the same one
        for name in ("baseline", "allocate", "full", "again", "approve"):
            result[name] = run_stage("full" if name == "again" else name, db, args.month, work / "out", args.every,
                                     label=name)
        full, base = result["full"], result["baseline"]
        result["readings"] = base["readings"]
        result["households"] = result["allocate"]["households"]
        result["allocate_vs_baseline"] = round(result["allocate"]["seconds"] / base["seconds"], 2)
        result["targets_met"] = {"time": full["seconds"] < TARGET_S, "memory": full["peak_rss_mb"] < TARGET_MB}
        print(f"{base['readings']:,} readings, {result['households']:,} households: allocation "
              f"{result['allocate']['seconds']:.1f} s ({result['allocate_vs_baseline']}x reading the counters), "
              f"with reports, ledger and {full['points']:,} InfluxDB points {full['seconds']:.1f} s, "
              f"peak {full['peak_rss_mb']:.0f} MB (targets {TARGET_S:g} s, {TARGET_MB:g} MB: "
              f"{'met' if all(result['targets_met'].values()) else 'MISSED'})", flush=True)
        again, approve = result["again"], result["approve"]
        print(f"again: {again['seconds']:.1f} s, peak {again['peak_rss_mb']:.0f} MB, {again['removed']:,} queued points "
              f"of the first run taken out, outbox {again['outbox_rows']:,} rows (one run's); approving the first: "
              f"{approve['seconds']:.1f} s, peak {approve['peak_rss_mb']:.0f} MB, {approve['queued']:,} points queued; "
              f"a run keeps {full['kept_points_bytes'] / 2**20:.1f} MB of points and "
              f"{full['kept_result_bytes'] / 2**20:.2f} MB of result", flush=True)
        print(json.dumps(result, ensure_ascii=False))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
