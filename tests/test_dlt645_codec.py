"""The DL/T 645-2007 frame codec and BCD values: properties, and the worked example of
shared/domain/dlt645.md byte for byte."""

from decimal import Decimal

import pytest
from hypothesis import assume, given, settings, strategies as st

from gateway.drivers.dlt645 import (BadFrame, DiField, DiRequest, Frame, FrameScanner, Garbled, address_bytes,
                                    describe_error, encode_frame, read_request, scan_frames)

addresses = st.text("0123456789", min_size=12, max_size=12) | st.just("AAAAAAAAAAAA") | st.just("999999999999")
controls = st.integers(0, 255)
payloads = st.binary(max_size=64)


def frames_in(data: bytes) -> list[Frame]:
    return [x for x in scan_frames(data) if isinstance(x, Frame)]


# ---- the worked example and hand-made answers -------------------------------------------------

def test_worked_example_byte_for_byte():
    # shared/domain/dlt645.md: read DI 02 01 01 00 (phase A voltage) from meter 000000001234
    want = bytes.fromhex("FE FE FE FE 68 34 12 00 00 00 00 68 11 04 33 34 34 35 FB 16")
    assert read_request("000000001234", 0x02010100) == want
    assert encode_frame("000000001234", 0x11, bytes([0x00, 0x01, 0x01, 0x02])) == want
    assert frames_in(want) == [Frame("000000001234", 0x11, bytes([0x00, 0x01, 0x01, 0x02]))]


def test_an_answer_decodes_to_the_exact_value():
    # 0x91 answer of meter 000012345678 to DI 00010000 with 12345.67 kWh: DI and BCD value, least
    # significant byte first, each byte +0x33; checksum by hand.
    body = bytes.fromhex("68 78 56 34 12 00 00 68 91 08") + bytes(
        b + 0x33 for b in bytes.fromhex("00 00 01 00 67 45 23 01"))
    wire = b"\xfe\xfe" + body + bytes([sum(body) & 0xFF, 0x16])
    (frame,) = frames_in(wire)
    assert (frame.address, frame.control, frame.is_reply, frame.is_error) == ("000012345678", 0x91, True, False)
    energy = DiField("energy_kwh", 0x00010000, "XXXXXX.XX", 8, 2, False, Decimal(1), "kWh", True)
    values, counters = {}, {}
    DiRequest(energy).decode(frame.data[4:], values, counters)
    assert counters == {"energy_kwh": Decimal("12345.67")} and values == {"energy_kwh": 12345.67}
    assert str(counters["energy_kwh"]) == "12345.67"


def test_error_byte_in_words():
    assert describe_error(0x02) == "0x02 (no data requested: the meter does not have this data identifier)"
    assert "password" in describe_error(0x04) and "other error" in describe_error(0x05)
    assert describe_error(0x00) == "0x00 (unknown error)"


def test_address_is_bcd_least_significant_byte_first():
    assert address_bytes("000012345678") == bytes.fromhex("785634120000")
    with pytest.raises(ValueError):
        address_bytes("12345")


# ---- properties of the frame codec ------------------------------------------------------------

@given(addresses, controls, payloads, st.integers(0, 4))
def test_any_frame_round_trips(address, control, data, preamble):
    wire = encode_frame(address, control, data, preamble)
    assert wire[:preamble] == b"\xfe" * preamble and wire[-1] == 0x16
    assert len(wire) == preamble + 12 + len(data)
    assert scan_frames(wire) == [Frame(address, control, data)]


@given(addresses, controls, payloads, st.binary(max_size=80), st.data())
def test_a_frame_behind_noise_is_found_however_the_bytes_arrive(address, control, data, noise, draw):
    frame = Frame(address, control, data)
    wire = noise + frame.encode(draw.draw(st.integers(0, 4)))
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    scanner = FrameScanner()
    found = []
    for a, b in zip([0, *cuts], [*cuts, len(wire)]):
        found += [x for x in scanner.feed(wire[a:b]) if isinstance(x, Frame)]
    if frame not in found:
        # Only a frame the noise and the frame's first bytes happen to form (valid checksum and
        # end byte) may hide it: framing without timing cannot tell that one apart.
        assert any(f.encode(0) not in noise for f in found), (noise.hex(), found)
    for f in found:  # whatever is found was on the wire, checksum and all
        assert f.encode(0) in wire


@given(addresses, controls, st.binary(min_size=1, max_size=40), st.integers(0, 4), st.data())
def test_every_single_byte_corruption_is_rejected(address, control, data, preamble, draw):
    good = Frame(address, control, data)
    wire = bytearray(good.encode(preamble))
    start = preamble
    # every data byte and the checksum: the frame is still framed, its checksum fails
    for pos in range(start + 10, len(wire) - 1):
        for delta in (1, 0x80, draw.draw(st.integers(1, 255))):
            bad = bytearray(wire)
            bad[pos] = (bad[pos] + delta) & 0xFF
            out = scan_frames(bytes(bad))
            assert good not in out, (pos, delta)
            assert any(isinstance(x, BadFrame) and x.reason == "checksum error" and x.address == address
                       for x in out), (pos, delta, out)
    # any byte at all from the first 0x68: never the original frame
    pos = draw.draw(st.integers(start, len(wire) - 1))
    delta = draw.draw(st.integers(1, 255))
    bad = bytearray(wire)
    bad[pos] = (bad[pos] + delta) & 0xFF
    assert good not in scan_frames(bytes(bad))


@given(addresses, controls, payloads, st.integers(0, 255).filter(lambda b: b != 0x16))
def test_a_bad_end_byte_is_rejected(address, control, data, end):
    wire = bytearray(encode_frame(address, control, data, 0))
    wire[-1] = end
    out = scan_frames(bytes(wire))
    assert Frame(address, control, data) not in out
    assert any(isinstance(x, BadFrame) and x.reason == "bad end byte" for x in out)


def test_a_bad_frame_is_reported_once_while_bytes_keep_coming():
    wire = bytearray(encode_frame("000000000001", 0x91, b"\x00\x00\x01\x00\x11\x22\x33\x44", 4))
    wire[-2] ^= 0x01
    scanner = FrameScanner()
    reports = []
    for i in range(len(wire)):
        reports += scanner.feed(wire[i:i + 1])
    reports += scanner.feed(b"\x00" * 20)
    assert [type(x) for x in reports] == [BadFrame]


def test_an_incomplete_frame_waits_and_garbage_is_dropped():
    scanner = FrameScanner()
    wire = encode_frame("000000000007", 0x91, b"\x00\x00\x01\x00\x01\x02\x03\x04")
    assert scanner.feed(b"\x01\x02\x03" + wire[:9]) == []
    assert scanner.buf.startswith(b"\xfe") is False and scanner.buf[0] == 0x68  # noise and wake-up bytes gone
    assert scanner.feed(wire[9:]) == [Frame("000000000007", 0x91, b"\x00\x00\x01\x00\x01\x02\x03\x04")]
    assert scanner.buf == b""
    assert scanner.feed(bytes(range(0x69, 0xFF)) * 10) == [] and len(scanner.buf) == 0


# ---- BCD values -------------------------------------------------------------------------------

FORMATS = [("XXXXXX.XX", False), ("XXX.X", False), ("XXX.XXX", True), ("XX.XXXX", True), ("X.XXX", True),
           ("XX.XX", False)]


def field(fmt: str, signed: bool, scale: str = "1", counter: bool = False) -> DiField:
    whole, _, frac = fmt.partition(".")
    return DiField("x", 0x02010100, fmt, len(whole) + len(frac), len(frac), signed, Decimal(scale), "", counter)


@pytest.mark.parametrize("fmt,signed", FORMATS)
@given(data=st.data())
def test_bcd_values_round_trip(fmt, signed, data):
    f = field(fmt, signed)
    top = 8 * 10 ** (f.digits - 1) if signed else 10 ** f.digits
    units = data.draw(st.integers(-(top - 1) if signed else 0, top - 1))
    value = Decimal(units).scaleb(-f.decimals)
    raw = f.encode(value)
    assert len(raw) == f.nbytes
    assert f.raw(raw) == value
    if signed and units < 0:
        assert raw[-1] & 0x80  # the sign is the top bit of the most significant byte (sent last)


def test_bcd_examples_and_limits():
    assert field("XXX.X", False).encode(Decimal("229.8")) == bytes.fromhex("9822")
    assert field("XX.XXXX", True).encode(Decimal("-1.2345")) == bytes.fromhex("452381")
    assert field("XX.XXXX", True).raw(bytes.fromhex("452381")) == Decimal("-1.2345")
    assert field("XX.XXXX", True).encode(Decimal("145.3")) == bytes.fromhex("999979")   # saturates
    assert field("XXXXXX.XX", False, counter=True).encode(Decimal("1000000.05")) == bytes.fromhex("05000000")  # wraps
    assert field("XXX.X", False).raw(bytes.fromhex("FFFF")) is None                      # not BCD
    ct = field("XXXXXX.XX", False, scale="60", counter=True)
    assert ct.encode(Decimal("45811.80")) == bytes.fromhex("53630700") and ct.exact(bytes.fromhex("53630700")) == Decimal("45811.80")


@settings(max_examples=50)
@given(st.binary(max_size=3))
def test_a_short_value_is_garbled_not_a_crash(data):
    f = field("XXXXXX.XX", False, counter=True)
    with pytest.raises(Garbled):
        DiRequest(f).decode(data, {}, {})


def test_non_bcd_values_are_left_out_like_nan():
    values, counters = {}, {}
    assert DiRequest(field("XXXXXX.XX", False, counter=True)).decode(b"\xff\xff\xff\xff", values, counters) == ["x"]
    assert values == {} and counters == {}


@given(st.binary(max_size=300))
def test_random_bytes_never_crash_the_scanner(data):
    scanner = FrameScanner()
    for x in scanner.feed(data):
        assert isinstance(x, (Frame, BadFrame))
    assume(True)
