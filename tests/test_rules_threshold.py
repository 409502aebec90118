from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.rules.models import VOLTAGE_HIGH_V, VOLTAGE_LOW_V, example_rules
from test_rules_support import T0, engine, reading, sec

HIGH = {"id": "vh", "kind": "threshold", "field": ["voltage_v", "voltage_l1_v"], "above": 235.4,
        "hysteresis": 2.0, "for_s": 60}


def test_gbt12325_limits():
    assert (VOLTAGE_LOW_V, VOLTAGE_HIGH_V) == (198.0, 235.4)
    rules = {r["id"]: r for r in example_rules()}
    assert rules["voltage-high"]["above"] == 235.4 and rules["voltage-low"]["below"] == 198.0
    assert rules["voltage-high"]["for_s"] == 60 and rules["voltage-high"]["hysteresis"] == 2


def test_exactly_at_limit_is_fine():
    e, rec = engine([HIGH])
    for i in range(10):
        e.handle(reading("A01", T0 + sec(30 * i), voltage_v=235.4))
    e.tick(T0 + sec(400))
    assert rec.changes == []


def test_for_duration_then_message_then_hysteresis_band_then_clear():
    e, rec = engine([HIGH])
    e.handle(reading("A01", T0, voltage_v=245.3))
    e.handle(reading("A01", T0 + sec(30), voltage_v=240))
    e.tick(T0 + sec(59))
    assert rec.changes == []
    e.tick(T0 + sec(60))                                  # exactly for_s after the first bad reading
    (what, rule, src, a), = rec.changes
    assert (what, rule, src) == ("raised", "vh", "A01")
    assert a.message == "1号楼楼道照明 电压 240.0 V 超过上限 235.4 V"
    assert a.severity == "warning" and a.value == 240 and a.kind == "threshold"
    e.handle(reading("A01", T0 + sec(90), voltage_v=245.3))   # worse: updated
    assert rec.whats()[-1] == ("updated", "vh", "A01")
    assert "245.3 V" in e.book.get("vh", "A01").message
    e.handle(reading("A01", T0 + sec(120), voltage_v=241))    # better but still bad: no churn
    e.handle(reading("A01", T0 + sec(150), voltage_v=234.0))  # inside the hysteresis band: stays
    assert e.book.get("vh", "A01") is not None and len(rec.changes) == 2
    e.handle(reading("A01", T0 + sec(180), voltage_v=233.4))  # exactly limit - hysteresis: clears
    assert rec.whats()[-1] == ("cleared", "vh", "A01")


def test_pending_is_dropped_when_back_inside():
    e, rec = engine([HIGH])
    e.handle(reading("A01", T0, voltage_v=240))
    e.handle(reading("A01", T0 + sec(30), voltage_v=235.0))   # inside (even within the band)
    e.handle(reading("A01", T0 + sec(60), voltage_v=240))
    e.tick(T0 + sec(100))
    assert rec.changes == []
    e.tick(T0 + sec(120))
    assert rec.whats() == [("raised", "vh", "A01")]


def test_per_phase_worst_field_and_other_meters_untouched():
    e, rec = engine([HIGH | {"for_s": 0}])
    e.handle(reading("A02", T0, voltage_v=230, voltage_l1_v=236.0))
    a = e.book.get("vh", "A02")
    assert a.details["field"] == "voltage_l1_v" and "A相电压 236.0 V" in a.message
    e.handle(reading("A01", T0, voltage_v=230))
    assert [x.source for x in e.active()] == ["A02"]


def test_below_with_require_for_pf():
    pf = {"id": "pf", "kind": "threshold", "field": "pf", "below": 0.8, "hysteresis": 0.02, "for_s": 600,
          "require": {"current_a": 0.5}, "severity": "info"}
    e, rec = engine([pf])
    for i in range(25):   # no load: pf meaningless, not judged
        e.handle(reading("A01", T0 + sec(30 * i), pf=0.3, current_a=0.1))
    assert rec.changes == []
    for i in range(25):
        e.handle(reading("A01", T0 + sec(1000 + 30 * i), pf=0.79, current_a=3))
    a = e.book.get("pf", "A01")
    assert a.raised_at == T0 + sec(1000 + 600) and a.severity == "info"
    assert "功率因数 0.79 低于下限 0.8" in a.message
    e.handle(reading("A01", T0 + sec(3000), pf=0.81, current_a=3))     # in band
    assert e.book.get("pf", "A01") is not None
    e.handle(reading("A01", T0 + sec(3030), pf=0.82, current_a=3))
    assert e.book.get("pf", "A01") is None


def test_selector_by_circuit():
    e, rec = engine([HIGH | {"for_s": 0, "circuits": ["street_lighting"]}])
    e.handle(reading("A01", T0, voltage_v=250))
    e.handle(reading("B01", T0, voltage_v=250))
    assert [a.source for a in e.active()] == ["B01"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=225, max_value=245, allow_nan=False), min_size=1, max_size=40))
def test_property_state_matches_hysteresis(values):
    """With for_s = 0: active after a value > limit; stays until a value <= limit - h."""
    e, _ = engine([HIGH | {"for_s": 0}])
    expect = False
    for i, v in enumerate(values):
        e.handle(reading("A01", T0 + sec(i), voltage_v=v))
        if v > 235.4:
            expect = True
        elif v <= 233.4:
            expect = False
        assert (e.book.get("vh", "A01") is not None) == expect
