"""Access-control card readers (serial and MQTT) and door events (MQTT) -> CardSwipe, DoorEvent.

Whatever a reader prints (RDM6300 frames, Wiegand converter lines, a controller's JSON), the
card becomes one canonical number, classified against the card registry; it leaves the
gateway only as a keyed hash. Repeated frames of a card held at a reader are one swipe.
"""

from __future__ import annotations

import logging
from datetime import datetime
from zoneinfo import ZoneInfo

from ..cards import CardRegistry, card_hash, parse_card_text
from ..clock import REAL_CLOCK, Clock
from ..config import Door, MqttCardReader, SerialCardReader
from ..events import CardSwipe, DeviceStatus, DoorEvent
from . import json_msg
from .bad_input import BadInput
from .card_frames import CardRead, PatternParser, Rdm6300Parser, WiegandTextParser
from .serial_line import SerialLine

log = logging.getLogger(__name__)

DIRECTIONS = {"in": "in", "out": "out", "入": "in", "出": "out", "enter": "in", "exit": "out", "1": "in", "0": "out",
              "": ""}


class CardDesk:
    """Turns a card read into a classified, hashed CardSwipe (or a guard's identity for patrol)."""

    def __init__(self, registry: CardRegistry, hash_key: bytes, publish, clock: Clock = REAL_CLOCK):
        self.registry = registry
        self.hash_key = hash_key
        self.publish = publish
        self.clock = clock

    def swipe(self, reader: str, door: str, direction: str, value: int, bits: int, ts: datetime) -> CardSwipe:
        c = self.registry.classify(value, bits, ts)
        event = CardSwipe(reader, door, direction, ts, c.number, card_hash(c.number, self.hash_key), c.category,
                          c.holder, c.household, c.role)
        self.publish(event)
        return event

    def guard(self, value: int, bits: int, at: datetime) -> tuple[str, str]:
        """(registered name or "", keyed hash) of the card a guard patrols with."""
        c = self.registry.classify(value, bits, at)
        return (c.holder if c.category == "staff" else ""), card_hash(c.number, self.hash_key)


class Debounce:
    """One swipe per card per window; the window restarts with every repeated frame, so a
    card held at the reader for a minute is still one swipe."""

    def __init__(self, window_s: float):
        self.window_s = window_s
        self._last: dict[int, float] = {}
        self._limit = 1000

    def accept(self, card: int, now: float) -> bool:
        last = self._last.get(card)
        self._last[card] = now
        if len(self._last) > self._limit:
            # Forget cards not seen for a while; the next sweep waits until the table doubles,
            # so a burst of distinct cards costs O(1) per swipe, not a sweep per swipe.
            self._last = {k: t for k, t in self._last.items() if now - t <= self.window_s}
            self._limit = max(1000, 2 * len(self._last))
        return last is None or now - last > self.window_s


def make_parser(cfg: SerialCardReader):
    if cfg.format == "rdm6300":
        return Rdm6300Parser()
    if cfg.format == "wiegand_text":
        return WiegandTextParser(cfg.encoding, cfg.bits)
    return PatternParser(cfg.pattern, cfg.base, 32)


class SerialCardReaderDriver:
    def __init__(self, cfg: SerialCardReader, desk: CardDesk, clock: Clock = REAL_CLOCK):
        self.cfg = cfg
        self.desk = desk
        self.clock = clock
        self.parser = make_parser(cfg)
        self.debounce = Debounce(cfg.debounce_s)
        self.bad = BadInput(f"card reader {cfg.id} ({cfg.port})")
        self.line = SerialLine(f"card reader {cfg.id}", cfg, self.feed, on_status=self._status)
        self.reads = self.swipes = 0

    def feed(self, data: bytes, at: datetime | None = None) -> None:
        """Bytes from the line; `at` is when they arrived (default now; given by recording and replay)."""
        before = dict(self.parser.errors)
        reads: list[CardRead] = self.parser.feed(data)
        self.bad.parser_errors(self.parser.errors, before)
        for r in reads:
            self.reads += 1
            self.bad.good()
            if self.debounce.accept(r.value, self.clock.monotonic()):
                self.swipes += 1
                self.desk.swipe(self.cfg.id, self.cfg.door, self.cfg.direction, r.value, r.bits,
                                at or self.clock.now())

    def _status(self, online: bool, reason: str) -> None:
        self.desk.publish(DeviceStatus(self.cfg.id, "reader", online, self.clock.now(), reason))

    async def run(self) -> None:
        await self.line.run()


class MqttCardReaderDriver:
    """JSON swipes from a networked controller (or its MQTT bridge), keys per `mapping`."""

    def __init__(self, cfg: MqttCardReader, doors: set[str], desk: CardDesk, tz: ZoneInfo,
                 clock: Clock = REAL_CLOCK):
        self.cfg = cfg
        self.doors = doors
        self.desk = desk
        self.tz = tz
        self.clock = clock
        self.readers = {cfg.id, *cfg.readers}  # what the message's `reader` may name
        self.debounce = Debounce(cfg.debounce_s)
        self.bad = BadInput(f"card reader {cfg.id} (MQTT {cfg.topic})")
        self.swipes = 0

    def handle(self, topic: str, payload: bytes, arrival: datetime) -> None:
        try:
            with json_msg.reading():
                reader, door, direction, value, bits, ts = self._read(payload, arrival)
        except json_msg.BadMessage as e:
            self.bad.bad(e.kind, f"{json_msg.shown(topic, 80)}: {e}")
            return
        self.bad.good()
        if self.debounce.accept(value, ts.timestamp()):
            self.swipes += 1
            self.desk.swipe(reader, door, direction, value, bits, ts)

    def _read(self, payload: bytes, arrival: datetime) -> tuple[str, str, str, int, int, datetime]:
        m = self.cfg.mapping
        doc = json_msg.load(payload)
        card = json_msg.text(doc, m.card)
        try:
            value, bits = parse_card_text(card, self.cfg.card_format)
        except ValueError as e:  # its text never quotes the card
            raise json_msg.BadMessage("bad_card", f"'{m.card}': {e}") from None
        door = json_msg.text(doc, m.door, required=False) or self.cfg.door
        if door not in self.doors:
            raise json_msg.BadMessage("unknown_door", f"door {json_msg.shown(door)} is not in the site file")
        said = json_msg.text(doc, m.direction, required=False)
        direction = DIRECTIONS.get((said or self.cfg.direction).lower())
        if direction is None:
            raise json_msg.BadMessage("bad_direction", f"direction {json_msg.shown(said)}")
        reader = json_msg.text(doc, m.reader, required=False) or self.cfg.id
        if reader not in self.readers:
            known = ", ".join(sorted(self.readers))
            raise json_msg.BadMessage("unknown_reader", f"reader {json_msg.shown(reader)} is not in the site file "
                                                        f"(the readers of {self.cfg.id}: {known})")
        return reader, door, direction, value, bits, json_msg.timestamp(doc, m.time, self.tz, arrival)


STATES = ("opened", "closed", "forced_open", "held_open")


class DoorEventsDriver:
    def __init__(self, door: Door, doors: set[str], publish, tz: ZoneInfo):
        self.door = door
        self.doors = doors
        self.publish = publish
        self.tz = tz
        self.bad = BadInput(f"door {door.id} (MQTT {door.topic})")

    def handle(self, topic: str, payload: bytes, arrival: datetime) -> None:
        try:
            with json_msg.reading():
                door, state, ts = self._read(payload, arrival)
        except json_msg.BadMessage as e:
            self.bad.bad(e.kind, f"{json_msg.shown(topic, 80)}: {e}")
            return
        self.bad.good()
        self.publish(DoorEvent(door, state, ts, f"mqtt:{topic}"))

    def _read(self, payload: bytes, arrival: datetime) -> tuple[str, str, datetime]:
        m = self.door.mapping
        doc = json_msg.load(payload)
        name = json_msg.text(doc, m.event)
        state = self.door.event_names.get(name, name)
        if state not in STATES:
            raise json_msg.BadMessage("unknown_event", f"event {json_msg.shown(name)} (known: {', '.join(STATES)})")
        door = json_msg.text(doc, m.door, required=False) or self.door.id
        if door not in self.doors:
            raise json_msg.BadMessage("unknown_door", f"door {json_msg.shown(door)} is not in the site file")
        return door, state, json_msg.timestamp(doc, m.time, self.tz, arrival)
