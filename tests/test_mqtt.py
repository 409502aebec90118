"""The shared MQTT link against a real mosquitto on loopback (see tests/mosquitto.py)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone

import aiomqtt
import pytest

from gateway.mqtt import MqttLink, MqttSettings, topic_matches
from mosquitto import Mosquitto

LOGGER = "gateway.mqtt"


class Inbox:
    """A handler that records (topic, payload) and lets a test wait for a count."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.times: list[datetime] = []
        self._changed = asyncio.Event()

    def __call__(self, topic: str, payload: bytes, arrived: datetime) -> None:
        self.items.append((topic, payload))
        self.times.append(arrived)
        self._changed.set()

    @property
    def payloads(self) -> list[bytes]:
        return [p for _, p in self.items]

    async def wait_for(self, count: int, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.items) < count:
                self._changed.clear()
                await self._changed.wait()


async def until(predicate, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def settings_for(broker: Mosquitto, client_id: str = "gw-test", **kw) -> MqttSettings:
    base = dict(host=broker.host, port=broker.port, client_id=client_id, keepalive=5,
                connect_timeout_s=3, backoff_min_s=0.05, backoff_max_s=0.5)
    base.update(kw)
    return MqttSettings(**base)


@pytest.fixture
async def run_link():
    """`run_link(link)` starts link.run() in a task; every link is stopped (and must end) at
    the end of the test."""
    running: list[tuple[MqttLink, asyncio.Task]] = []

    def start(link: MqttLink) -> asyncio.Task:
        task = asyncio.create_task(link.run())
        running.append((link, task))
        return task

    yield start
    for link, task in running:
        link.stop()
        try:
            async with asyncio.timeout(10):
                await task
        finally:
            task.cancel()


def client(broker: Mosquitto, identifier: str | None = None, clean_session: bool | None = None,
           timeout: float = 3, **kw) -> aiomqtt.Client:
    c = aiomqtt.Client(broker.host, broker.port, identifier=identifier, clean_session=clean_session,
                       timeout=timeout, **kw)
    c.pending_calls_threshold = 10_000
    return c


async def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]], **kw) -> None:
    async with client(broker, **kw) as c:
        for topic, payload in messages:
            await c.publish(topic, payload, qos=1)


def mqtt_lines(caplog, level: int = logging.WARNING) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno >= level]


# ---- pure logic ----

@pytest.mark.parametrize("flt, topic, expected", [
    ("a/b", "a/b", True), ("a/b", "a/c", False), ("a/+", "a/b", True), ("a/+", "a/b/c", False),
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("#", "x/y", True), ("+/+", "x/y", True),
    ("+", "/x", False), ("+/x", "/x", True), ("#", "$SYS/broker", False),
    ("$SYS/#", "$SYS/broker", True), ("$share/g/a/+", "a/b", True), ("a/b/c", "a/b", False),
])
def test_topic_matching(flt, topic, expected):
    assert topic_matches(flt, topic) is expected


def test_settings_need_a_client_id():
    with pytest.raises(ValueError, match="client_id"):
        MqttSettings(host="127.0.0.1")


# ---- against the real broker ----

async def test_wildcards_and_failing_handlers(mqtt_broker, run_link, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = mqtt_broker()
    link = MqttLink(settings_for(broker))
    every, states = Inbox(), Inbox()

    def picky(topic: str, payload: bytes, arrived: datetime) -> None:
        if payload.startswith(b"bad"):
            raise ValueError(f"cannot parse {payload!r}")
        states(topic, payload, arrived)

    link.subscribe("estate/#", every)
    link.subscribe("estate/meters/+/state", picky)
    run_link(link)
    await until(lambda: link.connected, what="connect")
    late = Inbox()
    assert link.subscriptions() == {"estate/#": True, "estate/meters/+/state": True}
    link.subscribe("late/+", late)  # after start: subscribed on the live connection
    await until(lambda: link.subscriptions()["late/+"], what="late subscription granted")

    msgs = [("estate/meters/B01/state", b"ok1"), ("estate/meters/B01/state", b"bad1"),
            ("estate/meters/B02/state", b"bad2"), ("estate/doors/D1/event", b"opened"),
            ("estate/meters/B03/state", b"ok2"), ("estate/meters/B01/state", b"bad3"),
            ("estate/meters/B01/extra/state", b"not for picky"), ("late/x", b"late one")]
    await publish_all(broker, msgs)
    await every.wait_for(7)
    await late.wait_for(1)
    await until(lambda: link.messages == 8, what="all dispatched")

    assert every.payloads == [p for t, p in msgs if t.startswith("estate/")]
    assert states.payloads == [b"ok1", b"ok2"]
    assert late.items == [("late/x", b"late one")]
    assert all(t.tzinfo is timezone.utc for t in every.times)
    assert link.handler_errors == 3 and link.messages == 8 and link.connected
    # once per episode: bad1+bad2 are one episode, bad3 (after ok2) another
    failures = [m for m in mqtt_lines(caplog, logging.ERROR) if "failed on topic" in m]
    assert len(failures) == 2, failures
    assert "estate/meters/B01/state" in failures[0] and "picky" in failures[0]


async def test_password_file(mqtt_broker, run_link, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = mqtt_broker(users={"gateway": "s3cret", "reader": "r"})
    good = MqttLink(settings_for(broker, "gw-good", username="gateway", password="s3cret"))
    inbox = Inbox()
    good.subscribe("t/#", inbox)
    run_link(good)
    await until(lambda: good.connected, what="connect with the right password")
    assert await good.publish("t/1", "hello") is True
    await inbox.wait_for(1)

    bad = MqttLink(settings_for(broker, "gw-bad", username="gateway", password="wrong"))
    task = run_link(bad)
    await until(lambda: bad.connect_failures >= 4, what="several refused attempts")
    assert not task.done() and not bad.connected
    refused = [m for m in mqtt_lines(caplog) if "refused" in m]
    assert len(refused) == 1, refused
    assert f"127.0.0.1:{broker.port}" in refused[0] and "username and password" in refused[0]
    assert refused[0].endswith("; retrying")


@pytest.mark.parametrize("tool", [True, False], ids=["mosquitto_passwd", "own-hash"])
async def test_password_file_formats(mqtt_broker, run_link, tool):
    broker = mqtt_broker(users={"gateway": "pw"}, password_tool=tool)
    link = MqttLink(settings_for(broker, username="gateway", password="pw"))
    run_link(link)
    await until(lambda: link.connected, what="connect")


async def test_tls(mqtt_broker, run_link, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = mqtt_broker(tls=True, users={"gateway": "pw"})
    link = MqttLink(settings_for(broker, "gw-tls", tls=True, ca_file=str(broker.ca),
                                 username="gateway", password="pw"))
    inbox = Inbox()
    link.subscribe("secure/#", inbox)
    run_link(link)
    await until(lambda: link.connected, what="TLS connect")
    assert await link.publish("secure/x", b"over tls")
    await inbox.wait_for(1)

    no_ca = MqttLink(settings_for(broker, "gw-tls-noca", tls=True, ca_file=None,
                                  username="gateway", password="pw"))
    task = run_link(no_ca)
    await until(lambda: no_ca.connect_failures >= 3, what="failed TLS attempts")
    assert not task.done() and not no_ca.connected
    lines = [m for m in mqtt_lines(caplog) if "gw-tls" not in m]
    assert len(lines) == 1, lines
    assert "TLS failed" in lines[0] and "CERTIFICATE_VERIFY_FAILED" in lines[0] and "ca_file" in lines[0]


async def test_broker_restart_while_publishing(mqtt_broker, run_link, caplog):
    """QoS 1 is at-least-once: nothing may be lost across a broker restart (with persistence);
    duplicates are allowed and reported."""
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = mqtt_broker()
    link = MqttLink(settings_for(broker, "gw-restart"))
    inbox = Inbox()
    link.subscribe("estate/meters/+/reading", inbox)
    run_link(link)
    await until(lambda: link.connected, what="connect")

    total, sent, attempts, publisher_retries = 400, 0, 0, 0

    async def publisher() -> None:
        nonlocal sent, attempts, publisher_retries
        while sent < total:
            try:
                # (aiomqtt's publish does not notice a lost connection: it waits for the timeout)
                c = client(broker, "test-publisher", clean_session=False, timeout=1)
                async with c:
                    while sent < total:
                        # bursts, so that messages are queued and in flight at the broker
                        burst = range(sent, min(total, sent + 10))
                        attempts += len(burst)
                        await asyncio.gather(*(c.publish(f"estate/meters/M{i % 7}/reading", str(i), qos=1)
                                               for i in burst))
                        sent = burst[-1] + 1
                        await asyncio.sleep(0.005)
            except aiomqtt.MqttError:
                # aiomqtt leaves the lost connection's error unread when publish() timed out;
                # read it, or asyncio logs "Future exception was never retrieved" later.
                if c._disconnected.done() and not c._disconnected.cancelled():
                    c._disconnected.exception()
                publisher_retries += 1  # resend from the first unacknowledged: duplicates possible
                await asyncio.sleep(0.05)

    pub = asyncio.create_task(publisher())
    await inbox.wait_for(total // 3)
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(0.3)
    await asyncio.to_thread(broker.start)
    async with asyncio.timeout(20):
        await pub
    await until(lambda: {int(p) for p in inbox.payloads} >= set(range(total)), timeout=15,
                what="every message")
    await asyncio.sleep(0.3)  # late duplicates, if any

    got = [int(p) for p in inbox.payloads]
    duplicates = len(got) - len(set(got))
    print(f"\nbroker restart: {total} published ({attempts - total} sent twice by the publisher), "
          f"{len(got)} delivered, {duplicates} duplicates, publisher reconnects {publisher_retries}, "
          f"link reconnects {link.reconnects}")
    assert set(got) == set(range(total))  # no loss
    assert link.reconnects >= 1 and link.connected
    lines = mqtt_lines(caplog, logging.INFO)
    assert sum("lost" in m for m in lines) == 1, lines  # one line per outage ...
    assert sum("connected again" in m for m in lines) == 1, lines  # ... and one on recovery
    assert not any("unreachable" in m for m in lines), lines
    others = [f"{r.name}: {r.getMessage()}" for r in caplog.records
              if r.levelno >= logging.WARNING and r.name.startswith("gateway") and r.name != LOGGER]
    assert others == []  # nor from the link's paho/aiomqtt (the test's publisher logs to "mqtt")


async def test_gateway_dying_mid_dispatch_loses_nothing(mqtt_broker, run_link):
    """A QoS 1 message is acknowledged only after its handlers ran: what had arrived but was
    not handled when the gateway died is sent again by the broker to the next run."""
    broker = mqtt_broker()
    first = MqttLink(settings_for(broker, "gw-crash"))
    handled: list[int] = []
    task: asyncio.Task | None = None

    def dies_at_50(topic: str, payload: bytes, arrived: datetime) -> None:
        handled.append(int(payload))
        if len(handled) == 50:
            task.cancel()  # the gateway goes down in the middle of a burst

    first.subscribe("estate/burst/#", dies_at_50)
    task = asyncio.create_task(first.run())
    await until(lambda: first.connected, what="connect")
    await publish_all(broker, [("estate/burst/x", str(i).encode()) for i in range(300)])
    with pytest.raises(asyncio.CancelledError):
        await task

    second = MqttLink(settings_for(broker, "gw-crash"))
    inbox = Inbox()
    second.subscribe("estate/burst/#", inbox)
    run_link(second)
    await until(lambda: set(handled) | {int(p) for p in inbox.payloads} >= set(range(300)),
                what="every message, by one run or the other")
    assert [int(p) for p in inbox.payloads] == sorted({int(p) for p in inbox.payloads})  # in order


async def test_gateway_restart_gets_what_was_published_meanwhile(mqtt_broker, run_link):
    broker = mqtt_broker()
    first = MqttLink(settings_for(broker, "gw-estate"))
    before = Inbox()
    first.subscribe("estate/cards/+/swipe", before)
    task = run_link(first)
    await until(lambda: first.connected, what="connect")
    first.stop()
    async with asyncio.timeout(5):
        await task
    assert not first.connected

    msgs = [(f"estate/cards/R{i % 3}/swipe", f"swipe {i}".encode()) for i in range(25)]
    await publish_all(broker, msgs)
    await asyncio.to_thread(broker.restart)  # queued for the session, kept by broker persistence

    second = MqttLink(settings_for(broker, "gw-estate"))
    after = Inbox()
    second.subscribe("estate/cards/+/swipe", after)
    run_link(second)
    await after.wait_for(25, timeout=10)
    assert after.items == msgs  # all of them, in order
    assert before.items == []


async def test_publish_while_disconnected_is_sent_after_reconnect(mqtt_broker, run_link):
    broker = mqtt_broker()
    # A consumer with a persistent session, so it gets the messages whenever it comes back.
    async with client(broker, "test-consumer", clean_session=False) as c:
        await c.subscribe("estate/alerts/#", qos=1)

    link = MqttLink(settings_for(broker, "gw-pub"))
    run_link(link)
    await until(lambda: link.connected, what="connect")
    assert await link.publish("estate/alerts/first/x", b"0") is True

    await asyncio.to_thread(broker.stop)
    await until(lambda: not link.connected, what="disconnect noticed")
    results = [await link.publish(f"estate/alerts/r{i}/x", str(i), retain=(i == 29)) for i in range(1, 30)]
    assert results == [False] * 29 and link.pending() == 29

    await asyncio.to_thread(broker.start)
    await until(lambda: link.connected and link.pending() == 0, what="outbox sent")
    assert await link.publish("estate/alerts/after/x", b"30") is True

    received: list[bytes] = []
    async with client(broker, "test-consumer", clean_session=False) as c:
        async with asyncio.timeout(10):
            async for m in c.messages:
                received.append(m.payload)
                if len(received) == 31:
                    break
    assert received == [str(i).encode() for i in range(31)]  # in order
    assert link.published == 31 and link.dropped == 0


async def test_outbox_keeps_the_newest_when_full(tmp_path, run_link, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = Mosquitto(tmp_path)  # not started yet
    try:
        link = MqttLink(settings_for(broker, "gw-outbox", queue_max=5))
        echo = Inbox()
        link.subscribe("out/#", echo)  # subscribed before the outbox is sent: we see our own messages
        for i in range(8):
            assert await link.publish(f"out/{i}", str(i)) is False
        assert link.pending() == 5 and link.dropped == 3 and link.queued == 8
        run_link(link)
        await until(lambda: link.connect_failures >= 2, what="failed connects")
        broker.start()
        await echo.wait_for(5)
        assert echo.items == [(f"out/{i}", str(i).encode()) for i in range(3, 8)]
        lines = mqtt_lines(caplog)
        assert sum("outbox full" in m for m in lines) == 1
        assert sum("unreachable" in m for m in lines) == 1, lines
    finally:
        broker.stop()


async def test_oversize_payload_dropped_and_counted(mqtt_broker, run_link, caplog):
    caplog.set_level(logging.INFO, logger=LOGGER)
    broker = mqtt_broker()
    link = MqttLink(settings_for(broker, "gw-size", max_payload=1024))
    inbox = Inbox()
    link.subscribe("estate/readers/#", inbox)
    run_link(link)
    await until(lambda: link.connected, what="connect")
    await publish_all(broker, [("estate/readers/R1/raw", b"x" * 2048), ("estate/readers/R1/raw", b"y" * 5000),
                               ("estate/readers/R1/raw", b"z" * 1024), ("estate/readers/R2/raw", b"small")])
    await inbox.wait_for(2)
    await until(lambda: link.messages == 4, what="all four seen")
    assert inbox.payloads == [b"z" * 1024, b"small"]
    assert link.oversize == 2 and link.handler_errors == 0
    lines = [m for m in mqtt_lines(caplog) if "over the 1024 byte limit" in m]
    assert len(lines) == 1 and "estate/readers/R1/raw" in lines[0]


async def test_cancel_closes_cleanly(mqtt_broker):
    broker = mqtt_broker()
    link = MqttLink(settings_for(broker, "gw-cancel"))
    task = asyncio.create_task(link.run())
    await until(lambda: link.connected, what="connect")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not link.connected
    # the broker saw a clean DISCONNECT, not a dropped socket
    await until(lambda: "gw-cancel disconnected" in broker.log.read_text(), timeout=3,
                what="broker logs the disconnect")
    assert "gw-cancel closed its connection" not in broker.log.read_text()


async def test_publishing_to_an_invalid_topic_is_one_line_and_a_counted_drop(mqtt_broker, run_link, caplog):
    """An alert prefix of '#' made the alert publisher crash every 5 s (item 8 of the defects
    issue): a topic that cannot be published to is refused by publish() itself, connected or not."""
    broker = mqtt_broker()
    link = MqttLink(settings_for(broker))
    assert await link.publish("#/offline/B01", b"{}") is False   # not connected yet: not queued either
    run_link(link)
    await until(lambda: link.connected, what="connect")
    for topic in ("#/offline/B02", "wanhu/+/x", ""):
        assert await link.publish(topic, b"{}") is False
    assert await link.publish("wanhu/alerts/offline/B01", b"{}") is True   # the link works on
    assert link.stats()["invalid"] == 4 and link.pending() == 0
    said = [m for m in mqtt_lines(caplog, logging.ERROR) if "cannot publish" in m]
    assert len(said) == 1 and "'#/offline/B01'" in said[0]


def test_session_memory_ignores_what_is_no_topic_filter():
    from gateway.mqtt import SessionMemory
    store: dict[str, str] = {}
    memory = SessionMemory(store.get, store.__setitem__, "mqtt_filters:gw")
    assert memory.load() == set()
    memory.save({"b/#", "a/+"})
    assert store["mqtt_filters:gw"] == '["a/+", "b/#"]' and memory.load() == {"a/+", "b/#"}
    store["mqtt_filters:gw"] = '["a/#/b", "", 3, "ok/#"]'
    assert memory.load() == {"ok/#"}
    store["mqtt_filters:gw"] = "not json"
    assert memory.load() == set()
