"""DL/T 645 in the site file: the bus type, meter addresses, and DI models as data."""

import pytest
import yaml

from gateway.cli import EXAMPLE_SITE
from gateway.config import ConfigError, load_site, parse_site
from gateway.drivers.dlt645 import is_dlt645_model

SITE = {"id": "t", "name": "test", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}
BUSES = [{"id": "main", "type": "dlt645", "port": "/dev/ttyUSB5"},
         {"id": "guard", "type": "modbus_rtu", "port": "/dev/ttyUSB0"}]


def problems(meters, tmp_path, buses=BUSES) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_site({"site": SITE, "buses": buses, "meters": meters}, base_dir=tmp_path)
    return e.value.problems


def test_a_dlt645_bus_and_meter(tmp_path):
    cfg = parse_site({"site": SITE, "buses": BUSES, "meters": [
        {"id": "MAIN", "bus": "main", "address": "000012345678", "model": "dlt645-3p-ct300", "circuit": "main_supply"},
        {"id": "GATE", "bus": "guard", "unit": 2, "model": "chint-ddsu666"}]}, base_dir=tmp_path)
    bus = cfg.bus("main")
    assert (bus.baudrate, bus.bytesize, bus.parity, bus.stopbits, bus.preamble) == (2400, 8, "E", 1, 4)
    assert (bus.timeout_s, bus.retries, bus.offline_after, bus.backoff_max_s) == (1.0, 1, 3, 300)
    assert cfg.meter("MAIN").unit is None and cfg.meter("MAIN").bus_address == "address 000012345678"
    assert cfg.meter("GATE").bus_address == "unit 2"
    model = cfg.models["dlt645-3p-ct300"]
    assert is_dlt645_model(model) and not is_dlt645_model(cfg.models["chint-dtsu666"])
    assert model.phases == 3 and model.field("energy_kwh").counter and str(model.field("power_kw").scale) == "60"
    assert [f"{f.di:08X}" for f in cfg.models["dlt645-1p"].fields] == [
        "00010000", "02010100", "02020100", "02030000", "02060000", "02800002"]


def test_which_key_for_which_bus_is_said_plainly(tmp_path):
    got = problems([
        {"id": "a", "bus": "main", "unit": 1, "model": "chint-dtsu666"},
        {"id": "b", "bus": "guard", "address": "000000000001", "model": "dlt645-1p"},
        {"id": "c", "bus": "main", "address": 12345678, "model": "dlt645-1p"},
        {"id": "d", "bus": "main", "address": "1234-5678", "model": "dlt645-1p"},
        {"id": "e", "bus": "main", "address": "000000000009", "model": "dlt645-1p"},
        {"id": "f", "bus": "main", "address": "000000000009", "model": "dlt645-3p"},
    ], tmp_path)
    assert got == [
        "meters[2].address: write the 12-digit address in quotes, e.g. address: '000012345678' (without quotes "
        "YAML reads a number and drops the leading zeros)",
        "meters[3].address: '1234-5678' is not a DL/T 645 address: 12 digits, in quotes (e.g. '000012345678')",
        "meters[0].unit: bus 'main' is a DL/T 645 line: its meters have an 'address' (12 digits), not a Modbus unit id",
        "meters[0].address: required on DL/T 645 bus 'main': the meter's 12-digit address in quotes, e.g. "
        "address: '000012345678' (on its nameplate; `gateway scan --protocol dlt645` reads it)",
        "meters[0].model: 'chint-dtsu666' is a Modbus register map; a meter on DL/T 645 bus 'main' needs a "
        "DL/T 645 model (known: dlt645-1p, dlt645-3p, dlt645-3p-ct300)",
        "meters[1].address: bus 'guard' is modbus_rtu: its meters have a Modbus 'unit' id (1-247), not a "
        "DL/T 645 address",
        "meters[1].unit: required on Modbus bus 'guard' (modbus_rtu): the meter's unit id, 1-247 (an 'address' "
        "is for meters on a bus of type dlt645)",
        "meters[1].model: 'dlt645-1p' is a DL/T 645 model; a meter on Modbus bus 'guard' needs a register map "
        "(known: chint-ddsu666, chint-dtsu666, eastron-sdm120, eastron-sdm630)",
        "meters[5].address: address 000000000009 on bus 'main' is already meters[4] ('e')",
    ]


def test_bus_settings_are_checked(tmp_path):
    got = problems([], tmp_path, buses=[{"id": "m", "type": "dlt645", "port": "/dev/x", "parity": "X",
                                         "preamble": 9, "unit": 1}])
    assert got == ["buses[0].parity: 'X' is not allowed; expected 'N', 'E' or 'O'",
                   "buses[0].preamble: 9 is out of range: must be at most 4",
                   "buses[0].unit: unknown key"]


MODEL = {"model": "acme-1p", "name": "ACME", "protocol": "dlt645-2007", "phases": 1,
         "fields": {"energy_kwh": {"di": "00010000", "format": "XXXXXX.XX"}}}


def write_model(tmp_path, data, name="acme-1p"):
    d = tmp_path / "meter_models" / "dlt645"
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{name}.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")


def test_a_site_adds_and_corrects_dlt645_models_without_code(tmp_path):
    write_model(tmp_path, MODEL)
    write_model(tmp_path, {**MODEL, "model": "dlt645-1p", "fields": {
        "energy_kwh": {"di": "00000000", "format": "XXXXXX.XX", "scale": 40}}}, name="dlt645-1p")
    cfg = parse_site({"site": SITE, "buses": BUSES[:1], "meters": [
        {"id": "x", "bus": "main", "address": "000000000001", "model": "acme-1p"}]}, base_dir=tmp_path)
    assert cfg.models["acme-1p"].fields[0].counter
    assert [(f.di, str(f.scale)) for f in cfg.models["dlt645-1p"].fields] == [(0, "40")]  # the site's wins


@pytest.mark.parametrize("change,message", [
    ({"fields": {"energy_kwh": {"di": 10000, "format": "XXXXXX.XX"}}}, "write the data identifier in quotes"),
    ({"fields": {"energy_kwh": {"di": "0001000G", "format": "XXXXXX.XX"}}}, "fields.energy_kwh.di"),
    ({"fields": {"energy_kwh": {"di": "00010000", "format": "XXXXX.XX"}}}, "an even number of digits"),
    ({"fields": {"energy_kwh": {"di": "00010000", "format": "9999.99"}}}, "expected X digits"),
    ({"fields": {"energy_kwh": {"di": "00010000", "format": "XXXX.XX", "scale": 0}}}, "greater than 0"),
    ({"fields": {"a_kwh": {"di": "00010000", "format": "XXXX"}, "b_kwh": {"di": "00010000", "format": "XXXX"}}},
     "00010000 used by more than one field"),
    ({"model": "other"}, "must match the file name"),
    ({"protocol": "modbus"}, "protocol"),
])
def test_a_broken_dlt645_model_is_a_problem_with_its_file(tmp_path, change, message):
    write_model(tmp_path, {**MODEL, **change})
    got = problems([], tmp_path, buses=[])
    assert len(got) >= 1 and all("acme-1p.yaml" in p for p in got)
    assert any(message in p for p in got), got


def test_a_dlt645_model_cannot_share_a_register_maps_name(tmp_path):
    write_model(tmp_path, {**MODEL, "model": "chint-ddsu666"}, name="chint-ddsu666")
    got = problems([], tmp_path, buses=[])
    assert len(got) == 1 and "also a Modbus register map" in got[0]


def test_the_example_sites_main_meter_speaks_dlt645():
    cfg = load_site(EXAMPLE_SITE)
    main = cfg.meter("MAIN")
    bus = cfg.bus(main.bus)
    assert (bus.id, bus.type, bus.port, bus.baudrate, bus.parity) == ("bus-main", "dlt645", "/dev/ttyUSB5", 2400, "E")
    assert (main.address, main.model, main.circuit, main.unit) == ("000012345678", "dlt645-3p-ct300", "main_supply", None)
    assert [m.id for m in cfg.meters if m.bus == "bus-main"] == ["MAIN"]
    assert sum(m.bus == "bus-guard" for m in cfg.meters) == 20  # gates, guard room, street lights stay
