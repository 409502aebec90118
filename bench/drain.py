"""Outbox drain into a real InfluxDB 1.x on loopback, next to a plain HTTP loop.

Prints human-readable lines, then one JSON object as the last line:
- drain: points/s at which a backlog of N points (default 1,000,000) in the ledger's outbox
  drains into InfluxDB 1.x through the gateway's Drainer (batch 5000, gzip as configured);
- plain: points/s of a plain aiohttp loop posting the same lines in batches of the same size,
  with the same compression, into an empty database of the same server; and the ratio;
- steady: CPU µs per point of steady-state writing (readings through hub -> ledger -> outbox ->
  drainer -> InfluxDB), with the backlog at zero.

Needs Debian's `influxd` (tools/setup-tests.sh installs it). Targets: ratio >= 0.8 and
>= 50,000 points/s on the machine it runs on. Figures, not assertions.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
import json
import random
import resource
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from servers import Influx1  # noqa: E402

from gateway.config import parse_site  # noqa: E402
from gateway.events import Reading  # noqa: E402
from gateway.hub import Hub  # noqa: E402
from gateway.sinks.drainer import Drainer  # noqa: E402
from gateway.sinks.influxdb import make_writer  # noqa: E402
from gateway.sinks.lineprotocol import PRECISION  # noqa: E402
from gateway.sinks.schema import Encoder, SiteIndex  # noqa: E402
from gateway.ledger import Ledger  # noqa: E402

SITE = {"id": "wanhu", "name": "万户新居", "latitude": 44.15, "longitude": 125.83}
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def site(tmp: Path, influx_url: str, database: str, batch: int, use_gzip: bool):
    meters = [{"id": f"B{i:02d}-stair", "bus": "b", "unit": i, "model": "chint-ddsu666",
               "circuit": "stairwell_lighting", "building": f"B{i:02d}"} for i in range(1, 101)]
    return parse_site({"site": SITE, "storage": {"path": str(tmp / "gw.db")},
                       "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}], "meters": meters,
                       "influxdb": {"version": 1, "url": influx_url, "database": database,
                                    "batch_size": batch, "batch_age_s": 0, "gzip": use_gzip}},
                      base_dir=tmp)


def readings(n: int, meters: list[str], start: datetime = T0):
    """n realistic DDSU666 readings (8 fields), meters in turn, 30 s apart per meter."""
    rnd = random.Random(1)
    energy = {m: Decimal(rnd.randint(100_000, 5_000_000)) / 100 for m in meters}
    for i in range(n):
        m = meters[i % len(meters)]
        energy[m] += Decimal(rnd.randint(0, 20)) / 100
        p = rnd.uniform(0.01, 0.5)
        yield Reading(m, start + timedelta(seconds=30 * (i // len(meters))), {
            "voltage_v": rnd.uniform(215, 228), "current_a": p / 0.22, "power_kw": p,
            "reactive_kvar": p * 0.2, "pf": rnd.uniform(0.9, 0.99), "freq_hz": rnd.uniform(49.95, 50.05),
            "energy_kwh": float(energy[m]), "export_energy_kwh": 0.0},
            {"energy_kwh": energy[m], "export_energy_kwh": Decimal("0.00")})


def fill_outbox(ledger: Ledger, n: int, meters: list[str]) -> None:
    for i, r in enumerate(readings(n, meters)):
        ledger.add(r)
        if i % 50_000 == 49_999:
            ledger.flush()
    ledger.flush()


async def drain_backlog(ledger: Ledger, drainer: Drainer) -> float:
    start = time.perf_counter()
    task = asyncio.create_task(drainer.run())
    while ledger.outbox_depth:
        await asyncio.sleep(0.01)
    elapsed = time.perf_counter() - start
    drainer.stop()
    await task
    return elapsed


async def plain_loop(url: str, database: str, lines: list[str], batch: int, use_gzip: bool,
                     in_flight: int) -> float:
    """The same lines, the same batch size, compression and number of requests on the wire."""
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    if use_gzip:
        headers["Content-Encoding"] = "gzip"
    params = {"db": database, "precision": PRECISION}
    starts = iter(range(0, len(lines), batch))

    async def worker(session: aiohttp.ClientSession) -> None:
        for i in starts:
            body = "\n".join(lines[i:i + batch]).encode()
            if use_gzip:
                body = gzip.compress(body, compresslevel=1)
            async with session.post(url + "/write", params=params, data=body, headers=headers) as resp:
                if resp.status != 204:
                    raise SystemExit(f"plain loop: HTTP {resp.status}: {await resp.text()}")

    start = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(worker(session) for _ in range(in_flight)))
    return time.perf_counter() - start


async def steady(cfg, seconds: float, rate: int) -> tuple[float, int]:
    """CPU per point with readings arriving at `rate`/s and the drainer keeping up."""
    meters = [m.id for m in cfg.meters]
    hub = Hub()
    ledger = Ledger(cfg.storage_path, 1.0, Encoder(SiteIndex.from_config(cfg)))
    store = asyncio.create_task(ledger.run(hub))
    drainer = Drainer(ledger, make_writer(cfg.influxdb, cfg.base_dir), cfg.influxdb)
    drain = asyncio.create_task(drainer.run())
    source = readings(10**9, meters, start=datetime.now(timezone.utc) - timedelta(days=30))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    tick = 0.1
    while time.perf_counter() - wall0 < seconds:
        for _ in range(int(rate * tick)):
            hub.publish(next(source))
        await asyncio.sleep(tick)
    while ledger.outbox_depth or ledger.pending:
        await asyncio.sleep(0.05)
    cpu = time.process_time() - cpu0
    written = drainer.points_written
    drainer.stop()
    await drain
    store.cancel()
    await asyncio.gather(store, return_exceptions=True)
    ledger.close()
    return cpu, written


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--points", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=5000)
    ap.add_argument("--no-gzip", action="store_true")
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--steady-seconds", type=float, default=10)
    ap.add_argument("--steady-rate", type=int, default=2000, help="readings per second")
    args = ap.parse_args()
    use_gzip = not args.no_gzip

    with tempfile.TemporaryDirectory(prefix="bench-drain-") as tmp_:
        tmp = Path(tmp_)
        (tmp / "influx").mkdir()
        server = Influx1(tmp / "influx")
        server.start()
        try:
            cfg = site(tmp, server.url, "gateway", args.batch, use_gzip)
            meters = [m.id for m in cfg.meters]
            ledger = Ledger(cfg.storage_path, 1.0, Encoder(SiteIndex.from_config(cfg)))
            t = time.perf_counter()
            fill_outbox(ledger, args.points, meters)
            print(f"backlog: {ledger.outbox_depth:,} points, {ledger.outbox_bytes / 1e6:.0f} MB of line protocol "
                  f"(filled in {time.perf_counter() - t:.1f} s)")
            lines = [line for _, line in ledger.outbox_batch(args.points)]

            in_flight = cfg.influxdb.max_in_flight
            print(f"settings: batch {args.batch}, gzip {'on' if use_gzip else 'off'}, {in_flight} requests in flight")
            # Alternate the two sides, each into an empty database, and keep the better run of each:
            # InfluxDB's own compactions make single runs noisy on a 2-core machine.
            plain_rate = drain_rate = 0.0
            drain_cpu = 0.0
            for run in range(args.runs):
                db = f"plain{run}"
                server.query(f"CREATE DATABASE {db}")
                plain_s = await plain_loop(server.url, db, lines, args.batch, use_gzip, in_flight)
                plain_rate = max(plain_rate, len(lines) / plain_s)
                print(f"  run {run + 1}: plain aiohttp loop {len(lines) / plain_s:,.0f} points/s", flush=True)
                server.query("DROP DATABASE gateway")
                server.query("CREATE DATABASE gateway")
                if run:
                    fill_outbox(ledger, args.points, meters)
                drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp), cfg.influxdb)
                cpu0 = time.process_time()
                drain_s = await drain_backlog(ledger, drainer)
                cpu = time.process_time() - cpu0
                if len(lines) / drain_s > drain_rate:
                    drain_rate, drain_cpu = len(lines) / drain_s, cpu
                print(f"  run {run + 1}: gateway drainer  {len(lines) / drain_s:,.0f} points/s "
                      f"({cpu / len(lines) * 1e6:.1f} µs CPU per point)", flush=True)
            print(f"plain aiohttp loop: {plain_rate:,.0f} points/s; gateway drainer: {drain_rate:,.0f} points/s "
                  f"-> ratio {drain_rate / plain_rate:.2f}")
            stored = server.query('SELECT count("voltage_v") FROM "meter"')["results"][0]["series"][0]["values"][0][1]
            print(f"points in InfluxDB after the last drain: {stored:,} (expected {len(lines):,})")
            ledger.close()
            del lines

            server.query("CREATE DATABASE steady")
            cfg2 = site(tmp / "s", server.url, "steady", args.batch, use_gzip)
            (tmp / "s").mkdir()
            cpu, written = await steady(cfg2, args.steady_seconds, args.steady_rate)
            steady_us = cpu / written * 1e6 if written else None
            print(f"steady state: {written:,} points at {args.steady_rate}/s, {steady_us:.1f} µs CPU per point "
                  "(encode, ledger commit, outbox read, send, delete)")
        finally:
            server.stop()

    result = {
        "backlog_points": args.points, "batch": args.batch, "gzip": use_gzip, "in_flight": in_flight,
        "drain_points_per_s": round(drain_rate), "plain_points_per_s": round(plain_rate),
        "ratio": round(drain_rate / plain_rate, 3), "drain_cpu_us_per_point": round(drain_cpu / args.points * 1e6, 2),
        "steady_cpu_us_per_point": round(steady_us, 2) if steady_us else None,
        "points_in_influx": stored,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "targets": {"ratio_min": 0.8, "points_per_s_min": 50_000},
        "targets_met": {"ratio": drain_rate / plain_rate >= 0.8, "points_per_s": drain_rate >= 50_000},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
