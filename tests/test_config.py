"""The site file: every problem listed with its path, no traceback; the example site is valid."""

import subprocess
import sys

import pytest
import yaml

from gateway.cli import EXAMPLE_SITE
from gateway.config import ConfigError, load_site, parse_site

GOOD = {
    "site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83},
    "buses": [
        {"id": "bus-b01", "type": "modbus_tcp", "host": "127.0.0.1", "port": 502, "timeout_s": 1.0},
        {"id": "bus-guard", "type": "modbus_rtu", "port": "/dev/ttyUSB0", "baudrate": 9600, "parity": "N"},
    ],
    "meters": [
        {"id": "B01-stair", "name": "1号楼楼道照明", "bus": "bus-b01", "unit": 1, "model": "chint-ddsu666",
         "poll_s": 30, "circuit": "stairwell_lighting", "building": "B01"},
        {"id": "MAIN", "bus": "bus-guard", "unit": 1, "model": "chint-dtsu666", "circuit": "main_supply"},
    ],
}


def problems(data, tmp_path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse_site(data, base_dir=tmp_path)
    return e.value.problems


def test_good_file_loads(tmp_path):
    cfg = parse_site(GOOD, base_dir=tmp_path)
    assert cfg.meter("MAIN").model == "chint-dtsu666"
    assert cfg.bus("bus-guard").baudrate == 9600
    assert cfg.storage_path == tmp_path / "var" / "gateway.db"
    assert "chint-ddsu666" in cfg.models


def test_example_site_is_the_reference_site():
    cfg = load_site(EXAMPLE_SITE)
    assert len(cfg.meters) == 145 and len(cfg.buses) == 8
    kinds = [m.circuit for m in cfg.meters]
    assert kinds.count("stairwell_lighting") == 96 and kinds.count("lift") == 24
    assert kinds.count("street_lighting") == 16 and kinds.count("pump") == 4
    assert kinds.count("gate") == 4 and kinds.count("main_supply") == 1
    assert sum(b.type == "modbus_tcp" for b in cfg.buses) == 6
    assert all(m.poll_s <= 60 for m in cfg.meters)


def test_every_problem_is_listed_with_its_path(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    bad["meters"] += [
        {"id": "B01-stair", "bus": "rs485-x", "unit": 300, "model": "nope", "colour": "red"},
        {"id": "B02-stair", "bus": "bus-b01", "unit": 1, "model": "chint-ddsu666"},
    ]
    bad["buses"][0]["password"] = "secret"
    bad["buses"].append({"id": "bus-b01", "type": "modbus_foo"})
    got = problems(bad, tmp_path)
    expected = [
        "meters[2].unit: 300 is out of range: must be at most 247",
        "meters[2].colour: unknown key",
        "meters[2].id: 'B01-stair' is already used by meters[0]",
        "meters[2].bus: no bus named 'rs485-x'",
        "meters[2].model: no meter model 'nope'",
        "meters[3].unit: unit 1 on bus 'bus-b01' is already meters[0] ('B01-stair')",
        "buses[0].password: secrets are not written in the site file: use 'password_env'",
        "buses[2]: unknown type 'modbus_foo' (expected one of: 'modbus_tcp', 'modbus_rtu', 'dlt645')",
        "buses[2].id: 'bus-b01' is already used by buses[0]",
    ]
    for line in expected:
        assert any(p.startswith(line) for p in got), (line, got)
    assert len(got) == len(expected)


def test_unit_zero_and_missing_keys(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    bad["meters"][0]["unit"] = 0
    del bad["meters"][1]["model"]
    del bad["site"]["latitude"]
    got = problems(bad, tmp_path)
    assert "meters[0].unit: 0 is out of range: must be at least 1" in got
    assert "meters[1].model: required key is missing" in got
    assert "site.latitude: required key is missing" in got


def test_yaml_errors_give_the_line(tmp_path):
    p = tmp_path / "site.yaml"
    p.write_text("site: {id: x\nmeters: [\n")
    with pytest.raises(ConfigError) as e:
        load_site(p)
    assert len(e.value.problems) == 1 and "line" in e.value.problems[0]
    p.write_text("site: {id: a, name: b, latitude: 1, longitude: 2}\nsite: {id: c}\n")
    with pytest.raises(ConfigError) as e:
        load_site(p)
    assert "key 'site' appears twice" in e.value.problems[0]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "gateway", *args], capture_output=True, text=True, timeout=60)


def test_check_config_cli_ok_and_bad(tmp_path):
    ok = _cli("check-config", str(EXAMPLE_SITE))
    assert ok.returncode == 0, ok.stderr
    assert "145 meters" in ok.stdout and "8 buses" in ok.stdout
    bad = tmp_path / "bad.yaml"
    data = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    data["meters"][0]["bus"] = "rs485-x"
    data["meters"][1]["unit"] = 248
    bad.write_text(yaml.safe_dump(data, allow_unicode=True))
    r = _cli("check-config", str(bad))
    assert r.returncode == 2
    assert "meters[0].bus: no bus named 'rs485-x'" in r.stderr
    assert "meters[1].unit: 248 is out of range" in r.stderr
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout
    missing = _cli("check-config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr
