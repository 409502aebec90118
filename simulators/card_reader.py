"""A serial card reader on a pseudo-terminal: RDM6300 frames or Wiegand-converter text lines.

The bytes come from the gateway's own frame builders (`gateway.drivers.card_frames`), so the
simulator and the driver share one definition of each format; what this module adds is the
reader's behaviour on the wire: one frame per swipe, the same frame repeated while a card is
held on the reader (the driver must debounce), garbage on the line, and, with a `LineTiming`,
bytes that trickle out at the line's character rate (9600 8N1: about 1.04 ms a byte).

`PtyPort` is the transport, shared with the patrol wand (`simulators.patrol.WandSim`): the
client opens `port_path` as if it were a USB-serial adapter.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import math
import os
import tty

from gateway.drivers import card_frames

from .modbus_server import LineTiming, read_master

_MAX_OUT = 65536  # bytes nobody reads: keep the newest only (a reader does not wait for us)
_MAX_IN = 65536

FORMATS = ("rdm6300", "wiegand_text")
ENCODINGS = ("hex_raw", "hex", "decimal", "fac_card")


class PtyPort:
    """The device end of a pseudo-terminal, with optional line-speed pacing of what it sends.

    Holding the slave open keeps the master usable between clients (no EIO) and keeps the raw
    settings; a client (pyserial) sets its own on open anyway. With `link`, `port_path` is that
    symlink to the pty, made on start and removed on stop, so a stop/start (unplug, replug)
    keeps the name the gateway's config uses while the pty itself is new. What the client writes is kept
    in `received` (bounded) and handed to `_on_data` so a subclass can answer commands.
    """

    def __init__(self, line: LineTiming | None = None, link: str | None = None):
        self.line = line
        self.link = link  # a stable path (like /dev/serial/by-id/...) kept pointing at the pty
        self.port_path = ""
        self.bytes_sent = 0  # bytes handed to the pty (after pacing)
        self.received = bytearray()
        self._master = -1
        self._slave = -1
        self._out = bytearray()  # due bytes the pty did not take yet
        self._wire: collections.deque[list] = collections.deque()  # [start, bytes] not yet due
        self._line_free = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._writer_on = False
        self._waiters: list[asyncio.Future] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def address(self) -> str:
        return self.port_path

    @property
    def running(self) -> bool:
        return self._master >= 0

    async def start(self) -> None:
        if self._master >= 0:
            return
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port_path = os.ttyname(self._slave)
        if self.link:
            tmp = f"{self.link}.{os.getpid()}.tmp"
            try:
                os.symlink(self.port_path, tmp)
                os.replace(tmp, self.link)  # a replug points the same name at the new pty
            except OSError:
                os.close(self._master)
                os.close(self._slave)
                self._master = self._slave = -1
                raise
            self.port_path = self.link
        self._loop.add_reader(self._master, self._readable)

    async def stop(self) -> None:
        if self._master < 0:
            return
        loop = self._loop or asyncio.get_running_loop()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop.remove_reader(self._master)
        loop.remove_writer(self._master)
        self._writer_on = False
        os.close(self._master)
        os.close(self._slave)
        self._master = self._slave = -1
        if self.link:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.link)  # unplugged: the device name goes away
        self._out.clear()
        self._wire.clear()
        self._wake()

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # ---- sending ---------------------------------------------------------------------------

    def write_raw(self, data: bytes) -> None:
        """Put bytes on the line now (paced by `line` if set)."""
        if self._master < 0:
            raise RuntimeError("port is not started")
        if not data:
            return
        if self.line is None:
            self._out += data
            self._flush()
            return
        loop = self._loop or asyncio.get_running_loop()
        start = max(loop.time(), self._line_free)
        self._line_free = start + len(data) * self.line.char_s
        self._wire.append([start, bytes(data)])
        if self._timer is None:
            self._pump()

    async def drain(self) -> None:
        """Wait until everything written so far is on the line and taken by the pty."""
        if self._idle():
            return
        fut = (self._loop or asyncio.get_running_loop()).create_future()
        self._waiters.append(fut)
        await fut

    def _idle(self) -> bool:
        return self._master < 0 or (not self._wire and not self._out)

    def _wake(self) -> None:
        if self._idle():
            waiters, self._waiters = self._waiters, []
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _pump(self) -> None:
        """Move the bytes whose last bit has left the wire to the pty; re-arm for the next."""
        self._timer = None
        if self._master < 0:
            return
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        char_s = self.line.char_s  # type: ignore[union-attr]
        while self._wire:
            start, data = self._wire[0]
            n = min(len(data), int((now - start) / char_s + 1e-9))
            if n > 0:
                self._out += data[:n]
            if n < len(data):
                self._wire[0] = [start + n * char_s, data[n:]]
                self._timer = loop.call_at(start + (n + 1) * char_s, self._pump)
                break
            self._wire.popleft()
        self._flush()

    def _flush(self) -> None:
        if self._out and not self._writer_on:
            try:
                n = os.write(self._master, self._out)
                self.bytes_sent += n
                del self._out[:n]
            except BlockingIOError:
                pass
            if self._out:
                (self._loop or asyncio.get_running_loop()).add_writer(self._master, self._writable)
                self._writer_on = True
        if len(self._out) > _MAX_OUT:  # nobody reads the port: what is stale is lost
            del self._out[:len(self._out) - _MAX_OUT]
        self._wake()

    def _writable(self) -> None:
        try:
            n = os.write(self._master, self._out)
            self.bytes_sent += n
            del self._out[:n]
        except BlockingIOError:
            return
        if not self._out:
            (self._loop or asyncio.get_running_loop()).remove_writer(self._master)
            self._writer_on = False
        self._wake()

    # ---- receiving -------------------------------------------------------------------------

    def _readable(self) -> None:
        data = read_master(self._master)
        if not data:
            return
        self.received += data
        if len(self.received) > _MAX_IN:
            del self.received[:len(self.received) - _MAX_IN]
        self._on_data(data)

    def _on_data(self, data: bytes) -> None:
        """What the client sent; a device that answers commands overrides this."""


class SerialCardReaderSim(PtyPort):
    """A 125 kHz reader with a serial output on a pty.

    fmt="rdm6300": 14-byte RDM6300 frames; `value` is the 32-bit tag (the card's printed
    10-digit number), or a 40-bit value whose top byte is the version byte; otherwise the
    reader's `version` is used.
    fmt="wiegand_text": a Wiegand-to-serial converter printing one CRLF line per card, with
    `bits` 26 or 34 and `encoding` one of ENCODINGS; `value` is facility << 16 | card (24 bits
    for W26, 32 bits for W34). An optional `label` ("W26:") is printed before the code.
    """

    def __init__(self, fmt: str = "rdm6300", encoding: str = "decimal", bits: int = 26,
                 line: LineTiming | None = None, *, label: str = "", version: int = 0,
                 link: str | None = None):
        super().__init__(line, link)
        if fmt not in FORMATS:
            raise ValueError(f"unknown format '{fmt}' (one of: {', '.join(FORMATS)})")
        if fmt == "wiegand_text":
            if encoding not in ENCODINGS:
                raise ValueError(f"unknown encoding '{encoding}' (one of: {', '.join(ENCODINGS)})")
            if bits not in (26, 34):
                raise ValueError(f"Wiegand bits must be 26 or 34, not {bits}")
        if not 0 <= version <= 0xFF:
            raise ValueError("version must be one byte")
        self.fmt = fmt
        self.encoding = encoding
        self.bits = bits
        self.label = label
        self.version = version
        self.swipes = 0  # frames or lines sent for cards (hold repeats included)

    @property
    def value_bits(self) -> int:
        if self.fmt == "rdm6300":
            return 40
        return 24 if self.bits == 26 else 32

    def frame(self, value: int, corrupt: bool = False) -> bytes:
        """The bytes the reader sends for one read of `value`.

        corrupt=True sends a frame the driver must reject: a wrong RDM6300 checksum, or a
        wrong Wiegand parity bit (hex_raw only: the other encodings carry no check).
        """
        if not 0 <= value < 1 << self.value_bits:
            raise ValueError(f"card value {value} does not fit in {self.value_bits} bits")
        if self.fmt == "rdm6300":
            version = value >> 32 if value >> 32 else self.version
            frame = card_frames.rdm6300_frame(value & 0xFFFFFFFF, version)
            if corrupt:  # bytes 11-12 are the checksum's two hex digits
                bad = int(frame[11:13], 16) ^ 0x5A
                frame = frame[:11] + f"{bad:02X}".encode("ascii") + frame[13:]
            return frame
        facility, card = value >> 16, value & 0xFFFF
        if self.bits == 26:
            raw = card_frames.wiegand26_frame(facility, card)
        else:
            raw = card_frames.wiegand34_frame(facility, card)
        if corrupt:
            if self.encoding != "hex_raw":
                raise ValueError(f"encoding '{self.encoding}' carries no parity to corrupt")
            raw ^= 1  # the trailing odd parity bit
        return (self.label + self._text(raw, facility, card, value) + "\r\n").encode("ascii")

    def _text(self, raw: int, facility: int, card: int, value: int) -> str:
        enc = self.encoding
        if enc == "hex_raw":
            return f"{raw:0{(self.bits + 3) // 4}X}"
        if enc == "hex":
            return f"{value:0{self.value_bits // 4}X}"
        if enc == "decimal":
            return f"{value:010d}"
        return f"{facility},{card:05d}"

    def swipe(self, value: int, corrupt: bool = False) -> bytes:
        """One presentation of a card: one frame or line. Returns the bytes sent."""
        data = self.frame(value, corrupt)
        self.write_raw(data)
        self.swipes += 1
        return data

    async def hold(self, value: int, seconds: float, repeat_s: float = 0.15) -> int:
        """A card held on the reader: the frame again every `repeat_s` for `seconds`.

        Sends ceil(seconds / repeat_s) frames (at least one), at fixed times from the first, and
        returns how many. Waits until the last one is on the line.
        """
        if repeat_s <= 0:
            raise ValueError("repeat_s must be positive")
        count = max(1, math.ceil(seconds / repeat_s - 1e-9))
        data = self.frame(value)
        loop = self._loop or asyncio.get_running_loop()
        t0 = loop.time()
        for k in range(count):
            delay = t0 + k * repeat_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._master < 0:
                return k
            self.write_raw(data)
            self.swipes += 1
        await self.drain()
        return count

    def noise(self, data: bytes) -> None:
        """Garbage on the line (a loose connector, a reader booting): the driver must resync."""
        self.write_raw(data)
