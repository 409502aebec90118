"""Simulated relay modules and the contactors they drive, for the lighting circuits.

A `SimRelayModule` is one Modbus unit on a simulated line (simulators/modbus_server.py): coils
read with FC01 and written with FC05/FC15, or holding registers (FC03/FC06/FC16) for modules
that expose their outputs so. Each output may drive a `Contactor`, whose state over time feeds
the simulated meters of the circuit (SimMeter.feed), so what the gateway switches is what the
meters measure.

Faults on demand: a contactor `stuck` (welded contacts, or a manual bypass at the panel: the
coil follows the command, the contacts do not), a `tripped` breaker (no power whatever the
contactor), a module that is `dead` (silent), answers late (`delay_s`), with a bad CRC, or
`restart()`s and forgets its outputs (unless `keeps_outputs`).
"""

from __future__ import annotations

import bisect
import struct
import time
from typing import Callable

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3


class Contactor:
    """The contacts of one lighting circuit's contactor, and their history (for the meters,
    which integrate power between two readings)."""

    def __init__(self, clock: Callable[[], float] = time.time, inverted: bool = False):
        self.clock = clock
        self.inverted = inverted      # energised coil = lamps off (normally closed contacts)
        self._coil = False
        self._closed = inverted       # contacts: closed when the coil is off if inverted
        self._stuck = False
        self._tripped = False
        self._times: list[float] = [float("-inf")]
        self._states: list[bool] = [self.energized_now]
        self.switchings: list[tuple[float, bool]] = []   # (time, contacts closed) each time they moved

    @property
    def energized_now(self) -> bool:
        return self._closed and not self._tripped

    def _note(self) -> None:
        state = self.energized_now
        if state != self._states[-1]:
            now = self.clock()
            if now < self._times[-1]:   # a clock set back (tests): history restarts there
                keep = bisect.bisect_right(self._times, now)
                del self._times[keep:], self._states[keep:]
            self._times.append(now)
            self._states.append(state)
            if len(self._times) > 4096:
                del self._times[1:2048], self._states[1:2048]

    def energized(self, t: float) -> bool:
        return self._states[bisect.bisect_right(self._times, t) - 1]

    def coil(self, on: bool) -> None:
        self._coil = on
        if not self._stuck:
            closed = on != self.inverted
            if closed != self._closed:
                self._closed = closed
                self.switchings.append((self.clock(), closed))
                self._note()

    @property
    def stuck(self) -> bool:
        return self._stuck

    @stuck.setter
    def stuck(self, value: bool) -> None:
        self._stuck = value
        if not value:
            self.coil(self._coil)       # freed: the contacts follow the coil again

    @property
    def tripped(self) -> bool:
        return self._tripped

    @tripped.setter
    def tripped(self, value: bool) -> None:
        self._tripped = value
        self._note()


class SimRelayModule:
    """A 4/8/16-channel relay module at `unit`; outputs are coils, or holding registers."""

    def __init__(self, unit: int, channels: int = 16, kind: str = "coil", keeps_outputs: bool = True):
        self.unit = unit
        self.kind = kind
        self.outputs = [0] * channels
        self.keeps_outputs = keeps_outputs
        self.contactors: dict[int, Contactor] = {}
        self.writes = 0
        # faults (the line server reads these, as for a meter)
        self.dead = False
        self.delay_s = 0.0
        self.corrupt_crc = False
        self.exception: int | None = None
        self.ignore_writes = False    # answers a write but does not switch (a readback mismatch)

    def wire(self, address: int, contactor: Contactor) -> None:
        self.contactors[address] = contactor
        contactor.coil(bool(self.outputs[address]))

    def _set(self, address: int, value: int) -> None:
        self.writes += 1
        if self.ignore_writes:
            return
        self.outputs[address] = value
        if address in self.contactors:
            self.contactors[address].coil(bool(value))

    def restart(self) -> None:
        """Power cycle: a module that does not keep its outputs comes back with all off."""
        if not self.keeps_outputs:
            for a in range(len(self.outputs)):
                self.outputs[a] = 0
                if a in self.contactors:
                    self.contactors[a].coil(False)

    def answer(self, pdu: bytes) -> bytes:
        fc = pdu[0]
        if self.exception is not None:
            return bytes([(fc | 0x80) & 0xFF, self.exception])
        n = len(self.outputs)
        bits = self.kind == "coil"
        try:
            if fc == 1 and bits or fc == 3 and not bits:
                address, count = struct.unpack(">HH", pdu[1:5])
                if count < 1 or address + count > n:
                    return bytes([fc | 0x80, ILLEGAL_ADDRESS])
                if bits:
                    data = bytearray((count + 7) // 8)
                    for i in range(count):
                        if self.outputs[address + i]:
                            data[i // 8] |= 1 << (i % 8)
                    return bytes([fc, len(data)]) + bytes(data)
                return bytes([fc, 2 * count]) + struct.pack(f">{count}H", *self.outputs[address:address + count])
            if fc == 5 and bits or fc == 6 and not bits:
                address, value = struct.unpack(">HH", pdu[1:5])
                if address >= n:
                    return bytes([fc | 0x80, ILLEGAL_ADDRESS])
                if bits and value not in (0xFF00, 0x0000):
                    return bytes([fc | 0x80, ILLEGAL_VALUE])
                self._set(address, int(value == 0xFF00) if bits else value)
                return pdu[:5]
            if fc == 15 and bits:
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                if address + count > n:
                    return bytes([fc | 0x80, ILLEGAL_ADDRESS])
                for i in range(count):
                    self._set(address + i, (pdu[6 + i // 8] >> (i % 8)) & 1)
                return pdu[:5]
            if fc == 16 and not bits:
                address, count, nbytes = struct.unpack(">HHB", pdu[1:6])
                if address + count > n:
                    return bytes([fc | 0x80, ILLEGAL_ADDRESS])
                for i, v in enumerate(struct.unpack(f">{count}H", pdu[6:6 + 2 * count])):
                    self._set(address + i, v)
                return pdu[:5]
        except (struct.error, IndexError):
            return bytes([(fc | 0x80) & 0xFF, ILLEGAL_VALUE])
        return bytes([(fc | 0x80) & 0xFF, ILLEGAL_FUNCTION])
