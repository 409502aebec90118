"""The card registry: who a card belongs to, and whether it opens doors at a given moment.

The registry is a CSV file the property office keeps (columns
`number,holder,household,role,valid_from,valid_to,revoked`, header required, UTF-8 with or
without BOM) plus entries from the site file. A bad row is reported with its line number and
skipped: a typo in one row must never stop the gateway or lock out the other residents.

Card numbers stay in the gateway: anything that leaves it carries `card_hash` (keyed) instead.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import os
import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


# ---- card numbers (the readers' drivers use these rules too) -------------------------------

def card_number(value: int) -> str:
    """The canonical form: 10 decimal digits, the number printed on EM4100 cards."""
    return f"{value:010d}"


def card_matches(read_value: int, read_bits: int, registered_value: int) -> bool:
    """Whether a read is the registered card: equal at 32 bits or more, else the low `read_bits`
    bits (a 26-bit reader reports the low 24 bits of the 32-bit number printed on the card)."""
    if read_bits >= 32:
        return read_value == registered_value
    if read_bits <= 0:
        return False
    mask = (1 << read_bits) - 1
    return (read_value & mask) == (registered_value & mask)


FAC_SEPARATORS = ",:/"
_HEX_LETTERS = set("abcdefABCDEF")


def parse_card_text(text: str, fmt: str) -> tuple[int, int]:
    """A card number written by a person or a controller -> (value, bits).

    fmt "decimal": "0012345678" (bits 32); "hex": "00BC614E" or "0x00BC614E" (bits 4 per digit,
    at most 64); "fac_card": facility and card, "123,45678" / "123:45678" / "123/45678"
    ((fac << 16) | card; bits 24 for a Wiegand-26 facility ≤ 255, else 32); "auto": fac_card if
    there is a separator, hex if there is a hex letter or 0x, else decimal.
    Raises ValueError with a plain message (this is for config, CSV and JSON, where a person can
    fix the text; the serial parsers never raise). The message never quotes the number: it is
    logged, and a card number is never logged in clear.
    """
    if not isinstance(text, str):
        raise ValueError(f"a card number must be text, not {type(text).__name__}")
    s = text.strip()
    if not s:
        raise ValueError("empty card number")
    if fmt == "auto":
        if any(c in s for c in FAC_SEPARATORS):
            fmt = "fac_card"
        elif s[:2].lower() == "0x" or any(c in _HEX_LETTERS for c in s):
            fmt = "hex"
        else:
            fmt = "decimal"
    if fmt == "decimal":
        if not (s.isascii() and s.isdigit()):
            raise ValueError("a decimal card number has digits only")
        value = int(s)
        if value < 1 << 32:
            return value, 32
        if value < 1 << 64:  # a reader that prints the whole 40-bit EM id in decimal
            return value, 64
        raise ValueError("too large for a card number (more than 64 bits)")
    if fmt == "hex":
        digits = s[2:] if s[:2].lower() == "0x" else s
        if not digits or not all(c in "0123456789abcdefABCDEF" for c in digits):
            raise ValueError("a hex card number has the digits 0-9 and A-F only (0x in front is allowed)")
        value = int(digits, 16)
        if value >= 1 << 64:
            raise ValueError("too large for a card number (more than 64 bits)")
        return value, min(4 * len(digits), 64)
    if fmt == "fac_card":
        parts = re.split(r"[,:/]", s)
        if len(parts) != 2:
            raise ValueError("facility and card are written as two numbers, e.g. 123,45678")
        fac_s, card_s = (p.strip() for p in parts)
        if not (fac_s.isascii() and fac_s.isdigit() and card_s.isascii() and card_s.isdigit()):
            raise ValueError("facility and card must both be decimal numbers, e.g. 123,45678")
        fac, card = int(fac_s), int(card_s)
        if card > 0xFFFF:
            raise ValueError("the card part is more than 65535 (16 bits)")
        if fac > 0xFFFF:
            raise ValueError("the facility is more than 65535 (16 bits)")
        return (fac << 16) | card, (24 if fac <= 0xFF else 32)
    raise ValueError(f"unknown card number format '{fmt}' (decimal, hex, fac_card or auto)")


# ---- the registry ----------------------------------------------------------------------------

COLUMNS = ("number", "holder", "household", "role", "valid_from", "valid_to", "revoked")
CATEGORIES = ("resident", "staff", "visitor")
_TRUE = {"1", "true", "yes", "y", "是"}
_FALSE = {"", "0", "false", "no", "n", "否"}
_LOW24 = 0xFFFFFF


@dataclass(frozen=True, slots=True)
class CardEntry:
    """One registered card. Validity bounds are UTC; `valid_until` is exclusive."""

    value: int
    bits: int               # as written: 24 for a Wiegand-26 "123,45678", else 32 (or hex digits × 4)
    number: str             # canonical: 10 decimal digits
    holder: str
    household: str
    category: str           # resident | staff | visitor
    role: str               # the job after "staff:", e.g. "guard"; "" otherwise
    valid_from: datetime | None
    valid_until: datetime | None
    revoked: bool
    source: str             # "cards.csv line 17", "site file cards[2]"

    def valid_at(self, at: datetime) -> bool:
        at = at.astimezone(timezone.utc)
        return ((self.valid_from is None or at >= self.valid_from)
                and (self.valid_until is None or at < self.valid_until))


@dataclass(frozen=True, slots=True)
class Classification:
    category: str           # resident | staff | visitor | unknown | revoked | expired
    number: str             # the registered card's canonical number (the read's, if unknown)
    holder: str = ""
    household: str = ""
    role: str = ""
    note: str = ""          # e.g. a 26-bit read that matched more than one registered card


def card_hash(number: str, key: bytes) -> str:
    """The keyed hash that stands for a card outside the gateway: HMAC-SHA256 of the canonical
    number, first 16 hex digits. Without the key the 10-digit numbers cannot be brute-forced."""
    return hmac.new(key, number.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


def masked_number(text: str) -> str:
    """A card number as problems and logs show it: only its last 4 characters (what the ledger
    keeps as the card's tail, printed on the card), so it can be found but is never in clear."""
    return "*" * max(0, len(text) - 4) + text[-4:]


def load_hash_key(env_name: str) -> bytes | None:
    """The hash key from the environment variable `env_name` (its text as UTF-8 bytes), or None
    when unset or empty. The caller decides what then: the runtime generates a random key and
    persists it beside the ledger, so hashes stay stable across restarts (a new key would make
    every card look new to head office)."""
    value = os.environ.get(env_name, "")
    return value.encode("utf-8") if value else None


class _RowError(ValueError):
    def __init__(self, column: str, text: Any, message: str):
        super().__init__(f"{column} '{text}': {message}")


def _text(row: Mapping[str, Any], key: str) -> str:
    v = row.get(key)
    return "" if v is None else str(v).strip()


_DATE = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})")
_DATETIME = re.compile(r"(\d{4})[-/.](\d{1,2})[-/.](\d{1,2})[ T](\d{1,2}):(\d{2})(?::(\d{2}))?")


def _when(v: Any, tz: ZoneInfo, column: str, end: bool) -> datetime | None:
    """A validity bound in UTC. Naive times are site local time. A date alone means the start
    of that local day, or for valid_to the whole day (valid until the next local midnight); a
    valid_to with a time is still valid at that instant."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None
    day: date | None = None
    if isinstance(v, datetime):
        dt = v
    elif isinstance(v, date):  # from the site file's YAML
        day = v
    else:
        s = str(v).strip()
        try:
            if m := _DATE.fullmatch(s):  # also 2024/1/31, as Excel writes it
                day = date(int(m[1]), int(m[2]), int(m[3]))
            elif m := _DATETIME.fullmatch(s):
                dt = datetime(int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0))
            else:
                dt = datetime.fromisoformat(s)  # with fractions of a second or a UTC offset
        except (ValueError, OverflowError) as e:
            raise _RowError(column, s, f"not a date (YYYY-MM-DD) or date and time ({e})") from None
    try:
        if day is not None:
            dt = datetime.combine(day + timedelta(days=1) if end else day, time(0))
        elif end:
            dt += timedelta(microseconds=1)  # the bound is exclusive inside; the instant is included
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=tz)
        return dt.astimezone(timezone.utc)
    except OverflowError:
        raise _RowError(column, v, "date out of range") from None


def _revoked(v: Any) -> bool:
    if isinstance(v, bool):
        return v
    s = "" if v is None else str(v).strip().lower()
    if s in _TRUE:
        return True
    if s in _FALSE:
        return False
    raise _RowError("revoked", s, "write 1/true/yes/是 for a revoked card, or leave it empty")


def _role(v: Any) -> tuple[str, str]:
    s = "" if v is None else str(v).strip()
    category, colon, job = s.partition(":")
    category, job = category.strip().lower(), job.strip().lower()
    if category not in CATEGORIES:
        raise _RowError("role", s, "must be resident, staff or visitor (staff may name a job: staff:guard)")
    if colon and category != "staff":
        raise _RowError("role", s, "only staff has a job after ':' (e.g. staff:guard)")
    if colon and not job:
        raise _RowError("role", s, "the job after 'staff:' is empty")
    return category, job


def _entry(row: Mapping[str, Any], tz: ZoneInfo, source: str) -> CardEntry:
    raw = row.get("number")
    text = "" if raw is None else str(raw).strip()
    try:
        value, bits = parse_card_text(text, "auto")
    except ValueError as e:
        raise _RowError("number", masked_number(text), str(e)) from None
    category, job = _role(row.get("role"))
    valid_from = _when(row.get("valid_from"), tz, "valid_from", end=False)
    valid_until = _when(row.get("valid_to"), tz, "valid_to", end=True)
    return CardEntry(value, bits, card_number(value), _text(row, "holder"), _text(row, "household"),
                     category, job, valid_from, valid_until, _revoked(row.get("revoked")), source)


class _Unreadable(Exception):
    """The file as a whole cannot be used (keep what was loaded before)."""


def _read_csv(path: Path, tz: ZoneInfo) -> tuple[list[CardEntry], list[str]]:
    name = path.name
    try:
        data = path.read_bytes()
    except OSError as e:
        raise _Unreadable(f"{name}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise _Unreadable(f"{name}: not UTF-8 (byte {e.start}); save it as 'CSV UTF-8'") from None
    problems: list[str] = []
    if "\x00" in text:
        problems.append(f"{name}: NUL characters removed")
        text = text.replace("\x00", "")
    reader = csv.reader(io.StringIO(text, newline=""))
    entries: list[CardEntry] = []
    header: list[str] | None = None
    last = 0
    try:
        for row in reader:
            line, last = last + 1, reader.line_num  # the row's first line (a quoted field may span lines)
            if not any(cell.strip() for cell in row):
                continue
            if header is None:
                header = [c.strip().lower() for c in row]
                if "number" not in header or "role" not in header:
                    raise _Unreadable(f"{name} line {line}: the first line must name the columns "
                                      f"{','.join(COLUMNS)} (number and role at least; "
                                      f"found {','.join(row)[:80]!r})")
                unknown = [c for c in header if c and c not in COLUMNS]  # "" : a trailing comma
                if unknown:
                    problems.append(f"{name} line {line}: unknown columns ignored: {', '.join(unknown)}")
                continue
            if row[0].lstrip().startswith("#"):
                continue  # a comment row
            where = f"{name} line {line}"
            if len(row) > len(header):  # even empty extras: columns may have shifted
                problems.append(f"{where}: {len(row)} values for {len(header)} columns "
                                f"(a comma in a name? put the name in double quotes); row skipped")
                continue
            try:
                entries.append(_entry(dict(zip(header, row)), tz, where))
            except _RowError as e:
                problems.append(f"{where}: {e}; row skipped")
    except csv.Error as e:
        raise _Unreadable(f"{name} line {reader.line_num}: not a readable CSV file: {e}") from None
    if header is None:
        raise _Unreadable(f"{name}: empty (the first line must name the columns {','.join(COLUMNS)})")
    return entries, problems


def _zone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as e:
        raise ValueError(f"unknown time zone '{tz}'") from e


class CardRegistry:
    """The cards from `path` (a CSV file, or None) plus `extra` entries from the site file.

    `problems` lists everything wrong with the last load (plain lines with row numbers); the
    rows named there were skipped, everything else is in use. `notes` lists what is not wrong
    but worth knowing: cards that share their low 24 bits, which a 26-bit reader cannot tell
    apart (with 12,000 random 32-bit cards a few such pairs are expected).
    """

    def __init__(self, path: Path | None, tz: str, extra: Iterable[Mapping[str, Any]] = ()):
        self.path = Path(path) if path is not None else None
        self.tz = _zone(tz)
        self.extra = [dict(e) for e in extra]
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.load_error: str | None = None  # why the file could not be read at all, last time
        self._entries: list[CardEntry] = []
        self._by_value: dict[int, CardEntry] = {}
        self._by_low24: dict[int, list[CardEntry]] = {}
        self._signature: tuple[int, int] | None = None
        self._file_entries: list[CardEntry] = []
        self._file_problems: list[str] = []
        self._load_file()
        self._build()

    # ---- loading ----------------------------------------------------------------------

    def _stat(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    def _load_file(self) -> bool:
        """Read the CSV; False (keeping the previous rows) when it cannot be used at all."""
        if self.path is None:
            return True
        self._signature = self._stat()
        try:
            entries, problems = _read_csv(self.path, self.tz)
        except _Unreadable as e:
            kept = f"; still using the {len(self._file_entries)} cards loaded before" if self._file_entries else ""
            self.load_error = f"{e}{kept}"
            self._file_problems = [self.load_error]
            return False
        self._file_entries, self._file_problems, self.load_error = entries, problems, None
        return True

    def _build(self) -> None:
        problems = list(self._file_problems)
        entries = list(self._file_entries)
        for i, row in enumerate(self.extra):
            where = f"site file cards[{i}]"
            try:
                entries.append(_entry(row, self.tz, where))
            except _RowError as e:
                problems.append(f"{where}: {e}; entry skipped")
        # Duplicates: the later row wins (it is the newer edit), in its place in the file order.
        by_value: dict[int, CardEntry] = {}
        for e in entries:
            if e.value in by_value:
                problems.append(f"{e.source}: number {masked_number(e.number)} is also at {by_value[e.value].source}; "
                                f"using this later one")
            by_value[e.value] = e
        kept = [e for e in entries if by_value[e.value] is e]
        for e in kept:  # kept (it classifies as expired), but surely not what was meant
            if e.valid_from and e.valid_until and e.valid_from >= e.valid_until:
                problems.append(f"{e.source}: valid_from is not before valid_to: the card is never valid")
        by_low24: dict[int, list[CardEntry]] = {}
        for e in kept:
            by_low24.setdefault(e.value & _LOW24, []).append(e)
        notes = []
        for first, *others in by_low24.values():
            for e in others:
                notes.append(f"{e.source}: number {masked_number(e.number)} has the same low 24 bits as "
                             f"{first.source} ({masked_number(first.number)}): a 26-bit reader cannot tell them "
                             f"apart (it takes the first)")
        self._entries, self._by_value, self._by_low24 = kept, by_value, by_low24
        self.problems, self.notes = problems, notes

    def reload_if_changed(self) -> bool:
        """Re-read the file when its (mtime_ns, size) changed. True when new data is in use;
        a file that cannot be read at all leaves the old data in use, returns False and says why
        in `load_error` (also the first line of `problems`). A broken file is tried once, then
        again only when it changes."""
        if self.path is None or self._stat() == self._signature:
            return False
        ok = self._load_file()
        self._build()
        return ok

    # ---- questions ----------------------------------------------------------------------

    @property
    def entries(self) -> list[CardEntry]:
        return list(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def guards(self) -> list[CardEntry]:
        """Staff whose role is guard (revoked and expired included: check `classify` for now)."""
        return [e for e in self._entries if e.category == "staff" and e.role == "guard"]

    def lookup(self, value: int, bits: int) -> tuple[CardEntry | None, str]:
        """The registered card a read matches, and a note when the choice was ambiguous."""
        if bits >= 24:
            candidates = [e for e in self._by_low24.get(value & _LOW24, ()) if self._matches(value, bits, e)]
        else:
            candidates = [e for e in self._entries if self._matches(value, bits, e)]
        if not candidates:
            return None, ""
        if len(candidates) == 1:
            return candidates[0], ""
        exact = self._by_value.get(value)
        if exact is not None and exact in candidates:
            return exact, ""
        first = candidates[0]
        return first, (f"a {bits}-bit read matches {len(candidates)} registered cards "
                       f"({', '.join(e.number for e in candidates)}); took {first.source}")

    @staticmethod
    def _matches(value: int, bits: int, e: CardEntry) -> bool:
        # A card registered as Wiegand-26 data ("123,45678", 24 bits) read by a 32-bit reader:
        # only its low 24 bits are known, so compare those.
        match_bits = min(bits, e.bits) if e.bits >= 24 else bits
        return card_matches(value, match_bits, e.value)

    def classify(self, value: int, bits: int, at: datetime) -> Classification:
        """What a read at `at` (timezone-aware) means: resident | staff | visitor | unknown |
        revoked | expired (expired also before valid_from). Revoked wins over expired."""
        if at.tzinfo is None:
            raise ValueError("classify needs a timezone-aware time")
        e, note = self.lookup(value, bits)
        if e is None:
            return Classification("unknown", card_number(value))
        if e.revoked:
            category = "revoked"
        elif not e.valid_at(at):
            category = "expired"
        else:
            category = e.category
        return Classification(category, e.number, e.holder, e.household, e.role, note)
