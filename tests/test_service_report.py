"""The monthly service and safety report (issue 16, step 5): its figures recomputed here from the
ledger with plain SQL (or from what the generator meant to write, where the report judges
patrol rounds), its HTML with server-side SVG, its XLSX, its InfluxDB points, English, the CLI
and the admin's console page."""

from __future__ import annotations

import math
import re
import sqlite3
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import openpyxl
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gateway.cli import app
from gateway.clock import from_us
from gateway.ledger import Ledger
from gateway.ledger import service as rm
from gateway.ledger.queries import read_only
from gateway.maintenance.service_points import outbox_rows
from gateway.maintenance.service_render import render_html, write_all
from gateway.maintenance.service_report import (DAY_US, alarm_kinds, build, month_bounds, percentile,
                                                previous_months)
from gateway.maintenance.service_run import run_service
from service_history import REPEAT_DEVICE, example_site, generate, intent_by

AS_OF = datetime(2026, 12, 2, 3, 0, tzinfo=timezone.utc)
MONTH = "2026-11"
TZ = ZoneInfo("Asia/Shanghai")
SVG = "{http://www.w3.org/2000/svg}"


def nearest_rank(xs: list[float], q: float) -> float | None:
    """The definition, by brute force: the smallest value with at least q % of them at or below it."""
    return next((v for v in sorted(xs) if sum(1 for w in xs if w <= v) * 100 >= q * len(xs)), None)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("service")
    data, cfg = example_site(tmp / "ledger.db")
    intent = generate(cfg, ["2026-09", "2026-10", MONTH], seed=7, as_of=AS_OF)
    with read_only(cfg.storage_path) as db:
        report = build(cfg, db, MONTH, AS_OF, trend=2)
    return {"tmp": tmp, "data": data, "cfg": cfg, "intent": intent, "report": report,
            "bounds": month_bounds(MONTH, TZ)}


def rows(cfg, sql: str, args=()) -> list[tuple]:
    db = sqlite3.connect(cfg.storage_path)
    try:
        return db.execute(sql, args).fetchall()
    finally:
        db.close()


def test_alarms_by_kind_with_times_to_acknowledge_and_clear(site):
    cfg, r = site["cfg"], site["report"]
    start, end = site["bounds"]
    raw = rows(cfg, "SELECT kind, raised_us, acked_us, cleared_us FROM alerts WHERE raised_us >= ? AND raised_us < ?",
               (start, end))
    assert len(raw) > 50 and any(a is not None and a >= end for _, _, a, _ in raw), "an alarm acked next month"
    by = defaultdict(list)
    for row in raw:
        by[row[0]].append(row)
    assert {a.kind: a.raised for a in r.alarms} == {k: len(v) for k, v in by.items()}
    for a in r.alarms + [r.alarm_total]:
        mine = by[a.kind] if a.kind else raw
        acks = [(x[2] - x[1]) / 1e6 for x in mine if x[2] is not None]
        clears = [(x[3] - x[1]) / 1e6 for x in mine if x[3] is not None]
        assert (a.raised, a.acked, a.cleared, a.open) == (len(mine), len(acks), len(clears), len(mine) - len(clears))
        assert (a.to_ack.p50, a.to_ack.p90) == (nearest_rank(acks, 50), nearest_rank(acks, 90))
        assert (a.to_clear.p50, a.to_clear.p90) == (nearest_rank(clears, 50), nearest_rank(clears, 90))


def test_orders_by_category_against_their_targets(site):
    cfg, r = site["cfg"], site["report"]
    start, end = site["bounds"]
    cats = {c.id: c for c in cfg.maintenance.categories}
    raw = rows(cfg, "SELECT category, clock_us, on_site_us, done_us, state, satisfaction, reopened FROM repair_orders "
                    "WHERE created_us >= ? AND created_us < ?", (start, end))
    as_of = AS_OF.timestamp() * 1e6
    want: dict = defaultdict(Counter)
    for cat, clock, on_site, done, state, sat, reopened in raw:
        c = cats[cat]
        respond_due, repair_due = clock + c.respond_minutes * 60e6, clock + c.repair_hours * 3600e6
        for w in (want[cat], want[""]):
            w["created"] += 1
            w["resp_missed"] += (on_site if on_site is not None else as_of) > respond_due
            w["resp_ok"] += on_site is not None and on_site <= respond_due
            w["rep_missed"] += (done if done is not None else as_of) > repair_due
            w["rep_ok"] += done is not None and done <= repair_due
            w["open"] += state in ("new", "assigned", "on_site", "reopened")
            w["reopened"] += bool(reopened)
    assert want[""]["resp_missed"] and want[""]["rep_missed"] and want[""]["open"], "late and open orders"
    got = {o.category: o for o in r.orders + [r.order_total]}
    assert set(got) == set(want)
    for cat, w in want.items():
        o = got[cat]
        assert (o.created, o.response_on_time, o.response_missed, o.repair_on_time, o.repair_missed, o.open,
                o.reopened) == (w["created"], w["resp_ok"], w["resp_missed"], w["rep_ok"], w["rep_missed"],
                                w["open"], w["reopened"])
        mine = [x for x in raw if x[0] == cat or not cat]
        resp = [(x[2] - x[1]) / 1e6 for x in mine if x[2] is not None]
        assert (o.response.n, o.response.p50, o.response.p90) == (len(resp), nearest_rank(resp, 50),
                                                                  nearest_rank(resp, 90))
        sats = [x[5] for x in mine if x[5] is not None]
        assert o.satisfaction == (pytest.approx(sum(sats) / len(sats)) if sats else None)


def test_repeat_faults_three_in_ninety_days(site):
    cfg, r = site["cfg"], site["report"]
    start, end = site["bounds"]
    span = 90 * DAY_US
    # for each order of the month naming a device: its device's orders in (created - 90 d, created]
    raw = rows(cfg, "SELECT o.device, o.id, (SELECT count(*) FROM repair_orders p WHERE p.device = o.device AND "
                    "p.created_us > o.created_us - ? AND p.created_us <= o.created_us) FROM repair_orders o "
                    "WHERE o.device != '' AND o.created_us >= ? AND o.created_us < ?", (span, start, end))
    most: dict[str, int] = {}
    for device, _, n in raw:
        most[device] = max(most.get(device, 0), n)
    assert {d.device: d.in_window for d in r.repeats} == {d: n for d, n in most.items() if n >= 2}
    assert {d.device for d in r.repeats if d.flagged} == {d for d, n in most.items() if n >= 3}
    assert REPEAT_DEVICE in {d.device for d in r.repeats if d.flagged}
    assert {d.device: d.in_month for d in r.repeats} == {d: c for d, c in Counter(x[0] for x in raw).items()
                                                         if most[d] >= 2}


def test_inspections_done_on_time(site):
    cfg, r = site["cfg"], site["report"]
    start, end = site["bounds"]
    raw = rows(cfg, "SELECT plan, count(*), count(CASE WHEN done_us <= due_us THEN 1 END), count(CASE WHEN done_us > due_us THEN 1 END), "
                    "sum(done_us IS NULL), "
                    "(SELECT count(*) FROM inspection_results x JOIN inspection_tasks y ON x.task = y.id WHERE "
                    "y.plan = t.plan AND y.due_us > ? AND y.due_us <= ? AND x.ok = 0) "
                    "FROM inspection_tasks t WHERE due_us > ? AND due_us <= ? GROUP BY plan", (start, end, start, end))
    assert {(i.plan, i.due, i.on_time, i.late, i.not_done, i.failed_items) for i in r.inspections} == set(raw)
    assert any(x[1] > 1 for x in raw), "the weekly plan has several tasks in a month"


def test_patrol_per_route_and_guard_as_walked(site):
    r = site["report"]
    routes, guards = intent_by(site["intent"], *site["bounds"])
    assert {p.key: (p.rounds, p.due, p.missed) for p in r.routes} == {k: tuple(v) for k, v in routes.items()}
    assert {p.key: (p.rounds, p.due, p.missed) for p in r.guards} == {k: tuple(v) for k, v in guards.items()}
    assert "" in guards, "a round nobody walked"
    for p in r.routes + r.guards:
        assert p.read == p.due - p.missed == p.on_time + p.late + p.early
    assert all(p.late for p in r.routes) and all(p.missed for p in r.routes)


def test_refused_cards_and_forced_doors_by_gate_and_hour(site):
    cfg, r = site["cfg"], site["report"]
    start, end = site["bounds"]
    cards = rows(cfg, "SELECT door, category, count(*) FROM swipes WHERE ts_us >= ? AND ts_us < ? AND category IN "
                      "('unknown', 'revoked', 'expired') GROUP BY door, category", (start, end))
    doors = rows(cfg, "SELECT door, state, count(*) FROM door_events WHERE ts_us >= ? AND ts_us < ? AND state IN "
                      "('forced_open', 'held_open') GROUP BY door, state", (start, end))
    want = defaultdict(Counter)
    for door, what, n in cards + doors:
        want[door][what] = n
    got = {g.door: {k: getattr(g, k) for k in ("unknown", "revoked", "expired", "forced_open", "held_open")
                    if getattr(g, k)} for g in r.gates}
    assert got == {d: dict(c) for d, c in want.items()}
    # Shanghai keeps +8 all year: the local hour in SQL
    hours = rows(cfg, "SELECT CAST(strftime('%H', ts_us / 1000000, 'unixepoch', '+8 hours') AS INTEGER), category, "
                      "count(*) FROM swipes WHERE ts_us >= ? AND ts_us < ? AND category IN "
                      "('unknown', 'revoked', 'expired') GROUP BY 1, 2 UNION ALL "
                      "SELECT CAST(strftime('%H', ts_us / 1000000, 'unixepoch', '+8 hours') AS INTEGER), state, "
                      "count(*) FROM door_events WHERE ts_us >= ? AND ts_us < ? AND state IN "
                      "('forced_open', 'held_open') GROUP BY 1, 2", (start, end, start, end))
    assert {(h["hour"], k): h[k] for h in r.hours for k in h if k != "hour" and h[k]} == \
        {(h, k): n for h, k, n in hours}
    assert sum(r.hours[h]["unknown"] for h in (0, 1, 2, 3, 4, 22, 23)) > sum(r.hours[h]["unknown"] for h in (9, 10, 11))


def test_refused_cards_and_door_alarms_are_found_by_their_partial_indexes(site):
    """A month's few hundred refused cards among its ~240,000 swipes: the report's queries are
    answered by the partial indexes (schema), not by reading every swipe of the month."""
    start, end = site["bounds"]
    db = sqlite3.connect(site["cfg"].storage_path)
    try:
        sent: list[str] = []
        db.set_trace_callback(sent.append)                 # the statements with their values bound
        assert rm.card_refusals(db, start, end) and rm.door_alarms(db, start, end)
        db.set_trace_callback(None)
        plans = [" ".join(r[3] for r in db.execute("EXPLAIN QUERY PLAN " + q)) for q in sent]
    finally:
        db.close()
    assert len(plans) == 2
    assert "USING INDEX swipes_refused" in plans[0] and "USING INDEX door_events_alarms" in plans[1], plans


def test_trend_against_the_previous_months(site):
    cfg, r = site["cfg"], site["report"]
    assert [p.month for p in r.trend] == ["2026-09", "2026-10", MONTH]
    assert r.trend[-1] == r.headline()
    for p in r.trend:
        start, end = month_bounds(p.month, TZ)
        assert p.alarms == rows(cfg, "SELECT count(*) FROM alerts WHERE raised_us >= ? AND raised_us < ?",
                                (start, end))[0][0]
        assert p.forced_doors == rows(cfg, "SELECT count(*) FROM door_events WHERE state = 'forced_open' AND "
                                           "ts_us >= ? AND ts_us < ?", (start, end))[0][0]
        assert p.orders == rows(cfg, "SELECT count(*) FROM repair_orders WHERE created_us >= ? AND created_us < ?",
                                (start, end))[0][0]
    with read_only(cfg.storage_path) as db:
        october = build(cfg, db, "2026-10", AS_OF, trend=0)
        # a month built with the known months reuses them instead of building them again
        known = {"2026-10": october.headline()}
        again = build(cfg, db, MONTH, AS_OF, trend=1, known=known)
    assert r.trend[1] == october.headline() and again.trend == r.trend[1:] and known[MONTH] == r.headline()
    # a month before anything was recorded: no round is judged (not every checkpoint missed)
    with read_only(cfg.storage_path) as db:
        august = build(cfg, db, "2026-08", AS_OF, trend=0)
    assert [(p.rounds, p.due) for p in august.routes] == [(0, 0)] * 3 and august.headline().patrol_completeness is None


def test_html_is_printable_with_svg_charts_and_xlsx_reads_back(site, tmp_path):
    r = site["report"]
    files = write_all(r, tmp_path, "zh")
    html = files["html"].read_text(encoding="utf-8")
    assert "<script" not in html and not re.search(r"<link|<img|@import|url\(|src=", html)
    assert "月度服务与安全报告" in html and "@media print" in html
    charts = {}
    for m in re.finditer(r"<svg .*?</svg>", html, re.S):
        svg = ET.fromstring(m.group())
        charts[svg.get("data-chart")] = svg
    assert set(charts) == {"alarms", "hours", "trend-counts", "trend-rates"}
    assert len(charts["alarms"].findall(f"{SVG}rect")) == len(r.alarms)
    bars = Counter(rect.get("data-series") for rect in charts["hours"].findall(f"{SVG}rect"))
    assert bars["unknown"] == sum(1 for h in r.hours if h["unknown"])
    assert len(charts["trend-rates"].findall(f"{SVG}circle")) == sum(
        v is not None for p in r.trend for v in (p.response_on_time, p.repair_on_time, p.inspections_on_time,
                                                 p.patrol_completeness))
    assert f'data-figure="alarms"><b>{r.alarm_total.raised}</b>' in html
    assert REPEAT_DEVICE in html and "重复故障" in html

    wb = openpyxl.load_workbook(files["xlsx"])
    assert wb.sheetnames == ["概要", "告警", "维修工单", "重复故障", "巡检", "巡更路线", "巡更保安", "门禁", "按时段", "趋势"]
    alarms = list(wb["告警"].iter_rows(values_only=True))
    assert alarms[-1][:5] == ("合计", r.alarm_total.raised, r.alarm_total.acked, r.alarm_total.cleared,
                              r.alarm_total.open)
    assert alarms[-1][5] == round(r.alarm_total.to_ack.p50 / 60, 1)         # minutes
    routes = {row[0]: row for row in wb["巡更路线"].iter_rows(min_row=2, values_only=True)}
    for p in r.routes:
        assert routes[p.name][1:8] == (p.rounds, p.due, p.read, p.on_time, p.late, p.early, p.missed)
        assert routes[p.name][8] == pytest.approx(p.read / p.due, abs=1e-4)
    assert wb["巡更路线"]["I2"].number_format == "0.0%"
    hours = list(wb["按时段"].iter_rows(min_row=2, values_only=True))
    assert len(hours) == 24 and sum(h[1] for h in hours) == sum(g.unknown for g in r.gates)
    flagged = [row for row in wb["重复故障"].iter_rows(min_row=2, values_only=True) if row[5]]
    assert {row[0] for row in flagged} == {d.device for d in r.repeats if d.flagged}
    assert [row[0] for row in wb["趋势"].iter_rows(min_row=2, values_only=True)] == [p.month for p in r.trend]


def test_english(site, tmp_path):
    r = site["report"]
    html = render_html(r, "en")
    assert '<html lang="en">' in html
    for text in ("Monthly service and safety report", "Repair orders", "Repeat faults", "Patrol", "completeness",
                 "forced open", "Trend", "repair response late" if any(a.kind == "repair_response" for a in r.alarms)
                 else "Alarms"):
        assert text in html
    assert "月度服务与安全报告" not in html and "告警" not in html
    wb = openpyxl.load_workbook(write_all(r, tmp_path, "en")["xlsx"])
    assert wb.sheetnames[0] == "Summary" and wb["Alarms"]["A1"].value == "kind"


def test_points_for_grafana_are_queued_in_the_outbox(site, tmp_path):
    import shutil
    data = dict(site["data"])
    db = tmp_path / "ledger.db"
    shutil.copy(site["cfg"].storage_path, db)
    data["storage"] = {**data["storage"], "path": str(db)}
    data["influxdb"] = {"version": 1, "url": "http://127.0.0.1:8086", "database": "t"}
    from gateway.config import parse_site
    cfg = parse_site(data, base_dir=Path(__file__).resolve().parent.parent / "edge_config")
    run = run_service(cfg, MONTH, tmp_path / "out", trend=2, now=AS_OF)
    lines = [x[0] for x in rows(cfg, "SELECT line FROM outbox WHERE measurement LIKE 'service_%' ORDER BY id")]
    assert run.points == len(lines) == len(outbox_rows(run.report)) > 20
    start, _ = site["bounds"]
    assert all(line.endswith(f" {start // 1000}") for line in lines)
    r = site["report"]
    for a in r.alarms:
        point = next(x for x in lines if x.startswith("service_alarms,") and f",kind={a.kind}," in x)
        assert f"raised={a.raised}i" in point and f"ack_p50_s={a.to_ack.p50!r}" in point
    month = next(x for x in lines if x.startswith("service_month,"))
    assert f"alarms={r.alarm_total.raised}i" in month and "month=2026-11" in month
    for p in r.routes:
        point = next(x for x in lines if x.startswith("service_patrol,") and f",route={p.key}," in x)
        assert f"missed={p.missed}i" in point and f"completeness={p.completeness!r}" in point
    # the month again: the same series at the same time (InfluxDB overwrites), queued once more
    again = run_service(cfg, MONTH, tmp_path / "out", trend=2, now=AS_OF)
    later = [x[0] for x in rows(cfg, "SELECT line FROM outbox WHERE measurement LIKE 'service_%' ORDER BY id")]
    assert later[len(lines):] == lines and again.points == run.points
    # without InfluxDB nothing is queued
    assert run_service(site["cfg"], MONTH, tmp_path / "out2", trend=0, now=AS_OF).points == 0


def test_cli(site, tmp_path):
    (tmp_path / "site.yaml").write_text(yaml.safe_dump(site["data"], allow_unicode=True), encoding="utf-8")
    site_file = str(tmp_path / "site.yaml")
    # the example site's relative files (households, cards) are beside it: copy what it names
    src = Path(__file__).resolve().parent.parent / "edge_config"
    for p in src.iterdir():
        if p.is_file() and p.name != "site.example.yaml":
            (tmp_path / p.name).write_bytes(p.read_bytes())
    res = CliRunner().invoke(app, ["report", "service", "-c", site_file, "--month", MONTH, "--out",
                                   str(tmp_path / "out"), "--trend", "1"])
    assert res.exit_code == 0, res.output
    r = site["report"]
    assert f"{r.alarm_total.raised} alarms, {r.order_total.created} repair orders" in res.output
    assert REPEAT_DEVICE in res.output and (tmp_path / "out" / f"service-{MONTH}.xlsx").exists()
    res = CliRunner().invoke(app, ["report", "service", "-c", site_file, "--month", "2026-13"])
    assert res.exit_code == 2 and res.output.strip().splitlines()[-1].startswith("error: --month:")
    assert "Traceback" not in res.output
    res = CliRunner().invoke(app, ["report", "service", "-c", site_file, "--month", "2999-01"])
    assert res.exit_code == 2 and "has not begun" in res.output


# ---- arithmetic ---------------------------------------------------------------------------------

@given(st.lists(st.floats(min_value=-1e6, max_value=1e7, allow_nan=False), max_size=60),
       st.sampled_from([50, 90, 95, 99, 100, 1]))
def test_percentile_is_the_nearest_rank(xs, q):
    assert percentile(xs, q) == nearest_rank(xs, q)
    if xs:
        assert percentile(xs, q) in xs


@given(st.sampled_from(["Asia/Shanghai", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
       st.integers(2020, 2030), st.integers(1, 12))
def test_months_are_local_and_follow_each_other(tzname, year, month):
    tz = ZoneInfo(tzname)
    m = f"{year}-{month:02d}"
    start, end = month_bounds(m, tz)
    nxt = previous_months(f"{year + month // 12}-{month % 12 + 1:02d}", 1)[0]
    assert nxt == m
    assert month_bounds(f"{year + month // 12}-{month % 12 + 1:02d}", tz)[0] == end
    local = from_us(start).astimezone(tz)
    assert (local.day, local.hour, local.minute) == (1, 0, 0) and local.month == month
    days = (end - start) / DAY_US
    assert 28 - 0.1 <= days <= 31 + 0.1     # a DST change makes a month an hour longer or shorter


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    path = tmp_path_factory.mktemp("scratch") / "ledger.db"
    Ledger(path).close()
    return path


@settings(max_examples=60, deadline=None)
@given(month=st.sampled_from(["2026-02", "2026-03", "2026-10", "2026-12"]),
       tzname=st.sampled_from(["Asia/Shanghai", "Europe/Berlin"]),
       alarms=st.lists(st.tuples(st.integers(-3 * DAY_US, 3 * DAY_US),
                                 st.one_of(st.none(), st.integers(0, 40 * DAY_US)),
                                 st.one_of(st.none(), st.integers(0, 40 * DAY_US))), max_size=25),
       at_end=st.booleans())
def test_an_alarm_counts_in_the_month_it_was_raised_whatever_it_took(scratch, month, tzname, alarms, at_end):
    """Alarms raised around a month's start or end (`at_end`), acknowledged and cleared days
    later: each counts in the month it was raised, its durations whole."""
    start, end = month_bounds(month, ZoneInfo(tzname))
    edge = end if at_end else start
    db = sqlite3.connect(scratch)
    db.execute("DELETE FROM alerts")
    db.executemany("INSERT INTO alerts (id, rule, kind, source, severity, state, message, message_en, raised_us, "
                   "updated_us, cleared_us, acked_by, ack_note, acked_us, value, details) VALUES "
                   "(?, 'r', ?, 's', 'warning', 'active', '', '', ?, ?, ?, '', '', ?, NULL, '{}')",
                   [(f"a{i}", "k" if i % 2 else "j", edge + off, edge + off,
                     None if clear is None else edge + off + clear, None if ack is None else edge + off + ack)
                    for i, (off, ack, clear) in enumerate(alarms)])
    db.commit()
    got = alarm_kinds(rm.alarms_raised(db, start, end))[1]
    db.close()
    inside = [(off, ack, clear) for off, ack, clear in alarms if start <= edge + off < end]
    acks = [ack / 1e6 for _, ack, _ in inside if ack is not None]
    clears = [clear / 1e6 for _, _, clear in inside if clear is not None]
    assert got.raised == len(inside)
    assert (got.to_ack.n, got.to_ack.p50, got.to_ack.p90) == (len(acks), nearest_rank(acks, 50),
                                                              nearest_rank(acks, 90))
    assert math.isclose(got.to_ack.mean or 0, sum(acks) / len(acks) if acks else 0)
    assert (got.to_clear.n, got.to_clear.p50, got.to_clear.p90) == (len(clears), nearest_rank(clears, 50),
                                                                    nearest_rank(clears, 90))
    assert math.isclose(got.to_clear.mean or 0, sum(clears) / len(clears) if clears else 0)


# ---- the console ----------------------------------------------------------------------------------

async def test_the_admin_reads_the_report_in_the_console(tmp_path):
    from gateway.web.headers import REPORT_CSP
    from web_fixtures import login, small_site, until

    async with small_site(tmp_path) as console:
        await until(lambda: console.ledger_rows("SELECT count(*) FROM alerts")[0][0] >= 1, "the test alarm kept")
        month = datetime.now(TZ).strftime("%Y-%m")
        async with console.session() as guard:
            await login(guard, "guard")
            async with guard.get("/service", allow_redirects=False) as r:
                assert r.status == 403
            async with guard.get(f"/service/{month}/xlsx", allow_redirects=False) as r:
                assert r.status == 403
            async with guard.get("/alarms") as r:
                assert 'data-nav="service"' not in await r.text()
        async with console.session() as admin:
            await login(admin, "admin")
            async with admin.get(f"/service?month={month}") as r:
                page = await r.text()
            assert r.status == 200 and 'data-nav="service"' in page and "月度服务与安全报告" in page
            raised = console.ledger_rows("SELECT count(*) FROM alerts WHERE raised_us >= ?",
                                         (month_bounds(month, TZ)[0],))[0][0]
            assert f'<tr data-figure="alarms"><th>告警</th><td>{raised}</td></tr>' in page
            assert "本月尚未结束" in page                      # this month: figures so far
            async with admin.get(f"/api/service?month={month}") as r:
                body = await r.json()
            assert body["month"] == month and body["report"]["alarm_total"]["raised"] == raised
            assert body["months"][0] == month and len(body["months"]) == 13
            async with admin.get(f"/service/{month}/report") as r:
                html = await r.text()
                assert r.headers["Content-Security-Policy"] == REPORT_CSP
            assert html.count("<svg ") == 4 and "<script" not in html
            async with admin.get(f"/service/{month}/xlsx") as r:
                data = await r.read()
                assert r.status == 200 and data[:2] == b"PK"
                assert f'service-{month}.xlsx' in r.headers["Content-Disposition"]
            for bad in ("2026-13", "2999-01"):
                async with admin.get(f"/service/{bad}/report", allow_redirects=False) as r:
                    assert r.status == 404
            # English, as the console's language
            async with admin.get("/lang/en", allow_redirects=False):
                pass
            async with admin.get(f"/service/{month}/report") as r:
                assert "Monthly service and safety report" in await r.text()
