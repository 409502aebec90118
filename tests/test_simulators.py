"""The meter simulators: values, registers, faults and timing, through the real pymodbus clients."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import signal
import struct
import sys
import time
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus import FramerType
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from gateway.config import CIRCUITS, parse_site
from gateway.meter_models import HOLDING, INPUT, SHIPPED_MODELS_DIR, TYPES, WORD_ORDERS, load_models, parse_model
from simulators.meters import SimMeter
from simulators.modbus_server import (LineTiming, MbapServer, RtuDecoder, RtuPtyServer, RtuTcpServer,
                                      crc16, rtu_frame)
from simulators.profiles import Profile
from simulators.site import SiteSimulation

REPO = Path(__file__).resolve().parent.parent
MODELS, _ = load_models([SHIPPED_MODELS_DIR])
DDSU, DTSU, SDM630 = MODELS["chint-ddsu666"], MODELS["chint-dtsu666"], MODELS["eastron-sdm630"]
SHANGHAI = ZoneInfo("Asia/Shanghai")
T0 = datetime(2026, 11, 20, 19, 30, tzinfo=SHANGHAI).timestamp()  # a winter evening

TRANSPORTS = ["mbap", "rtu_tcp", "pty"]
SERVERS = {"mbap": MbapServer, "rtu_tcp": RtuTcpServer, "pty": RtuPtyServer}


class FakeClock:
    def __init__(self, t: float = T0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def local(y, mo, d, h, mi=0) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=SHANGHAI).timestamp()


# ---- helpers: a client per transport, and a decoder that reads a whole model ------------

@contextlib.asynccontextmanager
async def client_for(server, timeout: float = 0.5, baudrate: int = 9600):
    if isinstance(server, RtuPtyServer):
        client = AsyncModbusSerialClient(server.port_path, framer=FramerType.RTU, baudrate=baudrate,
                                         bytesize=8, parity="N", stopbits=1, timeout=timeout, retries=0)
    else:
        framer = FramerType.SOCKET if isinstance(server, MbapServer) else FramerType.RTU
        client = AsyncModbusTcpClient("127.0.0.1", port=server.port, framer=framer,
                                      timeout=timeout, retries=0)
    assert await client.connect()
    try:
        yield client
    finally:
        client.close()


def read_plan(model, function: int) -> list[tuple[int, int]]:
    """(address, count) requests covering every field of `function`, as few as fit."""
    plan: list[tuple[int, int]] = []
    for f in sorted((f for f in model.fields if f.function == function), key=lambda f: f.address):
        if plan and f.end - plan[-1][0] <= model.max_registers:
            start = plan[-1][0]
            plan[-1] = (start, max(plan[-1][1], f.end - start))
        else:
            plan.append((f.address, f.words))
    return plan


async def read_model(client, model, unit: int) -> dict[str, float]:
    """What a correct gateway decodes from the meter's registers."""
    out: dict[str, float] = {}
    for function in (HOLDING, INPUT):
        read = client.read_holding_registers if function == HOLDING else client.read_input_registers
        for address, count in read_plan(model, function):
            rr = await read(address, count=count, device_id=unit)
            assert not rr.isError(), rr
            for f in model.fields:
                if f.function == function and address <= f.address and f.end <= address + count:
                    words = rr.registers[f.address - address:f.end - address]
                    out[f.name] = f.value(f.raw_from_bytes(struct.pack(f">{f.words}H", *words)))
    return out


def decode_local(meter: SimMeter) -> dict[str, float]:
    """The same decoding, straight from `registers()`."""
    out = {}
    for f in meter.model.fields:
        words = meter.registers(f.function, f.address, f.words)
        out[f.name] = f.value(f.raw_from_bytes(struct.pack(f">{f.words}H", *words)))
    return out


# ---- line timing arithmetic ------------------------------------------------------------

@pytest.mark.parametrize("line, regs, expect_ms", [
    (LineTiming(2400, 8, "E", 1), 2, 110), (LineTiming(2400, 8, "E", 1), 60, 640),
    (LineTiming(9600, 8, "E", 1), 2, 27.5), (LineTiming(9600, 8, "E", 1), 60, 160),
    (LineTiming(9600, 8, "N", 1), 2, 25), (LineTiming(9600, 8, "N", 1), 60, 146),
    (LineTiming(19200, 8, "E", 1), 2, 13.8), (LineTiming(19200, 8, "E", 1), 60, 80),
])
def test_line_timing_matches_meters_md(line, regs, expect_ms):
    # meters.md rounds to two or three figures (641.7 ms is printed as 640)
    assert line.exchange_s(8, 5 + 2 * regs) * 1000 == pytest.approx(expect_ms, rel=0.005)


def test_line_timing_characters_and_gaps():
    assert LineTiming().char_s == pytest.approx(10 / 9600)
    assert LineTiming(9600, 8, "E", 1).char_s == pytest.approx(11 / 9600)
    assert LineTiming(9600, 8, "N", 2).char_s == pytest.approx(11 / 9600)
    assert LineTiming().gap_s == pytest.approx(3.5 * 10 / 9600)
    assert LineTiming(38400).gap_s == LineTiming(115200).gap_s == 0.00175


def test_crc16_known_frame():
    assert rtu_frame(1, bytes.fromhex("030000000A")) == bytes.fromhex("01030000000AC5CD")
    frame = rtu_frame(1, bytes.fromhex("030000000A"), corrupt=True)
    assert crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little")


# ---- SimMeter: registers and values -------------------------------------------------------

def test_register_reads_and_exceptions():
    m = SimMeter(DDSU, 1, "stairwell_lighting", 3, clock=FakeClock())
    assert m.registers(INPUT, 0x2000, 0) == 3
    assert m.registers(INPUT, 0x2000, 126) == 3
    assert m.registers(HOLDING, 0x2000, 2) == 2  # DDSU666 maps nothing on function 03
    assert m.registers(5, 0x2000, 2) == 1
    assert m.registers(INPUT, 0xFFFF, 2) == 2
    regs = m.registers(INPUT, 0x1FFE, 8)
    assert regs[:2] == [0, 0] and regs[2:] != [0] * 6  # unmapped words read as zero
    assert len(m.registers(INPUT, 0x2000, 125)) == 125
    m.exception = 4
    assert m.registers(INPUT, 0x2000, 2) == 4
    # a read that cuts a field in half still gets that field's words
    m.exception = None
    assert m.registers(INPUT, 0x2001, 1) == m.registers(INPUT, 0x2000, 2)[1:]


@pytest.mark.parametrize("model", sorted(MODELS))
def test_registers_decode_to_values_for_every_shipped_model(model):
    m = SimMeter(MODELS[model], 1, "pump", 11, clock=FakeClock())
    assert decode_local(m) == m.values()
    assert set(m.values()) == {f.name for f in MODELS[model].fields}


@pytest.mark.parametrize("type_", sorted(TYPES))
@pytest.mark.parametrize("order", WORD_ORDERS)
def test_every_type_and_word_order(type_, order):
    scale = 1.0 if type_ == "float32" else 0.01
    name = f"t-{type_}-{order.lower()}"
    model = parse_model({"model": name, "name": name, "phases": 1, "fields": {
        "voltage_v": {"address": 0x10, "function": "holding", "type": type_, "word_order": order,
                      "scale": scale},
        "energy_kwh": {"address": 0x20, "function": "input", "type": type_, "word_order": order,
                       "scale": scale}}}, Path(f"/nowhere/{name}.yaml"))
    m = SimMeter(model, 1, "gate", 5, clock=FakeClock())
    values = m.values()
    assert decode_local(m) == values
    if type_ != "int16" and type_ != "uint16":  # 16 bits at 0.01 cannot hold 50,000 kWh
        assert 1_000 <= values["energy_kwh"] <= 50_100
    assert 200 < values["voltage_v"] < 240


@pytest.mark.parametrize("circuit", CIRCUITS)
@pytest.mark.parametrize("model", [DDSU, DTSU])
def test_values_are_plausible(circuit, model):
    for hour in range(0, 24, 3):
        clock = FakeClock(local(2026, 11, 20, hour))
        eng = SimMeter(model, 1, circuit, 7, clock=clock).profile.electrical(clock.t, 5.0)
        assert 49.9 < eng["freq_hz"] < 50.1 and 0.85 <= eng["pf"] <= 0.99
        if model.phases == 1:
            assert 205 < eng["voltage_v"] < 235
            assert eng["current_a"] == pytest.approx(5000 / (eng["voltage_v"] * eng["pf"]))
        else:
            for a, b in ((1, 2), (2, 3), (3, 1)):
                assert 205 < eng[f"voltage_l{a}_v"] < 235
                phase = (eng[f"voltage_l{a}_v"] + eng[f"voltage_l{b}_v"]) / 2
                assert eng[f"voltage_l{a}_l{b}_v"] == pytest.approx(math.sqrt(3) * phase)
                assert eng[f"current_l{a}_a"] == pytest.approx(
                    eng[f"power_l{a}_kw"] * 1000 / (eng[f"voltage_l{a}_v"] * eng[f"pf_l{a}"]))
            assert sum(eng[f"power_l{i}_kw"] for i in (1, 2, 3)) == pytest.approx(5.0)


def test_street_light_fault_burns_by_day():
    clock = FakeClock(local(2026, 6, 21, 12))
    m = SimMeter(DDSU, 1, "street_lighting", 2, clock=clock)
    assert m.values()["power_kw"] == 0.0 and m.values()["current_a"] == 0.0
    m.lights_on_daytime = True
    assert m.values()["power_kw"] > 1.0 and m.values()["current_a"] > 4.0
    before = m.values()["energy_kwh"]
    clock.t += 3600
    assert m.values()["energy_kwh"] - before == pytest.approx(m.profile.rated_kw, rel=0.05)


def _day_powers(circuit: str, seed: int, day=(2026, 11, 20), step_min=10) -> dict[float, float]:
    p = Profile.for_circuit(circuit, seed, phases=3 if circuit in ("lift", "pump", "main_supply") else 1)
    return {h / 60: p.power_kw(local(*day, 0) + h * 60) for h in range(0, 24 * 60, step_min)}


def test_daily_profiles_follow_the_local_day():
    # street lights: dark at 17:00 in winter, light at 17:00 in summer, never on at noon
    street = Profile.for_circuit("street_lighting", 3)
    assert street.power_kw(local(2026, 12, 21, 17)) > 1.0
    assert street.power_kw(local(2026, 6, 21, 17)) == 0.0
    assert street.power_kw(local(2026, 6, 21, 23)) > 1.0
    assert street.power_kw(local(2026, 12, 21, 12)) == 0.0
    assert street.power_kw(local(2026, 12, 21, 12), lights_on_daytime=True) > 1.0
    stair = _day_powers("stairwell_lighting", 4)
    day = [p for h, p in stair.items() if 10 <= h < 16]
    evening = [p for h, p in stair.items() if 19 <= h < 22]
    assert min(evening) > 3 * max(day)
    lift = _day_powers("lift", 5, step_min=1)
    standby = min(lift.values())
    assert 0.2 < standby < 0.7
    runs = lambda lo, hi: sum(p > 3 * standby for h, p in lift.items() if lo <= h < hi)  # noqa: E731
    assert runs(7, 9) > 3 * runs(1, 3) and runs(17, 20) > 3 * runs(1, 3)
    pump = _day_powers("pump", 6)
    night = min(pump.values())
    assert night > 0.4 * max(pump.values())  # steady: never stops
    assert sum(p for h, p in pump.items() if 7 <= h < 9) > 1.2 * sum(p for h, p in pump.items() if 2 <= h < 4)
    gate = list(_day_powers("gate", 7).values())
    assert 0.05 < min(gate) and max(gate) < 0.35 and max(gate) < 1.2 * min(gate)
    main = _day_powers("main_supply", 8)
    assert 55 < min(main.values()) and max(main.values()) < 155
    assert main[20.0] > 1.4 * main[3.0]


def test_values_are_deterministic_for_a_seed():
    clock = FakeClock()
    a = SimMeter(DTSU, 1, "lift", 42, clock=clock)
    b = SimMeter(DTSU, 9, "lift", 42, clock=clock)
    c = SimMeter(DTSU, 1, "lift", 43, clock=clock)
    for _ in range(5):
        clock.t += 37
        assert a.values() == b.values()
        assert a.values() != c.values()


def test_energy_grows_with_the_clock():
    clock = FakeClock(local(2026, 11, 20, 0))
    m = SimMeter(DTSU, 1, "pump", 21, clock=clock)
    start = m.values()["energy_kwh"]
    assert 1_000 <= start <= 50_000
    seen = [start]
    expected = 0.0
    for _ in range(24 * 6):  # a day in 10 minute polls
        expected += sum(m.profile.power_kw(clock.t + s) for s in range(0, 600, 10)) * 10 / 3600
        clock.t += 600
        seen.append(m.values()["energy_kwh"])
    assert all(b >= a for a, b in zip(seen, seen[1:])) and seen[-1] > seen[0]
    assert seen[-1] - start == pytest.approx(expected, abs=0.05)
    clock.t -= 3600  # a clock going back never makes a counter go back
    assert m.values()["energy_kwh"] == seen[-1]
    clock.t += 31 * 86400  # a month in one jump stays cheap and plausible
    month = m.values()["energy_kwh"] - seen[-1]
    assert 20 * expected < month < 45 * expected
    assert m.values()["export_energy_kwh"] < 5


def test_per_phase_energy_adds_up():
    clock = FakeClock()
    m = SimMeter(SDM630, 1, "lift", 8, clock=clock)
    first = m.values()
    clock.t += 3 * 3600
    v = m.values()
    for i in (1, 2, 3):
        assert v[f"energy_l{i}_kwh"] > first[f"energy_l{i}_kwh"]
    assert sum(v[f"energy_l{i}_kwh"] for i in (1, 2, 3)) == pytest.approx(v["energy_kwh"], rel=1e-6)


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=40), unit=st.integers(1, 247), fc=st.sampled_from([3, 4]),
       address=st.integers(0, 0xFF00), count=st.integers(1, 125), cuts=st.lists(st.integers(0, 60)))
def test_rtu_decoder_finds_the_request_after_noise(noise, unit, fc, address, count, cuts):
    request = rtu_frame(unit, struct.pack(">BHH", fc, address, count))
    stream = noise + request
    decoder = RtuDecoder()
    frames = []
    last = 0
    for cut in sorted({c for c in cuts if 0 < c < len(stream)}):  # arrives in any chunks
        frames += decoder.feed(stream[last:cut])
        last = cut
    frames += decoder.feed(stream[last:])
    assert frames[-1] == (unit, request[1:-2])


# ---- over the wire ---------------------------------------------------------------------

def two_meters(clock=None) -> dict[int, SimMeter]:
    clock = clock or FakeClock()
    return {1: SimMeter(DDSU, 1, "stairwell_lighting", 1, clock=clock),
            2: SimMeter(DTSU, 2, "pump", 2, clock=clock)}


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_values_decode_over_each_transport(transport):
    meters = two_meters()
    async with SERVERS[transport](meters) as server, client_for(server) as client:
        assert await read_model(client, DDSU, 1) == meters[1].values()  # input registers
        assert await read_model(client, DTSU, 2) == meters[2].values()  # holding, scaled
        rr = await client.read_coils(0, count=1, device_id=1)
        assert rr.isError() and rr.exception_code == 1
    assert server.requests == server.answers == 5


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_dead_meter_is_silent_while_others_answer(transport):
    meters = two_meters()
    meters[1].dead = True
    async with SERVERS[transport](meters) as server, client_for(server, timeout=0.2) as client:
        with pytest.raises(ModbusException):
            await client.read_input_registers(0x2000, count=2, device_id=1)
        rr = await client.read_holding_registers(0x2000, count=2, device_id=2)
        assert not rr.isError()
        meters[1].dead = False
        rr = await client.read_input_registers(0x2000, count=2, device_id=1)
        assert not rr.isError()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_exception_fault(transport):
    meters = two_meters()
    meters[2].exception = 4
    async with SERVERS[transport](meters) as server, client_for(server) as client:
        rr = await client.read_holding_registers(0x2000, count=2, device_id=2)
        assert rr.isError() and rr.exception_code == 4
        rr = await client.read_holding_registers(0x2000, count=2, device_id=1)  # DDSU: no 03
        assert rr.isError() and rr.exception_code == 2


@pytest.mark.parametrize("transport", ["rtu_tcp", "pty"])
async def test_corrupt_crc_gives_no_valid_answer(transport):
    meters = two_meters()
    meters[1].corrupt_crc = True
    async with SERVERS[transport](meters) as server, client_for(server, timeout=0.2) as client:
        with pytest.raises(ModbusException):
            await client.read_input_registers(0x2000, count=2, device_id=1)
        meters[1].corrupt_crc = False
        await asyncio.sleep(0.05)
        rr = await client.read_input_registers(0x2000, count=2, device_id=1)
        assert not rr.isError()


async def test_slow_meter_answers_late():
    meters = two_meters()
    meters[1].delay_s = 0.3
    async with MbapServer(meters) as server, client_for(server, timeout=1.0) as client:
        t = time.perf_counter()
        rr = await client.read_input_registers(0x2000, count=2, device_id=1)
        assert not rr.isError() and time.perf_counter() - t >= 0.3


async def _raw_exchange(path: str, data: bytes, expect: int, timeout: float = 1.0) -> bytes:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        os.write(fd, data)
        got = b""
        deadline = time.monotonic() + timeout
        while len(got) < expect and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
            with contextlib.suppress(BlockingIOError):
                got += os.read(fd, 512)
        return got
    finally:
        os.close(fd)


async def test_pty_skips_noise_and_bad_frames():
    meters = two_meters()
    request = rtu_frame(1, struct.pack(">BHH", 4, 0x2000, 2))
    bad = bytearray(rtu_frame(2, struct.pack(">BHH", 3, 0x2000, 2)))
    bad[-1] ^= 0x55
    async with RtuPtyServer(meters) as server:
        answer = await _raw_exchange(server.port_path, b"\x55\xaa\x01\x03\xff" + bytes(bad) + request, 9)
        assert answer == rtu_frame(1, bytes([4, 4]) + struct.pack(">2H", *meters[1].registers(4, 0x2000, 2)))
        assert server.requests == 1 and server.ignored >= 1
        # noise written to the line while a real client is connected
        async with client_for(server) as client:
            fd = os.open(server.port_path, os.O_RDWR | os.O_NOCTTY)
            os.write(fd, b"\x00\x11\x22\x33\xfe")
            os.close(fd)
            rr = await client.read_input_registers(0x2000, count=2, device_id=1)
            assert not rr.isError()


async def test_unknown_unit():
    async with MbapServer(two_meters()) as server, client_for(server) as client:
        rr = await client.read_input_registers(0x2000, count=2, device_id=9)
        assert rr.isError() and rr.exception_code == 0x0B
    async with RtuTcpServer(two_meters()) as server, client_for(server, timeout=0.2) as client:
        with pytest.raises(ModbusException):
            await client.read_input_registers(0x2000, count=2, device_id=9)
        assert server.ignored == 1 and server.answers == 0


@pytest.mark.parametrize("transport", ["mbap", "pty"])
async def test_line_speed_emulation(transport):
    line = LineTiming(9600, 8, "N", 1)
    async with SERVERS[transport](two_meters(), line) as server, client_for(server) as client:
        await client.read_input_registers(0x2000, count=2, device_id=1)  # connect, warm up
        await asyncio.sleep(0.05)
        t = time.perf_counter()
        for _ in range(20):
            assert not (await client.read_input_registers(0x2000, count=2, device_id=1)).isError()
        elapsed = time.perf_counter() - t
    one = line.exchange_s(8, 9)
    # the last exchange's closing gap is line time the client does not wait for
    assert 20 * one - line.gap_s <= elapsed < 3 * 20 * one


async def test_stop_closes_everything():
    meters = two_meters()
    meters[1].delay_s = 5.0
    selector = asyncio.get_running_loop()._selector  # to see that no fd stays registered
    fds = lambda: {key.fd for key in selector.get_map().values()}  # noqa: E731
    before = fds()
    tcp, pty = MbapServer(meters), RtuPtyServer(meters)
    await tcp.start()
    await pty.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp.port)
    writer.write(struct.pack(">HHHB", 1, 0, 6, 1) + struct.pack(">BHH", 4, 0x2000, 2))
    await writer.drain()
    await asyncio.sleep(0.05)
    assert tcp._pending  # the late answer is waiting
    await tcp.stop()
    await pty.stop()
    assert not tcp._pending
    assert await reader.read() == b""  # closed without an answer
    writer.close()
    await asyncio.sleep(0.01)
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", tcp.port)
    assert pty._master == -1 and fds() == before


# ---- a whole site ----------------------------------------------------------------------

def site_data(buildings: int = 96) -> dict:
    """The reference layout of site.md: 145 meters on 6 TCP serial servers and 1 USB line."""
    kinds = ([("stairwell_lighting", "chint-ddsu666")] * buildings + [("lift", "chint-dtsu666")] * 24
             + [("street_lighting", "chint-ddsu666")] * 16 + [("pump", "chint-dtsu666")] * 4
             + [("gate", "chint-ddsu666")] * 4 + [("main_supply", "chint-dtsu666")])
    buses = [{"id": f"bus-{i}", "type": "modbus_tcp", "host": f"10.20.1.{i}", "port": 502,
              "framer": "socket" if i % 2 else "rtu"} for i in range(1, 7)]
    buses.append({"id": "bus-guard", "type": "modbus_rtu", "port": "/dev/ttyUSB0", "baudrate": 9600})
    meters = []
    for n, (circuit, model) in enumerate(kinds):
        bus = buses[n % 7]["id"]
        meters.append({"id": f"M{n:03d}-{circuit}", "bus": bus, "unit": n // 7 + 1, "model": model,
                       "circuit": circuit})
    return {"site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai",
                     "latitude": 44.15, "longitude": 125.83},
            "buses": buses, "meters": meters}


async def test_site_simulation_serves_every_bus(tmp_path):
    cfg = parse_site(site_data(), base_dir=tmp_path)
    assert len(cfg.meters) == 145
    clock = FakeClock()
    sim = SiteSimulation(cfg, seed=3, clock=clock)
    t = time.perf_counter()
    async with sim:
        print(f"145 meters started in {(time.perf_counter() - t) * 1000:.1f} ms")
        overrides = sim.bus_overrides
        assert overrides["bus-guard"]["port"].startswith("/dev/")
        assert overrides["bus-1"]["host"] == "127.0.0.1"
        patched = sim.patched_config()
        assert patched.bus("bus-2").framer == "rtu" and patched.bus("bus-2").port == overrides["bus-2"]["port"]
        assert patched.bus("bus-guard").port == overrides["bus-guard"]["port"]
        assert [m.id for m in patched.meters] == [m.id for m in cfg.meters]
        for bus in patched.buses:
            meter = next(m for m in patched.meters if m.bus == bus.id)
            sim_meter = sim.meter(meter.id)
            async with client_for(sim.servers[bus.id]) as client:
                assert await read_model(client, cfg.models[meter.model], meter.unit) == sim_meter.values()
    with pytest.raises(RuntimeError):
        sim.bus_overrides
    # the same seed gives the same site; another seed another one
    again = SiteSimulation(cfg, seed=3, clock=clock)
    other = SiteSimulation(cfg, seed=4, clock=clock)
    mid = cfg.meters[0].id
    assert again.meter(mid).values() == SiteSimulation(cfg, seed=3, clock=clock).meter(mid).values()
    assert again.meter(mid).values() != other.meter(mid).values()


async def test_line_speed_uses_each_bus_line(tmp_path):
    data = site_data(buildings=2)
    data["buses"][-1].update(baudrate=2400, parity="E")
    sim = SiteSimulation(parse_site(data, base_dir=tmp_path), line_speed=True)
    assert sim.servers["bus-guard"].timing == LineTiming(2400, 8, "E", 1)
    assert sim.servers["bus-1"].timing == LineTiming()
    assert SiteSimulation(parse_site(data, base_dir=tmp_path)).servers["bus-1"].timing is None


async def test_example_site_file_starts():
    path = REPO / "edge_config" / "site.example.yaml"
    if not path.exists():
        pytest.skip("edge_config/site.example.yaml is not written yet")
    from gateway.config import load_site
    cfg = load_site(path)
    async with SiteSimulation(cfg) as sim:
        assert set(sim.bus_overrides) == {b.id for b in cfg.buses}
        sim.patched_config()


async def test_command_line(tmp_path):
    data = site_data(buildings=2)
    site = tmp_path / "site.yaml"
    site.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    dead, slow = data["meters"][0]["id"], data["meters"][1]["id"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "simulators", str(site), "--seed", "2", "--dead", dead,
        "--slow", f"{slow}=0.01", cwd=REPO, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        lines = []
        while True:
            line = (await asyncio.wait_for(proc.stdout.readline(), 10)).decode()
            assert line, (await proc.stderr.read()).decode()
            if line.startswith("ready"):
                break
            lines.append(line.split("\t"))
        assert [ln[0] for ln in lines] == [b["id"] for b in data["buses"]]
        where = {ln[0]: ln[2] for ln in lines}
        assert where["bus-guard"].startswith("/dev/")
        port = int(where["bus-1"].rsplit(":", 1)[1])
        client = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=0.3, retries=0)
        await client.connect()
        dead_unit = data["meters"][0]["unit"]
        with pytest.raises(ModbusException):
            await client.read_input_registers(0x2000, count=2, device_id=dead_unit)
        client.close()
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
