"""The site file's outputs and lighting sections: every problem one line with its path."""

import subprocess
import sys

import pytest
import yaml

from gateway.cli import EXAMPLE_SITE
from gateway.config import ConfigError, load_site, parse_moment, parse_site

BASE = {
    "site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83},
    "buses": [
        {"id": "bus-guard", "type": "modbus_rtu", "port": "/dev/ttyUSB0"},
        {"id": "bus-main", "type": "dlt645", "port": "/dev/ttyUSB5"},
    ],
    "meters": [{"id": "SL01", "bus": "bus-guard", "unit": 6, "model": "chint-ddsu666", "circuit": "street_lighting"}],
    "outputs": [
        {"id": "K-SL01", "bus": "bus-guard", "unit": 40, "kind": "coil", "address": 0},
        {"id": "K-SL02", "bus": "bus-guard", "unit": 40, "kind": "holding", "address": 1, "inverted": True},
        {"id": "sw-1", "type": "mqtt", "command_topic": "wanhu/sw/1/set", "state_topic": "wanhu/sw/1/state"},
    ],
    "mqtt": {"host": "127.0.0.1"},
    "lighting": {
        "schedules": [{"id": "street", "lights_on": "sunset+10", "lights_off": "sunrise-10",
                       "curfew": {"from": "23:30", "until": "04:30"},
                       "exceptions": [{"holidays": ["spring_festival"], "curfew": "none"}]}],
        "circuits": [{"id": "SL01", "outputs": ["K-SL01", "sw-1"], "meters": ["SL01"], "schedule": "street"},
                     {"id": "SL02", "outputs": ["K-SL02"], "schedule": "street"}],
    },
}


def copy():
    return yaml.safe_load(yaml.safe_dump(BASE, allow_unicode=True))


def problems(data, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_site(data, base_dir=tmp_path)
    return e.value.problems


def test_outputs_and_circuits_load(tmp_path):
    cfg = parse_site(copy(), base_dir=tmp_path)
    assert cfg.output("K-SL01").type == "modbus" and cfg.output("K-SL01").kind == "coil"
    assert cfg.output("K-SL02").kind == "holding" and cfg.output("K-SL02").inverted
    assert cfg.output("sw-1").type == "mqtt" and cfg.output("sw-1").payload_on == "ON"
    sch = cfg.lighting.schedules[0]
    assert sch.curfew.from_ == "23:30" and sch.exceptions[0].curfew == "none"


def test_example_site_has_the_street_and_stairwell_circuits():
    cfg = load_site(EXAMPLE_SITE)
    circuits = {c.id: c for c in cfg.lighting.circuits}
    street = [c for c in circuits if c.startswith("SL")]
    stair = [c for c in circuits if c.endswith("-stair")]
    assert len(street) == 16 and len(stair) == 96
    for c in circuits.values():
        assert all(cfg.meter(m).circuit in ("street_lighting", "stairwell_lighting") for m in c.meters)
        assert all(cfg.output(o).type == "modbus" for o in c.outputs)
    # half the street lights go off at the curfew
    assert sum(circuits[c].schedule == "street-half" for c in street) == 8


@pytest.mark.parametrize("text, expected", [("sunset", ("sunset", 0)), ("sunset+15", ("sunset", 15)),
                                            ("sunrise-10", ("sunrise", -10)), ("18:30", ("fixed", 1110)),
                                            ("00:00", ("fixed", 0))])
def test_moments(text, expected):
    assert parse_moment(text) == expected


@pytest.mark.parametrize("text", ["sunset+121", "dusk", "25:00", "18.30", "sunset+", ""])
def test_bad_moments(text):
    with pytest.raises(ValueError):
        parse_moment(text)


def test_every_problem_one_line_with_its_path(tmp_path):
    bad = copy()
    bad["outputs"] += [
        {"id": "K-X", "bus": "rs485-x", "unit": 40, "address": 0},              # no such bus
        {"id": "K-Y", "bus": "bus-main", "unit": 40, "address": 0},             # DL/T 645 line
        {"id": "K-Z", "bus": "bus-guard", "unit": 6, "address": 0},             # a meter's unit
        {"id": "K-W", "bus": "bus-guard", "unit": 40, "kind": "coil", "address": 0},  # K-SL01's coil
        {"id": "K-V", "bus": "bus-guard", "unit": 41, "kind": "relay", "address": 0},
        {"id": "K-U", "bus": "bus-guard", "unit": 41, "kind": "holding", "address": 3, "on_value": 0},
        {"id": "sw-2", "type": "mqtt", "command_topic": "wanhu/sw/+/set", "state_topic": "s"},
    ]
    bad["lighting"]["schedules"].append({"id": "odd", "lights_on": "06:00", "lights_off": "sunset",
                                         "exceptions": [{"holidays": ["moon"], "curfew": "none"}, {"curfew": "none"}]})
    bad["lighting"]["circuits"] += [
        {"id": "SL03", "outputs": ["K-SL01", "nope"], "meters": ["ghost"], "schedule": "missing"},
    ]
    found = problems(bad, tmp_path)
    expected = [
        "outputs[3].bus: no bus named 'rs485-x'",
        "outputs[4].bus: bus 'bus-main' is a DL/T 645 line",
        "outputs[5].unit: unit 6 on bus 'bus-guard' is meter meters[0] ('SL01')",
        "outputs[6].address: coil 0 of unit 40 on bus 'bus-guard' is already outputs[0] ('K-SL01')",
        "outputs[7].kind: 'relay' is not allowed",
        "outputs[8]: Value error, on_value and off_value are both 0",
        "outputs[9].command_topic: 'wanhu/sw/+/set': '+' and '#' are for subscribing",
        "lighting.schedules[1].lights_on: '06:00': the lights go on in the evening",
        "lighting.schedules[1].lights_off: 'sunset': the lights go off in the morning",
        "lighting.schedules[1].exceptions[1]: Value error, an exception needs at least one of",
        "lighting.schedules[1].exceptions[0].holidays[0]: no holiday named 'moon'",
        "lighting.circuits[2].outputs[0]: output 'K-SL01' is already switched by lighting.circuits[0] ('SL01')",
        "lighting.circuits[2].outputs[1]: no output named 'nope'",
        "lighting.circuits[2].meters[0]: no meter named 'ghost'",
        "lighting.circuits[2].schedule: no schedule named 'missing'",
    ]
    for want in expected:
        assert any(p.startswith(want.replace("Value error, ", "")) for p in found), (want, found)
    assert all("\n" not in p and "Traceback" not in p for p in found)


def test_a_bare_on_key_is_explained(tmp_path):
    text = yaml.safe_dump(copy(), allow_unicode=True).replace("lights_on: sunset+10", "on: sunset+10")
    data = yaml.safe_load(text)  # YAML 1.1: the key is True
    found = problems(data, tmp_path)
    assert any(p.startswith("lighting.schedules[0]: a key reads as true/false") and "lights_on" in p for p in found), found


def test_mqtt_outputs_need_the_mqtt_section(tmp_path):
    bad = copy()
    del bad["mqtt"]
    assert "mqtt: required, because outputs use MQTT topics" in problems(bad, tmp_path)


def test_check_config_names_the_lighting(tmp_path):
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(copy(), allow_unicode=True), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "gateway", "check-config", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "lighting: 3 outputs, 2 circuits, 1 schedules" in out.stdout
