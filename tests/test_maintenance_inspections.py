"""Inspections: periods as the plan's rhythm says, tasks made by the running gateway, an overdue
task raising a warning that clears once every item is recorded, a photo per item (bounded size,
kept beside the ledger), the electrician's job and not the guard's."""

from __future__ import annotations

import sys
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway.clock import to_us  # noqa: E402
from gateway.ledger.maintenance import ensure_tasks  # noqa: E402
from gateway.maintenance.inspections import period_of  # noqa: E402
from test_maintenance_orders import _post, running  # noqa: E402
from web_fixtures import login, until  # noqa: E402

JPEG = b"\xff\xd8\xff\xe0" + b"\x00" * 2000


@given(day=st.dates(min_value=date(2000, 1, 1), max_value=date(2099, 12, 31)),
       every=st.sampled_from(["week", "month", "quarter", "half_year", "year"]))
def test_a_period_holds_its_day_and_follows_the_previous_one(day, every):
    label, start, end = period_of(every, day)
    assert start <= day < end
    nxt = period_of(every, end)
    assert nxt[1] == end and nxt[0] != label
    days = (end - start).days
    assert {"week": {7}, "month": {28, 29, 30, 31}, "quarter": {90, 91, 92}, "half_year": {181, 182, 184},
            "year": {365, 366}}[every] >= {days}
    if every == "week":
        assert start.weekday() == 0


async def test_an_overdue_inspection_alarms_and_recording_every_item_clears_it(tmp_path):
    async with running(tmp_path) as console:
        gw = console.gw
        await until(lambda: console.ledger_rows("SELECT count(*) FROM inspection_tasks")[0][0] >= 7,
                    "the current period's tasks")
        # a fresh site owes nothing overdue: only current periods were made
        assert console.ledger_rows("SELECT count(*) FROM inspection_tasks WHERE due_us <= ?",
                                   (to_us(datetime.now(timezone.utc)),)) == [(0,)]
        assert not gw.maintenance.book.active("maintenance:inspection")
        # last week's water-and-electrical inspection, never done (as the gateway made it then)
        now = datetime.now(timezone.utc)
        ensure_tasks(console.ledger_path, [("water_electrical", "2000-W01", to_us(now - timedelta(days=8)),
                                            to_us(now - timedelta(days=1)))])
        (tid,) = console.ledger_rows("SELECT id FROM inspection_tasks WHERE period = '2000-W01'")[0]
        alert = await until(lambda: gw.maintenance.book.get("maintenance:inspection", "water_electrical@2000-W01"),
                            "the overdue alarm", 15)
        assert (alert.severity, alert.kind) == ("warning", "inspection_overdue") and "巡检逾期" in alert.message
        async with console.session() as elec, console.session() as guard:
            e, g = await login(elec, "electrician"), await login(guard, "guard")
            async with elec.get("/api/inspections") as r:
                tasks = {t["id"]: t for t in (await r.json())["tasks"]}
            assert tasks[tid]["state"] == "overdue"
            async with guard.get(f"/inspections/{tid}") as r:
                assert r.status == 403
            # a photo too large is refused before its body is read
            big = b"\xff\xd8\xff" + b"\x00" * (5 * 1024 * 1024 + 70 * 1024)
            async with elec.post(f"/inspections/{tid}/running", data={"csrf": e, "ok": "1", "photo": big},
                                 headers={"Accept": "application/json"}) as r:
                assert r.status == 413
            async with elec.post(f"/inspections/{tid}/running", data={"csrf": e, "ok": "1", "photo": b"GIF89a.."},
                                 headers={"Accept": "application/json"}) as r:
                assert (r.status, (await r.json())["error"]) == (400, "photo_not_image")
            import aiohttp
            form = aiohttp.FormData()
            form.add_field("csrf", e)
            form.add_field("ok", "0")
            form.add_field("note", "2号泵轴承异响")
            form.add_field("photo", JPEG, filename="p.jpg", content_type="image/jpeg")
            async with elec.post(f"/inspections/{tid}/running", data=form, headers={"Accept": "application/json"}) as r:
                body = await r.json()
            assert r.status == 200 and body["ok"] is False and body["task_done"] is False
            photo = console.ledger_path.with_name(console.ledger_path.name + ".photos") / body["photo"]
            assert photo.read_bytes() == JPEG and photo.stat().st_mode & 0o077 == 0
            async with elec.get(f"/inspections/photos/{body['photo']}") as r:
                assert r.status == 200 and await r.read() == JPEG
            for item in ("parameters", "upkeep"):
                status, body = await _post(elec, f"/inspections/{tid}/{item}", e, ok="1")
            assert body["task_done"] is True
            await until(lambda: gw.maintenance.book.get("maintenance:inspection", "water_electrical@2000-W01") is None,
                        "the alarm to clear", 15)
            # the failed item becomes a repair order in one click (the guard room's)
            status, made = await _post(guard, "/orders/new", g, origin="inspection", inspection_task=str(tid),
                                       inspection_item="running", what="2号泵轴承异响", category="electrical")
            assert status == 200
            assert console.ledger_rows("SELECT origin, inspection_task, inspection_item FROM repair_orders WHERE id = ?",
                                       (made["id"],)) == [("inspection", tid, "running")]


def test_a_new_plan_starts_with_the_current_period_and_a_known_one_owes_the_previous():
    from gateway.config import parse_site
    from gateway.maintenance.inspections import wanted_tasks
    from web_fixtures import SITE_INFO
    cfg = parse_site({"site": SITE_INFO}, base_dir=Path("."))
    now = datetime(2026, 11, 20, 4, 0, tzinfo=timezone.utc)          # Friday 20 Nov, 12:00 in Shanghai
    fresh = wanted_tasks(cfg, now)
    assert sorted((p, period) for p, period, *_ in fresh) == sorted(
        [("street_lights", "2026-11"), ("stairwell_lights", "2026-Q4"), ("water_electrical", "2026-W47"),
         ("meters_lines", "2026-11"), ("fitness", "2026-H2"), ("access", "2026-11"), ("fire", "2026-11")])
    assert all(start <= to_us(now) < due for _, _, start, due in fresh)
    # the gateway made tasks since October: it owes October's monthly ones, not an older quarter
    since_october = {p: to_us(datetime(2026, 10, 1, tzinfo=timezone.utc)) for p, *_ in fresh}
    owed = {(p, period) for p, period, *_ in wanted_tasks(cfg, now, since_october)}
    assert ("street_lights", "2026-10") in owed and ("water_electrical", "2026-W46") in owed
    assert ("stairwell_lights", "2026-Q3") not in owed and ("fitness", "2026-H1") not in owed
