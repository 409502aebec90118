"""The site file: every problem listed with its path, no traceback; the example site is valid."""

import asyncio
import logging
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


# ---- wrong shapes anywhere: listed problems, never an exception -------------------------------

def test_a_list_or_mapping_where_a_name_belongs_is_a_problem_not_a_crash(tmp_path):
    bad = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    bad["meters"][0]["bus"] = ["bus-b01"]
    bad["meters"][1]["id"] = {"a": 1}
    bad["meters"][1]["model"] = ["chint-dtsu666"]
    bad["doors"] = [{"id": "gate-n"}, {"id": ["gate-s"]}]
    bad["card_readers"] = [{"id": "r1", "type": "serial", "port": "/dev/ttyUSB1", "door": {"a": 1}}]
    bad["users"] = [{"name": ["guard"], "role": "guard", "password_hash": "$argon2id$x"}]
    bad["rules"] = [{"id": "off", "kind": "offline", "meters": [["B01-stair"]], "buildings": [{"b": 1}]},
                    {"id": ["off"], "kind": "counter", "max_power_kw_by_meter": {"B01-stair": 1}}]
    bad["allocation"] = {"groups": [{"id": "g", "meters": [["MAIN"]]}, "not a group"]}
    bad["patrol"] = {"checkpoints": [{"id": ["CP01"], "tag": ["04A1"]}],
                     "routes": [{"id": "r", "checkpoints": 5, "shifts": []}]}
    got = problems(bad, tmp_path)
    for line in ["meters[0].bus: Input should be a valid string (found a list)",
                 "meters[1].id: Input should be a valid string (found a mapping)",
                 "meters[1].model: Input should be a valid string (found a list)",
                 "doors[1].id: Input should be a valid string (found a list)",
                 "card_readers[0].door: Input should be a valid string (found a mapping)",
                 "users[0].name: Input should be a valid string (found a list)",
                 "rules[0].meters[0]: Input should be a valid string (found a list)",
                 "allocation.groups[0].meters[0]: Input should be a valid string (found a list)",
                 "patrol.routes[0].checkpoints: Input should be a valid list (found a number 5)"]:
        assert line in got, (line, got)


def write(tmp_path, text: str):
    p = tmp_path / "site.yaml"
    p.write_text(text, encoding="utf-8")
    return p


def load_problems(path) -> list[str]:
    with pytest.raises(ConfigError) as e:
        load_site(path)
    return e.value.problems


GOOD_TEXT = yaml.safe_dump(GOOD, allow_unicode=True, default_flow_style=None, sort_keys=False)


@pytest.mark.parametrize("change, expected", [
    (("poll_s: 30", "poll_s: !!float x"), "line 6, column 87: not valid YAML: 'x' is not a valid float"),
    (("poll_s: 30", "poll_s: " + "9" * 5000), "not valid YAML: a number of 5000 characters is too long"),
    (("poll_s: 30", "poll_s: !!bool x"), "not valid YAML: 'x' is not a valid bool"),
    (("poll_s: 30", "poll_s: 2025-02-30"), "'2025-02-30' is not a valid timestamp (day is out of range for month)"),
    (("poll_s: 30", "? [a]: 1"), "not valid YAML: a list or mapping cannot be a key"),
    (("poll_s: 30", "poll_s: 30, poll_s: 31"), "key 'poll_s' appears twice"),
    (("poll_s: 30", "poll_s: " + "[" * 20000), "line 6, column 134: not valid YAML: nested more than 50 levels deep"),
    (("poll_s: 30", "poll_s: &a [1, *a]"), "alias *a is inside its own anchor &a"),
])
def test_yaml_that_python_cannot_build_is_one_problem_with_its_line(tmp_path, change, expected):
    text = GOOD_TEXT.replace(*change, 1)
    assert text != GOOD_TEXT
    got = load_problems(write(tmp_path, text))
    assert len(got) == 1 and expected in got[0], got


def test_alias_bombs_and_oversized_files_are_refused_at_once(tmp_path):
    levels = ", ".join([f"&l0 [{', '.join(['lol'] * 10)}]"]
                       + [f"&l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)])
    got = load_problems(write(tmp_path, GOOD_TEXT + f"meter_models: [{levels}]\n"))
    assert len(got) == 1 and "aliases expand to more than 1,000,000 nodes" in got[0], got
    deep = "".join(f"d{i}: &d{i} [*d{i - 1}]\n" if i else "d0: &d0 [x]\n" for i in range(60))
    got = load_problems(write(tmp_path, GOOD_TEXT + deep))
    assert len(got) == 1 and "makes the value nested more than 50 levels deep" in got[0], got
    got = load_problems(write(tmp_path, GOOD_TEXT + "#" + "x" * (10 * 1024 * 1024) + "\n"))
    assert got == [f"{tmp_path / 'site.yaml'}: larger than 10 MB: not read"]
    # aliases within the bound are fine: the example site shares its time-of-use periods
    assert len(load_site(EXAMPLE_SITE).tariffs) == 2


# ---- MQTT topics --------------------------------------------------------------------------------

def with_topics(readers=(), doors=(), patrol=(), prefix=None) -> dict:
    data = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    data["mqtt"] = {"host": "127.0.0.1"}
    data["doors"] = [{"id": f"d{i}", "topic": t} for i, t in enumerate(doors)] or [{"id": "d0"}]
    data["card_readers"] = [{"id": f"r{i}", "type": "mqtt", "topic": t, "door": "d0"} for i, t in enumerate(readers)]
    data["patrol"] = {"readers": [{"id": f"p{i}", "type": "mqtt", "topic": t} for i, t in enumerate(patrol)]}
    if prefix is not None:
        data["alerts"] = {"mqtt_prefix": prefix}
    return data


def test_topic_filters_are_checked(tmp_path):
    got = problems(with_topics(readers=["#", "$SYS/#", "", "x/#/swipe", "wanhu/acs/+/swipe"],
                               doors=["wanhu/acs/+/door", "wanhu/alerts/#"], patrol=["+/alerts/+/+", "a+/b"]),
                   tmp_path)
    own = "would also receive the gateway's own alerts (wanhu/alerts/<rule>/<source>)"
    assert sorted(got) == sorted([
        f"card_readers[0].topic: '#' {own}",
        "card_readers[1].topic: '$SYS/#': topics starting with '$' belong to the broker ($SYS/...)",
        "card_readers[2].topic: '': a topic cannot be empty",
        "card_readers[3].topic: 'x/#/swipe': '#' must be a whole level and the last one (e.g. site/acs/#)",
        f"doors[1].topic: 'wanhu/alerts/#' {own}",
        f"patrol.readers[0].topic: '+/alerts/+/+' {own}",
        "patrol.readers[1].topic: 'a+/b': '+' must be a whole level (e.g. site/+/swipe)",
    ])


def test_the_alert_prefix_is_a_topic_name(tmp_path):
    for prefix, problem in [("#", "'+' and '#' are for subscribing"), ("$SYS/x", "belong to the broker"),
                            ("", "a topic cannot be empty"), ("ops/", "an empty level")]:
        got = problems(with_topics(readers=["wanhu/acs/+/swipe"], prefix=prefix), tmp_path)
        assert got == [f"alerts.mqtt_prefix: {prefix!r}: " + got[0].split(": ", 2)[2]] and problem in got[0], got
    # the overlap follows the prefix in use
    got = problems(with_topics(readers=["wanhu/#", "ops/alarms/+/MAIN"], prefix="ops/alarms"), tmp_path)
    assert got == ["card_readers[1].topic: 'ops/alarms/+/MAIN' would also receive the gateway's own alerts "
                   "(ops/alarms/<rule>/<source>)"]
    parse_site(with_topics(readers=["wanhu/#"], doors=["wanhu/alerts"], prefix="ops/alarms"), base_dir=tmp_path)


# ---- the card list ------------------------------------------------------------------------------

CARD = {"number": "0012345678", "holder": "张伟", "role": "resident"}


def test_card_entries_alone_mean_no_card_file(tmp_path):
    data = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    data["cards"] = {"entries": [CARD]}
    assert parse_site(data, base_dir=tmp_path).cards.file is None
    data["cards"] = {"entries": [CARD], "file": "office.csv"}
    assert parse_site(data, base_dir=tmp_path).cards.file == "office.csv"
    data["cards"] = {"reload_s": 5}
    assert parse_site(data, base_dir=tmp_path).cards.file == "cards.csv"


async def test_card_entries_alone_load_no_file_at_start_or_reload(tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("CARD_HASH_KEY", "test-key")
    from gateway.runtime import Gateway
    from gateway.service import load_for_reload
    data = yaml.safe_load(yaml.safe_dump(GOOD, allow_unicode=True))
    data.update(buses=[], meters=[], storage={"path": "gw.db", "commit_interval_s": 0.2},
                doors=[{"id": "gate-n"}], cards={"entries": [CARD], "reload_s": 0.2})
    path = write(tmp_path, yaml.safe_dump(data, allow_unicode=True))
    assert _cli("check-config", str(path)).returncode == 0
    for cfg in (load_site(path), load_for_reload(path)):    # what `run` loads at start, and at SIGHUP
        gw = Gateway(cfg)
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))
        async with asyncio.timeout(10):
            while gw.registry is None:
                await asyncio.sleep(0.02)
        await asyncio.sleep(3 * 0.2)   # nothing must happen: give the card reload loop three turns
        gw.stop()
        await asyncio.wait_for(task, 10)
        assert gw.registry.path is None and len(gw.registry) == 1 and not gw.registry.problems
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING and "card" in r.getMessage()], \
        [r.getMessage() for r in caplog.records]
