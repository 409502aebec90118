"""Modbus RTU / TCP meters: one scheduler per bus, one request at a time on the wire.

Polling is deadline-based per meter: each meter has its own period, deadlines advance on a
fixed grid (no drift), and a deadline that passed while the bus was busy is counted as an
overrun and skipped rather than queued. A silent meter costs one timeout per attempt and is
never re-asked in the same poll; after `offline_after` failures it is reported offline and
tried with exponential back-off, so it cannot starve the other meters on its bus. The scheduler
itself is shared with the DL/T 645 driver (gateway/drivers/scheduler.py); this module speaks Modbus.
"""

from __future__ import annotations

import asyncio
import logging
import termios

from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException
from pymodbus.framer import FramerRTU

from ..clock import REAL_CLOCK, Clock
from ..config import Meter, ModbusRtuBus, ModbusTcpBus
from ..meter_models import MeterModel
from .modbus_plan import ReadRequest, plan_for_model
from .scheduler import BusDown, Garbled, MeterState, MeterStats, NoAnswer, PolledBus, PollError  # noqa: F401

log = logging.getLogger(__name__)

EXCEPTION_NAMES = {
    1: "illegal function", 2: "illegal data address", 3: "illegal data value",
    4: "server device failure", 5: "acknowledge", 6: "server device busy",
    8: "memory parity error", 10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ExceptionReply(PollError):
    kind = "exceptions"

    def __init__(self, code: int):
        self.code = code
        super().__init__(f"exception {code:#04x} ({EXCEPTION_NAMES.get(code, 'unknown code')})")


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


class ModbusBus(PolledBus):
    """Owns one bus (a serial line or a TCP serial server) and polls its meters."""

    def __init__(self, bus: ModbusTcpBus | ModbusRtuBus, meters: list[tuple[Meter, MeterModel]],
                 publish, clock: Clock = REAL_CLOCK):
        super().__init__(bus, publish, clock)
        self.meters = [MeterState(m, model, plan_for_model(model, bus.max_gap_registers),
                                  m.timeout_s or bus.timeout_s) for m, model in meters]
        self.client = None
        self._rtu_framing = bus.type == "modbus_rtu" or getattr(bus, "framer", "socket") == "rtu"
        self._watch = _RtuWatch() if self._rtu_framing else None
        self._last_exchange = 0.0

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
        except (TimeoutError, OSError, ModbusException, termios.error) as e:  # termios: settings the port refuses
            ok, why = False, str(e) or type(e).__name__
        else:
            why = "connection refused or port unavailable"
        if not ok:
            self._connect_failed(f"cannot connect to {self.where}: {why}")
            raise BusDown(f"bus {self.bus.id} not connected")
        self._connected()

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

    # ---- one poll of one meter (the scheduler's hooks) ----

    def _exchange(self, st: MeterState, req: ReadRequest):
        # The exchange's own coroutine (no extra frame on the hot path), through the attribute so
        # that `gateway replay` can script the exchanges.
        return self.read_registers(st.meter.unit, req, st.timeout_s)

    def _recorded(self, req: ReadRequest, regs: list[int]) -> dict:
        return {"fn": req.function, "addr": req.address, "count": req.count, "regs": list(regs)}

    def _describe(self, st: MeterState) -> str:
        return f"meter {st.meter.id} (bus {self.bus.id}, unit {st.meter.unit})"
