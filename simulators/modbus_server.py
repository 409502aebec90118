"""A small asyncio Modbus server for simulated meters: one RS-485 line, three transports.

Our own server rather than pymodbus's so that timing and faults are exact: a dead meter is
silence, a slow meter answers late, the line carries one exchange at a time and, with a
LineTiming, takes as long as the real wire would.

Transports: Modbus TCP (MBAP, a serial server in Modbus-TCP mode), RTU over TCP (a serial
server in transparent mode) and RTU on a pseudo-terminal (a USB RS-485 adapter).
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import os
import struct
import tty
from dataclasses import dataclass
from typing import Callable

from .meters import ILLEGAL_FUNCTION, ILLEGAL_VALUE, SimMeter

GATEWAY_TARGET_FAILED = 0x0B
_MAX_BUFFER = 1024  # more unframed bytes than this is noise; keep the tail only

Reply = Callable[[bytes, bool], None]  # (response PDU, corrupt CRC)


# ---- line timing ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class LineTiming:
    """Time on the wire of an RS-485 line (meters.md, "RS-485 timing")."""

    baudrate: int = 9600
    bytesize: int = 8
    parity: str = "N"
    stopbits: float = 1

    @property
    def char_s(self) -> float:
        bits = 1 + self.bytesize + (0 if self.parity == "N" else 1) + self.stopbits
        return bits / self.baudrate

    @property
    def gap_s(self) -> float:
        """Silence between frames: 3.5 characters, fixed at 1.75 ms above 19200 baud."""
        return 0.00175 if self.baudrate > 19200 else 3.5 * self.char_s

    def frame_s(self, nbytes: int) -> float:
        return nbytes * self.char_s

    def exchange_s(self, request_len: int, response_len: int) -> float:
        """Best case for one request/answer: both frames plus a gap after each."""
        return self.frame_s(request_len) + self.frame_s(response_len) + 2 * self.gap_s


# ---- RTU framing ---------------------------------------------------------------------------

def _crc_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return table


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/Modbus; sent low byte first (`crc.to_bytes(2, "little")`)."""
    crc = 0xFFFF
    for b in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ b) & 0xFF]
    return crc


def rtu_frame(unit: int, pdu: bytes, corrupt: bool = False) -> bytes:
    body = bytes([unit]) + pdu
    return body + (crc16(body) ^ (0xFFFF if corrupt else 0)).to_bytes(2, "little")


# Request lengths by function code, so a frame can be found without timing: fixed sizes, or
# (position of a byte count, bytes around it).
_FIXED = {1: 8, 2: 8, 3: 8, 4: 8, 5: 8, 6: 8, 7: 4, 8: 8, 11: 4, 12: 4, 17: 4, 22: 10, 24: 6, 43: 7}
_COUNTED = {15: (6, 9), 16: (6, 9), 20: (2, 5), 21: (2, 5), 23: (10, 13)}


def _request_len(buf: bytes | bytearray, i: int) -> int | None:
    """Length of a request frame starting at i; 0 = not known yet; None = not a request."""
    fc = buf[i + 1]
    if fc in _FIXED:
        return _FIXED[fc]
    if fc in _COUNTED:
        pos, extra = _COUNTED[fc]
        return buf[i + pos] + extra if len(buf) > i + pos else 0
    return None


class RtuDecoder:
    """Finds request frames in a byte stream, skipping noise and frames with a bad CRC.

    Without timing to delimit frames, a frame is a known request length whose CRC matches,
    at any offset: noise before it is dropped and counted once in `ignored`.
    """

    def __init__(self) -> None:
        self.buf = bytearray()
        self.ignored = 0
        self._dropped = False  # bytes were discarded since the last good frame

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buf
        buf += data
        if len(buf) > _MAX_BUFFER:
            del buf[:len(buf) - _MAX_BUFFER]
            self._dropped = True
        frames: list[tuple[int, bytes]] = []
        start = 0  # everything before start is used or noise
        pending: int | None = None  # first offset that may still grow into a frame
        i = 0
        while len(buf) - i >= 4:
            n = _request_len(buf, i)
            if n is not None and 0 < n <= len(buf) - i \
                    and crc16(buf[i:i + n - 2]) == int.from_bytes(buf[i + n - 2:i + n], "little"):
                if i > start or self._dropped:
                    self.ignored += 1
                    self._dropped = False
                frames.append((buf[i], bytes(buf[i + 1:i + n - 2])))
                i = start = i + n
                pending = None
                continue
            if pending is None and n is not None and (n == 0 or n > len(buf) - i):
                pending = i
            i += 1
        keep = pending if pending is not None else max(start, len(buf) - 3)
        if keep > start:
            self._dropped = True
        del buf[:keep]
        return frames


def _answer(meter: SimMeter, pdu: bytes) -> bytes:
    if hasattr(meter, "answer"):        # a relay module (simulators/relays.py) answers for itself
        return meter.answer(pdu)
    fc = pdu[0]
    if fc not in (3, 4):
        return bytes([(fc | 0x80) & 0xFF, ILLEGAL_FUNCTION])
    if len(pdu) != 5:
        return bytes([fc | 0x80, ILLEGAL_VALUE])
    address, count = struct.unpack(">HH", pdu[1:5])
    regs = meter.registers(fc, address, count)
    if isinstance(regs, int):
        return bytes([fc | 0x80, regs])
    return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)


# ---- the line ------------------------------------------------------------------------------

def read_master(fd: int) -> bytes:
    """What the other end of a pty wrote (b"" when nothing is there)."""
    try:
        return os.read(fd, 4096)
    except BlockingIOError:
        return b""
    except OSError as e:
        if e.errno == errno.EIO:  # no slave open; cannot happen while we hold it
            return b""
        raise


class ModbusLineServer:
    """The meters of one line and the line's timing; subclasses add a transport."""

    mbap = False

    def __init__(self, meters: dict[int, SimMeter] | None = None, timing: LineTiming | None = None):
        self.meters: dict[int, SimMeter] = dict(meters or {})
        self.timing = timing
        self.requests = 0
        self.answers = 0
        self.ignored = 0  # noise, bad CRC, frames for units not on the line, non-Modbus data
        self._line_free = 0.0
        self._pending: dict[int, asyncio.TimerHandle] = {}
        self._seq = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        """Where the master connects: host:port or the pty path."""
        raise NotImplementedError

    def _feed_rtu(self, decoder: RtuDecoder, data: bytes) -> list[tuple[int, bytes]]:
        before = decoder.ignored
        frames = decoder.feed(data)
        self.ignored += decoder.ignored - before
        return frames

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._open()

    async def stop(self) -> None:
        for handle in self._pending.values():
            handle.cancel()
        self._pending.clear()
        await self._close()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def _open(self) -> None:
        raise NotImplementedError

    async def _close(self) -> None:
        raise NotImplementedError

    def request(self, unit: int, pdu: bytes, reply: Reply) -> None:
        """One request from the master; `reply` sends the answer's PDU when it is due."""
        self.requests += 1
        meter = self.meters.get(unit)
        if meter is None or unit == 0:
            if self.mbap and unit != 0:  # the serial server answers for the missing meter
                self.answers += 1
                reply(bytes([(pdu[0] | 0x80) & 0xFF, GATEWAY_TARGET_FAILED]), False)
            else:
                self.ignored += 1
            return
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._line_free)
        t = self.timing
        req_s = t.frame_s(len(pdu) + 3) if t else 0.0
        gap = t.gap_s if t else 0.0
        if meter.dead:
            self._line_free = start + req_s + gap
            return
        resp = _answer(meter, pdu)
        due = start + req_s + gap + meter.delay_s + (t.frame_s(len(resp) + 3) if t else 0.0)
        self._line_free = due + gap
        corrupt = meter.corrupt_crc
        if due <= now:
            self._deliver(reply, resp, corrupt)
        else:
            key = next(self._seq)
            self._pending[key] = loop.call_at(due, self._fire, key, reply, resp, corrupt)

    def _fire(self, key: int, reply: Reply, resp: bytes, corrupt: bool) -> None:
        self._pending.pop(key, None)
        self._deliver(reply, resp, corrupt)

    def _deliver(self, reply: Reply, resp: bytes, corrupt: bool) -> None:
        self.answers += 1
        reply(resp, corrupt)


# ---- TCP transports ------------------------------------------------------------------------

class _Connection(asyncio.Protocol):
    def __init__(self, server: _TcpServer):
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.rtu = RtuDecoder()
        self.buf = bytearray()

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server._connections.add(self)

    def connection_lost(self, exc) -> None:
        self.server._connections.discard(self)
        self.transport = None

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        self.server._received(self, data)


class _TcpServer(ModbusLineServer):
    def __init__(self, meters: dict[int, SimMeter] | None = None, timing: LineTiming | None = None,
                 *, host: str = "127.0.0.1", port: int = 0):
        super().__init__(meters, timing)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    async def _open(self) -> None:
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Connection(self), self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
            for conn in list(self._connections):
                if conn.transport is not None:
                    conn.transport.abort()
            await self._server.wait_closed()
            self._server = None

    def _received(self, conn: _Connection, data: bytes) -> None:
        raise NotImplementedError


class MbapServer(_TcpServer):
    """Modbus TCP: MBAP header, answers for missing units with exception 0x0B."""

    mbap = True

    def _received(self, conn: _Connection, data: bytes) -> None:
        buf = conn.buf
        buf += data
        while len(buf) >= 7:
            tid, pid, length, unit = struct.unpack(">HHHB", buf[:7])
            if pid != 0 or not 2 <= length <= 254:
                self.ignored += 1  # not Modbus: drop what we have and wait for the next
                buf.clear()
                return
            if len(buf) < 6 + length:
                return
            pdu = bytes(buf[7:6 + length])
            del buf[:6 + length]

            def reply(resp: bytes, _corrupt: bool, tid=tid, unit=unit) -> None:
                conn.write(struct.pack(">HHHB", tid, 0, len(resp) + 1, unit) + resp)

            self.request(unit, pdu, reply)


class RtuTcpServer(_TcpServer):
    """RTU frames over TCP, as a serial server in transparent mode passes them."""

    def _received(self, conn: _Connection, data: bytes) -> None:
        for unit, pdu in self._feed_rtu(conn.rtu, data):
            self.request(unit, pdu, lambda resp, corrupt, unit=unit: conn.write(rtu_frame(unit, resp, corrupt)))


# ---- pseudo-terminal transport -------------------------------------------------------------

class RtuPtyServer(ModbusLineServer):
    """RTU on a pseudo-terminal: the client opens `port_path` as if it were a USB adapter."""

    def __init__(self, meters: dict[int, SimMeter] | None = None, timing: LineTiming | None = None):
        super().__init__(meters, timing)
        self.port_path = ""
        self._master = -1
        self._slave = -1
        self._rtu = RtuDecoder()
        self._out = bytearray()

    @property
    def address(self) -> str:
        return self.port_path

    async def _open(self) -> None:
        self._master, self._slave = os.openpty()
        # Holding the slave open keeps the master readable between clients (no EIO) and keeps
        # the raw settings; pyserial sets its own on open anyway.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port_path = os.ttyname(self._slave)
        asyncio.get_running_loop().add_reader(self._master, self._readable)

    async def _close(self) -> None:
        if self._master < 0:
            return
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._master)
        loop.remove_writer(self._master)
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        self._out.clear()

    def _readable(self) -> None:
        data = read_master(self._master)
        if not data:
            return
        for unit, pdu in self._feed_rtu(self._rtu, data):
            self.request(unit, pdu, lambda resp, corrupt, unit=unit: self._write(rtu_frame(unit, resp, corrupt)))

    def _write(self, data: bytes) -> None:
        if self._master < 0:
            return
        if not self._out:
            try:
                data = data[os.write(self._master, data):]
            except BlockingIOError:
                pass
            if not data:
                return
            asyncio.get_running_loop().add_writer(self._master, self._writable)
        self._out += data
        if len(self._out) > 65536:  # nobody reads the port: drop what is stale
            del self._out[:len(self._out) - 65536]

    def _writable(self) -> None:
        try:
            del self._out[:os.write(self._master, self._out)]
        except BlockingIOError:
            return
        if not self._out:
            asyncio.get_running_loop().remove_writer(self._master)
