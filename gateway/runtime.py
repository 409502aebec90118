"""Builds the gateway from a SiteConfig, supervises its tasks and shuts it down cleanly.

At startup the rules engine is given back what the ledger knows (open alerts, counter and
consumption baselines, patrol rounds in progress, meter replacements: gateway/rules/restore.py)
before it sees any event; while running it applies acknowledgements (`gateway alarms ack`) and
meter replacements (`gateway meters replace`) written to the ledger, polled once a second.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from collections import defaultdict

from .clock import REAL_CLOCK, Clock
from .config import SiteConfig
from .drivers.dlt645 import Dlt645Bus
from .drivers.modbus import ModbusBus
from .events import AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats, PatrolCheckin, Reading
from .hub import Hub
from .ledger.queries import bus_statuses, read_only
from .ledger import Ledger
from .sinks.alert_message import alert_messages

log = logging.getLogger(__name__)


def build_buses(cfg: SiteConfig, publish, clock: Clock = REAL_CLOCK) -> list[ModbusBus | Dlt645Bus]:
    """One scheduler per bus with enabled meters or lighting outputs (their commands share the
    line with the polls); the driver class by the bus's type."""
    by_bus = defaultdict(list)
    for m in cfg.meters:
        if m.enabled:
            by_bus[m.bus].append((m, cfg.models[m.model]))
    switched = {o for c in cfg.lighting.circuits for o in c.outputs}
    with_outputs = {o.bus for o in cfg.outputs if o.type == "modbus" and o.id in switched}
    return [(Dlt645Bus if b.type == "dlt645" else ModbusBus)(b, by_bus[b.id], publish, clock)
            for b in cfg.buses if by_bus[b.id] or b.id in with_outputs]


class Gateway:
    def __init__(self, cfg: SiteConfig, clock: Clock = REAL_CLOCK, record: Path | None = None,
                 web_users: list | None = None, announce: bool = True):
        self.cfg = cfg
        self.announce = announce              # say who this box is on <site>/gateway/info (not in a replay)
        self.web_users = web_users or []      # users beyond the site file's (the demo's)
        self.web = None                       # the console's WebContext once it runs
        self.web_address = None
        self.clock = clock
        self.hub = Hub()
        self.buses = build_buses(cfg, self.hub.publish, clock)
        self.ledger: Ledger | None = None
        self.drainer = None
        self.registry = None
        self.mqtt = None
        self.rules = None
        self.webhooks: list = []
        self.record_path = record
        self.recorder = None
        self.field_drivers: list = []
        self.lighting = None                 # the lighting controller (gateway/lighting/control.py)
        self.maintenance = None              # repair targets and inspections (gateway/maintenance/watch.py)
        self._stop = asyncio.Event()
        self.started_at = None               # when run() began: what the ledger holds is from before
        self.restored = None                 # what the rules got back from the ledger (rules.restore.Restored)
        self.storage = None                  # retention and the disk guard (retention.StorageCare)
        self._replacements_seen = 0          # the last meter_replacements id given to the rules
        self._replacement_error = ""
        # Clock safety (gateway/timesync.py): None with a simulated clock (replay, tests)
        self.timesync = None
        self._held_events = None             # what the rules did not judge while the clock was untrusted
        self._start_untrusted = False        # started_at came from an untrusted clock

    def stop(self) -> None:
        self._stop.set()

    def summary(self) -> dict:
        """The demo's and the periodic log line's figures: meter states from the ledger's status
        read model (as `gateway status`, the health page and /metrics show them), poll counters
        from the buses."""
        stats = [b.stats() for b in self.buses]
        with read_only(self.cfg.storage_path) as db:
            buses = bus_statuses(self.cfg, db)
        return {
            "buses": len(self.buses),
            "meters": sum(len(b.meters) for b in buses),
            "online": sum(b.count("online") for b in buses),
            "offline": sum(b.count("offline") for b in buses),
            "never": sum(b.count("never") for b in buses),
            "polled": sum(1 for b in self.buses for m in b.meters if m.stats.ok),
            "polls": sum(s["polls"] for s in stats),
            "failures": sum(s["failures"] for s in stats),
            "overruns": sum(s["overruns"] for s in stats),
            "readings_stored": self.ledger.readings_written if self.ledger else 0,
        }

    def _field_devices(self) -> list:
        """Card readers, doors and patrol readers, wired to the registry and the MQTT link.

        Returns the coroutines to run; empty when the site file has none of them.
        """
        cfg = self.cfg
        if not (cfg.card_readers or cfg.doors or cfg.patrol.readers):
            return []
        from zoneinfo import ZoneInfo

        from .cards import CardRegistry, load_hash_key
        from .drivers.card_reader import (CardDesk, DoorEventsDriver, MqttCardReaderDriver,
                                          SerialCardReaderDriver)
        from .drivers.patrol import Checkpoints, MqttPatrolReaderDriver, WandDriver

        tz = ZoneInfo(cfg.site.timezone)
        publish = self.hub.publish
        cards_file = cfg.base_dir / cfg.cards.file if cfg.cards.file else None
        self.registry = CardRegistry(cards_file, cfg.site.timezone,
                                     [e.model_dump() for e in cfg.cards.entries])
        for problem in self.registry.problems[:5]:
            log.warning("cards: %s", problem)
        if len(self.registry.problems) > 5:
            log.warning("cards: and %d more problems in the card list", len(self.registry.problems) - 5)
        key = load_hash_key(cfg.cards.hash_key_env)
        if key is None:
            key = self.ledger.secret("card_hash_key")
            log.warning("cards: %s is not set; card hashes use a key kept in %s (set it to share "
                        "hashes across boxes)", cfg.cards.hash_key_env, self.ledger.keys_path)
        desk = CardDesk(self.registry, key, publish, self.clock)
        doors = {d.id for d in cfg.doors}
        runs, subscriptions = [], []
        for r in cfg.card_readers:
            if r.type == "serial":
                d = SerialCardReaderDriver(r, desk, self.clock)
                runs.append((f"card reader {r.id}", d.run))
            else:
                d = MqttCardReaderDriver(r, doors, desk, tz, self.clock)
                subscriptions.append((r.topic, d.handle))
            self.field_drivers.append(d)
        for door in cfg.doors:
            if door.topic:
                d = DoorEventsDriver(door, doors, publish, tz)
                subscriptions.append((door.topic, d.handle))
                self.field_drivers.append(d)
        checkpoints = Checkpoints(cfg.patrol)
        for r in cfg.patrol.readers:
            if r.type == "wand":
                d = WandDriver(r, checkpoints, desk, publish, tz, self.clock)
                runs.append((f"patrol wand {r.id}", d.run))
            else:
                d = MqttPatrolReaderDriver(r, checkpoints, desk, publish, tz, self.clock)
                subscriptions.append((r.topic, d.handle))
            self.field_drivers.append(d)
        for d in self.field_drivers:
            if getattr(d, "line", None) is not None:
                self._tap_serial(d)
        for topic, handler in subscriptions:
            self.mqtt.subscribe(topic, self._tap_mqtt(handler))  # config checks: there is an mqtt section
        runs.append(("card registry", self._reload_cards))
        return runs

    def _mqtt_link(self):
        import os

        from .mqtt import MqttLink, MqttSettings, SessionMemory
        m = self.cfg.mqtt
        client_id = m.client_id or f"estate-gateway-{self.cfg.site.id}"
        link = MqttLink(MqttSettings(
            host=m.host, port=m.port, client_id=client_id,
            username=os.environ.get(m.username_env) if m.username_env else None,
            password=os.environ.get(m.password_env) if m.password_env else None,
            tls=m.tls, ca_file=str(self.cfg.base_dir / m.ca_file) if m.ca_file else None, keepalive=m.keepalive_s),
            clock_monotonic=self.clock.monotonic, clock_now=self.clock.now,   # arrival times on the gateway's clock
            # the broker keeps the session's subscriptions across runs and reloads: the ledger
            # remembers them, so those the site file no longer names are unsubscribed
            memory=SessionMemory(self.ledger.meta, self.ledger.set_meta, f"mqtt_filters:{client_id}"))
        try:
            link.own(f"{self.cfg.alert_prefix}/#")   # our alerts never reach a reader's handler
        except ValueError:
            pass  # a prefix with a wildcard: nothing is published under it (publish refuses, says why)
        return link

    def _tap_serial(self, driver) -> None:
        if self.record_path:
            feed = driver.line.on_data

            def tapped(data: bytes) -> None:
                if self.recorder is None:
                    feed(data)
                    return
                now = self.clock.now()  # one instant for the record and the event: replay repeats it
                self.recorder.serial(now, driver.cfg.id, data)
                feed(data, now)
            driver.line.on_data = tapped

    def _tap_mqtt(self, handler):
        if not self.record_path:
            return handler

        def tapped(topic: str, payload: bytes, at) -> None:
            if self.recorder is not None:
                self.recorder.mqtt(at, topic, payload)
            handler(topic, payload, at)
        return tapped

    def _open_recorder(self) -> None:
        """Before anything polls: the buses write their exchanges, and serial lines and MQTT
        handlers were tapped when they were built (`_tap_*`)."""
        from .recording import Recorder
        self.recorder = Recorder(self.record_path, self.cfg.site.id, self.clock.now())
        for bus in self.buses:
            bus.recorder = self.recorder
        log.info("recording device traffic to %s", self.record_path)

    async def _flush_recording(self) -> None:
        rec = self.recorder
        try:
            while True:
                await asyncio.sleep(1.0)
                rec.flush()
        finally:
            rec.close()

    # ---- alarms ----

    def _alerting(self) -> list:
        if not self.cfg.rules:
            return []
        from .rules.engine import Engine

        def changed(alert, what: str) -> None:
            self.hub.publish(AlertChange(alert.snapshot(), what))

        self.rules = Engine(self.cfg, self.cfg.rules, on_change=changed)
        self.rules.book.keep_history = False  # the ledger keeps the history
        runs = [("rules engine", self._run_rules)]
        if self.mqtt is not None:
            runs.append(("alert publisher", self._publish_alerts))
        if self.cfg.alerts.webhooks:
            import os
            from zoneinfo import ZoneInfo

            from .sinks.webhook import Webhook
            self.webhooks = [Webhook(w.name, os.environ.get(w.url_env, ""), w.format, set(w.severities),
                                     self.cfg.site.name, ZoneInfo(self.cfg.site.timezone), w.timeout_s,
                                     site_id=self.cfg.site.id)
                             for w in self.cfg.alerts.webhooks]
            runs += [(f"webhook {w.name}", w.run) for w in self.webhooks]
            runs.append(("webhook feeder", self._feed_webhooks))
        return runs

    def _identity(self) -> list:
        """`<site>/gateway/info`: announce this box, and raise an alarm when another uses our site id."""
        if self.mqtt is None or not self.announce:
            return []
        from .identity import SITE_IDENTITY_RULE, Identity, IdentityWatch, box_id, info_topic
        site = self.cfg.site
        me = Identity(site.id, site.name, box_id(self.cfg.storage_path), self.started_at or self.clock.now())

        def conflict(other, at) -> None:
            if self.rules is not None:
                self.rules.book.raise_(
                    SITE_IDENTITY_RULE, other.box, kind="identity", severity="critical", at=at,
                    message=f"站点编号 {site.id} 同时被另一台网关使用（主机 {other.host}，编号 {other.box}）："
                            f"总部会把两个小区的数据混在一起，请给每个小区设置各自的 site.id",
                    message_en=f"site id {site.id} is also used by another gateway (host {other.host}, box "
                               f"{other.box}): head office would merge two estates' data; give each estate its "
                               f"own site.id", details={"box": other.box, "host": other.host})

        def gone(other, at) -> None:
            if self.rules is not None:
                self.rules.book.clear(SITE_IDENTITY_RULE, other.box, at, "the other gateway fell silent")

        every = self.cfg.mqtt.announce_s
        watch = IdentityWatch(me, conflict, gone, every)
        topic = info_topic(site.id)
        self.mqtt.own(topic)            # a reader on `<site>/#` must not take announcements as input
        self.mqtt.subscribe(topic, watch.handle, own=True)

        async def announce() -> None:
            said, trusted = None, None
            while True:
                now = self.clock.now()
                now_trusted = self.timesync is None or self.timesync.settled
                if said is None or now_trusted != trusted or self.clock.monotonic() - said >= every:
                    said, trusted = self.clock.monotonic(), now_trusted
                    await self.mqtt.publish(topic, me.message(now, now_trusted), retain=True)
                watch.tick(now)
                await asyncio.sleep(min(5.0, every))
        return [("gateway identity", announce)]

    async def _feed_webhooks(self) -> None:
        sub = self.hub.subscribe(AlertChange, name="webhooks")
        try:
            while True:
                for change in await sub.get_batch():
                    for w in self.webhooks:
                        w.offer(change)
        finally:
            sub.close()

    async def _run_rules(self) -> None:
        sub = self.hub.subscribe(Reading, DeviceStatus, CardSwipe, DoorEvent, PatrolCheckin, name="rules")
        engine = self.rules
        try:
            ts, held = self.timesync, self._held_events
            if self.restored is None:
                # One turn of the loop first: the ledger, the alert publisher and the webhooks
                # (started with this task) subscribe, so the alerts cleared while restoring reach them.
                await asyncio.sleep(0)
                if ts is None or ts.settled:
                    self.restore_rules(self.started_at or self.clock.now())
            next_tick = self.clock.monotonic()
            while True:
                try:
                    async with asyncio.timeout(max(0.0, next_tick - self.clock.monotonic())):
                        events = await sub.get_batch()
                except TimeoutError:
                    events = []
                if ts is not None:
                    if not ts.settled:
                        # The wall clock is not trusted: an unknown card or a forced door is still
                        # judged at once (those rules need only the event); nothing else is (no ticks:
                        # no patrol deadline, stale meter or held door), and the events wait to be
                        # judged by the other rules with their repaired times (gateway/timesync.py).
                        for e in events:
                            engine.handle(e, "untrusted")
                        held.hold(events)
                        next_tick = self.clock.monotonic() + 1.0
                        continue
                    if self.restored is None:     # started while untrusted: started_at is repaired now
                        self.restore_rules(self.started_at)
                    if len(held):
                        for e in held.release():
                            engine.handle(e, "deferred")
                    events = held.release(events)
                for e in events:
                    engine.handle(e)
                if self.clock.monotonic() >= next_tick:
                    next_tick += 1.0
                    engine.tick(self.clock.now())
                    self._apply_acks()
                    self._apply_replacements()
        finally:
            sub.close()

    def restore_rules(self, now):
        """Give the fresh rules engine what the ledger knows at `now` (once, before any event)."""
        from .rules.restore import restore
        self.restored = restore(self.rules, self.ledger, now)
        self._replacements_seen = max(self._replacements_seen, self.restored.last_replacement_id)
        return self.restored

    def _apply_replacements(self) -> None:
        """Meter replacements recorded since the last look (`gateway meters replace`) to the rules."""
        try:
            found = self.ledger.replacements(after_id=self._replacements_seen)
        except Exception as e:  # noqa: BLE001 - a locked or damaged ledger: say it once, try again next second
            if str(e) != self._replacement_error:
                self._replacement_error = str(e)
                log.error("meter replacements: cannot read them from the ledger: %s", e)
            return
        self._replacement_error = ""
        for r in found:
            self._replacements_seen = max(self._replacements_seen, r.id)
            self.rules.note_replacement(r.meter, r.at, self.clock.now())
            if self.recorder is not None:
                self.recorder.replacement(self.clock.now(), r.meter, r.at, r.old_final, r.new_initial)
            log.info("meter %s: replacement at %s recorded (old meter's final %s kWh, new meter's initial %s kWh): "
                     "the rules start its counter again", r.meter, r.at.isoformat(), r.old_final, r.new_initial)

    def _apply_acks(self) -> None:
        for rid, alert_id, by, note, ts_us in self.ledger.ack_requests():
            alert = self.ack_alert(alert_id, by, note)
            result = "acknowledged" if alert is not None else "no open alert with this id"
            self.ledger.ack_done(rid, result)
            log.info("alert %s: %s by %s (%s)", alert_id, result, by, note)

    def ack_alert(self, alert_id: str, by: str, note: str):
        """A person acknowledges an open alert (CLI or console); recorded with the traffic."""
        alert = self.rules.ack(alert_id, by, note, self.clock.now()) if self.rules is not None else None
        if alert is None and self.lighting is not None:
            alert = self.lighting.book.ack(alert_id, by, note, self.clock.now())
        if alert is None and self.maintenance is not None:
            alert = self.maintenance.book.ack(alert_id, by, note, self.clock.now())
        if alert is not None and self.recorder is not None:
            self.recorder.ack(self.clock.now(), alert.rule, alert.source, by, note)
        return alert

    def _books(self) -> list:
        return [x.book for x in (self.rules, self.lighting, self.maintenance) if x is not None]

    def open_alerts(self) -> list:
        """Every open alert the running rooms hold (rules, lighting, maintenance)."""
        return [a for b in self._books() for a in b.active()]

    def live_alert(self, alert_id: str):
        """The open alert of this id in a running room, or None."""
        for b in self._books():
            a = b.by_id(alert_id)
            if a is not None:
                return a
        return None

    async def _publish_alerts(self) -> None:
        """`<prefix>/<rule>/<source>`: JSON, retained while the alert is open; deleted when cleared."""
        prefix, site = self.cfg.alert_prefix, self.cfg.site
        sub = self.hub.subscribe(AlertChange, name="alert publisher")
        try:
            while True:
                for change in await sub.get_batch():
                    for topic, body, retain in alert_messages(change, prefix, site.id, site.name):
                        await self.mqtt.publish(topic, body, retain=retain)
        finally:
            sub.close()

    async def _reload_cards(self) -> None:
        failed = None
        while True:
            await asyncio.sleep(self.cfg.cards.reload_s)
            if self.registry.reload_if_changed():
                log.info("cards: card list reloaded, %d cards (%d problems)", len(self.registry),
                         len(self.registry.problems))
            elif self.registry.load_error and self.registry.load_error != failed:
                log.error("cards: cannot reload the card list, keeping the previous one: %s",
                          self.registry.load_error)
            failed = self.registry.load_error

    def _open_ledger(self) -> Ledger:
        influx = self.cfg.influxdb
        encoder = None
        if influx:
            from .sinks.schema import Encoder, SiteIndex
            encoder = Encoder(SiteIndex.from_config(self.cfg))
        ledger = Ledger(self.cfg.storage_path, self.cfg.storage.commit_interval_s, encoder)
        if influx:
            from .sinks.drainer import Drainer
            from .sinks.influxdb import make_writer
            self.drainer = Drainer(ledger, make_writer(influx, self.cfg.base_dir), influx, self.clock)
        return ledger

    async def run(self, status_every_s: float | None = 60.0, grace_s: float = 5.0) -> None:
        """Run until `stop()`; then let each bus finish its exchange in flight and flush the ledger."""
        self.started_at = self.clock.now()
        self.ledger = self._open_ledger()
        clock_runs = self._watch_clock()
        if self.record_path:
            self._open_recorder()
        ledger_task = asyncio.create_task(self.ledger.run(self.hub), name="ledger")
        bus_tasks = [asyncio.create_task(self._supervise(f"bus {b.bus.id}", b.run, b.close), name=f"bus-{b.bus.id}")
                     for b in self.buses]
        status_task = (asyncio.create_task(self._report(status_every_s), name="status")
                       if status_every_s else None)
        if self.cfg.mqtt:
            self.mqtt = self._mqtt_link()
        runs = (clock_runs + self._field_devices() + self._alerting() + self._lighting() + self._identity()
                + self._maintenance()
                + self._storage_care())
        if self.record_path:
            runs.append(("recorder", self._flush_recording))
        if self.mqtt is not None:
            runs.append(("MQTT link", self.mqtt.run))
        runs += self._web_console()
        field_tasks = [asyncio.create_task(self._supervise(what, run), name=what) for what, run in runs]
        side_tasks = []
        if self.drainer:
            side_tasks = [asyncio.create_task(self._supervise("InfluxDB drainer", self.drainer.run),
                                              name="influx-drain"),
                          asyncio.create_task(self._publish_stats(self.cfg.influxdb.stats_interval_s),
                                              name="self-metrics")]
        log.info("gateway %s: polling %d meters on %d buses, ledger %s", self.cfg.site.id,
                 sum(len(b.meters) for b in self.buses), len(self.buses), self.cfg.storage_path)
        try:
            await self._stop.wait()
        finally:
            for b in self.buses:
                b.stop()
            if bus_tasks:
                _, late = await asyncio.wait(bus_tasks, timeout=grace_s)
                for t in late:
                    t.cancel()
                await asyncio.gather(*bus_tasks, return_exceptions=True)
            if status_task:
                status_task.cancel()
            for t in field_tasks:
                t.cancel()
            await asyncio.gather(*field_tasks, return_exceptions=True)
            ledger_task.cancel()
            await asyncio.gather(ledger_task, return_exceptions=True)
            if self.drainer:
                # After the ledger's last commit, so the final points get their chance too.
                side_tasks[1].cancel()
                self.drainer.stop()
                _, late = await asyncio.wait(side_tasks, timeout=grace_s)
                for t in late:
                    t.cancel()
                await asyncio.gather(*side_tasks, return_exceptions=True)
            self.ledger.close()
            log.info("gateway stopped: %s", self._summary_line())

    def _lighting(self) -> list:
        """The lighting controller, when the site file has lighting circuits."""
        if not self.cfg.lighting.circuits:
            return []
        from .lighting.control import LightingControl
        from .lighting.outputs import make_ports
        ports = make_ports(self.cfg, {b.bus.id: b for b in self.buses if isinstance(b, ModbusBus)}, self.mqtt)
        by_meter = {st.meter.id: b for b in self.buses for st in b.meters}

        def poll_soon(meter_id: str) -> None:
            bus = by_meter.get(meter_id)
            if bus is not None:
                bus.poll_soon(meter_id)

        def trusted() -> bool:
            return self.timesync is None or self.timesync.trusted
        self.lighting = LightingControl(self.cfg, ports, self.hub.publish, self.clock, self.ledger, trusted,
                                        poll_soon, readings=self.hub.subscribe(Reading, maxlen=100_000,
                                                                               name="lighting"))
        return [("lighting", self.lighting.run)]

    def _maintenance(self) -> list:
        """Repair targets and the inspection rhythm, raised as alarms (gateway/maintenance/watch.py)."""
        from .maintenance.watch import MaintenanceWatch

        def trusted() -> bool:
            return self.timesync is None or self.timesync.trusted
        self.maintenance = MaintenanceWatch(self.cfg, self.hub.publish, self.clock, trusted, self.ledger)
        return [("maintenance", self.maintenance.run)]

    def _storage_care(self) -> list:
        """Retention once after start and then hourly, and the disk guard the ledger asks before
        each commit (gateway/ledger/retention.py). Nothing is removed while the wall clock is untrusted."""
        from .ledger.retention import StorageCare

        def trusted() -> bool:
            return getattr(getattr(self, "timesync", None), "trusted", True)
        self.storage = StorageCare(self.ledger, self.cfg, self.clock, self.hub.publish, trusted=trusted)
        return [("storage care", self.storage.run)]

    def _web_console(self) -> list:
        """The guard-room console, when the site has users (or the demo gave one)."""
        web = self.cfg.web
        if not web.enabled:
            return []
        if not (self.cfg.users or self.web_users):
            log.info("web console off: no users in the site file (add one with `gateway users add`)")
            return []
        import os

        from .web.app import WebContext
        from .web.server import WebError, listen, serve
        from .web.sessions import SessionStore
        try:
            sock = listen(web.bind, web.port)
        except WebError as e:
            log.error("%s; the gateway runs on without it", e)
            return []
        key = os.environ.get(web.session_key_env) if web.session_key_env else None
        # sessions in the ledger: a reload (a changed site file) or a restart logs nobody out
        sessions = SessionStore(web.idle_minutes * 60, web.session_hours * 3600, ledger=self.ledger)
        self.web = WebContext(self.cfg, key or self.ledger.secret("web-session").hex(), gateway=self,
                              extra_users=list(self.web_users), sessions=sessions)
        self.web_address = sock.getsockname()[:2]
        # after a crash, _supervise starts it again: the first socket is closed by then
        return [("web console", lambda: serve(self.web, sock if sock.fileno() != -1 else None))]

    async def _supervise(self, what: str, run, cleanup=None) -> None:
        # A bug in one part must not take the others down: log it and start that part again.
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed unexpectedly; restarting it in 5 s", what)
                if cleanup:
                    await cleanup()
                if self._stop.is_set():
                    return
                try:
                    async with asyncio.timeout(5):
                        await self._stop.wait()
                except TimeoutError:
                    pass

    def _summary_line(self) -> str:
        s = self.summary()
        clock = ""
        if self.timesync is not None and not self.timesync.trusted:
            clock = f"; clock untrusted ({self.timesync.reason}), {self.ledger.outbox_held} points held back"
        if self.timesync is not None and self.timesync.unrepairable:
            clock += (f"; {len(self.timesync.unrepairable)} clock episodes of earlier boots could not be repaired "
                      f"(clock_episodes)")
        return (f"{s['meters']} meters on {s['buses']} buses, {s['online']} online, "
                f"{s['offline']} offline, {s['polls']} polls, {s['readings_stored']} readings stored{clock}")

    # ---- clock safety ----

    def _watch_clock(self) -> list:
        """Watch the wall clock (gateway/timesync.py) from before anything is recorded: the real
        clock through the kernel, a SourceClock through its source; a simulated clock (replay)
        is the recording's time and is not watched. Returns the watcher's task."""
        from .timesync import HeldEvents, SourceClock, SystemClockSource, TimeSync
        if self.clock is REAL_CLOCK:
            source = SystemClockSource()
        elif isinstance(self.clock, SourceClock):
            source = self.clock.source
        else:
            return []
        ts = self.timesync = TimeSync(source, self.ledger)
        self._held_events = HeldEvents(ts.timeline)
        ts.listeners.append(self._clock_repaired)
        ts.start()
        self._start_untrusted = not ts.trusted
        return [("clock watch", ts.run)]

    def _clock_repaired(self, repairs) -> None:
        """The clock is trusted and the ledger repaired: the start time, the open alerts (raised,
        updated or acknowledged while the clock was untrusted) and the live-judged rules' own times
        move to true time too."""
        from .clock import from_us, to_us
        ts = self.timesync
        if self._start_untrusted and ts.started_mono is not None:
            self.started_at = from_us(ts.true_wall_us(ts.started_mono))
            self._start_untrusted = False
        if self.rules is None:
            return

        def repaired(t):
            span = ts.timeline.find(to_us(t)) if t is not None else None
            return from_us(to_us(t) + span.offset) if span is not None and span.state == "repaired" else t
        # open alerts (raised live, or acknowledged, while untrusted) and the live rules' own times
        self.rules.shift_times(repaired)

    def self_metrics(self) -> list[GatewayStats]:
        now = self.clock.now()
        points = [GatewayStats(now, {k: v for k, v in b.stats().items() if k != "bus"}, bus=b.bus.id)
                  for b in self.buses]
        overall = {"readings_stored": self.ledger.readings_written if self.ledger else 0,
                   **(self.drainer.stats() if self.drainer else {}),
                   **(self.storage.stats() if self.storage else {}),
                   # 0 while the wall clock is untrusted (such points wait for its repair to be sent)
                   "clock_trusted": int(self.timesync is None or self.timesync.trusted)}
        points.append(GatewayStats(now, overall))
        return points

    async def _publish_stats(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            for p in self.self_metrics():
                self.hub.publish(p)

    async def _report(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            log.info("status: %s", self._summary_line())
