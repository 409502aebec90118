from gateway.rules.models import parse_rules
from test_rules_support import T0, engine, reading, sec

CTR = {"id": "ctr", "kind": "counter", "severity": "critical", "max_power_kw_by_circuit": {"stairwell_lighting": 4}}


def r(meter, t, kwh):
    return reading(meter, T0 + sec(t), counters={"energy_kwh": kwh}, energy_kwh=float(kwh))


def test_backwards_then_glitch_recovers():
    e, rec = engine([CTR])
    e.handle(r("A01", 0, "1000.00"))
    e.handle(r("A01", 30, "1000.00"))           # standing still is fine
    e.handle(r("A01", 60, "999.99"))            # within the last digit: fine
    assert rec.changes == []
    e.handle(r("A01", 90, "990.00"))
    a = e.book.get("ctr", "A01")
    assert a.details["what"] == "backwards" and abs(a.value - 10.0) < 1e-9
    assert "电量读数倒退" in a.message and "未登记换表" in a.message
    e.handle(r("A01", 120, "995.00"))           # still below the accepted value: stays
    assert e.book.get("ctr", "A01") is not None
    e.handle(r("A01", 150, "1000.01"))
    assert e.book.get("ctr", "A01") is None


def test_replacement_recorded_resets():
    e, rec = engine([CTR])
    e.handle(r("A01", 0, "5000.00"))
    e.handle(r("A01", 30, "3.00"))
    assert e.book.get("ctr", "A01") is not None
    e.note_replacement("A01", T0 + sec(40))
    assert e.book.get("ctr", "A01") is None
    e.handle(r("A01", 60, "3.01"))
    e.handle(r("A01", 90, "3.02"))
    assert len(e.active()) == 0


def test_jump_limit_is_max_power_times_elapsed_exactly():
    e, rec = engine([CTR])
    e.handle(r("A01", 0, "100.00"))
    e.handle(r("A01", 3600, "104.01"))          # 4 kW x 1 h + 0.01 resolution: exactly at the limit
    assert rec.changes == []
    e.handle(r("A01", 7200, "108.03"))          # 0.01 over
    a = e.book.get("ctr", "A01")
    assert a.details["what"] == "jump" and "电量跳变" in a.message


def test_jump_glitch_clears_and_real_jump_is_accepted_but_latched():
    e, rec = engine([CTR])
    e.handle(r("A01", 0, "100.00"))
    e.handle(r("A01", 30, "99999.00"))          # garbage read
    assert e.book.get("ctr", "A01").details["what"] == "jump"
    e.handle(r("A01", 60, "100.02"))            # continues from before the glitch
    assert e.book.get("ctr", "A01") is None
    assert rec.whats("cleared") == [("cleared", "ctr", "A01")]
    e.handle(r("A01", 90, "500.00"))            # jump
    e.handle(r("A01", 120, "500.01"))           # and it stays there: accepted, alert waits for a person
    a = e.book.get("ctr", "A01")
    assert a is not None and a.details.get("accepted") is True
    e.handle(r("A01", 150, "500.02"))
    assert e.book.get("ctr", "A01") is not None
    e.ack(a.id, "电工", "换了互感器", T0 + sec(200))
    assert e.book.get("ctr", "A01") is None


def test_no_max_power_no_jump_check_and_float_fallback():
    e, rec = engine([{"id": "c2", "kind": "counter"}])
    e.handle(reading("B01", T0, energy_kwh=1.0))
    e.handle(reading("B01", T0 + sec(1), energy_kwh=1e6))
    assert rec.changes == []
    e.handle(reading("B01", T0 + sec(2), energy_kwh=5.0))
    assert e.book.get("c2", "B01").details["what"] == "backwards"


def test_meter_override_wins():
    (m,) = parse_rules([CTR | {"max_power_kw_by_meter": {"A01": 100}}])
    e, rec = engine([m])
    e.handle(r("A01", 0, "0"))
    e.handle(r("A01", 3600, "90"))
    assert rec.changes == []
