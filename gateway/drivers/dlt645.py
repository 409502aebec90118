"""DL/T 645-2007 meters on RS-485: the frame codec and the bus driver.

Facts in shared/domain/dlt645.md. A frame is `68 A0..A5 68 C L DATA CS 16`, optionally after up
to four FE wake-up bytes: the address is 12 BCD digits sent least significant byte first, every
data byte is sent +0x33, and the checksum is the sum mod 256 from the first 0x68 through the
last data byte. A read (control 0x11) carries the 4-byte data identifier (DI, least significant
byte first); the meter answers 0x91 with the DI and the value in BCD, 0xB1 when follow-up frames
hold the rest (asked for with 0x12), or 0xD1 with one error byte.

A DL/T 645 meter model is data like a Modbus register map: a YAML file in a model directory's
`dlt645/` folder (edge_config/meter_models/dlt645/*.yaml, or the site's own
meter_models/dlt645/) naming, per shared field name, its DI and BCD format (the schema and the
BCD codec live in gateway/meter_models.py, beside the Modbus one, so the site file needs no driver):

    model: dlt645-1p
    name: DL/T 645-2007 single-phase meter
    protocol: dlt645-2007
    phases: 1
    fields:
      energy_kwh: {di: "00010000", format: XXXXXX.XX, unit: kWh}
      current_a:  {di: "02020100", format: XXX.XXX, signed: true, unit: A}

`signed: true`: the top bit of the value's most significant byte is the sign (currents, powers
and power factors in DL/T 645-2007). `scale` multiplies the value the meter shows (the CT x PT
ratio of a meter behind instrument transformers, which shows secondary values).

The bus driver is the shared poll scheduler (gateway/drivers/scheduler.py) with one DL/T 645
exchange per field: one request at a time on the line, a fixed deadline grid per meter, a
silent meter costs one timeout and goes offline after `offline_after` failed polls.
"""

from __future__ import annotations

import asyncio
import re
import termios
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Callable

import serial
import serial_asyncio_fast

from ..clock import REAL_CLOCK, Clock
from ..meter_models import DiField, Dlt645Model, is_dlt645_model
from .scheduler import BusDown, Garbled, MeterState, NoAnswer, PolledBus, PollError

# ---- frames ----------------------------------------------------------------------------------

START, END, WAKE = 0x68, 0x16, 0xFE
READ, READ_MORE, READ_ADDRESS = 0x11, 0x12, 0x13
REPLY, ERROR, MORE = 0x80, 0x40, 0x20   # bits of the control code in an answer
BROADCAST = "AAAAAAAAAAAA"               # the address query's address (control 0x13)
MIN_FRAME = 12                           # 68 A*6 68 C L CS 16 with no data

# The error byte of a 0xD1 answer: one bit per reason (DL/T 645-2007 table "ERR").
ERROR_BITS = [
    (0x01, "other error"),
    (0x02, "no data requested: the meter does not have this data identifier"),
    (0x04, "password wrong or not authorised"),
    (0x08, "baud rate cannot be changed"),
    (0x10, "too many annual time zones"),
    (0x20, "too many daily time slots"),
    (0x40, "too many tariffs"),
]


def describe_error(code: int) -> str:
    """A 0xD1 error byte as words: `0x02 (no data requested: ...)`."""
    reasons = [text for bit, text in ERROR_BITS if code & bit]
    return f"{code:#04x} ({'; '.join(reasons) if reasons else 'unknown error'})"


def address_bytes(address: str) -> bytes:
    """'000000001234' -> the 6 bytes on the wire (least significant first)."""
    if not re.fullmatch(r"[0-9A-Fa-f]{12}", address):
        raise ValueError(f"{address!r} is not a 12-digit DL/T 645 address")
    return bytes.fromhex(address)[::-1]


def address_text(raw: bytes) -> str:
    return raw[::-1].hex().upper()


def add33(data: bytes) -> bytes:
    return bytes((b + 0x33) & 0xFF for b in data)


def sub33(data: bytes) -> bytes:
    return bytes((b - 0x33) & 0xFF for b in data)


@dataclass(frozen=True, slots=True)
class Frame:
    address: str   # 12 characters, most significant digit first, as printed on the nameplate
    control: int
    data: bytes    # the data field without the +0x33

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY)

    @property
    def is_error(self) -> bool:
        return bool(self.control & ERROR)

    @property
    def more(self) -> bool:
        return bool(self.control & MORE)

    @property
    def code(self) -> int:
        return self.control & 0x1F

    def encode(self, preamble: int = 4) -> bytes:
        return encode_frame(self.address, self.control, self.data, preamble)


@dataclass(frozen=True, slots=True)
class BadFrame:
    """Something framed like a frame (68, address, 68, length) that fails its checksum or end byte."""

    reason: str
    address: str
    control: int
    raw: bytes


def encode_frame(address: str, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    if not 0 <= control <= 0xFF or len(data) > 0xFF or not 0 <= preamble <= 4:
        raise ValueError("control, data length (<= 255) or preamble (0-4) out of range")
    body = bytes([START]) + address_bytes(address) + bytes([START, control, len(data)]) + add33(data)
    return bytes([WAKE]) * preamble + body + bytes([sum(body) & 0xFF, END])


def read_request(address: str, di: int, preamble: int = 4) -> bytes:
    return encode_frame(address, READ, di.to_bytes(4, "little"), preamble)


class FrameScanner:
    """Finds frames in a byte stream: skips wake-up bytes and noise, keeps an incomplete tail.

    Without timing to delimit frames, a frame is a 0x68 with a second 0x68 seven bytes on, a
    length, and a checksum and end byte where the length puts them. A candidate that fails is
    reported once as a BadFrame and the search goes on from the next byte, so noise that
    happens to hold 0x68 cannot hide a real frame behind it.
    """

    MAX_BUFFER = 1024

    def __init__(self) -> None:
        self.buf = bytearray()
        self._reported = 0  # bad candidates starting before this offset were already reported

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        buf = self.buf
        buf += data
        out: list[Frame | BadFrame] = []
        n = len(buf)
        i = 0
        pending: int | None = None  # the first candidate that may still complete
        while True:
            j = buf.find(START, i)
            if j < 0:
                break
            if n - j < 8:  # the second 0x68 is not here yet (nor can any later candidate's be)
                pending = j if pending is None else pending
                break
            if buf[j + 7] != START:
                i = j + 1
                continue
            end = j + MIN_FRAME + buf[j + 9] if n - j >= 10 else n + 1
            if end > n:
                if pending is None:
                    pending = j
                i = j + 1
                continue
            checksum_ok = sum(buf[j:end - 2]) & 0xFF == buf[end - 2]
            if checksum_ok and buf[end - 1] == END:
                out.append(Frame(address_text(bytes(buf[j + 1:j + 7])), buf[j + 8], sub33(bytes(buf[j + 10:end - 2]))))
                i = end
                pending = None
                self._reported = max(self._reported, end)
                continue
            if j >= self._reported:
                out.append(BadFrame("checksum error" if not checksum_ok else "bad end byte",
                                    address_text(bytes(buf[j + 1:j + 7])), buf[j + 8], bytes(buf[j:end])))
                self._reported = j + 1
            i = j + 1
        keep = pending if pending is not None else n
        if n - keep > self.MAX_BUFFER:
            keep = n - self.MAX_BUFFER
        del buf[:keep]
        self._reported = max(0, self._reported - keep)
        return out


def scan_frames(data: bytes) -> list[Frame | BadFrame]:
    """Every frame (and framed-but-bad candidate) in `data`, for one-shot use."""
    return FrameScanner().feed(data)


# ---- one request of a plan -------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class DiRequest:
    """Read one data identifier; `decode` puts its value into a Reading's values/counters."""

    field: DiField

    @property
    def di(self) -> int:
        return self.field.di

    def decode(self, answer: bytes | list[int], values: dict[str, float], counters: dict[str, Decimal]) -> list[str]:
        f = self.field
        data = bytes(answer)
        if len(data) < f.nbytes:
            raise Garbled(f"DI {f.di:08X}: {len(data)} value bytes, format {f.format} needs {f.nbytes}")
        d = f.exact(data)
        if d is None:  # not BCD: the meter has no such value (like NaN from a Modbus meter)
            return [f.name]
        values[f.name] = float(d)
        if f.counter:
            counters[f.name] = d
        return []


def plan_for_model(model: Dlt645Model) -> list[DiRequest]:
    return [DiRequest(f) for f in model.fields]


# ---- the bus ---------------------------------------------------------------------------------

class ErrorReply(PollError):
    """The meter answered 0xD1: it understood and refused (for instance an unknown DI)."""

    kind = "exceptions"

    def __init__(self, code: int, di: int | None = None):
        self.code = code
        what = f"DI {di:08X}: " if di is not None else ""
        super().__init__(f"{what}error reply {describe_error(code)}")


PARITY = {"N": serial.PARITY_NONE, "E": serial.PARITY_EVEN, "O": serial.PARITY_ODD}
MAX_FOLLOW_UPS = 16


class _Line(asyncio.Protocol):
    """The serial port's bytes, kept until an exchange looks at them."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.rx = bytearray()
        self.wake = asyncio.Event()
        self.lost: str | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.rx += data
        if len(self.rx) > 4096:
            del self.rx[:-4096]
        self.wake.set()

    def connection_lost(self, exc) -> None:
        self.lost = str(exc) if exc else "port closed"
        self.wake.set()


class Dlt645Bus(PolledBus):
    """A DL/T 645 line on a serial port (a USB RS-485 adapter); polls its meters by address."""

    def __init__(self, bus, meters: list, publish, clock: Clock = REAL_CLOCK):
        super().__init__(bus, publish, clock)
        self.meters = [MeterState(m, model, plan_for_model(model), m.timeout_s or bus.timeout_s)
                       for m, model in meters]
        self._line: _Line | None = None
        self._last_exchange = 0.0
        self.ignored = 0  # frames that were not the answer: echoes, other meters, stale answers

    @property
    def where(self) -> str:
        return self.bus.port

    # ---- the port ----

    async def _ensure_open(self) -> _Line:
        line = self._line
        if line is not None and line.lost is None:
            return line
        if line is not None:  # lost since the last exchange
            self._bus_trouble(f"{self.bus.port} lost: {line.lost}")
            await self.close()
        if self.clock.monotonic() < self._next_connect:
            raise BusDown(f"bus {self.bus.id} not connected")
        b = self.bus
        try:
            transport, line = await serial_asyncio_fast.create_serial_connection(
                asyncio.get_running_loop(), _Line, b.port, baudrate=b.baudrate, bytesize=b.bytesize,
                parity=PARITY[b.parity], stopbits=b.stopbits)
        except (OSError, serial.SerialException, ValueError, termios.error) as e:
            self._connect_failed(f"cannot open {b.port} at {b.baudrate} {b.bytesize}{b.parity}{b.stopbits}: {e}")
            raise BusDown(f"bus {self.bus.id} not connected") from None
        line.transport = transport  # connection_made comes a loop turn later
        self._line = line
        self._connected()
        return line

    async def close(self) -> None:
        line, self._line = self._line, None
        if line is not None and line.transport is not None:
            line.transport.close()
            await asyncio.sleep(0)  # let the transport close the port

    # ---- exchanges ----

    async def transact(self, address: str, control: int, data: bytes, timeout: float,
                       accept: Callable[[Frame | BadFrame], Frame | None]) -> Frame:
        """Send one frame and wait for the answer `accept` takes (it may raise a PollError)."""
        line = await self._ensure_open()
        if self.bus.pause_ms:
            wait = self._last_exchange + self.bus.pause_ms / 1000 - self.clock.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        loop = asyncio.get_running_loop()
        line.rx.clear()  # what came after the last exchange's deadline is stale
        scanner = FrameScanner()
        try:
            line.transport.write(encode_frame(address, control, data, self.bus.preamble))
            deadline = loop.time() + timeout
            while True:
                if line.rx:
                    chunk = bytes(line.rx)
                    line.rx.clear()
                    for item in scanner.feed(chunk):
                        frame = accept(item)
                        if frame is not None:
                            return frame
                        self.ignored += isinstance(item, Frame)
                if line.lost is not None:
                    self._bus_trouble(f"{self.bus.port} lost: {line.lost}")
                    await self.close()
                    raise BusDown(f"bus {self.bus.id} not connected")
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise NoAnswer(f"no answer within {timeout:g} s")
                line.wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await line.wake.wait()
                except TimeoutError:
                    if not line.rx:
                        raise NoAnswer(f"no answer within {timeout:g} s") from None
        except (OSError, serial.SerialException) as e:
            self._bus_trouble(f"{self.bus.port} lost: {e}")
            await self.close()
            raise BusDown(f"bus {self.bus.id} not connected") from None
        finally:
            self._last_exchange = self.clock.monotonic()

    @staticmethod
    def _answer_to(address: str, code: int, di: bytes | None):
        """An `accept` for transact: the reply to `code` from `address` (about `di`)."""
        def accept(item: Frame | BadFrame) -> Frame | None:
            if isinstance(item, BadFrame):
                if item.control & REPLY and item.control & 0x1F == code and address in (item.address, BROADCAST):
                    raise Garbled(f"{item.reason} in answer ({item.raw[:40].hex(' ')})")
                return None
            if not item.is_reply or item.code != code or (address != BROADCAST and item.address != address):
                return None  # our own echo, another meter, or not an answer to this
            if item.is_error:
                raise ErrorReply(item.data[0] if item.data else 0, int.from_bytes(di, "little") if di else None)
            if di is not None and item.data[:4] != di:
                return None  # a late answer to an earlier question
            return item
        return accept

    async def read_data(self, address: str, req: DiRequest, timeout: float) -> bytes:
        """One read of `req`'s DI (with its follow-up frames); the value bytes, 0x33 removed."""
        di = req.field.di_bytes
        frame = await self.transact(address, READ, di, timeout, self._answer_to(address, READ, di))
        value = frame.data[4:]
        seq = 0
        while frame.more:
            seq += 1
            if seq > MAX_FOLLOW_UPS:
                raise Garbled(f"DI {req.di:08X}: more than {MAX_FOLLOW_UPS} follow-up frames")
            frame = await self.transact(address, READ_MORE, di + bytes([seq]), timeout,
                                        self._answer_to(address, READ_MORE, di))
            value += frame.data[4:-1]  # DI, data, then the frame's sequence number
        return value

    # `gateway replay` scripts a bus's exchanges under this name (the Modbus bus's); the answer
    # it hands back is what a recording kept: the value bytes as a list.
    read_registers = read_data

    async def read_address(self, timeout: float) -> str:
        """The address query (0x13 to AA...AA): the one meter on the line says its address.

        Several meters answer at once and garble each other: that raises Garbled."""
        garbled = self._answer_to(BROADCAST, READ_ADDRESS, None)

        def accept(item: Frame | BadFrame) -> Frame | None:
            if isinstance(item, BadFrame):
                return garbled(item)
            return item if item.is_reply and item.code == READ_ADDRESS else None

        frame = await self.transact(BROADCAST, READ_ADDRESS, b"", timeout, accept)
        if frame.is_error or len(frame.data) < 6:  # refused, but its own address is in the frame
            return frame.address
        return address_text(frame.data[:6])

    # ---- the scheduler's hooks ----

    def _exchange(self, st: MeterState, req: DiRequest):
        return self.read_registers(st.meter.address, req, st.timeout_s)

    def _recorded(self, req: DiRequest, answer: bytes) -> dict:
        return {"di": f"{req.di:08X}", "regs": list(answer)}

    def _describe(self, st: MeterState) -> str:
        return f"meter {st.meter.id} (bus {self.bus.id}, address {st.meter.address})"


# ---- commissioning: find the meters on a line ------------------------------------------------

PROBE_DI = 0x00010000  # import active energy: every meter has it


@dataclass
class Found:
    address: str
    model: str | None
    score: float
    values: dict[str, float]
    note: str = ""


async def probe(bus: Dlt645Bus, addresses: list[str] | None, timeout: float) -> list[str]:
    """Who answers: the address query (one meter on the line), or each of `addresses`.

    Several meters answering the broadcast at once garble each other: that is reported as a
    Garbled error, and only a list of known addresses (from the nameplates) tells them apart.
    """
    if not addresses:
        try:
            return [await bus.read_address(timeout)]
        except NoAnswer:
            return []
    probe_field = DiRequest(DiField("energy_kwh", PROBE_DI, "XXXXXX.XX", 8, 2, False, Decimal(1), "kWh", True))
    found = []
    for a in addresses:
        try:
            await bus.read_data(a, probe_field, timeout)
        except ErrorReply:
            pass  # it answered: someone is there
        except (NoAnswer, Garbled):
            continue
        found.append(a)
    return found


async def identify(bus: Dlt645Bus, address: str, models: dict[str, Any], timeout: float) -> Found:
    """Read every DI the DL/T 645 models name (each once) and name the model that fits best."""
    from .modbus_scan import plausibility
    dl_models = [m for m in models.values() if is_dlt645_model(m)]
    raw: dict[int, bytes | None] = {}
    for m in dl_models:
        for f in m.fields:
            if f.di in raw:
                continue
            try:
                raw[f.di] = await bus.read_data(address, DiRequest(f), timeout)
            except (ErrorReply, NoAnswer, Garbled):
                raw[f.di] = None
    best = Found(address, None, 0.0, {}, note="answers, but no known DL/T 645 model decodes to plausible values")
    best_key = (0.0, 0, 0)
    keys = {}
    for m in dl_models:
        values: dict[str, float] = {}
        for f in m.fields:
            data = raw.get(f.di)
            if data is not None:
                try:
                    DiRequest(f).decode(data, values, {})
                except Garbled:
                    pass
        score = plausibility(values, m)
        # most plausible; then the model that reads the most fields; then one without a CT scale
        key = (score, sum(f.name in values for f in m.fields), -sum(f.scale != 1 for f in m.fields))
        keys[m.id] = key
        if score > 0 and key > best_key:
            best, best_key = Found(address, m.id, score, values), key
    also = sorted(k for k, v in keys.items() if k != best.model and v[:2] == best_key[:2] and best.model)
    if also:  # the same identifiers with another scale: which CT ratio, the meter cannot say
        best.note = f"{', '.join(also)} fit as well: check the current transformer ratio"
    if best.model and best.score < 0.8:
        best.note = f"closest model {best.model} fits only {best.score:.0%} of its fields"
        best.model = None
    return best
