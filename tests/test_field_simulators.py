"""Field simulators for access control and patrol: card readers and wands on ptys (read back
with the gateway's own parsers through a real serial client), the gate controller's day and the
patrol rounds (schema, daily pattern, determinism), and a gate-controller hour through mosquitto.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import statistics
import time
from collections import Counter, defaultdict
from datetime import datetime, time as dtime, timedelta
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
import serial_asyncio_fast

from gateway.drivers.card_frames import (CardRead, Rdm6300Parser, WandParser, WandRecord, WiegandTextParser,
                                         wand_download)
from simulators.card_reader import SerialCardReaderSim
from simulators.gate_controller import GateControllerSim, mqtt_publisher
from simulators.modbus_server import LineTiming
from simulators.patrol import OnlinePatrolReaderSim, PatrolRead, PatrolSim, WandSim

SHANGHAI = ZoneInfo("Asia/Shanghai")
DAY = datetime(2026, 11, 23, tzinfo=SHANGHAI)  # a Monday
T_DAY = DAY.timestamp()


def hour_at(t: float) -> int:
    return datetime.fromtimestamp(t, SHANGHAI).hour


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


# ---- reading a pty as the gateway does ------------------------------------------------------

class PortClient:
    """A serial client on the simulator's pty that reads all the time (as the driver does),
    feeding what arrives into a card_frames parser."""

    def __init__(self, path: str, parser):
        self.path = path
        self.parser = parser
        self.results: list = []
        self.chunks: list[tuple[float, bytes]] = []
        self._writer = None
        self._task: asyncio.Task | None = None
        self._news = asyncio.Event()

    async def __aenter__(self):
        reader, self._writer = await serial_asyncio_fast.open_serial_connection(url=self.path, baudrate=9600)
        self._task = asyncio.create_task(self._read(reader))
        return self

    async def __aexit__(self, *exc):
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._writer.close()
        await asyncio.sleep(0.01)

    async def _read(self, reader) -> None:
        while data := await reader.read(4096):
            self.chunks.append((time.monotonic(), data))
            self.results += self.parser.feed(data)
            self._news.set()

    async def until(self, n: int, timeout: float = 3.0) -> list:
        """Wait until the parser has produced `n` results in all."""
        deadline = time.monotonic() + timeout
        while len(self.results) < n and (left := deadline - time.monotonic()) > 0:
            self._news.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._news.wait(), left)
        return self.results

    async def quiet(self, seconds: float = 0.15) -> list:
        """Whatever else arrives in `seconds` (to show nothing extra came)."""
        await asyncio.sleep(seconds)
        return self.results


# ---- serial card readers --------------------------------------------------------------------

CARDS_32 = [0x00BC614E, 0x12345678, 0xFFFFFFFF, 0, 3_000_000_001]


async def test_rdm6300_one_read_per_swipe_noise_and_bad_frames_skipped():
    fds = open_fds()
    sim = SerialCardReaderSim("rdm6300", version=0x1A)
    async with sim:
        async with PortClient(sim.port_path, Rdm6300Parser()) as client:
            sim.noise(b"\x00\xffboot v1.2\r\n")
            for v in CARDS_32[:3]:
                sim.swipe(v)
            sim.swipe(0x0BADCAFE, corrupt=True)  # wrong checksum: the parser must drop it
            sim.noise(b"\x02\x02zz")  # a false start
            for v in CARDS_32[3:]:
                sim.swipe(v)
            reads = await client.quiet(0.2)
            reads = await client.until(len(CARDS_32))
        assert [r.value for r in reads] == CARDS_32
        assert all(isinstance(r, CardRead) and r.bits == 32 for r in reads)
        assert reads[0].raw.startswith("1A")  # the reader's version byte
        assert client.parser.errors["bad_checksum"] == 1
        assert client.parser.errors["garbage"] >= 1
        assert sim.swipes == len(CARDS_32) + 1
    assert not sim.running and open_fds() == fds  # nothing leaked


@pytest.mark.parametrize("bits", [26, 34])
@pytest.mark.parametrize("encoding", ["hex_raw", "hex", "decimal", "fac_card"])
async def test_wiegand_text_lines_read_back(encoding, bits):
    label = f"W{bits}:" if encoding in ("hex_raw", "decimal") else ""
    sim = SerialCardReaderSim("wiegand_text", encoding=encoding, bits=bits, label=label)
    facility_max = 0xFF if bits == 26 else 0xFFFF
    values = [(123 << 16) | 45678, (facility_max << 16) | 0xFFFF, 1, (7 << 16) | 9]
    async with sim:
        async with PortClient(sim.port_path, WiegandTextParser(encoding, bits)) as client:
            sim.noise(b"\r\n~~ converter ready ~~\r\n")
            for v in values:
                sim.swipe(v)
            reads = await client.until(len(values))
            reads = await client.quiet(0.1)
    assert [r.value for r in reads] == values
    assert {r.bits for r in reads} == {bits - 2}
    line = sim.frame((123 << 16) | 45678)
    assert line.endswith(b"\r\n") and line.startswith(label.encode())
    if encoding == "fac_card":
        assert line == b"123,45678\r\n"


async def test_wiegand_hex_raw_bad_parity_is_rejected():
    sim = SerialCardReaderSim("wiegand_text", encoding="hex_raw", bits=26)
    async with sim:
        async with PortClient(sim.port_path, WiegandTextParser("hex_raw", 26)) as client:
            sim.swipe((1 << 16) | 2, corrupt=True)
            sim.swipe((3 << 16) | 4)
            reads = await client.until(1)
            reads = await client.quiet(0.1)
    assert [r.value for r in reads] == [(3 << 16) | 4]
    assert client.parser.errors["bad_parity"] == 1
    with pytest.raises(ValueError):
        SerialCardReaderSim("wiegand_text", encoding="decimal").frame(1, corrupt=True)


async def test_held_card_repeats_its_frame():
    sim = SerialCardReaderSim("rdm6300")
    async with sim:
        async with PortClient(sim.port_path, Rdm6300Parser()) as client:
            t0 = time.monotonic()
            sent = await sim.hold(0x00BC614E, seconds=0.6, repeat_s=0.15)
            reads = await client.until(sent)
            reads = await client.quiet(0.1)
            elapsed = time.monotonic() - t0
    assert sent == 4  # at 0, 0.15, 0.30, 0.45 s
    assert [r.value for r in reads] == [0x00BC614E] * sent  # the driver must make this one swipe
    assert elapsed >= 0.45
    times = [t for t, _ in client.chunks]
    assert times[-1] - times[0] >= 0.4  # spread over the hold, not one burst


async def test_line_speed_paces_the_bytes():
    timing = LineTiming(9600)
    sim = SerialCardReaderSim("rdm6300", line=timing)
    n = 12
    async with sim:
        async with PortClient(sim.port_path, Rdm6300Parser()) as client:
            t0 = time.monotonic()
            for v in range(n):
                sim.swipe(v)
            await sim.drain()
            wire = time.monotonic() - t0
            reads = await client.until(n)
    assert [r.value for r in reads] == list(range(n))
    assert wire >= 0.95 * n * 14 * timing.char_s  # 12 frames of 14 bytes: about 175 ms
    assert len(client.chunks) > n  # bytes trickle in, frames arrive split


def sim_tty(sim) -> str:
    return os.ttyname(sim._slave)


async def test_stop_during_hold_is_clean():
    fds, tasks = open_fds(), asyncio.all_tasks()
    sim = SerialCardReaderSim("rdm6300", line=LineTiming(9600))
    await sim.start()
    holding = asyncio.create_task(sim.hold(7, seconds=5.0))
    await asyncio.sleep(0.2)
    await sim.stop()
    assert 1 <= await asyncio.wait_for(holding, 1.0) < 5 / 0.15
    await sim.drain()  # nothing to wait for once stopped
    assert open_fds() == fds and asyncio.all_tasks() == tasks
    with pytest.raises(RuntimeError):
        sim.swipe(7)


async def test_stable_link_survives_replug(tmp_path):
    link = str(tmp_path / "usb-reader")
    sim = SerialCardReaderSim("rdm6300", link=link)
    await sim.start()
    assert os.path.realpath(link) == sim_tty(sim)
    await sim.stop()
    assert not os.path.lexists(link)  # unplugged: the name is gone
    await sim.start()
    try:
        async with PortClient(link, Rdm6300Parser()) as client:
            sim.swipe(42)
            assert [r.value for r in await client.until(1)] == [42]
        assert os.path.realpath(link) == sim_tty(sim)
    finally:
        await sim.stop()


# ---- the gate controller's day --------------------------------------------------------------

DOORS = [dict(id="gate-s", readers_in=["gate-s-in"], readers_out=["gate-s-out"]),
         dict(id="gate-e", readers_in=["gate-e-in", "gate-e-in2"], readers_out=["gate-e-out"])]
RESIDENTS = list(range(10_000_000, 10_000_800))
UNKNOWN = list(range(3_900_000_000, 3_900_000_040))


def gate(seed: int = 7, publish=None, **kw) -> GateControllerSim:
    return GateControllerSim(publish, "wh", "acs-1", DOORS, RESIDENTS, UNKNOWN, seed=seed, **kw)


def split(events):
    swipes = [(t, json.loads(p)) for t, topic, p in events if topic == "wh/acs/acs-1/swipe"]
    doors = [(t, json.loads(p)) for t, topic, p in events if topic == "wh/acs/acs-1/door"]
    assert len(swipes) + len(doors) == len(events)
    return swipes, doors


def test_gate_day_schema():
    events = gate().events_between(T_DAY, T_DAY + 86400)
    assert [e[0] for e in events] == sorted(e[0] for e in events)
    swipes, doors = split(events)
    door_readers = {d["id"]: d for d in DOORS}
    for t, s in swipes:
        assert set(s) == {"card", "reader", "door", "direction", "time"}
        assert len(s["card"]) == 10 and s["card"].isdigit()
        assert s["direction"] in ("in", "out")
        assert s["reader"] in door_readers[s["door"]]["readers_" + s["direction"]]
        when = datetime.fromisoformat(s["time"])
        assert when.utcoffset() == timedelta(hours=8) and when.timestamp() == t
        assert len(s["time"]) == 25  # 2026-11-23T03:02:11+08:00
    for t, d in doors:
        assert set(d) == {"door", "event", "time"}
        assert d["event"] in ("opened", "closed", "forced_open", "held_open")
        assert datetime.fromisoformat(d["time"]).timestamp() == t
    cards = {int(s["card"]) for _, s in swipes}
    assert cards <= set(RESIDENTS) | set(UNKNOWN)


def test_gate_day_follows_the_daily_pattern():
    sim = gate()
    outs, ins, unknown = Counter(), Counter(), Counter()
    days = 7
    for _, s in split(sim.events_between(T_DAY, T_DAY + days * 86400))[0]:
        h = datetime.fromisoformat(s["time"]).hour
        if int(s["card"]) in UNKNOWN:
            unknown[h] += 1
        elif s["direction"] == "out":
            outs[h] += 1
        else:
            ins[h] += 1
    per_day = (sum(outs.values()) + sum(ins.values())) / days
    assert 0.8 * len(RESIDENTS) < per_day < 3.0 * len(RESIDENTS)  # about one trip each a day
    night = [0, 1, 2, 3, 4]
    night_rate = sum(outs[h] + ins[h] for h in night) / len(night)
    assert max(outs, key=outs.get) in (6, 7, 8)  # the morning peak goes out
    assert max(ins, key=ins.get) in (17, 18, 19)  # the evening peak comes in
    assert outs[7] > 10 * max(night_rate, 1) and ins[18] > 10 * max(night_rate, 1)
    assert outs[7] > 3 * ins[7] and ins[18] > 3 * outs[18]
    night_unknown = sum(n for h, n in unknown.items() if h >= 22 or h < 6)
    assert sum(unknown.values()) >= 20
    assert night_unknown / sum(unknown.values()) > 0.6  # strangers mostly try at night


def test_gate_door_events_are_coherent():
    sim = gate(held_open_per_day=3, forced_open_per_day=2, held_open_s=30)
    swipes, doors = split(sim.events_between(T_DAY, T_DAY + 3 * 86400))
    by_door = defaultdict(list)
    for t, d in doors:
        by_door[d["door"]].append((t, d["event"]))
    kinds = Counter(e for _, d in doors for e in [d["event"]])
    assert kinds["held_open"] >= 3 and kinds["forced_open"] >= 2
    for door, evs in by_door.items():
        state, opened_at = "closed", None
        for t, e in evs:
            if e in ("opened", "forced_open"):
                assert state == "closed", (door, t, e)
                state, opened_at = "open", t
            elif e == "held_open":
                assert state == "open" and t - opened_at == 30
            else:
                assert state == "open"
                state = "closed"
        assert state == "closed"
    # a resident's swipe finds the door open within 3 s (opened for them, or already open)
    spans = defaultdict(list)
    for door, evs in by_door.items():
        starts = [t for t, e in evs if e in ("opened", "forced_open")]
        ends = [t for t, e in evs if e == "closed"]
        spans[door] = list(zip(starts, ends))
    for t, s in swipes:
        if int(s["card"]) in RESIDENTS:
            assert any(a <= t + 3 and b >= t + 4 for a, b in spans[s["door"]]), s
    # forced openings and unknown cards open nothing by a swipe
    forced = [(d["door"], t) for t, d in doors if d["event"] == "forced_open"]
    for door, t in forced:
        assert not any(s["door"] == door and int(s["card"]) in RESIDENTS and t - 3 <= st < t for st, s in swipes)


def test_gate_day_is_deterministic_and_window_independent():
    a = gate(seed=7).events_between(T_DAY, T_DAY + 86400)
    cut = T_DAY + 8.5 * 3600 + 17
    fresh = gate(seed=7)
    b = fresh.events_between(T_DAY, cut) + fresh.events_between(cut, T_DAY + 86400)
    assert a == b
    hour = gate(seed=7).events_between(T_DAY + 7 * 3600, T_DAY + 8 * 3600)
    assert hour == [e for e in a if T_DAY + 7 * 3600 <= e[0] < T_DAY + 8 * 3600]
    assert gate(seed=8).events_between(T_DAY, T_DAY + 86400) != a


async def test_gate_run_publishes_through_the_injected_coroutine():
    got = []

    async def collect(topic, payload):
        got.append((topic, payload))

    # as fast as possible
    sim = gate(publish=collect, speed=math.inf)
    t0, t1 = T_DAY + 7 * 3600, T_DAY + 8 * 3600
    n = await sim.run(start=t0, until=t1)
    want = [(topic, p) for _, topic, p in sim.events_between(t0, t1)]
    assert n == len(want) == sim.published > 50 and got == want

    # in (accelerated) real time: an hour of the evening in about 0.2 s
    got.clear()
    sim = gate(publish=collect, speed=18000, clock=time.monotonic)
    t0 = T_DAY + 18 * 3600
    began = time.monotonic()
    n = await sim.run(start=t0, until=t0 + 3600)
    assert got == [(topic, p) for _, topic, p in sim.events_between(t0, t0 + 3600)]
    assert 0.15 < time.monotonic() - began < 2.0


async def test_gate_hour_through_mosquitto(mqtt_broker):  # noqa: F811
    broker = mqtt_broker()
    sim_hour = (T_DAY + 7 * 3600, T_DAY + 8 * 3600)
    received = []
    async with aiomqtt.Client(broker.host, broker.port, identifier="sub") as sub:
        await sub.subscribe("wh/acs/#", qos=1)
        async with aiomqtt.Client(broker.host, broker.port, identifier="gate-bridge") as pub:
            sim = gate(publish=mqtt_publisher(pub), speed=math.inf)
            n = await sim.run(*sim_hour)

        async def receive():
            async for m in sub.messages:
                received.append((str(m.topic), bytes(m.payload), m.qos))
                if len(received) == n:
                    return

        await asyncio.wait_for(receive(), 10)
    want = [(topic, p, 1) for _, topic, p in sim.events_between(*sim_hour)]
    assert n == len(want) > 50
    assert received == want  # all of them, in order, at QoS 1


# ---- patrol ---------------------------------------------------------------------------------

ROUTE_N = dict(id="north", checkpoints=[f"04A1B2{i:02X}" for i in range(8)],
               leg_minutes=[3, 4, 2.5, 5, 3, 4, 6],
               rounds=[dtime(h) for h in (0, 2, 4, 20, 22)] + [dtime(8), dtime(12), dtime(16)])
ROUTE_P = dict(id="perimeter", checkpoints=["E0040150A1B2C3D4", "E0040150A1B2C3D5", "E0040150A1B2C3D6"],
               leg_minutes=[12, 15], rounds=[datetime(2026, 11, 23, 21, 30), datetime(2026, 11, 24, 1, 30)])
GUARDS = [0x00BC6100 + i for i in range(10)]


def patrol(seed=3, **kw) -> PatrolSim:
    return PatrolSim([ROUTE_N, ROUTE_P], GUARDS, seed=seed, tz="Asia/Shanghai", **kw)


def rounds_of(truth: list[PatrolRead]) -> dict:
    out = defaultdict(list)
    for p in truth:
        out[(p.route, p.round_start)].append(p)
    return out


def test_patrol_rounds_follow_the_route_except_flagged():
    sim = patrol(skip_prob=0.08, reorder_prob=0.08)
    t0, t1 = T_DAY, T_DAY + 14 * 86400
    truth = sim.ground_truth(t0, t1)
    reads = sim.reads_between(t0, t1)
    rounds = rounds_of(truth)
    assert len(rounds) >= 14 * 8  # every round inside the window
    flags = Counter()
    for (route_id, start), walked in rounds.items():
        if walked[0].t < t0 + 3600 or walked[-1].t > t1 - 3 * 3600:
            continue  # a round cut by the window
        route = sim.route(route_id)
        assert sorted(p.position for p in walked) == list(range(len(route["checkpoints"])))
        assert all(p.tag == route["checkpoints"][p.position] for p in walked)
        assert len({p.guard for p in walked}) == 1 and walked[0].guard in GUARDS
        read = [p for p in walked if not p.skipped]
        for a, b in zip(read, read[1:]):
            if a.reordered and b.reordered and a.position == b.position + 1:
                flags["reordered"] += 1
            else:
                assert a.position < b.position, (route_id, start, a, b)
        skipped = [p for p in walked if p.skipped]
        flags["skipped"] += len(skipped)
        round_reads = [p for p in reads if p.route == route_id and p.round_start == start]
        assert {p.tag for p in round_reads} == {p.tag for p in read}
        assert not {p.tag for p in skipped} & {p.tag for p in round_reads}  # a skipped point is absent
    assert flags["skipped"] >= 5 and flags["reordered"] >= 5


def test_patrol_leg_times_within_jitter():
    sim = patrol(skip_prob=0.0, reorder_prob=0.0, jitter_min=1.5, late_prob=0.02)
    devs, late = [], 0
    for (route_id, _), walked in rounds_of(sim.ground_truth(T_DAY, T_DAY + 10 * 86400)).items():
        legs = sim.route(route_id)["leg_minutes"]
        if len(walked) != len(legs) + 1:
            continue  # cut by the window
        for k in range(1, len(walked)):
            minutes = (walked[k].t - walked[k - 1].t) / 60
            assert minutes > 0  # never a negative leg
            if walked[k].late:
                late += 1
                assert minutes > legs[k - 1] + 4 * 1.5
                continue
            assert abs(minutes - legs[k - 1]) <= 4 * 1.5 + 0.02, (route_id, k, minutes)
            devs.append(minutes - legs[k - 1])
    assert late >= 1
    assert abs(statistics.mean(devs)) < 0.3 and 1.0 < statistics.stdev(devs) < 1.8


def test_patrol_is_deterministic_with_local_times():
    a = patrol(seed=3).ground_truth(T_DAY, T_DAY + 2 * 86400)
    b = patrol(seed=3)
    cut = T_DAY + 86400 + 3 * 3600 + 5
    assert a == b.ground_truth(T_DAY, cut) + b.ground_truth(cut, T_DAY + 2 * 86400)
    assert a != patrol(seed=4).ground_truth(T_DAY, T_DAY + 2 * 86400)
    for p in a:
        assert p.time.tzinfo is not None and p.time.utcoffset() == timedelta(hours=8)
        assert p.time.microsecond == 0 and p.local_time.tzinfo is None
    perimeter = [p for p in a if p.route == "perimeter"]
    assert {p.round_start.replace(tzinfo=None) for p in perimeter} == {datetime(2026, 11, 23, 21, 30),
                                                                       datetime(2026, 11, 24, 1, 30)}


async def test_online_patrol_reader_publishes_json():
    sim = patrol()
    reads = sim.reads_between(T_DAY + 20 * 3600, T_DAY + 21 * 3600)
    got = []

    async def collect(topic, payload):
        got.append((time.monotonic(), topic, json.loads(payload)))

    reader = OnlinePatrolReaderSim(collect, "wh", "pr-1")
    assert await reader.run(reads, fast=True) == len(reads) > 4
    for (_, topic, doc), p in zip(got, reads):
        assert topic == "wh/patrol/pr-1/read"
        assert doc == {"reader": "pr-1", "guard": f"{p.guard:010d}", "tag": p.tag,
                       "time": p.time.isoformat()}
        assert datetime.fromisoformat(doc["time"]).timestamp() == p.t

    # at its time: one round at 6000x (a minute in 10 ms)
    got.clear()
    reader = OnlinePatrolReaderSim(collect, "wh", "pr-1", clock=time.monotonic, speed=6000)
    began = time.monotonic()
    await reader.run(reads, start=reads[0].t)
    offsets = [(t - began) * 6000 for t, _, _ in got]
    for off, p in zip(offsets, reads):
        assert p.t - reads[0].t - 1 <= off <= p.t - reads[0].t + 1200  # never early; at most 0.2 s late


async def test_wand_download_parses_back_repeat_and_truncate():
    fds = open_fds()
    sim = patrol(skip_prob=0.1)
    reads = sim.reads_between(T_DAY + 20 * 3600, T_DAY + 30 * 3600)
    wand = WandSim("wand-2")
    wand.record_all(sim.ground_truth(T_DAY + 20 * 3600, T_DAY + 30 * 3600))  # skipped ones are not recorded
    assert len(wand.records) == len(reads) > 30
    want = tuple(WandRecord(i + 1, f"{p.guard:08X}", p.tag, p.local_time) for i, p in enumerate(reads))
    async with wand:
        async with PortClient(wand.port_path, WandParser()) as client:
            first = await wand.download()
            assert first == wand_download("wand-2", want)
            batches = await client.until(1)
            second = await wand.download()  # the wand keeps its memory: the same records again
            batches = await client.until(2)
            cut = await wand.download(truncate_at=len(first) // 2)  # the cable pulled
            await client.quiet(0.15)
            batches += client.parser.flush()  # the line went quiet
    assert second == first and cut == first[:len(first) // 2]
    assert [b.wand for b in batches] == ["wand-2"] * 3
    assert batches[0].complete and batches[0].records == want
    assert batches[1] == batches[0]
    assert not batches[2].complete
    assert 0 < len(batches[2].records) < len(want) and batches[2].records == want[:len(batches[2].records)]
    assert open_fds() == fds


async def test_wand_download_with_line_speed():
    wand = WandSim("w1", line=LineTiming(115200))
    sim = patrol()
    wand.record_all(sim.reads_between(T_DAY + 20 * 3600, T_DAY + 21 * 3600))
    async with wand:
        async with PortClient(wand.port_path, WandParser()) as client:
            began = time.monotonic()
            data = await wand.download()
            took = time.monotonic() - began
            batches = await client.until(1)
    assert took >= 0.95 * len(data) * LineTiming(115200).char_s
    assert batches[0].complete and len(batches[0].records) == len(wand.records)
