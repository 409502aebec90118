"""Rules benchmark: events/s through the rules engine with the example site's rule set, and the
latency from a card frame on a serial line to its alert at an MQTT subscriber.

    python3 bench/rules.py [--hours 24] [--cases 500] [--gap-ms 20] [--warmup-cases 10]
                           [--seed 1] [--parts throughput,latency] [--profile N]

Prints human-readable lines, then as the LAST line one JSON object:

throughput
    `Engine(cfg, cfg.rules)` for edge_config/site.example.yaml (loaded with `load_site`, only
    for its config object: nothing connects to its hosts), fed `--hours` of a realistic site day
    (default 24 h from local midnight of 2026-11-23) with `tick(now)` once per simulated second,
    as `Gateway._run_rules` does (a second's batch, then the tick). The engine's `on_change`
    publishes `AlertChange(alert.snapshot(), what)` into a hub, as the runtime does.
    The mix, built beforehand one simulated hour at a time (generation is not timed):
    - Readings of all 145 meters every `poll_s` (30 s), staggered along each bus, with the
      fields of each meter's model; values from `simulators.profiles.Profile` (the day's load
      shape per circuit, sampled every 5 min) with per-reading noise, energy counters as exact
      decimals integrated from the power, as `ModbusBus.poll` publishes them;
    - faults along the day: over-voltage on six stairwell meters (03:10-03:40), an overloaded
      pump (08:00-08:03), a street light lit in daylight (10:00-12:00), a meter dead
      (10:00-10:20: no readings, DeviceStatus offline after 3 polls, online again), a bus down
      (14:00-14:06: bus and meters DeviceStatus), a counter glitch (12:00), low power factor
      (19:00-19:20), under-voltage in the evening peak (19:20-19:45);
    - CardSwipes and DoorEvents of the four gates from `simulators.gate_controller.
      GateControllerSim` (the 12,000 cards of edge_config/cards.example.csv: commutes,
      errands, evenings out, unknown cards tried mostly at night, doors held open / forced),
      made into events by the gateway's own `MqttCardReaderDriver` / `DoorEventsDriver` with
      a real `CardRegistry` and `CardDesk`, plus a burst of six unknown cards at 02:13 (the
      `denied_burst` rule);
    - PatrolCheckins following the routes (`simulators.patrol.PatrolSim`: jitter, now and then
      a skipped, swapped or late checkpoint): online routes through `MqttPatrolReaderDriver`
      as they are walked, the wand route through `WandDriver` in downloads at 07:10 and 19:10.
    events/s = events / process CPU time (and / wall time) of the whole feed, ticks included;
    also the handle-only rate, µs per tick, µs per event of each type (wall, each event timed
    with perf_counter_ns: the `loop` baseline shows what that costs), CPU per simulated hour,
    the alert changes the day produced.
    Baselines on the same events in the same run, hour by hour (interleaved): `no_rules`
    (`Engine(cfg, [])`, same loop and ticks), `hub` (`Hub.publish` to one subscriber that takes
    its batch every simulated second and drops it: what the hub alone costs) and `loop` (the
    feeding loop with its per-event timing around a no-op: subtract it from the others).
    Single core: the engine is synchronous, everything runs in this one thread.
latency_ms
    A real `gateway.runtime.Gateway` built from a small site file: one RDM6300 serial card
    reader on a pty (door gate-n), the 12,000-card list, one `access` rule (`invalid_card`,
    categories [unknown]), ledger in a temporary directory (commit every 1 s, as the example
    site), MQTT to a real mosquitto on 127.0.0.1 (the tests' `Mosquitto`). A child process runs
    the reader simulator (`SerialCardReaderSim`) and an aiomqtt subscriber on
    `<site>/alerts/#`; it writes `--cases` frames of distinct unknown cards (after
    `--warmup-cases` not counted) `--gap-ms` apart. `invalid_card` keeps ONE alert per door:
    the first case raises it, every later one updates it (its count changes) and the updated
    alert is published again (retained) on `<site>/alerts/bad-card/gate-n`: every case gives one
    message, which the bench checks (count n of case n, exactly once each). Latency: from
    the frame's `os.write` (stamped just before it, child) to the subscriber's receipt (child),
    both `time.monotonic_ns()` (CLOCK_MONOTONIC: one clock for the whole machine). Stages,
    stamped in the gateway process by wrappers this bench sets on the gateway's objects (the
    gateway's code is unchanged): `frame->hub` (pty, read, parse, registry, hash: CardSwipe
    published), `hub->AlertChange` (the rules task wakes, takes its batch, engine.handle),
    `AlertChange->publish` (the alert publisher task wakes, builds the JSON, calls
    `MqttLink.publish`), `publish->subscriber` (paho, broker, the subscriber's client); also
    `MqttLink.publish` until its PUBACK. The rules loop also ticks the engine every second and
    the ledger commits every second in the same event loop: their durations are recorded (and
    the garbage collector's, through `gc.callbacks`), the cases whose path overlapped one of
    them are reported apart, and the five worst cases with their stages. The throughput part's
    garbage is collected before the gateway starts (its heap is then the gateway's own).
peak_rss_mib
    `ru_maxrss` of this process (throughput and the gateway side of the latency; the
    simulator, subscriber and broker run in their own processes), and after the throughput part.

Targets (issue): 20,000 events/s on one core of this machine; latency p99 under 50 ms. House
rules: figures are printed and compared with baselines measured in the same run; nothing here
asserts timing; `targets_met` only reports.

`--profile N` also feeds the first two hours to a second engine under cProfile (not in the
figures) and prints its N costliest functions (own time), in profiled µs per event.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import cProfile
import csv
import gc
import json
import os
import random
import resource
import sys
import tempfile
import time
from collections import Counter
from datetime import date, datetime, time as dtime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from common import ROOT, Child, dist, fmt_dist, ms, out, print_profile, run, serve_child, swipe_spaced, until

TARGETS = {"events_per_s_min": 20_000, "latency_p99_ms_max": 50.0}
SITE_FILE = ROOT / "edge_config" / "site.example.yaml"
CARDS_FILE = ROOT / "edge_config" / "cards.example.csv"
DAY = date(2026, 11, 23)
HASH_KEY = b"bench-rules-card-key"
KEY_ENV = "BENCH_RULES_CARD_HASH_KEY"
GRID_S = 300                          # the load profile is sampled every 5 min, noise per reading
WAND_DOWNLOADS = (dtime(7, 10), dtime(19, 10))
PHASE_V = ("voltage_v", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v")
UNTIL_S = 15.0                        # how long to wait for the gateway to come up


# ==== the child: card reader simulator and MQTT subscriber in their own process =================
# `python3 bench/rules.py --child` reads one JSON command per line on stdin and answers one JSON
# line on stdout, so the gateway (this process) has its event loop and its CPU to itself.

async def _child_main() -> None:
    import aiomqtt
    from simulators.card_reader import SerialCardReaderSim

    loop = asyncio.get_running_loop()
    sim: SerialCardReaderSim | None = None
    received: list[tuple[int, str, bytes, bool]] = []
    arrived = asyncio.Event()
    watch: asyncio.Task | None = None

    async def subscriber(port: int, topic: str, ready: asyncio.Future) -> None:
        try:
            async with aiomqtt.Client("127.0.0.1", port, identifier="bench-rules-subscriber") as client:
                await client.subscribe(topic, qos=1)
                ready.set_result(None)
                async for m in client.messages:
                    t = time.monotonic_ns()
                    received.append((t, str(m.topic), bytes(m.payload), bool(m.retain)))
                    arrived.set()
        except Exception as e:  # noqa: BLE001 - reported through `ready` or the next `received`
            if not ready.done():
                ready.set_exception(e)
            raise

    async def stop() -> None:
        if watch is not None:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        if sim is not None:
            await sim.stop()

    async def handle(op: str, cmd: dict) -> dict:
        nonlocal sim, watch
        if op == "reader":
            sim = SerialCardReaderSim("rdm6300")
            await sim.start()
            return {"port": sim.port_path}
        if op == "subscribe":
            ready = loop.create_future()
            watch = asyncio.create_task(subscriber(cmd["port"], cmd["topic"], ready))
            await asyncio.wait_for(ready, 15)
            return {"ok": True}
        if op == "spaced":  # one frame every gap_s, each stamped just before its write
            return {"t_ns": await swipe_spaced(sim, cmd["values"], cmd["gap_s"])}
        if op == "received":  # wait until n messages arrived (or the timeout), send them all
            deadline = loop.time() + cmd["timeout_s"]
            while len(received) < cmd["n"] and loop.time() < deadline:
                if watch is not None and watch.done():
                    break
                arrived.clear()
                try:
                    await asyncio.wait_for(arrived.wait(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            await asyncio.sleep(cmd.get("linger_s", 0))  # anything beyond n shows up too
            return {"messages": [[t, topic, payload.decode("utf-8", "replace"), retain]
                                 for t, topic, payload, retain in received]}
        return {"error": f"unknown op {op!r}"}

    await serve_child(handle, stop, limit=1 << 24)


# ==== part 1: throughput of the engine ===========================================================

from gateway.cards import CardRegistry  # noqa: E402
from gateway.config import MqttCardReader, load_site, parse_site  # noqa: E402
from gateway.drivers.card_frames import WandRecord, wand_download  # noqa: E402
from gateway.drivers.card_reader import CardDesk, DoorEventsDriver, MqttCardReaderDriver  # noqa: E402
from gateway.drivers.patrol import Checkpoints, MqttPatrolReaderDriver, WandDriver  # noqa: E402
from gateway.events import AlertChange, CardSwipe, DeviceStatus, DoorEvent, PatrolCheckin, Reading  # noqa: E402
from gateway.hub import Hub  # noqa: E402
from gateway.replay import SimClock  # noqa: E402
from gateway.rules.engine import Engine  # noqa: E402

EVENT_TYPES = (Reading, DeviceStatus, CardSwipe, DoorEvent, PatrolCheckin)


class Fault:
    def __init__(self, kind: str, meters: list[str], start: float, end: float, **kw):
        self.kind, self.meters, self.start, self.end, self.kw = kind, meters, start, end, kw


class DayMix:
    """A site day as the rules engine sees it, built one simulated hour at a time.

    `chunk(h)` returns (ticks, batches, generated events by type): batches[i] holds the events
    that reach the gateway in simulated second i of hour h, ticks[i] the UTC instant at its end.
    """

    def __init__(self, cfg, start_local: datetime, hours: int, seed: int):
        from simulators.field_site import _shift_starts
        from simulators.gate_controller import GateControllerSim
        from simulators.patrol import PatrolSim
        from simulators.profiles import Profile

        self.cfg = cfg
        self.tz = ZoneInfo(cfg.site.timezone)
        self.t0 = start_local.timestamp()
        self.rng = random.Random(seed)
        self.clock = SimClock(datetime.fromtimestamp(0.0, timezone.utc))  # set to each event's arrival
        self._pending: list[tuple[float, int, object]] = []
        self._seq = 0
        self._arrival = 0.0
        self._carried: list = []

        # ---- cards, desk and the gateway's own field drivers ----
        t = time.perf_counter()
        self.registry = CardRegistry(CARDS_FILE, cfg.site.timezone)
        self.desk = CardDesk(self.registry, HASH_KEY, self._collect, self.clock)
        self.registry_s = time.perf_counter() - t
        guards, others = [], []
        with open(CARDS_FILE, encoding="utf-8-sig", newline="") as f:
            for row in csv.DictReader(f):
                (guards if row["role"] == "staff:guard" else others).append(int(row["number"]))
        known = {e.value & 0xFFFFFF for e in self.registry.entries}
        unknown: list[int] = []
        while len(unknown) < 40:
            v = self.rng.randrange(4_000_000_000, 4_294_967_295)
            if v & 0xFFFFFF not in known:
                unknown.append(v)
        self.unknown = unknown
        doors = {d.id for d in cfg.doors}
        self.swipe_drivers: dict[str, MqttCardReaderDriver] = {}
        for r in cfg.card_readers:
            if r.type == "mqtt" and r.door:
                self.swipe_drivers[r.door] = MqttCardReaderDriver(r, doors, self.desk, self.tz, self.clock)
        for d in cfg.doors:  # the serial gate (gate-n) gets the same controller messages here
            if d.id not in self.swipe_drivers:
                r = MqttCardReader(id=f"{d.id}-acs", type="mqtt", topic=f"{cfg.site.id}/acs/{d.id}/swipe", door=d.id,
                                   readers=[f"{d.id}-in", f"{d.id}-out"])
                self.swipe_drivers[d.id] = MqttCardReaderDriver(r, doors, self.desk, self.tz, self.clock)
        self.door_drivers = {d.id: DoorEventsDriver(d, doors, self._collect, self.tz) for d in cfg.doors}
        self.controllers = []
        for i, d in enumerate(cfg.doors):
            self.controllers.append(GateControllerSim(
                None, cfg.site.id, d.id, [{"id": d.id, "readers_in": [f"{d.id}-in"], "readers_out": [f"{d.id}-out"]}],
                others[i::len(cfg.doors)], unknown, seed=seed + i, tz=cfg.site.timezone,
                held_open_s=int(d.held_open_s)))
        # the gates' whole span at once (the simulator works in days), handed out by the hour
        end = self.t0 + hours * 3600
        self.gate_events = sorted((t, i, k, topic, payload) for i, sim in enumerate(self.controllers)
                                  for k, (t, topic, payload) in enumerate(sim.events_between(self.t0, end)))
        self.gate_times = [e[0] for e in self.gate_events]
        self.burst_door = cfg.doors[-1].id
        self.burst_at = datetime.combine(start_local.date(), dtime(2, 13), self.tz).timestamp()

        # ---- patrol ----
        tags = {c.id: c.tag for c in cfg.patrol.checkpoints}
        readers = {r.id: r for r in cfg.patrol.readers}
        checkpoints = Checkpoints(cfg.patrol)
        routes = [{"id": rt.id, "checkpoints": [tags[c] for c in rt.checkpoints], "leg_minutes": rt.legs(),
                   "rounds": _shift_starts(rt.shifts)} for rt in cfg.patrol.routes]
        self.patrol = PatrolSim(routes, guards or [2000000001], seed=seed, tz=cfg.site.timezone)
        self.online_routes: dict[str, MqttPatrolReaderDriver] = {}
        self.wand_routes: dict[str, WandDriver] = {}
        for rule in cfg.rules:
            if rule.kind != "patrol":
                continue
            ids = list(rule.readers) or list(readers)
            wands = [x for x in ids if readers[x].type == "wand"]
            for route in rule.routes or [r.id for r in cfg.patrol.routes]:
                if wands and len(wands) == len(ids):
                    self.wand_routes[route] = WandDriver(readers[wands[0]], checkpoints, self.desk, self._collect,
                                                         self.tz, self.clock)
                else:
                    rd = readers[next(x for x in ids if readers[x].type != "wand")]
                    self.online_routes[route] = MqttPatrolReaderDriver(rd, checkpoints, self.desk, self._collect,
                                                                       self.tz, self.clock)
        self.wand_from = self.t0
        self.wand_seq = 0

        # ---- meters ----
        self.meters = []
        by_bus: dict[str, list] = {}
        for m in cfg.meters:
            if m.enabled:
                by_bus.setdefault(m.bus, []).append(m)
        for bus in cfg.buses:
            ms_ = by_bus.get(bus.id, [])
            for k, m in enumerate(ms_):
                model = cfg.models[m.model]
                fields, counters = [], []
                for f in model.fields:
                    if f.counter or f.name.endswith("_kwh"):
                        counters.append(f.name)
                    else:
                        fields.append(f.name)
                v3 = [x for x in fields if x in PHASE_V]
                vll = [x for x in fields if x.startswith("voltage_") and x not in PHASE_V]
                scaled = [x for x in fields if x.startswith(("current", "power", "reactive", "apparent"))]
                same = [x for x in fields if x not in v3 and x not in vll and x not in scaled]
                prof = Profile.for_circuit(m.circuit, self.rng.randrange(1 << 30), phases=model.phases,
                                           tz=cfg.site.timezone, latitude=cfg.site.latitude,
                                           longitude=cfg.site.longitude)
                self.meters.append({
                    "id": m.id, "bus": bus.id, "poll_s": m.poll_s, "profile": prof, "fields": fields,
                    "v3": v3, "vll": vll, "scaled": scaled, "same": same,
                    "counters": counters, "energy": self.rng.uniform(1_000, 50_000),
                    "export": round(self.rng.uniform(0, 3), 2),
                    "next": self.t0 + k * m.poll_s / max(1, len(ms_)) + self.rng.uniform(0, 0.5),
                    "offline_after": bus.offline_after, "failures": 0, "online": True,
                    "latency": 0.25 if bus.type == "modbus_rtu" else 0.08})
        self.faults = self._faults(start_local)
        self.bus_events = []  # (unix time, bus, online)
        for f in self.faults:
            if f.kind == "bus_down":
                self.bus_events += [(f.start, f.kw["bus"], False), (f.end, f.kw["bus"], True)]
        self.generated: Counter = Counter()

    def _faults(self, start_local: datetime) -> list[Fault]:
        ids = {m["id"] for m in self.meters}
        d = start_local.date()

        def at(h: int, m: int) -> float:
            return datetime.combine(d, dtime(h, m), self.tz).timestamp()

        def there(xs):
            return [x for x in xs if x in ids]

        stairs = [m["id"] for m in self.meters if m["id"].endswith("-stair")]
        faults = [
            Fault("voltage", stairs[32:38], at(3, 10), at(3, 40), delta=17.0),
            Fault("overload", there(["PUMP1"]), at(8, 0), at(8, 3), amps=92.0),
            Fault("lit", there(["SL03"]), at(10, 0), at(12, 0)),
            Fault("dead", there(["B20-stair"]), at(10, 0), at(10, 20)),
            Fault("counter_jump", there(["PUMP2"]), at(12, 0), at(12, 0) + 30, kwh=250.0),
            Fault("pf", there(["B05-stair"]), at(19, 0), at(19, 20), pf=0.72),
            Fault("voltage", stairs[80:86], at(19, 20), at(19, 45), delta=-24.0),
        ]
        bus5 = [m for m in self.meters if m["bus"] == "bus-n5"]
        if bus5:
            faults.append(Fault("bus_down", [m["id"] for m in bus5], at(14, 0), at(14, 6), bus="bus-n5"))
        self.fault_summary = [{"kind": f.kind, "meters": len(f.meters), "bus": f.kw.get("bus"),
                               "local": f"{datetime.fromtimestamp(f.start, self.tz):%H:%M}-"
                                        f"{datetime.fromtimestamp(f.end, self.tz):%H:%M}"}
                              for f in faults if f.meters]
        return [f for f in faults if f.meters]

    # ---- collecting what the drivers publish ----
    def _arrive(self, arrival: float) -> datetime:
        """The simulated clock (the drivers' arrival stamps) at `arrival`, epoch seconds; returns it (UTC)."""
        self._arrival = arrival
        self.clock.t = datetime.fromtimestamp(arrival, timezone.utc)
        return self.clock.t

    def _collect(self, event) -> None:
        self._seq += 1
        self._pending.append((self._arrival, self._seq, event))

    def _emit(self, arrival: float, event) -> None:
        self._arrival = arrival
        self._collect(event)

    # ---- one hour ----
    def chunk(self, h: int) -> tuple[list[datetime], list[list], Counter]:
        c0 = self.t0 + h * 3600
        c1 = c0 + 3600
        self._pending = []
        self._readings(c0, c1)
        self._gates(c0, c1)
        self._patrol(c0, c1)
        n = int(c1 - c0)
        batches: list[list] = [[] for _ in range(n)]
        carried, self._carried = self._carried, []
        for arrival, _, e in sorted(self._pending, key=lambda x: (x[0], x[1])):
            i = int(arrival - c0)
            if i >= n:  # polled in the hour's last moments, arrives in the next one
                self._carried.append(e)
            else:
                batches[max(0, i)].append(e)
        batches[0][:0] = carried
        made: Counter = Counter(type(e).__name__ for b in batches for e in b)
        self.generated.update(made)
        ticks = [datetime.fromtimestamp(c0 + i + 1, timezone.utc) for i in range(n)]
        return ticks, batches, made

    def _readings(self, c0: float, c1: float) -> None:
        rnd = self.rng.random
        faults: dict[str, list[Fault]] = {}
        for f in self.faults:
            if f.start < c1 and f.end > c0:
                for m in f.meters:
                    faults.setdefault(m, []).append(f)
        for t, bus, online in self.bus_events:
            if c0 <= t < c1:
                self._emit(t + 0.01, DeviceStatus(bus, "bus", online, datetime.fromtimestamp(t, timezone.utc),
                                                  "connected" if online else "cannot connect: timed out"))
        for m in self.meters:
            if m["next"] >= c1:
                continue
            prof = m["profile"]
            names = m["fields"]
            grid = []
            for j in range(int((c1 - c0) // GRID_S) + 1):
                tg = c0 + j * GRID_S
                e = prof.electrical(tg, prof.power_kw(tg))
                grid.append({x: e.get(x, 0.0) for x in names})
            v3, vll, scaled, same = m["v3"], m["vll"], m["scaled"], m["same"]
            mf = faults.get(m["id"], ())
            while m["next"] < c1:
                t = m["next"]
                m["next"] = t + m["poll_s"]
                ts = t + (rnd() - 0.5) * 0.3
                when = datetime.fromtimestamp(ts, timezone.utc)
                arrival = ts + m["latency"]
                active = [f for f in mf if f.start <= ts < f.end] if mf else ()
                if any(f.kind in ("dead", "bus_down") for f in active):
                    m["failures"] += 1
                    if m["failures"] >= m["offline_after"] and m["online"]:
                        m["online"] = False
                        self._emit(arrival, DeviceStatus(m["id"], "meter", False, when, "no answer (timeout)"))
                    continue
                m["failures"] = 0
                if not m["online"]:
                    m["online"] = True
                    self._emit(arrival, DeviceStatus(m["id"], "meter", True, when, "answering"))
                base = grid[max(0, int((ts - c0) // GRID_S))]
                k = 1.0 + 0.06 * (rnd() - 0.5)
                dv = (rnd() - 0.5) * 0.8
                values = {x: base[x] for x in same}
                for x in v3:
                    values[x] = base[x] + dv
                for x in vll:
                    values[x] = base[x] + dv * 1.732
                for x in scaled:
                    values[x] = base[x] * k
                jump = 0.0
                for f in active:
                    if f.kind == "voltage":
                        for x in v3:
                            values[x] += f.kw["delta"]
                        for x in vll:
                            values[x] += f.kw["delta"] * 1.732
                    elif f.kind == "overload":
                        for x in scaled:
                            if x.startswith("current"):
                                values[x] = f.kw["amps"] * k
                    elif f.kind == "lit":
                        values["power_kw"] = prof.rated_kw * k
                        if "current_a" in values:
                            values["current_a"] = values["power_kw"] * 1000 / 220 / prof.pf
                    elif f.kind == "pf":
                        values["pf"] = f.kw["pf"]
                    elif f.kind == "counter_jump":
                        jump = f.kw["kwh"]
                m["energy"] += max(0.0, values.get("power_kw", 0.0)) * m["poll_s"] / 3600
                counters = {}
                for name in m["counters"]:
                    v = round(m["energy"] + jump if name == "energy_kwh" else m["export"], 2)
                    counters[name] = Decimal(f"{v:.2f}")
                    values[name] = v
                self._emit(arrival, Reading(m["id"], when, values, counters))

    def _gates(self, c0: float, c1: float) -> None:
        lo, hi = bisect.bisect_left(self.gate_times, c0), bisect.bisect_left(self.gate_times, c1)
        for t, i, _, topic, payload in self.gate_events[lo:hi]:
            arrival = t + 0.05 + self.rng.random() * 0.2
            when = self._arrive(arrival)
            door = self.controllers[i].controller
            if topic.endswith("/swipe"):
                self.swipe_drivers[door].handle(topic, payload, when)
            else:
                self.door_drivers[door].handle(topic, payload, when)
        if c0 <= self.burst_at < c1:  # someone tries a handful of cards at a gate at night
            drv = self.swipe_drivers[self.burst_door]
            for i, card in enumerate(self.unknown[:6]):
                t = self.burst_at + i * 12
                self._arrive(t + 0.1)
                body = {"card": f"{card:010d}", "reader": f"{self.burst_door}-in", "door": self.burst_door,
                        "direction": "in", "time": datetime.fromtimestamp(t, self.tz).isoformat(timespec="seconds")}
                drv.handle(drv.cfg.topic, json.dumps(body).encode(), datetime.fromtimestamp(t + 0.1, timezone.utc))

    def _patrol(self, c0: float, c1: float) -> None:
        for p in self.patrol.reads_between(c0, c1):
            drv = self.online_routes.get(p.route)
            if drv is None:
                continue
            arrival = p.t + 0.3 + self.rng.random()
            self._arrive(arrival)
            body = {"reader": drv.cfg.id, "guard": f"{p.guard:010d}", "tag": p.tag,
                    "time": p.time.isoformat(timespec="seconds")}
            drv.handle(drv.cfg.topic, json.dumps(body).encode(), datetime.fromtimestamp(arrival, timezone.utc))
        day0 = datetime.fromtimestamp(c0, self.tz).date()
        for day in (day0, day0 + timedelta(days=1)):
            for tm in WAND_DOWNLOADS:
                at = datetime.combine(day, tm, self.tz).timestamp()
                if not c0 <= at < c1:
                    continue
                for route, drv in self.wand_routes.items():
                    reads = [p for p in self.patrol.reads_between(self.wand_from, at) if p.route == route]
                    records = []
                    for p in reads:
                        self.wand_seq += 1
                        records.append(WandRecord(self.wand_seq, p.guard_tag, p.tag, p.local_time))
                    self._arrive(at + 2.0)
                    drv.feed(wand_download(drv.cfg.id, records))
                self.wand_from = at


def feed(handle, tick, ticks: list, batches: list, per_type: dict) -> int:
    """The loop every pass runs: a second's batch, each event timed, then the tick. Returns the
    tick time (ns); adds each event's time to per_type[type]."""
    pc = time.perf_counter_ns
    tick_ns = 0
    for now, batch in zip(ticks, batches):
        for e in batch:
            t = pc()
            handle(e)
            per_type[type(e)] += pc() - t
        t = pc()
        tick(now)
        tick_ns += pc() - t
    return tick_ns


class Pass:
    def __init__(self, name: str, handle, tick):
        self.name, self.handle, self.tick = name, handle, tick
        self.cpu = self.wall = 0.0
        self.tick_ns = 0
        self.per_type = {t: 0 for t in EVENT_TYPES}
        self.hours: list[float] = []

    def run(self, ticks, batches) -> None:
        c, w = time.process_time(), time.perf_counter()
        self.tick_ns += feed(self.handle, self.tick, ticks, batches, self.per_type)
        cpu = time.process_time() - c
        self.cpu += cpu
        self.wall += time.perf_counter() - w
        self.hours.append(cpu)

    def figures(self, events: int, ticks: int, counts: Counter) -> dict:
        handle_ns = sum(self.per_type.values())
        return {
            "events_per_s_cpu": round(events / self.cpu) if self.cpu else None,
            "events_per_s_wall": round(events / self.wall) if self.wall else None,
            "cpu_s": round(self.cpu, 3), "wall_s": round(self.wall, 3),
            "us_per_event_incl_ticks": round(self.cpu / events * 1e6, 3),
            "handle_s": round(handle_ns / 1e9, 3),
            "events_per_s_handle_only": round(events / (handle_ns / 1e9)) if handle_ns else None,
            "us_per_tick": round(self.tick_ns / ticks / 1e3, 3),
            "tick_s": round(self.tick_ns / 1e9, 3),
            "us_per_event_by_type": {t.__name__: round(self.per_type[t] / counts[t.__name__] / 1e3, 3)
                                     for t in EVENT_TYPES if counts[t.__name__]},
        }


def throughput(args: argparse.Namespace) -> dict:
    t = time.perf_counter()
    cfg = load_site(SITE_FILE)
    load_s = time.perf_counter() - t
    tz = ZoneInfo(cfg.site.timezone)
    start = datetime.combine(DAY, dtime(0, 0), tz)
    t = time.perf_counter()
    mix = DayMix(cfg, start, args.hours, args.seed)
    setup_s = time.perf_counter() - t
    out(f"example site {SITE_FILE.name}: {len(cfg.meters)} meters on {len(cfg.buses)} buses, {len(cfg.doors)} doors, "
        f"{len(cfg.patrol.routes)} patrol routes, {len(cfg.rules)} rules (config loaded in {load_s:.2f} s, "
        f"card registry {len(mix.registry):,} cards in {mix.registry_s:.2f} s); "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}")
    out("  faults in the day: " + ", ".join(f"{f['kind']} {f['local']} ({f['meters']} meter"
                                            f"{'s' if f['meters'] > 1 else ''})" for f in mix.fault_summary))

    alert_hub = Hub()
    alert_sub = alert_hub.subscribe(AlertChange, name="alert changes")

    def changed(alert, what: str) -> None:  # as Gateway._alerting wires it
        alert_hub.publish(AlertChange(alert.snapshot(), what))

    engine = Engine(cfg, cfg.rules, on_change=changed)
    bare = Engine(cfg, [], on_change=changed)
    hub = Hub()
    hub_sub = hub.subscribe(*EVENT_TYPES, name="no-op")

    def noop(_x) -> None:
        pass

    passes = [Pass("loop", noop, noop), Pass("hub", hub.publish, lambda now: hub_sub.take_all()),
              Pass("no_rules", bare.handle, bare.tick), Pass("engine", engine.handle, engine.tick)]
    prof = prof_engine = None
    if args.profile:
        prof = cProfile.Profile()
        prof_engine = Engine(cfg, cfg.rules, on_change=lambda a, w: AlertChange(a.snapshot(), w))
    prof_events = 0

    hours = args.hours
    gen_s = setup_s
    n_events = n_ticks = 0
    changes: Counter = Counter()
    per_hour = []
    out(f"throughput: {hours} h of the site from {start:%Y-%m-%d %H:%M} local, tick(now) every simulated second; "
        f"passes per hour: {', '.join(p.name for p in passes)}")
    for h in range(hours):
        g = time.perf_counter()
        ticks, batches, made = mix.chunk(h)
        gen_s += time.perf_counter() - g
        n = sum(made.values())
        n_events += n
        n_ticks += len(ticks)
        for p in passes:
            p.run(ticks, batches)
        for c in alert_sub.take_all():
            changes[(c.alert.rule, c.what)] += 1
        if prof is not None and h < 2:
            prof.enable()
            for now, batch in zip(ticks, batches):
                for e in batch:
                    prof_engine.handle(e)
                prof_engine.tick(now)
            prof.disable()
            prof_events += n
        eng = passes[-1]
        per_hour.append({"hour": (start + timedelta(hours=h)).strftime("%H:%M"), "events": n,
                         "engine_cpu_ms": round(eng.hours[-1] * 1e3, 1),
                         "no_rules_cpu_ms": round(passes[2].hours[-1] * 1e3, 1)})
    counts = Counter(mix.generated)
    by_name = {p.name: p.figures(n_events, n_ticks, counts) for p in passes}
    loop_cpu = passes[0].cpu
    eng = by_name["engine"]
    res = {
        "site": SITE_FILE.name, "hours": hours, "start_local": start.isoformat(), "events": n_events,
        "ticks": n_ticks, "events_by_type": dict(counts), "rules": len(cfg.rules),
        "generation_s": round(gen_s, 2),
        "engine": eng,
        "engine_net_of_loop": {
            "cpu_s": round(passes[3].cpu - loop_cpu, 3),
            "events_per_s_cpu": round(n_events / max(1e-9, passes[3].cpu - loop_cpu)),
        },
        "baselines": {k: by_name[k] for k in ("no_rules", "hub", "loop")},
        "ratio_engine_to_hub_cpu": round(passes[3].cpu / passes[1].cpu, 2) if passes[1].cpu else None,
        "replay_speed_x_real_time": round(n_ticks / passes[3].cpu) if passes[3].cpu else None,
        "alert_changes": {f"{r}/{w}": n for (r, w), n in sorted(changes.items())},
        "alert_changes_total": sum(changes.values()),
        "open_alerts_at_end": len(engine.active()),
        "alert_book_history": len(engine.book.history),
        "per_hour": per_hour,
        "faults": mix.fault_summary,
    }
    out(f"  events: {n_events:,} ({', '.join(f'{k} {v:,}' for k, v in counts.most_common())}), "
        f"{n_ticks:,} ticks; generation {gen_s:.1f} s (not timed)")
    for name in ("engine", "no_rules", "hub", "loop"):
        f = by_name[name]
        out(f"  {name:<9}: {f['events_per_s_cpu']:>10,} events/s CPU ({f['events_per_s_wall']:,}/s wall), "
            f"{f['us_per_event_incl_ticks']:.2f} µs CPU/event incl. ticks; handle only "
            f"{f['events_per_s_handle_only'] or 0:,}/s; {f['us_per_tick']:.1f} µs/tick "
            f"({f['tick_s']:.2f} s of {f['cpu_s']:.2f} s)")
    out("  engine µs per event by type (wall, per-event timer included): "
        + ", ".join(f"{k} {v:.2f}" for k, v in eng["us_per_event_by_type"].items()))
    out(f"  engine net of the feeding loop: {res['engine_net_of_loop']['events_per_s_cpu']:,} events/s; "
        f"engine / hub CPU {res['ratio_engine_to_hub_cpu']}; a day replays at {res['replay_speed_x_real_time']:,}× "
        f"real time")
    worst = max(per_hour, key=lambda x: x["engine_cpu_ms"])
    best = min(per_hour, key=lambda x: x["engine_cpu_ms"])
    out(f"  engine CPU per simulated hour: {best['engine_cpu_ms']:.0f} ms ({best['hour']}, {best['events']:,} events) "
        f"to {worst['engine_cpu_ms']:.0f} ms ({worst['hour']}, {worst['events']:,} events)")
    out(f"  alert changes: {res['alert_changes_total']} ("
        + ", ".join(f"{k} {v}" for k, v in res["alert_changes"].items()) + f"); open at the end: "
        f"{res['open_alerts_at_end']}")
    if prof is not None:
        res["profile"] = print_profile(prof, args.profile, prof_events, "the engine, first 2 hours", "event")
    return res


# ==== part 2: card frame -> alert on MQTT through a running gateway =============================

class Stamps:
    """Wrappers on the running gateway's objects that note when things happened."""

    def __init__(self) -> None:
        self.swipes: list[tuple[int, str, str]] = []          # (ns, card, category)
        self.alerts: list[tuple[int, float | None, str]] = []  # (ns, value = count, what)
        self.publishes: list[tuple[int, str, bytes | str]] = []
        self.pubacks: list[int] = []
        self.flushes: list[tuple[int, int]] = []
        self.ticks: list[tuple[int, int]] = []
        self.gcs: list[tuple[int, int, int]] = []             # (start, end, generation)
        self._gc_start = 0

    def _gc(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._gc_start = time.monotonic_ns()
        else:
            self.gcs.append((self._gc_start, time.monotonic_ns(), info.get("generation", -1)))

    def watch_gc(self) -> None:
        gc.callbacks.append(self._gc)

    def unwatch_gc(self) -> None:
        if self._gc in gc.callbacks:
            gc.callbacks.remove(self._gc)

    def wrap_hub(self, gw) -> None:
        publish = gw.hub.publish
        mono = time.monotonic_ns

        def stamped(event) -> None:
            cls = type(event)
            if cls is CardSwipe:
                self.swipes.append((mono(), event.card, event.category))
            elif cls is AlertChange:
                self.alerts.append((mono(), event.alert.value, event.what))
            publish(event)
        gw.hub.publish = stamped  # before run(): the desk and the alert hook take it from here

    def wrap_running(self, gw) -> None:
        mono = time.monotonic_ns
        flush, tick, mqtt_publish = gw.ledger.flush, gw.rules.tick, gw.mqtt.publish

        def stamped_flush():
            t = mono()
            try:
                return flush()
            finally:
                self.flushes.append((t, mono()))

        def stamped_tick(now):
            t = mono()
            try:
                return tick(now)
            finally:
                self.ticks.append((t, mono()))

        async def stamped_publish(topic, payload, qos=None, retain=False):
            self.publishes.append((mono(), topic, payload))
            try:
                return await mqtt_publish(topic, payload, qos=qos, retain=retain)
            finally:
                self.pubacks.append(mono())

        gw.ledger.flush = stamped_flush
        gw.rules.tick = stamped_tick
        gw.mqtt.publish = stamped_publish


def latency_site(site, port: str, mqtt_port: int, tmp: Path) -> dict:
    return {
        "site": site.model_dump(mode="json"),
        "storage": {"path": str(tmp / "gateway.db"), "commit_interval_s": 1.0},
        "mqtt": {"host": "127.0.0.1", "port": mqtt_port},
        "doors": [{"id": "gate-n", "name": "北门", "held_open_s": 60}],
        "card_readers": [{"id": "gate-n-in", "type": "serial", "port": port, "format": "rdm6300", "door": "gate-n",
                          "direction": "in"}],
        "cards": {"file": str(CARDS_FILE), "hash_key_env": KEY_ENV},
        "rules": [{"id": "bad-card", "kind": "access", "severity": "warning", "check": "invalid_card",
                   "categories": ["unknown"], "doors": ["gate-n"]}],
    }


def overlaps(a: int, b: int, intervals: list[tuple[int, int]]) -> bool:
    return any(s < b and e > a for s, e in intervals)


async def latency(args: argparse.Namespace, tmp: Path) -> dict:
    from gateway.runtime import Gateway
    from mosquitto import MOSQUITTO, Mosquitto

    if not os.access(MOSQUITTO, os.X_OK):
        raise SystemExit(f"{MOSQUITTO} is not installed (tools/setup-tests.sh installs it)")
    example = load_site(SITE_FILE)
    registry = CardRegistry(CARDS_FILE, example.site.timezone)
    known = {e.value & 0xFFFFFF for e in registry.entries}
    n_cards = len(registry)
    del registry  # the gateway loads its own
    rng = random.Random(args.seed + 100)
    values: list[int] = []
    while len(values) < args.cases + args.warmup_cases:
        v = rng.randrange(1 << 32)
        if v & 0xFFFFFF not in known and v not in values:
            values.append(v)
    os.environ[KEY_ENV] = HASH_KEY.decode()
    (tmp / "mosquitto").mkdir()
    broker = Mosquitto(tmp / "mosquitto", persistence=False)
    broker.start()
    prefix = f"{example.site.id}/alerts"
    try:
        async with Child(__file__, tmp / "child.log") as child:
            port = (await child.call("reader"))["port"]
            if not port.startswith("/dev/pts/"):
                raise RuntimeError(f"simulator at {port}, expected a local pty")
            cfg = parse_site(latency_site(example.site, port, broker.port, tmp), base_dir=tmp)
            gw = Gateway(cfg)
            stamps = Stamps()
            stamps.wrap_hub(gw)
            gc.collect()  # not the throughput part's garbage: the gateway's own heap only
            stamps.watch_gc()
            task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))
            try:
                await until(lambda: gw.rules is not None and gw.ledger is not None and gw.mqtt is not None
                            or task.done(), "the gateway built", UNTIL_S)
                if task.done():
                    task.result()
                stamps.wrap_running(gw)
                await until(lambda: gw.mqtt.connected and all(d.line.connected for d in gw.field_drivers),
                            "gateway: MQTT connected and the serial line open", UNTIL_S)
                await child.call("subscribe", port=broker.port, topic=f"{prefix}/#")
                n = len(values)
                out(f"latency: {args.cases} frames of distinct unknown cards {args.gap_ms:g} ms apart (after "
                    f"{args.warmup_cases} not counted) -> Gateway (RDM6300 on a pty, {n_cards:,} cards, rule "
                    f"invalid_card, ledger commit 1 s) -> mosquitto 127.0.0.1:{broker.port} -> subscriber on "
                    f"{prefix}/# (child process)")
                sent = await child.call("spaced", values=values, gap_s=args.gap_ms / 1000,
                                        timeout=n * args.gap_ms / 1000 + 60)
                got = await child.call("received", n=n, timeout_s=15, linger_s=0.5, timeout=60)
            finally:
                stamps.unwatch_gc()
                gw.stop()
                await asyncio.wait_for(task, 30)
    finally:
        broker.stop()

    # ---- match the stamps, case by case, and check every case gave exactly one message ----
    msgs = [(t, topic, json.loads(body) if body else None, retain) for t, topic, body, retain in got["messages"]]
    topic = f"{prefix}/bad-card/gate-n"
    by_count: dict[int, list[int]] = {}
    for t, tp, body, _ in msgs:
        if tp == topic and body is not None and body.get("value") is not None:
            by_count.setdefault(int(body["value"]), []).append(t)
    alert_by_count: dict[int, list[tuple[int, str]]] = {}
    for t, v, what in stamps.alerts:
        alert_by_count.setdefault(int(v), []).append((t, what))
    pub_by_count: dict[int, list[int]] = {}
    for t, tp, payload in stamps.publishes:
        body = json.loads(payload) if payload else None
        if body and body.get("value") is not None:
            pub_by_count.setdefault(int(body["value"]), []).append(t)
    problems = []
    if len(stamps.swipes) != n:
        problems.append(f"{len(stamps.swipes)} CardSwipes in the hub for {n} frames")
    if [int(c) & 0xFFFFFFFF for _, c, _ in stamps.swipes] != values[:len(stamps.swipes)]:
        problems.append("CardSwipes not in the order of the frames")
    if any(cat != "unknown" for _, _, cat in stamps.swipes):
        problems.append("a card was not classified unknown")
    whats = Counter(w for _, _, w in stamps.alerts)
    for k in range(1, n + 1):
        for name, table in (("AlertChange", alert_by_count), ("MQTT publish", pub_by_count),
                            ("MQTT message", by_count)):
            if len(table.get(k, ())) != 1:
                problems.append(f"case {k}: {len(table.get(k, ()))} {name}s with count {k}")
                break
    if len(msgs) != n:
        problems.append(f"{len(msgs)} MQTT messages for {n} cases")
    if problems:
        raise RuntimeError("latency: " + "; ".join(problems[:6]))

    total, s1, s2, s3, s4, ack = [], [], [], [], [], []
    quiet, busy, cases = [], [], []
    skip = args.warmup_cases
    gcs = [(a, b) for a, b, _ in stamps.gcs]
    for k in range(skip, n):
        w = sent["t_ns"][k]
        h = stamps.swipes[k][0]
        a = alert_by_count[k + 1][0][0]
        p = pub_by_count[k + 1][0]
        r = by_count[k + 1][0]
        total.append(ms(r - w))
        s1.append(ms(h - w))
        s2.append(ms(a - h))
        s3.append(ms(p - a))
        s4.append(ms(r - p))
        during = [name for name, iv in (("ledger commit", stamps.flushes), ("engine tick", stamps.ticks),
                                        ("gc", gcs)) if overlaps(w, r, iv)]
        (busy if during else quiet).append(ms(r - w))
        cases.append({"case": k - skip, "total": round(ms(r - w), 3), "frame->hub": round(ms(h - w), 3),
                      "hub->AlertChange": round(ms(a - h), 3), "AlertChange->publish": round(ms(p - a), 3),
                      "publish->subscriber": round(ms(r - p), 3), "during": during})
    for (t0, _, _), t1 in zip(stamps.publishes, stamps.pubacks):
        ack.append(ms(t1 - t0))
    res = {
        "cases": n - skip, "warmup_cases": skip, "gap_ms": args.gap_ms,
        "messages": len(msgs), "alert_changes": dict(whats),
        "total": dist(total),
        "stages": {"frame->hub": dist(s1), "hub->AlertChange": dist(s2), "AlertChange->publish": dist(s3),
                   "publish->subscriber": dist(s4)},
        "publish_to_puback": dist(ack),
        "cases_overlapping_commit_tick_or_gc": dist(busy),
        "cases_clear_of_them": dist(quiet),
        "worst_cases": sorted(cases, key=lambda c: -c["total"])[:5],
        "ledger_commit_ms": dist([ms(e - s) for s, e in stamps.flushes]),
        "engine_tick_ms": dist([ms(e - s) for s, e in stamps.ticks]),
        "gc_ms": dist([ms(e - s) for s, e, _ in stamps.gcs]),
        "gc_by_generation": dict(Counter(g for _, _, g in stamps.gcs)),
        "clock": "CLOCK_MONOTONIC (time.monotonic_ns) in both processes",
    }
    out(f"  {n} frames -> {len(stamps.swipes)} CardSwipes -> {len(stamps.alerts)} AlertChanges "
        f"({', '.join(f'{k} {v}' for k, v in whats.items())}) -> {len(msgs)} MQTT messages: one per case")
    out(f"  frame written -> alert at the subscriber: {fmt_dist(res['total'])}")
    for name, d in res["stages"].items():
        out(f"    {name:<22} {fmt_dist(d)}")
    out(f"    (MqttLink.publish until PUBACK: {fmt_dist(res['publish_to_puback'])})")
    out(f"  cases whose path overlapped a ledger commit, an engine tick or a GC: {fmt_dist(dist(busy))}; "
        f"the others: {fmt_dist(dist(quiet))}")
    out(f"  ledger commit {fmt_dist(res['ledger_commit_ms'])}; engine tick {fmt_dist(res['engine_tick_ms'])}; "
        f"GC {fmt_dist(res['gc_ms'])} {res['gc_by_generation']}")
    out("  worst cases (ms): " + "; ".join(
        f"{c['total']:.1f} = {c['frame->hub']:.1f} + {c['hub->AlertChange']:.1f} + {c['AlertChange->publish']:.1f}"
        f" + {c['publish->subscriber']:.1f}" + (f" ({', '.join(c['during'])})" if c["during"] else "")
        for c in res["worst_cases"]))
    return res


# ==== main =======================================================================================

async def main(args: argparse.Namespace) -> dict:
    result: dict = {"cores": os.cpu_count(), "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
                    "python": sys.version.split()[0]}
    parts = set(args.parts.split(","))
    if "throughput" in parts:
        result["throughput"] = throughput(args)
        result["rss_after_throughput_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if "latency" in parts:
        with tempfile.TemporaryDirectory(prefix="bench-rules-") as tmp:
            result["latency_ms"] = await latency(args, Path(tmp))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["peak_rss_mib"] = round(rss, 1)
    out(f"peak RSS of this process: {rss:.1f} MiB"
        + (f" (after the throughput part: {result['rss_after_throughput_mib']:.1f} MiB)"
           if "rss_after_throughput_mib" in result else ""))
    result["targets"] = TARGETS
    met = {}
    if "throughput" in result:
        eps = result["throughput"]["engine"]["events_per_s_cpu"]
        met["events_per_s"] = eps >= TARGETS["events_per_s_min"]
        out(f"target {TARGETS['events_per_s_min']:,} events/s (CPU, ticks included): "
            f"{'met' if met['events_per_s'] else 'MISSED'} ({eps:,}/s; handle only "
            f"{result['throughput']['engine']['events_per_s_handle_only']:,}/s)")
    if "latency_ms" in result:
        p99 = result["latency_ms"]["total"]["p99"]
        met["latency_p99"] = p99 < TARGETS["latency_p99_ms_max"]
        out(f"target latency p99 < {TARGETS['latency_p99_ms_max']:g} ms: "
            f"{'met' if met['latency_p99'] else 'MISSED'} ({p99:.2f} ms)")
    result["targets_met"] = met
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--hours", type=int, default=24, help="simulated hours fed to the engine (default 24)")
    p.add_argument("--cases", type=int, default=500, help="latency cases counted (default 500)")
    p.add_argument("--warmup-cases", type=int, default=10, help="latency cases sent first and not counted")
    p.add_argument("--gap-ms", type=float, default=20.0, help="time between latency frames (default 20)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--parts", default="throughput,latency", help="throughput, latency or both (default)")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also profile a second engine on the first 2 hours; print N costliest functions")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if (args.hours < 1 or args.cases < 1 or args.warmup_cases < 0 or args.gap_ms <= 0 or args.profile < 0
            or not parts or not parts <= {"throughput", "latency"}):
        p.error("--hours >= 1, --cases >= 1, --warmup-cases >= 0, --gap-ms > 0, --parts throughput,latency")
    return args


if __name__ == "__main__":
    run(main, parse_args, _child_main)
