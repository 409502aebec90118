"""Card readers, doors and patrol readers end to end: simulators on ptys and a real mosquitto,
through the real gateway into the ledger and the outbox."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from gateway.config import ConfigError, parse_site
from gateway.drivers.card_frames import WandRecord
from gateway.events import CardSwipe, DoorEvent, PatrolCheckin
from gateway.runtime import Gateway
from simulators.card_reader import SerialCardReaderSim
from simulators.patrol import WandSim

TZ = ZoneInfo("Asia/Shanghai")
SITE = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}
RESIDENT, GUARD, REVOKED, UNKNOWN = 1234567890, 2000000001, 3000000003, 3999999999
W26_CARD = (12 << 16) | 34567  # registered as "12,34567", read by a Wiegand-26 reader


def cards_csv(path, extra_rows=()):
    rows = ["number,holder,household,role,valid_from,valid_to,revoked",
            f"{RESIDENT:010d},张伟,B01-1-101,resident,,,",
            f"{GUARD:010d},李强,,staff:guard,,,",
            f"{REVOKED:010d},王芳,B02-1-201,resident,,,1",
            '"12,34567",赵敏,B03-2-302,resident,,,', *extra_rows]
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


def site_data(tmp_path, broker, rdm_port, wiegand_port, wand_port):
    return {
        "site": SITE,
        "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
        "influxdb": {"version": 1, "url": "http://127.0.0.1:9", "database": "g"},  # outbox only, never sent
        "mqtt": {"host": "127.0.0.1", "port": broker.port},
        "doors": [{"id": "gate-n", "name": "北门"},
                  {"id": "gate-s", "name": "南门", "topic": "wanhu/acs/gate-s/door"}],
        "card_readers": [
            {"id": "gate-n-in", "type": "serial", "port": rdm_port, "format": "rdm6300", "door": "gate-n",
             "direction": "in", "debounce_s": 1.0},
            {"id": "gate-n-out", "type": "serial", "port": wiegand_port, "format": "wiegand_text",
             "encoding": "hex_raw", "door": "gate-n", "direction": "out"},
            {"id": "acs-gate-s", "type": "mqtt", "topic": "wanhu/acs/gate-s/swipe", "door": "gate-s",
             "readers": ["gate-s-in", "gate-s-out"]},
        ],
        "cards": {"file": "cards.csv", "hash_key_env": "GW_TEST_CARD_KEY", "reload_s": 0.2},
        "patrol": {
            "checkpoints": [{"id": "CP01", "tag": "04A1B2C3"}, {"id": "CP02", "tag": "04A1B2C4"}],
            "readers": [{"id": "pr-1", "type": "mqtt", "topic": "wanhu/patrol/pr-1/read"},
                        {"id": "wand-1", "type": "wand", "port": wand_port}],
            "routes": [{"id": "north", "checkpoints": ["CP01", "CP02"],
                        "shifts": [{"start": "20:00", "end": "06:00", "every_minutes": 120}]}],
        },
    }


class Running:
    """The gateway with its field devices, plus a collector of what it published."""

    def __init__(self, gw: Gateway):
        self.gw = gw
        self.sub = gw.hub.subscribe(CardSwipe, DoorEvent, PatrolCheckin, name="test")
        self.seen: list = []
        self.task: asyncio.Task | None = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.gw.run(status_every_s=None, grace_s=1))
        await self.until(lambda: self.gw.mqtt is not None and self.gw.mqtt.connected, "MQTT connected")
        await self.until(lambda: all(getattr(d, "line", None) is None or d.line.connected
                                     for d in self.gw.field_drivers), "serial lines open")
        return self

    async def __aexit__(self, *exc):
        self.gw.stop()
        await asyncio.wait_for(self.task, 15)

    def events(self, cls):
        self.seen += self.sub.take_all()
        return [e for e in self.seen if isinstance(e, cls)]

    async def until(self, cond, what: str, timeout: float = 10):
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.02)


async def publish(broker, topic: str, payload) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:
        await c.publish(topic, payload if isinstance(payload, (bytes, str)) else json.dumps(payload), qos=1)


@pytest.fixture
async def field(tmp_path, mqtt_broker, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GW_TEST_CARD_KEY", "test-key")
    broker = mqtt_broker()
    rdm = SerialCardReaderSim("rdm6300")
    wiegand = SerialCardReaderSim("wiegand_text", encoding="hex_raw", bits=26)
    wand = WandSim("wand-1")
    for sim in (rdm, wiegand, wand):
        await sim.start()
    cards_csv(tmp_path / "cards.csv")
    data = site_data(tmp_path, broker, rdm.port_path, wiegand.port_path, wand.port_path)
    gw = Gateway(parse_site(data, base_dir=tmp_path))
    try:
        async with Running(gw) as run:
            yield run, broker, rdm, wiegand, wand, tmp_path
    finally:
        for sim in (rdm, wiegand, wand):
            await sim.stop()


async def test_serial_swipes_are_debounced_classified_and_hashed(field):
    run, broker, rdm, wiegand, wand, tmp_path = field
    await rdm.hold(RESIDENT, 0.6)                      # a card held: many frames, one swipe
    wiegand.swipe(W26_CARD)                             # 26-bit reader, card registered as 12,34567
    rdm.noise(b"\x02GARBAGE\x03\x00\xff" * 5)           # garbage on the line
    rdm.swipe(REVOKED)
    rdm.swipe(UNKNOWN)
    await run.until(lambda: len(run.events(CardSwipe)) >= 4, "four swipes")
    swipes = run.events(CardSwipe)
    rdm_swipes = [s for s in swipes if s.reader == "gate-n-in"]
    (w26,) = [s for s in swipes if s.reader == "gate-n-out"]  # its own line: order against the other unknown
    assert [s.category for s in rdm_swipes] == ["resident", "revoked", "unknown"]
    assert rdm_swipes[0].holder == "张伟" and rdm_swipes[0].household == "B01-1-101" and rdm_swipes[0].direction == "in"
    assert (w26.category, w26.holder, w26.direction) == ("resident", "赵敏", "out")
    assert all(len(s.card_hash) == 16 and s.card not in s.card_hash for s in swipes)
    reader = next(d for d in run.gw.field_drivers if getattr(d, "cfg", None) and d.cfg.id == "gate-n-in")
    assert reader.bad.total > 0 and reader.swipes == 3


async def test_mqtt_swipes_doors_and_bad_payloads(field):
    run, broker, *_ = field
    t = datetime(2026, 11, 23, 3, 2, 11, tzinfo=TZ)
    await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{UNKNOWN:010d}", "reader": "gate-s-in",
                                                     "direction": "in", "time": t.isoformat()})
    for bad in (b"not json", b"[1,2]", json.dumps({"card": {"x": 1}}), json.dumps({"card": "12x"}),
                json.dumps({"card": f"{RESIDENT:010d}", "door": "nowhere"}), b"x" * 100_000):
        await publish(broker, "wanhu/acs/gate-s/swipe", bad)
    await publish(broker, "wanhu/acs/gate-s/door", {"door": "gate-s", "event": "forced_open", "time": t.isoformat()})
    await publish(broker, "wanhu/acs/gate-s/door", {"door": "gate-s", "event": "exploded"})
    await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{RESIDENT:010d}", "reader": "gate-s-out",
                                                     "direction": "out"})
    await run.until(lambda: len(run.events(CardSwipe)) >= 2 and run.events(DoorEvent), "swipes and door event")
    first, second = run.events(CardSwipe)
    assert (first.reader, first.door, first.category, first.ts) == ("gate-s-in", "gate-s", "unknown", t)
    assert (second.reader, second.direction, second.category) == ("gate-s-out", "out", "resident")
    (door,) = run.events(DoorEvent)
    assert (door.door, door.state, door.ts) == ("gate-s", "forced_open", t)
    swipe_driver = next(d for d in run.gw.field_drivers if getattr(d, "cfg", None) and d.cfg.id == "acs-gate-s")
    assert swipe_driver.bad.total == 5  # the oversize one never reaches a handler
    assert run.gw.mqtt.stats()["oversize"] == 1


async def test_patrol_online_and_wand_downloaded_twice(field):
    run, broker, rdm, wiegand, wand, tmp_path = field
    t = datetime(2026, 11, 23, 20, 4, 0, tzinfo=TZ)
    await publish(broker, "wanhu/patrol/pr-1/read", {"reader": "pr-1", "guard": f"{GUARD:010d}", "tag": "04a1b2c3",
                                                    "time": t.isoformat()})
    await run.until(lambda: len(run.events(PatrolCheckin)) == 1, "the online read")
    local = datetime(2026, 11, 23, 22, 10, 0)
    wand.records.extend([WandRecord(1, f"{GUARD:08X}", "04A1B2C4", local),
                         WandRecord(2, f"{GUARD:08X}", "DEADBEEF", local + timedelta(minutes=4))])
    await wand.download()
    await run.until(lambda: len(run.events(PatrolCheckin)) >= 3, "three check-ins")
    await wand.download()  # the guard downloads again: nothing new
    await asyncio.sleep(0.5)
    online, w1, w2 = run.events(PatrolCheckin)
    assert (online.reader, online.checkpoint, online.guard, online.source, online.ts) == ("pr-1", "CP01", "李强", "online", t)
    assert (w1.checkpoint, w1.guard, w1.source) == ("CP02", "李强", "wand")
    assert w1.ts == local.replace(tzinfo=TZ) and w1.received > w1.ts  # the wand's time, not arrival
    assert (w2.checkpoint, w2.tag) == ("", "DEADBEEF")  # a tag no checkpoint has: kept, and counted
    wand_driver = next(d for d in run.gw.field_drivers if getattr(d, "cfg", None) and d.cfg.id == "wand-1")
    assert wand_driver.bad.counts["unknown_checkpoint"] == 1 and wand_driver.duplicates == 2
    assert len(run.events(PatrolCheckin)) == 3


async def test_card_file_edited_while_running(field):
    run, broker, rdm, wiegand, wand, tmp_path = field
    rdm.swipe(UNKNOWN)
    await run.until(lambda: len(run.events(CardSwipe)) == 1, "first swipe")
    cards_csv(tmp_path / "cards.csv", [f"{UNKNOWN:010d},新住户,B09-1-101,resident,,,"])
    os.utime(tmp_path / "cards.csv", ns=(1, 10**18))  # a new mtime even within the clock's resolution
    await asyncio.sleep(0.6)
    await asyncio.sleep(1.1)  # past the reader's debounce window
    rdm.swipe(UNKNOWN)
    await run.until(lambda: len(run.events(CardSwipe)) == 2, "second swipe")
    assert [s.category for s in run.events(CardSwipe)] == ["unknown", "resident"]
    assert run.events(CardSwipe)[1].holder == "新住户"


async def test_field_events_reach_the_ledger_and_outbox_without_card_numbers(field):
    run, broker, rdm, wiegand, wand, tmp_path = field
    rdm.swipe(RESIDENT)
    await publish(broker, "wanhu/acs/gate-s/door", {"event": "held_open"})
    await publish(broker, "wanhu/patrol/pr-1/read", {"guard": f"{GUARD:010d}", "tag": "04A1B2C3"})
    await run.until(lambda: run.events(CardSwipe) and run.events(DoorEvent) and run.events(PatrolCheckin), "events")
    await asyncio.sleep(0.5)  # a ledger commit
    db = sqlite3.connect(tmp_path / "gw.db")
    (swipe,) = db.execute("SELECT reader, category, holder, card_tail, card_hash FROM swipes").fetchall()
    assert swipe[:4] == ("gate-n-in", "resident", "张伟", f"{RESIDENT:010d}"[-4:])
    assert db.execute("SELECT door, state FROM door_events").fetchall() == [("gate-s", "held_open")]
    assert db.execute("SELECT checkpoint, guard, source FROM patrol_checkins").fetchall() == [("CP01", "李强", "online")]
    lines = [r[0] for r in db.execute("SELECT line FROM outbox WHERE measurement IN ('access', 'door', 'patrol')")]
    assert len(lines) == 3
    for number in (RESIDENT, GUARD):
        assert all(f"{number:010d}" not in line and f"{number:08X}" not in line for line in lines)
    assert any(line.startswith("access,") and f'card_hash="{swipe[4]}"' in line for line in lines)


async def test_broker_restart_loses_no_qos1_swipe(field):
    """A controller keeps publishing (QoS 1) while the broker restarts: every swipe arrives."""
    run, broker, *_ = field
    sent = 60

    async def controller():
        n = 0
        while n < sent:
            try:
                async with aiomqtt.Client("127.0.0.1", broker.port, identifier="acs-gate-s",
                                          clean_session=False) as c:
                    while n < sent:
                        await c.publish("wanhu/acs/gate-s/swipe", json.dumps(
                            {"card": f"{3_500_000_000 + n:010d}", "reader": "gate-s-in", "direction": "in"}), qos=1)
                        n += 1
                        await asyncio.sleep(0.05)
            except aiomqtt.MqttError:
                await asyncio.sleep(0.2)

    task = asyncio.create_task(controller())
    await asyncio.sleep(1.0)
    await asyncio.to_thread(broker.stop)
    await asyncio.sleep(1.0)
    await asyncio.to_thread(broker.start)
    await asyncio.wait_for(task, 30)
    await run.until(lambda: len({s.card for s in run.events(CardSwipe)}) == sent, "every swipe", timeout=30)
    assert {s.card for s in run.events(CardSwipe)} == {f"{3_500_000_000 + n:010d}" for n in range(sent)}


def test_debounce_holds_are_one_swipe_and_a_burst_of_cards_stays_correct():
    from gateway.drivers.card_reader import Debounce
    d = Debounce(2.0)
    # a card held for 10 s, frames every 0.15 s: one swipe; it counts again after 2 s away
    assert [d.accept(7, t * 0.15) for t in range(67)].count(True) == 1
    assert d.accept(7, 10.0 + 2.01)
    # 5,000 distinct cards in one second, then each again within the window: none twice
    assert all(d.accept(c, 20.0 + c / 5000) for c in range(100, 5100))
    assert not any(d.accept(c, 21.5) for c in range(100, 5100))
    assert all(d.accept(c, 24.0) for c in range(100, 5100))


async def test_a_reader_on_a_missing_port_is_reported_offline_once(tmp_path):
    from gateway.cards import CardRegistry
    from gateway.config import SerialCardReader
    from gateway.drivers.card_reader import CardDesk, SerialCardReaderDriver
    from gateway.events import DeviceStatus
    published = []
    desk = CardDesk(CardRegistry(None, "Asia/Shanghai"), b"k", published.append)
    cfg = SerialCardReader(id="gate-x", type="serial", port=str(tmp_path / "ttyUSB9"), door="gate-n")
    driver = SerialCardReaderDriver(cfg, desk)
    task = asyncio.create_task(driver.run())
    await asyncio.sleep(2.0)  # several reopen attempts
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    statuses = [e for e in published if isinstance(e, DeviceStatus)]
    assert [(s.device, s.kind, s.online) for s in statuses] == [("gate-x", "reader", False)]
    assert "ttyUSB9" in statuses[0].reason


# ---- bad input at the MQTT handlers: one clear line, counted, never another exception -------

def mqtt_drivers(published: list):
    """The three MQTT handlers (swipes, doors, online patrol), publishing into `published`."""
    from gateway.cards import CardRegistry
    from gateway.config import Checkpoint, Door, MqttCardReader, MqttPatrolReader, Patrol
    from gateway.drivers.card_reader import CardDesk, DoorEventsDriver, MqttCardReaderDriver
    from gateway.drivers.patrol import Checkpoints, MqttPatrolReaderDriver
    desk = CardDesk(CardRegistry(None, "Asia/Shanghai"), b"k", published.append)
    reader = MqttCardReader(id="acs-gate-s", type="mqtt", topic="wanhu/acs/gate-s/swipe", door="gate-s",
                            readers=["gate-s-in", "gate-s-out"])
    patrol = Patrol(checkpoints=[Checkpoint(id="CP01", tag="04A1B2C3")])
    return {
        "swipe": MqttCardReaderDriver(reader, {"gate-s"}, desk, TZ),
        "door": DoorEventsDriver(Door(id="gate-s", topic="wanhu/acs/gate-s/door"), {"gate-s"}, published.append, TZ),
        "patrol": MqttPatrolReaderDriver(MqttPatrolReader(id="pr-1", type="mqtt", topic="wanhu/patrol/pr-1/read"),
                                         Checkpoints(patrol), desk, published.append, TZ),
    }


# Keys for all three handlers (each ignores the others' keys).
GOOD = {"card": f"{RESIDENT:010d}", "reader": "gate-s-in", "event": "opened", "guard": f"{GUARD:010d}",
        "tag": "04A1B2C3", "time": "2026-11-23T20:04:00+08:00"}
WEIRD = {  # item 4 of the defects issue, and their neighbours
    "nested 30,000 deep": b"[" * 30_000 + b"]" * 30_000,
    "a 400-digit epoch": json.dumps({**GOOD, "time": int("9" * 400)}).encode(),
    "past datetime's end in UTC": json.dumps({**GOOD, "time": "9999-12-31T23:59:59-23:59"}).encode(),
    "year 1": json.dumps({**GOOD, "time": "0001-01-01T00:00:00Z"}).encode(),
    "NaN epoch": json.dumps({**GOOD, "time": float("nan")}).encode(),
    "a 5,000-digit number": b'{"card": ' + b"1" * 5000 + b"}",
}


@pytest.mark.parametrize("what", WEIRD)
@pytest.mark.parametrize("kind", ["swipe", "door", "patrol"])
def test_weird_payloads_are_bad_input_never_an_exception(kind, what, caplog):
    published: list = []
    driver = mqtt_drivers(published)[kind]
    driver.handle("wanhu/x", WEIRD[what], datetime.now(TZ))   # before the fix: RecursionError, OverflowError
    assert driver.bad.total == 1 and published == []
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and lines[0].exc_info is None and "wanhu/x" in lines[0].getMessage()
    driver.handle("wanhu/x", json.dumps(GOOD).encode(), datetime.now(TZ))
    assert len(published) == 1  # and good input still works


def test_each_kind_of_bad_input_is_named_once_per_episode(caplog):
    caplog.set_level(logging.INFO, logger="gateway.drivers")
    published: list = []
    driver = mqtt_drivers(published)["swipe"]

    def send(doc) -> None:
        driver.handle("wanhu/acs/gate-s/swipe", doc if isinstance(doc, bytes) else json.dumps(doc).encode(),
                      datetime.now(TZ))

    def named() -> list[str]:
        return [r.getMessage().split(": ", 1)[1] for r in caplog.records if r.levelno == logging.WARNING]

    for doc in (b"not json", {"x": 1}, b"again not json", {**GOOD, "door": "nowhere"}, {"y": 2}):
        send(doc)
    assert [n.split(" (")[0] for n in named()] == ["not json", "missing key", "unknown door"]
    assert driver.bad.counts == {"not_json": 2, "missing_key": 2, "unknown_door": 1}
    send(GOOD)                                   # the episode ends: the next problem is named again
    send(b"not json")
    assert [n.split(" (")[0] for n in named()] == ["not json", "missing key", "unknown door", "not json"]
    assert any("good input again after 5 bad" in r.getMessage() for r in caplog.records)


def test_an_unknown_reader_is_refused_like_an_unknown_door(caplog):
    published: list = []
    driver = mqtt_drivers(published)["swipe"]
    # item 5 of the defects issue: a `reader` that would rewrite the InfluxDB point's tags
    injected = {**GOOD, "reader": "r x,site=evil y=1\nmeter,…\\"}
    driver.handle("wanhu/acs/gate-s/swipe", json.dumps(injected).encode(), datetime.now(TZ))
    assert published == [] and driver.bad.counts == {"unknown_reader": 1}
    (said,) = [r.getMessage() for r in caplog.records]
    assert "unknown reader" in said and "\n" not in said and "gate-s-in, gate-s-out" in said
    listed = {**GOOD, "reader": "gate-s-out"}
    unnamed = {k: v for k, v in GOOD.items() if k != "reader"} | {"card": f"{GUARD:010d}"}
    for doc in (listed, unnamed):  # a reader the site file lists, or none: the controller's own id
        driver.handle("wanhu/acs/gate-s/swipe", json.dumps(doc).encode(), datetime.now(TZ))
    assert [s.reader for s in published] == ["gate-s-out", "acs-gate-s"]


CARD_TEXT = f"{RESIDENT:010d}"


@pytest.mark.parametrize("payload", [
    f"card={CARD_TEXT};door=gate-s".encode(),                   # a controller that does not speak JSON
    f'{{"card": "{CARD_TEXT}", "door": '.encode(),              # cut off
    json.dumps({"card": "123,456789"}).encode(),               # a facility,card pair out of range
    json.dumps({"card": CARD_TEXT + "x"}).encode(),
])
def test_card_numbers_are_never_logged_in_clear(payload, caplog):
    published: list = []
    driver = mqtt_drivers(published)["swipe"]
    driver.handle("wanhu/acs/gate-s/swipe", payload, datetime.now(TZ))
    assert driver.bad.total == 1
    (said,) = [r.getMessage() for r in caplog.records]
    assert CARD_TEXT not in said and str(RESIDENT) not in said and "456789" not in said
    assert "wanhu/acs/gate-s/swipe" in said  # still says what and where


async def test_weird_payloads_through_the_broker_are_counted_not_handler_errors(field, caplog):
    run, broker, *_ = field
    for what in ("nested 30,000 deep", "a 400-digit epoch", "past datetime's end in UTC"):
        await publish(broker, "wanhu/acs/gate-s/swipe", WEIRD[what])
    await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{RESIDENT:010d}", "reader": "gate-s-in"})
    await run.until(lambda: run.events(CardSwipe), "the good swipe behind them")
    swipe_driver = next(d for d in run.gw.field_drivers if getattr(d, "cfg", None) and d.cfg.id == "acs-gate-s")
    assert run.gw.mqtt.handler_errors == 0
    assert swipe_driver.bad.counts == {"not_json": 1, "bad_time": 2}
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# ---- the persistent session and the gateway's own topics ----------------------------------

def mqtt_site(tmp_path, broker, reader_topic: str, rules: list | None = None):
    """Only an MQTT card reader (and rules): the gateway's MQTT side and nothing else."""
    data = {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "doors": [{"id": "gate-s"}],
            "card_readers": [{"id": "acs-gate-s", "type": "mqtt", "topic": reader_topic, "door": "gate-s",
                              "readers": ["gate-s-in"]}],
            "cards": {"file": None, "entries": [{"number": f"{RESIDENT:010d}", "holder": "张伟"}],
                      "hash_key_env": "GW_TEST_CARD_KEY"}}
    if rules:
        data["rules"] = rules
    return parse_site(data, base_dir=tmp_path)


async def test_a_filter_of_an_earlier_run_is_unsubscribed(tmp_path, mqtt_broker, monkeypatch, caplog):  # noqa: F811
    """The broker keeps a persistent session's subscriptions: the filter the first run used
    must not go on delivering once the site file names another (item 8 of the defects issue)."""
    caplog.set_level(logging.INFO, logger="gateway.mqtt")
    monkeypatch.setenv("GW_TEST_CARD_KEY", "test-key")
    broker = mqtt_broker()
    # (without the box's announcements, whose messages the counts below would include)
    async with Running(Gateway(mqtt_site(tmp_path, broker, "wanhu/acs/#"), announce=False)) as run:
        assert run.gw.mqtt.subscriptions() == {"wanhu/acs/#": True}
    # the next run (or a reload) with a narrower topic, the same client id and ledger
    async with Running(Gateway(mqtt_site(tmp_path, broker, "wanhu/acs/gate-s/swipe"), announce=False)) as run:
        await publish(broker, "wanhu/acs/elsewhere", {"card": f"{RESIDENT:010d}"})   # only the old filter matches
        await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{RESIDENT:010d}", "reader": "gate-s-in"})
        await run.until(lambda: run.events(CardSwipe), "the swipe published after the other")
        stats = run.gw.mqtt.stats()
        assert (stats["messages"], stats["unmatched"]) == (1, 0)
    assert any("unsubscribed from 'wanhu/acs/#'" in r.getMessage() for r in caplog.records)


async def test_the_gateways_own_alerts_never_reach_a_reader(tmp_path, mqtt_broker, monkeypatch):  # noqa: F811
    """A reader whose filter covers the alert topics (`wanhu/#`) must not be handed the
    gateway's own alerts, retained or live (item 8 of the defects issue). The site-file check
    refuses such a filter; this is the guard behind it, so the filter is put in past the check."""
    monkeypatch.setenv("GW_TEST_CARD_KEY", "test-key")
    broker = mqtt_broker()
    checked = mqtt_site(tmp_path, broker, "wanhu/acs/gate-s/swipe",
                        rules=[{"id": "invalid-card", "kind": "access", "check": "invalid_card"}])
    with pytest.raises(ConfigError, match="would also receive the gateway's own alerts"):
        mqtt_site(tmp_path, broker, "wanhu/#")
    broad = checked.card_readers[0].model_copy(update={"topic": "wanhu/#"})
    cfg = checked.model_copy(update={"card_readers": [broad]})
    async with Running(Gateway(cfg)) as run:
        reader = run.gw.field_drivers[0]
        await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{UNKNOWN:010d}", "reader": "gate-s-in"})
        # the box's announcement (<site>/gateway/info) is published too, and also covered by
        # `wanhu/#`: wait for the alert itself to come back and be dropped
        await run.until(lambda: run.gw.mqtt.stats()["own_messages"] >= 1, "the unknown card's alert came back")
        await publish(broker, "wanhu/acs/gate-s/swipe", {"card": f"{RESIDENT:010d}", "reader": "gate-s-in"})
        await run.until(lambda: len(run.events(CardSwipe)) == 2, "the swipe published after the alert")
        assert reader.bad.total == 0 and reader.swipes == 2
        assert run.gw.mqtt.stats()["own_messages"] >= 1   # it did arrive (the filter covers it), and was dropped
