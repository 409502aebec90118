"""A site's access and patrol devices, simulated: an embedded MQTT broker, serial card readers
and patrol wands on ptys, gate controllers and online patrol readers publishing over MQTT.

On start the last `history_s` of site life is sent at once (with its real timestamps), so a
short demo already has swipes, door events and patrol rounds; then it runs in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import logging
import random
import socket
import time
from datetime import datetime, time as dtime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt

from gateway.config import SiteConfig, parse_site

from .card_reader import SerialCardReaderSim
from .gate_controller import GateControllerSim, mqtt_publisher
from .patrol import OnlinePatrolReaderSim, PatrolSim, WandSim

log = logging.getLogger(__name__)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shift_starts(shifts) -> list[dtime]:
    starts = []
    for sh in shifts:
        h, m = map(int, sh.start.split(":"))
        eh, em = map(int, sh.end.split(":"))
        t, end = h * 60 + m, eh * 60 + em
        length = (end - t) % (24 * 60) or 24 * 60
        for k in range(0, length, sh.every_minutes):
            minute = (t + k) % (24 * 60)
            starts.append(dtime(minute // 60, minute % 60))
    return sorted(set(starts))


class FieldSimulation:
    def __init__(self, cfg: SiteConfig, *, seed: int = 1, history_s: float = 900.0, wand_every_s: float = 20.0):
        self.cfg = cfg
        self.seed = seed
        self.history_s = history_s
        self.wand_every_s = wand_every_s
        self.tz = ZoneInfo(cfg.site.timezone)
        self.port = _free_port()
        self.broker = None
        self.readers = {r.id: SerialCardReaderSim(r.format if r.format != "pattern" else "rdm6300",
                                                  encoding=r.encoding, bits=r.bits)
                        for r in cfg.card_readers if r.type == "serial"}
        self.wands = {r.id: WandSim(r.id) for r in cfg.patrol.readers if r.type == "wand"}
        self._tasks: list[asyncio.Task] = []
        self._client: aiomqtt.Client | None = None
        residents, guards = self._cards()
        self.residents, self.guards = residents, guards

    def _cards(self) -> tuple[list[int], list[int]]:
        residents, guards = [], []
        path = self.cfg.base_dir / self.cfg.cards.file if self.cfg.cards.file else None
        rows = [e.model_dump() for e in self.cfg.cards.entries]
        if path and path.exists():
            with open(path, encoding="utf-8-sig", newline="") as f:
                rows += list(csv.DictReader(f))
        for row in rows:
            number = str(row.get("number", ""))
            if not number.isdigit():
                continue
            role = str(row.get("role", ""))
            (guards if role == "staff:guard" else residents).append(int(number))
        return residents or [1234567890], guards or [2000000001]

    # ---- the broker ----

    async def _start_broker(self) -> None:
        from amqtt.broker import Broker, BrokerError
        logging.getLogger("amqtt").setLevel(logging.CRITICAL)
        logging.getLogger("transitions").setLevel(logging.ERROR)
        import warnings
        # A free port found a moment ago can be taken since (by the meter simulators' servers):
        # try a few before giving up.
        for attempt in range(5):
            self.broker = Broker({"listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                                  "sys_interval": 0, "auth": {"allow-anonymous": True, "plugins": ["auth_anonymous"]},
                                  "topic-check": {"enabled": False}})
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    await self.broker.start()
                return
            except BrokerError:
                if attempt == 4:
                    raise
                self.port = _free_port()

    # ---- start / stop ----

    async def start(self) -> None:
        for sim in (*self.readers.values(), *self.wands.values()):
            await sim.start()
        if self.cfg.mqtt:
            await self._start_broker()
            self._client = aiomqtt.Client("127.0.0.1", self.port, identifier=f"sim-{self.seed}")
            await self._client.__aenter__()
        self._tasks = [asyncio.create_task(self._run(), name="field-sim")]

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.__aexit__(None, None, None)
        if self.broker is not None:
            with contextlib.suppress(Exception):
                await self.broker.shutdown()
        for sim in (*self.readers.values(), *self.wands.values()):
            await sim.stop()

    def overrides(self, data: dict[str, Any]) -> dict[str, Any]:
        """The site file's data with devices pointed at the simulation."""
        for r in data.get("card_readers", []):
            if r["id"] in self.readers:
                r["port"] = self.readers[r["id"]].port_path
        for r in data.get("patrol", {}).get("readers", []):
            if r["id"] in self.wands:
                r["port"] = self.wands[r["id"]].port_path
        if data.get("mqtt"):
            data["mqtt"] = {"host": "127.0.0.1", "port": self.port}
        return data

    def patched_config(self, cfg: SiteConfig) -> SiteConfig:
        return parse_site(self.overrides(cfg.model_dump(mode="json")), base_dir=cfg.base_dir)

    # ---- what happens on site ----

    async def _run(self) -> None:
        now = time.time()
        start = now - self.history_s
        jobs = []
        publish = mqtt_publisher(self._client) if self._client else None
        rnd = random.Random(self.seed)
        unknown = [rnd.randrange(4_000_000_000, 4_294_967_295) for _ in range(20)]
        controllers = [r for r in self.cfg.card_readers if r.type == "mqtt"]
        for i, r in enumerate(controllers):
            if publish is None:
                break
            residents = self.residents[i::len(controllers)]  # each family uses its nearest gate
            controller = r.topic.split("/")[-2] if r.topic.count("/") >= 2 else r.id
            sim = GateControllerSim(publish, self.cfg.site.id, controller,
                                    [{"id": r.door, "readers_in": [f"{r.door}-in"], "readers_out": [f"{r.door}-out"]}],
                                    residents, unknown, seed=self.seed + i, tz=self.cfg.site.timezone)
            jobs.append(self._controller(sim, publish, start, now))
        routes = [{"id": rt.id, "checkpoints": [self._tag(c) for c in rt.checkpoints], "leg_minutes": rt.legs(),
                   "rounds": _shift_starts(rt.shifts)} for rt in self.cfg.patrol.routes]
        if routes:
            patrol = PatrolSim(routes, self.guards, seed=self.seed, tz=self.cfg.site.timezone)
            reads = patrol.reads_between(self._first_whole_round(now - 4 * 3600), now + 2 * 86400)
            readers = list(self.cfg.patrol.readers)
            for k, rd in enumerate(readers):  # each reader serves the routes given to it in turn
                mine = [p for p in reads if [x["id"] for x in routes].index(p.route) % len(readers) == k]
                if rd.type == "mqtt" and publish is not None:
                    online = OnlinePatrolReaderSim(publish, self.cfg.site.id, rd.id, tz=self.cfg.site.timezone)
                    online.topic = rd.topic
                    jobs.append(online.run(mine, start=now))
                elif rd.type == "wand":
                    jobs.append(self._wand(self.wands[rd.id], mine))
        jobs.append(self._serial_swipes())
        await asyncio.gather(*jobs)

    def _first_whole_round(self, t: float) -> float:
        """The first round start at or after t: history begins with whole rounds, so the rules
        do not see rounds cut in half by the start of the simulation."""
        starts = []
        for rt in self.cfg.patrol.routes:
            for day in (-1, 0, 1):
                d = (datetime.fromtimestamp(t, self.tz) + timedelta(days=day)).date()
                starts += [datetime.combine(d, st, self.tz).timestamp() for st in _shift_starts(rt.shifts)]
        later = [x for x in starts if x >= t]
        return min(later) - 600 if later else t  # the guard may set out a few minutes early

    @staticmethod
    async def _controller(sim: GateControllerSim, publish, start: float, now: float) -> None:
        for _, topic, payload in sim.events_between(start, now):  # the last hour, at once
            await publish(topic, payload)
        await sim.run(start=now)

    def _tag(self, checkpoint_id: str) -> str:
        return next(c.tag for c in self.cfg.patrol.checkpoints if c.id == checkpoint_id)

    async def _wand(self, wand: WandSim, reads) -> None:
        while True:
            await asyncio.sleep(min(3.0, self.wand_every_s))  # the gateway opens its port first
            now = datetime.now(self.tz)
            wand.records.clear()
            wand.record_all(p for p in reads if p.time <= now)
            await wand.download()
            await asyncio.sleep(self.wand_every_s - min(3.0, self.wand_every_s))

    async def _serial_swipes(self) -> None:
        """Residents at the guard-room gate: a swipe every few seconds, now and then a card held."""
        rnd = random.Random(self.seed)
        readers = list(self.readers.values())
        while readers:
            sim = rnd.choice(readers)
            card = rnd.choice(self.residents) if rnd.random() < 0.95 else rnd.randrange(4_000_000_000, 4_294_967_295)
            if sim.fmt == "wiegand_text" and sim.bits == 26:
                card &= 0xFFFFFF
            if rnd.random() < 0.2:
                await sim.hold(card, 0.6)
            else:
                sim.swipe(card)
            await asyncio.sleep(rnd.uniform(2, 8))
