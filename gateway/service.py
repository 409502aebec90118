"""`gateway run` as a long-lived service: systemd notification and watchdog, reload on SIGHUP.

- `notify()` speaks systemd's sd_notify protocol over $NOTIFY_SOCKET (a datagram socket; no
  library needed). Without $NOTIFY_SOCKET (run by hand) it does nothing.
- The watchdog is pinged only while the gateway is healthy: every bus makes progress (its poll
  counter moves; a bus whose meters are all dead still polls them, so that is progress) and the
  ledger commits what it receives. A hung event loop or a stuck ledger stops the pings, and
  systemd restarts the service (`WatchdogSec=` in deploy/systemd/estate-gateway.service).
- SIGHUP reloads the site file: an invalid file is reported line by line and the gateway runs
  on with the old one; a valid one replaces the running gateway after the old one has finished
  its exchanges in flight and committed everything it received, so no reading is lost. The
  rules engine starts from the ledger (open alerts, baselines) as after any restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from pathlib import Path

from .config import ConfigError, SiteConfig, load_site, missing_env

log = logging.getLogger(__name__)


_failing = ""   # the last failure, said once until a message gets through again


def notify(message: str) -> bool:
    """Send one sd_notify message ("READY=1", "WATCHDOG=1", "STATUS=..."); False if not under systemd."""
    global _failing
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.setblocking(False)      # never stall the event loop on a receiver that is not reading
            s.connect(address)
            s.send(message.encode())
        _failing = ""
        return True
    except OSError as e:
        why = "the notify socket is full" if isinstance(e, BlockingIOError) else str(e)
        if why != _failing:
            log.warning("systemd notification %r not delivered: %s (said once)", message.split("=")[0], why)
            _failing = why
        return False


def watchdog_interval() -> float | None:
    """Half of systemd's watchdog timeout, or None when no watchdog is configured for us."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(0.5, int(usec) / 2e6)
    except ValueError:
        return None


class Health:
    """Judges whether the running gateway is making progress, from its counters."""

    def __init__(self, gw, clock=time.monotonic):
        self.gw = gw
        self.clock = clock
        self._polls: dict[str, tuple[int, float]] = {}
        self._commits: tuple[int, float] | None = None

    def _bus_limit_s(self, bus) -> float:
        # A bus whose meters are all backing off polls only every backoff_max_s.
        longest = max((st.meter.poll_s for st in bus.meters), default=60.0)
        return max(bus.bus.backoff_max_s, 3 * longest) + 60.0

    def check(self) -> tuple[bool, str]:
        now = self.clock()
        gw = self.gw
        ledger = gw.ledger
        if ledger is None:
            return False, "starting"
        for bus in gw.buses:
            polls = bus.stats()["polls"]
            seen = self._polls.get(bus.bus.id)
            if seen is None or polls != seen[0]:
                self._polls[bus.bus.id] = (polls, now)
            elif now - seen[1] > self._bus_limit_s(bus):
                return False, f"bus {bus.bus.id} made no poll for {now - seen[1]:.0f} s"
        commits = ledger.commits
        # A ledger that holds rows on purpose (the disk is full, gateway/ledger/retention.py) is doing its
        # job: restarting would lose what it holds.
        if self._commits is None or commits != self._commits[0] or not ledger.pending or getattr(ledger, "holding", False):
            self._commits = (commits, now)
        elif now - self._commits[1] > 30 + 10 * ledger.commit_interval_s:
            return False, f"ledger has {ledger.pending} rows waiting and no commit for {now - self._commits[1]:.0f} s"
        return True, "ok"


async def watchdog(gw, interval: float) -> None:
    health = Health(gw)
    said = "ok"
    while True:
        await asyncio.sleep(interval)
        ok, why = health.check()
        if ok:
            notify("WATCHDOG=1")
        elif why != said and why != "starting":
            log.error("watchdog: not pinging systemd: %s", why)
        said = why


def load_for_reload(path: Path) -> SiteConfig | None:
    """The new site file, or None (every problem logged) to run on with the old one."""
    try:
        cfg = load_site(path)
    except ConfigError as e:
        for p in e.problems:
            log.error("reload: %s: %s", e.source, p)
        log.error("reload: %s has %d problem(s): running on with the previous site file", path, len(e.problems))
        return None
    missing = missing_env(cfg)
    for p in missing:
        log.error("reload: %s: %s", path, p)
    if missing:
        log.error("reload: running on with the previous site file")
        return None
    return cfg


async def run_service(path: Path, cfg: SiteConfig, stop: asyncio.Event, make_gateway) -> None:
    """Run gateways made by `make_gateway(cfg)` until `stop`; SIGHUP swaps in the reloaded file."""
    loop = asyncio.get_running_loop()
    reload = asyncio.Event()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload.set)
    except (NotImplementedError, RuntimeError):   # not the main thread (tests): reload stays manual
        pass
    interval = watchdog_interval()
    while True:
        gw = make_gateway(cfg)
        task = asyncio.create_task(gw.run(), name="gateway")
        dog = asyncio.create_task(watchdog(gw, interval)) if interval else None
        while gw.ledger is None and not task.done():
            await asyncio.sleep(0.05)
        notify("READY=1")
        notify(f"STATUS=polling {sum(len(b.meters) for b in gw.buses)} meters on {len(gw.buses)} buses")
        new_cfg = None
        while new_cfg is None:
            waits = {task, asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())}
            done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for p in pending - {task}:
                p.cancel()
            if task.done() or stop.is_set():
                break
            reload.clear()
            log.info("reload: reading %s", path)
            new_cfg = load_for_reload(path)
        if new_cfg is not None:
            notify("RELOADING=1")
            log.info("reload: %s is valid: restarting the gateway on it (exchanges in flight finish first)", path)
        else:
            notify("STOPPING=1")
        gw.stop()
        try:
            await task
        finally:
            if dog is not None:
                dog.cancel()
        if new_cfg is None:
            return
        cfg = new_cfg
