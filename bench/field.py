"""Field-device benchmark: card swipes from serial readers (ptys) and from MQTT into the hub.

    python3 bench/field.py [--swipes 12000] [--rounds 2] [--mqtt-messages 12000]
                           [--latency-swipes 500] [--gap-ms 20] [--warmup-swipes 10]
                           [--wiegand-encoding decimal] [--profile N]

Prints human-readable lines, then as the LAST line one JSON object:

serial
    Swipes/s parsed from a pseudo-terminal at full speed, per reader format: `rdm6300` (14-byte
    frames) and `wiegand_text` (a Wiegand-26 converter printing one CRLF line per card, encoding
    `--wiegand-encoding`, default decimal as in edge_config/site.example.yaml). A
    `SerialCardReaderSim` in a separate process writes `--swipes` distinct registered cards
    (the shuffled cards of edge_config/cards.example.csv; Wiegand-26: their low 24 bits, which
    are unique there) as fast as the pty takes them (256 frames, then wait until the pty has
    taken them all, and so on). Gateway side, in this process: the real
    `SerialCardReaderDriver` (its `SerialLine` over `serial_asyncio_fast`, the format's parser,
    `Debounce` with the default 2 s window, the driver's bad-input accounting) and a real
    `CardDesk` + `CardRegistry` holding the 12,000 cards, publishing `CardSwipe` into a `Hub`;
    a hub subscriber counts them. Rate: events from the first to the last `CardSwipe` the
    subscriber sees; also for the first 1000 and for the rest (`Debounce` prunes its table on
    every accepted card once it holds more than 1000 cards seen within its window), CPU of this
    process per swipe, and the best of `--rounds` rounds (a fresh driver each, formats
    alternating). Every card must come out exactly once (no byte lost, none debounced).
parser_alone
    Baseline: the format's parser alone on the same bytes (bytes -> CardRead, no I/O), fed in
    1024-byte chunks as `serial_asyncio_fast` reads them; the pty rate is compared with it.
breakdown_us_per_swipe
    The driver's stages without I/O on the same RDM6300 cards, in µs per swipe: parser,
    `Debounce.accept` (the cards back to back, as at full speed), `CardDesk.swipe` with
    `Hub.publish` (registry classification, keyed hash, event).
mqtt
    MQTT messages/s handled. A real mosquitto on 127.0.0.1 (the tests' `Mosquitto`, persistence
    off, `max_queued_messages 0` so a backlog is kept whole). Every side gets the same backlog:
    three persistent sessions (clean_session=False, QoS 1 subscription) are made and left
    offline, a publisher in a separate process publishes `--mqtt-messages` JSON swipes
    (distinct registered cards, with reader, direction and an ISO time) with QoS 1, and the
    broker keeps them for each session; then each subscriber connects with its session id and
    is handed the backlog. Gateway: `MqttLink` with `MqttCardReaderDriver.handle`, the same
    `CardDesk`/registry/hub; messages/s from the first to the last `CardSwipe` in the hub (also
    the first 1000 and the rest), CPU per message. Baseline: a plain aiomqtt subscriber that
    only counts the messages (paho acknowledges on receipt); ratio gateway / plain. Context:
    the same plain subscriber acknowledging each message after taking it, as `MqttLink` does
    for at-least-once, and `MqttCardReaderDriver.handle` alone without I/O (first 1000 cards).
latency_ms
    Single swipes spaced `--gap-ms` apart (`--latency-swipes` distinct registered cards after
    `--warmup-swipes` not counted): from the frame written to the pty (RDM6300) or the JSON
    published (MQTT, QoS 1) in the simulator/publisher process to the hub subscriber in this
    process seeing its `CardSwipe`. Both ends stamp `time.monotonic_ns()`, i.e.
    CLOCK_MONOTONIC, one clock for the whole machine, so stamps of the two processes compare
    directly; the simulator stamps just before its `os.write` (MQTT: before `publish`). p50,
    p99 (nearest rank) and max, and the same split in stages: serial `pty+read` (kernel pty,
    event-loop wake-up, pyserial's read, the StreamReader hop to the SerialLine task) /
    `driver` (parse, debounce, registry, hash, event) / `hub` (the hop to the subscriber task);
    MQTT `broker+link` (publisher's send, broker, paho, aiomqtt's queue, MqttLink dispatch) /
    `driver` / `hub`. The stages are stamped by wrappers around the driver's `feed`/`handle`
    and `CardDesk.publish`, set by this bench (the gateway's code is unchanged).
peak_rss_mib
    `ru_maxrss` of this process (the gateway side; the simulator, publisher and broker run in
    their own processes).

Target (issue): serial latency p99 under 20 ms on this machine. House rules: figures are
printed and compared with a baseline measured in the same run; nothing here asserts timing;
`targets_met` only reports.

`--profile N` adds one cProfile'd RDM6300 pty round and one gateway MQTT backlog (not in the
figures; the backlog is published once more for it) and prints their N costliest functions
(own time) in profiled µs per swipe.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import random
import resource
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from common import ROOT, Child, dist, fmt_dist, ms, out, print_profile, run, serve_child, swipe_spaced, until

TARGETS = {"serial_latency_p99_ms_max": 20.0}
CARDS_FILE = ROOT / "edge_config" / "cards.example.csv"
TZ_NAME = "Asia/Shanghai"
HASH_KEY = b"bench-field-card-key"
MQTT_TOPIC = "bench/acs/gate-s/swipe"
BURST_FRAMES = 256        # frames handed to the pty before waiting until it took them all
READ_CHUNK = 1024         # serial_asyncio_fast reads at most this much per call
LOW24 = 0xFFFFFF
DEBOUNCE_PRUNE_AT = 1000  # gateway.drivers.card_reader.Debounce prunes above this many cards
UNTIL_S = 10.0           # how long to wait for a serial line or the MQTT link


# ==== the child: simulator and publisher in their own process ====================================
# `python3 bench/field.py --child` reads one JSON command per line on stdin and answers one JSON
# line on stdout. It runs the card reader simulator on a pty and the MQTT publisher, so the
# gateway side of the bench (this process) has its event loop and its CPU to itself.

async def _child_main() -> None:
    import aiomqtt
    from simulators.card_reader import SerialCardReaderSim

    loop = asyncio.get_running_loop()
    sims: dict[str, SerialCardReaderSim] = {}
    tz = ZoneInfo(TZ_NAME)

    def payload(value: int) -> bytes:
        return json.dumps({"card": f"{value:010d}", "reader": "gate-s-in", "direction": "in",
                           "time": datetime.now(tz).isoformat(timespec="milliseconds")}).encode()

    def mqtt_client(port: int, name: str) -> aiomqtt.Client:
        client = aiomqtt.Client("127.0.0.1", port, identifier=name, max_inflight_messages=100)
        client.pending_calls_threshold = 1 << 20  # many publishes wait for their PUBACK at once
        return client

    async def stop() -> None:
        for sim in sims.values():
            await sim.stop()

    async def handle(op: str, cmd: dict) -> dict:
        if op == "reader":  # start a reader on a new pty
            sim = SerialCardReaderSim(cmd["fmt"], encoding=cmd.get("encoding", "decimal"), bits=26)
            await sim.start()
            sims[cmd["name"]] = sim
            return {"port": sim.port_path}
        if op == "burst":  # as fast as the pty takes them
            sim = sims[cmd["name"]]
            values = cmd["values"]
            frames = len(values)
            b0 = sim.bytes_sent
            t0 = time.monotonic_ns()
            for i, v in enumerate(values):
                sim.swipe(v)
                if i % BURST_FRAMES == BURST_FRAMES - 1:
                    await sim.drain()
            await sim.drain()
            t1 = time.monotonic_ns()
            return {"sent": frames, "bytes": sim.bytes_sent - b0, "t0_ns": t0, "t1_ns": t1}
        if op == "spaced":  # one swipe every gap_s, each stamped just before its write
            return {"t_ns": await swipe_spaced(sims[cmd["name"]], cmd["values"], cmd["gap_s"])}
        if op == "mqtt_backlog":  # publish all, QoS 1, as fast as the broker acknowledges
            values = cmd["values"]
            t0 = time.monotonic_ns()
            async with mqtt_client(cmd["port"], "bench-publisher") as client:
                for i in range(0, len(values), 500):
                    await asyncio.gather(*(client.publish(MQTT_TOPIC, payload(v), qos=1)
                                           for v in values[i:i + 500]))
            return {"published": len(values), "seconds": (time.monotonic_ns() - t0) / 1e9}
        if op == "mqtt_spaced":
            gap = cmd["gap_s"]
            stamps = []
            async with mqtt_client(cmd["port"], "bench-publisher") as client:
                start = loop.time() + 0.05
                for i, v in enumerate(cmd["values"]):
                    delay = start + i * gap - loop.time()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    body = payload(v)
                    stamps.append(time.monotonic_ns())
                    await client.publish(MQTT_TOPIC, body, qos=1)
            return {"t_ns": stamps}
        return {"error": f"unknown op {op!r}"}

    await serve_child(handle, stop, limit=1 << 26)


# ==== the gateway side ===========================================================================

from gateway.cards import CardRegistry  # noqa: E402
from gateway.config import MqttCardReader, SerialCardReader  # noqa: E402
from gateway.drivers.card_frames import CardRead  # noqa: E402
from gateway.drivers.card_reader import (CardDesk, Debounce, MqttCardReaderDriver,  # noqa: E402
                                         SerialCardReaderDriver, make_parser)
from gateway.events import CardSwipe  # noqa: E402
from gateway.hub import Hub  # noqa: E402
from gateway.mqtt import MqttLink, MqttSettings  # noqa: E402


class HubTap:
    """A hub subscriber task: notes every CardSwipe's card and when the task saw it."""

    def __init__(self, hub: Hub):
        self.sub = hub.subscribe(CardSwipe, name="bench tap")
        self.cards: list[str] = []
        self.times: list[int] = []  # monotonic_ns when the subscriber task got the event
        self._want = 0
        self._reached = asyncio.Event()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            batch = await self.sub.get_batch()
            t = time.monotonic_ns()
            for e in batch:
                self.cards.append(e.card)
                self.times.append(t)
            if self._want and len(self.cards) >= self._want:
                self._reached.set()

    def reset(self) -> None:
        self.sub.take_all()
        self.cards, self.times = [], []

    async def wait(self, n: int, timeout: float, what: str) -> None:
        self._want = n
        self._reached.clear()
        if len(self.cards) >= n:
            return
        try:
            await asyncio.wait_for(self._reached.wait(), timeout)
        except asyncio.TimeoutError:
            raise RuntimeError(f"{what}: {len(self.cards)} of {n} swipes in the hub after {timeout:g} s") from None

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        self.sub.close()


def rates(times: list[int]) -> dict:
    """Events/s from the first to the last event, and for the first 1000 and the rest."""
    n = len(times)
    res = {"events": n, "per_s": (n - 1) / ((times[-1] - times[0]) / 1e9) if n > 1 and times[-1] > times[0] else 0.0}
    k = DEBOUNCE_PRUNE_AT
    if n > k + 1:
        res["first_1000_per_s"] = (k - 1) / max(1e-9, (times[k - 1] - times[0]) / 1e9)
        res["after_1000_per_s"] = (n - k) / max(1e-9, (times[-1] - times[k - 1]) / 1e9)
    return res


def check_all_once(cards: list[str], values: list[int], what: str) -> None:
    got = sorted(int(c) & LOW24 for c in cards)
    want = sorted(v & LOW24 for v in values)
    if got != want:
        missing = len(set(want) - set(got))
        raise RuntimeError(f"{what}: {len(cards)} swipes for {len(values)} cards ({missing} missing): "
                           "bytes lost or cards debounced")


class Field:
    """What the gateway's runtime wires for card readers: one registry, one desk, one hub."""

    def __init__(self) -> None:
        t = time.perf_counter()
        self.registry = CardRegistry(CARDS_FILE, TZ_NAME)
        self.load_s = time.perf_counter() - t
        if len(self.registry) != 12_000 or self.registry.notes:
            raise RuntimeError(f"{CARDS_FILE.name}: expected 12,000 cards with distinct low 24 bits, got "
                               f"{len(self.registry)} ({len(self.registry.notes)} sharing their low 24 bits)")
        self.hub = Hub()
        self.desk = CardDesk(self.registry, HASH_KEY, self.hub.publish)
        self.tz = ZoneInfo(TZ_NAME)
        self.cards = [e.value for e in self.registry.entries]


def serial_config(fmt: str, port: str, encoding: str) -> SerialCardReader:
    if fmt == "rdm6300":
        return SerialCardReader(id="gate-n-in", type="serial", port=port, format="rdm6300", door="gate-n",
                                direction="in")
    return SerialCardReader(id="gate-n-out", type="serial", port=port, format="wiegand_text", encoding=encoding,
                            bits=26, door="gate-n", direction="out")


def sim_values(fmt: str, values: list[int]) -> list[int]:
    """What the simulator is given: the 32-bit tag, or the Wiegand-26 data (low 24 bits)."""
    return values if fmt == "rdm6300" else [v & LOW24 for v in values]


# ---- serial throughput ----------------------------------------------------------------------------

async def serial_round(child: Child, field: Field, tap: HubTap, fmt: str, port: str, encoding: str,
                       values: list[int], profiler: cProfile.Profile | None = None) -> dict:
    drv = SerialCardReaderDriver(serial_config(fmt, port, encoding), field.desk)
    count_chunks(drv)
    task = asyncio.create_task(drv.run())
    try:
        await until(lambda: drv.line.connected, f"{fmt}: serial line open", UNTIL_S)
        tap.reset()
        if profiler:
            profiler.enable()
        c0 = time.process_time()
        burst = asyncio.create_task(child.call("burst", name=fmt, values=sim_values(fmt, values)))
        await tap.wait(len(values), 300, f"{fmt} burst")
        cpu = time.process_time() - c0
        if profiler:
            profiler.disable()
        sent = await burst
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    check_all_once(tap.cards, values, f"{fmt} burst")
    res = rates(tap.times)
    wall_s = (tap.times[-1] - sent["t0_ns"]) / 1e9
    res.update({"swipes": drv.swipes, "reads": drv.reads, "bad_input": drv.bad.total, "bytes": drv.line.bytes,
                "sim_bytes": sent["bytes"], "cpu_us_per_swipe": cpu / len(values) * 1e6,
                "wall_s_first_write_to_last_event": wall_s, "reads_per_chunk": drv.reads / max(1, _chunks(drv))})
    return res


def _chunks(drv: SerialCardReaderDriver) -> int:
    return getattr(drv, "_bench_chunks", 0)


def count_chunks(drv: SerialCardReaderDriver) -> None:
    """Count the reads the SerialLine hands over (one wrapper call per chunk)."""
    feed = drv.line.on_data
    drv._bench_chunks = 0

    def counted(data: bytes) -> None:
        drv._bench_chunks += 1
        feed(data)
    drv.line.on_data = counted


# ---- parser alone and the driver's stages -----------------------------------------------------------

def frames_of(fmt: str, encoding: str, values: list[int]) -> bytes:
    from simulators.card_reader import SerialCardReaderSim
    sim = SerialCardReaderSim(fmt, encoding=encoding, bits=26)  # frame() needs no pty
    return b"".join(sim.frame(v) for v in sim_values(fmt, values))


def parser_alone(fmt: str, encoding: str, values: list[int], repeat: int = 3) -> dict:
    data = frames_of(fmt, encoding, values)
    cfg = serial_config(fmt, "/dev/null", encoding)
    best = float("inf")
    for _ in range(repeat):
        parser = make_parser(cfg)
        t = time.perf_counter()
        n = 0
        for i in range(0, len(data), READ_CHUNK):
            n += len(parser.feed(data[i:i + READ_CHUNK]))
        best = min(best, time.perf_counter() - t)
        if n != len(values) or parser.errors:
            raise RuntimeError(f"{fmt} parser: {n} reads of {len(values)}, errors {dict(parser.errors)}")
    return {"per_s": len(values) / best, "us_per_swipe": best / len(values) * 1e6, "bytes": len(data)}


def stages(field: Field, values: list[int]) -> dict:
    """µs per swipe of each stage of SerialCardReaderDriver.feed, no I/O, RDM6300 cards."""
    data = frames_of("rdm6300", "decimal", values)
    parser = make_parser(serial_config("rdm6300", "/dev/null", "decimal"))
    t = time.perf_counter()
    reads: list[CardRead] = []
    for i in range(0, len(data), READ_CHUNK):
        reads += parser.feed(data[i:i + READ_CHUNK])
    parse = time.perf_counter() - t
    deb = Debounce(2.0)
    mono = time.monotonic
    t = time.perf_counter()
    accepted = sum(deb.accept(r.value, mono()) for r in reads)
    debounce = time.perf_counter() - t
    first = Debounce(2.0)  # the same, up to the table size where pruning starts
    t = time.perf_counter()
    for r in reads[:DEBOUNCE_PRUNE_AT]:
        first.accept(r.value, mono())
    debounce_first = time.perf_counter() - t
    hub = Hub()
    sub = hub.subscribe(CardSwipe)
    desk = CardDesk(field.registry, HASH_KEY, hub.publish)
    now = datetime.now(timezone.utc)
    t = time.perf_counter()
    for r in reads:
        desk.swipe("gate-n-in", "gate-n", "in", r.value, r.bits, now)
    swipe = time.perf_counter() - t
    if accepted != len(values) or sub.pending() != len(values):
        raise RuntimeError("stages: a card was debounced or lost")
    n = len(values)
    return {"parser": parse / n * 1e6, "debounce": debounce / n * 1e6,
            "debounce_first_1000": debounce_first / DEBOUNCE_PRUNE_AT * 1e6,
            "desk_and_hub": swipe / n * 1e6}


# ---- serial latency -------------------------------------------------------------------------------

class StageStamps:
    """Wrappers that stamp when a driver got its input and when the desk published the event."""

    def __init__(self, desk: CardDesk):
        self.current = 0
        self.input_ns: dict[str, int] = {}
        self.publish_ns: dict[str, int] = {}
        publish = desk.publish

        def stamped_publish(event) -> None:
            if not isinstance(event, CardSwipe):  # the reader's own DeviceStatus
                publish(event)
                return
            t = time.monotonic_ns()
            self.input_ns[event.card] = self.current
            self.publish_ns[event.card] = t
            publish(event)
        self.desk = CardDesk(desk.registry, desk.hash_key, stamped_publish, desk.clock)

    def wrap(self, fn):
        def stamped(*args) -> None:
            self.current = time.monotonic_ns()
            fn(*args)
        return stamped


def latency_figures(tap: HubTap, stamps: StageStamps, values: list[int], written_ns: list[int],
                    stage_names: tuple[str, str, str], skip: int) -> dict:
    hub_ns = {c: t for c, t in zip(tap.cards, tap.times)}
    by_low = {int(c) & LOW24: c for c in hub_ns}
    total, a, b, c_ = [], [], [], []
    for v, tw in list(zip(values, written_ns))[skip:]:
        card = by_low[v & LOW24]
        th, ti, tp = hub_ns[card], stamps.input_ns[card], stamps.publish_ns[card]
        total.append(ms(th - tw))
        a.append(ms(ti - tw))
        b.append(ms(tp - ti))
        c_.append(ms(th - tp))
    return {"total": dist(total), "stages": {stage_names[0]: dist(a), stage_names[1]: dist(b),
                                             stage_names[2]: dist(c_)}}


async def serial_latency(child: Child, field: Field, tap: HubTap, port: str, values: list[int],
                         gap_s: float, skip: int) -> dict:
    stamps = StageStamps(field.desk)
    drv = SerialCardReaderDriver(serial_config("rdm6300", port, "decimal"), stamps.desk)
    drv.line.on_data = stamps.wrap(drv.line.on_data)
    task = asyncio.create_task(drv.run())
    try:
        await until(lambda: drv.line.connected, "rdm6300: serial line open", UNTIL_S)
        tap.reset()
        sent = await child.call("spaced", name="rdm6300", values=values, gap_s=gap_s,
                                timeout=len(values) * gap_s + 60)
        await tap.wait(len(values), 10, "serial latency")
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    check_all_once(tap.cards, values, "serial latency")
    return latency_figures(tap, stamps, values, sent["t_ns"], ("pty+read", "driver", "hub"), skip)


# ---- MQTT ---------------------------------------------------------------------------------------

def mqtt_settings(port: int, client_id: str) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, client_id=client_id)


def mqtt_driver(field: Field, desk: CardDesk | None = None) -> MqttCardReaderDriver:
    cfg = MqttCardReader(id="acs-gate-s", type="mqtt", topic=MQTT_TOPIC, door="gate-s", readers=["gate-s-in"])
    return MqttCardReaderDriver(cfg, {"gate-s"}, desk or field.desk, field.tz)


async def gateway_link(port: int, handler, client_id: str) -> tuple[MqttLink, asyncio.Task]:
    link = MqttLink(mqtt_settings(port, client_id))
    link.subscribe(MQTT_TOPIC, handler)
    task = asyncio.create_task(link.run())
    await until(lambda: link.connected, "MQTT link connected and subscribed", UNTIL_S)
    return link, task


async def stop_link(link: MqttLink, task: asyncio.Task) -> None:
    link.stop()
    await asyncio.wait_for(task, 30)


async def mqtt_sessions(port: int, client_ids: list[str]) -> None:
    """A persistent session (clean_session=False, QoS 1 subscription) per client id, left offline:
    the broker keeps what is published meanwhile for each of them."""
    import aiomqtt
    for cid in client_ids:
        async with aiomqtt.Client("127.0.0.1", port, identifier=cid, clean_session=False) as c:
            await c.subscribe(MQTT_TOPIC, qos=1)


async def mqtt_gateway_drain(field: Field, tap: HubTap, port: int, values: list[int], client_id: str,
                             profiler: cProfile.Profile | None = None) -> dict:
    """The gateway connects with the session id that holds the backlog and handles it all."""
    tap.reset()
    drv = mqtt_driver(field)
    link = MqttLink(mqtt_settings(port, client_id))
    link.subscribe(MQTT_TOPIC, drv.handle)
    if profiler:
        profiler.enable()
    c0 = time.process_time()
    task = asyncio.create_task(link.run())
    try:
        await tap.wait(len(values), 300, "MQTT backlog into the gateway")
        cpu = time.process_time() - c0
        if profiler:
            profiler.disable()
    finally:
        await stop_link(link, task)
    check_all_once(tap.cards, values, "MQTT backlog")
    res = rates(tap.times)
    res.update({"swipes": drv.swipes, "bad_input": drv.bad.total, "messages": link.messages,
                "cpu_us_per_message": cpu / len(values) * 1e6})
    return res


async def mqtt_plain_drain(port: int, n: int, client_id: str, ack_after_handler: bool) -> dict:
    """A plain aiomqtt subscriber takes the same backlog and only counts it. With
    `ack_after_handler` it acknowledges each message after taking it, as MqttLink does
    (paho's manual ack); otherwise paho acknowledges on receipt (aiomqtt's default)."""
    import aiomqtt
    c = aiomqtt.Client("127.0.0.1", port, identifier=client_id, clean_session=False)
    if ack_after_handler:
        c._client.manual_ack_set(True)
    times: list[int] = []
    c0 = time.process_time()
    async with c:
        await c.subscribe(MQTT_TOPIC, qos=1)  # as MqttLink does after every connect
        async with asyncio.timeout(300):
            async for message in c.messages:
                if message.topic.value == MQTT_TOPIC and message.payload:
                    times.append(time.monotonic_ns())
                if ack_after_handler and message.qos:
                    c._client.ack(message.mid, message.qos)
                if len(times) >= n:
                    break
        cpu = time.process_time() - c0
    if len(times) != n:
        raise RuntimeError(f"plain subscriber: {len(times)} of {n} messages")
    res = rates(times)
    res["cpu_us_per_message"] = cpu / n * 1e6
    return res


def mqtt_handler_alone(field: Field, values: list[int]) -> float:
    """µs per message of MqttCardReaderDriver.handle alone (JSON, card, time, debounce, desk, hub),
    for the first 1000 cards (Debounce below its pruning size), no I/O."""
    tz = field.tz
    payloads = [json.dumps({"card": f"{v:010d}", "reader": "gate-s-in", "direction": "in",
                            "time": datetime.now(tz).isoformat(timespec="milliseconds")}).encode()
                for v in values[:DEBOUNCE_PRUNE_AT]]
    hub = Hub()
    hub.subscribe(CardSwipe)
    drv = mqtt_driver(field, CardDesk(field.registry, HASH_KEY, hub.publish))
    arrived = datetime.now(timezone.utc)
    t = time.perf_counter()
    for p in payloads:
        drv.handle(MQTT_TOPIC, p, arrived)
    elapsed = time.perf_counter() - t
    if drv.swipes != len(payloads):
        raise RuntimeError("MQTT handler alone: a swipe was lost")
    return elapsed / len(payloads) * 1e6


async def mqtt_latency(child: Child, field: Field, tap: HubTap, port: int, values: list[int], gap_s: float,
                       skip: int) -> dict:
    stamps = StageStamps(field.desk)
    drv = mqtt_driver(field, stamps.desk)
    link, task = await gateway_link(port, stamps.wrap(drv.handle), "bench-gateway-latency")
    try:
        tap.reset()
        sent = await child.call("mqtt_spaced", port=port, values=values, gap_s=gap_s,
                                timeout=len(values) * gap_s + 60)
        await tap.wait(len(values), 10, "MQTT latency")
    finally:
        await stop_link(link, task)
    check_all_once(tap.cards, values, "MQTT latency")
    return latency_figures(tap, stamps, values, sent["t_ns"], ("broker+link", "driver", "hub"), skip)


# ---- main ---------------------------------------------------------------------------------------------

async def main(args: argparse.Namespace) -> dict:
    from mosquitto import MOSQUITTO, Mosquitto

    result: dict = {"cores": os.cpu_count(), "loadavg_1min_at_start": round(os.getloadavg()[0], 2)}
    field = Field()
    out(f"card registry: {len(field.registry):,} cards from {CARDS_FILE.name} (loaded in {field.load_s:.2f} s); "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    rng = random.Random(1)
    cards = list(field.cards)
    rng.shuffle(cards)
    n = min(args.swipes, len(cards))
    burst_cards = cards[:n]
    formats = ("rdm6300", "wiegand_text")

    with tempfile.TemporaryDirectory(prefix="bench-field-") as tmp_:
        tmp = Path(tmp_)
        async with Child(__file__, tmp / "child.log") as child:
            tap = HubTap(field.hub)
            ports = {}
            for fmt in formats:
                ports[fmt] = (await child.call("reader", name=fmt, fmt=fmt, encoding=args.wiegand_encoding))["port"]
                if not ports[fmt].startswith("/dev/pts/"):
                    raise RuntimeError(f"simulator at {ports[fmt]}, expected a local pty")

            # ---- 1. serial throughput ----
            out(f"serial, full speed: {n:,} distinct registered cards per round, simulator in another process, "
                f"debounce 2 s (rdm6300; wiegand_text = Wiegand-26 {args.wiegand_encoding} lines):")
            rounds: dict[str, list[dict]] = {f: [] for f in formats}
            for r in range(args.rounds):
                order = formats if r % 2 == 0 else formats[::-1]
                for fmt in order:
                    res = await serial_round(child, field, tap, fmt, ports[fmt], args.wiegand_encoding, burst_cards)
                    rounds[fmt].append(res)
                    out(f"  round {r + 1} {fmt:<12}: {res['per_s']:8,.0f} swipes/s (first 1000: "
                        f"{res.get('first_1000_per_s', 0):8,.0f}/s, after: {res.get('after_1000_per_s', 0):7,.0f}/s), "
                        f"{res['cpu_us_per_swipe']:.1f} µs CPU/swipe, {res['bad_input']} bad input")
            serial: dict = {}
            for fmt in formats:
                best = max(rounds[fmt], key=lambda x: x["per_s"])
                alone = parser_alone(fmt, args.wiegand_encoding, burst_cards)
                serial[fmt] = {
                    "swipes_per_round": n, "swipes_per_s": round(best["per_s"]),
                    "first_1000_per_s": round(best.get("first_1000_per_s", 0)),
                    "after_1000_per_s": round(best.get("after_1000_per_s", 0)),
                    "cpu_us_per_swipe": round(best["cpu_us_per_swipe"], 2),
                    "parser_alone_per_s": round(alone["per_s"]),
                    "parser_alone_us_per_swipe": round(alone["us_per_swipe"], 3),
                    "ratio_to_parser_alone": round(best["per_s"] / alone["per_s"], 4),
                    "rounds": [{k: round(v, 3) if isinstance(v, float) else v for k, v in x.items()}
                               for x in rounds[fmt]],
                }
                out(f"  {fmt:<12}: best {best['per_s']:,.0f} swipes/s through the pty and the whole driver; "
                    f"parser alone {alone['per_s']:,.0f}/s ({alone['us_per_swipe']:.2f} µs/swipe) -> ratio "
                    f"{best['per_s'] / alone['per_s']:.3f}")
            result["serial"] = serial
            st = stages(field, burst_cards)
            result["breakdown_us_per_swipe"] = {k: round(v, 3) for k, v in st.items()}
            out(f"  driver stages without I/O (rdm6300, {n:,} cards back to back), µs per swipe: parser "
                f"{st['parser']:.2f}, Debounce.accept {st['debounce']:.2f} (first {DEBOUNCE_PRUNE_AT}: "
                f"{st['debounce_first_1000']:.2f}), CardDesk.swipe + Hub.publish {st['desk_and_hub']:.2f}")

            # ---- 2. MQTT throughput ----
            m = min(args.mqtt_messages, len(cards))
            if not os.access(MOSQUITTO, os.X_OK):
                raise SystemExit(f"{MOSQUITTO} is not installed (tools/setup-tests.sh installs it)")

            class BenchBroker(Mosquitto):
                def _write_conf(self) -> None:
                    super()._write_conf()
                    with open(self.conf, "a") as f:
                        f.write("max_queued_messages 0\n")  # keep the whole backlog of the bench

            (tmp / "mosquitto").mkdir()
            broker = BenchBroker(tmp / "mosquitto", persistence=False)
            broker.start()
            try:
                out(f"MQTT: a backlog of {m:,} JSON swipes (QoS 1, distinct registered cards) handed over by "
                    f"mosquitto on 127.0.0.1:{broker.port}:")
                mqtt_cards = cards[:m]
                ids = {"gateway": "bench-gateway", "plain": "bench-plain", "plain_ack": "bench-plain-ack"}
                await mqtt_sessions(broker.port, list(ids.values()))
                pub = await child.call("mqtt_backlog", port=broker.port, values=mqtt_cards)
                out(f"  publisher process: {m:,} messages in {pub['seconds']:.1f} s, kept for 3 offline sessions")
                g = await mqtt_gateway_drain(field, tap, broker.port, mqtt_cards, ids["gateway"])
                out(f"  gateway (MqttLink + MqttCardReaderDriver + desk + hub): {g['per_s']:,.0f} messages/s "
                    f"(first 1000: {g.get('first_1000_per_s', 0):,.0f}/s, "
                    f"after: {g.get('after_1000_per_s', 0):,.0f}/s), {g['cpu_us_per_message']:.1f} µs CPU/message")
                p = await mqtt_plain_drain(broker.port, m, ids["plain"], ack_after_handler=False)
                out(f"  plain aiomqtt subscriber: {p['per_s']:,.0f} messages/s, {p['cpu_us_per_message']:.1f} µs "
                    f"CPU/message -> ratio gateway/plain {g['per_s'] / p['per_s']:.3f}")
                pa = await mqtt_plain_drain(broker.port, m, ids["plain_ack"], ack_after_handler=True)
                h = mqtt_handler_alone(field, mqtt_cards)
                out(f"  context: plain aiomqtt acknowledging each message after taking it (as MqttLink does): "
                    f"{pa['per_s']:,.0f} messages/s, {pa['cpu_us_per_message']:.1f} µs CPU/message; "
                    f"MqttCardReaderDriver.handle alone (first {DEBOUNCE_PRUNE_AT}, no I/O): {h:.1f} µs/message")
                result["mqtt"] = {
                    "messages": m, "gateway_per_s": round(g["per_s"]), "plain_per_s": round(p["per_s"]),
                    "ratio": round(g["per_s"] / p["per_s"], 4),
                    "gateway_first_1000_per_s": round(g.get("first_1000_per_s", 0)),
                    "gateway_after_1000_per_s": round(g.get("after_1000_per_s", 0)),
                    "gateway_cpu_us_per_message": round(g["cpu_us_per_message"], 2),
                    "plain_cpu_us_per_message": round(p["cpu_us_per_message"], 2),
                    "plain_ack_after_handler_per_s": round(pa["per_s"]),
                    "plain_ack_after_handler_cpu_us_per_message": round(pa["cpu_us_per_message"], 2),
                    "handler_alone_us_per_message_first_1000": round(h, 2),
                    "publisher_s": round(pub["seconds"], 2),
                }

                # ---- 3. latency ----
                k = args.latency_swipes + args.warmup_swipes
                lat_cards = cards[-k:]  # not used above: no debounce state matters anyway (fresh drivers)
                gap = args.gap_ms / 1000
                out(f"latency: {args.latency_swipes} single swipes {args.gap_ms:g} ms apart (after "
                    f"{args.warmup_swipes} not counted), stamped with CLOCK_MONOTONIC in both processes:")
                s = await serial_latency(child, field, tap, ports["rdm6300"], lat_cards, gap, args.warmup_swipes)
                out(f"  serial rdm6300, frame written -> CardSwipe in the hub: {fmt_dist(s['total'], show_n=False)}")
                out("    stages: " + "; ".join(f"{name} {fmt_dist(d, show_n=False)}" for name, d in s["stages"].items()))
                q = await mqtt_latency(child, field, tap, broker.port, lat_cards, gap, args.warmup_swipes)
                out(f"  MQTT, publish -> CardSwipe in the hub: {fmt_dist(q['total'], show_n=False)}")
                out("    stages: " + "; ".join(f"{name} {fmt_dist(d, show_n=False)}" for name, d in q["stages"].items()))
                result["latency_ms"] = {"serial_rdm6300": s, "mqtt": q, "gap_ms": args.gap_ms,
                                        "clock": "CLOCK_MONOTONIC (time.monotonic_ns) in both processes"}

                # ---- profile (not in the figures) ----
                if args.profile:
                    prof = cProfile.Profile()
                    await serial_round(child, field, tap, "rdm6300", ports["rdm6300"], args.wiegand_encoding,
                                       burst_cards, prof)
                    result["profile_serial"] = print_profile(prof, args.profile, n, "an rdm6300 pty round", "swipe")
                    prof = cProfile.Profile()
                    await mqtt_sessions(broker.port, ["bench-gateway-prof"])
                    await child.call("mqtt_backlog", port=broker.port, values=mqtt_cards)
                    await mqtt_gateway_drain(field, tap, broker.port, mqtt_cards, "bench-gateway-prof", prof)
                    result["profile_mqtt"] = print_profile(prof, args.profile, m, "a gateway MQTT backlog", "swipe")
            finally:
                broker.stop()
                await tap.close()

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["peak_rss_mib"] = round(rss, 1)
    out(f"peak RSS of this process (gateway side, 12,000-card registry loaded): {rss:.1f} MiB")
    p99 = result["latency_ms"]["serial_rdm6300"]["total"]["p99"]
    result["targets"] = TARGETS
    result["targets_met"] = {"serial_latency_p99": p99 < TARGETS["serial_latency_p99_ms_max"]}
    out(f"target serial latency p99 < {TARGETS['serial_latency_p99_ms_max']:g} ms: "
        f"{'met' if result['targets_met']['serial_latency_p99'] else 'MISSED'} ({p99:.2f} ms)")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--swipes", type=int, default=12_000, help="distinct cards per serial round (max 12,000)")
    p.add_argument("--rounds", type=int, default=2, help="serial rounds per format, alternating (default 2)")
    p.add_argument("--mqtt-messages", type=int, default=12_000, help="MQTT backlog size (max 12,000)")
    p.add_argument("--latency-swipes", type=int, default=500)
    p.add_argument("--warmup-swipes", type=int, default=10, help="latency swipes sent first and not counted")
    p.add_argument("--gap-ms", type=float, default=20.0, help="time between latency swipes (default 20)")
    p.add_argument("--wiegand-encoding", default="decimal", choices=("hex_raw", "hex", "decimal", "fac_card"))
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile one rdm6300 pty round and one MQTT backlog; print N costliest functions")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if (args.swipes < DEBOUNCE_PRUNE_AT + 2 or args.mqtt_messages < 2 or args.rounds < 1 or args.latency_swipes < 1
            or args.warmup_swipes < 0 or args.gap_ms <= 0 or args.profile < 0
            or args.latency_swipes + args.warmup_swipes > 12_000):
        p.error("--swipes > 1001, --mqtt-messages >= 2, --rounds >= 1, --latency-swipes >= 1, --gap-ms > 0")
    return args


if __name__ == "__main__":
    run(main, parse_args, _child_main)
