"""Lighting commands through the real transports: relay modules and meters simulated on Modbus
TCP and RTU on a pty, the gateway's own bus schedulers, the controller; the wall clock is the
test's (the transports run in real time), so a winter night passes in seconds."""

import asyncio
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from astral import Observer
from astral.sun import sun

from gateway.clock import Clock
from gateway.config import parse_site
from gateway.events import AlertChange, LightingCommand, Reading
from gateway.hub import Hub
from gateway.lighting.control import LightingControl, OverrideRefused
from gateway.lighting.outputs import make_ports
from gateway.runtime import build_buses
from gateway.ledger import Ledger
from simulators.site import SiteSimulation

TZ = ZoneInfo("Asia/Shanghai")
LAT, LON = 44.15, 125.83


def site_data(**lighting):
    return {
        "site": {"id": "t", "name": "t", "timezone": "Asia/Shanghai", "latitude": LAT, "longitude": LON},
        "buses": [{"id": "bus-a", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.5},
                  {"id": "bus-r", "type": "modbus_rtu", "port": "/dev/null", "timeout_s": 0.5}],
        "meters": [
            {"id": "SL01", "bus": "bus-a", "unit": 1, "model": "chint-ddsu666", "circuit": "street_lighting",
             "poll_s": 3600},
            {"id": "SL02", "bus": "bus-a", "unit": 2, "model": "chint-ddsu666", "circuit": "street_lighting",
             "poll_s": 3600},
            {"id": "B01-stair", "bus": "bus-r", "unit": 1, "model": "chint-ddsu666",
             "circuit": "stairwell_lighting", "poll_s": 3600},
        ],
        "outputs": [{"id": "K1", "bus": "bus-a", "unit": 40, "address": 0},
                    {"id": "K2", "bus": "bus-a", "unit": 40, "address": 1},
                    {"id": "K3", "bus": "bus-r", "unit": 40, "address": 0}],
        "lighting": {
            "schedules": [
                {"id": "all", "lights_on": "sunset+10", "lights_off": "sunrise-10"},
                {"id": "half", "lights_on": "sunset+10", "lights_off": "sunrise-10",
                 "curfew": {"from": "23:30", "until": "04:30"},
                 "exceptions": [{"holidays": ["spring_festival"], "curfew": "none"}]},
                {"id": "stair", "lights_on": "sunset-15", "lights_off": "sunrise+15"}],
            "circuits": [
                {"id": "SL01", "outputs": ["K1"], "meters": ["SL01"], "schedule": "all", "idle_kw": 0.05, "lit_kw": 0.5},
                {"id": "SL02", "outputs": ["K2"], "meters": ["SL02"], "schedule": "half", "idle_kw": 0.05, "lit_kw": 0.5},
                {"id": "B01-stair", "outputs": ["K3"], "meters": ["B01-stair"], "schedule": "stair",
                 "idle_kw": 0.01, "lit_kw": 0.01}],
            "stagger_s": 0, "settle_s": 0, "verify_s": 5, "readback_retries": 2, "check_every_s": 3600,
            **lighting},
    }


class SetClock(Clock):
    """Wall time set by the test; monotonic time real (the transports' timeouts are real)."""

    def __init__(self, t: datetime):
        self.t = t

    def now(self) -> datetime:
        return self.t

    def stamp(self) -> float:
        return self.t.timestamp()


def astral(d):
    s = sun(Observer(LAT, LON), date=d, tzinfo=TZ)
    return s["sunrise"], s["sunset"]


async def until(cond, what: str, timeout: float = 10.0):
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


class Rig:
    """Simulators, the gateway's buses on them, a ledger and the controller."""

    def __init__(self, tmp_path: Path, start: datetime, trusted=lambda: True, **lighting):
        self.tmp = tmp_path
        self.clock = SetClock(start)
        self.cfg0 = parse_site(site_data(**lighting), base_dir=tmp_path)
        self.sim = SiteSimulation(self.cfg0, clock=self.clock.stamp)
        self.trusted = trusted
        self.events: list = []

    async def __aenter__(self):
        await self.sim.start()
        self.cfg = self.sim.patched_config()
        self.ledger = Ledger(self.tmp / "gateway.db", 0.05)
        await self.boot()
        return self

    async def boot(self):
        """The gateway (its buses and controller) starts: again after `stop()`, as after a restart."""
        self.hub = Hub()
        self.sub = self.hub.subscribe(LightingCommand, AlertChange, Reading, name="test")
        self.buses = build_buses(self.cfg, self.hub.publish, self.clock)
        self.tasks = [asyncio.create_task(b.run()) for b in self.buses]
        self.ledger_task = asyncio.create_task(self.ledger.run(self.hub))
        self.ctl = LightingControl(self.cfg, make_ports(self.cfg, {b.bus.id: b for b in self.buses}),
                                   self.hub.publish, self.clock, self.ledger, lambda: self.trusted(),
                                   None,  # the test polls the meters itself (`proven`), at the times it sets
                                   readings=self.hub.subscribe(Reading, name="lighting"))

    async def stop(self):
        for b in self.buses:
            b.stop()
        await asyncio.gather(*self.tasks)
        self.ledger_task.cancel()
        await asyncio.gather(self.ledger_task, return_exceptions=True)
        self.collect()

    async def __aexit__(self, *exc):
        await self.stop()
        self.ledger.close()
        await self.sim.stop()

    def collect(self):
        self.events += self.sub.take_all()

    def commands(self, circuit=None):
        self.collect()
        return [e for e in self.events if isinstance(e, LightingCommand) and circuit in (None, e.circuit)]

    def alerts(self, what="raised"):
        self.collect()
        return [e.alert for e in self.events if isinstance(e, AlertChange) and e.what == what]

    async def at(self, t: datetime) -> int:
        """The wall clock says `t`; one step of the controller."""
        self.clock.t = t
        return await self.ctl.step()

    async def proven(self, circuit: str):
        """Poll the circuit's meters now and let the controller judge the readings."""
        for m in self.cfg.lighting.circuits[[c.id for c in self.cfg.lighting.circuits].index(circuit)].meters:
            bus = next(b for b in self.buses if any(st.meter.id == m for st in b.meters))
            await bus.poll_soon(m)
        await self.ctl.step()

    def lit(self, output: str) -> bool:
        return self.sim.contactor(output).energized_now


def local(*args):
    return datetime(*args, tzinfo=TZ)


async def test_winter_night_with_curfew_switches_at_the_astral_times(tmp_path):
    day = local(2026, 12, 21).date()
    rise_next, _ = astral(day + timedelta(days=1))
    _, set_ = astral(day)
    async with Rig(tmp_path, local(2026, 12, 21, 14, 0)) as rig:
        assert await rig.at(local(2026, 12, 21, 14, 0)) == 0          # day: off, and found off (nothing written)
        assert not any(rig.lit(k) for k in ("K1", "K2", "K3"))
        assert [c.result for c in rig.commands()] == ["unchanged"] * 3  # states adopted at start
        t = rig.ctl.planner.next_change("B01-stair", rig.clock.t)
        assert t == set_ - timedelta(minutes=15)
        await rig.at(t - timedelta(seconds=1))
        assert not rig.lit("K3")
        await rig.at(t)
        assert rig.lit("K3") and not rig.lit("K1")
        t = rig.ctl.planner.next_change("SL01", rig.clock.t)
        assert t == set_ + timedelta(minutes=10)
        assert await rig.at(t) == 2
        assert rig.lit("K1") and rig.lit("K2")
        # each contactor moved at the planned instant, to the second (the simulator's own record)
        for k in ("K1", "K2"):
            (when, closed), = rig.sim.contactor(k).switchings
            assert closed and abs(when - (set_ + timedelta(minutes=10)).timestamp()) < 1.0
        # proven by the meters: power where there should be
        rig.clock.t += timedelta(seconds=1)
        await rig.proven("SL01")
        assert rig.ctl.circuits["SL01"].proven == "meter"
        # the curfew: SL02 off at 23:30 and on again at 04:30; SL01 all night
        await rig.at(local(2026, 12, 21, 23, 29, 59))
        assert rig.lit("K2")
        await rig.at(local(2026, 12, 21, 23, 30))
        assert not rig.lit("K2") and rig.lit("K1")
        await rig.at(local(2026, 12, 22, 4, 30))
        assert rig.lit("K2")
        await rig.at(rise_next - timedelta(minutes=10))
        assert not rig.lit("K1") and not rig.lit("K2") and rig.lit("K3")
        await rig.at(rise_next + timedelta(minutes=15))
        assert not rig.lit("K3")
        switchings = [(round(w), c) for w, c in rig.sim.contactor("K2").switchings]
        assert switchings == [(round((set_ + timedelta(minutes=10)).timestamp()), True),
                              (round(local(2026, 12, 21, 23, 30).timestamp()), False),
                              (round(local(2026, 12, 22, 4, 30).timestamp()), True),
                              (round((rise_next - timedelta(minutes=10)).timestamp()), False)]
        assert not rig.alerts(), [(a.message_en, a.raised_at) for a in rig.alerts()]
        await asyncio.sleep(0.2)
    with _ro(tmp_path) as db:
        rows = db.execute("SELECT circuit, state, source, by, result FROM lighting_commands WHERE result = "
                          "'confirmed' AND circuit = 'SL02' ORDER BY id").fetchall()
    assert rows == [("SL02", 1, "plan", "schedule", "confirmed"), ("SL02", 0, "plan", "schedule", "confirmed"),
                    ("SL02", 1, "plan", "schedule", "confirmed"), ("SL02", 0, "plan", "schedule", "confirmed")]


def _ro(tmp_path):
    import sqlite3
    from contextlib import closing
    return closing(sqlite3.connect(tmp_path / "gateway.db"))


async def test_summer_night_curfew_without_return(tmp_path):
    day = local(2027, 6, 21).date()
    _, set_ = astral(day)
    async with Rig(tmp_path, local(2027, 6, 21, 12, 0)) as rig:
        await rig.at(local(2027, 6, 21, 12, 0))
        await rig.at(set_ + timedelta(minutes=10))
        assert rig.lit("K2")
        await rig.at(local(2027, 6, 21, 23, 30))
        assert not rig.lit("K2")
        await rig.at(local(2027, 6, 22, 2, 0))      # dawn before 04:30: no return
        assert not rig.lit("K2") and rig.lit("K1")


async def test_spring_festival_night_stays_lit(tmp_path):
    async with Rig(tmp_path, local(2027, 2, 6, 16, 0)) as rig:
        await rig.at(local(2027, 2, 6, 16, 0))
        await rig.at(local(2027, 2, 6, 18, 0))
        await rig.at(local(2027, 2, 7, 0, 30))
        assert rig.lit("K2") and rig.lit("K1")       # no curfew on the first night of the year


async def test_stuck_contactor_and_tripped_breaker_each_one_alarm(tmp_path):
    _, set_ = astral(local(2026, 12, 21).date())
    async with Rig(tmp_path, local(2026, 12, 21, 14, 0)) as rig:
        await rig.at(local(2026, 12, 21, 14, 0))
        rig.sim.contactor("K1").tripped = True               # breaker of SL01 open
        on = set_ + timedelta(minutes=10)
        await rig.at(on)
        assert rig.ctl.circuits["SL01"].commanded is True    # the relay did switch: readback agrees
        for s in range(0, 12, 3):                            # the meter says dark for verify_s and more
            rig.clock.t = on + timedelta(seconds=s + 1)
            await rig.proven("SL01")
        dark = [a for a in rig.alerts() if a.rule == "lighting:dark"]
        assert len(dark) == 1 and dark[0].source == "SL01"
        assert not [a for a in rig.alerts() if a.rule != "lighting:dark"]
        # SL02: the contactor welds on; at the curfew the coil drops but the lamps burn
        rig.sim.contactor("K2").stuck = True
        cur = local(2026, 12, 21, 23, 30)
        await rig.at(cur)
        assert rig.lit("K2") and rig.ctl.circuits["SL02"].commanded is False
        for s in range(0, 12, 3):
            rig.clock.t = cur + timedelta(seconds=s + 1)
            await rig.proven("SL02")
        stuck = [a for a in rig.alerts() if a.rule == "lighting:stuck"]
        assert len(stuck) == 1 and stuck[0].source == "SL02" and stuck[0].value > 0.05
        # the electrician frees it: the next reading clears the alarm
        rig.sim.contactor("K2").stuck = False
        rig.clock.t = cur + timedelta(seconds=30)
        await rig.proven("SL02")
        assert [a.rule for a in rig.alerts("cleared")] == ["lighting:stuck"]
        assert len([a for a in rig.alerts() if a.rule == "lighting:stuck"]) == 1


async def test_readback_mismatch_retries_a_bounded_number_of_times(tmp_path):
    async with Rig(tmp_path, local(2026, 12, 21, 14, 0)) as rig:
        await rig.at(local(2026, 12, 21, 14, 0))
        relay = rig.sim.relay("K1")
        relay.ignore_writes = True
        before = relay.writes
        _, set_ = astral(local(2026, 12, 21).date())
        await rig.at(set_ + timedelta(minutes=10))
        assert relay.writes - before == 2 * (1 + 2)           # K1 and K2 (one module): 1 write + 2 retries each
        assert sorted((a.rule, a.source) for a in rig.alerts()) == [("lighting:readback", "SL01"),
                                                                    ("lighting:readback", "SL02")]
        (cmd,) = [c for c in rig.commands("SL01") if c.source == "plan"]
        assert cmd.result == "mismatch"
        await rig.at(set_ + timedelta(minutes=10, seconds=1))  # not again at once: back-off, no storm
        assert relay.writes - before == 6
        relay.ignore_writes = False
        await asyncio.sleep(2.1)                               # the back-off (real time: the controller's monotonic)
        await rig.at(set_ + timedelta(minutes=12))
        assert rig.lit("K1") and rig.lit("K2")
        assert sorted(a.rule for a in rig.alerts("cleared")) == ["lighting:readback"] * 2


async def test_restart_at_three_does_not_flap_and_a_module_restart_is_reasserted(tmp_path):
    _, set_ = astral(local(2026, 12, 21).date())
    async with Rig(tmp_path, local(2026, 12, 21, 14, 0), check_every_s=1) as rig:
        await rig.at(local(2026, 12, 21, 14, 0))
        await rig.at(set_ + timedelta(minutes=15))
        await rig.at(local(2026, 12, 21, 23, 30))
        assert rig.lit("K1") and not rig.lit("K2") and rig.lit("K3")
        await rig.stop()                                     # the gateway goes down at 03:00 ...
        before = {k: list(rig.sim.contactor(k).switchings) for k in ("K1", "K2", "K3")}
        writes = sum(r.writes for r in rig.sim.relays.values())
        await rig.boot()                                     # ... and comes back
        await rig.at(local(2026, 12, 22, 3, 0))
        await rig.at(local(2026, 12, 22, 3, 0, 5))
        assert {k: rig.sim.contactor(k).switchings for k in before} == before
        assert sum(r.writes for r in rig.sim.relays.values()) == writes
        # a power cut of the relay module: it comes back with all outputs off, and is put right
        module = rig.sim.relay("K1")
        module.keeps_outputs = False
        module.restart()
        assert not rig.lit("K1")
        await asyncio.sleep(1.05)                           # check_every_s (monotonic, real)
        await rig.at(local(2026, 12, 22, 3, 1))
        assert rig.lit("K1")
        assert [c.source for c in rig.commands("SL01")][-1] == "reassert"


async def test_untrusted_clock_at_boot_never_switches_off(tmp_path):
    trusted = [False]
    _, set_ = astral(local(2026, 12, 21).date())
    async with Rig(tmp_path, local(2026, 12, 21, 20, 0), trusted=lambda: trusted[0]) as rig:
        rig.trusted = lambda: True
        await rig.at(local(2026, 12, 21, 20, 0))
        assert rig.lit("K1")
        await rig.stop()
        rig.trusted = lambda: trusted[0]
        await rig.boot()                                    # boots with a wall clock that says noon
        writes = sum(r.writes for r in rig.sim.relays.values())
        await rig.at(local(2026, 12, 22, 12, 0))
        await rig.at(local(2026, 12, 22, 12, 0, 5))
        assert rig.lit("K1") and rig.lit("K2") and rig.lit("K3")
        assert sum(r.writes for r in rig.sim.relays.values()) == writes
        trusted[0] = True                                   # NTP: it really is noon
        await rig.at(local(2026, 12, 22, 12, 0, 10))
        assert not rig.lit("K1") and not rig.lit("K3")


async def test_override_until_a_time_then_back_to_the_plan_and_who_may(tmp_path):
    async with Rig(tmp_path, local(2026, 12, 21, 10, 0)) as rig:
        await rig.at(local(2026, 12, 21, 10, 0))
        with pytest.raises(OverrideRefused, match="never off"):
            rig.ctl.override("SL01", False, local(2026, 12, 21, 11, 0), "wang", "guard", "test")
        with pytest.raises(OverrideRefused, match="24 hours"):
            rig.ctl.override("SL01", True, local(2026, 12, 22, 10, 1), "li", "electrician", "repair")
        with pytest.raises(OverrideRefused, match="why"):
            rig.ctl.override("SL01", True, local(2026, 12, 21, 11, 0), "li", "electrician", " ")
        rig.ctl.override("SL01", True, local(2026, 12, 21, 11, 0), "li", "electrician", "检修路灯")
        rig.ctl.override("SL02", True, local(2026, 12, 21, 10, 30), "wang", "guard", "火警")
        await rig.at(local(2026, 12, 21, 10, 0, 1))
        assert rig.lit("K1") and rig.lit("K2")
        (cmd,) = [c for c in rig.commands("SL01") if c.result == "confirmed"]
        assert (cmd.source, cmd.by, cmd.reason) == ("override", "li", "检修路灯")
        assert [c.source for c in rig.commands("SL02") if c.result == "confirmed"] == ["emergency"]
        await rig.at(local(2026, 12, 21, 10, 59, 59))
        assert rig.lit("K1")
        await rig.at(local(2026, 12, 21, 11, 0))            # expired: the plan (day: off)
        assert not rig.lit("K1") and not rig.lit("K2")
