"""Devices that play a recording (`gateway run --record`) back on real transports.

Used by `gateway replay --transports` (gateway/replay_live.py), which runs the real gateway
against them under a simulated clock:

- `PollScript` + `scripted_server(...)`: one Modbus server per bus (the framing and line timing
  of simulators/modbus_server.py: MBAP over TCP, RTU over TCP, RTU on a pty). A request for a
  meter is answered from that meter's recorded poll nearest in time ("at or before now", with a
  slack of half the meter's poll period, since the replayed scheduler may run a fraction of a
  second ahead of the recorded one; before the first poll, the first), attempt by attempt:
  registers, silence (NoAnswer), an exception reply, a corrupted answer (Garbled: a bad CRC on
  RTU framing, a short answer on MBAP), or, on TCP, a dropped connection (BusDown).
- `PtyPort` (simulators/card_reader.py) for each serial card reader and patrol wand: the replay
  writes the recorded bytes to its master side at their recorded times.
- `MqttPlayer`: publishes the recorded MQTT messages through a broker, from paho's own thread
  (real time), so the simulated clock of the gateway's loop does not touch its connection.
- `ThreadedBroker`: an embedded amqtt broker in a thread with its own (real-time) event loop,
  for `gateway replay --transports` without `--broker`.

The hooks (`on_request`, `on_reply`) let the replay know when a request reached a server and
when an answer was put on the wire, so its simulated clock does not jump past I/O in flight.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import socket
import struct
import threading
from dataclasses import dataclass, field
from typing import Callable

from .card_reader import PtyPort
from .meters import ILLEGAL_FUNCTION, ILLEGAL_VALUE
from .modbus_server import (GATEWAY_TARGET_FAILED, LineTiming, MbapServer, ModbusLineServer, RtuPtyServer,
                            RtuTcpServer)

__all__ = ["PollScript", "scripted_server", "PtyPort", "MqttPlayer", "ThreadedBroker", "free_port"]

log = logging.getLogger(__name__)

ILLEGAL_ADDRESS = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- what the meters answered --------------------------------------------------------------

@dataclass
class _MeterPolls:
    plan: list[tuple[int, int, int]]       # (function, address, count) of each request of a poll
    slack_s: float
    times: list[float] = field(default_factory=list)
    attempts: list[list[list[dict]]] = field(default_factory=list)  # per poll, per request: its attempts
    # the exchange answered last: (poll index, request index, attempt, whether that ended it)
    last: tuple[int, int, int, bool] | None = None


class PollScript:
    """The recorded polls of every meter, to answer requests from.

    `plans` maps a meter id to the requests of its poll in order (`plan_for_model`), `periods`
    to its poll period. A poll record's exchanges are the attempts of those requests in order: a
    Garbled answer was asked again, any other error ended the poll there.
    """

    def __init__(self, plans: dict[str, list[tuple[int, int, int]]], periods: dict[str, float]):
        self.meters = {m: _MeterPolls(list(plan), min(periods.get(m, 30.0) / 2, 15.0)) for m, plan in plans.items()}
        self.unknown = 0      # poll records of meters not in the plans

    def add(self, rec: dict) -> None:
        mp = self.meters.get(rec.get("meter", ""))
        if mp is None:
            self.unknown += 1
            return
        per_request: list[list[dict]] = [[] for _ in mp.plan]
        i = 0
        for x in rec.get("exchanges", []):
            if i >= len(per_request):
                break
            per_request[i].append(x)
            if "error" not in x:
                i += 1
        t = float(rec["t"])
        k = bisect.bisect_right(mp.times, t)
        mp.times.insert(k, t)
        mp.attempts.insert(k, per_request)

    def polls(self, meter: str) -> int:
        mp = self.meters.get(meter)
        return len(mp.times) if mp else 0

    def _pick(self, mp: _MeterPolls, now: float) -> int | None:
        if not mp.times:
            return None
        k = bisect.bisect_right(mp.times, now + mp.slack_s) - 1
        return max(k, 0)

    def answer(self, meter: str, function: int, address: int, count: int, now: float) -> dict | None:
        """The recorded outcome of this request at `now` (epoch seconds): an exchange of the
        recording ({"regs": [...]} or {"error": ...}), or None: nothing recorded (silence)."""
        mp = self.meters.get(meter)
        if mp is None:
            return None
        try:
            i = mp.plan.index((function, address, count))
        except ValueError:
            return {"error": "ExceptionReply", "code": ILLEGAL_ADDRESS}
        k = self._pick(mp, now)
        if k is None:
            return None
        tries = mp.attempts[k][i]
        if not tries:       # the recorded poll ended before this request: the meter was silent
            mp.last = (k, i, 0, True)
            return None
        attempt = 0
        if mp.last is not None and mp.last[:2] == (k, i) and not mp.last[3]:
            attempt = mp.last[2] + 1     # asked again within the poll (after a garbled answer)
        x = tries[min(attempt, len(tries) - 1)]
        mp.last = (k, i, attempt, x.get("error") != "Garbled")
        return x


# ---- the Modbus servers ----------------------------------------------------------------------

class _Scripted:
    """Mixed into a ModbusLineServer: answers from a PollScript instead of SimMeters."""

    def _setup(self, units: dict[int, str], script: PollScript, now: Callable[[], float],
               on_request: Callable[[], None] | None, on_reply: Callable[[], None] | None) -> None:
        self.units = dict(units)            # unit id -> meter id
        self.script = script
        self.now = now
        self.on_request = on_request
        self.on_reply = on_reply
        self.silent = 0
        self.exceptions = 0
        self.garbled = 0
        self.dropped = 0
        self.per_meter: dict[str, int] = {}

    def request(self, unit: int, pdu: bytes, reply) -> None:   # noqa: C901 - one decision table
        self.requests += 1
        if self.on_request:
            self.on_request()
        meter = self.units.get(unit)
        if meter is None or unit == 0:
            if self.mbap and unit != 0:
                self._deliver(reply, bytes([(pdu[0] | 0x80) & 0xFF, GATEWAY_TARGET_FAILED]), False)
            else:
                self.ignored += 1
            return
        self.per_meter[meter] = self.per_meter.get(meter, 0) + 1
        fc = pdu[0]
        loop = self._loop or asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._line_free)
        t = self.timing
        req_s = t.frame_s(len(pdu) + 3) if t else 0.0
        gap = t.gap_s if t else 0.0
        corrupt = False
        if fc not in (3, 4):
            resp = bytes([(fc | 0x80) & 0xFF, ILLEGAL_FUNCTION])
        elif len(pdu) != 5:
            resp = bytes([fc | 0x80, ILLEGAL_VALUE])
        else:
            address, count = struct.unpack(">HH", pdu[1:5])
            x = self.script.answer(meter, fc, address, count, self.now())
            error = None if x is None else x.get("error")
            if x is None or error == "NoAnswer" or (error == "BusDown" and not isinstance(self, _ScriptedTcp)):
                self.silent += 1
                self._line_free = start + req_s + gap
                return
            if error == "BusDown":
                self.dropped += 1
                self._line_free = start + req_s + gap
                loop.call_soon(self._drop_connections)
                return
            if error == "ExceptionReply":
                self.exceptions += 1
                resp = bytes([fc | 0x80, int(x.get("code", 4)) & 0xFF])
            elif error is not None:     # Garbled (or an error this replay does not know)
                self.garbled += 1
                regs = [0] * count
                if self.mbap:           # no CRC to spoil: a short answer
                    regs = regs[:-1] or [0]
                    resp = bytes([fc, 2 * len(regs)]) + struct.pack(f">{len(regs)}H", *regs)
                else:
                    resp = bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
                    corrupt = True
            else:
                regs = list(x.get("regs", []))[:count]
                regs += [0] * (count - len(regs))
                resp = bytes([fc, 2 * count]) + struct.pack(f">{count}H", *regs)
        due = start + req_s + gap + (t.frame_s(len(resp) + 3) if t else 0.0)
        self._line_free = due + gap
        if due <= now:
            self._deliver(reply, resp, corrupt)
        else:
            key = next(self._seq)
            self._pending[key] = loop.call_at(due, self._fire, key, reply, resp, corrupt)

    def _deliver(self, reply, resp: bytes, corrupt: bool) -> None:
        if self.on_reply:
            self.on_reply()
        super()._deliver(reply, resp, corrupt)

    def _drop_connections(self) -> None:
        pass


class _ScriptedTcp(_Scripted):
    def _drop_connections(self) -> None:
        for conn in list(self._connections):
            if conn.transport is not None:
                conn.transport.abort()


class ScriptedMbapServer(_ScriptedTcp, MbapServer):
    pass


class ScriptedRtuTcpServer(_ScriptedTcp, RtuTcpServer):
    pass


class ScriptedRtuPtyServer(_Scripted, RtuPtyServer):
    pass


def scripted_server(bus, units: dict[int, str], script: PollScript, now: Callable[[], float], *,
                    line_timing: bool = True, on_request: Callable[[], None] | None = None,
                    on_reply: Callable[[], None] | None = None) -> ModbusLineServer:
    """A server for one bus of the site file (`gateway.config` ModbusTcpBus / ModbusRtuBus),
    answering for `units` (unit id -> meter id) from `script`. With `line_timing`, an answer
    takes the time a 9600 8N1 line (a TCP serial server) or the bus's own line would, so the
    replayed polls keep the recorded rhythm."""
    if bus.type == "modbus_tcp":
        cls = ScriptedMbapServer if bus.framer == "socket" else ScriptedRtuTcpServer
        timing = LineTiming() if line_timing else None
    elif bus.type == "modbus_rtu":
        cls = ScriptedRtuPtyServer
        timing = LineTiming(bus.baudrate, bus.bytesize, bus.parity, bus.stopbits) if line_timing else None
    else:
        raise ValueError(f"bus {bus.id}: a {bus.type} bus cannot be replayed on its transport yet")
    server = cls({}, timing)
    server._setup(units, script, now, on_request, on_reply)
    return server


# ---- MQTT ------------------------------------------------------------------------------------

class MqttPlayer:
    """Publishes recorded messages (QoS 1) through a broker; paho runs its own network thread."""

    def __init__(self, host: str, port: int, client_id: str, username: str | None = None,
                 password: str | None = None):
        import paho.mqtt.client as mqtt
        self.host, self.port = host, port
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if username is not None:
            self._client.username_pw_set(username, password)
        self._connected = threading.Event()
        self._client.on_connect = lambda c, u, f, rc, p: self._connected.set() if not rc.is_failure else None
        self.published = 0

    def start(self, timeout: float = 10.0) -> None:
        self._client.connect(self.host, self.port, keepalive=30)
        self._client.loop_start()
        if not self._connected.wait(timeout):
            self.stop()
            raise OSError(f"MQTT broker {self.host}:{self.port}: no connection within {timeout:g} s")

    def publish_wait(self, topic: str, payload: bytes, timeout: float = 10.0) -> None:
        """Publish and wait for the broker's PUBACK (blocking: run it in an executor)."""
        info = self._client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout)
        self.published += 1

    def stop(self) -> None:
        try:
            self._client.disconnect()
        finally:
            self._client.loop_stop()


class ThreadedBroker:
    """An embedded amqtt broker on loopback, in a thread with its own event loop: its timers
    (keepalive) run in real time, whatever clock the caller's loop keeps."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.host = host
        self.port = port or free_port()
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None

    def start(self, timeout: float = 20.0) -> None:
        self._thread = threading.Thread(target=self._main, name="replay-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise OSError("the embedded MQTT broker did not start")
        if self._error is not None:
            raise OSError(f"the embedded MQTT broker did not start: {self._error}")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # noqa: BLE001 - reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        import warnings

        from amqtt.broker import Broker, BrokerError
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.ERROR)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        for attempt in range(5):
            broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
                             "sys_interval": 0, "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
                             "topic-check": {"enabled": False}})
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    await broker.start()
                break
            except BrokerError:
                if attempt == 4:
                    raise
                self.port = free_port()
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            try:
                await broker.shutdown()
            except Exception:  # noqa: BLE001 - closing must not raise
                pass

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
