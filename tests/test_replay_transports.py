"""`gateway replay --transports`: the alarm scenarios played back by simulators on real transports
(scripted Modbus servers on loopback TCP and a pty, card readers and a wand on ptys, MQTT through
a real mosquitto) to the whole gateway (`Gateway.run()`) under a simulated clock
(gateway/replay_live.py). A subscriber on `wanhu/alerts/#` must receive exactly the alerts of the
scenario's expected list, as the runtime publishes them (JSON, retained while open).

`full_day` runs too (24 h, 20,160 polls: about 25 s of real time on an idle 2-core machine,
printed, never asserted).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime

import paho.mqtt.client as mqtt
import pytest

from gateway.config import load_site
from gateway.recording import read
from gateway.replay_live import replay_transports
from simulators.replay import PollScript
from test_scenarios import HERE, ROOT, SITE, check_times, expected, want_rows

SCENARIOS = ["unknown_card_forced_door", "overvoltage", "patrol_night", "full_day"]


class Subscriber:
    """A console on `wanhu/alerts/#` in paho's own thread (real time, apart from the replay)."""

    def __init__(self, port: int, name: str):
        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, clean_session=True)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("wanhu/alerts/#", qos=1)
        self.client.on_subscribe = lambda c, u, mid, codes, p: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        assert self._subscribed.wait(10), "the subscriber could not subscribe"

    def _on_message(self, client, userdata, m) -> None:
        with self._lock:
            self.messages.append((m.topic, bytes(m.payload), bool(m.retain)))

    def bodies(self) -> list[dict]:
        with self._lock:
            return [json.loads(p) for _, p, _ in self.messages if p]

    def wait_for(self, n: int, timeout: float = 15.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.bodies()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)   # anything more that would come (it must not)
        return self.bodies()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def recorded(name: str) -> dict:
    """What the recording holds: polls per bus, serial bytes per device, MQTT messages, acks."""
    out = {"polls": Counter(), "serial": Counter(), "mqtt": 0, "ack": 0}
    for rec in read(HERE / expected(name)["recording"]):
        if rec["type"] == "poll":
            out["polls"][rec["bus"]] += 1
        elif rec["type"] == "serial":
            out["serial"][rec["device"]] += len(bytes.fromhex(rec["data"]))
        elif rec["type"] in ("mqtt", "ack"):
            out[rec["type"]] += 1
    return out


@pytest.fixture(scope="module")
def cfg():
    return load_site(SITE)


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_through_the_transports(name, cfg, mqtt_broker, capsys):
    exp = expected(name)
    broker = mqtt_broker()
    console = Subscriber(broker.port, f"console-{name}")
    try:
        run = replay_transports(cfg, HERE / exp["recording"], tail_s=exp["tail_s"],
                                broker=("127.0.0.1", broker.port))
        if name == "full_day":
            with capsys.disabled():
                print(f"\n[transports] full_day: {run.summary()}")
        want = want_rows(exp)
        # what the gateway's hub saw ...
        assert [(c.what, c.alert.rule, c.alert.source, c.alert.severity, c.alert.state)
                for c in run.changes] == want
        # ... and what reached the subscriber through the broker, in order
        got = console.wait_for(len(want))
        assert [(m["event"], m["rule"], m["source"], m["severity"], m["state"]) for m in got] == want
        check_times(exp, [datetime.fromisoformat(m["updated_at"]) for m in got])
        for a, m in zip(exp["alerts"], got):
            if "by" in a:
                assert m["acked_by"] == a["by"], m
            if a["what"] == "cleared":
                assert m["state"] == "cleared"
        # retained while open: each open alert's message is retained, a cleared one's deleted
        with console._lock:
            flags = [(topic, bool(payload), retain) for topic, payload, retain in console.messages]
        assert not any(retain for _, _, retain in flags), "a live subscriber gets no retained copies"
    finally:
        console.close()
    still_open = {(c.alert.rule, c.alert.source) for c in run.changes if c.alert.state != "cleared"} - \
        {(c.alert.rule, c.alert.source) for c in run.changes if c.alert.state == "cleared"}
    later = Subscriber(broker.port, f"later-{name}")      # a console connecting after the replay
    try:
        time.sleep(0.5)
        with later._lock:
            retained = {(json.loads(p)["rule"], json.loads(p)["source"]) for _, p, r in later.messages if r and p}
    finally:
        later.close()
    assert retained == still_open

    # the transports were really used
    rec = recorded(name)
    for bus, polls in rec["polls"].items():
        assert run.modbus_requests[bus] >= 2 * polls, (bus, run.modbus_requests)   # two requests a poll
        assert run.modbus_answers[bus] == run.modbus_requests[bus]
    assert run.polls >= sum(rec["polls"].values())
    assert {d: n for d, n in run.serial_bytes.items() if n} == dict(rec["serial"])
    assert run.serial_read == run.serial_bytes         # the gateway read every byte from its pty
    assert run.mqtt_published == run.mqtt_dispatched == rec["mqtt"]
    assert run.acks == rec["ack"]
    assert run.alert_messages == sum(2 if m["state"] == "cleared" else 1 for m in got)
    assert run.skipped == 0 and run.given_up == {}


def test_through_the_cli_with_the_embedded_broker():
    """`gateway replay FILE -c SITE --transports --json`: an embedded MQTT broker (amqtt, in a
    thread of its own), the same changes as the expected list."""
    exp = expected("unknown_card_forced_door")
    env = {k: v for k, v in os.environ.items() if k != "CARD_HASH_KEY"}
    proc = subprocess.run([sys.executable, "-m", "gateway", "replay", str(HERE / exp["recording"]), "-c", str(SITE),
                           "--tail", str(exp["tail_s"]), "--transports", "--json"], capture_output=True, text=True,
                          timeout=180, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert [(o["event"], o["rule"], o["source"], o["severity"], o["state"]) for o in out] == want_rows(exp)
    check_times(exp, [datetime.fromisoformat(o["t"]) for o in out])


def test_cli_refuses_a_broker_without_transports():
    proc = subprocess.run([sys.executable, "-m", "gateway", "replay", str(HERE / "overvoltage.jsonl"), "-c", str(SITE),
                           "--broker", "127.0.0.1:1883"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 2 and "--transports" in proc.stderr


# ---- the scripted meters' answers (pure logic) --------------------------------------------------

PLAN = [(4, 0x2000, 16), (4, 0x4000, 12)]


def _ok(i: int, v: int) -> dict:
    fn, addr, count = PLAN[i]
    return {"fn": fn, "addr": addr, "count": count, "regs": [v] * count}


def test_poll_script_answers_from_the_poll_nearest_in_time():
    s = PollScript({"m": PLAN}, {"m": 30})
    s.add({"type": "poll", "t": 100.8, "meter": "m", "exchanges": [_ok(0, 1), _ok(1, 1)]})
    s.add({"type": "poll", "t": 130.8, "meter": "m", "exchanges": [_ok(0, 2), _ok(1, 2)]})
    assert s.answer("m", 4, 0x2000, 16, 50.0)["regs"][0] == 1       # before the first poll: the first
    assert s.answer("m", 4, 0x2000, 16, 100.0)["regs"][0] == 1      # a little ahead of the recorded poll
    assert s.answer("m", 4, 0x4000, 12, 100.1)["regs"][0] == 1
    assert s.answer("m", 4, 0x2000, 16, 130.0)["regs"][0] == 2      # not the poll of 30 s before
    assert s.answer("m", 4, 0x2000, 16, 500.0)["regs"][0] == 2      # after the last: the last
    assert s.answer("m", 3, 0x2000, 16, 130.0) == {"error": "ExceptionReply", "code": 2}   # never asked so
    assert s.answer("nobody", 4, 0x2000, 16, 130.0) is None


def test_poll_script_replays_failures_attempt_by_attempt():
    s = PollScript({"m": PLAN}, {"m": 30})
    s.add({"type": "poll", "t": 10.0, "meter": "m",
           "exchanges": [_ok(0, 7), {"error": "Garbled", "detail": "CRC"}, _ok(1, 7)]})
    s.add({"type": "poll", "t": 40.0, "meter": "m", "exchanges": [{"error": "NoAnswer", "detail": "silent"}]})
    s.add({"type": "poll", "t": 70.0, "meter": "m",
           "exchanges": [{"error": "ExceptionReply", "detail": "busy", "code": 6}]})
    assert s.answer("m", 4, 0x2000, 16, 10.0)["regs"][0] == 7
    assert s.answer("m", 4, 0x4000, 12, 10.1)["error"] == "Garbled"        # first attempt
    assert s.answer("m", 4, 0x4000, 12, 10.2)["regs"][0] == 7              # asked again: answered
    assert s.answer("m", 4, 0x2000, 16, 40.0)["error"] == "NoAnswer"
    assert s.answer("m", 4, 0x4000, 12, 40.1) is None                      # the poll ended there: silence
    assert s.answer("m", 4, 0x2000, 16, 70.0) == {"error": "ExceptionReply", "detail": "busy", "code": 6}
    assert s.answer("m", 4, 0x2000, 16, 10.0)["regs"][0] == 7              # a new poll starts over


# ---- failed polls go over the wire as failures ----------------------------------------------------

def _with_failures(tmp_path):
    """The first 10 minutes of `overvoltage`, with failed exchanges put into some polls: GATE-N
    (RTU on a pty) a corrupted answer that is asked again, an exception reply, a silent poll;
    B01-stair (Modbus TCP) a garbled answer asked again."""
    seen: Counter = Counter()
    lines = []
    t0 = None
    for rec in read(HERE / "overvoltage.jsonl"):
        t0 = t0 or rec["t"]
        if rec["t"] > t0 + 600:
            break
        if rec["type"] == "poll":
            seen[rec["meter"]] += 1
            n, ex = seen[rec["meter"]], rec["exchanges"]
            if rec["meter"] == "GATE-N" and n == 2:
                rec["exchanges"] = [ex[0], {"error": "Garbled", "detail": "CRC error"}, ex[1]]
            elif rec["meter"] == "GATE-N" and n == 4:
                rec["exchanges"] = [{"error": "ExceptionReply", "detail": "exception 0x04", "code": 4}]
            elif rec["meter"] == "GATE-N" and n == 6:
                rec["exchanges"] = [{"error": "NoAnswer", "detail": "no answer within 0.5 s"}]
            elif rec["meter"] == "B01-stair" and n == 3:
                rec["exchanges"] = [{"error": "Garbled", "detail": "short"}, ex[0], ex[1]]
        lines.append(json.dumps(rec))
    path = tmp_path / "failures.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


async def _in_process(cfg, path):
    from gateway.replay import replay
    return await replay(cfg, path, tail_s=10)


def test_recorded_failures_reach_the_driver_as_failures(cfg, mqtt_broker, tmp_path):
    import asyncio

    path = _with_failures(tmp_path)
    broker = mqtt_broker()
    run = replay_transports(cfg, path, tail_s=10, broker=("127.0.0.1", broker.port))
    guard, n1 = run.bus_stats["bus-guard"], run.bus_stats["bus-n1"]
    # what the gateway's own driver counted from what came over the pty and the TCP connection
    assert (guard["crc_errors"], guard["exceptions"], guard["timeouts"], guard["failures"]) == (1, 1, 1, 2), guard
    # MBAP has no CRC to spoil: the garbled answer is replayed as a short one, which is a bad answer
    assert (n1["bad_answers"], n1["crc_errors"], n1["exceptions"], n1["timeouts"], n1["failures"]) == \
        (1, 0, 0, 0, 0), n1
    assert run.modbus_silent == {"bus-guard": 1, "bus-n1": 0}
    # and the alerts are those of the in-process replay of the same file (none: single failures)
    changes = asyncio.run(_in_process(cfg, path))
    assert [(c.what, c.alert.rule, c.alert.source) for c in run.changes] == \
        [(c.what, c.alert.rule, c.alert.source) for c in changes]
