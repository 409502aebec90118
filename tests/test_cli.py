"""The command line as people use it: demo, run (with SIGTERM), read, scan."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import sys

import yaml

from gateway.config import parse_site
from simulators.site import SiteSimulation

SITE = {"id": "t", "name": "测试", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


async def gateway(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


def write_site(tmp_path, buses, meters, name="site.yaml"):
    data = {"site": SITE, "storage": {"path": "var/gw.db"}, "buses": buses, "meters": meters}
    parse_site(data, base_dir=tmp_path)  # fail here, not in the subprocess, if the test is wrong
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return path


async def simulated(tmp_path, n=4):
    """A small site served by the simulators, and its site file pointing at them."""
    meters = [{"id": f"m{u}", "bus": "b", "unit": u, "model": "chint-ddsu666", "poll_s": 1,
               "circuit": "stairwell_lighting"} for u in range(1, n + 1)]
    cfg = parse_site({"site": SITE, "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1",
                                               "timeout_s": 0.3}], "meters": meters}, base_dir=tmp_path)
    sim = SiteSimulation(cfg)
    await sim.start()
    bus = dict(cfg.buses[0].model_dump(mode="json"), **sim.bus_overrides["b"])
    return sim, write_site(tmp_path, [bus], meters)


async def test_demo_polls_the_whole_reference_site(tmp_path):
    code, out, err = await gateway("demo", "--seconds", "6", "--data-dir", str(tmp_path), timeout=90)
    assert code == 0, err
    assert "demo: polled 145 of 145 meters on 8 buses" in out  # MAIN on its own DL/T 645 bus
    stored = sqlite3.connect(tmp_path / "gateway.db").execute(
        "SELECT count(*), count(DISTINCT meter) FROM readings").fetchone()
    assert stored[1] == 145 and stored[0] >= 145
    assert f"{stored[0]} readings stored" in out
    assert "Traceback" not in err


async def test_run_stops_cleanly_on_sigterm_with_everything_flushed(tmp_path):
    sim, path = await simulated(tmp_path)
    try:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                    stderr=asyncio.subprocess.PIPE)
        await asyncio.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 20)
        assert proc.returncode == 0, err.decode()
        last = err.decode().strip().splitlines()[-1]
        assert "gateway stopped" in last
        stored = sqlite3.connect(tmp_path / "var" / "gw.db").execute("SELECT count(*) FROM readings").fetchone()[0]
        assert f"{stored} readings stored" in last and stored >= 8
    finally:
        await sim.stop()


async def test_read_prints_one_meter(tmp_path):
    sim, path = await simulated(tmp_path, n=2)
    try:
        code, out, err = await gateway("read", "-c", str(path), "m2", "--json")
        assert code == 0, err
        got = json.loads(out)
        expected = sim.meter("m2").values()
        assert got["meter"] == "m2" and abs(got["values"]["voltage_v"] - expected["voltage_v"]) < 1e-3
        assert float(got["counters"]["energy_kwh"]) > 0
        code, out, err = await gateway("read", "-c", str(path), "m2")
        assert code == 0 and "voltage_v" in out and "energy_kwh" in out
        sim.meter("m1").dead = True
        code, out, err = await gateway("read", "-c", str(path), "m1")
        assert code == 1 and err.strip().splitlines() == [
            f"error: meter m1 (bus b at 127.0.0.1:{sim.bus_overrides['b']['port']}, unit 1): no answer within 0.3 s"]
        code, _, err = await gateway("read", "-c", str(path), "nope")
        assert code == 2 and "no meter 'nope'" in err
    finally:
        await sim.stop()


async def test_run_with_a_refused_connection_keeps_running_and_says_so_once(tmp_path):
    path = write_site(tmp_path, [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "port": 9, "timeout_s": 0.2}],
                      [{"id": "m1", "bus": "b", "unit": 1, "model": "chint-ddsu666", "poll_s": 1}])
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(3.0)
    assert proc.returncode is None  # still running
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0
    errors = [line for line in err.decode().splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "bus b" in errors[0] and "127.0.0.1:9" in errors[0]
    assert "Traceback" not in err.decode()


async def test_scan_finds_units_and_names_their_models(tmp_path):
    meters = [{"id": "stair", "bus": "b", "unit": 3, "model": "chint-ddsu666", "circuit": "stairwell_lighting"},
              {"id": "pump", "bus": "b", "unit": 9, "model": "chint-dtsu666", "circuit": "pump"},
              {"id": "sdm", "bus": "b", "unit": 12, "model": "eastron-sdm120", "circuit": "gate"}]
    cfg = parse_site({"site": SITE, "buses": [{"id": "b", "type": "modbus_rtu", "port": "/dev/null"}],
                      "meters": meters}, base_dir=tmp_path)
    async with SiteSimulation(cfg) as sim:
        port = sim.bus_overrides["b"]["port"]
        code, out, err = await gateway("scan", "--port", port, "--units", "1-15", "--timeout", "0.1", "--json")
        assert code == 0, err
        found = {f["unit"]: f["model"] for f in json.loads(out)}
        assert found == {3: "chint-ddsu666", 9: "chint-dtsu666", 12: "eastron-sdm120"}
    code, _, err = await gateway("scan", "--port", str(tmp_path / "ttyUSB7"), "--units", "1-3")
    assert code == 1 and "cannot open" in err and "Traceback" not in err
