from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from test_rules_support import engine, reading

TZ = ZoneInfo("Asia/Shanghai")
NIGHT = {"id": "night", "kind": "consumption", "period": "night", "factor": 1.5, "baseline_days": 14,
         "min_days": 7, "meters": ["A01"]}


def feed(e, start: datetime, hours: int, night_kw, day_kw=0.2, step_min=60, kwh=1000.0, meter="A01"):
    """Readings every step_min; the load is night_kw(day index) between 23:00 and 05:00 local."""
    t = start
    for _ in range(int(hours * 60 / step_min)):
        local = t.astimezone(TZ)
        night = local.hour >= 23 or local.hour < 5
        day_index = (local - timedelta(hours=5)).date().toordinal()
        kw = night_kw(day_index) if night else day_kw
        kwh += kw * step_min / 60
        t += timedelta(minutes=step_min)
        e.handle(reading(meter, t, counters={"energy_kwh": f"{kwh:.3f}"}))
    return t, kwh


def test_night_over_one_and_a_half_median_raises_and_next_normal_clears():
    e, rec = engine([NIGHT])
    start = datetime(2025, 1, 1, 12, 0, tzinfo=TZ)
    last = start.toordinal()
    # 14 normal nights at 0.5 kW (3 kWh per 6 h night), then one at 1 kW (6 kWh), then normal again
    bad = datetime(2025, 1, 15).toordinal()
    t, kwh = feed(e, start, 24 * 16, lambda d: 1.0 if d == bad else 0.5)
    a = e.book.get("night", "A01")
    assert rec.whats() == [("raised", "night", "A01"), ("cleared", "night", "A01")]
    raised = rec.changes[0][3]
    assert abs(raised.value - 6.0) < 1e-6 and raised.details["median"] == 3.0
    assert raised.details["window_start"].startswith("2025-01-15T23:00")
    assert "夜间用电异常" in raised.message and "2.0 倍" in raised.message


def test_exactly_one_and_a_half_times_is_not_abnormal():
    e, rec = engine([NIGHT])
    start = datetime(2025, 1, 1, 12, 0, tzinfo=TZ)
    bad = datetime(2025, 1, 15).toordinal()
    feed(e, start, 24 * 15, lambda d: 0.75 if d == bad else 0.5)     # 4.5 kWh = 1.5 x 3 kWh
    assert rec.changes == []


def test_not_judged_before_min_days_and_edges_are_interpolated():
    e, rec = engine([NIGHT | {"min_days": 7}])
    start = datetime(2025, 1, 1, 12, 20, tzinfo=TZ)       # readings at hh:20: edges fall between them
    feed(e, start, 24 * 6, lambda d: 5.0 if d == datetime(2025, 1, 5).toordinal() else 0.5, step_min=40)
    assert rec.changes == []                               # only 4 complete nights before the bad one
    rule = e.by_id["night"]
    hist = list(rule.history["A01"])
    assert len(hist) == 6 and all(abs(h - 3.0) < 1e-6 for h in hist[:4]) and abs(hist[4] - 30) < 1e-6


def test_seeded_baseline_and_day_period():
    e, rec = engine([{"id": "day", "kind": "consumption", "period": "day", "meters": ["A01"], "min_days": 3,
                      "baseline_days": 14, "min_excess_kwh": 1}])
    e.by_id["day"].seed("A01", [10.0] * 14)
    start = datetime(2025, 1, 1, 0, 0, tzinfo=TZ) - timedelta(hours=2)
    feed(e, start, 27, lambda d: 0.0, day_kw=1.0)             # 18 kWh on 2025-01-01 (05:00-23:00)
    a = e.book.get("day", "A01")
    assert a is not None and abs(a.value - 18.0) < 1e-6 and "当日用电异常" in a.message


def test_backwards_counter_breaks_the_window():
    e, rec = engine([NIGHT])
    e.by_id["night"].seed("A01", [3.0] * 14)
    t0 = datetime(2025, 1, 1, 22, 0, tzinfo=TZ)
    e.handle(reading("A01", t0, counters={"energy_kwh": "100"}))
    e.handle(reading("A01", t0 + timedelta(hours=2), counters={"energy_kwh": "101"}))
    e.handle(reading("A01", t0 + timedelta(hours=4), counters={"energy_kwh": "5"}))     # replaced, not recorded
    e.handle(reading("A01", t0 + timedelta(hours=8), counters={"energy_kwh": "50"}))
    assert rec.changes == []
