"""What card readers and patrol wands send on a serial line, parsed incrementally.

Every parser has `feed(data) -> list[result]`: it keeps partial input between calls (a serial
read returns whatever bytes have arrived, frames split anywhere), never raises on any input
(bad input is counted in `errors` by kind: the driver logs it, the line stays up), bounds what
it buffers, and finds every valid frame embedded in noise exactly once.

Also here: the builders of the same frames (simulators and tests use them, so both ends share
one definition of each format). The card-number rules (the canonical number, matching a read
to a registered card, numbers written by people) are the card registry's, in gateway/cards.py.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Iterable

from ..cards import FAC_SEPARATORS, card_number, parse_card_text

# ---- card numbers ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CardRead:
    """One card as a reader reported it.

    `bits` is the number of card data bits the reader saw: 24 for Wiegand-26 data, 32 for an
    EM4100 tag (RDM6300) or Wiegand-34 data. A 26-bit reader sees only the low 24 bits of an
    EM card, which is why `bits` travels with the value.
    """

    value: int
    bits: int
    raw: str = ""

    @property
    def number(self) -> str:
        return card_number(self.value)


# ---- Wiegand frames -------------------------------------------------------------------------

def _parity(x: int) -> int:
    return x.bit_count() & 1


def _wiegand_frame(facility: int, card: int, fac_bits: int) -> int:
    if not 0 <= facility < 1 << fac_bits:
        raise ValueError(f"facility must be 0..{(1 << fac_bits) - 1}, not {facility}")
    if not 0 <= card <= 0xFFFF:
        raise ValueError(f"card must be 0..65535, not {card}")
    n = fac_bits + 16                       # data bits
    half = n // 2
    data = (facility << 16) | card
    even = _parity(data >> half)            # makes the first half plus its parity bit even
    odd = 1 - _parity(data & ((1 << half) - 1))  # makes the second half plus its bit odd
    return (even << (n + 1)) | (data << 1) | odd


def wiegand26_frame(facility: int, card: int) -> int:
    """The 26 bits of an H10301 frame, first bit sent as the most significant: even parity over
    the next 12 bits, 8-bit facility, 16-bit card, odd parity over the 12 bits before it."""
    return _wiegand_frame(facility, card, 8)


def wiegand34_frame(facility: int, card: int) -> int:
    """The 34 bits of a Wiegand-34 frame: the same shape with a 16-bit facility."""
    return _wiegand_frame(facility, card, 16)


def wiegand_data(frame: int, bits: int) -> int | None:
    """The data bits of a whole `bits`-long Wiegand frame, or None when a parity is wrong."""
    n = bits - 2
    half = n // 2
    if frame >> bits:
        return None
    # Each parity bit together with the half it covers: even for the first, odd for the last.
    if _parity(frame >> (half + 1)) != 0 or _parity(frame & ((1 << (half + 1)) - 1)) != 1:
        return None
    return (frame >> 1) & ((1 << n) - 1)


# ---- RDM6300 --------------------------------------------------------------------------------

STX, ETX = 0x02, 0x03
RDM6300_FRAME_LEN = 14
_HEX_BYTES = frozenset(b"0123456789ABCDEFabcdef")


def rdm6300_frame(tag: int, version: int = 0) -> bytes:
    """0x02, 2 hex digits of version, 8 of tag, 2 of checksum (XOR of the 5 bytes), 0x03."""
    if not 0 <= tag <= 0xFFFFFFFF:
        raise ValueError("tag must fit in 32 bits")
    if not 0 <= version <= 0xFF:
        raise ValueError("version must fit in one byte")
    data = bytes([version]) + tag.to_bytes(4, "big")
    check = 0
    for b in data:
        check ^= b
    return b"\x02" + (data.hex().upper() + f"{check:02X}").encode("ascii") + b"\x03"


class Rdm6300Parser:
    """RDM6300 (125 kHz EM4100) frames; resynchronises on the next 0x02 after garbage.

    A valid frame holds no 0x02 between its ends, so two valid frames never overlap: dropping
    just the leading 0x02 of a candidate that fails cannot lose a frame that starts inside it.
    """

    def __init__(self) -> None:
        self.errors: Counter[str] = Counter()
        self._buf = bytearray()
        self._skipping = False  # inside a bad stretch: count it once, however it is chunked

    def feed(self, data: bytes) -> list[CardRead]:
        out: list[CardRead] = []
        buf = self._buf
        buf += data
        while buf:
            start = buf.find(STX)
            if start != 0:
                if not self._skipping:
                    self.errors["garbage"] += 1
                    self._skipping = True
                if start < 0:
                    buf.clear()
                    break
                del buf[:start]
            if len(buf) < RDM6300_FRAME_LEN:
                break  # wait for the rest (at most 13 bytes are held)
            # A rejected candidate counts once; the bytes skipped after it are part of it.
            self._skipping = True
            frame = bytes(buf[:RDM6300_FRAME_LEN])
            if frame[13] != ETX or not all(b in _HEX_BYTES for b in frame[1:13]):
                self.errors["bad_frame"] += 1
                del buf[:1]  # a real frame may start inside this one
                continue
            raw = frame[1:13].decode("ascii")
            check = 0
            for b in bytes.fromhex(raw):
                check ^= b
            if check != 0:  # the XOR of the five data bytes and the checksum byte
                self.errors["bad_checksum"] += 1
                del buf[:RDM6300_FRAME_LEN]  # well formed, so no frame starts inside it
                continue
            self._skipping = False
            del buf[:RDM6300_FRAME_LEN]
            out.append(CardRead(int(raw[2:10], 16), 32, raw))
        return out


# ---- line-oriented readers ------------------------------------------------------------------

_EOL = re.compile(rb"[\r\n]")


class _LineParser:
    """Splits the byte stream on CR, LF or CRLF; a line longer than `max_line` is dropped up to
    the next line end (counted once as "too_long"). Blank lines are ignored."""

    def __init__(self, max_line: int = 256) -> None:
        self.errors: Counter[str] = Counter()
        self.max_line = max_line
        self._buf = bytearray()
        self._discarding = False

    def _lines(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        lines: list[bytes] = []
        pos = 0
        n = len(buf)
        while pos < n:
            m = _EOL.search(buf, pos)
            if m is None:
                break
            end = m.start()
            if self._discarding:
                self._discarding = False
            elif end - pos > self.max_line:
                self.errors["too_long"] += 1
            elif end > pos:
                lines.append(bytes(buf[pos:end]))
            pos = end + 1
        del buf[:pos]
        if len(buf) > self.max_line:  # no line end in sight: drop it now, skip to the next end
            if not self._discarding:
                self.errors["too_long"] += 1
                self._discarding = True
            buf.clear()
        return lines

    def _text(self, line: bytes) -> str | None:
        try:
            text = line.decode("ascii").strip()
        except UnicodeDecodeError:
            self.errors["garbage"] += 1
            return None
        return text or None


# An optional label before the code: "W26:", "WG26 ", "Card: ", "Card No: ". It starts with a
# letter and ends in ':' or whitespace; tried only when the whole line is not a code.
_LABEL = re.compile(r"[A-Za-z][\w.#-]*(?:[ \t]+[A-Za-z][\w.#-]*)*[ \t]*:[ \t]*|[A-Za-z][\w.#-]*[ \t]+")

WIEGAND_ENCODINGS = ("hex_raw", "hex", "decimal", "fac_card")


class WiegandTextParser(_LineParser):
    """Wiegand-to-serial converters that print one code per line.

    encoding "hex_raw": hex of the whole frame with both parity bits (checked, then stripped);
    "hex": hex of the data bits; "decimal": the data value in decimal; "fac_card": "123,45678".
    `bits` is the Wiegand frame length (26 or 34); the data has two bits fewer.
    """

    def __init__(self, encoding: str, bits: int = 26, max_line: int = 128) -> None:
        if encoding not in WIEGAND_ENCODINGS:
            raise ValueError(f"unknown encoding '{encoding}' (one of: {', '.join(WIEGAND_ENCODINGS)})")
        if bits not in (26, 34):
            raise ValueError(f"Wiegand bits must be 26 or 34, not {bits}")
        super().__init__(max_line)
        self.encoding = encoding
        self.bits = bits
        self.data_bits = bits - 2

    def feed(self, data: bytes) -> list[CardRead]:
        out: list[CardRead] = []
        for line in self._lines(data):
            text = self._text(line)
            if text is None:
                continue
            read = self._code(text)
            if read is None:
                m = _LABEL.match(text)
                if m and m.end() < len(text):
                    read = self._code(text[m.end():])
            if read is None:
                self.errors["no_match"] += 1
            elif isinstance(read, str):
                self.errors[read] += 1
            else:
                out.append(read)
        return out

    def _code(self, text: str) -> CardRead | str | None:
        """The read, an error kind (the text is a code but a wrong one), or None (not a code)."""
        enc = self.encoding
        try:
            if enc == "fac_card":
                if not any(c in text for c in FAC_SEPARATORS):
                    return None
                value, _ = parse_card_text(text, "fac_card")
            else:
                value, _ = parse_card_text(text, "decimal" if enc == "decimal" else "hex")
        except ValueError:
            return None
        if enc == "hex_raw":
            if value >> self.bits:
                return "too_large"
            data = wiegand_data(value, self.bits)
            if data is None:
                return "bad_parity"
            value = data
        elif value >> self.data_bits:
            return "too_large"
        return CardRead(value, self.data_bits, text)


class PatternParser(_LineParser):
    """Any other reader that prints lines: a regex with a named group `card`, searched per line."""

    def __init__(self, pattern: str, base: int = 10, bits: int = 32, max_line: int = 256) -> None:
        super().__init__(max_line)
        self.pattern = re.compile(pattern)
        if "card" not in self.pattern.groupindex:
            raise ValueError("the pattern has no named group (?P<card>...)")
        if base not in (10, 16):
            raise ValueError("base must be 10 or 16")
        self.base = base
        self.bits = bits

    def feed(self, data: bytes) -> list[CardRead]:
        out: list[CardRead] = []
        for line in self._lines(data):
            text = line.decode("utf-8", "replace").strip()  # a label may be in any language
            if not text:
                continue
            m = self.pattern.search(text)
            card = m.group("card") if m else None
            if not card:
                self.errors["no_match"] += 1
                continue
            try:
                value = int(card.strip(), self.base)
            except ValueError:
                self.errors["garbage"] += 1
                continue
            if value < 0:
                self.errors["garbage"] += 1
                continue
            if value >> self.bits:
                self.errors["too_large"] += 1
                continue
            out.append(CardRead(value, self.bits, card.strip()))
        return out


# ---- offline patrol wands -------------------------------------------------------------------
# Real wands are proprietary; this line format is the contract between our wand simulator and
# this parser (ASCII, CRLF):
#   BEGIN,<wand_id>
#   R,<seq>,<guard_tag_hex>,<checkpoint_tag_hex>,<YYYY-MM-DD HH:MM:SS>*<XX>
#   END,<wand_id>,<record_count>
# XX: XOR of every character from the 'R' up to (not including) the '*', NMEA style, two
# upper-case hex digits. Times are the wand's own clock: site local time, naive.

WAND_TIME_FORMAT = "%Y-%m-%d %H:%M:%S"
_WAND_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TAG = re.compile(r"[0-9A-Fa-f]{1,32}")
_SEQ = re.compile(r"[0-9]{1,9}")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")


@dataclass(frozen=True, slots=True)
class WandRecord:
    seq: int
    guard_tag: str          # upper-case hex, as the wand stored it
    checkpoint_tag: str     # upper-case hex
    local_time: datetime    # naive: the wand's clock, site local time


@dataclass(frozen=True, slots=True)
class WandBatch:
    """One download. complete=False: the END line was missing, did not match, or its count
    differs from the records kept (a record was damaged): download the wand again."""

    wand: str
    records: tuple[WandRecord, ...]
    complete: bool


def _nmea(text: str) -> int:
    x = 0
    for c in text.encode("ascii"):
        x ^= c
    return x


def wand_record_line(seq: int, guard_tag: str, checkpoint_tag: str, local_time: datetime) -> str:
    """One record line, without its line end."""
    if local_time.tzinfo is not None:
        raise ValueError("a wand records naive local time")
    if not (isinstance(seq, int) and 0 <= seq <= 999_999_999):
        raise ValueError("seq must be 0..999999999")
    for name, tag in (("guard_tag", guard_tag), ("checkpoint_tag", checkpoint_tag)):
        if not _TAG.fullmatch(tag):
            raise ValueError(f"{name} must be 1..32 hex digits, not {tag!r}")
    body = f"R,{seq},{guard_tag.upper()},{checkpoint_tag.upper()},{local_time.strftime(WAND_TIME_FORMAT)}"
    return f"{body}*{_nmea(body):02X}"


def wand_download(wand_id: str, records: Iterable[WandRecord]) -> bytes:
    """What a wand sends when downloaded: BEGIN, its records, END with the count."""
    if not _WAND_ID.fullmatch(wand_id):
        raise ValueError(f"wand id must be 1..64 of A-Z a-z 0-9 _ . -, not {wand_id!r}")
    records = list(records)
    lines = [f"BEGIN,{wand_id}"]
    lines += [wand_record_line(r.seq, r.guard_tag, r.checkpoint_tag, r.local_time) for r in records]
    lines.append(f"END,{wand_id},{len(records)}")
    return "".join(line + "\r\n" for line in lines).encode("ascii")


class WandParser(_LineParser):
    """Wand downloads -> WandBatch. A damaged record is counted and skipped; the batch then
    comes out incomplete (its END count no longer matches), with the records that were good."""

    def __init__(self, max_line: int = 256, max_records: int = 100_000) -> None:
        super().__init__(max_line)
        self.max_records = max_records
        self._wand: str | None = None
        self._records: list[WandRecord] = []
        self._seqs: set[int] = set()
        self._damaged = False

    def feed(self, data: bytes) -> list[WandBatch]:
        out: list[WandBatch] = []
        for line in self._lines(data):
            text = self._text(line)
            if text is not None:
                self._line(text, out)
        return out

    def flush(self) -> list[WandBatch]:
        """Close an open batch as incomplete (the cradle went quiet or the port closed)."""
        return [self._close(False)] if self._wand is not None else []

    def _close(self, complete: bool) -> WandBatch:
        batch = WandBatch(self._wand or "", tuple(self._records), complete and not self._damaged)
        self._wand, self._records, self._seqs, self._damaged = None, [], set(), False
        return batch

    def _line(self, text: str, out: list[WandBatch]) -> None:
        kind, _, rest = text.partition(",")
        if kind == "R":
            self._record(text)
        elif kind == "BEGIN":
            if self._wand is not None:
                self.errors["missing_end"] += 1
                out.append(self._close(False))
            if not _WAND_ID.fullmatch(rest):
                self.errors["bad_begin"] += 1
                return
            self._wand = rest
        elif kind == "END":
            wand, _, count = rest.partition(",")
            if self._wand is None:
                self.errors["end_without_begin"] += 1
            elif wand != self._wand:
                self.errors["bad_end"] += 1
                out.append(self._close(False))
            elif not _SEQ.fullmatch(count):
                self.errors["bad_end"] += 1
                out.append(self._close(False))
            else:
                out.append(self._close(int(count) == len(self._records)))
        else:
            self.errors["garbage"] += 1

    def _record(self, text: str) -> None:
        if self._wand is None:
            self.errors["record_without_begin"] += 1
            return
        # A record dropped here needs no flag: the END count will not match what was kept.
        body, star, check = text.rpartition("*")
        if not star or len(check) != 2 or not all(c in "0123456789ABCDEFabcdef" for c in check):
            self.errors["bad_record"] += 1
            return
        if int(check, 16) != _nmea(body):
            self.errors["bad_checksum"] += 1
            return
        parts = body.split(",")
        if (len(parts) != 5 or not _SEQ.fullmatch(parts[1]) or not _TAG.fullmatch(parts[2])
                or not _TAG.fullmatch(parts[3]) or not _TIME.fullmatch(parts[4])):
            self.errors["bad_record"] += 1
            return
        try:
            t = datetime.strptime(parts[4], WAND_TIME_FORMAT)
        except ValueError:  # 2024-02-30 and the like
            self.errors["bad_record"] += 1
            return
        seq = int(parts[1])
        if seq in self._seqs:  # sent twice: keep the first; the END count still tells the truth
            self.errors["duplicate_seq"] += 1
            return
        if len(self._records) >= self.max_records:
            self.errors["too_many_records"] += 1
            self._damaged = True
            return
        self._seqs.add(seq)
        self._records.append(WandRecord(seq, parts[2].upper(), parts[3].upper(), t))
