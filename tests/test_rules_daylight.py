from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from gateway.rules.daylight import SunTimes
from test_rules_support import engine, reading, sec

TZ = ZoneInfo("Asia/Shanghai")
DL = {"id": "dl", "kind": "daylight", "margin_minutes": 30, "for_s": 0}
SUN = SunTimes(44.15, 125.83, TZ)


def hm(t: datetime) -> int:
    t = t.astimezone(TZ)
    return t.hour * 60 + t.minute


@pytest.mark.parametrize("d, rise, set_", [
    (date(2025, 12, 21), 7 * 60 + 9, 16 * 60 + 0),     # shortest day in Changchun (solar noon ≈11:35, 8 h 51 min)
    (date(2025, 6, 21), 3 * 60 + 54, 19 * 60 + 24),    # longest day (≈03:54 / 19:24)
])
def test_changchun_sun_times_on_solstices(d, rise, set_):
    r, s = SUN.day(d)
    assert abs(hm(r) - rise) <= 3 and abs(hm(s) - set_) <= 3
    assert r.tzinfo is not None


@pytest.mark.parametrize("d", [date(2025, 12, 21), date(2025, 6, 21)])
def test_edges_exactly_at_sunrise_plus_margin(d):
    rise, set_ = SUN.day(d)
    e, rec = engine([DL])
    e.handle(reading("B01", rise + timedelta(minutes=30) - sec(1), power_kw=3.0))   # twilight: not judged
    assert rec.changes == []
    e.handle(reading("B01", rise + timedelta(minutes=30), power_kw=3.0))            # first moment of day
    a = e.book.get("dl", "B01")
    assert a.details["what"] == "lit_in_daylight" and "白天亮灯" in a.message
    e.handle(reading("B01", rise + timedelta(minutes=31), power_kw=0.0))
    assert e.book.get("dl", "B01") is None
    # evening: lit at sunset - margin is still day
    e.handle(reading("B01", set_ - timedelta(minutes=30), power_kw=3.0))
    assert e.book.get("dl", "B01") is not None
    e.handle(reading("B01", set_ - timedelta(minutes=29), power_kw=3.0))            # twilight: condition gone
    assert e.book.get("dl", "B01") is None
    e.handle(reading("B01", set_ + timedelta(minutes=30), power_kw=0.0))            # night starts: dark
    assert e.book.get("dl", "B01").details["what"] == "dark_after_dusk"
    e.handle(reading("B01", set_ + timedelta(minutes=31), power_kw=2.0))
    assert e.book.get("dl", "B01") is None


def test_night_crosses_midnight_and_half_night():
    d = date(2025, 12, 21)
    midnight = datetime(2025, 12, 22, 0, 0, tzinfo=TZ)
    e, rec = engine([DL])
    e.handle(reading("B01", midnight + timedelta(minutes=30), power_kw=0.0))       # 00:30: still night
    assert e.book.get("dl", "B01").details["what"] == "dark_after_dusk"
    e2, rec2 = engine([DL | {"night_until": "23:00"}])
    e2.handle(reading("B01", midnight + timedelta(minutes=30), power_kw=0.0))     # half-night: off is fine
    e2.handle(reading("B01", midnight - timedelta(minutes=61), power_kw=0.0))     # 22:59: must be lit
    assert [w for w, *_ in rec2.whats()] == ["raised"]


def test_for_duration_at_tick_and_only_selected_circuit():
    rise, _ = SUN.day(date(2025, 3, 20))
    noon = rise + timedelta(hours=5)
    e, rec = engine([DL | {"for_s": 300}])
    e.handle(reading("B01", noon, power_kw=1.0))
    e.handle(reading("A01", noon, power_kw=1.0))          # stairwell lighting: not this rule's circuit
    e.tick(noon + sec(299))
    assert rec.changes == []
    e.tick(noon + sec(300))
    assert rec.whats() == [("raised", "dl", "B01")]


def test_only_one_check():
    rise, set_ = SUN.day(date(2025, 3, 20))
    e, rec = engine([DL | {"check": "lit_in_daylight"}])
    e.handle(reading("B01", set_ + timedelta(hours=2), power_kw=0.0))
    assert rec.changes == []
