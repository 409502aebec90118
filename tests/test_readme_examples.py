"""The README's worked examples, run through the real parsers and a real InfluxDB 1.x.

A new user copies these examples onto real hardware, so each one must say what the code does.
"""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from gateway.cards import card_matches, parse_card_text
from gateway.drivers.card_frames import CardRead, Rdm6300Parser, WiegandTextParser, wiegand26_frame
from gateway.sinks.lineprotocol import line

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
WORKED = README[README.index("**Worked example: one card on every kind of reader.**"):]
WORKED = WORKED[:WORKED.index("\n\n**", 10)]
LISTED = "0305419896"  # the card list's number in the example


def test_the_example_names_the_listed_card():
    assert f"holds `{LISTED}`" in WORKED


def test_the_rdm6300_bytes_decode_to_the_listed_number():
    frame = re.search(r"`((?:[0-9A-F]{2} ){13}[0-9A-F]{2})`", WORKED).group(1)
    data = bytes.fromhex(frame)
    assert len(data) == 14
    reads = Rdm6300Parser().feed(data)
    assert [r.number for r in reads] == [LISTED]
    # The checksum named in the text is the XOR of the five data bytes.
    assert "`09` is\n  the checksum" in WORKED
    assert 0x01 ^ 0x12 ^ 0x34 ^ 0x56 ^ 0x78 == 0x09


def _wiegand_example(encoding: str) -> str:
    """The line the README gives for an encoding (the backticked text before `→ encoding: X`)."""
    m = re.search(r"`([^`]+)`(?:\s+\([^)]*\))?\s+→\s+`encoding: " + encoding + r"\b", WORKED)
    assert m, f"no example for encoding {encoding}"
    return m.group(1)


@pytest.mark.parametrize("encoding", ["decimal", "hex", "hex_raw"])
def test_each_wiegand_line_matches_the_listed_card(encoding):
    text = _wiegand_example(encoding)
    parser = WiegandTextParser(encoding, 26)
    reads = parser.feed(text.encode() + b"\r\n")
    assert reads and not parser.errors, (text, parser.errors)
    read: CardRead = reads[0]
    assert read.bits == 24
    assert card_matches(read.value, read.bits, int(LISTED))


def test_fac_card_lines_match_the_listed_card():
    for text in ("052,22136", "52,22136"):
        assert f"`{text}`" in WORKED
        reads = WiegandTextParser("fac_card", 26).feed(text.encode() + b"\n")
        assert card_matches(reads[0].value, reads[0].bits, int(LISTED))


def test_decimal_carries_the_data_bits_not_the_frame():
    frame = wiegand26_frame(52, 22136)
    assert f"`{frame}` here" in WORKED  # the README names the frame in decimal
    assert f"`{frame:X}`" in WORKED
    parser = WiegandTextParser("decimal", 26)
    assert parser.feed(f"{frame}\n".encode()) == []
    assert parser.errors["too_large"] == 1


def test_mqtt_card_texts_as_the_readme_says():
    assert parse_card_text("0305419896", "auto")[0] == int(LISTED)
    assert parse_card_text("0x12345678", "auto")[0] == int(LISTED)
    assert parse_card_text("12345678", "auto")[0] == 12345678  # "another card"
    value, bits = parse_card_text("52,22136", "auto")
    assert bits == 24 and card_matches(value, bits, int(LISTED))


def test_energy_counters_are_float_fields_in_influxdb(influx1):
    """The README says the exact text is written and the database keeps a float."""
    assert "the database stores a **float** field" in README
    text = line("meter", {"site": "wanhu", "meter": "M1"}, {"energy_kwh": Decimal("10922.37")}, 1_700_000_000_000)
    assert "energy_kwh=10922.37 " in text  # no `i`, no binary rounding on the way
    status, body = influx1.http(f"/write?db={influx1.database}&precision=ms", data=text.encode())
    assert status == 204, body
    keys = influx1.query('SHOW FIELD KEYS FROM "meter"')["results"][0]["series"][0]["values"]
    assert ["energy_kwh", "float"] in keys
    assert influx1.points("meter")[0]["energy_kwh"] == 10922.37
