"""The console's pages (meters, patrol, access, allocation, health): the view functions on a real
ledger, and the real console over loopback with logins per role, JSON twins and English."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import stat
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import yaml
from yarl import URL

from gateway.billing.monthly import run_month
from gateway.clock import to_us
from gateway.config import load_site, parse_site
from gateway.events import CardSwipe, DeviceStatus, DoorEvent, PatrolCheckin, Reading
from gateway.rules import Engine
from gateway.ledger import Ledger
from gateway.web.app import WebContext
from gateway.web.auth import hash_password
from gateway.web.i18n import STRINGS
from gateway.web.server import listen, serve
from gateway.web.views import charts
from gateway.web.views.allocation import run_file
from gateway.web.views.health import clock_synced, health_view
from gateway.web.views.meters import daily_kwh, local_midnights, state_of
from gateway.web.views.patrol import judge, nearest_start, rounds_of_day, schedules

TZ = ZoneInfo("Asia/Shanghai")
D = Decimal
PASSWORDS = {"wang": ("guard", "pw-guard-1"), "li": ("electrician", "pw-elec-1"), "zhao": ("accountant", "pw-acct-1"),
             "boss": ("admin", "pw-admin-1")}
_HASHES = {name: hash_password(pw) for name, (_, pw) in PASSWORDS.items()}
USERS = [{"name": n, "role": role, "password_hash": _HASHES[n]} for n, (role, _) in PASSWORDS.items()]
CPS = ["CP01", "CP02", "CP03", "CP04"]
PATROL = {
    "checkpoints": [{"id": c, "tag": f"04A1B2C{i}", "name": f"{i + 1}号巡更点"} for i, c in enumerate(CPS)],
    "readers": [{"id": "pr-1", "type": "mqtt", "topic": "wanhu/patrol/pr-1"},
                {"id": "pr-2", "type": "mqtt", "topic": "wanhu/patrol/pr-2"}],
    # the rules tests' north route: 4 checkpoints, 4-minute legs, +-3 minutes
    "routes": [{"id": "north", "name": "北环线", "checkpoints": CPS, "leg_minutes": 4, "tolerance_minutes": 3,
                "shifts": [{"start": "20:00", "end": "06:00", "every_minutes": 120},
                           {"start": "06:00", "end": "20:00", "every_minutes": 240}]}],
}


def field_site(tmp_path: Path, **extra):
    data = {
        "site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15,
                 "longitude": 125.83},
        "storage": {"path": "gw.db"},
        "mqtt": {"host": "127.0.0.1", "port": 1883},
        "buses": [{"id": "bus-b01", "type": "modbus_tcp", "host": "127.0.0.1"},
                  {"id": "bus-guard", "type": "modbus_tcp", "host": "127.0.0.2"}],
        "meters": [
            {"id": "B01-stair", "name": "1号楼楼道照明", "bus": "bus-b01", "unit": 1, "model": "chint-ddsu666",
             "circuit": "stairwell_lighting", "building": "B01", "poll_s": 600},
            {"id": "P1-pump", "name": "1号泵房", "bus": "bus-b01", "unit": 2, "model": "chint-dtsu666",
             "circuit": "pump"},
            {"id": "GATE", "name": "北门道闸", "bus": "bus-guard", "unit": 3, "model": "chint-ddsu666",
             "circuit": "gate"},
        ],
        "doors": [{"id": "gate-n", "name": "北门"}, {"id": "gate-s", "name": "南门"}],
        "patrol": PATROL,
        "rules": [{"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["pr-1"]}],
        "users": USERS,
        **extra,
    }
    return parse_site(data, tmp_path)


def L(d: date, h: int, m: int, s: int = 0) -> datetime:
    return datetime.combine(d, time(h, m, s), TZ)


def checkin(reader: str, cp: str, ts: datetime) -> PatrolCheckin:
    return PatrolCheckin(reader, cp, "TAG", "李强", "g1", ts, ts, "online")


# ---- patrol: the schedule and the verdicts ---------------------------------------------------------

def test_patrol_status_edges_exactly_at_tolerance(tmp_path):
    route = schedules(field_site(tmp_path))[0]
    day = date(2026, 10, 15)
    reads = [(to_us(t), r, cp, "李强") for r, cp, t in [
        ("pr-1", "CP01", L(day, 10, 3)),              # exactly +T: on time
        ("pr-1", "CP02", L(day, 10, 7, 1)),           # +3 min 1 s: late
        ("pr-1", "CP03", L(day, 10, 4, 59)),          # -3 min 1 s: early
    ]]
    due4 = L(day, 10, 12)

    def statuses(now):
        rd = next(r for r in judge(route, day, reads, now, TZ) if r["start"] == "10:00")
        return [p["status"] for p in rd["checkpoints"]], rd

    at_deadline, rd = statuses(due4 + timedelta(minutes=3))
    assert at_deadline == ["on_time", "late", "early", "pending"]      # CP04 due 10:12, deadline not passed
    assert [p["due"] for p in rd["checkpoints"]] == ["10:00", "10:04", "10:08", "10:12"]
    assert rd["checkpoints"][1]["delta_min"] == 3.0 and rd["checkpoints"][0]["delta_min"] == 3.0
    after, _ = statuses(due4 + timedelta(minutes=3, seconds=1))
    assert after == ["on_time", "late", "early", "missed"]
    before, rd = statuses(L(day, 9, 0))
    assert before == ["on_time", "late", "early", "pending"] and rd["phase"] == "upcoming"
    # CP03 was recorded before CP02: out of order
    assert [p["out_of_order"] for p in rd["checkpoints"]] == [False, True, False, False]


def test_patrol_round_crossing_midnight_and_nearest_round(tmp_path):
    cfg = field_site(tmp_path, patrol={**PATROL, "routes": [
        {"id": "late", "checkpoints": CPS, "leg_minutes": 10, "tolerance_minutes": 3,
         "shifts": [{"start": "23:00", "end": "01:00", "every_minutes": 50}]}]},
        rules=[])
    route = schedules(cfg)[0]
    assert route.tolerance == timedelta(minutes=3) and route.readers == frozenset()
    d = date(2026, 10, 15)
    nxt = d + timedelta(days=1)
    # the 00:40 round of a day belongs to the shift that began the evening before
    assert [s.strftime("%m-%d %H:%M") for s in rounds_of_day(route, d, TZ)] == \
        ["10-15 00:40", "10-15 23:00", "10-15 23:50"]
    assert [s.strftime("%m-%d %H:%M") for s in rounds_of_day(route, nxt, TZ)] == \
        ["10-16 00:40", "10-16 23:00", "10-16 23:50"]
    # CP02 of the 23:50 round is due 00:00 the next day; a read at 00:01 belongs to that round,
    # not to the 00:40 round (due 00:50) nor to the 23:00 round (due 23:10)
    read = L(nxt, 0, 1)
    assert nearest_start(route, 1, read, TZ) == L(d, 23, 50)
    reads = [(to_us(read), "pr-9", "CP02", "")]
    rounds = judge(route, d, reads, L(nxt, 2, 0), TZ)
    r2350 = rounds[2]
    assert r2350["source"] == "late@2026-10-15T23:50"
    assert [p["status"] for p in r2350["checkpoints"]] == ["missed", "on_time", "missed", "missed"]
    assert [p["due"] for p in r2350["checkpoints"]] == ["23:50", "00:00", "00:10", "00:20"]
    assert all(p["status"] == "missed" for p in rounds[1]["checkpoints"])
    # the round listed on the next day does not take the read
    assert all(p["status"] == "missed" for p in judge(route, nxt, reads, L(nxt, 2, 0), TZ)[0]["checkpoints"])


def test_patrol_page_agrees_with_the_patrol_rule(tmp_path):
    """The same reads through the real rule engine: the rule's issues are the page's verdicts."""
    cfg = field_site(tmp_path)
    day = date(2026, 10, 15)
    reads = [checkin("pr-1", "CP01", L(day, 10, 0, 30)), checkin("pr-1", "CP02", L(day, 10, 7, 30)),
             checkin("pr-2", "CP03", L(day, 10, 8)),            # not a reader of the route's rule
             checkin("pr-1", "CP04", L(day, 10, 8, 30)), checkin("pr-1", "CP01", L(day, 14, 0)),
             checkin("pr-1", "CP02", L(day, 14, 4)), checkin("pr-1", "CP03", L(day, 14, 8)),
             checkin("pr-1", "CP04", L(day, 14, 12))]
    e = Engine(cfg, cfg.rules)
    t = L(day, 9, 50)
    e.tick(t)
    pending = sorted(reads, key=lambda c: c.ts)
    while t <= L(day, 15, 0):
        while pending and pending[0].ts <= t:
            e.handle(pending.pop(0))
        e.tick(t)
        t += timedelta(seconds=30)
    rows = [(to_us(c.ts), c.reader, c.checkpoint, c.guard) for c in reads]
    rounds = {r["source"]: r for r in judge(schedules(cfg)[0], day, rows, L(day, 15, 0), TZ)}
    for source in ("north@2026-10-15T10:00", "north@2026-10-15T14:00"):
        alert = e.book.get("pn", source)
        rule = sorted((i["what"], i.get("checkpoint", "")) for i in alert.details["issues"]) if alert else []
        page = sorted((p["status"], p["checkpoint"]) for p in rounds[source]["checkpoints"]
                      if p["status"] not in ("on_time", "pending"))
        page += sorted(("out_of_order", p["checkpoint"]) for p in rounds[source]["checkpoints"] if p["out_of_order"])
        assert sorted(page) == rule, source
    assert [p["status"] for p in rounds["north@2026-10-15T10:00"]["checkpoints"]] == \
        ["on_time", "late", "missed", "early"]


def test_wand_route_waits_for_a_download_before_calling_missed(tmp_path):
    cfg = field_site(tmp_path, patrol={**PATROL, "readers": [{"id": "wand-1", "type": "wand", "port": "/dev/null"}]},
                     rules=[{"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["wand-1"]}], mqtt=None)
    route = schedules(cfg)[0]
    assert route.wand and route.readers == {"wand-1"}
    day = date(2026, 10, 15)
    reads = [(to_us(L(day, 10, 0)), "wand-1", "CP01", "李强")]
    now = L(day, 13, 0)
    waiting = judge(route, day, reads, now, TZ, downloaded_us=to_us(L(day, 10, 1)))[4]
    assert waiting["start"] == "10:00" and waiting["awaiting_download"]
    assert [p["status"] for p in waiting["checkpoints"]] == ["on_time", "pending", "pending", "pending"]
    judged = judge(route, day, reads, now, TZ, downloaded_us=to_us(L(day, 12, 0)))[4]
    assert [p["status"] for p in judged["checkpoints"]] == ["on_time", "missed", "missed", "missed"]
    assert not judged["awaiting_download"]


def test_the_handover_judges_a_wand_route_with_its_download(tmp_path):
    """The handover's rounds (shift.patrol_rounds) wait for the wand's download as the patrol page
    does: before the download an unread checkpoint is pending, after it missed."""
    from gateway.maintenance.shift import patrol_rounds
    cfg = field_site(tmp_path, patrol={**PATROL, "readers": [{"id": "wand-1", "type": "wand", "port": "/dev/null"}]},
                     rules=[{"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["wand-1"]}], mqtt=None)
    day = date(2026, 10, 15)
    start, end, now = to_us(L(day, 8, 0)), to_us(L(day, 16, 0)), L(day, 16, 0)

    def ten_oclock(read: datetime, received: datetime) -> dict:
        ledger = Ledger(cfg.storage_path)
        ledger.add(PatrolCheckin("wand-1", "CP01", "TAG", "李强", "g1", read, received, "wand"))
        ledger.flush()
        ledger.close()
        db = sqlite3.connect(cfg.storage_path)
        try:
            return next(r for r in patrol_rounds(cfg, db, start, end, now) if r["start_us"] == to_us(L(day, 10, 0)))
        finally:
            db.close()

    waiting = ten_oclock(L(day, 10, 0), L(day, 10, 1))    # downloaded within the round: the rest unread yet
    assert waiting["counts"]["on_time"] == 1 and waiting["counts"]["pending"] == 3 and waiting["missed"] == []
    judged = ten_oclock(L(day, 14, 0), L(day, 14, 5))     # the next download, after the round: the rest missed
    assert judged["counts"]["on_time"] == 1 and judged["counts"]["missed"] == 3
    assert judged["missed"] == ["2号巡更点", "3号巡更点", "4号巡更点"]


# ---- meters: state, daily kWh, charts ------------------------------------------------------------

def test_meter_state_from_status_and_last_reading():
    assert state_of(None, None) == "never"
    assert state_of({"ts_us": 10}, None) == "online"
    assert state_of({"ts_us": 10}, {"online": False, "ts_us": 20}) == "offline"
    assert state_of({"ts_us": 30}, {"online": False, "ts_us": 20}) == "online"   # answered again
    assert state_of(None, {"online": False, "ts_us": 20}) == "offline"
    assert state_of(None, {"online": True, "ts_us": 20}) == "online"


def test_daily_kwh_with_gaps_and_a_counter_going_down(tmp_path):
    ledger = Ledger(tmp_path / "gw.db")
    first = date(2026, 10, 1)
    mids = local_midnights(TZ, first, 6)            # 1st .. 7th, 6 days
    gap_in_day = (L(date(2026, 10, 2), 9, 0), L(date(2026, 10, 2), 15, 0))
    gap_midnight = (L(date(2026, 10, 3), 22, 0), L(date(2026, 10, 4), 2, 0))
    reset = L(date(2026, 10, 5), 12, 0)
    t, c = L(date(2026, 9, 30), 23, 0), D("500.00")
    while t < L(date(2026, 10, 7), 0, 0):
        if not (gap_in_day[0] < t < gap_in_day[1] or gap_midnight[0] < t < gap_midnight[1]):
            shown = c - D("620.00") if t >= reset else c    # new meter from 0 at noon on the 5th
            ledger.add(Reading("M", t, {"energy_kwh": float(shown)}, {"energy_kwh": shown}))
        c += D("0.25")
        t += timedelta(minutes=15)
    ledger.flush()
    db = sqlite3.connect(tmp_path / "gw.db")
    days = daily_kwh(db, "M", mids, 20 * 60_000_000)
    assert [(d["status"], d["kwh"]) for d in days] == [
        ("ok", "24.00"),          # 96 quarters of 0.25
        ("ok", "24.00"),          # six hours without readings inside the day: the counter still tells
        ("gap", "22.25"),         # 23:45 the 2nd to 22:00: the last reading before midnight is 2 h old,
        ("gap", "25.75"),         # so those 2 hours count for the 4th (22:00 to 23:45)
        ("unknown", None),        # the counter went down at noon
        ("ok", "24.00"),
    ]
    before = daily_kwh(db, "M", local_midnights(TZ, date(2026, 9, 29), 2), 20 * 60_000_000)
    assert [d["status"] for d in before] == ["no_data", "no_data"]       # no counter before the 30th's end
    db.close()
    ledger.close()


def test_downsample_and_charts_break_at_gaps():
    pts = charts.downsample([(0, 1.0), (5, 3.0), (25, 10.0), (35, float("nan"))], 0, 40, 10)
    assert pts == [(5, 2.0), (15, None), (25, 10.0), (35, None)]
    svg = charts.line_chart([(0, 1.0), (10, 2.0), (20, None), (30, 3.0), (40, 4.0)], 0, 40_000_000, TZ, "t", "kW")
    assert svg.count("<polyline") == 2 and 'data-points="4"' in svg
    empty = charts.line_chart([], 0, 86_400_000_000, TZ, "<t>", "V", "无数据")
    assert "无数据" in empty and "<polyline" not in empty and "&lt;t&gt;" in empty
    bars = charts.bar_chart([("10-01", 3.5, "a"), ("10-02", None, "b"), ("10-03", 0.0, "c")], "kWh")
    assert 'data-bars="3"' in bars and 'data-unknown="1"' in bars and bars.count('class="unknown"') == 1


# ---- allocation files and health -----------------------------------------------------------------

def test_run_file_stays_inside_the_runs_directory(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "allocation-2026-10.csv").write_text("a,b\n")
    (tmp_path / "secret.csv").write_text("secret\n")
    os.symlink(tmp_path / "secret.csv", out / "allocation-2026-10.xlsx")
    run = {"month": "2026-10", "out_dir": str(out)}
    assert run_file(run, "csv") == (out / "allocation-2026-10.csv").resolve()
    assert run_file(run, "xlsx") is None                     # a link out of the directory
    assert run_file(run, "html") is None                     # gone
    assert run_file(run, "../secret") is None
    assert run_file({"month": "../../x", "out_dir": str(out)}, "csv") is None
    assert run_file(run, "csv", roots=[tmp_path / "elsewhere"]) is None
    assert run_file(run, "csv", roots=[tmp_path]) is not None


def test_clock_sync_answers(tmp_path):
    flag = tmp_path / "synchronized"
    flag.touch()
    assert clock_synced(flag) is True
    assert clock_synced(tmp_path / "nope", timedatectl=None) is None
    for answer, expected in (("no", False), ("yes", True), ("", None)):
        fake = tmp_path / f"timedatectl-{answer or 'empty'}"
        fake.write_text(f"#!/bin/sh\necho '{answer}'\n")
        fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
        assert clock_synced(tmp_path / "nope", timedatectl=str(fake)) is expected


def test_health_from_a_running_gateway(tmp_path):
    """Success rate and utilisation come from the gateway's live bus counters."""
    cfg = field_site(tmp_path)
    now = datetime(2026, 10, 15, 4, 0, tzinfo=timezone.utc)

    class Bus:
        def __init__(self, bus_id, polls, ok, busy):
            self.bus = type("B", (), {"id": bus_id})()
            self._s = {"bus": bus_id, "meters": 2, "online": 1, "offline": 1, "polls": polls, "ok": ok,
                       "failures": polls - ok, "busy_s": busy}

        def stats(self):
            return self._s

    class Gw:
        started_at = now - timedelta(seconds=1000)
        buses = [Bus("bus-b01", 200, 150, 250.0), Bus("bus-guard", 0, 0, 0.0)]
        ledger = type("Lg", (), {"outbox_depth": 7, "outbox_bytes": 1234})()

    ctx = WebContext(cfg, "k" * 32, gateway=Gw())
    h = health_view(ctx, None, now, None)
    b1, b2 = h["buses"]
    assert h["source"] == "live" and h["uptime"] == {"seconds": 1000, "of": "gateway"}
    assert b1["success_rate"] == 0.75 and b1["utilisation"] == 0.25
    assert b2["success_rate"] is None and b2["utilisation"] == 0.0
    assert h["outbox"]["depth"] == 7 and h["outbox"]["bytes"] == 1234
    assert h["clock"]["local"] == "2026-10-15 12:00:00" and h["clock"]["synchronized"] is None


def test_every_word_of_the_pages_is_translated_both_ways():
    here = Path(__file__).resolve().parents[1] / "gateway" / "web" / "templates"
    keys = set()
    for name in ("meters.html", "meter.html", "patrol.html", "access.html", "allocation.html", "health.html",
                 "_macros.html"):
        keys |= set(re.findall(r"t\('([a-z_0-9]+)'", (here / name).read_text(encoding="utf-8")))
    dynamic = {"circuit_": ["stairwell_lighting", "street_lighting", "lift", "pump", "gate", "main_supply", "other"],
               "state_": ["online", "offline", "never", "prepared", "reviewed", "approved", "superseded"],
               "sign_": ["reviewed", "approved"], "day_": ["gap", "unknown", "no_data"],
               "patrol_": ["on_time", "late", "early", "missed", "pending"], "round_": ["upcoming", "running", "over"],
               "cat_": ["resident", "staff", "visitor", "unknown", "revoked", "expired"], "dir_": ["in", "out"],
               "door_": ["forced_open", "held_open"], "uptime_": ["gateway", "console"], "source_": ["live", "ledger"]}
    for prefix, words in dynamic.items():
        keys.discard(prefix)
        keys |= {prefix + w for w in words}
    for lang in ("zh", "en"):
        assert not keys - set(STRINGS[lang]), lang
    assert STRINGS["zh"]["patrol_on_time"] == "准时" and STRINGS["zh"]["patrol_pending"] == "待巡"
    assert STRINGS["zh"]["patrol_late"] == "迟到" and STRINGS["zh"]["patrol_missed"] == "漏检"


# ---- the real console ----------------------------------------------------------------------------

@contextlib.asynccontextmanager
async def console(cfg, **ctx_kw):
    ctx = WebContext(cfg, "k" * 32, **ctx_kw)
    sock = listen("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    task = asyncio.create_task(serve(ctx, sock))
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(200):                       # until it answers (not a timing assertion)
                try:
                    async with s.get(base + "/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        yield base
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@contextlib.asynccontextmanager
async def logged_in(base: str, user: str, lang: str | None = None):
    async with aiohttp.ClientSession(base_url=None, cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
        async with s.get(base + "/login") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
        async with s.post(base + "/login", data={"user": user, "password": PASSWORDS[user][1], "csrf": csrf},
                          allow_redirects=False) as r:
            assert r.status == 303, await r.text()
        if lang:
            async with s.get(base + f"/lang/{lang}", allow_redirects=False) as r:
                assert r.status == 303
        yield s


async def get(s, url: str, status: int = 200) -> str:
    async with s.get(url, allow_redirects=False) as r:
        body = await r.text()
        assert r.status == status, (url, r.status, body[:300])
        return body


async def get_json(s, url: str, status: int = 200):
    async with s.get(url, allow_redirects=False) as r:
        assert r.status == status, (url, r.status)
        assert r.content_type == "application/json"
        return await r.json()


def main_of(html: str, page: str) -> str:
    """The page's main element (data-page) must be there, with an h1."""
    m = re.search(rf'<section data-page="{page}".*?</section>', html, re.S)
    assert m, f"no data-page={page}"
    assert "<h1>" in m.group(0)
    return m.group(0)


def rows_with(html: str, attr: str) -> list[str]:
    return re.findall(rf"<tr[^>]*{attr}[^>]*>.*?</tr>", html, re.S)


@pytest.fixture
def field(tmp_path):
    """The field site with a ledger: meters, swipes, door events, patrol reads, relative to now."""
    cfg = field_site(tmp_path)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    ledger = Ledger(cfg.storage_path)
    # B01-stair: a reading every 10 minutes for 8 days; a new meter (counter from 0) 3 days ago at noon
    today = now.astimezone(TZ).date()
    reset = L(today - timedelta(days=3), 12, 0)
    n = 8 * 144
    for i in range(n, 0, -1):
        ts = now - timedelta(minutes=10 * i)
        k = n - i
        counter = D("1000.0") + D("0.1") * k
        if ts >= reset:
            counter -= D("900.0")
        ledger.add(Reading("B01-stair", ts, {"voltage_v": 220.0 + k % 5, "current_a": 2.0, "power_kw": 0.44,
                                             "energy_kwh": float(counter)}, {"energy_kwh": counter}))
    last = D("1000.0") + D("0.1") * n - D("900.0")
    ledger.add(Reading("B01-stair", now - timedelta(seconds=20), {"voltage_v": 221.5, "current_a": 2.25,
                                                                   "power_kw": 0.495, "energy_kwh": float(last)},
                       {"energy_kwh": last}))
    ledger.add(DeviceStatus("B01-stair", "meter", True, now - timedelta(days=8, minutes=5), "first answer"))
    # P1-pump (three-phase): heard 10 minutes ago, offline since 5 minutes ago
    ledger.add(Reading("P1-pump", now - timedelta(minutes=10), {"voltage_l1_v": 231.5, "voltage_l2_v": 230.0,
                                                                 "current_l1_a": 4.125, "power_kw": 2.75,
                                                                 "energy_kwh": 5000.5},
                       {"energy_kwh": D("5000.50")}))
    ledger.add(DeviceStatus("P1-pump", "meter", False, now - timedelta(minutes=5), "no answer 3 times"))
    # swipes: 205 residents, then the interesting ones newest
    for i in range(205):
        ledger.add(CardSwipe("gate-n-in", "gate-n", "in", now - timedelta(hours=5, minutes=i), f"00000{i:05d}",
                             f"h{i}", "resident", "张三", "B01-1-101", "resident"))
    for i, (cat, door, holder) in enumerate([("unknown", "gate-n", ""), ("revoked", "gate-s", "王五"),
                                             ("expired", "gate-n", "赵六"), ("visitor", "gate-s", "访客甲"),
                                             ("resident", "gate-s", "李四")]):
        ledger.add(CardSwipe("acs", door, "out" if door == "gate-s" else "in", now - timedelta(minutes=30 + i),
                             f"12345678{i}9", f"x{i}", cat, holder, "B02-1-201" if holder else "", ""))
    ledger.add(DoorEvent("gate-n", "forced_open", now - timedelta(hours=1), "mqtt"))
    ledger.add(DoorEvent("gate-n", "opened", now - timedelta(minutes=50), "mqtt"))
    ledger.add(DoorEvent("gate-s", "held_open", now - timedelta(days=2), "mqtt"))
    # patrol on 2026-10-15, round 10:00: on time, late, pr-2's read does not count (missed), early
    day = date(2026, 10, 15)
    for c in (checkin("pr-1", "CP01", L(day, 10, 0, 30)), checkin("pr-1", "CP02", L(day, 10, 7, 30)),
              checkin("pr-2", "CP03", L(day, 10, 8)), checkin("pr-1", "CP04", L(day, 10, 8, 30))):
        ledger.add(c)
    ledger.flush()
    ledger.close()
    db = sqlite3.connect(cfg.storage_path)
    with db:
        db.executemany("INSERT INTO outbox (measurement, priority, ts_ms, line, essential) VALUES (?,?,?,?,?)",
                       [("meter", 1, 0, "meter v=1 1", None), ("meter", 1, 0, "meter v=22 2", None)])
    db.close()
    return cfg, now


async def test_meters_pages_and_api(field):
    cfg, now = field
    async with console(cfg) as base, logged_in(base, "li") as s:
        main = main_of(await get(s, base + "/meters"), "meters")
        rows = {re.search(r'data-meter="([^"]+)"', r).group(1): r for r in rows_with(main, "data-meter")}
        assert list(rows) == ["B01-stair", "P1-pump", "GATE"]
        assert 'data-state="online"' in rows["B01-stair"] and "在线" in rows["B01-stair"]
        assert all(v in rows["B01-stair"] for v in ("221.5", "2.25", "0.495", "215.2", "秒前"))
        assert 'data-state="offline"' in rows["P1-pump"] and "231.5" in rows["P1-pump"] and "4.12" in rows["P1-pump"]
        assert 'data-state="never"' in rows["GATE"] and "从未通信" in rows["GATE"]
        assert "共 2 块：在线 1，离线 1，从未通信 0" in main                 # bus-b01's heading
        data = await get_json(s, base + "/api/meters")
        b01 = {m["id"]: m for m in data["buses"][0]["meters"]}
        assert (data["online"], data["offline"], data["never"]) == (1, 1, 1)
        assert b01["B01-stair"]["voltage"] == 221.5 and b01["B01-stair"]["energy_kwh"] == "215.2"
        assert b01["B01-stair"]["age_s"] == pytest.approx(20, abs=120)
        assert b01["P1-pump"]["voltage_field"] == "voltage_l1_v" and b01["P1-pump"]["state"] == "offline"
        assert b01["P1-pump"]["status_reason"] == "no answer 3 times"

        page = main_of(await get(s, base + "/meters/B01-stair"), "meter")
        svgs = re.findall(r'<svg class="chart (\w+)".*?</svg>', page, re.S)
        assert svgs == ["line"] * 4 + ["bars"]
        points = [int(x) for x in re.findall(r'data-points="(\d+)"', page)]
        # polled every 10 minutes: 20-minute means (two polls each) over 24 h and 7 d
        assert 71 <= points[0] <= 73 and 7 * 72 - 1 <= points[2] <= 7 * 72 + 1
        days = dict(re.findall(r'data-day="([\d-]+)" data-status="(\w+)"', page))
        today = now.astimezone(TZ).date()
        assert days[(today - timedelta(days=3)).isoformat()] == "unknown"
        assert days[(today - timedelta(days=2)).isoformat()] == "ok"
        assert days[(today - timedelta(days=20)).isoformat()] == "no_data"
        assert "电表读数回退" in page
        detail = await get_json(s, base + "/api/meters/B01-stair")
        daily = {d["date"]: d for d in detail["daily"]}
        assert len(detail["daily"]) == 30 and detail["daily"][-1]["partial"]
        assert daily[(today - timedelta(days=2)).isoformat()]["kwh"] == "14.4"
        assert daily[(today - timedelta(days=3)).isoformat()]["kwh"] is None
        assert detail["values"]["voltage_v"] == 221.5 and len(detail["series"]["power_7d"]) == 7 * 72 + 1
        await get(s, base + "/meters/NOPE", 404)
        assert (await get_json(s, base + "/api/meters/NOPE", 404)) == {"error": "not_found"}


async def test_patrol_page_today_and_a_past_day(field):
    cfg, now = field
    async with console(cfg) as base, logged_in(base, "wang") as s:
        main = main_of(await get(s, base + "/patrol?date=2026-10-15"), "patrol")
        rd = re.search(r'data-round="north@2026-10-15T10:00".*?</table>', main, re.S).group(0)
        got = re.findall(r'data-checkpoint="(CP\d+)" data-status="(\w+)"', rd)
        assert got == [("CP01", "on_time"), ("CP02", "late"), ("CP03", "missed"), ("CP04", "early")]
        for word in ("准时", "迟到", "漏检", "早到", "10:07:30", "+3.5"):
            assert word in rd, word
        assert main.count("data-round=") == 9                       # 00:00 02:00 04:00 06:00 10:00 ... 22:00
        data = await get_json(s, base + "/api/patrol?date=2026-10-15")
        route = data["routes"][0]
        assert route["id"] == "north" and route["tolerance_min"] == 3
        assert [r["start"] for r in route["rounds"]] == ["00:00", "02:00", "04:00", "06:00", "10:00", "14:00",
                                                         "18:00", "20:00", "22:00"]
        r14 = route["rounds"][5]
        assert r14["counts"]["missed"] == 4 and r14["phase"] == "over"
        later = (now.astimezone(TZ).date() + timedelta(days=2)).isoformat()
        future = await get_json(s, base + f"/api/patrol?date={later}")
        assert {p["status"] for r in future["routes"][0]["rounds"] for p in r["checkpoints"]} == {"pending"}
        assert "待巡" in await get(s, base + f"/patrol?date={later}")
        today = await get_json(s, base + "/api/patrol?date=not-a-date")
        assert today["today"] and today["date"] == now.astimezone(TZ).date().isoformat()
    async with console(cfg) as base, logged_in(base, "wang", lang="en") as s:
        main = main_of(await get(s, base + "/patrol?date=2026-10-15"), "patrol")
        rd = re.search(r'data-round="north@2026-10-15T10:00".*?</table>', main, re.S).group(0)
        for word in (">on time<", ">late<", ">missed<", ">early<"):
            assert word in rd, word
        assert "准时" not in main and "Patrol" in main


async def test_access_page_highlights_denied_swipes_and_door_alarms(field):
    cfg, now = field
    async with console(cfg) as base, logged_in(base, "wang") as s:
        main = main_of(await get(s, base + "/access"), "access")
        swipes = rows_with(main, "data-category")
        assert len(swipes) == 200
        cats = [re.search(r'data-category="(\w+)"', r).group(1) for r in swipes[:6]]
        assert cats == ["unknown", "revoked", "expired", "visitor", "resident", "resident"]   # newest first
        assert [('class="denied"' in r) for r in swipes[:5]] == [True, True, True, False, False]
        assert "未登记卡" in swipes[0] and "…7809" in swipes[0] and "1234567809" not in main
        assert "王五" in swipes[1] and "B02-1-201" in swipes[1] and "南门" in swipes[1] and "出" in swipes[1]
        alarms = rows_with(main, "data-door=")
        assert len(alarms) == 1 and "强行开门" in alarms[0] and "北门" in alarms[0]
        data = await get_json(s, base + "/api/access?door=gate-s")
        assert [x["category"] for x in data["swipes"]] == ["revoked", "visitor", "resident"]
        assert all(x["door"] == "gate-s" for x in data["swipes"])
        data = await get_json(s, base + "/api/access?category=unknown")
        assert len(data["swipes"]) == 1 and data["swipes"][0]["denied"] and data["swipes"][0]["card_tail"] == "7809"
        assert [a["state"] for a in data["door_alarms"]] == ["forced_open"]
        filtered = main_of(await get(s, base + "/access?category=expired&door=gate-n"), "access")
        assert len(rows_with(filtered, "data-category")) == 1 and '<option value="expired" selected>' in filtered
    async with console(cfg) as base, logged_in(base, "boss", lang="en") as s:
        main = main_of(await get(s, base + "/access"), "access")
        assert "unknown card" in main and "forced open" in main and "未登记卡" not in main


async def test_health_page_from_the_ledger(field):
    cfg, now = field
    async with console(cfg) as base, logged_in(base, "wang") as s:
        before = (await get_json(s, base + "/api/health"))["clock"]["local"]
        main = main_of(await get(s, base + "/health"), "health")
        assert 'data-source="ledger"' in main and "来自台账" in main
        buses = rows_with(main, "data-bus")
        assert len(buses) == 2 and "bus-b01" in buses[0]
        data = await get_json(s, base + "/api/health")
        assert data["source"] == "ledger"
        assert [(b["id"], b["meters"], b["online"], b["offline"]) for b in data["buses"]] == \
            [("bus-b01", 2, 1, 1), ("bus-guard", 1, 0, 0)]
        assert data["outbox"]["depth"] == 2 and data["outbox"]["bytes"] == len("meter v=1 1") + len("meter v=22 2")
        assert data["ledger"]["bytes"] >= cfg.storage_path.stat().st_size > 0
        assert data["disk"]["total"] > data["disk"]["free"] > 0
        assert data["clock"]["timezone"] == "Asia/Shanghai" and data["clock"]["synchronized"] in (True, False, None)
        # the page's local time is the clock's, read between the two JSON reads (a second may tick)
        shown = re.search(r"本地时间: (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", main)
        assert shown and before <= shown.group(1) <= data["clock"]["local"]
        assert data["uptime"]["of"] == "console"


async def test_each_role_sees_only_its_pages(field):
    cfg, _ = field
    async with console(cfg) as base:
        async with aiohttp.ClientSession() as anon:
            assert (await get_json(anon, base + "/api/patrol", 401)) == {"error": "login required"}
            async with anon.get(base + "/meters", allow_redirects=False) as r:
                assert r.status == 303 and r.headers["location"].startswith("/login")
        async with logged_in(base, "zhao") as s:                   # accountant
            assert "您的角色无权进行此操作" in await get(s, base + "/meters", 403)
            for url in ("/api/meters", "/api/patrol", "/api/access", "/meters/B01-stair"):
                await get(s, base + url, 403)
            await get(s, base + "/allocation")
            await get(s, base + "/health")
        async with logged_in(base, "wang") as s:                   # guard
            for url in ("/allocation", "/api/allocation", "/allocation/2026-10/download/csv", "/meters"):
                await get(s, base + url, 403)
            for url in ("/patrol", "/access", "/health"):
                await get(s, base + url)
        async with logged_in(base, "li") as s:                     # electrician
            await get(s, base + "/allocation", 403)
            for url in ("/meters", "/patrol", "/access", "/health"):
                await get(s, base + url)


async def test_pages_before_the_ledger_exists(tmp_path):
    cfg = field_site(tmp_path)
    assert not cfg.storage_path.exists()
    async with console(cfg) as base, logged_in(base, "boss") as s:
        assert 'data-state="never"' in main_of(await get(s, base + "/meters"), "meters")
        assert "无数据" in main_of(await get(s, base + "/meters/GATE"), "meter")
        assert "漏检" in main_of(await get(s, base + "/patrol?date=2026-10-15"), "patrol")
        assert "没有刷卡记录" in main_of(await get(s, base + "/access"), "access")
        assert "还没有分摊结果" in main_of(await get(s, base + "/allocation"), "allocation")
        assert (await get_json(s, base + "/api/health"))["ledger"]["bytes"] is None
        main_of(await get(s, base + "/health"), "health")


# ---- allocation ----------------------------------------------------------------------------------

BILLING = """
site: {id: t, name: 测试小区, timezone: Asia/Shanghai, latitude: 44.15, longitude: 125.83}
storage: {path: gw.db}
buses: [{id: b1, type: modbus_tcp, host: 127.0.0.1}]
meters:
  - {id: A-stair, bus: b1, unit: 1, model: chint-ddsu666, circuit: stairwell_lighting, building: A}
  - {id: SL1, bus: b1, unit: 4, model: chint-ddsu666, circuit: street_lighting}
tariffs:
  - {name: flat, valid_from: 2026-01-01, price: '0.50'}
allocation:
  groups:
    - {id: stair, name: 楼道照明, scope: building, circuits: [stairwell_lighting], key: area}
    - {id: estate, name: 路灯, scope: estate, circuits: [street_lighting], key: area}
"""
HOUSEHOLDS = "id,building,unit,room,floor_area_m2,occupied\nA-1-101,A,1,101,60.5,1\nA-1-102,A,1,102,80,1\n"


@pytest.fixture
def billed(tmp_path):
    data = yaml.safe_load(BILLING)
    data["users"] = USERS
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    (tmp_path / "households.csv").write_text(HOUSEHOLDS, encoding="utf-8")
    cfg = load_site(tmp_path / "site.yaml")
    ledger = Ledger(cfg.storage_path)
    start = datetime(2026, 9, 30, 15, 0, tzinfo=timezone.utc)            # an hour before October, local
    for meter, use in (("A-stair", D("0.10")), ("SL1", D("2.00"))):
        c, t = D("1000.00"), start
        while t <= start + timedelta(days=31, hours=2):
            ledger.add(Reading(meter, t, {"energy_kwh": float(c)}, {"energy_kwh": c}))
            c += use
            t += timedelta(minutes=15)
    ledger.flush()
    ledger.close()
    out = tmp_path / "reports"
    run_month(cfg, "2026-10", tmp_path / "first")                        # an earlier run of the month
    run_month(cfg, "2026-10", out, bill=D("3200.00"))
    return cfg, out


async def test_allocation_summary_report_and_downloads(billed, tmp_path):
    cfg, out = billed
    async with console(cfg) as base, logged_in(base, "zhao") as s:
        main = main_of(await get(s, base + "/allocation"), "allocation")
        # 31 days x 96 quarters x (0.10 + 2.00) kWh at 0.50 yuan
        assert re.search(r'data-field="metered_cost">3124.80 元', main)
        assert re.search(r'data-field="bill">3200.00 元', main)
        assert re.search(r'data-field="difference">75.20 元', main)
        assert re.search(r'data-field="recovered">3200.00 元', main)
        assert re.search(r'data-field="households">2<', main) and re.search(r'data-field="quality">0<', main)
        assert "楼道照明" in main and "路灯" in main and 'data-files="missing"' not in main
        # neither run is approved: the month is the newer, shown as a draft and never as "the" month
        assert 'data-run-state="draft"' in main and "草稿，未批准：第 2 次分摊" in main
        data = await get_json(s, base + "/api/allocation")
        assert data["months"] == ["2026-10"] and data["run"] is None and data["draft"]["bill"] == "3200.00"
        assert data["draft"]["out_dir"] == str(out.resolve())          # the latest run of the month
        assert {g["id"] for g in data["draft"]["groups"]} == {"stair-A", "estate"}
        assert [(h["id"], h["state"], h["answer"]) for h in data["history"]] == [(2, "prepared", True),
                                                                                 (1, "prepared", False)]
        for kind, ctype in (("csv", "text/csv"), ("xlsx", "application/vnd.openxmlformats-officedocument"
                                                           ".spreadsheetml.sheet")):
            assert f'data-download="{kind}"' in main
            async with s.get(base + f"/allocation/2026-10/download/{kind}") as r:
                assert r.status == 200 and r.content_type == ctype
                assert f'filename="allocation-2026-10.{kind}"' in r.headers["content-disposition"]
                assert r.headers["content-disposition"].startswith("attachment")
                assert await r.read() == (out / f"allocation-2026-10.{kind}").read_bytes()
        async with s.get(base + "/allocation/2026-10/report") as r:
            assert r.status == 200 and r.content_type == "text/html"
            assert await r.read() == (out / "allocation-2026-10.html").read_bytes()
            # a self-contained file with its own <style>: inline style allowed, no script at all
            csp = r.headers["content-security-policy"]
            assert "default-src 'none'" in csp and "script-src" not in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff" and r.headers["cache-control"] == "no-store"
        # nothing outside the run's directory, whatever the URL says
        (tmp_path / "secret.csv").write_text("secret\n")
        for url in ("/allocation/..%2F..%2Fetc/download/csv", "/allocation/2026-10/download/..%2F..%2Fsecret.csv",
                    "/allocation/2026-10/download/passwd", "/allocation/2026-13/download/csv",
                    "/allocation/2026-09/download/csv", "/allocation/%2E%2E/report"):
            async with s.get(URL(base + url, encoded=True), allow_redirects=False) as r:
                assert r.status == 404, url
                assert b"secret" not in await r.read()
        (out / "allocation-2026-10.csv").unlink()
        os.symlink(tmp_path / "secret.csv", out / "allocation-2026-10.csv")
        (out / "allocation-2026-10.xlsx").unlink()
        main = main_of(await get(s, base + "/allocation?month=2026-10"), "allocation")
        assert 'data-files="missing"' in main and "报告文件已不存在" in main
        assert 'data-download="csv"' not in main and 'data-download="xlsx"' not in main
        assert "报告文件已不存在" in await get(s, base + "/allocation/2026-10/download/csv", 404)
        await get(s, base + "/allocation/2026-10/download/xlsx", 404)
        await get(s, base + "/allocation/2026-10/report")           # the HTML report is still there
        assert "还没有分摊结果" in main_of(await get(s, base + "/allocation?month=2026-09"), "allocation")
    async with console(cfg) as base, logged_in(base, "boss", lang="en") as s:
        main = main_of(await get(s, base + "/allocation"), "allocation")
        assert "Metered cost" in main and "3124.80 yuan" in main and "The report files are gone" in main


async def printed(path: Path, text: str, timeout: float = 20.0) -> None:
    """Wait until a report printed again after a sign-off says `text` (a wait, not a timing)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in path.read_text(encoding="utf-8"):
        assert loop.time() < deadline, f"{path.name} does not say {text!r}"
        await asyncio.sleep(0.05)


async def post_sign(s, base: str, run: int, role: str, status: int = 303, csrf: str | None = None) -> str:
    if csrf is None:
        async with s.get(base + "/allocation") as r:
            csrf = re.search(r'name="csrf" value="([^"]+)"', await r.text()).group(1)
    async with s.post(base + f"/allocation/runs/{run}/sign", data={"role": role, "csrf": csrf},
                      allow_redirects=False) as r:
        body = await r.text()
        assert r.status == status, (run, role, r.status, body[:300])
        return body


async def test_the_accountant_reviews_and_approves_runs(billed, tmp_path):
    """Only an approved run is the month; approving needs a review first; a newer approval
    supersedes the month's older runs; every step is signed with the user's name and time."""
    cfg, out = billed
    first = tmp_path / "first"
    async with console(cfg) as base:
        for user in ("wang", "li"):                                    # guard, electrician: not theirs
            async with logged_in(base, user) as s:
                await post_sign(s, base, 1, "reviewed", 403)
        async with logged_in(base, "zhao") as s:
            await post_sign(s, base, 1, "reviewed", 403, csrf="forged")
            assert "请先审核，再批准" in await post_sign(s, base, 1, "approved", 409)
            main = main_of(await get(s, base + "/allocation"), "allocation")
            assert 'data-sign="reviewed"' in main and 'data-sign="approved"' not in main
            # the older run is reviewed and approved: it is the month, the newer one a draft beside it
            await post_sign(s, base, 1, "reviewed")
            assert "已经签过了" in await post_sign(s, base, 1, "reviewed", 409)
            main = main_of(await get(s, base + "/allocation"), "allocation")
            assert 'data-sign="approved"' in main
            await post_sign(s, base, 1, "approved")
            data = await get_json(s, base + "/api/allocation")
            assert data["run"]["id"] == 1 and data["run"]["state"] == "approved" and data["answer"] == 1
            assert data["run"]["signoffs"]["reviewed"]["by"] == "zhao"
            assert data["run"]["signoffs"]["approved"]["by"] == "zhao"
            assert data["draft"]["id"] == 2 and data["draft"]["state"] == "prepared"
            main = main_of(await get(s, base + "/allocation"), "allocation")
            assert 'data-run-state="approved"' in main and 'data-draft="2"' in main
            assert re.search(r'data-field="bill">未录入', main)           # the approved run had no bill
            # the month's files are now the approved run's, printed again with its sign-off (after the answer)
            await printed(first / "allocation-2026-10.html", "已批准")
            html = await get(s, base + "/allocation/2026-10/report")
            assert "已批准" in html and re.search(r"<td>批准</td><td>zhao</td><td>\d{4}-\d\d-\d\d \d\d:\d\d</td>", html)
            assert html == (first / "allocation-2026-10.html").read_text(encoding="utf-8")
            assert html == (first / "allocation-2026-10-run1.html").read_text(encoding="utf-8")
        async with logged_in(base, "boss") as s:                       # an admin approves the newer run
            await post_sign(s, base, 2, "reviewed")
            await post_sign(s, base, 2, "approved")
            data = await get_json(s, base + "/api/allocation")
            assert data["run"]["id"] == 2 and data["draft"] is None
            assert [(h["id"], h["state"], h["superseded_by"]) for h in data["history"]] == [
                (2, "approved", None), (1, "superseded", 2)]
            assert "已被本月更新的批准结果取代" in await post_sign(s, base, 1, "approved", 409)
            # run 1's own report says it is superseded; its old month files in its own directory too
            for path in (first / "allocation-2026-10-run1.html", first / "allocation-2026-10.html"):
                await printed(path, "已作废")
                assert "已作废:本次分摊已被第 2 次分摊取代" in path.read_text(encoding="utf-8"), path
            own = await get(s, base + "/allocation/runs/1/report")
            assert "已作废" in own
            async with s.get(base + "/allocation/runs/2/download/csv") as r:
                assert r.status == 200 and 'filename="allocation-2026-10-run2.csv"' in r.headers["content-disposition"]
                assert await r.read() == (out / "allocation-2026-10-run2.csv").read_bytes()
            for url in ("/allocation/runs/99/download/csv", "/allocation/runs/2/download/passwd",
                        "/allocation/runs/x/report"):
                await get(s, base + url, 404)
            assert "没有这次分摊" in await post_sign(s, base, 99, "reviewed", 404)
        async with logged_in(base, "zhao") as s:
            data = await get_json(s, base + "/api/allocation")
            assert data["run"]["signoffs"]["approved"]["by"] == "boss"


async def test_every_page_says_when_the_clock_is_not_trusted(field):
    """While the gateway's clock is untrusted the rules hold their judgement (gateway/timesync.py):
    the people on duty must see that on every page, and the banner goes once it is trusted."""
    from types import SimpleNamespace

    from gateway.hub import Hub
    cfg, now = field
    ts = SimpleNamespace(trusted=False, reason="the clock says 1970-01-01")
    gw = SimpleNamespace(timesync=ts, rules=None, hub=Hub(), buses=[], ledger=None, clock=None, started_at=None)
    async with console(cfg, gateway=gw) as base, logged_in(base, "wang") as s:
        for page in ("/alarms", "/patrol", "/access"):
            html = await get(s, base + page)
            assert 'id="clock-banner"' in html and "告警暂停判断" in html and "强行开门照常报警" in html and "1970-01-01" in html, page
        async with s.get(base + "/lang/en", allow_redirects=False):
            pass
        assert "time-based alarms (patrol, offline meters ...) are held back" in await get(s, base + "/alarms")
        ts.trusted = True
        assert 'id="clock-banner"' not in await get(s, base + "/alarms")
