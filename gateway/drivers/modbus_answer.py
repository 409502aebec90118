"""Every Modbus answer is judged on its raw bytes, against the request sent, before pymodbus parses it.

pymodbus 3.16 takes a response's layout from the response itself: it decodes a reply with
another function code as if it were the one asked (a 04 answer to a 03 read is a good reading),
reads as many registers as the answer's byte count claims (an oversized count gives extra
registers; an odd one a register made of a stray byte, or an exception inside the transport's
`data_received` that closes the connection with an asyncio traceback), and accepts transaction
id 0 as the answer to any transaction. So the driver's `trace_packet` hook sees each answer
first and hands pymodbus only one frame that is exactly the answer to the request in flight:
its unit, transaction, function, byte count and length all as asked, or an exception answer to
that function. Anything else ends the exchange at once as this meter's poll error (on RTU, a
frame with a bad CRC too, which pymodbus would drop and wait out the timeout) — except an answer
to another transaction (a late answer to an earlier request), which is set aside while the
meter's own answer may still come.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pymodbus.framer import FramerRTU

from .scheduler import BadAnswer, Garbled, NoAnswer, PollError

MBAP = struct.Struct(">HHHB")  # transaction, protocol, length (unit + PDU), unit


def _hex(data: bytes) -> str:
    return data[:32].hex(" ") + (" …" if len(data) > 32 else "")


@dataclass(frozen=True, slots=True)
class Expected:
    """What the answer to the request in flight must be."""

    unit: int
    function: int
    count: int
    tid: int = 0  # MBAP transaction id (not used by RTU framing)


@dataclass(frozen=True, slots=True)
class Verdict:
    frame: bytes = b""             # the answer, exactly one frame, for pymodbus to parse
    error: PollError | None = None  # the answer is unusable: fail the exchange now
    # while waiting: bytes not (yet) an answer, and the last answer to another transaction set aside
    partial: bytes = b""
    stray: str = ""


WRITES = (5, 6, 15, 16)   # answered by an echo of address and value (or quantity): 4 bytes


def data_bytes(function: int, count: int) -> int:
    """The byte count of the answer to a read of `count` bits (FC01/02) or registers (FC03/04)."""
    return (count + 7) // 8 if function in (1, 2) else 2 * count


def check_pdu(pdu: bytes, want: Expected) -> PollError | None:
    """A complete answer PDU: the read answer or exception answer asked for, or why not."""
    function = pdu[0]
    if function == want.function | 0x80:
        return None if len(pdu) == 2 else BadAnswer(f"exception answer of {len(pdu)} bytes ({_hex(pdu)})")
    if function != want.function:
        return BadAnswer(f"answer with function {function:#04x} to a read with function {want.function:#04x}")
    if function in WRITES:
        return None if len(pdu) == 5 else BadAnswer(f"answer to a write of {len(pdu)} bytes, 5 expected")
    size = data_bytes(function, want.count)
    if len(pdu) < 2 or pdu[1] != size:
        got = f"byte count {pdu[1]}" if len(pdu) >= 2 else "no byte count"
        what = "coils" if function in (1, 2) else "registers"
        return BadAnswer(f"answer with {got}, {size} expected for {want.count} {what}")
    if len(pdu) != 2 + size:
        return BadAnswer(f"answer with byte count {size} carries {len(pdu) - 2} data bytes")
    return None


def judge_mbap(buf: bytes, want: Expected) -> Verdict:
    """Modbus TCP: frames are delimited by their MBAP length; transactions tell answers apart."""
    i, stray = 0, ""
    while len(buf) - i >= MBAP.size:
        tid, protocol, length, unit = MBAP.unpack_from(buf, i)
        if protocol != 0 or not 2 <= length <= 254:
            return Verdict(error=BadAnswer(f"not a Modbus TCP answer ({_hex(buf[i:])})"))
        end = i + 6 + length
        if len(buf) < end:
            break
        if tid != want.tid:
            stray = f"set aside an answer to transaction {tid}, this request was {want.tid}"
            i = end
            continue
        if unit != want.unit:
            return Verdict(error=BadAnswer(f"answer from unit {unit} to a request for unit {want.unit}"))
        error = check_pdu(buf[i + MBAP.size:end], want)
        return Verdict(error=error) if error else Verdict(frame=buf[i:end])
    return Verdict(partial=buf[i:], stray=stray)


def judge_rtu(buf: bytes, want: Expected) -> Verdict:
    """RTU: a frame is found by our unit and function, its length from the byte count, and its CRC.

    Bytes before it (line noise, another unit's answer) are skipped; a frame of our unit with
    another function is recognised once a valid CRC closes it.
    """
    for i in range(len(buf) - 1):
        if buf[i] != want.unit:
            continue
        function = buf[i + 1]
        if function == want.function and function in WRITES:
            size = 8
        elif function == want.function:
            if len(buf) - i < 3:
                break
            size = buf[i + 2] + 5
        elif function == want.function | 0x80:
            size = 5
        else:
            rest = buf[i:]
            if len(rest) >= 4 and FramerRTU.compute_CRC(rest[:-2]) == int.from_bytes(rest[-2:], "big"):
                return Verdict(error=check_pdu(rest[1:-2], want))
            continue
        if len(buf) - i < size:
            break
        frame = buf[i:i + size]
        if FramerRTU.compute_CRC(frame[:-2]) != int.from_bytes(frame[-2:], "big"):
            return Verdict(error=Garbled(f"CRC error in answer ({_hex(frame)})"))
        error = check_pdu(frame[1:-2], want)
        return Verdict(error=error) if error else Verdict(frame=frame)
    return Verdict(partial=buf)


def stand_in(want: Expected, rtu: bool) -> bytes:
    """A well-formed exception answer to the request, for pymodbus to end the transaction with."""
    if rtu:
        body = bytes([want.unit, want.function | 0x80, 0])
        return body + FramerRTU.compute_CRC(body).to_bytes(2, "big")
    return MBAP.pack(want.tid, 0, 3, want.unit) + bytes([want.function | 0x80, 0])


class AnswerWatch:
    """The client's `trace_packet` hook: judges what arrives while an exchange is in flight.

    pymodbus calls it with everything received since the request was sent (its receive buffer)
    and parses what it returns: nothing until one whole, valid answer is there. pymodbus has no
    way to end a transaction from outside but an answer; so an unusable answer is replaced by a
    stand-in exception answer, and `refused` says why: the driver raises that, not the stand-in.
    """

    def __init__(self, rtu: bool) -> None:
        self._judge = judge_rtu if rtu else judge_mbap
        self._rtu = rtu
        self._want: Expected | None = None
        self._waiting = Verdict()
        self.refused: PollError | None = None

    def arm(self, unit: int, function: int, count: int) -> None:
        """Expect the answer to a read of `count` registers with `function` from `unit`."""
        self._want = Expected(unit, function, count)
        self._waiting = Verdict()
        self.refused = None

    def disarm(self) -> None:
        self._want = None

    def trace(self, sending: bool, data: bytes) -> bytes:
        want = self._want
        if sending:
            if want is not None and not self._rtu:  # our request: the transaction its answer names
                self._want = Expected(want.unit, want.function, want.count, int.from_bytes(data[:2], "big"))
            return data
        if want is None:
            return b""  # nothing asked, or already answered: nothing for pymodbus to take
        verdict = self._judge(data, want)
        if verdict.frame:
            self._want = None
            return verdict.frame
        if verdict.error is not None:
            self._want = None
            self.refused = verdict.error
            return stand_in(want, self._rtu)
        self._waiting = verdict
        return b""

    def timed_out(self, timeout: float) -> PollError:
        """What no usable answer within `timeout` means, given what did arrive."""
        if self._waiting.partial:
            return BadAnswer(f"incomplete or unreadable answer ({_hex(self._waiting.partial)})")
        stray = self._waiting.stray
        return NoAnswer(f"no answer within {timeout:g} s" + (f" ({stray})" if stray else ""))
