"""The console's lighting page through the running gateway: the plan, commanded and measured
state, overrides with who may do what, every command in the ledger with who and why."""

import sys
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway.config import parse_site  # noqa: E402
from simulators.site import SiteSimulation  # noqa: E402
from web_fixtures import SITE_INFO, login, start_gateway, until, user_entries, web_section  # noqa: E402


def lighting_site(tmp: Path) -> dict:
    return {
        "site": SITE_INFO, "storage": {"path": str(tmp / "gw.db"), "commit_interval_s": 0.2},
        "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
        "meters": [{"id": "SL01", "bus": "b", "unit": 1, "model": "chint-ddsu666", "poll_s": 2,
                    "circuit": "street_lighting"}],
        "outputs": [{"id": "K1", "bus": "b", "unit": 40, "address": 0}],
        # a plan that is off now, whatever the time of the test: the override is what lights it
        "lighting": {"schedules": [{"id": "dark", "mode": "always_off"}],
                     "circuits": [{"id": "SL01", "name": "路灯回路1", "outputs": ["K1"], "meters": ["SL01"],
                                   "schedule": "dark", "lit_kw": 0.5}],
                     "stagger_s": 0, "settle_s": 0.5, "min_on_minutes": 0, "min_off_minutes": 0},
    }


async def test_override_from_the_console(tmp_path):
    sim = SiteSimulation(parse_site(lighting_site(tmp_path), base_dir=tmp_path))
    await sim.start()
    console = None
    try:
        data = sim.patched_config().model_dump(mode="json")
        data["web"] = web_section()
        data["users"] = [dict(u) for u in user_entries()]
        console = await start_gateway(data, tmp_path, tmp_path)
        await until(lambda: console.gw.lighting is not None and console.gw.lighting.started, "lighting started")
        until_text = (datetime.now().astimezone(console.gw.lighting.planner.tz) + timedelta(hours=1)
                      ).strftime("%Y-%m-%dT%H:%M")
        async with console.session() as guard:
            csrf = await login(guard, "guard")
            async with guard.get("/lighting") as r:
                page = await r.text()
                assert r.status == 200 and 'data-circuit="SL01"' in page and "路灯回路1" in page
                assert '<option value="off">' not in page          # a guard is not offered "off"
            async with guard.post("/lighting/SL01/override", allow_redirects=False,
                                  data={"csrf": csrf, "state": "off", "until": until_text, "reason": "x"}) as r:
                assert r.status == 403
            async with guard.post("/lighting/SL01/override", allow_redirects=False,
                                  data={"csrf": csrf, "state": "on", "until": until_text, "reason": "火警疏散"}) as r:
                assert r.status == 303
        await until(lambda: sim.contactor("K1").energized_now, "the contactor closed")
        await until(lambda: console.gw.lighting.circuits["SL01"].proven == "meter", "the meter proved it")
        async with console.session() as elec:
            csrf = await login(elec, "electrician")
            async with elec.get("/api/lighting") as r:
                (c,) = (await r.json())["circuits"]
                assert c["commanded"] is True and c["measured_kw"] > 0.5 and c["override"]["by"] == "wang-guard"
            far = (datetime.now().astimezone(console.gw.lighting.planner.tz) + timedelta(hours=25)
                   ).strftime("%Y-%m-%dT%H:%M")
            async with elec.post("/lighting/SL01/override", allow_redirects=False, headers={"Accept": "application/json"},
                                 data={"csrf": csrf, "state": "off", "until": far, "reason": "检修"}) as r:
                assert r.status == 400 and "24 hours" in (await r.json())["error"]
            async with elec.post("/lighting/SL01/override", allow_redirects=False,
                                 data={"csrf": csrf, "action": "cancel"}) as r:
                assert r.status == 303
        await until(lambda: not sim.contactor("K1").energized_now, "back to the plan: off")
        await until(lambda: len(console.ledger_rows("SELECT 1 FROM lighting_commands WHERE result = 'confirmed'")) == 2,
                    "both commands in the ledger")
        rows = console.ledger_rows("SELECT state, source, by, reason FROM lighting_commands WHERE result = 'confirmed' "
                                   "ORDER BY id")
        assert rows == [(1, "emergency", "wang-guard", "火警疏散"), (0, "plan", "schedule", "dark")]
    finally:
        if console is not None:
            await console.stop()
        await sim.stop()
