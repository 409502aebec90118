"""Drains the ledger's outbox into InfluxDB: nothing lost, nothing doubled.

Rows leave the outbox only after the server confirmed them. Points carry their original
timestamps, so a batch sent again after a crash overwrites itself instead of duplicating.
Failures back off exponentially with jitter and resume by themselves; a batch the server
refuses as bad data is split until the bad points are isolated, and only those are moved
aside (with the server's reason), so they never block the points behind them.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ..backoff import Backoff
from ..clock import REAL_CLOCK, Clock, to_us
from ..config import InfluxConfig
from ..ledger import Ledger
from .influxdb import WriteError

log = logging.getLogger(__name__)

BUDGET_WARN = 0.8   # warn when the outbox reaches this share of its disk budget
SHED_TO = 0.9       # shedding brings it back to this share


class Drainer:
    def __init__(self, ledger: Ledger, writer, cfg: InfluxConfig, clock: Clock = REAL_CLOCK):
        self.ledger = ledger
        self.writer = writer
        self.cfg = cfg
        self.clock = clock
        self.budget = int(cfg.outbox_max_mb * 1024 * 1024)
        self.points_written = 0
        self.batches_written = 0
        self.write_failures = 0
        self.rejected = 0
        self._failing: str | None = None  # the reason of the current outage, logged once
        self._budget_warned = False
        self._stop = False

    # ---- the disk budget ----

    def check_budget(self) -> None:
        used = self.ledger.outbox_bytes
        if used >= BUDGET_WARN * self.budget and not self._budget_warned:
            self._budget_warned = True
            log.warning("outbox at %.0f%% of its %s MB disk budget (%d points waiting for InfluxDB)",
                        100 * used / self.budget, self.cfg.outbox_max_mb, self.ledger.outbox_depth)
        elif used < 0.7 * self.budget:
            self._budget_warned = False
        if used > self.budget:
            shed = self.ledger.shed(int(SHED_TO * self.budget))
            log.warning("outbox over its disk budget: shed %s (energy counters are kept)",
                        ", ".join(f"{n} {m}" for m, n in shed.items()) or "nothing sheddable")

    # ---- sending ----

    async def _send(self, rows: list[tuple[int, str]]) -> None:
        """Send rows; isolate bad points and oversize batches by halving. Raises WriteError to retry."""
        try:
            await self.writer.write([line for _, line in rows])
        except WriteError as e:
            if e.kind == "too_large" and len(rows) > 1 or e.kind == "bad_data" and len(rows) > 1:
                half = len(rows) // 2
                await self._send(rows[:half])
                await self._send(rows[half:])
                return
            if e.kind in ("bad_data", "too_large"):
                self.ledger.outbox_reject(rows, e.status or 0, e.reason, to_us(self.clock.now()))
                self.rejected += len(rows)
                log.error("InfluxDB refused a point (%s), moved aside: %s", e, rows[0][1][:200])
                return
            raise
        self.ledger.outbox_confirmed(rows, to_us(self.clock.now()))
        self.points_written += len(rows)
        self.batches_written += 1

    async def run(self) -> None:
        """Send until stopped; once stopped, send what is left if the server takes it, then return.

        Up to `max_in_flight` batches are on the wire at once, so the server never waits for our
        SQLite work; each batch is deleted when its own confirmation arrives. After a failure all
        batches in flight are let finish, and sending starts again from the oldest row left.
        """
        # Jitter keeps a fleet of boxes from hammering a restarted server in step.
        backoff = Backoff(1.0, self.cfg.backoff_max_s, jitter=random.Random())
        cursor = 0  # highest id handed to a send
        # Points read but too young to go alone: the ledger hands each point once, so they are
        # kept here and the next batch starts with them.
        held: list = []
        inflight: set[asyncio.Task] = set()
        try:
            while True:
                self.check_budget()
                while len(inflight) < self.cfg.max_in_flight:
                    rows = held + self.ledger.outbox_batch(self.cfg.batch_size - len(held),
                                                           held[-1][0] if held else cursor)
                    held = []
                    if not rows:
                        break
                    if len(rows) < self.cfg.batch_size and not self._stop and not self._old_enough(rows):
                        held = rows
                        break
                    inflight.add(asyncio.create_task(self._send(rows)))
                    cursor = rows[-1][0]
                if not inflight:
                    if self._stop:
                        break
                    await self._wait_for_more()
                    continue
                done, inflight = await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
                errors = [t.exception() for t in done if t.exception() is not None]
                if not errors:
                    backoff.reset()
                    self._recovered()
                    continue
                if inflight:
                    await asyncio.wait(inflight)
                    errors += [t.exception() for t in inflight if t.exception() is not None]
                    inflight = set()
                cursor, held = 0, []      # from the oldest point not confirmed, held ones included
                e = errors[0]
                if not isinstance(e, WriteError):
                    raise e
                delay = backoff.failed()
                self.write_failures += 1
                self._outage(e)
                if self._stop:
                    break  # the outbox keeps them for the next start
                await self._sleep(delay)
        finally:
            for t in inflight:
                t.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            await self.writer.close()

    def _old_enough(self, rows: list[tuple[int, str]]) -> bool:
        oldest = self.ledger.outbox_ts_ms(rows[0][0])
        if oldest is None:
            return False
        age_ms = to_us(self.clock.now()) // 1000 - oldest
        # A point "from the future" means the wall clock is behind (not set yet after a power cut):
        # its age cannot be told, so it goes now rather than wait for a clock that may be hours off.
        return age_ms >= self.cfg.batch_age_s * 1000 or age_ms < 0

    async def _wait_for_more(self) -> None:
        self.ledger.committed.clear()
        try:
            async with asyncio.timeout(max(0.05, min(self.cfg.batch_age_s, 1.0))):
                await self.ledger.committed.wait()
        except TimeoutError:
            pass

    async def _sleep(self, seconds: float) -> None:
        end = self.clock.monotonic() + seconds
        while not self._stop and self.clock.monotonic() < end:
            await asyncio.sleep(min(0.2, end - self.clock.monotonic()))

    def _outage(self, e: WriteError) -> None:
        if self._failing is None:
            hint = " (check the credentials and the database/bucket name)" if e.kind == "config" else ""
            log.error("InfluxDB %s: write failed, points stay in the outbox and will be sent later: %s%s",
                      self.cfg.url, e, hint)
        self._failing = str(e)

    def _recovered(self) -> None:
        if self._failing is not None:
            log.info("InfluxDB %s: writing again; %d points still in the outbox",
                     self.cfg.url, self.ledger.outbox_depth)
            self._failing = None

    def stop(self) -> None:
        self._stop = True
        self.ledger.committed.set()

    def stats(self) -> dict:
        oldest = self.ledger.outbox_oldest_ms()
        return {
            "outbox_depth": self.ledger.outbox_depth,
            "outbox_bytes": self.ledger.outbox_bytes,
            "outbox_age_s": max(0.0, (to_us(self.clock.now()) // 1000 - oldest) / 1000) if oldest else 0.0,
            "points_written": self.points_written,
            "write_failures": self.write_failures,
            "points_rejected": self.rejected,
            # points of untrusted clock time, held back in the ledger (outbox_held) until their
            # episode is repaired (gateway/timesync.py); never given to this drainer before
            "outbox_held": getattr(self.ledger, "outbox_held", 0),
        }
