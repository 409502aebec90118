"""Card reader frames and patrol wand downloads: builders, parsers, noise, chunking."""

import re
from datetime import datetime

import pytest
from hypothesis import given, settings, strategies as st

from gateway.cards import card_matches, parse_card_text
from gateway.drivers.card_frames import (CardRead, PatternParser, Rdm6300Parser, WandBatch, WandParser,
                                         WandRecord, WiegandTextParser, rdm6300_frame, wand_download,
                                         wand_record_line, wiegand26_frame, wiegand34_frame, wiegand_data)


def chunks(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:])]


def feed_all(parser, parts):
    out = []
    for p in parts:
        out += parser.feed(p)
    return out


CUTS = st.lists(st.integers(0, 10_000), max_size=20)


# ---- card numbers -------------------------------------------------------------------------

def test_canonical_number_is_ten_digits():
    assert CardRead(12345678, 32).number == "0012345678"
    assert CardRead(0xBC614E, 24).number == "0012345678"
    assert CardRead(0xFFFFFFFF, 32).number == "4294967295"


@pytest.mark.parametrize("text, fmt, expected", [
    ("0012345678", "decimal", (12345678, 32)),
    (" 12345678 ", "decimal", (12345678, 32)),
    ("00BC614E", "hex", (0xBC614E, 32)),
    ("0x00bc614e", "hex", (0xBC614E, 32)),
    ("BC614E", "hex", (0xBC614E, 24)),
    ("123,45678", "fac_card", ((123 << 16) | 45678, 24)),
    ("123:45678", "fac_card", ((123 << 16) | 45678, 24)),
    ("123/45678", "fac_card", ((123 << 16) | 45678, 24)),
    ("1234,56789", "fac_card", ((1234 << 16) | 56789, 32)),
    ("123,45678", "auto", ((123 << 16) | 45678, 24)),
    ("00BC614E", "auto", (0xBC614E, 32)),
    ("0x12", "auto", (0x12, 8)),
    ("0012345678", "auto", (12345678, 32)),
])
def test_parse_card_text(text, fmt, expected):
    assert parse_card_text(text, fmt) == expected


@pytest.mark.parametrize("text, fmt", [
    ("", "auto"), ("   ", "decimal"), ("12a", "decimal"), ("xyz", "auto"), ("0x", "hex"), ("12G", "hex"),
    ("1,2,3", "fac_card"), ("123,", "fac_card"), ("123,65536", "fac_card"), ("65536,1", "fac_card"),
    ("1" * 30, "decimal"), ("F" * 17, "hex"), ("12", "octal"), ("１２３", "decimal"),
])
def test_parse_card_text_rejects_bad_text(text, fmt):
    with pytest.raises(ValueError):
        parse_card_text(text, fmt)


@given(st.integers(0, 2**32 - 1))
def test_parse_card_text_round_trips(value):
    assert parse_card_text(f"{value:010d}", "auto") == (value, 32)
    assert parse_card_text(f"0x{value:08X}", "auto") == (value, 32)
    assert parse_card_text(f"{value:08x}", "hex") == (value, 32)
    fac, card = value >> 16, value & 0xFFFF
    assert parse_card_text(f"{fac},{card:05d}", "auto") == (value, 24 if fac <= 255 else 32)


@given(st.text(max_size=30), st.sampled_from(["decimal", "hex", "fac_card", "auto"]))
def test_parse_card_text_raises_only_value_error(text, fmt):
    try:
        value, bits = parse_card_text(text, fmt)
    except ValueError:
        return
    assert 0 <= value < 1 << 64 and 0 < bits <= 64


def test_card_matches():
    em = 0x05BC614E  # printed 0096231758; a 26-bit reader sees 0xBC614E
    assert card_matches(em, 32, em)
    assert not card_matches(0xBC614E, 32, em)
    assert card_matches(0xBC614E, 24, em)
    assert not card_matches(0xBC614F, 24, em)
    assert not card_matches(em, 0, em)


# ---- Wiegand ------------------------------------------------------------------------------

def test_wiegand26_known_vector():
    # facility 123 = 01111011, card 45678 = 1011001001101110.
    # First 12 data bits 011110111011 hold nine 1s -> even parity bit 1;
    # last 12 data bits 001001101110 hold six 1s -> odd parity bit 1.
    bits = "1" + "01111011" + "1011001001101110" + "1"
    assert wiegand26_frame(123, 45678) == int(bits, 2) == 0x2F764DD
    assert wiegand_data(0x2F764DD, 26) == (123 << 16) | 45678


def test_wiegand34_known_vector():
    # facility 1234 = 0000010011010010 (five 1s -> even parity 1),
    # card 56789 = 1101110111010101 (eleven 1s -> odd parity 0).
    bits = "1" + "0000010011010010" + "1101110111010101" + "0"
    assert wiegand34_frame(1234, 56789) == int(bits, 2)
    assert wiegand_data(int(bits, 2), 34) == (1234 << 16) | 56789


def test_wiegand_all_zero_data():
    assert wiegand26_frame(0, 0) == 0b1  # even parity 0 over zeros, odd parity 1
    with pytest.raises(ValueError):
        wiegand26_frame(256, 0)
    with pytest.raises(ValueError):
        wiegand34_frame(0, 65536)


@given(st.integers(0, 255), st.integers(0, 0xFFFF), st.integers(0, 25))
def test_wiegand26_round_trip_and_every_single_bit_error(fac, card, flip):
    frame = wiegand26_frame(fac, card)
    assert frame < 1 << 26
    assert wiegand_data(frame, 26) == (fac << 16) | card
    assert wiegand_data(frame ^ (1 << flip), 26) is None  # each bit is under exactly one parity


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF), st.integers(0, 33))
def test_wiegand34_round_trip_and_every_single_bit_error(fac, card, flip):
    frame = wiegand34_frame(fac, card)
    assert frame < 1 << 34
    assert wiegand_data(frame, 34) == (fac << 16) | card
    assert wiegand_data(frame ^ (1 << flip), 34) is None


def wiegand_line(encoding: str, bits: int, value: int, label: str = "") -> bytes:
    """What a converter prints (the same shapes as simulators/card_reader.py)."""
    fac, card = value >> 16, value & 0xFFFF
    raw = wiegand26_frame(fac, card) if bits == 26 else wiegand34_frame(fac, card)
    text = {"hex_raw": f"{raw:0{(bits + 3) // 4}X}", "hex": f"{value:0{(bits - 2) // 4}X}",
            "decimal": f"{value:010d}", "fac_card": f"{fac},{card:05d}"}[encoding]
    return (label + text + "\r\n").encode("ascii")


def test_wiegand_text_encodings_and_labels():
    v = (123 << 16) | 45678
    for enc in ("hex_raw", "hex", "decimal", "fac_card"):
        for label in ("", "W26:", "WG26 ", "Card: ", "Card No: ", "W26: "):
            p = WiegandTextParser(enc, 26)
            reads = p.feed(wiegand_line(enc, 26, v, label))
            assert [(r.value, r.bits) for r in reads] == [(v, 24)], (enc, label)
            assert not p.errors
    w = (1234 << 16) | 56789
    for enc in ("hex_raw", "hex", "decimal", "fac_card"):
        p = WiegandTextParser(enc, 34)
        assert [(r.value, r.bits) for r in p.feed(wiegand_line(enc, 34, w, "W34:"))] == [(w, 32)]


def test_wiegand_text_line_ends_blank_lines_and_errors():
    p = WiegandTextParser("hex_raw", 26)
    good = f"{wiegand26_frame(1, 2):07X}"
    bad = f"{wiegand26_frame(1, 2) ^ 1:07X}"
    reads = p.feed(f"{good}\r\n\r\n\n{good}\r{good}\n  \n{bad}\r\nhello\r\nW26:\r\n4FFFFFF\n".encode())
    assert [r.value for r in reads] == [(1 << 16) | 2] * 3
    assert p.errors == {"bad_parity": 1, "no_match": 2, "too_large": 1}


def test_wiegand_text_decimal_out_of_range():
    p = WiegandTextParser("decimal", 26)
    assert p.feed(b"16777215\n16777216\n") == [CardRead(16777215, 24, "16777215")]
    assert p.errors["too_large"] == 1
    with pytest.raises(ValueError):
        WiegandTextParser("octal")
    with pytest.raises(ValueError):
        WiegandTextParser("hex", 37)


def test_overlong_line_is_dropped_once_and_the_next_line_read():
    p = WiegandTextParser("decimal", 26, max_line=32)
    reads = p.feed(b"1" * 20) + p.feed(b"2" * 20) + p.feed(b"3" * 100) + p.feed(b"\r\n12345\r\n")
    assert [r.value for r in reads] == [12345]
    assert p.errors == {"too_long": 1}
    assert len(p._buf) == 0


# The noise alphabet has no digits and no hex letters, so no noise line can be a code.
NOISE_BYTES = st.binary(max_size=300).map(lambda b: bytes(x for x in b if x not in b"0123456789abcdefABCDEF"))


@given(st.sampled_from(["hex_raw", "hex", "decimal", "fac_card"]), st.sampled_from([26, 34]),
       st.integers(0, 2**32 - 1), st.sampled_from(["", "W26:", "WG26 ", "Card: "]),
       NOISE_BYTES, NOISE_BYTES, CUTS)
def test_wiegand_line_in_noise_found_exactly_once(enc, bits, value, label, before, after, cuts):
    value &= (1 << (bits - 2)) - 1
    stream = before + b"\n" + wiegand_line(enc, bits, value, label) + after
    p = WiegandTextParser(enc, bits)
    reads = feed_all(p, chunks(stream, cuts))
    assert [(r.value, r.bits) for r in reads] == [(value, bits - 2)]
    assert len(p._buf) <= p.max_line


def test_pattern_parser():
    p = PatternParser(r"ID=(?P<card>[0-9A-F]+)", base=16, bits=32)
    reads = p.feed(b"boot ok\r\nread ID=00BC614E rssi=3\r\nID=ZZ\nID=1FFFFFFFF\n")
    assert reads == [CardRead(0xBC614E, 32, "00BC614E")]
    assert p.errors == {"no_match": 2, "too_large": 1}
    d = PatternParser(r"卡号[:：](?P<card>\d+)")
    assert [r.number for r in d.feed("卡号：0012345678\r\n".encode())] == ["0012345678"]
    with pytest.raises(ValueError):
        PatternParser(r"(?P<id>\d+)")


# ---- RDM6300 ------------------------------------------------------------------------------

def test_rdm6300_worked_example():
    # The Seeed 125 kHz RFID module (UART) wiki: card 62E3086CED,
    # checksum 62 ^ E3 ^ 08 ^ 6C ^ ED = 08.
    frame = b"\x02" + b"62E3086CED" + b"08" + b"\x03"
    assert rdm6300_frame(0xE3086CED, 0x62) == frame
    p = Rdm6300Parser()
    assert p.feed(frame) == [CardRead(0xE3086CED, 32, "62E3086CED08")]
    assert p.feed(frame)[0].number == "3808980205"
    assert not p.errors


def test_rdm6300_bad_checksum_counted():
    frame = rdm6300_frame(12345678)
    bad = frame[:11] + b"FF" + frame[13:]
    p = Rdm6300Parser()
    assert p.feed(bad + frame) == [CardRead(12345678, 32, frame[1:13].decode())]
    assert p.errors == {"bad_checksum": 1}


def test_rdm6300_a_noise_burst_counts_once_however_it_arrives():
    p = Rdm6300Parser()
    reads = p.feed(b"\x00\xff noise") + p.feed(b" more noise") + p.feed(rdm6300_frame(7)) + p.feed(b"\x03\x03")
    assert [r.value for r in reads] == [7]
    assert p.errors == {"garbage": 2}  # before the frame, and after it


def test_rdm6300_resynchronises_after_a_stray_start_byte():
    frame = rdm6300_frame(0xCAFEF00D, 0x01)
    p = Rdm6300Parser()
    # Stray 0x02s right before the frame: each starts a candidate that contains the real start.
    assert p.feed(b"\x02\x0212\x02" + frame[:7]) == []
    assert [r.value for r in p.feed(frame[7:])] == [0xCAFEF00D]
    assert p.errors["bad_frame"] == 3


def rdm_oracle(stream: bytes) -> list[CardRead]:
    """Every valid frame in the stream. Valid frames cannot overlap (none holds a 0x02 inside),
    so a left-to-right regex scan finds each of them."""
    out = []
    for m in re.finditer(rb"\x02([0-9A-Fa-f]{12})\x03", stream):
        data = bytes.fromhex(m.group(1).decode())
        x = 0
        for b in data:
            x ^= b
        if x == 0:
            out.append(CardRead(int(m.group(1)[2:10], 16), 32, m.group(1).decode()))
    return out


FRAMES = st.builds(rdm6300_frame, st.integers(0, 2**32 - 1), st.integers(0, 255))


@given(st.lists(st.tuples(st.binary(max_size=40), FRAMES), max_size=6), st.binary(max_size=40), CUTS)
def test_rdm6300_frames_in_noise_match_the_oracle(pieces, tail, cuts):
    stream = b"".join(noise + frame for noise, frame in pieces) + tail
    p = Rdm6300Parser()
    reads = feed_all(p, chunks(stream, cuts))
    expected = rdm_oracle(stream)
    assert reads == expected
    for _, frame in pieces:  # each frame we put in is found (as often as it is really there)
        read = rdm_oracle(frame)[0]
        assert reads.count(read) == expected.count(read) >= 1
    whole = Rdm6300Parser()
    assert whole.feed(stream) == reads and whole.errors == p.errors  # chunking changes nothing
    assert len(p._buf) < 14


@given(st.binary(max_size=60).map(lambda b: b.replace(b"\x02", b"")), FRAMES,
       st.binary(max_size=60), CUTS)
def test_rdm6300_frame_in_noise_without_start_bytes_found_once(before, frame, after, cuts):
    reads = feed_all(Rdm6300Parser(), chunks(before + frame + after.replace(b"\x02", b""), cuts))
    assert reads == rdm_oracle(frame)


# ---- any bytes at all ----------------------------------------------------------------------

def all_parsers():
    return [Rdm6300Parser(), WiegandTextParser("hex_raw", 26), WiegandTextParser("hex", 34),
            WiegandTextParser("decimal"), WiegandTextParser("fac_card"),
            PatternParser(r"(?P<card>\d+)"), PatternParser(r"(?P<card>[0-9a-f]*)", 16), WandParser()]


@settings(max_examples=300)
@given(st.binary(max_size=600), CUTS)
def test_any_bytes_never_raise(data, cuts):
    for p in all_parsers():
        out = feed_all(p, chunks(data, cuts))
        assert all(isinstance(r, (CardRead, WandBatch)) for r in out)
        assert len(p._buf) <= getattr(p, "max_line", 14)


@given(st.lists(st.sampled_from([b"\x02", b"\x03", b"\r", b"\n", b"\r\n", b",", b"*", b"R", b"BEGIN,w",
                                 b"END,w,1", b"0", b"F", b"W26:", b"2F764DD", b"x", b"\xff"]),
                max_size=200), CUTS)
def test_delimiter_soup_never_raises(parts, cuts):
    data = b"".join(parts)
    for p in all_parsers():
        feed_all(p, chunks(data, cuts))


# ---- patrol wands ---------------------------------------------------------------------------

def rec(seq, guard="00BC614E", cp="A1B2C3D4", t=datetime(2024, 5, 1, 22, 15, 0)):
    return WandRecord(seq, guard, cp, t)


def test_wand_record_line_checksum():
    line = wand_record_line(1, "00bc614e", "A1B2C3D4", datetime(2024, 5, 1, 22, 15, 0))
    body, check = line.split("*")
    assert body == "R,1,00BC614E,A1B2C3D4,2024-05-01 22:15:00"
    x = 0
    for c in body:
        x ^= ord(c)
    assert check == f"{x:02X}" and len(check) == 2
    with pytest.raises(ValueError):
        wand_record_line(1, "xyz", "A1", datetime(2024, 5, 1))
    with pytest.raises(ValueError):
        wand_download("bad,id", [])


def test_wand_download_round_trip():
    records = [rec(1), rec(2, cp="0001", t=datetime(2024, 5, 1, 22, 31, 5)), rec(3, cp="FFFFFFFFFFFFFFFFFFFF")]
    data = wand_download("W07", records)
    assert data.startswith(b"BEGIN,W07\r\n") and data.endswith(b"END,W07,3\r\n")
    p = WandParser()
    assert p.feed(data) == [WandBatch("W07", tuple(records), True)]
    assert not p.errors


def test_wand_bad_checksum_skipped_and_batch_incomplete():
    data = wand_download("W1", [rec(1), rec(2), rec(3)])
    line2 = wand_record_line(2, "00BC614E", "A1B2C3D4", datetime(2024, 5, 1, 22, 15, 0)).encode()
    damaged = data.replace(line2, line2.replace(b"A1B2", b"A1B3"))
    p = WandParser()
    [batch] = p.feed(damaged)
    assert batch.complete is False and [r.seq for r in batch.records] == [1, 3]
    assert p.errors == {"bad_checksum": 1}


def test_wand_bad_fields_skipped():
    good = wand_record_line(1, "AA", "BB", datetime(2024, 5, 1, 8, 0, 0))
    body = "R,2,AA,BB,2024-02-30 08:00:00"  # a checksum that is right over a date that is not
    x = 0
    for c in body:
        x ^= ord(c)
    lines = ["BEGIN,W1", good, f"{body}*{x:02X}", "R,3,AA,BB,2024-05-01 08:00:00", "END,W1,3"]
    p = WandParser()
    [batch] = p.feed(("\r\n".join(lines) + "\r\n").encode())
    assert not batch.complete and [r.seq for r in batch.records] == [1]
    assert p.errors == {"bad_record": 2}


def test_wand_count_mismatch_begin_without_end_and_flush():
    p = WandParser()
    one = wand_download("W1", [rec(1), rec(2)])
    out = p.feed(one.replace(b"END,W1,2", b"END,W1,5"))
    assert out == [WandBatch("W1", (rec(1), rec(2)), False)]
    # A download cut short: the next BEGIN closes it as incomplete, records kept.
    cut = wand_download("W1", [rec(1), rec(2)]).split(b"END")[0]
    out = p.feed(cut + wand_download("W2", [rec(7)]))
    assert out == [WandBatch("W1", (rec(1), rec(2)), False), WandBatch("W2", (rec(7),), True)]
    assert p.errors["missing_end"] == 1
    assert p.feed(cut) == [] and p.flush() == [WandBatch("W1", (rec(1), rec(2)), False)]
    assert p.flush() == []
    # END for another wand, END alone, records outside a batch.
    out = p.feed(b"BEGIN,W1\r\nEND,W9,0\r\nEND,W1,0\r\n" + wand_record_line(1, "A", "B", datetime(2024, 1, 1)).encode()
                 + b"\r\n")
    assert out == [WandBatch("W1", (), False)]
    assert p.errors["bad_end"] == 1 and p.errors["end_without_begin"] == 1 and p.errors["record_without_begin"] == 1


TAGS = st.text("0123456789ABCDEF", min_size=1, max_size=20)
TIMES = st.datetimes(datetime(2000, 1, 1), datetime(2099, 12, 31)).map(lambda t: t.replace(microsecond=0))
WAND_IDS = st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=12)
# No upper-case letters: a noise line can never start with R, BEGIN or END.
WAND_NOISE = st.lists(st.binary(max_size=80).map(lambda b: bytes(x for x in b if not 0x41 <= x <= 0x5A)),
                      max_size=4)


@given(WAND_IDS, st.lists(st.tuples(TAGS, TAGS, TIMES), max_size=12), WAND_NOISE, WAND_NOISE,
       st.lists(st.booleans(), max_size=14), CUTS)
def test_wand_download_in_noise_found_exactly_once(wand, fields, before, after, noise_inside, cuts):
    records = [WandRecord(i, g, c, t) for i, (g, c, t) in enumerate(fields, start=1)]
    lines = wand_download(wand, records).split(b"\r\n")[:-1]
    # Garbage lines between the lines of the download do not spoil it.
    body = b"".join(line + b"\r\n" + (b"~junk~\r\n" if noise_inside[i:i + 1] == [True] else b"")
                    for i, line in enumerate(lines))
    stream = b"\r\n".join(before) + b"\r\n" + body + b"\r\n".join(after)
    p = WandParser()
    batches = feed_all(p, chunks(stream, cuts)) + p.flush()
    assert batches == [WandBatch(wand, tuple(records), True)]
    assert p.errors.keys() <= {"garbage", "too_long"}


@given(st.lists(st.tuples(TAGS, TAGS, TIMES), min_size=1, max_size=8), st.data())
def test_wand_any_damaged_record_makes_the_batch_incomplete(fields, data):
    records = [WandRecord(i, g, c, t) for i, (g, c, t) in enumerate(fields)]
    lines = wand_download("W1", records).split(b"\r\n")
    k = data.draw(st.integers(1, len(records)))  # a record line
    pos = data.draw(st.integers(0, len(lines[k]) - 1))
    # Any other byte, except the same hex digit in the other case (the checksum reads either).
    byte = data.draw(st.integers(0, 255).filter(
        lambda b: bytes([b]).upper() != lines[k][pos:pos + 1].upper() and b not in b"\r\n"))
    lines[k] = lines[k][:pos] + bytes([byte]) + lines[k][pos + 1:]
    p = WandParser()
    [batch] = p.feed(b"\r\n".join(lines))
    assert not batch.complete
    assert batch.records == tuple(r for i, r in enumerate(records) if i != k - 1)
    assert sum(p.errors.values()) == 1
