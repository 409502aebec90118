"""Lighting: command-to-confirmed latency on 9600 8N1 lines, and the time to plan a year.

100 lighting circuits on 5 simulated RS-485 lines (RTU over TCP, as serial servers carry them;
the simulator emulates the wire time of 9600 8N1), 20 per line: a 16-channel and a 4-channel
relay module and the circuits' meters, polled every 30 s as on the estate, so commands wait for
the poll in flight. Every circuit is switched on and then off (stagger 0: the queueing behind
each other on a line is part of the figure), 5 rounds. Latency = from the decision to switch
to the confirming readback (FC05 write + FC01 readback); the line's minimum is the wire time of
those two exchanges. The year of plans: every circuit of the example site, every day of 2027.

Prints the figures, the last line JSON. The simulators run in this process (one core): the
figure is an upper bound of what a Pi sees with the same line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import common  # noqa: F401  (sys.path)
from common import out, percentile

from gateway.clock import Clock
from gateway.config import load_site, parse_site
from gateway.events import LightingCommand
from gateway.hub import Hub
from gateway.lighting.control import LightingControl
from gateway.lighting.outputs import make_ports
from gateway.lighting.plan import Planner
from gateway.runtime import build_buses
from simulators.modbus_server import LineTiming
from simulators.site import SiteSimulation

ROOT = Path(__file__).resolve().parent.parent


class SetClock(Clock):
    def __init__(self, t):
        self.t = t

    def now(self):
        return self.t


def bench_site(lines: int, per_line: int) -> dict:
    buses, meters, outputs, circuits = [], [], [], []
    for b in range(lines):
        bus = f"bus-{b}"
        buses.append({"id": bus, "type": "modbus_tcp", "framer": "rtu", "host": "127.0.0.1", "timeout_s": 0.5})
        for k in range(per_line):
            cid = f"C{b}-{k:02d}"
            meters.append({"id": cid, "bus": bus, "unit": k + 1, "model": "chint-ddsu666", "poll_s": 30,
                           "circuit": "street_lighting"})
            outputs.append({"id": f"K{b}-{k:02d}", "bus": bus, "unit": 100 + k // 16, "address": k % 16})
            circuits.append({"id": cid, "outputs": [f"K{b}-{k:02d}"], "meters": [cid], "schedule": "s"})
    return {"site": {"id": "bench", "name": "bench", "latitude": 44.15, "longitude": 125.83},
            "buses": buses, "meters": meters, "outputs": outputs,
            "lighting": {"schedules": [{"id": "s", "mode": "always_off"}], "circuits": circuits,
                         "stagger_s": 0, "min_on_minutes": 0, "min_off_minutes": 0, "settle_s": 0,
                         "check_every_s": 3600}}


async def latency(lines: int, per_line: int, rounds: int) -> dict:
    cfg0 = parse_site(bench_site(lines, per_line), base_dir=ROOT)
    sim = SiteSimulation(cfg0, line_speed=True)
    await sim.start()
    hub = Hub()
    sub = hub.subscribe(LightingCommand, name="bench")
    clock = SetClock(datetime(2026, 12, 21, 4, 0, tzinfo=timezone.utc))
    cfg = sim.patched_config()
    buses = build_buses(cfg, hub.publish, clock)
    tasks = [asyncio.create_task(b.run()) for b in buses]
    ctl = LightingControl(cfg, make_ports(cfg, {b.bus.id: b for b in buses}), hub.publish, clock)
    await asyncio.sleep(1.0)                 # the first poll cycle under way
    waits: list[float] = []
    exchanges: list[float] = []
    try:
        await ctl.step()
        sub.take_all()
        for r in range(rounds):
            for on in (True, False):
                began = time.monotonic()
                for cid in ctl.circuits:
                    ctl.overrides[cid] = {"on": on, "until_us": 2**62, "by": "bench", "role": "admin",
                                          "reason": "bench"}
                await ctl.step()
                for e in sub.take_all():
                    if e.result != "confirmed":
                        raise SystemExit(f"{e.circuit}: {e.result} {e.detail}")
                    exchanges.append(e.latency_s)
                waits.append(time.monotonic() - began)
                ctl.overrides.clear()
                await asyncio.sleep(0.5)
    finally:
        for b in buses:
            b.stop()
        await asyncio.gather(*tasks)
        await sim.stop()
    line = LineTiming(9600, 8, "N", 1)
    minimum = line.exchange_s(8, 8) + line.exchange_s(8, 6)   # FC05 echo, FC01 of one coil
    return {"circuits": lines * per_line, "lines": lines, "rounds": rounds,
            "confirm_p50_ms": round(percentile(exchanges, 50) * 1000, 1),
            "confirm_p99_ms": round(percentile(exchanges, 99) * 1000, 1),
            "line_minimum_ms": round(minimum * 1000, 1),
            "all_confirmed_p50_s": round(percentile(waits, 50), 2),
            "all_confirmed_max_s": round(max(waits), 2)}


def year_of_plans() -> dict:
    cfg = load_site(ROOT / "edge_config" / "site.example.yaml")
    began = time.perf_counter()
    planner = Planner(cfg)
    n = 0
    d = date(2027, 1, 1)
    while d.year == 2027:
        for c in cfg.lighting.circuits:
            planner.day(c.id, d)
            n += 1
        d += timedelta(days=1)
    return {"year_plan_s": round(time.perf_counter() - began, 2), "circuit_days": n}


async def main(args) -> dict:
    res = await latency(args.lines, args.per_line, args.rounds)
    out(f"{res['circuits']} circuits on {res['lines']} lines at 9600 8N1, {res['rounds']} rounds on+off: "
        f"write+readback p50 {res['confirm_p50_ms']} ms, p99 {res['confirm_p99_ms']} ms "
        f"(the line's minimum {res['line_minimum_ms']} ms); all confirmed in {res['all_confirmed_p50_s']} s "
        f"(max {res['all_confirmed_max_s']} s)")
    year = year_of_plans()
    out(f"a year of plans for the example site: {year['circuit_days']} circuit-days in {year['year_plan_s']} s")
    return {**res, **year}


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=5)
    p.add_argument("--per-line", type=int, default=20)
    p.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main(p.parse_args())), ensure_ascii=False), flush=True)
