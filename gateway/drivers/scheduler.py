"""The poll scheduler shared by the meter drivers (Modbus, DL/T 645): one per bus.

One request at a time on the wire. Polling is deadline-based per meter: each meter has its own
period, deadlines advance on a fixed grid (no drift), and a deadline that passed while the bus
was busy is counted as an overrun and skipped rather than queued. A silent meter costs one
timeout per attempt and is never re-asked in the same poll; after `offline_after` failures it is
reported offline and tried with exponential back-off, so it cannot starve the other meters on
its bus.

A protocol driver subclasses `PolledBus` and supplies the exchange (`_exchange`: one request of
a meter's plan, answered or raising a `PollError`), what a recording keeps of an answer
(`_recorded`), how a meter is named in log lines (`_describe`) and `close`. Each request of a
plan decodes its own answer: `req.decode(answer, values, counters)`. Anything else a poll raises
(a decoder meeting an answer nobody foresaw, a bug) is that meter's failed poll too, counted with
`bad_answers` and logged with its traceback once per episode: the bus task goes on.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Awaitable

from ..backoff import Backoff, backoff_delay
from ..clock import REAL_CLOCK, Clock
from ..config import Meter
from ..events import DeviceStatus, Reading



class PollError(Exception):
    """One failed exchange; `kind` is the counter it belongs to."""

    kind = "error"
    retry = False  # whether asking again within the same poll makes sense


class NoAnswer(PollError):
    kind = "timeouts"


class Garbled(PollError):
    kind = "crc_errors"
    retry = True


class BadAnswer(Garbled):
    """An answer that is not the one asked for: wrong length, function or unit, or unusable.

    Garbled too (whoever handles a garbled answer handles this one), with its own counter.
    """

    kind = "bad_answers"


class BusDown(PollError):
    kind = "bus_down"


@dataclass
class MeterStats:
    polls: int = 0
    ok: int = 0
    failures: int = 0
    timeouts: int = 0
    exceptions: int = 0
    crc_errors: int = 0
    bad_answers: int = 0
    bus_down: int = 0
    overruns: int = 0
    requests: int = 0


@dataclass
class MeterState:
    meter: Meter
    model: Any
    plan: list
    timeout_s: float
    due: float = 0.0
    failures: int = 0  # consecutive
    online: bool | None = None
    last_error: str = ""
    stats: MeterStats = field(default_factory=MeterStats)


class PolledBus:
    """Owns one bus and polls its meters; a subclass speaks the protocol."""

    def __init__(self, bus, publish, clock: Clock = REAL_CLOCK):
        self.bus = bus
        self.publish = publish
        self.clock = clock
        self.meters: list[MeterState] = []
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()      # a job was submitted, or stop
        self._jobs: deque = deque()       # (job, future): exchanges other than polls (relay outputs)
        self.busy_s = 0.0
        self._bus_problem = ""
        self._next_connect = 0.0
        self._connect_backoff = Backoff(0.5, 30.0)
        self.recorder = None  # a gateway.recording.Recorder while `run --record` records
        self._log = logging.getLogger(type(self).__module__)  # the protocol module's logger

    # ---- what a protocol supplies ----

    def _exchange(self, st: MeterState, req) -> Awaitable[Any]:
        """One request of `st`'s plan: an awaitable of the answer `req.decode` takes; raises PollError."""
        raise NotImplementedError

    def _recorded(self, req, answer) -> dict:
        """One successful exchange as `run --record` writes it."""
        raise NotImplementedError

    def _describe(self, st: MeterState) -> str:
        return f"meter {st.meter.id} (bus {self.bus.id})"

    async def close(self) -> None:
        pass

    # ---- the bus's own trouble (once per episode) ----

    def _connect_failed(self, why: str) -> None:
        """A failed open/connect: one back-off, shared by all meters of the bus, decides the next try."""
        self._next_connect = self.clock.monotonic() + self._connect_backoff.failed()
        self._bus_trouble(why)

    def _connected(self) -> None:
        self._connect_backoff.reset()
        self._bus_recovered()

    def _bus_trouble(self, why: str) -> None:
        if not self._bus_problem:
            self._log.error("bus %s (%s): %s; retrying", self.bus.id, self.bus.type, why)
            self.publish(DeviceStatus(self.bus.id, "bus", False, self.clock.now(), why))
        self._bus_problem = why

    def _bus_recovered(self) -> None:
        if self._bus_problem:
            self._log.info("bus %s: connected again", self.bus.id)
            self.publish(DeviceStatus(self.bus.id, "bus", True, self.clock.now(), "connected"))
        self._bus_problem = ""

    # ---- one poll of one meter ----

    async def poll(self, st: MeterState) -> Reading | None:
        """Read all of a meter's fields; publish and return the Reading, or None on failure."""
        st.stats.polls += 1
        ts = self.clock.now()
        values: dict[str, float] = {}
        counters: dict[str, Decimal] = {}
        record = [] if self.recorder is not None else None  # the exchanges, for `run --record`
        try:
            for req in st.plan:
                attempt = 0
                while True:
                    st.stats.requests += 1
                    try:
                        answer = await self._exchange(st, req)
                        if record is not None:
                            record.append(self._recorded(req, answer))
                        break
                    except PollError as e:
                        if record is not None:
                            code = getattr(e, "code", None)
                            record.append({"error": type(e).__name__, "detail": str(e),
                                           **({"code": code} if code is not None else {})})
                        if e.retry and attempt < self.bus.retries:
                            attempt += 1
                            setattr(st.stats, e.kind, getattr(st.stats, e.kind) + 1)
                            continue
                        raise
                req.decode(answer, values, counters)
        except PollError as e:
            self._failed(st, e)
            return None
        except Exception as e:
            # Whatever else goes wrong in one meter's exchange or decoding (an answer nobody
            # foresaw, a bug) is that meter's failed poll: the bus and its other meters go on.
            what = f"{type(e).__module__}.{type(e).__qualname__}".removeprefix("builtins.")
            self._failed(st, BadAnswer(f"unexpected error reading it: {what}: {e}"), e)
            return None
        finally:
            if record is not None:
                self.recorder.poll(ts, self.bus.id, st.meter.id, record)
        reading = Reading(st.meter.id, ts, values, counters)
        self._succeeded(st)
        self.publish(reading)
        return reading

    def _failed(self, st: MeterState, e: PollError, unexpected: Exception | None = None) -> None:
        st.failures += 1
        st.stats.failures += 1
        setattr(st.stats, e.kind, getattr(st.stats, e.kind) + 1)
        st.last_error = str(e)
        if st.failures == 1 and not isinstance(e, BusDown):  # once per episode; bus has its own line
            # an unexpected error is a bug to fix: its traceback comes with the line
            self._log.warning("%s: %s", self._describe(st), e, exc_info=unexpected)
        if st.failures >= self.bus.offline_after and st.online is not False:
            st.online = False
            self._log.warning("%s: offline after %d failed polls (%s)", self._describe(st), st.failures, e)
            self.publish(DeviceStatus(st.meter.id, "meter", False, self.clock.now(), str(e)))

    def _succeeded(self, st: MeterState) -> None:
        st.stats.ok += 1
        if st.failures and (st.failures > 1 or st.online is False):
            self._log.info("%s: answers again after %d failed polls", self._describe(st), st.failures)
        st.failures = 0
        st.last_error = ""
        if st.online is not True:
            st.online = True
            self.publish(DeviceStatus(st.meter.id, "meter", True, self.clock.now(), "answering"))

    # ---- the scheduler ----

    def _next_due(self, st: MeterState, now: float) -> float:
        period = st.meter.poll_s
        due = st.due + period
        if due <= now:
            missed = int((now - st.due) // period)
            st.stats.overruns += missed
            due = st.due + (missed + 1) * period
        if st.failures > 1:
            # Back off a silent meter: skip whole periods, so it stays on its grid.
            backoff = backoff_delay(st.failures - 1, period, self.bus.backoff_max_s)
            due += period * (int(backoff // period))
        return due

    def stop(self) -> None:
        """Ask the scheduler to finish the exchange in flight and return."""
        self._stop.set()
        self._wake.set()

    def submit(self, job) -> asyncio.Future:
        """Run `job()` (a coroutine function doing exchanges) on this bus between two polls: the
        line carries one request at a time, so a relay command waits for the poll in flight and
        then goes before the next poll. The future has the job's result or its error."""
        fut = asyncio.get_running_loop().create_future()
        if self._stop.is_set():
            fut.set_exception(BusDown(f"bus {self.bus.id} is stopping"))
            return fut
        self._jobs.append((job, fut))
        self._wake.set()
        return fut

    def poll_soon(self, meter_id: str) -> asyncio.Future | None:
        """One extra poll of a meter, ahead of its grid (a lighting command wants its proof)."""
        st = next((m for m in self.meters if m.meter.id == meter_id), None)
        if st is None:
            return None
        fut = self.submit(lambda: self.poll(st))
        fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # a poll's trouble is the poll's to say
        return fut

    async def _run_jobs(self) -> None:
        while self._jobs:
            job, fut = self._jobs.popleft()
            if fut.done():
                continue
            began = self.clock.monotonic()
            try:
                result = await job()
            except asyncio.CancelledError:
                fut.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - the submitter gets it
                fut.set_exception(e)
            else:
                fut.set_result(result)
            finally:
                self.busy_s += self.clock.monotonic() - began

    def _fail_jobs(self) -> None:
        while self._jobs:
            _, fut = self._jobs.popleft()
            if not fut.done():
                fut.set_exception(BusDown(f"bus {self.bus.id} stopped"))

    async def run(self) -> None:
        now = self.clock.monotonic()
        # First cycle: everything at once, in order; the bus serialises them, which spreads
        # the meters over the period from then on.
        heap = [(now, i) for i in range(len(self.meters))]
        for st in self.meters:
            st.due = now
        heapq.heapify(heap)
        try:
            while not self._stop.is_set():
                await self._run_jobs()       # relay commands go before the next poll
                delay = heap[0][0] - self.clock.monotonic() if heap else None
                if delay is None or delay > 0:
                    self._wake.clear()
                    if self._jobs or self._stop.is_set():
                        continue
                    try:
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
                    continue
                _, i = heapq.heappop(heap)
                st = self.meters[i]
                began = self.clock.monotonic()
                await self.poll(st)
                ended = self.clock.monotonic()
                self.busy_s += ended - began       # the bus's utilisation: time spent in exchanges
                st.due = self._next_due(st, ended)
                heapq.heappush(heap, (st.due, i))
        finally:
            self._fail_jobs()
            await self.close()

    def stats(self) -> dict:
        total = MeterStats()
        for st in self.meters:
            for k, v in vars(st.stats).items():
                setattr(total, k, getattr(total, k) + v)
        return {"bus": self.bus.id, "meters": len(self.meters),
                "online": sum(1 for s in self.meters if s.online),
                "offline": sum(1 for s in self.meters if s.online is False), **vars(total),
                "busy_s": round(self.busy_s, 3)}
