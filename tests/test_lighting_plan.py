"""Switching plans: the times against astral, the calendar, and properties of every plan."""

from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral.sun import sun
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli import EXAMPLE_SITE
from gateway.config import load_site, parse_site
from gateway.lighting.holidays import spring_festival
from gateway.lighting.plan import Planner

TZ = ZoneInfo("Asia/Shanghai")


def site(schedules, circuits=None, lat=44.15, lon=125.83, tz="Asia/Shanghai", **lighting):
    data = {
        "site": {"id": "t", "name": "t", "timezone": tz, "latitude": lat, "longitude": lon},
        "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "outputs": [{"id": f"K{i}", "bus": "b", "unit": 40, "address": i} for i in range(len(schedules))],
        "lighting": {"schedules": schedules, "circuits": circuits or [
            {"id": f"C{i}", "outputs": [f"K{i}"], "schedule": s["id"]} for i, s in enumerate(schedules)],
            **lighting},
    }
    from pathlib import Path
    return parse_site(data, base_dir=Path("."))


def astral_times(d: date, lat=44.15, lon=125.83):
    s = sun(Observer(lat, lon), date=d, tzinfo=TZ)
    return s["sunrise"], s["sunset"]


def test_winter_solstice_with_curfew_matches_astral():
    p = Planner(load_site(EXAMPLE_SITE))
    d = date(2026, 12, 21)
    rise, _ = astral_times(d)
    _, set_ = astral_times(d)
    on_at_midnight, switches = p.day("SL02", d)
    assert on_at_midnight is False                     # the curfew since 23:30
    got = [(s.at, s.on) for s in switches]
    assert got == [(datetime.combine(d, time(4, 30), TZ), True), (rise - timedelta(minutes=10), False),
                   (set_ + timedelta(minutes=10), True), (datetime.combine(d, time(23, 30), TZ), False)]
    on_at_midnight, switches = p.day("SL01", d)         # all night: no curfew
    assert on_at_midnight and [(s.at, s.on) for s in switches] == [(rise - timedelta(minutes=10), False),
                                                                   (set_ + timedelta(minutes=10), True)]
    assert set_.hour == 16 and rise.hour == 7          # lighting.md: sets before 16:xx, rises after 07:00


def test_summer_night_curfew_has_no_morning_return():
    p = Planner(load_site(EXAMPLE_SITE))
    d = date(2027, 6, 21)
    _, set_ = astral_times(d)
    on_at_midnight, switches = p.day("SL02", d)
    assert not on_at_midnight
    assert [(s.at, s.on) for s in switches] == [(set_ + timedelta(minutes=10), True),
                                                (datetime.combine(d, time(23, 30), TZ), False)]


def test_spring_festival_nights_are_all_lit():
    p = Planner(load_site(EXAMPLE_SITE))
    eve, lantern = spring_festival(2027)
    assert (eve, lantern) == (date(2027, 2, 5), date(2027, 2, 20))
    for k in range((lantern - eve).days + 1):
        d = eve + timedelta(days=k)
        night = p.night("street-half", d)
        assert night.curfew is None and "春节" in night.variant
        assert p.state_at("SL02", datetime.combine(d + timedelta(days=1), time(2), TZ))[0]
    # the night before the eve and after the Lantern Festival: the curfew again
    for d in (eve - timedelta(days=1), lantern + timedelta(days=1)):
        assert not p.state_at("SL02", datetime.combine(d + timedelta(days=1), time(2), TZ))[0]


def test_weekday_season_dates_and_first_match_wins():
    cfg = site([{"id": "s", "lights_on": "18:00", "lights_off": "06:00", "exceptions": [
        {"dates": ["2026-12-24..2026-12-25"], "lights_on": "17:00"},
        {"weekdays": ["fri"], "lights_on": "19:00"},
        {"season": "11-01..02-28", "lights_on": "17:30"},
    ]}])
    p = Planner(cfg)
    assert p.night("s", date(2026, 12, 25)).lights_on.time() == time(17, 0)   # a Friday, but dates come first
    assert p.night("s", date(2026, 12, 18)).lights_on.time() == time(19, 0)   # Friday
    assert p.night("s", date(2027, 1, 5)).lights_on.time() == time(17, 30)    # season over the new year
    assert date(2027, 3, 3).weekday() == 2
    assert p.night("s", date(2027, 3, 3)).lights_on.time() == time(18, 0)     # a Wednesday after the season
    assert p.night("s", date(2027, 2, 28)).lights_on.time() == time(17, 30)   # the season's last evening


def test_minimum_times_bridge_a_short_curfew_and_drop_a_short_return():
    cfg = site([{"id": "s", "lights_on": "18:00", "lights_off": "06:00", "curfew": {"from": "23:55", "until": "00:00"}},
                {"id": "r", "lights_on": "18:00", "lights_off": "05:00", "curfew": {"from": "23:00", "until": "04:55"}}],
               min_on_minutes=10, min_off_minutes=10)
    p = Planner(cfg)
    d = date(2026, 12, 1)
    start = datetime.combine(d, time(12), TZ)
    (only,) = p.intervals("C0", start, start + timedelta(hours=24))
    assert (only.start.time(), only.end.time()) == (time(18), time(6))        # 5 min of curfew bridged
    (first,) = p.intervals("C1", start, start + timedelta(hours=24))
    assert (first.start.time(), first.end.time()) == (time(18), time(23))     # 5 min at dawn dropped


def test_always_on_is_on_through_noon():
    cfg = site([{"id": "dark", "mode": "always_on"}])
    p = Planner(cfg)
    (iv,) = p.intervals("C0", datetime(2026, 12, 1, 0, tzinfo=TZ), datetime(2026, 12, 5, tzinfo=TZ))
    assert iv.start <= datetime(2026, 12, 1, tzinfo=TZ) and iv.end >= datetime(2026, 12, 5, tzinfo=TZ)


def test_cli_prints_the_days_switching_times(tmp_path):
    import subprocess
    import sys
    out = subprocess.run([sys.executable, "-m", "gateway", "lighting", "plan", "--date", "2026-12-21", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    import json
    data = json.loads(out.stdout)
    by = {c["circuit"]: c for c in data["circuits"]}
    assert len(by) == 112
    rise, set_ = astral_times(date(2026, 12, 21))
    assert datetime.fromisoformat(by["SL01"]["switches"][1]["at"]) == set_ + timedelta(minutes=10)
    assert by["B08-stair"]["on_at_midnight"] and by["B08-stair"]["switches"] == []
    bad = subprocess.run([sys.executable, "-m", "gateway", "lighting", "plan", "--date", "21.12.2026"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "--date" in bad.stderr


# ---- properties of every plan ----

def sun_moment(anchor):
    return st.integers(-120, 120).map(lambda k: f"{anchor}{k:+d}" if k else anchor)


def fixed(lo, hi):
    return st.integers(lo, hi).map(lambda m: f"{m // 60:02d}:{m % 60:02d}")


evening = st.one_of(sun_moment("sunset"), fixed(13 * 60, 24 * 60 - 1))
morning = st.one_of(sun_moment("sunrise"), fixed(0, 12 * 60 - 1))
clock = fixed(0, 24 * 60 - 1)
curfew = st.one_of(st.none(), st.builds(lambda a, b: {"from": a, "until": b}, clock, st.one_of(st.none(), clock)))


@st.composite
def schedules(draw, allow_always=True):
    s = {"id": "s", "lights_on": draw(evening), "lights_off": draw(morning)}
    c = draw(curfew)
    if c:
        s["curfew"] = {k: v for k, v in c.items() if v is not None}
    exceptions = []
    for _ in range(draw(st.integers(0, 2))):
        e = {"weekdays": draw(st.lists(st.sampled_from(["mon", "tue", "wed", "thu", "fri", "sat", "sun"]),
                                       min_size=1, max_size=3, unique=True))}
        choice = draw(st.sampled_from(["on", "curfew", "always_on", "always_off"] if allow_always
                                      else ["on", "curfew"]))
        if choice == "on":
            e["lights_on"] = draw(evening)
        elif choice == "curfew":
            e["curfew"] = "none"
        else:
            e["mode"] = choice
        exceptions.append(e)
    if exceptions:
        s["exceptions"] = exceptions
    return s


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=schedules(allow_always=False), start=st.dates(date(2026, 1, 1), date(2030, 12, 31)),
       lat=st.floats(-60, 60), min_on=st.integers(0, 60), min_off=st.integers(0, 60))
def test_every_night_ends_off_by_day(s, start, lat, min_on, min_off):
    p = Planner(site([s], lat=lat, min_on_minutes=min_on, min_off_minutes=min_off))
    for k in range(4):
        noon = datetime.combine(start + timedelta(days=k), time(12), TZ)
        assert not p.state_at("C0", noon)[0]
        for iv in p.intervals("C0", noon, noon + timedelta(days=1)):
            assert noon <= iv.start and iv.end <= noon + timedelta(days=1)   # within one night


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(s=schedules(), start=st.dates(date(2026, 1, 1), date(2030, 12, 31)), lat=st.floats(-60, 60),
       min_on=st.integers(0, 240), min_off=st.integers(0, 240))
def test_minimum_on_and_off_times_always_hold(s, start, lat, min_on, min_off):
    p = Planner(site([s], lat=lat, min_on_minutes=min_on, min_off_minutes=min_off))
    a = datetime.combine(start, time(0), TZ)
    ivs = p.intervals("C0", a, a + timedelta(days=8))
    inner = [iv for iv in ivs if iv.start > a and iv.end < a + timedelta(days=8)]   # not cut by the window
    for iv in inner:
        assert iv.length >= timedelta(minutes=min_on)
    for x, y in zip(ivs, ivs[1:]):
        assert y.start - x.end >= timedelta(minutes=min_off)
        assert x.end < y.start
    # the same plan whichever window asks: day by day agrees with the week at once
    for k in range(1, 7):
        t = a + timedelta(days=k, hours=3, minutes=17)
        assert p.state_at("C0", t)[0] == any(iv.start <= t < iv.end for iv in ivs)
