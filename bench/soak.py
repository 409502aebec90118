"""Soak: the gateway's memory over simulated days (issue 13 item 5).

The real `Gateway` (bus schedulers, pymodbus clients, the hub, rules, the ledger with its
checkpoint and indexer threads, retention and the disk guard) polls the example site's
simulated meters (simulators/site.py: one Modbus server per bus on loopback, 145 meters, 144
read every 30 s and MAIN every 15 s), on `VirtualTimeLoop` (gateway/replay_live.py): when
nothing is ready the loop jumps to the next timer, so a simulated hour takes what its polls,
commits and rules cost in CPU. `LoopClock` gives the gateway and the simulated meters that
time. Left out: MQTT (no broker), the field devices (card readers, doors, patrol) and the web
console; InfluxDB (no server).

Retention and compaction: StorageCare runs as in the gateway (first pass after start, then
every `storage.retention_every_h` simulated hours). So that it has readings to delete and
energy counters to thin, the ledger starts with `--history-days` days of readings (every meter
at its rate, written in bulk) dated just older than `raw_days` (31, the smallest allowed): the
soak's retention passes delete them hour by hour as they pass the limit.

RSS (VmRSS of /proc/self/status) is sampled every simulated hour; the slope is a least-squares
fit over the samples after `--settle-h` simulated hours (caches, the SQLite page cache and the
WAL index fill up first), in MB per simulated day. With `--tracemalloc` the top allocation sites
that grew between the settled start and the end are printed.

The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import json
import logging
import multiprocessing
import shutil
import sys
import tempfile
import time
import tracemalloc
from datetime import datetime, timedelta, timezone
from pathlib import Path

from storage import Values, poll_schedule   # bench/storage.py's helpers

from gateway.clock import LoopClock  # noqa: E402
from gateway.config import parse_site  # noqa: E402
from gateway.replay_live import VirtualTimeLoop  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402
from gateway.ledger import Ledger  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "edge_config" / "site.example.yaml"
START = datetime(2026, 10, 30, 16, 0, tzinfo=timezone.utc)   # 2026-10-31 00:00 in Shanghai: a month's last day
TARGET_SLOPE_MB_DAY, TARGET_MB = 1.0, 60.0
MB = 1024 * 1024


def out(line: str = "") -> None:
    print(line, flush=True)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def slope_per_day(points: list[tuple[float, float]]) -> float:
    """Least squares of (simulated hours, MB): MB per simulated day."""
    if len(points) < 2:
        return 0.0
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx * 24 if sxx else 0.0


def write_history(cfg, db: Path, start: datetime, days: float, raw_days: int) -> int:
    """`days` of readings ending just after the retention limit at `start` (so the soak's passes
    delete them as they age), indexed."""
    if days <= 0:
        return 0
    end = (start - timedelta(days=raw_days) + timedelta(days=days * 0.75)).timestamp()
    ledger = Ledger(db, 1.0)
    values = Values(cfg, seed=3)
    polls = poll_schedule(cfg, end - days * 86400, end)
    for i, (t, meter) in enumerate(polls, 1):
        ledger.add(values.reading(meter, t))
        if i % 20_000 == 0 or i == len(polls):
            ledger.flush()
    ledger.catch_up()
    ledger.close()
    return len(polls)


async def soak(cfg_data: dict, base: Path, hours: float, budget_s: float, settle_h: float, trace: bool) -> dict:
    from simulators.site import SiteSimulation
    loop = asyncio.get_running_loop()
    clock = LoopClock(START, loop)
    cfg = parse_site(cfg_data, base_dir=SITE.parent)
    sim = SiteSimulation(cfg, clock=lambda: clock.now().timestamp())
    rss_no_sim = rss_mb()
    await sim.start()
    rss_sim = rss_mb()                 # the simulated meters live in this process too (they share its clock)
    data = sim.patched_config().model_dump(mode="json")
    gw = Gateway(parse_site(data, base_dir=SITE.parent), clock=clock)
    run = asyncio.create_task(gw.run(status_every_s=None))
    samples: list[dict] = []
    wall = time.perf_counter()
    snap0 = None
    removed: dict[str, int] = {}          # rows retention removed, by what
    seen = None
    try:
        h = 0
        while h < hours and time.perf_counter() - wall < budget_s:
            await asyncio.sleep(3600)
            h += 1
            if run.done():
                run.result()                 # raises what stopped the gateway
            s = gw.summary()
            last = gw.storage.retention.last if gw.storage is not None else None
            if last is not None and last is not seen:     # one pass an hour (retention_every_h 1)
                for k, n in last.removed.items():
                    removed[k] = removed.get(k, 0) + n
                seen = last
            samples.append({"h": h, "rss_mb": round(rss_mb(), 1), "real_s": round(time.perf_counter() - wall, 1),
                            "readings": s["readings_stored"], "polls": s["polls"], "failures": s["failures"],
                            "traced_mb": round(tracemalloc.get_traced_memory()[0] / MB, 1) if trace else None})
            if trace and h == int(settle_h):
                snap0 = tracemalloc.take_snapshot()
            out(f"  h {h:>3}: RSS {samples[-1]['rss_mb']:6.1f} MB, {s['readings_stored']:>9,} readings stored, "
                f"{s['failures']} failed polls, {samples[-1]['real_s']:6.0f} s real"
                + (f", traced {samples[-1]['traced_mb']} MB" if trace else "")
                + (f"; retention so far: {removed}" if h % 6 == 0 else ""))
        top = []
        if trace and snap0 is not None:
            diff = tracemalloc.take_snapshot().compare_to(snap0, "lineno")
            for d in diff[:12]:
                f = d.traceback[0]
                top.append({"where": f"{Path(f.filename).name}:{f.lineno}", "grew_kb": round(d.size_diff / 1024, 1),
                            "count_diff": d.count_diff})
    finally:
        gw.stop()
        await asyncio.gather(run, return_exceptions=True)
        await sim.stop()
    return {"samples": samples, "tracemalloc_growth": top, "summary": gw.summary(),
            "storage": gw.storage.stats() if gw.storage is not None else None, "retention_removed": removed,
            "loop": {"jumps": loop.jumps, "held_s": round(loop.held_s, 1)},
            "rss_mb_before_simulators": round(rss_no_sim, 1), "simulators_mb": round(rss_sim - rss_no_sim, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=72, help="simulated hours")
    ap.add_argument("--budget-s", type=float, default=600, help="stop after this many real seconds")
    ap.add_argument("--settle-h", type=float, default=3, help="the slope is fitted from this simulated hour on")
    ap.add_argument("--history-days", type=float, default=1.0,
                    help="days of readings written first, just older than raw_days (retention deletes them)")
    ap.add_argument("--tracemalloc", action="store_true", help="trace allocations (slower; RSS includes its own)")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    import yaml
    logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)   # a poll that timed out: counted in failures
    base = Path(tempfile.mkdtemp(prefix="bench-soak-", dir=args.dir))
    try:
        data = yaml.safe_load(SITE.read_text(encoding="utf-8"))
        for k in ("mqtt", "influxdb", "doors", "card_readers", "web"):
            data.pop(k, None)
        data["patrol"] = {k: v for k, v in data.get("patrol", {}).items() if k != "readers"}
        data["rules"] = [r for r in data.get("rules", []) if "door" not in str(r) and "patrol" not in str(r)
                         and "card" not in str(r)]
        db = base / "gateway.db"
        data["storage"] = {**data.get("storage", {}), "path": str(db), "raw_days": 31}
        cfg = parse_site(data, base_dir=SITE.parent)
        t = time.perf_counter()
        # in a child process: what writing it allocates is not the soak's memory
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            hist = pool.submit(write_history, cfg, db, START, args.history_days, 31).result()
        out(f"Soak: the example site's gateway on simulated time for {args.hours:g} h (at most {args.budget_s:g} s "
            f"real), RSS every simulated hour; {hist:,} readings of history older than raw_days 31 written in "
            f"{time.perf_counter() - t:.0f} s; {len(cfg.rules)} rules")
        if args.tracemalloc:
            tracemalloc.start(1)
        rss0 = rss_mb()
        with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop()) as runner:
            res = runner.run(soak(data, base, args.hours, args.budget_s, args.settle_h, args.tracemalloc))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    s = res["samples"]
    fit = [(x["h"], x["rss_mb"]) for x in s if x["h"] >= args.settle_h]
    slope = slope_per_day(fit)
    peak = max((x["rss_mb"] for x in s), default=0.0)
    res.update({"simulated_h": s[-1]["h"] if s else 0, "real_s": s[-1]["real_s"] if s else 0,
                "rss_mb_before": round(rss0, 1), "rss_mb_start": s[0]["rss_mb"] if s else None,
                "rss_mb_end": s[-1]["rss_mb"] if s else None, "rss_mb_peak": peak,
                "rss_slope_mb_per_day": round(slope, 2), "slope_fitted_from_h": args.settle_h,
                "history_readings": hist, "tracemalloc": args.tracemalloc,
                "target": {"slope_mb_per_day": TARGET_SLOPE_MB_DAY, "rss_mb": TARGET_MB}})
    out(f"  {res['simulated_h']} simulated hours in {res['real_s']:.0f} s: RSS {res['rss_mb_start']} MB after the "
        f"first hour, {res['rss_mb_end']} MB at the end, peak {peak} MB; slope from hour {args.settle_h:g}: "
        f"{slope:+.2f} MB per simulated day (targets: under {TARGET_SLOPE_MB_DAY:g} MB/day and {TARGET_MB:g} MB); "
        f"{res['rss_mb_before_simulators']} MB before the simulated meters started, which took "
        f"{res['simulators_mb']} MB of it")
    for t in res["tracemalloc_growth"]:
        out(f"    grew {t['grew_kb']:>8} KB ({t['count_diff']:+} blocks) at {t['where']}")
    print(json.dumps(res, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
