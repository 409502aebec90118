"""Decoding of every type and word order, and the model files."""

import struct
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from gateway.meter_models import (SHIPPED_MODELS_DIR, TYPES, WORD_ORDERS, FieldSpec, ModelError,
                                  float32_text, load_model_file, load_models, to_canonical)


def spec(type_: str, order: str, scale: float = 1.0, offset: float = 0.0, counter=False) -> FieldSpec:
    return FieldSpec("x", 0x100, 3, type_, order, scale, offset, "", counter)


RANGES = {
    "uint16": st.integers(0, 2**16 - 1), "int16": st.integers(-2**15, 2**15 - 1),
    "uint32": st.integers(0, 2**32 - 1), "int32": st.integers(-2**31, 2**31 - 1),
    "uint64": st.integers(0, 2**64 - 1), "int64": st.integers(-2**63, 2**63 - 1),
    "float32": st.floats(width=32, allow_nan=False),
}


@pytest.mark.parametrize("type_", sorted(TYPES))
@pytest.mark.parametrize("order", WORD_ORDERS)
@given(data=st.data())
def test_encode_decode_round_trip(type_, order, data):
    f = spec(type_, order)
    raw = data.draw(RANGES[type_])
    words = f.encode_raw(raw)
    assert len(words) == f.words and all(0 <= w <= 0xFFFF for w in words)
    assert f.raw_from_bytes(struct.pack(f">{len(words)}H", *words)) == raw


def test_word_orders_against_known_bytes():
    # 0x11223344 as the four orders put it on the wire, registers in address order.
    wire = {"ABCD": "11223344", "CDAB": "33441122", "BADC": "22114433", "DCBA": "44332211"}
    for order, hexs in wire.items():
        assert spec("uint32", order).raw_from_bytes(bytes.fromhex(hexs)) == 0x11223344, order
    # 64-bit: words reversed for CDAB/DCBA, bytes swapped for BADC/DCBA.
    assert spec("uint64", "CDAB").raw_from_bytes(bytes.fromhex("7788556633441122")) == 0x1122334455667788
    assert spec("int16", "BADC").raw_from_bytes(bytes.fromhex("feff")) == -2
    assert spec("float32", "ABCD").raw_from_bytes(bytes.fromhex("43660000")) == 230.0


@given(st.binary(min_size=8, max_size=8), st.sampled_from(WORD_ORDERS))
def test_canonical_transform_is_its_own_inverse(b, order):
    assert to_canonical(to_canonical(b, order), order) == b


@given(st.floats(width=32, allow_nan=False, allow_infinity=False))
def test_float32_text_is_shortest_exact(x):
    text = float32_text(x)
    assert struct.pack(">f", float(text)) == struct.pack(">f", x)


def test_exact_counter_keeps_decimal_digits():
    f = spec("uint32", "ABCD", scale=0.01, counter=True)
    assert f.exact(123456789) == Decimal("1234567.89")
    g = spec("float32", "ABCD", counter=True)
    raw = struct.unpack(">f", struct.pack(">f", 1234.56))[0]
    assert raw != 1234.56  # float32 cannot hold it ...
    assert g.exact(raw) == Decimal("1234.56")  # ... but the meter meant it


@given(st.integers(0, 2**32 - 1), st.sampled_from([0.1, 0.01, 0.001, 1.0]))
def test_raw_for_inverts_value(raw, scale):
    f = spec("uint32", "CDAB", scale=scale)
    assert f.raw_for(f.value(raw)) == raw


def test_shipped_models_load_with_shared_names():
    models, problems = load_models([SHIPPED_MODELS_DIR])
    assert problems == []
    assert {"chint-ddsu666", "chint-dtsu666", "eastron-sdm120", "eastron-sdm630"} <= set(models)
    for m in models.values():
        names = {f.name for f in m.fields}
        assert "energy_kwh" in names and "freq_hz" in names, m.id
        assert m.field("energy_kwh").counter
    dtsu = models["chint-dtsu666"]
    assert dtsu.field("voltage_l1_v").scale == 0.1 and dtsu.field("pf").address == 0x202A


def test_bad_model_file_names_every_problem(tmp_path: Path):
    p = tmp_path / "bad-meter.yaml"
    p.write_text("model: bad-meter\nname: x\nfields:\n  voltage_v: {address: 70000, type: float64}\n"
                 "  Energy: {address: 1, colour: red}\n")
    with pytest.raises(ModelError) as e:
        load_model_file(p)
    text = "\n".join(e.value.problems)
    assert "fields.voltage_v.address" in text and "fields.voltage_v.type" in text
    assert str(p) in text


def test_site_directory_overrides_shipped_model(tmp_path: Path):
    (tmp_path / "chint-ddsu666.yaml").write_text(
        "model: chint-ddsu666\nname: corrected\ndefaults: {function: holding}\n"
        "fields:\n  energy_kwh: {address: 0x4000}\n")
    models, problems = load_models([SHIPPED_MODELS_DIR, tmp_path])
    assert problems == [] and models["chint-ddsu666"].name == "corrected"
    assert models["chint-ddsu666"].field("energy_kwh").function == 3
