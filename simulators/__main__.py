"""python -m simulators SITE_FILE: serve simulated meters for every bus of a site file.

python -m simulators month -c SITE_FILE --db LEDGER: write a month of readings into a ledger.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.config import ConfigError, load_site
from gateway.ledger import LedgerError

from .month import generate_month
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
                                description="Serve simulated meters for every bus of a site file.",
                                epilog="python -m simulators month --help: write a month of readings into a ledger")
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


def parse_month_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m simulators month",
                                description="Write a deterministic month of readings of every enabled meter "
                                            "into a SQLite ledger (with planted faults).")
    p.add_argument("-c", "--config", required=True, metavar="SITE_FILE")
    p.add_argument("--month", default="2026-10", help="YYYY-MM (default 2026-10)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--db", required=True, type=Path, help="ledger file (a new one, or one without these readings)")
    p.add_argument("--every", type=int, default=60, metavar="SECONDS", help="reading interval, divides an hour")
    p.add_argument("--margin", type=int, default=2, metavar="HOURS", help="readings before and after the month")
    p.add_argument("--no-faults", dest="faults", action="store_false", help="no gap, replacement, spike or rollover")
    return p.parse_args(argv)


def _month(args: argparse.Namespace) -> int:
    try:
        cfg = load_site(args.config)
    except ConfigError as e:
        print("\n".join(e.problems), file=sys.stderr)
        return 2
    try:
        s = generate_month(cfg, args.db, month=args.month, seed=args.seed, every_s=args.every,
                           faults=args.faults, margin_h=args.margin)
    except (ValueError, LedgerError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{s.line()} -> {args.db}")
    tz = ZoneInfo(cfg.site.timezone)
    for f in s.faults:
        when = f"{f.when.astimezone(tz):%Y-%m-%d %H:%M} local" if f.when else "-"
        print(f"  {f.kind}\t{f.meter}\t{when}\t{f.detail}")
    for kind, why in s.skipped.items():
        print(f"  {kind}\tskipped: {why}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["month"]:  # a sub-command; a bare SITE_FILE still serves the site
        return _month(parse_month_args(argv[1:]))
    return asyncio.run(_run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
