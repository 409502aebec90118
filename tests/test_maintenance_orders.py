"""Repair orders through the running gateway and its console: one click from an alarm, a
resident's report, the whole state machine with who and when per step, who may do what, CSRF,
a missed target raising an alarm that clears itself, the alarm's history linked to its order;
the shift log and its handover."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway.config import parse_site  # noqa: E402
from gateway.maintenance.orders import STEPS, OrderError, move  # noqa: E402
from simulators.site import SiteSimulation  # noqa: E402
from web_fixtures import (SITE_INFO, SMALL_RULES, USERS, login, start_gateway, until, user_entries,  # noqa: E402
                          web_section)


def site_data(tmp: Path, respond_minutes: float = 30) -> dict:
    meters = [{"id": f"B0{u}-stair", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u, "model": "chint-ddsu666",
               "poll_s": 1, "circuit": "stairwell_lighting", "building": f"B0{u}"} for u in (1, 2)]
    return {"site": SITE_INFO, "storage": {"path": str(tmp / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2}],
            "meters": meters, "rules": SMALL_RULES,
            "maintenance": {"check_every_s": 1,
                            "categories": [{"id": "electrical", "name": "电气照明", "respond_minutes": respond_minutes,
                                            "repair_hours": 24},
                                           {"id": "facility", "name": "公共设施", "respond_minutes": 240,
                                            "repair_hours": 72}]}}


@contextlib.asynccontextmanager
async def running(tmp: Path, **kw):
    sim = SiteSimulation(parse_site(site_data(tmp, **kw), base_dir=tmp))
    await sim.start()
    console = None
    try:
        data = sim.patched_config().model_dump(mode="json")
        data["web"] = web_section()
        data["users"] = [dict(u) for u in user_entries()]
        console = await start_gateway(data, tmp, tmp)
        yield console
    finally:
        if console is not None:
            await console.stop()
        await sim.stop()


async def _post(session, path, csrf, **form):
    async with session.post(path, data={"csrf": csrf, **form}, allow_redirects=False,
                            headers={"Accept": "application/json"}) as r:
        return r.status, await r.json()


def _voltage_alarm(console):
    return console.gw.rules.book.get("voltage-test", "B01-stair")


async def test_an_alarm_becomes_an_order_and_goes_through_every_step(tmp_path):
    async with running(tmp_path) as console:
        alarm = await until(lambda: _voltage_alarm(console), "the voltage alarm")
        await until(lambda: console.ledger_rows("SELECT 1 FROM alerts WHERE id = ?", (alarm.id,)), "ledger")
        async with console.session() as guard, console.session() as elec, console.session() as admin:
            g, e, a = await login(guard, "guard"), await login(elec, "electrician"), await login(admin, "admin")
            # the alarm offers the order to the guard, not to the electrician
            async with guard.get("/api/alarms") as r:
                row = next(x for x in await r.json() if x["id"] == alarm.id)
                assert row["may_order"] is True and row["order"] is None
            async with elec.get("/api/alarms") as r:
                assert next(x for x in await r.json() if x["id"] == alarm.id)["may_order"] is False
            assert (await _post(elec, "/orders/new", e, origin="alarm", alert_id=alarm.id))[0] == 403
            # without the CSRF token nothing is made
            async with guard.post("/orders/new", data={"origin": "alarm", "alert_id": alarm.id},
                                  allow_redirects=False) as r:
                assert r.status == 403
            status, made = await _post(guard, "/orders/new", g, origin="alarm", alert_id=alarm.id)
            assert status == 200, made
            oid = made["id"]
            async with guard.get(f"/api/orders/{oid}") as r:
                o = (await r.json())["order"]
            assert (o["origin"], o["alert_id"], o["device"], o["category"], o["state"]) == \
                ("alarm", alarm.id, "B01-stair", "electrical", "new")
            assert o["what"] == alarm.message
            async with guard.get("/api/alarms") as r:
                row = next(x for x in await r.json() if x["id"] == alarm.id)
                assert row["order"] == oid and row["may_order"] is False      # one click makes one

            # who may do which step
            assert (await _post(elec, f"/orders/{oid}/assign", e, assignee="x"))[0] == 403
            assert (await _post(guard, f"/orders/{oid}/arrive", g))[0] == 403       # not assigned yet, nor his
            assert (await _post(guard, f"/orders/{oid}/assign", g))[1]["error"] == "order_assignee_missing"
            assert (await _post(guard, f"/orders/{oid}/assign", g, assignee=USERS["electrician"]))[1]["state"] == \
                "assigned"
            assert (await _post(guard, f"/orders/{oid}/arrive", g))[0] == 403
            assert (await _post(elec, f"/orders/{oid}/finish", e, work_done="x"))[0] == 409    # not on site
            assert (await _post(elec, f"/orders/{oid}/arrive", e))[1]["state"] == "on_site"
            assert (await _post(elec, f"/orders/{oid}/finish", e))[1]["error"] == "order_work_missing"
            assert (await _post(elec, f"/orders/{oid}/finish", e, work_done="紧固零线端子", parts="端子 1 个"))[1][
                "state"] == "done"
            assert (await _post(elec, f"/orders/{oid}/follow_up", e, satisfaction="5"))[0] == 403
            assert (await _post(guard, f"/orders/{oid}/follow_up", g, satisfaction="9"))[1]["error"] == \
                "order_satisfaction_missing"
            assert (await _post(guard, f"/orders/{oid}/reopen", g, note="又不亮了"))[1]["state"] == "reopened"
            assert (await _post(admin, f"/orders/{oid}/assign", a, assignee=USERS["electrician"]))[1]["state"] == \
                "assigned"
            await _post(elec, f"/orders/{oid}/arrive", e)
            await _post(elec, f"/orders/{oid}/finish", e, work_done="更换接触器")
            assert (await _post(guard, f"/orders/{oid}/follow_up", g, satisfaction="4", note="住户满意"))[1][
                "state"] == "followed_up"
            assert (await _post(admin, f"/orders/{oid}/reopen", a, note="x"))[0] == 409   # only a done order
            steps = console.ledger_rows("SELECT step, state, by, role FROM repair_steps WHERE order_id = ? "
                                        "ORDER BY id", (oid,))
            assert steps == [
                ("create", "new", USERS["guard"], "guard"), ("assign", "assigned", USERS["guard"], "guard"),
                ("arrive", "on_site", USERS["electrician"], "electrician"),
                ("finish", "done", USERS["electrician"], "electrician"),
                ("reopen", "reopened", USERS["guard"], "guard"), ("assign", "assigned", USERS["admin"], "admin"),
                ("arrive", "on_site", USERS["electrician"], "electrician"),
                ("finish", "done", USERS["electrician"], "electrician"),
                ("follow_up", "followed_up", USERS["guard"], "guard")]
            times = [t for (t,) in console.ledger_rows("SELECT ts_us FROM repair_steps WHERE order_id = ? ORDER BY id",
                                                     (oid,))]
            assert times == sorted(times)
            row = console.ledger_rows("SELECT work_done, parts, satisfaction, followed_by, reopened FROM "
                                      "repair_orders WHERE id = ?", (oid,))[0]
            assert row == ("更换接触器", "", 4, USERS["guard"], 1)
            # the alarm's history links the order
            async with admin.get("/alarms/history?since=2000-01-01") as r:
                page = await r.text()
            assert f'href="/orders/{oid}" data-order="{oid}"' in page
            async with admin.get(f"/orders/{oid}") as r:
                page = await r.text()
            assert 'data-what="raised"' in page and "更换接触器" in page


async def test_a_resident_report_needs_a_household_or_phone(tmp_path):
    async with running(tmp_path) as console:
        async with console.session() as guard:
            g = await login(guard, "guard")
            status, body = await _post(guard, "/orders/new", g, origin="resident", what="楼道灯不亮",
                                       category="electrical")
            assert (status, body["error"]) == (400, "order_resident_missing")
            status, body = await _post(guard, "/orders/new", g, origin="resident", what="楼道灯不亮",
                                       category="electrical", household="B01-1-302", phone="13800000000",
                                       location="1号楼2单元3楼")
            assert status == 200
            assert console.ledger_rows("SELECT origin, household, phone, location, state FROM repair_orders "
                                       "WHERE id = ?", (body["id"],)) == \
                [("resident", "B01-1-302", "13800000000", "1号楼2单元3楼", "new")]
            assert (await _post(guard, "/orders/new", g, origin="resident", what="x", household="1",
                                category="nope"))[1]["error"] == "order_bad_category"


async def test_a_missed_response_target_raises_an_alarm_that_clears_on_arrival(tmp_path):
    async with running(tmp_path, respond_minutes=0.02) as console:          # 1.2 s
        async with console.session() as guard, console.session() as elec:
            g, e = await login(guard, "guard"), await login(elec, "electrician")
            _, made = await _post(guard, "/orders/new", g, origin="staff", what="2号楼配电箱异响",
                                  category="electrical", device="B02-stair")
            oid = made["id"]
            book = console.gw.maintenance.book
            alert = await until(lambda: book.get("maintenance:response", f"order-{oid}"), "the response alarm", 15)
            assert alert.kind == "repair_response" and alert.details["order"] == oid
            assert f"工单 #{oid}" in alert.message
            async with guard.get("/api/alarms") as r:                     # on the alarm screen too
                assert any(a["id"] == alert.id for a in await r.json())
            await _post(guard, f"/orders/{oid}/assign", g, assignee=USERS["electrician"])
            await _post(elec, f"/orders/{oid}/arrive", e)
            await until(lambda: book.get("maintenance:response", f"order-{oid}") is None, "the alarm to clear", 15)
            await until(lambda: [w for (w,) in console.ledger_rows(
                "SELECT what FROM alert_history WHERE alert_id = ? ORDER BY id", (alert.id,))] == ["raised", "cleared"],
                "the ledger to keep raise and clear")


async def test_the_shift_handover_shows_what_happened_in_the_shift(tmp_path):
    async with running(tmp_path) as console:
        alarm = await until(lambda: _voltage_alarm(console), "the voltage alarm")
        await until(lambda: console.ledger_rows("SELECT 1 FROM alerts WHERE id = ?", (alarm.id,)), "ledger")
        async with console.session() as guard, console.session() as admin, console.session() as elec:
            g, a = await login(guard, "guard"), await login(admin, "admin")
            await login(elec, "electrician")
            async with elec.get("/shift") as r:
                assert r.status == 403                                     # the guard room's
            status, body = await _post(guard, "/shift/start", g)
            assert status == 200
            first = body["shift"]
            assert (await _post(admin, "/shift/start", a))[0] == 409        # one shift on duty
            _, made = await _post(guard, "/orders/new", g, origin="resident", what="电梯按钮失灵", household="B02-1-101",
                                  category="facility")
            assert (await _post(guard, "/shift/handover", g, shift=str(first), notes="2号楼电梯按钮已报修"))[0] == 200
            status, body = await _post(admin, "/shift/confirm", a, shift=str(first))
            assert status == 200
            second = body["shift"]
            async with guard.get(f"/api/shift/{first}/handover") as r:
                h = await r.json()
            assert h["shift"]["notes"] == "2号楼电梯按钮已报修" and h["shift"]["confirmed_by"] == USERS["admin"]
            assert [s["order_id"] for s in h["orders_opened"]] == [made["id"]]
            assert alarm.id in {x["id"] for x in h["open"]}                # still open at the handover
            assert alarm.id not in {x["id"] for x in h["raised"]}          # raised before the shift began
            async with guard.get(f"/api/shift/{second}/handover") as r:
                h2 = await r.json()
            assert h2["start_us"] == h["end_us"] and not h2["orders_opened"]
            async with guard.get(f"/shift/{first}/handover") as r:
                page = await r.text()
            assert "data-print" in page and "2号楼电梯按钮已报修" in page


def test_steps_name_their_permissions_and_refuse_other_roles(tmp_path):
    """Without a ledger a refused step fails before anything is looked up."""
    from gateway.web.auth import may
    cfg = parse_site(site_data(tmp_path), base_dir=tmp_path)
    from datetime import datetime, timezone
    for name, step in STEPS.items():
        for role in ("guard", "electrician", "accountant", "admin"):
            if not may(role, step.permission):
                with pytest.raises(OrderError) as e:
                    move(cfg, 1, name, {}, "x", role, datetime.now(timezone.utc), may)
                assert e.value.status == 403
    assert not may("accountant", "orders") and may("admin", "order_work")
