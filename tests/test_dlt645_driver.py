"""The DL/T 645 driver against simulated meters on a pseudo-terminal, and the commissioning CLI."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections import deque
from datetime import datetime, timezone
from decimal import Decimal

import yaml

from gateway.config import parse_site
from gateway.drivers.dlt645 import Dlt645Bus
from gateway.recording import Recorder, read
from gateway.replay import _scripted
from gateway.runtime import build_buses
from simulators.site import SiteSimulation
from collect import Collector

SITE = {"id": "t", "name": "test", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}
MAIN = "000012345678"


def site(tmp_path, meters, **bus):
    return parse_site({"site": SITE, "storage": {"path": str(tmp_path / "gw.db")},
                       "buses": [{"id": "d", "type": "dlt645", "port": "/dev/null", "timeout_s": 0.3, **bus}],
                       "meters": meters}, base_dir=tmp_path)


def meters_on(n, poll_s=1, model="dlt645-1p", circuit="stairwell_lighting"):
    return [{"id": f"m{k}", "bus": "d", "address": f"{k:012d}", "model": model, "poll_s": poll_s,
             "circuit": circuit} for k in range(1, n + 1)]


def bus_for(sim, cfg, got=None) -> Dlt645Bus:
    patched = sim.patched_config()
    return Dlt645Bus(patched.buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got or Collector())


async def run_for(bus, seconds):
    task = asyncio.create_task(bus.run())
    await asyncio.sleep(seconds)
    bus.stop()
    await asyncio.wait_for(task, 5)


# ---- readings ---------------------------------------------------------------------------------

async def test_readings_have_the_right_values_and_exact_counters(tmp_path):
    frozen = [1_700_049_600.0]  # 20:00 in Changchun: the estate's evening peak
    cfg = site(tmp_path, [
        {"id": "MAIN", "bus": "d", "address": MAIN, "model": "dlt645-3p-ct300", "circuit": "main_supply"},
        {"id": "lift", "bus": "d", "address": "000000000007", "model": "dlt645-3p", "circuit": "lift"},
        {"id": "stair", "bus": "d", "address": "000000000042", "model": "dlt645-1p", "circuit": "stairwell_lighting"},
    ])
    async with SiteSimulation(cfg, clock=lambda: frozen[0]) as sim:
        got = Collector()
        bus = bus_for(sim, cfg, got)
        try:
            for st in bus.meters:
                reading = await bus.poll(st)
                assert reading is not None, st.last_error
                sim_meter = sim.meter(st.meter.id)
                assert reading.values == sim_meter.values()
                assert reading.counters == sim_meter.counters()
                assert set(reading.values) == {f.name for f in cfg.models[st.meter.model].fields}
                assert st.stats.requests == len(cfg.models[st.meter.model].fields)  # one DI per field
        finally:
            await bus.close()
    main = got.readings("MAIN")[0]
    assert main.counters["energy_kwh"] > 1000 and main.counters["energy_kwh"] % Decimal("0.60") == 0  # CT x60
    assert 80 < main.values["power_kw"] < 160    # the feeder in primary kW: more than XX.XXXX kW can show
    assert 180 < main.values["voltage_l1_v"] < 240 and 49.9 < main.values["freq_hz"] < 50.1
    assert 0.85 <= main.values["pf"] <= 0.99
    stair = got.readings("stair")[0]
    assert stair.counters["energy_kwh"] == Decimal(str(stair.values["energy_kwh"])).quantize(Decimal("0.01"))
    assert got.online_changes("MAIN") == [True]


async def test_noise_before_answers_and_follow_up_frames(tmp_path):
    frozen = [1_700_000_000.0]
    cfg = site(tmp_path, meters_on(2, model="dlt645-3p", circuit="pump"))
    async with SiteSimulation(cfg, clock=lambda: frozen[0]) as sim:
        sim.meter("m1").noise = b"\x00\x68\x16\xfe\x68\x01\x02"   # garbage holding a start byte
        sim.meter("m2").split = True                               # every answer in a 0xB1 frame + a 0x92
        bus = bus_for(sim, cfg)
        try:
            for st in bus.meters:
                reading = await bus.poll(st)
                assert reading is not None, st.last_error
                assert reading.values == sim.meter(st.meter.id).values()
                assert reading.counters == sim.meter(st.meter.id).counters()
            assert bus.meters[1].stats.requests == len(cfg.models["dlt645-3p"].fields)
        finally:
            await bus.close()


# ---- the scheduler's guarantees ----------------------------------------------------------------

async def test_a_dead_meter_does_not_stall_its_neighbours(tmp_path):
    cfg = site(tmp_path, meters_on(5, poll_s=1), offline_after=2)
    async with SiteSimulation(cfg) as sim:
        sim.meter("m3").dead = True
        got = Collector()
        bus = bus_for(sim, cfg, got)
        await run_for(bus, 4.5)
    dead = bus.meters[2]
    # about 5 cycles of 1 s: the dead meter costs one timeout per attempt, never a retry
    assert 2 <= dead.stats.timeouts <= 5 and dead.stats.requests == dead.stats.timeouts
    assert got.online_changes("m3") == [False]
    for st in bus.meters:
        if st is not dead:
            assert len(got.readings(st.meter.id)) >= 4, st.meter.id   # every cycle despite the dead one
            assert st.stats.failures == 0 and st.stats.overruns == 0  # on their grid
            assert got.online_changes(st.meter.id) == [True]
    s = bus.stats()
    assert set(s) == {"bus", "meters", "online", "offline", "polls", "ok", "failures", "timeouts", "exceptions",
                      "crc_errors", "bad_answers", "bus_down", "overruns", "requests", "busy_s"}
    assert (s["meters"], s["online"], s["offline"]) == (5, 4, 1) and s["busy_s"] > 0


async def test_error_reply_and_bad_checksum_are_counted_and_logged_once(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.drivers.dlt645")
    cfg = site(tmp_path, meters_on(2), retries=1, offline_after=3)
    async with SiteSimulation(cfg) as sim:
        got = Collector()
        bus = bus_for(sim, cfg, got)
        err, crc = bus.meters
        try:
            sim.meter("m1").error = 0x02
            sim.meter("m2").corrupt_checksum = True
            for _ in range(4):
                assert await bus.poll(err) is None and await bus.poll(crc) is None
            assert err.stats.exceptions == 4 and err.stats.requests == 4              # refused: not asked again
            assert "error reply 0x02 (no data requested" in err.last_error and "DI 00010000" in err.last_error
            assert crc.stats.crc_errors == 8 and crc.stats.requests == 8              # asked again once (retries 1)
            assert crc.stats.timeouts == 0                                            # seen at once, not waited out
            assert "checksum error" in crc.last_error
            lines = [r.getMessage() for r in caplog.records]
            assert len([ln for ln in lines if "meter m1" in ln and "error reply" in ln and "offline" not in ln]) == 1
            assert len([ln for ln in lines if "meter m2" in ln and "checksum" in ln and "offline" not in ln]) == 1
            assert got.online_changes("m1") == got.online_changes("m2") == [False]
            sim.meter("m1").error = None
            sim.meter("m2").corrupt_checksum = False
            assert await bus.poll(err) is not None and await bus.poll(crc) is not None
            assert got.online_changes("m1") == got.online_changes("m2") == [False, True]
            assert any("m1" in ln and "answers again after 4 failed polls" in ln
                       for ln in [r.getMessage() for r in caplog.records])
        finally:
            await bus.close()


async def test_offline_and_online_device_status(tmp_path):
    cfg = site(tmp_path, meters_on(1), offline_after=3, timeout_s=0.1)
    async with SiteSimulation(cfg) as sim:
        got = Collector()
        bus = bus_for(sim, cfg, got)
        st = bus.meters[0]
        try:
            assert await bus.poll(st) is not None
            sim.meter("m1").dead = True
            for n in range(3):
                assert await bus.poll(st) is None
                assert got.online_changes("m1") == ([True] if n < 2 else [True, False])
            assert st.last_error == "no answer within 0.1 s"
            sim.meter("m1").dead = False
            assert await bus.poll(st) is not None
            assert got.online_changes("m1") == [True, False, True]
        finally:
            await bus.close()


async def test_a_missing_port_is_one_clear_line_and_the_bus_keeps_trying(tmp_path, caplog):
    cfg = parse_site({"site": SITE, "buses": [{"id": "usb", "type": "dlt645", "port": str(tmp_path / "ttyUSB9"),
                                                "timeout_s": 0.2}],
                      "meters": [{"id": "m", "bus": "usb", "address": MAIN, "model": "dlt645-1p", "poll_s": 1}]},
                     base_dir=tmp_path)
    got = Collector()
    bus = Dlt645Bus(cfg.buses[0], [(m, cfg.models[m.model]) for m in cfg.meters], got)
    await run_for(bus, 2.5)
    lines = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(lines) == 1 and "ttyUSB9" in lines[0] and "bus usb" in lines[0] and "2400 8E1" in lines[0]
    assert got.online_changes("usb") == [False]
    assert bus.meters[0].stats.bus_down >= 2 and bus.meters[0].stats.requests >= 2


async def test_build_buses_picks_the_driver_by_bus_type_and_the_recording_replays(tmp_path):
    frozen = [1_700_000_000.0]
    cfg = parse_site({"site": SITE, "buses": [
        {"id": "d", "type": "dlt645", "port": "/dev/null", "timeout_s": 0.3},
        {"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
        "meters": [{"id": "main", "bus": "d", "address": MAIN, "model": "dlt645-3p", "circuit": "main_supply"},
                   {"id": "stair", "bus": "b", "unit": 1, "model": "chint-ddsu666"}]}, base_dir=tmp_path)
    async with SiteSimulation(cfg, clock=lambda: frozen[0]) as sim:
        got = Collector()
        buses = build_buses(sim.patched_config(), got)
        assert [type(b).__name__ for b in buses] == ["Dlt645Bus", "ModbusBus"]
        dl = buses[0]
        rec = Recorder(tmp_path / "traffic.jsonl", "t", datetime.now(timezone.utc))
        dl.recorder = rec
        try:
            live = await dl.poll(dl.meters[0])
            sim.meter("main").dead = True
            assert await dl.poll(dl.meters[0]) is None
        finally:
            rec.close()
            for b in buses:
                await b.close()
    polls = [r for r in read(tmp_path / "traffic.jsonl") if r["type"] == "poll"]
    assert polls[0]["exchanges"][0] == {"di": "00010000", "regs": list(
        cfg.models["dlt645-3p"].field("energy_kwh").encode(sim.meter("main").values()["energy_kwh"]))}
    assert polls[1]["exchanges"] == [{"error": "NoAnswer", "detail": "no answer within 0.3 s"}]
    # `gateway replay` scripts the exchanges under `read_registers`: the same reading comes out
    replayed = Dlt645Bus(cfg.buses[0], [(cfg.meters[0], cfg.models["dlt645-3p"])], Collector())
    replayed.read_registers = _scripted(deque(polls[0]["exchanges"]))
    again = await replayed.poll(replayed.meters[0])
    assert again.values == live.values and again.counters == live.counters


# ---- the command line ---------------------------------------------------------------------------

async def gateway(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, out.decode(), err.decode()


async def test_read_prints_a_dlt645_meter(tmp_path):
    cfg = site(tmp_path, [{"id": "MAIN", "bus": "d", "address": MAIN, "model": "dlt645-3p-ct300",
                           "circuit": "main_supply"}], timeout_s=0.5)
    async with SiteSimulation(cfg) as sim:
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump(sim.patched_config().model_dump(mode="json", exclude_none=True),
                                       allow_unicode=True), encoding="utf-8")
        code, out, err = await gateway("read", "-c", str(path), "MAIN", "--json")
        assert code == 0, err
        got = json.loads(out)
        expected = sim.meter("MAIN").values()
        assert set(got["values"]) == set(expected)
        assert abs(got["values"]["voltage_l1_v"] - expected["voltage_l1_v"]) <= 1.0
        assert Decimal(got["counters"]["energy_kwh"]) % Decimal("0.6") == 0
        code, out, err = await gateway("read", "-c", str(path), "MAIN")
        assert code == 0 and "000012345678" in out and "energy_kwh" in out and "freq_hz" in out
        sim.meter("MAIN").dead = True
        code, out, err = await gateway("read", "-c", str(path), "MAIN")
        assert code == 1 and err.strip().splitlines() == [
            f"error: meter MAIN (bus d at {sim.bus_overrides['d']['port']}, address {MAIN}): no answer within 0.5 s"]


async def test_scan_finds_the_meter_its_model_and_the_line_settings(tmp_path):
    # the line runs at 4800 baud; the simulated meter stays silent at any other rate
    cfg = site(tmp_path, [{"id": "MAIN", "bus": "d", "address": MAIN, "model": "dlt645-3p", "circuit": "gate"}],
               baudrate=4800)
    async with SiteSimulation(cfg) as sim:
        port = sim.bus_overrides["d"]["port"]
        # the simulated frequency moves every few seconds: the scan read it before or after a step
        shown = {sim.meter("MAIN").values()["freq_hz"]}
        # a pty cannot carry parity (simulators/site.py): the line is 8N1, so the parity is given
        code, out, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--parity", "N",
                                       "--baudrate", "4800", "--timeout", "0.3", "--json")
        shown.add(sim.meter("MAIN").values()["freq_hz"])
        assert code == 0, err
        (found,) = json.loads(out)
        assert (found["protocol"], found["address"], found["model"]) == ("dlt645", MAIN, "dlt645-3p")
        assert "dlt645-3p-ct300" in found["note"]   # a small load: x60 is plausible too, the meter cannot say
        assert found["values"]["freq_hz"] in shown

        code, out, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--parity", "N",
                                       "--try-settings", "--timeout", "0.3")
        assert code == 0, err
        lines = out.splitlines()
        assert "  4800 8N1: answers (address 000012345678)" in lines
        assert {"  2400 8N1: no answer", "  1200 8N1: no answer", "  9600 8N1: no answer"} <= set(lines)
        assert any(line.startswith("  address 000012345678: dlt645-3p") for line in lines)

        code, out, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--parity", "N",
                                       "--try-settings", "--timeout", "0.3", "--write-config", "--bus-id", "bus-main")
        assert code == 0, err
        assert f"address: '{MAIN}'" in out  # quoted, as the config checks ask
        entries = yaml.safe_load(out)
        assert entries["buses"] == [{"id": "bus-main", "type": "dlt645", "port": port, "baudrate": 4800,
                                     "bytesize": 8, "parity": "N", "stopbits": 1, "timeout_s": 1.0}]
        assert entries["meters"][0]["address"] == MAIN and entries["meters"][0]["model"] == "dlt645-3p"
        pasted = parse_site({"site": SITE, **entries}, base_dir=tmp_path)   # parses as site-file entries
        assert pasted.meters[0].address == MAIN and pasted.bus("bus-main").type == "dlt645"


async def test_scan_with_several_meters_needs_their_addresses(tmp_path):
    cfg = site(tmp_path, meters_on(2, model="dlt645-1p"))
    async with SiteSimulation(cfg) as sim:
        port = sim.bus_overrides["d"]["port"]
        code, out, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--parity", "N",
                                       "--timeout", "0.3")
        assert code == 0, err
        assert "answers collide" in out and "--addresses" in out
        listing = tmp_path / "addresses.txt"
        listing.write_text("# from the nameplates\n000000000001\n000000000002\n000000000003  # not there\n")
        code, out, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--parity", "N",
                                       "--timeout", "0.3", "--addresses", str(listing), "--write-config")
        assert code == 0, err
        entries = yaml.safe_load(out)
        assert [(m["address"], m["model"]) for m in entries["meters"]] == [
            ("000000000001", "dlt645-1p"), ("000000000002", "dlt645-1p")]
        parse_site({"site": SITE, **entries}, base_dir=tmp_path)
        code, _, err = await gateway("scan", "--port", port, "--protocol", "dlt645", "--addresses", "12345")
        assert code == 2 and "12 digits" in err


async def test_scan_auto_tries_modbus_then_dlt645_and_a_missing_port_is_one_line(tmp_path):
    cfg = site(tmp_path, [{"id": "MAIN", "bus": "d", "address": MAIN, "model": "dlt645-1p", "circuit": "gate"}])
    async with SiteSimulation(cfg) as sim:
        port = sim.bus_overrides["d"]["port"]
        code, out, err = await gateway("scan", "--port", port, "--protocol", "auto", "--units", "1-3",
                                       "--baudrate", "2400", "--parity", "N", "--timeout", "0.2")
        assert code == 0, err
        assert "units 1-3: 0 answered" in out
        assert "address 000012345678: dlt645-1p" in out
        code, out, err = await gateway("scan", "--port", port, "--protocol", "auto", "--units", "1-3",
                                       "--baudrate", "2400", "--parity", "N", "--timeout", "0.2", "--write-config")
        assert code == 0, err
        entries = yaml.safe_load(out)   # the Modbus bus found nobody: only the DL/T 645 bus is written
        assert [b["type"] for b in entries["buses"]] == ["dlt645"] and entries["meters"][0]["address"] == MAIN
    code, _, err = await gateway("scan", "--port", str(tmp_path / "ttyUSB7"), "--protocol", "dlt645")
    assert code == 1 and "cannot open" in err and "Traceback" not in err


async def test_scan_writes_modbus_meters_as_site_entries_too(tmp_path):
    cfg = parse_site({"site": SITE, "buses": [{"id": "b", "type": "modbus_rtu", "port": "/dev/null"}],
                      "meters": [{"id": "s", "bus": "b", "unit": 3, "model": "chint-ddsu666"},
                                 {"id": "p", "bus": "b", "unit": 5, "model": "chint-dtsu666", "circuit": "pump"}]},
                     base_dir=tmp_path)
    async with SiteSimulation(cfg) as sim:
        port = sim.bus_overrides["b"]["port"]
        code, out, err = await gateway("scan", "--port", port, "--units", "1-6", "--timeout", "0.1", "--parity", "N",
                                       "--try-settings", "--write-config", "--bus-id", "bus-guard")
        assert code == 0, err
        # the Modbus pty simulator ignores line settings: every baud rate answers, the first is taken
        assert "  9600 8N1: answers (unit 3)" in err.splitlines()
        entries = yaml.safe_load(out)
        assert entries["buses"][0] == {"id": "bus-guard", "type": "modbus_rtu", "port": port, "baudrate": 9600,
                                       "bytesize": 8, "parity": "N", "stopbits": 1, "timeout_s": 0.5}
        assert [(m["id"], m["unit"], m["model"]) for m in entries["meters"]] == [
            ("bus-guard-u003", 3, "chint-ddsu666"), ("bus-guard-u005", 5, "chint-dtsu666")]
        parse_site({"site": SITE, **entries}, base_dir=tmp_path)
