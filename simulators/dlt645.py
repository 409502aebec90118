"""DL/T 645-2007 meters on a pseudo-terminal: one line, several meters, faults on demand.

A `Dlt645SimMeter` shows the same circuit profile and energy counter as a Modbus `SimMeter`
(simulators/meters.py, profiles.py) through a DL/T 645 model's data identifiers, encoded with
the model's own formats (`DiField.encode`), so `values()` and `counters()` are exactly what a
correct decoder reads. `Dlt645PtyServer` answers read requests (0x11, follow-ups 0x12) and the
address query (0x13 to AA...AA; with more than one meter alive the answers collide and arrive
garbled, as on a real line) on a pty that the gateway opens as if it were a USB RS-485 adapter.

A pty ignores baud rate and parity, but its settings can be read back from our side: a request
made at another baud rate than the line's (or with odd parity where the line has none or even)
goes unanswered, as a real meter hearing garbage stays silent. That is what lets
`gateway scan --try-settings` be tested. (Linux clears PARENB on a pty, so even and no parity
cannot be told apart.)

Faults per meter: `dead` (silence), `delay_s`, `error` (answer 0xD1 with this error byte),
`corrupt_checksum`, `noise` (bytes sent before each answer), `split` (answer in a 0xB1 frame
and a follow-up).
"""

from __future__ import annotations

import asyncio
import termios
import time
from decimal import Decimal
from types import SimpleNamespace
from typing import Callable

from gateway.drivers.dlt645 import (BROADCAST, ERROR, MORE, READ, READ_ADDRESS, READ_MORE, REPLY, Dlt645Model,
                                    Frame, FrameScanner, address_bytes, encode_frame)

from .meters import SimMeter
from .modbus_server import LineTiming, RtuPtyServer, read_master

NO_SUCH_DATA = 0x02  # the error byte for an identifier the meter does not have
PREAMBLE = 4         # wake-up bytes the simulated meters send before an answer


class Dlt645SimMeter(SimMeter):
    """One DL/T 645 meter. Fault attributes may be changed at any time."""

    def __init__(self, model: Dlt645Model, address: str, circuit: str, seed: int,
                 clock: Callable[[], float] = time.time, tz: str = "Asia/Shanghai", *,
                 latitude: float = 44.15, longitude: float = 125.83):
        # The Modbus meter's profile and energy, with no register map of its own.
        super().__init__(SimpleNamespace(phases=model.phases, fields=()), 0, circuit, seed, clock, tz,
                         latitude=latitude, longitude=longitude)
        address_bytes(address)  # a bad address fails here, not on the line
        self.model = model
        self.address = address
        self.error: int | None = None
        self.corrupt_checksum = False
        self.noise = b""
        self.split = False
        self._by_di = {f.di: f for f in model.fields}
        self._dl_snap: dict[str, tuple[float, bytes, Decimal]] = {}

    def _dl_snapshot(self) -> dict[str, tuple[float, bytes, Decimal]]:
        """field name -> (shown value, value bytes, exact value), computed once per clock reading."""
        now = self.clock()
        if (now, self.lights_on_daytime) != self._snap_key:
            eng = self._engineering(now)
            snap = {}
            for f in self.model.fields:
                raw = f.encode(self._value_for(f, eng))
                exact = f.exact(raw)
                snap[f.name] = (float(exact), raw, exact)
            self._dl_snap, self._snap_key = snap, (now, self.lights_on_daytime)
        return self._dl_snap

    def values(self) -> dict[str, float]:
        return {name: shown for name, (shown, _, _) in self._dl_snapshot().items()}

    def counters(self) -> dict[str, Decimal]:
        return {f.name: self._dl_snapshot()[f.name][2] for f in self.model.fields if f.counter}

    def answer(self, di: int) -> bytes | int:
        """The value bytes for a read of `di`, or the error byte of a 0xD1 answer."""
        if self.error is not None:
            return self.error
        f = self._by_di.get(di)
        if f is None:
            return NO_SUCH_DATA
        return self._dl_snapshot()[f.name][1]

    def registers(self, function: int, address: int, count: int):  # not a Modbus meter
        raise TypeError("a DL/T 645 meter has no Modbus registers")


class Dlt645PtyServer(RtuPtyServer):
    """The meters of one DL/T 645 line, keyed by address, on a pseudo-terminal."""

    def __init__(self, meters: dict[str, Dlt645SimMeter] | None = None, timing: LineTiming | None = None,
                 line: LineTiming | None = None):
        super().__init__(None, timing)
        self.meters = dict(meters or {})  # type: ignore[assignment]  # by address, not unit
        self.line = line          # the line's settings; None: answer whatever the port is set to
        self.collisions = 0
        self.wrong_settings = 0
        self._scanner = FrameScanner()
        self._rest: dict[tuple[str, bytes], bytes] = {}  # follow-up data of split answers

    def _readable(self) -> None:
        data = read_master(self._master)
        if not data:
            return
        for item in self._scanner.feed(data):
            if isinstance(item, Frame) and not item.is_reply:
                self.frame(item)
            else:
                self.ignored += 1

    def _settings_match(self) -> bool:
        if self.line is None or self._slave < 0:
            return True
        try:
            attrs = termios.tcgetattr(self._slave)
        except termios.error:
            return True
        speed = getattr(termios, f"B{self.line.baudrate}", None)
        odd = bool(attrs[2] & termios.PARODD)
        return (speed is None or attrs[4] == speed) and odd == (self.line.parity == "O")

    def frame(self, req: Frame) -> None:
        """One request from the master."""
        self.requests += 1
        if not self._settings_match():
            self.wrong_settings += 1
            self.ignored += 1
            return
        if req.code == READ_ADDRESS and req.address == BROADCAST:
            alive = [m for m in self.meters.values() if not m.dead]
            if not alive:
                self._silence(req)
                return
            if len(alive) > 1:  # everybody answers at once: the master hears a mix
                self.collisions += 1
                frames = [encode_frame(m.address, READ_ADDRESS | REPLY, address_bytes(m.address), 0) for m in alive]
                mixed = bytes(a | b for a, b in zip(frames[0], frames[1]))
                self._answer(req, alive[0], bytes([0xFE] * PREAMBLE) + mixed, corruptible=False)
                return
            m = alive[0]
            self._answer(req, m, encode_frame(m.address, READ_ADDRESS | REPLY, address_bytes(m.address), PREAMBLE))
            return
        meter = self.meters.get(req.address)
        if meter is None or req.code not in (READ, READ_MORE) or len(req.data) < 4:
            self.ignored += 1
            return
        if meter.dead:
            self._silence(req)
            return
        di = req.data[:4]
        if req.code == READ_MORE:
            rest = self._rest.pop((meter.address, di), None)
            if rest is None:
                body = Frame(meter.address, READ_MORE | REPLY | ERROR, bytes([0x01]))
            else:
                body = Frame(meter.address, READ_MORE | REPLY, di + rest + req.data[4:5])
            self._answer(req, meter, body.encode(PREAMBLE))
            return
        value = meter.answer(int.from_bytes(di, "little"))
        if isinstance(value, int):
            body = Frame(meter.address, READ | REPLY | ERROR, bytes([value]))
        elif meter.split and len(value) > 1:
            half = len(value) // 2
            self._rest[(meter.address, di)] = value[half:]
            body = Frame(meter.address, READ | REPLY | MORE, di + value[:half])
        else:
            body = Frame(meter.address, READ | REPLY, di + value)
        self._answer(req, meter, body.encode(PREAMBLE))

    # ---- time on the line ----

    def _request_s(self, req: Frame) -> tuple[float, float]:
        t = self.timing
        if t is None:
            return 0.0, 0.0
        return t.frame_s(PREAMBLE + 12 + len(req.data)), t.gap_s

    def _silence(self, req: Frame) -> None:
        loop = self._loop or asyncio.get_running_loop()
        req_s, gap = self._request_s(req)
        self._line_free = max(loop.time(), self._line_free) + req_s + gap

    def _answer(self, req: Frame, meter: Dlt645SimMeter, frame: bytes, corruptible: bool = True) -> None:
        if corruptible and meter.corrupt_checksum:
            frame = frame[:-2] + bytes([frame[-2] ^ 0x5A]) + frame[-1:]
        frame = meter.noise + frame
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        req_s, gap = self._request_s(req)
        start = max(now, self._line_free)
        due = start + req_s + gap + meter.delay_s + (self.timing.frame_s(len(frame)) if self.timing else 0.0)
        self._line_free = due + gap
        if due <= now:
            self._send(frame)
        else:
            key = next(self._seq)
            self._pending[key] = loop.call_at(due, self._fire_frame, key, frame)

    def _fire_frame(self, key: int, frame: bytes) -> None:
        self._pending.pop(key, None)
        self._send(frame)

    def _send(self, frame: bytes) -> None:
        self.answers += 1
        self._write(frame)
