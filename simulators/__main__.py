"""python -m simulators SITE_FILE: serve simulated meters for every bus of a site file."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from gateway.config import ConfigError, load_site

from .site import SiteSimulation


def _slow(text: str) -> tuple[str, float]:
    meter, sep, seconds = text.partition("=")
    try:
        if not sep or not meter:
            raise ValueError
        return meter, float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected METER=SECONDS, got '{text}'") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators",
                                description="Serve simulated meters for every bus of a site file.")
    p.add_argument("site_file")
    p.add_argument("--line-speed", action="store_true", help="emulate RS-485 line time")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--dead", nargs="+", action="extend", default=[], metavar="METER", help="meters that never answer")
    p.add_argument("--slow", nargs="+", action="extend", type=_slow, default=[], metavar="METER=SECONDS",
                   help="meters that answer late")
    return p.parse_args(argv)


async def _run(args: argparse.Namespace) -> int:
    try:
        cfg = load_site(args.site_file)
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    sim = SiteSimulation(cfg, seed=args.seed, line_speed=args.line_speed)
    unknown = [m for m in [*args.dead, *(m for m, _ in args.slow)] if m not in sim.meters]
    if unknown:
        print(f"unknown meter(s): {', '.join(unknown)}", file=sys.stderr)
        return 2
    for m in args.dead:
        sim.meter(m).dead = True
    for m, seconds in args.slow:
        sim.meter(m).delay_s = seconds

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with sim:
        for bus in cfg.buses:
            server = sim.servers[bus.id]
            kind = type(server).__name__
            units = len(server.meters)
            print(f"{bus.id}\t{kind}\t{server.address}\t{units} meters", flush=True)
        print("ready (Ctrl-C to stop)", flush=True)
        await stop.wait()
    return 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(_run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
