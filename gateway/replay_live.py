"""`gateway replay FILE -c SITE --transports`: a recording played back on real transports to the
real gateway, under a simulated clock.

`gateway/replay.py` feeds the records straight into the drivers' parsers. This mode runs the
whole gateway instead — `Gateway.run()` with its Modbus schedulers, serial lines, MQTT link,
rules, ledger and alert publisher — against devices that play the recording back
(simulators/replay.py):

- each Modbus bus is served by a scripted server on loopback (MBAP or RTU over TCP, RTU on a
  pty, as the bus is configured) that answers a meter's request from its recorded poll nearest
  in time, silent / with an exception / with a bad CRC where the recorded poll failed so;
- each serial card reader and patrol wand reads a pty whose master gets the recorded bytes at
  their recorded times;
- the recorded MQTT messages are published at their times to a broker the gateway's link is
  connected to (given with `broker=`, else an embedded amqtt broker in a thread of its own);
- acknowledgements go to `Gateway.ack_alert` on the open alert of their rule and source, meter
  replacements into the ledger's `meter_replacements` (which the runtime polls), at their times.

**Time.** The gateway and the players share one clock: the loop's. `VirtualTimeLoop` is a
selector event loop whose `time()` is virtual. When no callback is ready it polls real I/O
without waiting; when nothing came and nothing is *held*, it jumps to the next timer. Real I/O
that is known to be in flight holds the jump: a Modbus request until the server has it, an
answer until the gateway has read it; serial bytes until the gateway's line has read them; a
recorded MQTT message until the gateway's link has dispatched it; the gateway's own MQTT
connect, subscribe and publish (PUBACK); any executor job (aiomqtt's blocking connect). While
held, virtual time runs at the real rate, so every timeout keeps its meaning. `LoopClock`
(gateway/clock.py) makes the gateway's `Clock` read that time, so its timestamps, the
scheduler's deadlines and every asyncio timeout (pymodbus, aiomqtt) agree. With `speed=N` the
loop's time runs at N × real time instead of jumping (and at the real rate while held).

Each bus starts polling at its first recorded poll (the live gateway took that long to connect),
so the replayed scheduler's grid is the recorded one and each poll finds its recorded answer.

paho-mqtt keeps its keepalive on the real monotonic clock: a replay runs in seconds to a minute
of real time, so the 30 s keepalive works as usual. The embedded broker runs in a thread with
its own real-time loop. (amqtt 0.12 inside the virtual loop was tried and works too — its
keepalive read timeout only wakes it — but in a thread nothing of the broker runs on simulated
time, and it behaves like the external broker it stands for.)

Differences from the in-process replay, by construction: the rules tick once per simulated
second from the recording's start (not on whole seconds), so tick-driven alerts may move by
up to a second; the serial readers report themselves online when their port opens; after the
last record the meters keep answering with their last recorded poll (no stale buses in the tail).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import selectors
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Callable

from .clock import LoopClock
from .config import SiteConfig, parse_site
from .events import AlertChange
from .mqtt import MqttLink, MqttSettings, topic_matches
from .recording import read
from .runtime import Gateway
from .sinks.alert_message import alert_messages

log = logging.getLogger(__name__)

_HELD_POLL_S = 0.05       # a held loop waits for real I/O this long at most before looking again


# ---- the loop ---------------------------------------------------------------------------------

class _Selector(selectors.DefaultSelector):
    loop: "VirtualTimeLoop"

    def select(self, timeout=None):
        return self.loop._select(super().select, timeout)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop on simulated time (see the module's docstring).

    `hold(key)` / `release(key)` mark real I/O in flight: while any key is held the loop does
    not jump, and its time runs at the real rate. A key held longer than `hold_max_s` (real) is
    given up with a warning, so a lost message cannot stop the replay. With `speed`, time runs
    at real time × speed instead of jumping, and at the real rate while held: the latency of
    the transports is not multiplied into the gateway's timeouts (a 0.5 s Modbus timeout would
    be 2.5 ms of real time at × 200).
    """

    def __init__(self, speed: float | None = None, hold_max_s: float = 10.0):
        selector = _Selector()
        selector.loop = self
        self.speed = speed
        self.hold_max_s = hold_max_s
        self._rt = time.monotonic()  # with speed: real time at the last change of rate
        self._vt = self._rt          # virtual time (with speed: at _rt)
        self._rate = speed or 1.0
        self._holds: dict[object, tuple[float, str]] = {}
        self.jumps = 0               # times the clock jumped to the next timer
        self.jumped_s = 0.0          # simulated seconds skipped that way
        self.held_s = 0.0            # simulated (= real) seconds spent waiting for held I/O
        self.given_up: Counter = Counter()   # holds dropped after hold_max_s, by what they were
        self.held_by: Counter = Counter()    # real seconds waited for held I/O, by the first hold's kind
        super().__init__(selector)

    def time(self) -> float:
        if self.speed:
            return self._vt + (time.monotonic() - self._rt) * self._rate
        return self._vt

    def _rerate(self) -> None:
        """With speed: the rate follows the holds (real rate while held)."""
        now = time.monotonic()
        self._vt += (now - self._rt) * self._rate
        self._rt = now
        self._rate = 1.0 if self._holds else self.speed

    # ---- holds ----

    def hold(self, key: object, what: str = "") -> None:
        if key not in self._holds:
            self._holds[key] = (time.monotonic(), what or str(key))
            if self.speed and len(self._holds) == 1:
                self._rerate()

    def release(self, key: object) -> None:
        if self._holds.pop(key, None) is not None and self.speed and not self._holds:
            self._rerate()

    @contextlib.contextmanager
    def held(self, what: str):
        key = object()
        self.hold(key, what)
        try:
            yield
        finally:
            self.release(key)

    @property
    def holding(self) -> list[str]:
        return [what for _, what in self._holds.values()]

    def _expire_holds(self) -> None:
        limit = time.monotonic() - self.hold_max_s
        for key, (since, what) in list(self._holds.items()):
            if since < limit:
                self.release(key)
                self.given_up[what.split(" ")[0]] += 1
                log.warning("replay: gave up waiting for %s after %.0f s (real)", what, self.hold_max_s)

    def run_in_executor(self, executor, func, *args):
        fut = super().run_in_executor(executor, func, *args)
        key = object()
        self.hold(key, f"executor {getattr(func, '__qualname__', func)}")
        fut.add_done_callback(lambda _: self.release(key))
        return fut

    # ---- the clock ----

    def _select(self, select, timeout):
        if timeout is not None and timeout <= 0:
            return select(0)
        if self._holds:
            self._expire_holds()
        if self.speed:
            wait = None if timeout is None else timeout / self._rate
            if self._holds:
                wait = _HELD_POLL_S if wait is None else min(wait, _HELD_POLL_S)
            return select(wait)
        if self._holds:
            began = time.monotonic()
            events = select(_HELD_POLL_S if timeout is None else min(timeout, _HELD_POLL_S))
            spent = time.monotonic() - began
            self._vt += spent
            self.held_s += spent
            for _, what in self._holds.values():
                self.held_by[" ".join(what.split(" ")[:2])] += spent
                break
            return events
        events = select(0)
        if events:
            return events
        if timeout is None:          # no timer at all: only real I/O (a thread, the broker) can wake us
            return select(None)
        self._vt += timeout          # nothing in flight: on to the next timer
        self.jumps += 1
        self.jumped_s += timeout
        return []


# ---- the gateway, instrumented for the holds ----------------------------------------------------

class _ReplayLink(MqttLink):
    """The gateway's MQTT link on the replay's clock; holds the loop while its own I/O is in
    flight, and tells the replay which recorded messages it has dispatched."""

    def __init__(self, settings: MqttSettings, loop: VirtualTimeLoop, clock, on_dispatch: Callable):
        super().__init__(settings, clock_monotonic=clock.monotonic, clock_now=clock.now)
        self._vloop = loop
        self._on_dispatch = on_dispatch
        self.asked = 0               # publish() calls (the alert messages)
        self.inflight = 0

    def _make_client(self):
        client = super()._make_client()
        enter = client.__aenter__
        vloop = self._vloop

        async def entered():
            with vloop.held("MQTT connect"):
                return await enter()
        client.__aenter__ = entered
        return client

    async def _subscribe(self, session, subs) -> None:
        with self._vloop.held("MQTT subscribe"):
            return await super()._subscribe(session, subs)

    async def publish(self, topic, payload, qos=None, retain=False) -> bool:
        self.asked += 1
        self.inflight += 1
        try:
            with self._vloop.held("MQTT publish"):
                return await super().publish(topic, payload, qos, retain)
        finally:
            self.inflight -= 1

    async def _flush(self, session, deadline=None) -> None:
        if not self._outbox:
            return await super()._flush(session, deadline)
        with self._vloop.held("MQTT outbox"):
            return await super()._flush(session, deadline)

    def _dispatch(self, client, message) -> None:
        try:
            super()._dispatch(client, message)
        finally:
            payload = message.payload
            self._on_dispatch(message.topic.value, payload if isinstance(payload, bytes) else bytes(payload or b""))


class _ReplayGateway(Gateway):
    def __init__(self, cfg: SiteConfig, clock: LoopClock, loop: VirtualTimeLoop, on_dispatch: Callable,
                 on_serial: Callable[[str, int], None], first_polls: dict[str, datetime], exchanging: set[str]):
        super().__init__(cfg, clock=clock, announce=False)   # a recording is not a box on a site
        self._vloop = loop
        self._exchanging = exchanging      # buses with an exchange in progress (their answers are awaited)
        self._on_dispatch = on_dispatch
        self._on_serial = on_serial
        for bus in self.buses:
            self._hold_exchanges(bus)
            if bus.bus.id in first_polls:
                self._start_at(bus, first_polls[bus.bus.id])

    def _start_at(self, bus, first: datetime) -> None:
        """The bus starts polling at its first recorded poll: the live gateway took that long
        to connect, and its scheduler's grid (each meter's deadlines) starts there."""
        run = bus.run

        async def delayed() -> None:
            wait = (first - self.clock.now()).total_seconds()
            if wait > 0:
                try:
                    async with asyncio.timeout(wait):
                        await bus._stop.wait()
                    return
                except TimeoutError:
                    pass
            await run()
        bus.run = delayed

    def _hold_exchanges(self, bus) -> None:
        """Hold the loop while a request of this bus is on its way to the server (released by
        the server when it has it) and while its answer is on the way back."""
        make, vloop, key, exchanging = bus._make_client, self._vloop, ("modbus", bus.bus.id), self._exchanging

        def wrapped(fn, what):
            async def call(*args, **kwargs):
                vloop.hold(key, f"modbus {bus.bus.id} {what}")
                exchanging.add(bus.bus.id)
                try:
                    return await fn(*args, **kwargs)
                finally:
                    exchanging.discard(bus.bus.id)
                    vloop.release(key)
            return call

        def make_client():
            client = make()
            client.connect = wrapped(client.connect, "connect")
            client.read_holding_registers = wrapped(client.read_holding_registers, "exchange")
            client.read_input_registers = wrapped(client.read_input_registers, "exchange")
            return client
        bus._make_client = make_client

    def _mqtt_link(self):
        plain = super()._mqtt_link()
        return _ReplayLink(plain.settings, self._vloop, self.clock, self._on_dispatch)

    def _field_devices(self) -> list:
        runs = super()._field_devices()
        for d in self.field_drivers:
            line = getattr(d, "line", None)
            if line is None:
                continue
            feed, device = line.on_data, d.cfg.id

            def counted(data: bytes, *rest, feed=feed, device=device) -> None:
                try:
                    feed(data, *rest)
                finally:
                    self._on_serial(device, len(data))
            line.on_data = counted
        return runs


# ---- the replay -------------------------------------------------------------------------------

@dataclass
class TransportReplay:
    """What a transports replay gave: the alert changes, and what went over the transports."""

    changes: list[AlertChange] = field(default_factory=list)
    modbus_requests: dict[str, int] = field(default_factory=dict)      # per bus: requests the server got
    modbus_answers: dict[str, int] = field(default_factory=dict)       # per bus: answers it sent
    modbus_silent: dict[str, int] = field(default_factory=dict)        # per bus: requests left unanswered
    serial_bytes: dict[str, int] = field(default_factory=dict)         # per device: bytes written to its pty
    serial_read: dict[str, int] = field(default_factory=dict)          # per device: bytes the gateway read
    mqtt_published: int = 0          # recorded messages published to the broker
    mqtt_dispatched: int = 0         # of those, dispatched by the gateway's link
    alert_messages: int = 0          # alert messages the gateway's link published
    acks: int = 0
    replacements: int = 0
    skipped: int = 0
    polls: int = 0                   # polls the gateway made
    bus_stats: dict[str, dict] = field(default_factory=dict)           # per bus: the gateway's own counters
    simulated_s: float = 0.0
    real_s: float = 0.0
    jumps: int = 0
    held_s: float = 0.0
    held_by: dict[str, float] = field(default_factory=dict)
    given_up: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.simulated_s:.0f} s simulated in {self.real_s:.1f} s: {self.polls} polls "
                f"({sum(self.modbus_requests.values())} Modbus requests, {sum(self.modbus_silent.values())} "
                f"unanswered), {sum(self.serial_bytes.values())} serial bytes, {self.mqtt_published} MQTT "
                f"messages in, {self.alert_messages} alert messages out")


def _load(recording: Path) -> tuple[dict, list[dict], int]:
    records = read(recording)
    header = next(records, None)
    if not header or header.get("type") != "header":
        raise ValueError(f"{recording}: not a gateway recording (no header line)")
    kept, bad = [], 0
    for rec in records:
        if rec.get("type") == "bad" or "t" not in rec:
            bad += 1
            continue
        kept.append(rec)
    kept.sort(key=lambda r: r["t"])   # stable: records of one instant keep their order
    return header, kept, bad


def replay_transports(cfg: SiteConfig, recording: Path, speed: float | None = None, tail_s: float = 0.0,
                      on_alert: Callable[[AlertChange], None] | None = None,
                      broker: tuple[str, int] | None = None, hold_max_s: float = 10.0) -> TransportReplay:
    """Replay `recording` through the simulators and the real gateway on real transports.

    Runs its own event loop (call it where no loop is running). `speed` None: as fast as
    possible (simulated time); N: N times real time. `broker` (host, port): the MQTT broker to
    use, else an embedded one. Returns the alert changes, in order, and transport counters."""
    header, records, bad = _load(Path(recording))
    if cfg.mqtt is None and any(r.get("type") == "mqtt" for r in records):
        log.warning("replay: the recording has MQTT messages but the site file has no mqtt section: "
                    "they are skipped")
    with asyncio.Runner(loop_factory=lambda: VirtualTimeLoop(speed, hold_max_s)) as runner:
        result = runner.run(_replay(cfg, header, records, tail_s, on_alert, broker))
    result.skipped += bad
    if result.skipped:
        log.warning("replay: %d records skipped (unknown meters, devices or topics, or not JSON)", result.skipped)
    return result


async def _until(cond: Callable[[], bool], loop: VirtualTimeLoop, what: str, timeout_s: float) -> bool:
    """Wait in real time (the loop held) until cond() holds; False after timeout_s."""
    with loop.held(what):
        deadline = time.monotonic() + timeout_s
        while not cond():
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.005)
    return True


async def _replay(cfg: SiteConfig, header: dict, records: list[dict], tail_s: float,
                  on_alert: Callable[[AlertChange], None] | None,
                  broker: tuple[str, int] | None) -> TransportReplay:
    from simulators.replay import MqttPlayer, PollScript, PtyPort, ThreadedBroker, scripted_server

    from .drivers.modbus_plan import plan_for_model
    from .ledger import Replacement

    loop = asyncio.get_running_loop()
    if not isinstance(loop, VirtualTimeLoop):
        raise RuntimeError("a transports replay runs on a VirtualTimeLoop (use replay_transports)")
    real0 = time.perf_counter()
    out = TransportReplay()
    start = datetime.fromtimestamp(header["t"], timezone.utc)
    clock = LoopClock(start, loop)

    def now_s() -> float:
        return header["t"] + (loop.time() - clock.t0)

    if not cfg.rules:
        raise ValueError("the site file has no rules: nothing to replay into")
    # ---- Modbus: one scripted server per bus with enabled meters ----
    enabled = [m for m in cfg.meters if m.enabled]
    for b in cfg.buses:
        if b.type == "dlt645" and any(m.bus == b.id for m in enabled):
            raise ValueError(f"bus {b.id}: DL/T 645 buses cannot be replayed on their transport yet "
                             "(replay without --transports)")
    plans = {m.id: [(r.function, r.address, r.count)
                    for r in plan_for_model(cfg.models[m.model], cfg.bus(m.bus).max_gap_registers)]
             for m in enabled}
    script = PollScript(plans, {m.id: m.poll_s for m in enabled})
    others = []
    first_polls: dict[str, datetime] = {}
    for rec in records:
        if rec.get("type") == "poll":
            script.add(rec)
            if rec.get("bus") and rec["bus"] not in first_polls:
                first_polls[rec["bus"]] = datetime.fromtimestamp(rec["t"], timezone.utc)
        else:
            others.append(rec)
    out.skipped += script.unknown
    servers = {}
    exchanging: set[str] = set()

    def answering(bus_id: str) -> None:
        if bus_id in exchanging:   # an answer nobody waits for any more (after a timeout) holds nothing
            loop.hold(("modbus", bus_id), f"modbus {bus_id} answer")

    for b in cfg.buses:
        units = {m.unit: m.id for m in enabled if m.bus == b.id}
        if not units:
            continue
        servers[b.id] = scripted_server(b, units, script, now_s,
                                        on_request=lambda key=("modbus", b.id): loop.release(key),
                                        on_reply=lambda bus_id=b.id: answering(bus_id))

    # ---- serial devices: a pty each ----
    serial_cfgs = [r for r in cfg.card_readers if r.type == "serial"] + \
                  [r for r in cfg.patrol.readers if r.type == "wand"]
    ports = {r.id: PtyPort() for r in serial_cfgs}
    written: Counter = Counter()
    received: Counter = Counter()

    def on_serial(device: str, n: int) -> None:
        received[device] += n
        if received[device] >= written[device]:
            loop.release(("serial", device))

    # ---- MQTT: the broker and the player ----
    pending_mqtt: Counter = Counter()

    def on_dispatch(topic: str, payload: bytes) -> None:
        k = (topic, payload)
        if pending_mqtt[k] > 0:
            pending_mqtt[k] -= 1
            out.mqtt_dispatched += 1
            if pending_mqtt[k] == 0:
                del pending_mqtt[k]
        if not pending_mqtt:
            loop.release("mqtt in")

    embedded = player = None
    tmp = tempfile.TemporaryDirectory(prefix="gateway-replay-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    gw = run_task = collector = None
    try:
        for s in servers.values():
            await s.start()
        for p in ports.values():
            await p.start()
        data = cfg.model_dump(mode="json", by_alias=True)
        data["storage"]["path"] = str(Path(tmp.name) / "replay.db")
        data.pop("influxdb", None)
        data["web"] = {**data.get("web", {}), "enabled": False}
        data.setdefault("alerts", {})["webhooks"] = []
        for bd in data.get("buses", []):
            s = servers.get(bd["id"])
            if s is None:
                continue
            if bd["type"] == "modbus_tcp":
                bd.update(host=s.host, port=s.port)
            else:
                bd.update(port=s.port_path, parity="N")   # Linux refuses parity on a pty
        for rd in data.get("card_readers", []) + data.get("patrol", {}).get("readers", []):
            if rd["id"] in ports:
                rd.update(port=ports[rd["id"]].port_path, parity="N")
        mqtt_where = None
        tag = f"{os.getpid()}-{os.urandom(3).hex()}"
        if data.get("mqtt"):
            if broker is None:
                embedded = ThreadedBroker()
                await loop.run_in_executor(None, embedded.start)
                mqtt_where = (embedded.host, embedded.port)
                data["mqtt"] = {"host": embedded.host, "port": embedded.port}
            else:
                mqtt_where = broker
                data["mqtt"].update(host=broker[0], port=broker[1])
            # Never the live gateway's client id: its persistent session is not ours to take.
            data["mqtt"]["client_id"] = f"replay-{cfg.site.id}-{tag}"[:64]
        gw_cfg = parse_site(data, base_dir=cfg.base_dir, source="replayed site")
        if mqtt_where is not None:
            player = MqttPlayer(*mqtt_where, client_id=f"replay-player-{tag}",
                                username=os.environ.get(cfg.mqtt.username_env) if cfg.mqtt.username_env else None,
                                password=os.environ.get(cfg.mqtt.password_env) if cfg.mqtt.password_env else None)
            await loop.run_in_executor(None, player.start)

        gw = _ReplayGateway(gw_cfg, clock, loop, on_dispatch, on_serial, first_polls, exchanging)
        alerts_sub = gw.hub.subscribe(AlertChange, name="replay alerts")

        def take(batch) -> None:
            for c in batch:
                out.changes.append(c)
                if on_alert:
                    on_alert(c)

        async def collect() -> None:
            while True:
                take(await alerts_sub.get_batch())

        collector = asyncio.create_task(collect(), name="replay alerts")
        run_task = asyncio.create_task(gw.run(status_every_s=None), name="gateway")

        def ready() -> bool:
            if run_task.done():
                return True
            lines = [d.line for d in gw.field_drivers if getattr(d, "line", None) is not None]
            return all(line.connected for line in lines) and (gw.mqtt is None or gw.mqtt.connected)

        if not await _until(ready, loop, "start", 30.0):
            raise OSError("the gateway did not connect to the replay's devices within 30 s: "
                          + ", ".join(f"{d.cfg.id} not open" for d in gw.field_drivers
                                      if getattr(d, "line", None) is not None and not d.line.connected)
                          + ("" if gw.mqtt is None or gw.mqtt.connected else " MQTT not connected"))
        if run_task.done():
            run_task.result()
            raise RuntimeError("the gateway stopped at start")

        # ---- play the records at their times ----
        last_t = records[-1]["t"] if records else header["t"]
        for rec in others:
            delay = rec["t"] - now_s()
            if delay > 0:
                await asyncio.sleep(delay)
            kind = rec.get("type")
            if kind == "serial":
                port = ports.get(rec.get("device"))
                if port is None:
                    out.skipped += 1
                    continue
                chunk = bytes.fromhex(rec.get("data", ""))
                if not chunk:
                    continue
                written[rec["device"]] += len(chunk)
                loop.hold(("serial", rec["device"]), f"serial {rec['device']} bytes")
                port.write_raw(chunk)
            elif kind == "mqtt":
                filters = gw.mqtt.subscriptions() if player is not None and gw.mqtt is not None else {}
                if not any(topic_matches(f, rec.get("topic", "")) for f in filters):
                    out.skipped += 1       # no handler of this site takes it (as the in-process replay)
                    continue
                payload = (rec["payload"].encode() if "payload" in rec
                           else bytes.fromhex(rec.get("payload_hex", "")))
                pending_mqtt[(rec["topic"], payload)] += 1
                loop.hold("mqtt in", "MQTT in: a recorded message to the gateway")
                await loop.run_in_executor(None, player.publish_wait, rec["topic"], payload)
                out.mqtt_published += 1
            elif kind == "ack":
                alert = gw.rules.book.get(rec.get("rule", ""), rec.get("source", ""))
                if alert is None or gw.ack_alert(alert.id, rec.get("by", ""), rec.get("note", "")) is None:
                    log.warning("replay: acknowledgement at %s of %s/%s: no such open alert",
                                clock.now().isoformat(), rec.get("rule"), rec.get("source"))
                    out.skipped += 1
                else:
                    out.acks += 1
            elif kind == "replacement":
                gw.ledger.record_replacement(Replacement(
                    rec["meter"], datetime.fromtimestamp(rec["at"], timezone.utc), Decimal(rec["old_final"]),
                    Decimal(rec["new_initial"]), by="replay", note="from the recording", recorded=clock.now()))
                out.replacements += 1
            else:
                out.skipped += 1
        delay = last_t + tail_s - now_s()
        if delay > 0:
            await asyncio.sleep(delay)

        # ---- let the alerts reach the broker, then stop ----
        prefix = gw_cfg.alert_prefix
        link = gw.mqtt
        if link is not None:
            def sent() -> bool:
                want = sum(len(alert_messages(c, prefix)) for c in out.changes)
                return (not alerts_sub.pending() and link.asked >= want and not link.inflight
                        and not link.pending())
            await asyncio.sleep(0)
            if not await _until(sent, loop, "alert messages", 15.0):
                log.warning("replay: not every alert message reached the broker")
        gw.stop()
        await run_task
        take(alerts_sub.take_all())
    finally:
        if collector is not None:
            collector.cancel()
            await asyncio.gather(collector, return_exceptions=True)
        if run_task is not None and not run_task.done():
            gw.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(run_task, 10)
        for bus_id, s in servers.items():
            out.modbus_requests[bus_id] = s.requests
            out.modbus_answers[bus_id] = s.answers
            out.modbus_silent[bus_id] = s.silent
            await s.stop()
        for dev, p in ports.items():
            out.serial_bytes[dev] = p.bytes_sent
            out.serial_read[dev] = received[dev]
            await p.stop()
        if player is not None:
            await loop.run_in_executor(None, player.stop)
        if embedded is not None:
            await loop.run_in_executor(None, embedded.stop)
        tmp.cleanup()
    if gw is not None:
        out.polls = sum(st.stats.polls for b in gw.buses for st in b.meters)
        out.bus_stats = {b.bus.id: b.stats() for b in gw.buses}
        out.alert_messages = gw.mqtt.published if gw.mqtt is not None else 0
    out.simulated_s = (clock.now() - start).total_seconds()
    out.real_s = time.perf_counter() - real0
    out.jumps = loop.jumps
    out.held_s = loop.held_s
    out.given_up = dict(loop.given_up)
    out.held_by = {k: round(v, 3) for k, v in loop.held_by.items()}
    return out

