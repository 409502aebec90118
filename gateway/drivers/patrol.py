"""Guard-patrol checkpoint reads -> PatrolCheckin, from online readers (MQTT) and offline wands.

A wand download arrives hours after the round: each read keeps the time the wand recorded
(site local time, converted to UTC), not the arrival time, and a wand downloaded twice gives
each read once.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from datetime import datetime
from zoneinfo import ZoneInfo

from ..cards import parse_card_text
from ..clock import REAL_CLOCK, Clock
from ..config import MqttPatrolReader, Patrol, WandPatrolReader
from ..events import DeviceStatus, PatrolCheckin
from . import json_msg
from .bad_input import BadInput
from .card_frames import WandParser
from .card_reader import CardDesk
from .serial_line import SerialLine

log = logging.getLogger(__name__)


class Checkpoints:
    def __init__(self, patrol: Patrol):
        self.by_tag = {c.tag.upper(): c.id for c in patrol.checkpoints}

    def lookup(self, tag: str) -> str:
        return self.by_tag.get(tag.strip().upper().removeprefix("0X"), "")


class _Seen:
    """Reads already published, so a repeated download is ignored (bounded memory; the
    ledger's unique key catches what is older than this)."""

    def __init__(self, size: int = 50_000):
        self.size = size
        self._keys: OrderedDict[tuple, None] = OrderedDict()

    def first_time(self, key: tuple) -> bool:
        if key in self._keys:
            return False
        self._keys[key] = None
        if len(self._keys) > self.size:
            self._keys.popitem(last=False)
        return True


class _PatrolSource:
    def __init__(self, reader_id: str, checkpoints: Checkpoints, desk: CardDesk, publish, clock: Clock):
        self.reader_id = reader_id
        self.checkpoints = checkpoints
        self.desk = desk
        self.publish = publish
        self.clock = clock
        self.seen = _Seen()
        self.checkins = self.duplicates = 0

    def checkin(self, value: int, bits: int, tag: str, ts: datetime, source: str) -> bool:
        """Publish the read of the guard's card (value, bits) once; False when its tag is no
        checkpoint (counted as bad input)."""
        guard, guard_hash = self.desk.guard(value, bits, ts)
        tag = tag.strip().upper()
        if not self.seen.first_time((tag, ts, guard_hash)):
            self.duplicates += 1
            return True
        self.checkins += 1
        checkpoint = self.checkpoints.lookup(tag)
        if not checkpoint:  # still published: a guard at a tag the site file lacks is worth seeing
            self.bad.bad("unknown_checkpoint", f"tag {json_msg.shown(tag)} is no checkpoint of the site file")
        self.publish(PatrolCheckin(self.reader_id, checkpoint, tag, guard, guard_hash, ts, self.clock.now(), source))
        return bool(checkpoint)


class MqttPatrolReaderDriver(_PatrolSource):
    def __init__(self, cfg: MqttPatrolReader, checkpoints: Checkpoints, desk: CardDesk, publish, tz: ZoneInfo,
                 clock: Clock = REAL_CLOCK):
        super().__init__(cfg.id, checkpoints, desk, publish, clock)
        self.cfg = cfg
        self.tz = tz
        self.bad = BadInput(f"patrol reader {cfg.id} (MQTT {cfg.topic})")

    def handle(self, topic: str, payload: bytes, arrival: datetime) -> None:
        try:
            with json_msg.reading():
                value, bits, tag, ts = self._read(payload, arrival)
        except json_msg.BadMessage as e:
            self.bad.bad(e.kind, f"{json_msg.shown(topic, 80)}: {e}")
            return
        if self.checkin(value, bits, tag, ts, "online"):
            self.bad.good()  # an unknown tag stays in its episode: logged once, not at every read

    def _read(self, payload: bytes, arrival: datetime) -> tuple[int, int, str, datetime]:
        m = self.cfg.mapping
        doc = json_msg.load(payload)
        guard = json_msg.text(doc, m.get("guard", "guard"))
        tag = json_msg.text(doc, m.get("tag", "tag"))
        ts = json_msg.timestamp(doc, m.get("time", "time"), self.tz, arrival)
        try:
            value, bits = parse_card_text(guard, "auto")
        except ValueError as e:  # its text never quotes the card
            raise json_msg.BadMessage("bad_card", f"guard's card: {e}") from None
        return value, bits, tag, ts


class WandDriver(_PatrolSource):
    """A wand on a USB-serial cradle; each download is parsed as it streams in."""

    def __init__(self, cfg: WandPatrolReader, checkpoints: Checkpoints, desk: CardDesk, publish, tz: ZoneInfo,
                 clock: Clock = REAL_CLOCK):
        super().__init__(cfg.id, checkpoints, desk, publish, clock)
        self.cfg = cfg
        self.tz = tz
        self.parser = WandParser()
        self.bad = BadInput(f"patrol wand {cfg.id} ({cfg.port})")
        self.line = SerialLine(f"patrol wand {cfg.id}", cfg, self.feed, on_status=self._status)
        self.downloads = 0
        self._last_data = 0.0

    QUIET_S = 3.0  # a download that stops this long without END was cut off

    def feed(self, data: bytes, at: datetime | None = None) -> None:
        self._last_data = self.clock.monotonic()
        before = dict(self.parser.errors)
        batches = self.parser.feed(data)
        self.bad.parser_errors(self.parser.errors, before)
        self._take(batches)

    def _take(self, batches) -> None:
        for batch in batches:
            self.downloads += 1
            new = 0
            for rec in batch.records:
                ts = rec.local_time.replace(tzinfo=self.tz)
                try:
                    value, bits = parse_card_text(rec.guard_tag, "hex")
                except ValueError as e:  # its text never quotes the card
                    self.bad.bad("bad_card", f"guard's card: {e}")
                    continue
                before_n = self.checkins
                self.checkin(value, bits, rec.checkpoint_tag, ts, "wand")
                new += self.checkins - before_n
            if batch.complete:
                self.bad.good()
                log.info("patrol wand %s: download of %d reads, %d new", batch.wand, len(batch.records), new)
            else:
                log.warning("patrol wand %s: download incomplete (%d reads kept, %d new): download it again",
                            batch.wand or self.cfg.id, len(batch.records), new)

    def _status(self, online: bool, reason: str) -> None:
        self.publish(DeviceStatus(self.cfg.id, "reader", online, self.clock.now(), reason))

    async def _watch_quiet(self) -> None:
        while True:
            await asyncio.sleep(self.QUIET_S / 3)
            if self._last_data and self.clock.monotonic() - self._last_data > self.QUIET_S:
                self._last_data = 0.0
                self._take(self.parser.flush())

    async def run(self) -> None:
        watch = asyncio.create_task(self._watch_quiet())
        try:
            await self.line.run()
        finally:
            watch.cancel()
