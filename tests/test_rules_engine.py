import time as _time
from pathlib import Path

import pytest
from pydantic import ValidationError

from gateway.config import load_site
from gateway.events import Reading
from gateway.rules import Engine, check_rules, example_rules, parse_rules
from test_rules_support import T0, Rec, reading, sec

SITE = Path(__file__).resolve().parents[1] / "edge_config" / "site.example.yaml"


def test_example_rules_validate_and_cover_every_kind():
    rules = parse_rules(example_rules())
    assert {r.kind for r in rules} == {"threshold", "offline", "counter", "daylight", "consumption", "access",
                                       "door", "patrol"}
    assert len({r.id for r in rules}) == len(rules)


def test_example_rules_refer_to_the_example_site():
    import yaml
    data = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    assert check_rules(data | {"rules": example_rules()}) == []
    bad = example_rules() + [{"id": "voltage-high", "kind": "door", "check": "forced_open", "doors": ["gate-x"]}]
    assert check_rules(data | {"rules": bad}) == [
        f"rules[{len(bad) - 1}].id: 'voltage-high' is already used by rules[0]",
        f"rules[{len(bad) - 1}].doors[0]: no door named 'gate-x'"]


@pytest.mark.parametrize("rule, words", [
    ({"id": "x", "kind": "threshold", "field": "voltage_v"}, "needs 'above', 'below' or both"),
    ({"id": "x", "kind": "threshold", "field": "pf", "above": 1, "below": 0.99, "hysteresis": 0.01}, "no room"),
    ({"id": "x", "kind": "access", "check": "staff_hours"}, "needs 'hours"),
    ({"id": "x", "kind": "offline", "perods": 3}, "Extra inputs"),
    ({"id": "x", "kind": "nonsense"}, "does not match any of the expected tags"),
    ({"id": "x", "kind": "door", "check": "held_open", "severity": "fatal"}, "severity"),
])
def test_bad_rules_are_refused(rule, words):
    with pytest.raises(ValidationError) as ei:
        parse_rules([rule])
    assert words in str(ei.value)


def test_engine_from_the_example_site_and_routing():
    cfg = load_site(SITE)
    rec = Rec()
    e = Engine(cfg, parse_rules(example_rules()), on_change=rec)
    assert len(e.site.meters) == 145
    e.tick(T0)
    e.handle(reading("B01-stair", T0, voltage_v=250.0, current_a=1.0, pf=0.95, power_kw=0.2,
                     counters={"energy_kwh": "10.00"}))
    e.handle(reading("B01-stair", T0 + sec(60), voltage_v=250.0, current_a=1.0, pf=0.95, power_kw=0.2,
                     counters={"energy_kwh": "10.01"}))
    a = e.book.get("voltage-high", "B01-stair")
    assert a is not None and a.message.endswith("电压 250.0 V 超过上限 235.4 V")
    assert "B01-stair" in [m for m in e._index[Reading][0]] and e.handled == 2


def test_throughput_smoke():
    """Not a timing assertion (bench/ prints figures): the example rule set handles a burst."""
    cfg = load_site(SITE)
    e = Engine(cfg, parse_rules(example_rules()))
    meters = list(e.site.meters)
    events = [Reading(meters[i % len(meters)], T0 + sec(i * 0.01),
                      {"voltage_v": 221.0, "current_a": 2.0, "pf": 0.95, "power_kw": 0.4, "energy_kwh": 10 + i * 1e-4})
              for i in range(20_000)]
    t = _time.perf_counter()
    for ev in events:
        e.handle(ev)
    e.tick(T0 + sec(200))
    print(f"\n20,000 readings through the example rule set: {20_000 / (_time.perf_counter() - t):,.0f}/s")
    assert e.handled == 20_000
