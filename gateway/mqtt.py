"""The gateway's one MQTT connection, shared by every MQTT-based driver and publisher.

`MqttLink` owns an aiomqtt client and keeps it connected: it connects with a fixed client id
and ``clean_session=False`` (a persistent session), subscribes every registered topic filter
after each connect, hands each incoming message to the plain-callable handlers whose filter
matches, and reconnects with exponential back-off and jitter when the broker goes away.

Delivery to handlers is at-least-once for QoS 1 subscriptions: a message is acknowledged
(PUBACK) only after every matching handler has returned (or raised), so a message that was
received but not yet handled when the connection, the broker or the gateway went down is
sent again by the broker. A handler can therefore see the same message twice; retained
messages are also sent again after every (re)subscribe. Handlers must be idempotent.
Register handlers before `run()`: messages that the broker kept for the persistent session
arrive right after the connect, and a message that matches no handler is acknowledged and
dropped (counted as `unmatched`).

Outgoing messages published while disconnected wait in memory (bounded; the oldest are
dropped, counted) and are sent in order after the next connect. A message whose
acknowledgement was lost with the connection is sent again: at-least-once too. A topic that
cannot be published to (a wildcard in it, empty) is refused at once: logged, counted, dropped.

The broker keeps a persistent session's subscriptions across runs, so a filter that an earlier
run subscribed (or the site file before a reload) would go on delivering. With a `memory` (the
ledger) the link remembers every filter it subscribed and, after each connect, unsubscribes
those that no one registered this time. Messages on the gateway's own topics (`own()`: its
alerts) never reach a handler, whatever a subscription's filter matches.

No threads of our own: aiomqtt runs paho-mqtt on the event loop (it uses the loop's default
executor only for the blocking TCP/TLS connect).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Iterable

import aiomqtt

from .backoff import Backoff

log = logging.getLogger(__name__)
# aiomqtt and paho log through this one. Our own lines already say everything an operator needs
# (one per outage, one on recovery); paho would add an ERROR such as "failed to receive on
# socket: [Errno 104] Connection reset by peer" on every outage. Lower its level to see paho's
# trace (DEBUG shows every packet).
paho_log = logging.getLogger(__name__ + ".paho")
if paho_log.level == logging.NOTSET:
    paho_log.setLevel(logging.CRITICAL)

Handler = Callable[[str, bytes, datetime], None]

_FLUSH_BATCH = 100      # queued messages sent per round trip window when draining the outbox
_EPISODE_KEYS_MAX = 1000  # bound on per-topic "already logged" sets (topics come from outside)


@dataclass
class MqttSettings:
    host: str
    port: int = 1883
    client_id: str = ""              # stable: the broker keeps the persistent session under it
    username: str | None = None
    password: str | None = None      # already resolved from the environment by the caller
    tls: bool = False
    ca_file: str | None = None       # None with tls: the system's CA store
    keepalive: int = 30
    qos: int = 1                     # default QoS for subscribe/publish
    connect_timeout_s: float = 10.0  # TCP/TLS connect, CONNACK, SUBACK, PUBACK waits
    backoff_max_s: float = 60.0
    backoff_min_s: float = 0.5       # first retry delay; doubles per failed attempt
    queue_max: int = 10_000          # outgoing messages kept while disconnected
    max_payload: int = 64 * 1024     # larger incoming messages are dropped before the handlers

    def __post_init__(self) -> None:
        if not self.client_id:
            raise ValueError("MqttSettings.client_id is required (a persistent session needs a fixed id)")


@dataclass
class SessionMemory:
    """Where the topic filters of the persistent session are remembered across runs: the
    broker keeps them, and only we know which ones the current site file no longer names.
    `get`/`put` read and write one text value (the ledger's meta table) under `key`."""

    get: Callable[[str], str | None]
    put: Callable[[str, str], None]
    key: str

    def load(self) -> set[str]:
        try:
            filters = json.loads(self.get(self.key) or "[]")
        except ValueError:
            return set()
        return {f for f in filters if _valid_filter(f)} if isinstance(filters, list) else set()

    def save(self, filters: Iterable[str]) -> None:
        self.put(self.key, json.dumps(sorted(filters)))


@dataclass
class _Subscription:
    topic_filter: str
    handler: Handler
    qos: int
    own: bool = False       # listens on one of the gateway's own topics (its announcements)
    failing: bool = False   # inside a failure episode (logged once)
    errors: int = 0
    active: bool = False    # granted by the broker on the current connection


@dataclass
class _Outgoing:
    seq: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass
class _Session:
    client: aiomqtt.Client
    ended: asyncio.Future = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    subscribed: bool = False  # the subscriptions have been renewed (SUBACK) on this connection


class _SessionLost(aiomqtt.MqttError):
    pass


def topic_matches(topic_filter: str, topic: str) -> bool:
    """MQTT topic filter matching (`+`, `#`, `$share/<group>/...`, `$`-topics not matched by
    a leading wildcard)."""
    f = topic_filter.split("/")
    if f[0] == "$share" and len(f) >= 3:
        f = f[2:]
    t = topic.split("/")
    if t[0].startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


class MqttLink:
    """One persistent MQTT connection: subscriptions with handlers, publishing with an outbox."""

    def __init__(self, settings: MqttSettings, clock_monotonic: Callable[[], float] = time.monotonic,
                 clock_now: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 rng: random.Random | None = None, memory: SessionMemory | None = None):
        self.settings = settings
        self._memory = memory
        self._held: set[str] | None = None   # filters the session may hold (loaded from memory)
        self._own: list[str] = []            # filters of the gateway's own topics
        self._monotonic = clock_monotonic
        self._now = clock_now
        self._rng = rng or random.Random()
        self._subs: list[_Subscription] = []
        self._session: _Session | None = None
        self._outbox: deque[_Outgoing] = deque()
        self._outbox_ready = asyncio.Event()
        self._seq = itertools.count()
        self._stop = asyncio.Event()
        self._bg: set[asyncio.Task] = set()
        self._running = False
        # episode state for logging once
        self._outage_since: float | None = None
        self._outage_reasons: set[str] = set()
        self._outage_attempts = 0
        self._ever_connected = False
        self._oversize_topics: set[str] = set()
        self._unmatched_topics: set[str] = set()
        self._refused_filters: set[str] = set()
        self._own_topics: set[str] = set()
        self._invalid_reasons: set[str] = set()
        self._dropping = False
        # counters
        self.messages = 0         # incoming messages handed to dispatch (including dropped ones)
        self.handler_errors = 0
        self.oversize = 0
        self.unmatched = 0
        self.own_messages = 0     # incoming messages on the gateway's own topics, not dispatched
        self.reconnects = 0       # successful connects after the first
        self.connect_failures = 0
        self.published = 0        # acknowledged by the broker (QoS 0: written)
        self.queued = 0           # publish() calls that went to the outbox
        self.dropped = 0          # oldest outbox messages dropped because it was full
        self.invalid = 0          # publish() calls refused: the topic cannot be published to

    # ---- state ----

    @property
    def connected(self) -> bool:
        """Connected, and the subscriptions renewed on this connection."""
        s = self._session
        return s is not None and s.subscribed and not s.ended.done()

    @property
    def where(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    def subscriptions(self) -> dict[str, bool]:
        """Topic filter → granted by the broker on the current connection."""
        out: dict[str, bool] = {}
        for sub in self._subs:
            out[sub.topic_filter] = out.get(sub.topic_filter, False) or (sub.active and self.connected)
        return out

    def pending(self) -> int:
        """Messages waiting in the outbox."""
        return len(self._outbox)

    def stats(self) -> dict:
        return {"connected": self.connected, "messages": self.messages,
                "handler_errors": self.handler_errors, "oversize": self.oversize,
                "unmatched": self.unmatched, "own_messages": self.own_messages, "reconnects": self.reconnects,
                "connect_failures": self.connect_failures, "published": self.published,
                "queued": self.queued, "pending": len(self._outbox), "dropped": self.dropped,
                "invalid": self.invalid}

    # ---- subscriptions ----

    def subscribe(self, topic_filter: str, handler: Handler, qos: int | None = None, own: bool = False) -> None:
        """Call `handler(topic, payload, arrived_utc)` for every message matching the filter.

        May be called before or after `run()` starts; subscriptions are renewed after every
        connect. A handler is a plain callable: it must not block (hand work to a queue or the
        hub), and an exception it raises is logged (once per episode) and counted. With `own`,
        the handler listens on the gateway's own topics (`own()`) and is given only those.
        """
        aiomqtt.Wildcard(topic_filter)  # raises ValueError on a malformed filter
        sub = _Subscription(topic_filter, handler, self.settings.qos if qos is None else qos, own)
        self._subs.append(sub)
        self._remember()
        session = self._session
        if session is not None and not session.ended.done():
            task = asyncio.get_running_loop().create_task(self._subscribe_late(session, sub))
            self._bg.add(task)
            task.add_done_callback(self._bg.discard)

    async def _subscribe_late(self, session: _Session, sub: _Subscription) -> None:
        try:
            await self._subscribe(session, [sub])
        except aiomqtt.MqttError:
            pass  # logged; renewed after the next connect

    def own(self, topic_filter: str) -> None:
        """Topics the gateway publishes itself (its alerts): a message on them is never handed
        to a handler, even when a reader's filter matches it (a reader on `site/#`)."""
        aiomqtt.Wildcard(topic_filter)
        self._own.append(topic_filter)

    def _remember(self) -> None:
        """Add the registered filters to the remembered ones, before they are subscribed: a
        crash in between must not leave a subscription no later run knows of."""
        wanted = {s.topic_filter for s in self._subs}
        if self._held is not None and not wanted <= self._held:   # None: no memory, or not running yet
            self._held |= wanted
            self._memory.save(self._held)

    async def _forget_stale(self, session: _Session) -> None:
        """Unsubscribe what the session holds from earlier runs but no one registered now."""
        wanted = {s.topic_filter for s in self._subs}
        stale = sorted(self._held - wanted) if self._held is not None else []
        if not stale:
            return
        try:
            await self._guarded(session, session.client.unsubscribe(stale))
        except aiomqtt.MqttError as e:
            if session is self._session and not session.ended.done():
                log.warning("MQTT unsubscribe from %s failed: %s", ", ".join(stale), e)
            raise
        log.info("MQTT unsubscribed from %s: subscribed by an earlier run (or before a reload), not wanted now",
                 ", ".join(map(repr, stale)))
        self._held = wanted
        self._memory.save(self._held)

    async def _subscribe(self, session: _Session, subs: list[_Subscription]) -> None:
        wanted: dict[str, int] = {}
        for s in subs:
            wanted[s.topic_filter] = max(s.qos, wanted.get(s.topic_filter, 0))
        if not wanted:
            return
        topics = list(wanted.items())
        try:
            codes = await self._guarded(session, session.client.subscribe(topics))
        except aiomqtt.MqttError as e:
            if session is self._session and not session.ended.done():
                log.warning("MQTT subscribe to %s failed: %s", ", ".join(wanted), e)
            raise
        granted = set()
        for (topic_filter, _), code in zip(topics, codes):
            failed = getattr(code, "is_failure", False) or (isinstance(code, int) and code >= 0x80)
            if not failed:
                granted.add(topic_filter)
            if failed and topic_filter not in self._refused_filters:
                self._refused_filters.add(topic_filter)
                log.error("MQTT broker %s refused the subscription to %r (%s): check its ACL",
                          self.where, topic_filter, code)
            elif not failed:
                self._refused_filters.discard(topic_filter)
        if session is self._session and not session.ended.done():
            for sub in subs:
                sub.active = sub.topic_filter in granted

    # ---- publishing ----

    async def publish(self, topic: str, payload: bytes | str, qos: int | None = None,
                      retain: bool = False) -> bool:
        """Publish now if connected (True once the broker has it: PUBACK for QoS 1); otherwise
        keep it in the outbox, sent in order after the next connect (False)."""
        if isinstance(payload, str):
            payload = payload.encode()
        problem = _publish_problem(topic)
        if problem:
            self.invalid += 1
            if problem not in self._invalid_reasons:
                self._invalid_reasons.add(problem)
                log.error("MQTT cannot publish to %r: %s; such messages are dropped (counted as invalid)",
                          topic[:200], problem)
            return False
        msg = _Outgoing(next(self._seq), topic, payload, self.settings.qos if qos is None else qos, retain)
        session = self._session
        if session is None or session.ended.done() or self._outbox:
            self._enqueue(msg)  # behind what is already waiting, to keep the order
            return False
        try:
            await self._guarded(session, session.client.publish(
                msg.topic, msg.payload, qos=msg.qos, retain=msg.retain))
        except aiomqtt.MqttError:
            self._enqueue(msg)
            return False
        self.published += 1
        return True

    def _enqueue(self, msg: _Outgoing) -> None:
        self.queued += 1
        if len(self._outbox) >= self.settings.queue_max:
            old = self._outbox.popleft()
            self.dropped += 1
            if not self._dropping:
                self._dropping = True
                log.warning("MQTT outbox full (%d messages): dropping the oldest (first: %s); "
                            "further drops are counted until it drains", self.settings.queue_max, old.topic)
        self._outbox.append(msg)
        self._outbox_ready.set()

    async def _flush(self, session: _Session, deadline: float | None = None) -> None:
        """Send the outbox in order while the session lasts (until `deadline`, if given)."""
        while self._outbox:
            if deadline is not None and self._monotonic() >= deadline:
                return
            batch = list(itertools.islice(self._outbox, _FLUSH_BATCH))
            # Tasks start in creation order, so paho gets the messages (and mids) in order.
            tasks = [asyncio.ensure_future(session.client.publish(m.topic, m.payload, qos=m.qos, retain=m.retain))
                     for m in batch]
            try:
                await self._guarded(session, asyncio.gather(*tasks))
            finally:
                for t in tasks:
                    t.cancel()
            last = batch[-1].seq
            while self._outbox and self._outbox[0].seq <= last:  # drop-oldest may have taken some
                self._outbox.popleft()
            self.published += len(batch)
        if self._dropping:
            self._dropping = False
            log.info("MQTT outbox drained (%d messages dropped in all)", self.dropped)

    async def _flush_loop(self, session: _Session) -> None:
        while True:
            await self._flush(session)
            self._outbox_ready.clear()
            if not self._outbox:
                await self._outbox_ready.wait()

    async def _guarded(self, session: _Session, aw):
        """Await `aw` but give up (MqttError) as soon as the session ends: aiomqtt would
        otherwise wait for an acknowledgement until its timeout."""
        fut = asyncio.ensure_future(aw)
        try:
            await asyncio.wait((fut, session.ended), return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            fut.cancel()
            raise
        if fut.done():
            return fut.result()
        fut.cancel()
        raise _SessionLost("connection lost")

    # ---- incoming ----

    def _dispatch(self, client: aiomqtt.Client, message: aiomqtt.Message) -> None:
        self.messages += 1
        topic = message.topic.value
        payload = message.payload
        if isinstance(payload, str):  # aiomqtt types allow it; paho always gives bytes
            payload = payload.encode()
        elif not isinstance(payload, bytes):
            payload = bytes(payload or b"")
        try:
            if len(payload) > self.settings.max_payload:
                self.oversize += 1
                if topic not in self._oversize_topics:
                    if len(self._oversize_topics) >= _EPISODE_KEYS_MAX:
                        self._oversize_topics.clear()
                    self._oversize_topics.add(topic)
                    log.warning("MQTT message on %r dropped: %d bytes is over the %d byte limit "
                                "(further oversize messages on this topic are counted, not logged)",
                                topic, len(payload), self.settings.max_payload)
                return
            self._oversize_topics.discard(topic)
            mine = any(topic_matches(f, topic) for f in self._own)
            if mine and not any(sub.own and topic_matches(sub.topic_filter, topic) for sub in self._subs):
                self.own_messages += 1
                if topic not in self._own_topics:
                    if len(self._own_topics) >= _EPISODE_KEYS_MAX:
                        self._own_topics.clear()
                    self._own_topics.add(topic)
                    log.warning("MQTT message on %r is on the gateway's own topics: not given to any handler "
                                "(does a reader's topic filter cover the alerts?)", topic)
                return
            arrived = self._now()
            matched = False
            for sub in self._subs:
                if sub.own != mine or not topic_matches(sub.topic_filter, topic):
                    continue
                matched = True
                try:
                    sub.handler(topic, payload, arrived)
                except Exception as e:  # a handler's bug must never take the link down
                    self.handler_errors += 1
                    sub.errors += 1
                    if not sub.failing:
                        sub.failing = True
                        log.error("MQTT handler %s for %r failed on topic %r: %s: %s (further errors "
                                  "are counted until it succeeds again)", _name(sub.handler),
                                  sub.topic_filter, topic, type(e).__name__, e,
                                  exc_info=True)
                else:
                    if sub.failing:
                        sub.failing = False
                        log.info("MQTT handler %s for %r works again (topic %r)",
                                 _name(sub.handler), sub.topic_filter, topic)
            if not matched:
                self.unmatched += 1
                if topic not in self._unmatched_topics:
                    if len(self._unmatched_topics) >= _EPISODE_KEYS_MAX:
                        self._unmatched_topics.clear()
                    self._unmatched_topics.add(topic)
                    log.warning("MQTT message on %r matches no handler (a subscription left in the "
                                "persistent session?): dropped", topic)
        finally:
            if message.qos > 0:
                # Manual acknowledgement (see `_make_client`): only now is the message ours.
                client._client.ack(message.mid, message.qos)

    async def _dispatch_loop(self, session: _Session) -> None:
        async for message in session.client.messages:
            self._dispatch(session.client, message)

    async def _drain_received(self, session: _Session) -> None:
        """Handle what has already arrived (used on a graceful stop)."""
        messages = session.client.messages
        while len(messages) and not session.ended.done():
            self._dispatch(session.client, await messages.__anext__())

    # ---- the connection ----

    def _make_client(self) -> aiomqtt.Client:
        s = self.settings
        tls = aiomqtt.TLSParameters(ca_certs=s.ca_file) if s.tls else None
        client = aiomqtt.Client(
            s.host, s.port, identifier=s.client_id, clean_session=False,
            username=s.username, password=s.password if s.username is not None else None,
            tls_params=tls, keepalive=s.keepalive, timeout=s.connect_timeout_s, logger=paho_log)
        # aiomqtt 2.x has no public switch for these (aiomqtt issue #345): acknowledge QoS 1
        # messages only after our handlers ran, so nothing received is lost on a crash or a
        # disconnect; bound paho's own TCP/TLS connect; and don't let aiomqtt warn about
        # "pending publish calls" when many publishes wait for their PUBACK at once.
        client._client.manual_ack_set(True)
        client._client.connect_timeout = s.connect_timeout_s
        client.pending_calls_threshold = max(s.queue_max, _FLUSH_BATCH) + 100
        return client

    def _describe_failure(self, e: BaseException) -> str:
        text = str(e) or type(e).__name__
        if isinstance(e, aiomqtt.MqttCodeError) and e.rc is not None:
            value = getattr(e.rc, "value", e.rc)
            if value in (4, 5, 134, 135):  # 3.1.1 bad credentials / not authorised; 5.0 equivalents
                return f"refused the connection: {text} (check the username and password)"
            return f"refused the connection: {text}"
        if "CERTIFICATE_VERIFY_FAILED" in text or isinstance(e.__cause__ or e.__context__, ssl.SSLError):
            return f"unreachable: TLS failed: {text} (check ca_file and the broker's certificate)"
        if "Operation timed out" in text:
            hint = "" if self.settings.tls else " (does the broker expect TLS on this port?)"
            return f"unreachable: no CONNACK within {self.settings.connect_timeout_s:g} s{hint}"
        return f"unreachable: {text}"

    def _connect_failed(self, e: BaseException) -> None:
        self.connect_failures += 1
        self._outage_attempts += 1
        why = self._describe_failure(e)
        kind = why.split(":", 1)[0] + (" tls" if "TLS" in why else "")
        if self._outage_since is None:
            self._outage_since = self._monotonic()
        if kind not in self._outage_reasons:  # once per outage (again only if the cause changes)
            self._outage_reasons.add(kind)
            log.warning("MQTT broker %s %s; retrying", self.where, why)

    def _connection_lost(self, e: BaseException) -> None:
        self._outage_since = self._monotonic()
        self._outage_attempts = 0
        self._outage_reasons = {"lost", "unreachable"}  # one line per outage
        cause = e.__cause__ or e  # aiomqtt: "Disconnected during message iteration" from the real cause
        why = str(cause) or type(cause).__name__
        if getattr(getattr(cause, "rc", None), "value", None) == 128:
            # paho's MQTT_ERR_CONN_LOST (socket closed or reset) becomes "[code:128] Unspecified error"
            why = f"the broker or the network closed the connection ({why})"
        log.warning("MQTT connection to broker %s lost: %s; reconnecting", self.where, why)

    def _connected_now(self) -> None:
        if self._ever_connected:
            self.reconnects += 1
        if self._outage_since is not None:
            log.info("MQTT broker %s connected %s after %.1f s (%d failed attempts)", self.where,
                     "again" if self._ever_connected else f"as {self.settings.client_id!r}",
                     self._monotonic() - self._outage_since, self._outage_attempts)
        elif not self._ever_connected:
            log.info("MQTT connected to %s as %r", self.where, self.settings.client_id)
        self._ever_connected = True
        self._outage_since = None
        self._outage_reasons = set()
        self._outage_attempts = 0

    async def _sleep_or_stop(self, seconds: float) -> bool:
        """Sleep; True if stop() was called meanwhile."""
        try:
            async with asyncio.timeout(seconds):
                await self._stop.wait()
            return True
        except TimeoutError:
            return False

    async def run(self) -> None:
        """Stay connected until `stop()` or cancellation; never raises MqttError."""
        if self._running:
            raise RuntimeError("MqttLink.run() is already running (one connection per client id)")
        self._running = True
        if self._memory is not None and self._held is None:
            self._held = self._memory.load()
            self._remember()
        try:
            await self._run()
        finally:
            self._running = False

    async def _run(self) -> None:
        backoff = Backoff(self.settings.backoff_min_s, self.settings.backoff_max_s, jitter=self._rng)
        while not self._stop.is_set():
            client = self._make_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as e:
                self._close_quietly(client)
                self._connect_failed(e)
                if await self._sleep_or_stop(backoff.failed()):
                    break
                continue
            started = self._monotonic()
            self._connected_now()
            lost: BaseException | None = None
            try:
                lost = await self._session_run(client)
            finally:
                self._session, session = None, self._session
                for sub in self._subs:
                    sub.active = False
                if session is not None and not session.ended.done():
                    session.ended.set_result(None)
                try:
                    await asyncio.shield(client.__aexit__(None, None, None))
                except (aiomqtt.MqttError, asyncio.CancelledError):
                    pass
                except Exception:  # noqa: BLE001 - closing must not raise
                    log.debug("MQTT disconnect failed", exc_info=True)
                self._close_quietly(client)
            if lost is None:
                break
            self._connection_lost(lost)
            # A connection that lasted resets the back-off; one that drops at once (another
            # client with our id, a broker that kicks us) keeps backing off.
            if self._monotonic() - started >= 10:
                backoff.reset()
            elif await self._sleep_or_stop(backoff.failed()):
                break

    async def _session_run(self, client: aiomqtt.Client) -> BaseException | None:
        """One connected session. Returns the error that ended it, or None on stop()."""
        session = self._session = _Session(client)
        subscribed = asyncio.ensure_future(self._renew(session))
        tasks = {subscribed}
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            # Subscribe (and flush) before dispatching: messages the broker kept for us queue
            # up meanwhile and are dispatched in order after.
            done, _ = await asyncio.wait({subscribed, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper not in done:
                if subscribed.exception() is not None:
                    return self._ended_by(subscribed)
                session.subscribed = True
                dispatcher = asyncio.ensure_future(self._dispatch_loop(session))
                flusher = asyncio.ensure_future(self._flush_loop(session))
                tasks = {dispatcher, flusher}
                done, _ = await asyncio.wait({dispatcher, flusher, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper not in done:
                    return self._ended_by(done.pop())
            # stop(): finish what has arrived, send what waits (bounded), then disconnect.
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            tasks = set()
            try:
                await self._drain_received(session)
                await self._flush(session, deadline=self._monotonic() + self.settings.connect_timeout_s)
            except aiomqtt.MqttError:
                pass
            return None
        finally:
            stopper.cancel()
            for t in tasks:
                t.cancel()
            await asyncio.gather(stopper, *tasks, return_exceptions=True)

    async def _renew(self, session: _Session) -> None:
        await self._subscribe(session, list(self._subs))
        await self._forget_stale(session)

    @staticmethod
    def _ended_by(task: asyncio.Task) -> BaseException:
        e = task.exception()
        if e is None:
            return aiomqtt.MqttError("message stream ended")
        if isinstance(e, aiomqtt.MqttError):
            return e
        raise e

    @staticmethod
    def _close_quietly(client: aiomqtt.Client) -> None:
        try:
            # A failed connect can leave paho's socket (and its reader on the loop) behind.
            client._client._sock_close()
            # aiomqtt keeps a lost connection's error in a future that only the message
            # iterator reads; if the connection broke while no one iterated (during a graceful
            # stop), asyncio would log "Future exception was never retrieved".
            fut = client._disconnected
            if fut.done() and not fut.cancelled():
                fut.exception()
        except Exception:  # noqa: BLE001
            pass

    def stop(self) -> None:
        """Ask `run()` to finish: handle what has arrived, send what waits, disconnect."""
        self._stop.set()


def _valid_filter(topic_filter: object) -> bool:
    try:
        aiomqtt.Wildcard(topic_filter)
    except (TypeError, ValueError):
        return False
    return True


def _publish_problem(topic: str) -> str:
    """Why a message cannot be published to `topic` ("" if it can)."""
    try:
        aiomqtt.Topic(topic)
    except (TypeError, ValueError):
        return "a topic to publish to is 1..65535 characters without the wildcards + and #"
    if "\0" in topic:
        return "a topic cannot hold a NUL character"
    return ""


def _name(handler: Handler) -> str:
    return getattr(handler, "__qualname__", None) or repr(handler)
