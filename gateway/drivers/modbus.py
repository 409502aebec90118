"""Modbus RTU / TCP meters: one scheduler per bus, one request at a time on the wire.

Polling is deadline-based per meter: each meter has its own period, deadlines advance on a
fixed grid (no drift), and a deadline that passed while the bus was busy is counted as an
overrun and skipped rather than queued. A silent meter costs one timeout per attempt and is
never re-asked in the same poll; after `offline_after` failures it is reported offline and
tried with exponential back-off, so it cannot starve the other meters on its bus.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from dataclasses import dataclass, field
from decimal import Decimal

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU

from ..clock import REAL_CLOCK, Clock
from ..config import Meter, ModbusRtuBus, ModbusTcpBus
from ..events import DeviceStatus, Reading
from ..meter_models import MeterModel
from .modbus_plan import ReadRequest, plan_for_model

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class PollError(Exception):
    """One failed exchange; `kind` is the counter it belongs to."""

    kind = "error"
    retry = False  # whether asking again within the same poll makes sense


class NoAnswer(PollError):
    kind = "timeouts"


class Garbled(PollError):
    kind = "crc_errors"
    retry = True


class ExceptionReply(PollError):
    kind = "exceptions"

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"exception {code:#04x} ({EXCEPTION_NAMES.get(code, 'unknown code')})")


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
    bus_down: int = 0
    overruns: int = 0
    requests: int = 0


@dataclass
class MeterState:
    meter: Meter
    model: MeterModel
    plan: list[ReadRequest]
    timeout_s: float
    due: float = 0.0
    failures: int = 0  # consecutive
    online: bool | None = None
    last_error: str = ""
    stats: MeterStats = field(default_factory=MeterStats)


class _RtuWatch:
    """Sees raw answer bytes (pymodbus `trace_packet`) to tell a corrupted answer from silence.

    pymodbus drops a frame with a bad CRC and keeps waiting; we recognise the frame by the
    unit and function we asked and fail the exchange at once instead of after the timeout.
    """

    def __init__(self) -> None:
        self.unit = self.function = self.expect = 0
        self.bad: asyncio.Future | None = None
        self.seen = b""

    def arm(self, unit: int, req: ReadRequest) -> asyncio.Future:
        self.unit, self.function, self.expect = unit, req.function, req.response_bytes_rtu
        self.seen = b""
        self.bad = asyncio.get_running_loop().create_future()
        return self.bad

    def trace(self, sending: bool, data: bytes) -> bytes:
        if sending or self.bad is None or self.bad.done():
            return data
        self.seen = data
        if len(data) >= 2 and data[0] == self.unit and data[1] & 0x7F == self.function:
            n = 5 if data[1] & 0x80 else self.expect
            if len(data) >= n and FramerRTU.compute_CRC(data[:n - 2]) != int.from_bytes(data[n - 2:n], "big"):
                self.bad.set_result(data[:n])
        return data


class ModbusBus:
    """Owns one bus (a serial line or a TCP serial server) and polls its meters."""

    def __init__(self, bus: ModbusTcpBus | ModbusRtuBus, meters: list[tuple[Meter, MeterModel]],
                 publish, clock: Clock = REAL_CLOCK):
        self.bus = bus
        self.publish = publish
        self.clock = clock
        self.meters = [MeterState(m, model, plan_for_model(model, bus.max_gap_registers),
                                  m.timeout_s or bus.timeout_s) for m, model in meters]
        self.client = None
        self._rtu_framing = bus.type == "modbus_rtu" or getattr(bus, "framer", "socket") == "rtu"
        self._watch = _RtuWatch() if self._rtu_framing else None
        self._last_exchange = 0.0
        self._stop = asyncio.Event()
        self.busy_s = 0.0
        self._bus_problem = ""
        self._next_connect = 0.0
        self._connect_backoff = 0.0
        self.recorder = None  # a gateway.recording.Recorder while `run --record` records

    # ---- connection ----

    @property
    def where(self) -> str:
        b = self.bus
        return f"{b.host}:{b.port}" if b.type == "modbus_tcp" else b.port

    def _make_client(self):
        b = self.bus
        # The timeout is set again per exchange (each meter may have its own); retries are ours.
        trace = self._watch.trace if self._watch else None
        if b.type == "modbus_tcp":
            return AsyncModbusTcpClient(
                b.host, port=b.port, framer=FramerType.RTU if b.framer == "rtu" else FramerType.SOCKET,
                timeout=b.timeout_s, retries=0, reconnect_delay=0, trace_packet=trace, name=b.id)
        return AsyncModbusSerialClient(
            b.port, framer=FramerType.RTU, baudrate=b.baudrate, bytesize=b.bytesize, parity=b.parity,
            stopbits=b.stopbits, timeout=b.timeout_s, retries=0, reconnect_delay=0, trace_packet=trace,
            name=b.id)

    async def _ensure_connected(self, timeout: float) -> None:
        # We reconnect ourselves (pymodbus's own reconnect is off) so that one back-off, shared
        # by all meters of the bus, decides when the next attempt is made.
        if self.client is None:
            self.client = self._make_client()
        if self.client.connected:
            return
        now = self.clock.monotonic()
        if now < self._next_connect:
            raise BusDown(f"bus {self.bus.id} not connected")
        try:
            async with asyncio.timeout(timeout):
                ok = await self.client.connect()
        except (TimeoutError, OSError, ModbusException) as e:
            ok, why = False, str(e) or type(e).__name__
        else:
            why = "connection refused or port unavailable"
        if not ok:
            self._connect_backoff = min(30.0, self._connect_backoff * 2 or 0.5)
            self._next_connect = self.clock.monotonic() + self._connect_backoff
            self._bus_trouble(f"cannot connect to {self.where}: {why}")
            raise BusDown(f"bus {self.bus.id} not connected")
        self._connect_backoff = 0.0
        self._bus_recovered()

    def _bus_trouble(self, why: str) -> None:
        if not self._bus_problem:
            log.error("bus %s (%s): %s; retrying", self.bus.id, self.bus.type, why)
            self.publish(DeviceStatus(self.bus.id, "bus", False, self.clock.now(), why))
        self._bus_problem = why

    def _bus_recovered(self) -> None:
        if self._bus_problem:
            log.info("bus %s: connected again", self.bus.id)
            self.publish(DeviceStatus(self.bus.id, "bus", True, self.clock.now(), "connected"))
        self._bus_problem = ""

    async def close(self) -> None:
        if self.client is not None:
            self.client.close()
            self.client = None

    # ---- one exchange ----

    async def read_registers(self, unit: int, req: ReadRequest, timeout: float) -> list[int]:
        """One exchange (connecting first if needed); raises a PollError subclass on failure."""
        await self._ensure_connected(timeout)
        if self.bus.pause_ms:
            wait = self._last_exchange + self.bus.pause_ms / 1000 - self.clock.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        call = (self.client.read_holding_registers if req.function == 3
                else self.client.read_input_registers)
        # pymodbus's own deadline is the meter's timeout (one timer per exchange, not two).
        params = self.client.ctx.comm_params
        if params.timeout_connect != timeout:
            params.timeout_connect = timeout
        try:
            if self._watch is None:
                rr = await call(req.address, count=req.count, device_id=unit)
            else:
                rr = await self._read_watched(call, unit, req)
        except ConnectionException as e:
            self._bus_trouble(f"connection lost: {e}")
            raise BusDown(f"bus {self.bus.id} not connected") from None
        except ModbusIOException as e:
            if "No response" in str(e):
                raise NoAnswer(f"no answer within {timeout:g} s") from None
            raise Garbled(f"bad answer: {e}") from None
        except ModbusException as e:
            raise Garbled(f"bad answer: {e}") from None
        finally:
            self._last_exchange = self.clock.monotonic()
        if rr.isError():
            raise ExceptionReply(getattr(rr, "exception_code", 0))
        regs = rr.registers
        if len(regs) < req.count:
            raise Garbled(f"answer has {len(regs)} registers, asked for {req.count}")
        return regs

    async def _read_watched(self, call, unit: int, req: ReadRequest):
        bad = self._watch.arm(unit, req)
        task = asyncio.ensure_future(call(req.address, count=req.count, device_id=unit))
        try:
            await asyncio.wait((task, bad), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if task.done():
            if isinstance(task.exception(), ModbusIOException) and self._watch.seen:
                raise Garbled(f"incomplete or unreadable answer ({self._watch.seen[:32].hex(' ')})")
            return task.result()
        task.cancel()
        raise Garbled(f"CRC error in answer ({bad.result().hex(' ')})")

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
                        regs = await self.read_registers(st.meter.unit, req, st.timeout_s)
                        if record is not None:
                            record.append({"fn": req.function, "addr": req.address, "count": req.count,
                                           "regs": list(regs)})
                        break
                    except PollError as e:
                        if record is not None:
                            record.append({"error": type(e).__name__, "detail": str(e),
                                           **({"code": e.code} if isinstance(e, ExceptionReply) else {})})
                        if e.retry and attempt < self.bus.retries:
                            attempt += 1
                            setattr(st.stats, e.kind, getattr(st.stats, e.kind) + 1)
                            continue
                        raise
                req.decode(regs, values, counters)
        except PollError as e:
            self._failed(st, e)
            return None
        finally:
            if record is not None:
                self.recorder.poll(ts, self.bus.id, st.meter.id, record)
        reading = Reading(st.meter.id, ts, values, counters)
        self._succeeded(st)
        self.publish(reading)
        return reading

    def _describe(self, st: MeterState) -> str:
        return f"meter {st.meter.id} (bus {self.bus.id}, unit {st.meter.unit})"

    def _failed(self, st: MeterState, e: PollError) -> None:
        st.failures += 1
        st.stats.failures += 1
        setattr(st.stats, e.kind, getattr(st.stats, e.kind) + 1)
        st.last_error = str(e)
        if st.failures == 1 and not isinstance(e, BusDown):  # once per episode; bus has its own line
            log.warning("%s: %s", self._describe(st), e)
        if st.failures >= self.bus.offline_after and st.online is not False:
            st.online = False
            log.warning("%s: offline after %d failed polls (%s)", self._describe(st), st.failures, e)
            self.publish(DeviceStatus(st.meter.id, "meter", False, self.clock.now(), str(e)))

    def _succeeded(self, st: MeterState) -> None:
        st.stats.ok += 1
        if st.failures and (st.failures > 1 or st.online is False):
            log.info("%s: answers again after %d failed polls", self._describe(st), st.failures)
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
            backoff = min(self.bus.backoff_max_s, period * 2 ** (st.failures - 2))
            due += period * (int(backoff // period))
        return due

    def stop(self) -> None:
        """Ask the scheduler to finish the exchange in flight and return."""
        self._stop.set()

    async def run(self) -> None:
        now = self.clock.monotonic()
        # First cycle: everything at once, in order; the bus serialises them, which spreads
        # the meters over the period from then on.
        heap = [(now, i) for i in range(len(self.meters))]
        for st in self.meters:
            st.due = now
        heapq.heapify(heap)
        try:
            while heap and not self._stop.is_set():
                due, i = heap[0]
                delay = due - self.clock.monotonic()
                if delay > 0:
                    try:
                        async with asyncio.timeout(delay):
                            await self._stop.wait()
                        break
                    except TimeoutError:
                        pass
                heapq.heappop(heap)
                st = self.meters[i]
                began = self.clock.monotonic()
                await self.poll(st)
                ended = self.clock.monotonic()
                self.busy_s += ended - began       # the bus's utilisation: time spent in exchanges
                st.due = self._next_due(st, ended)
                heapq.heappush(heap, (st.due, i))
        finally:
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
