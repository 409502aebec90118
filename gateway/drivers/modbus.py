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

from ..clock import REAL_CLOCK, Clock
from ..config import Meter, ModbusRtuBus, ModbusTcpBus
from ..meter_models import MeterModel
from .modbus_answer import AnswerWatch
from .modbus_plan import ReadRequest, plan_for_model
from .scheduler import (BadAnswer, BusDown, Garbled, MeterState, MeterStats, NoAnswer,  # noqa: F401
                        PolledBus, PollError)

log = logging.getLogger(__name__)

RECEIVE_BUFFER = 1024  # bytes received in one exchange beyond which all is dropped as noise

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


class ModbusBus(PolledBus):
    """Owns one bus (a serial line or a TCP serial server) and polls its meters."""

    def __init__(self, bus: ModbusTcpBus | ModbusRtuBus, meters: list[tuple[Meter, MeterModel]],
                 publish, clock: Clock = REAL_CLOCK):
        super().__init__(bus, publish, clock)
        self.meters = [MeterState(m, model, plan_for_model(model, bus.max_gap_registers),
                                  m.timeout_s or bus.timeout_s) for m, model in meters]
        self.client = None
        self._watch = AnswerWatch(rtu=bus.type == "modbus_rtu" or getattr(bus, "framer", "socket") == "rtu")
        self._last_exchange = 0.0

    # ---- connection ----

    @property
    def where(self) -> str:
        b = self.bus
        return f"{b.host}:{b.port}" if b.type == "modbus_tcp" else b.port

    def _make_client(self):
        b = self.bus
        # The timeout is set again per exchange (each meter may have its own); retries are ours.
        # Every answer passes the watch, which hands pymodbus only the answer to the request.
        trace = self._watch.trace
        if b.type == "modbus_tcp":
            client = AsyncModbusTcpClient(
                b.host, port=b.port, framer=FramerType.RTU if b.framer == "rtu" else FramerType.SOCKET,
                timeout=b.timeout_s, retries=0, reconnect_delay=0, trace_packet=trace, name=b.id)
        else:
            client = AsyncModbusSerialClient(
                b.port, framer=FramerType.RTU, baudrate=b.baudrate, bytesize=b.bytesize, parity=b.parity,
                stopbits=b.stopbits, timeout=b.timeout_s, retries=0, reconnect_delay=0, trace_packet=trace,
                name=b.id)
        # pymodbus empties its receive buffer, unseen, once it holds more than one frame (264
        # bytes); room for the answer behind a late answer to an earlier request (set aside).
        client.ctx.max_buffer_size = RECEIVE_BUFFER
        return client

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

    async def _call(self, unit: int, function: int, count: int, call, timeout: float):
        """One exchange (connecting first if needed): `call()` sends the request of `function`;
        the answer is judged by the watch. Raises a PollError subclass on failure."""
        await self._ensure_connected(timeout)
        if self.bus.pause_ms:
            wait = self._last_exchange + self.bus.pause_ms / 1000 - self.clock.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        # pymodbus's own deadline is the meter's timeout (one timer per exchange, not two).
        params = self.client.ctx.comm_params
        if params.timeout_connect != timeout:
            params.timeout_connect = timeout
        self._watch.arm(unit, function, count)  # it judges the answer before pymodbus does
        try:
            rr = await call()
        except ConnectionException as e:
            self._bus_trouble(f"connection lost: {e}")
            raise BusDown(f"bus {self.bus.id} not connected") from None
        except ModbusIOException as e:
            if "No response" in str(e):
                raise self._watch.timed_out(timeout) from None
            raise Garbled(f"bad answer: {e}") from None
        except ModbusException as e:
            raise Garbled(f"bad answer: {e}") from None
        finally:
            self._watch.disarm()
            self._last_exchange = self.clock.monotonic()
        if self._watch.refused is not None:
            raise self._watch.refused
        if rr.isError():
            raise ExceptionReply(getattr(rr, "exception_code", 0))
        return rr

    async def read_registers(self, unit: int, req: ReadRequest, timeout: float) -> list[int]:
        """One exchange (connecting first if needed); raises a PollError subclass on failure."""
        def call():
            # looked up at the call: a fresh client after a reconnect, and `gateway replay` wraps them
            read = (self.client.read_holding_registers if req.function == 3 else self.client.read_input_registers)
            return read(req.address, count=req.count, device_id=unit)
        rr = await self._call(unit, req.function, req.count, call, timeout)
        regs = rr.registers
        if rr.function_code != req.function or len(regs) != req.count:  # the watch's job; kept as a last guard
            raise BadAnswer(f"answer with function {rr.function_code} and {len(regs)} registers to a read of "
                            f"{req.count} with function {req.function}")
        return regs

    # ---- relay outputs (gateway/lighting): exchanges between polls, on the same line ----

    async def write_output_now(self, unit: int, kind: str, address: int, value: int, timeout: float) -> None:
        """Write one coil (FC05) or holding register (FC06). Call it through `submit` so that it
        takes its turn on the line; the module's echo is checked by the watch."""
        if kind == "coil":
            call = lambda: self.client.write_coil(address, bool(value), device_id=unit)  # noqa: E731
            function = 5
        else:
            call = lambda: self.client.write_register(address, value, device_id=unit)  # noqa: E731
            function = 6
        await self._call(unit, function, 1, call, timeout)

    async def read_output_now(self, unit: int, kind: str, address: int, timeout: float) -> int:
        """Read one coil (FC01: 0 or 1) or holding register (FC03) back."""
        if kind == "coil":
            rr = await self._call(unit, 1, 1, lambda: self.client.read_coils(address, count=1, device_id=unit), timeout)
            return int(bool(rr.bits[0]))
        rr = await self._call(unit, 3, 1, lambda: self.client.read_holding_registers(address, count=1, device_id=unit),
                              timeout)
        return rr.registers[0]

    async def write_output(self, unit: int, kind: str, address: int, value: int, timeout: float | None = None) -> None:
        await self.submit(lambda: self.write_output_now(unit, kind, address, value, timeout or self.bus.timeout_s))

    async def read_output(self, unit: int, kind: str, address: int, timeout: float | None = None) -> int:
        return await self.submit(lambda: self.read_output_now(unit, kind, address, timeout or self.bus.timeout_s))

    # ---- one poll of one meter (the scheduler's hooks) ----

    def _exchange(self, st: MeterState, req: ReadRequest):
        # The exchange's own coroutine (no extra frame on the hot path), through the attribute so
        # that `gateway replay` can script the exchanges.
        return self.read_registers(st.meter.unit, req, st.timeout_s)

    def _recorded(self, req: ReadRequest, regs: list[int]) -> dict:
        return {"fn": req.function, "addr": req.address, "count": req.count, "regs": list(regs)}

    def _describe(self, st: MeterState) -> str:
        return f"meter {st.meter.id} (bus {self.bus.id}, unit {st.meter.unit})"
