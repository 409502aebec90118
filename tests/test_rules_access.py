from datetime import datetime, timezone

from gateway.rules.access import in_hours
from test_rules_support import T0, door, engine, sec, swipe

from datetime import time


def test_invalid_card_per_door_counted_and_quiet_clear():
    e, rec = engine([{"id": "card", "kind": "access", "check": "invalid_card", "quiet_s": 300}])
    e.handle(swipe("gate-n", T0, "resident"))
    e.handle(swipe("gate-n", T0, "staff"))
    assert rec.changes == []
    e.handle(swipe("gate-n", T0 + sec(1), "unknown"))
    e.handle(swipe("gate-n", T0 + sec(2), "revoked", holder="李四"))
    e.handle(swipe("gate-s", T0 + sec(3), "expired"))
    a = e.book.get("card", "gate-n")
    assert a.message == "北门 刷已注销卡（李四），共 2 次" and a.value == 2
    assert e.book.get("card", "gate-s").message == "南门 刷过期卡"
    e.tick(T0 + sec(301))
    assert e.book.get("card", "gate-n") is not None       # last case at +2 s
    e.tick(T0 + sec(302))
    assert e.book.get("card", "gate-n") is None and e.book.get("card", "gate-s") is not None


def test_staff_hours_in_site_time_with_midnight_crossing():
    assert in_hours(time(6, 0), time(6), time(22)) and not in_hours(time(22, 0), time(6), time(22))
    assert in_hours(time(23, 0), time(22), time(6)) and in_hours(time(5, 59), time(22), time(6))
    assert not in_hours(time(6, 0), time(22), time(6))
    e, rec = engine([{"id": "sh", "kind": "access", "check": "staff_hours",
                      "hours": {"start": "06:00", "end": "22:00"}}])
    # 21:59 Beijing = 13:59 UTC: inside; 22:00 Beijing = 14:00 UTC: outside
    e.handle(swipe("gate-n", datetime(2025, 1, 15, 13, 59, tzinfo=timezone.utc), "staff", holder="王师傅"))
    assert rec.changes == []
    e.handle(swipe("gate-n", datetime(2025, 1, 15, 14, 0, tzinfo=timezone.utc), "staff", holder="王师傅"))
    assert e.book.get("sh", "gate-n").message == "北门 员工卡非工作时间刷卡：王师傅 22:00"
    # 05:59 Beijing on the next day is 21:59 UTC of the day before: outside
    e.handle(swipe("gate-s", datetime(2025, 1, 15, 21, 59, tzinfo=timezone.utc), "staff"))
    assert e.book.get("sh", "gate-s") is not None
    e.handle(swipe("gate-s", datetime(2025, 1, 15, 22, 0, tzinfo=timezone.utc), "resident"))  # residents any time
    assert len(e.active()) == 2


def test_denied_burst_window_edges():
    e, rec = engine([{"id": "burst", "kind": "access", "check": "denied_burst", "count": 5, "window_s": 120,
                      "severity": "critical"}])
    for i in range(4):
        e.handle(swipe("gate-n", T0 + sec(30 * i), "unknown"))
    e.handle(swipe("gate-n", T0 + sec(100), "resident"))    # granted swipes do not count
    e.handle(swipe("gate-s", T0 + sec(100), "unknown"))     # other door does not count
    assert rec.changes == []
    e.handle(swipe("gate-n", T0 + sec(120), "revoked"))     # exactly window_s after the first: counts
    a = e.book.get("burst", "gate-n")
    assert a.value == 5 and a.severity == "critical" and "2分钟内 5 次无效刷卡" in a.message


def test_denied_burst_outside_window_does_not_fire():
    e, rec = engine([{"id": "burst", "kind": "access", "check": "denied_burst", "count": 5, "window_s": 120}])
    for i in range(10):
        e.handle(swipe("gate-n", T0 + sec(31 * i), "unknown"))    # 4 within any 120.0 s
    assert rec.changes == []


def test_forced_open_until_closed():
    e, rec = engine([{"id": "forced", "kind": "door", "check": "forced_open", "severity": "critical"}])
    e.handle(door("gate-n", "opened", T0))
    assert rec.changes == []
    e.handle(door("gate-n", "forced_open", T0 + sec(1)))
    assert e.book.get("forced", "gate-n").message == "北门 门被强行打开"
    e.handle(door("gate-n", "closed", T0 + sec(20)))
    assert rec.whats() == [("raised", "forced", "gate-n"), ("cleared", "forced", "gate-n")]


def test_held_open_strictly_longer_than_limit_and_door_default():
    e, rec = engine([{"id": "held", "kind": "door", "check": "held_open"}])
    e.handle(door("gate-n", "opened", T0))
    e.handle(door("gate-s", "opened", T0))
    e.tick(T0 + sec(30))                 # gate-s limit 30 s: exactly at it, not yet
    assert rec.changes == []
    e.tick(T0 + sec(31))
    assert [s for _, _, s in rec.whats()] == ["gate-s"]
    e.tick(T0 + sec(60))
    assert e.book.get("held", "gate-n") is None
    e.tick(T0 + sec(61))
    a = e.book.get("held", "gate-n")
    assert a.message == "北门 门长时间未关（已开 61 秒，限 60 秒）"
    e.handle(door("gate-n", "closed", T0 + sec(90)))
    assert e.book.get("held", "gate-n") is None
    e.tick(T0 + sec(200))
    assert e.book.get("held", "gate-n") is None


def test_held_open_from_controller_and_rule_limit():
    e, rec = engine([{"id": "held", "kind": "door", "check": "held_open", "held_open_s": 10, "doors": ["gate-n"]}])
    e.handle(door("gate-n", "held_open", T0))
    assert e.book.get("held", "gate-n").details["reported_by_controller"] is True
    e.handle(door("gate-s", "opened", T0))
    e.tick(T0 + sec(100))
    assert e.book.get("held", "gate-s") is None        # not selected
