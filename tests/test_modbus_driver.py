"""The Modbus driver against the simulators over real transports (TCP, RTU over TCP, pty)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import parse_site
from gateway.drivers.modbus import ModbusBus
from gateway.events import Reading
from gateway.runtime import Gateway
from gateway.ledger import Ledger
from simulators.site import SiteSimulation
from collect import Collector, assert_reads_as

SITE = {"id": "t", "name": "test", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


def site(tmp_path, buses, meters):
    return parse_site({"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
                       "buses": buses, "meters": meters}, base_dir=tmp_path)


def meters_on(bus, n, model="chint-ddsu666", poll_s=1, circuit="stairwell_lighting", **extra):
    return [{"id": f"{bus}-m{u:02d}", "bus": bus, "unit": u, "model": model, "poll_s": poll_s,
             "circuit": circuit, **extra} for u in range(1, n + 1)]


async def run_for(bus: ModbusBus, seconds: float):
    task = asyncio.create_task(bus.run())
    await asyncio.sleep(seconds)
    bus.stop()
    await asyncio.wait_for(task, 5)


@pytest.mark.parametrize("bus_cfg", [
    {"id": "tcp", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1502},
    {"id": "rtutcp", "type": "modbus_tcp", "host": "127.0.0.1", "port": 1502, "framer": "rtu"},
    {"id": "pty", "type": "modbus_rtu", "port": "/dev/null", "baudrate": 9600},
], ids=["mbap", "rtu-over-tcp", "rtu-pty"])
async def test_values_decode_exactly(tmp_path, bus_cfg):
    """Every field of a single- and a three-phase meter reads back as the simulator set it."""
    frozen = [1_700_000_000.0]
    cfg = site(tmp_path, [bus_cfg], [
        {"id": "stair", "bus": bus_cfg["id"], "unit": 1, "model": "chint-ddsu666", "circuit": "stairwell_lighting"},
        {"id": "lift", "bus": bus_cfg["id"], "unit": 7, "model": "chint-dtsu666", "circuit": "lift"},
    ])
    async with SiteSimulation(cfg, clock=lambda: frozen[0]) as sim:
        got = Collector()
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
        try:
            for st in bus.meters:
                reading = await bus.poll(st)
                assert reading is not None, st.last_error
                assert_reads_as(reading, sim.meter(st.meter.id).values())
                assert reading.counters["energy_kwh"] > 0
                assert float(reading.counters["energy_kwh"]) == pytest.approx(reading.values["energy_kwh"])
            assert all(st.stats.requests == 2 for st in bus.meters)  # both models in two reads
        finally:
            await bus.close()


async def test_dead_meter_costs_one_timeout_per_cycle_and_goes_offline(tmp_path):
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.25,
                           "offline_after": 2}], meters_on("b", 20, poll_s=1))
    async with SiteSimulation(cfg) as sim:
        sim.meter("b-m05").dead = True
        got = Collector()
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
        await run_for(bus, 4.5)
    dead = bus.meters[4]
    # About 5 cycles of 1 s: the dead meter was asked at most once per cycle (back-off makes it fewer)
    # and each time cost one timeout, never a retry.
    assert 2 <= dead.stats.timeouts <= 5
    assert dead.stats.requests == dead.stats.timeouts
    assert [s.online for s in got.statuses("b-m05")] == [False]
    for st in bus.meters:
        if st is not dead:
            n = len(got.readings(st.meter.id))
            assert n >= 4, (st.meter.id, n)  # every cycle, despite the dead neighbour
            assert st.stats.failures == 0
            assert st.stats.overruns == 0


async def test_dead_meter_does_not_delay_others_beyond_one_timeout(tmp_path):
    """Gaps between readings of the live meters stay within a period plus one timeout."""
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
               meters_on("b", 20, poll_s=1))
    async with SiteSimulation(cfg) as sim:
        sim.meter("b-m10").dead = True
        got = Collector()
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
        await run_for(bus, 4.2)
    for st in bus.meters:
        ts = [r.ts.timestamp() for r in got.readings(st.meter.id)]
        gaps = [b - a for a, b in zip(ts, ts[1:])]
        assert all(g <= 1.0 + 0.3 + 0.15 for g in gaps), (st.meter.id, gaps)


async def test_exceptions_and_crc_errors_are_decoded_counted_and_retried(tmp_path, caplog):
    cfg = site(tmp_path, [{"id": "p", "type": "modbus_rtu", "port": "/dev/null", "timeout_s": 0.5, "retries": 2}],
               meters_on("p", 3))
    async with SiteSimulation(cfg) as sim:
        sim.meter("p-m01").exception = 2
        sim.meter("p-m02").corrupt_crc = True
        got = Collector()
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
        try:
            for _ in range(3):
                for st in bus.meters:
                    await bus.poll(st)
            exc, crc, good = bus.meters
            assert exc.stats.exceptions == 3 and exc.stats.timeouts == 0
            assert "exception 0x02 (illegal data address)" in exc.last_error
            assert crc.stats.crc_errors == 9 and crc.stats.timeouts == 0  # 1 + 2 retries, three polls
            assert "CRC error" in crc.last_error
            assert good.stats.ok == 3
            # once per episode: one warning per failing meter, then the offline notice
            warnings = [r.getMessage() for r in caplog.records if "p-m01" in r.getMessage()]
            assert len(warnings) == 2 and "offline" in warnings[1]
            sim.meter("p-m02").corrupt_crc = False
            assert await bus.poll(crc) is not None and crc.online
        finally:
            await bus.close()


async def test_tcp_reconnects_after_the_simulator_restarts(tmp_path):
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
               meters_on("b", 2))
    sim = SiteSimulation(cfg)
    await sim.start()
    got = Collector()
    bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.sleep(1.5)
        before = len(got.readings())
        assert before >= 2
        await sim.stop()
        await asyncio.sleep(2.5)
        down = len(got.readings())
        assert [s.online for s in got.statuses("b")] == [False]
        await sim.start()  # same port
        await asyncio.sleep(3.0)
        assert len(got.readings()) > down + 2
        assert [s.online for s in got.statuses("b")] == [False, True]
    finally:
        bus.stop()
        await asyncio.wait_for(task, 5)
        await sim.stop()


async def test_missing_serial_port_is_one_clear_line(tmp_path, caplog):
    cfg = site(tmp_path, [{"id": "usb", "type": "modbus_rtu", "port": str(tmp_path / "ttyUSB9"), "timeout_s": 0.2}],
               meters_on("usb", 2))
    got = Collector()
    bus = ModbusBus(cfg.buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
    await run_for(bus, 1.5)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "ttyUSB9" in lines[0] and "bus usb" in lines[0]
    assert not got.readings()
    assert all(st.stats.bus_down >= 1 for st in bus.meters)


async def test_readings_land_in_the_ledger(tmp_path):
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3},
                          {"id": "p", "type": "modbus_rtu", "port": "/dev/null", "timeout_s": 0.3}],
               meters_on("b", 5) + meters_on("p", 3, model="chint-dtsu666", circuit="pump"))
    async with SiteSimulation(cfg) as sim:
        gw = Gateway(sim.patched_config())
        seen = gw.hub.subscribe(Reading, name="test")
        task = asyncio.create_task(gw.run(status_every_s=None))
        await asyncio.sleep(2.5)
        gw.stop()
        await asyncio.wait_for(task, 10)
    published = seen.take_all()
    ledger = Ledger(cfg.storage_path)
    stored = list(ledger.readings())
    assert len(stored) == len(published) >= 16
    assert {r.meter for r in stored} == {m.id for m in cfg.meters}
    by_key = {(r.meter, r.ts): r for r in stored}
    for p in published:
        s = by_key[(p.meter, p.ts)]
        assert s.counters == dict(p.counters)  # exact decimals, not floats
        assert s.values == pytest.approx(dict(p.values))
    assert ledger.latest_status() == {m.id: True for m in cfg.meters}
    ledger.close()


async def test_deadlines_do_not_drift_and_overruns_are_counted(tmp_path):
    """A 1 s meter polled for 5 s is read 5-6 times, each on its own 1 s grid."""
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}], meters_on("b", 1))
    async with SiteSimulation(cfg) as sim:
        got = Collector()
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
        await run_for(bus, 5.3)
        ts = [r.ts.timestamp() for r in got.readings()]
        assert len(ts) == 6
        offsets = [(t - ts[0]) - round(t - ts[0]) for t in ts]
        assert max(abs(o) for o in offsets) < 0.05  # on the grid, not period + poll time each time
        # A slow meter (answers after 1.5 s with a 2 s timeout) misses its next slot: counted, not queued.
        sim.meter("b-m01").delay_s = 1.5
        slow = ModbusBus(sim.patched_config().buses[0].model_copy(update={"timeout_s": 2.0}),
                         [(cfg.meters[0], cfg.models["chint-ddsu666"])], got)
        await run_for(slow, 4.0)
        assert slow.meters[0].stats.overruns >= 1
        assert slow.meters[0].stats.polls <= 3


async def test_pause_between_requests_is_kept_on_the_bus(tmp_path):
    """Eastron meters reset when polled back to back: pause_ms spaces every request on the bus."""
    cfg = site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "pause_ms": 150}],
               meters_on("b", 3, model="eastron-sdm120"))
    async with SiteSimulation(cfg) as sim:
        bus = ModbusBus(sim.patched_config().buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], Collector())
        try:
            loop = asyncio.get_running_loop()
            start = loop.time()
            for st in bus.meters:
                assert await bus.poll(st) is not None
            elapsed = loop.time() - start
            requests = sum(st.stats.requests for st in bus.meters)
            assert requests == 9  # SDM120: three reads each
            assert elapsed >= (requests - 1) * 0.150
        finally:
            await bus.close()
