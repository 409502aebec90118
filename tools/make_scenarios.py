"""Writes the alarm scenarios of tests/scenarios/: device-traffic recordings with a known story.

    python3 tools/make_scenarios.py            # every scenario (full_day.jsonl too: 6.3 MB)
    python3 tools/make_scenarios.py overvoltage bus_dead
    python3 tools/make_scenarios.py --site     # only site.yaml and cards.csv

Each scenario is a recording in the format of `gateway run --record` (gateway/recording.py,
written here through the gateway's own Recorder): a header, then poll / serial / mqtt records
in time order, times in UTC epoch seconds, chosen in site time (Asia/Shanghai). They are
replayed against `tests/scenarios/site.yaml`, a trimmed copy of edge_config/site.example.yaml
that this script also writes (with `cards.csv` beside it, rows taken from cards.example.csv).

What makes the recordings real rather than invented:
- every poll carries exactly the exchanges the gateway's planner makes for the meter's model
  (`plan_for_model(model, max_gap_registers)`), with register words from `SimMeter` (the same
  simulator `gateway demo` polls); a value a scenario needs (a voltage) is forced into the
  words with the model's own `FieldSpec.raw_for` / `encode_raw`;
- the poll times follow the gateway's scheduler (gateway/drivers/modbus.py): one request at a
  time per bus, each meter on its fixed grid, a request lasting its 9600 8N1 line time, a meter
  that does not answer costing one timeout and backed off by whole periods after two failures;
- serial bytes are the readers' real frames (`SerialCardReaderSim.frame`, `WandSim.batch`),
  MQTT payloads the controllers' and patrol readers' JSON (gate_controller / patrol sims).

The stories (and why each expected alert list is right) are in tests/scenarios/README.md.
Everything is a pure function of the constants below: running this again writes the same files.
"""

from __future__ import annotations

import argparse
import csv
import heapq
import json
import sys
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

from gateway.config import parse_site  # noqa: E402
from gateway.drivers.modbus_plan import line_time_s, plan_for_model  # noqa: E402
from gateway.recording import Recorder  # noqa: E402
from gateway.rules.models import example_rules  # noqa: E402
from simulators.card_reader import SerialCardReaderSim  # noqa: E402
from simulators.gate_controller import GateControllerSim, iso_local  # noqa: E402
from simulators.meters import SimMeter  # noqa: E402
from simulators.patrol import OnlinePatrolReaderSim, PatrolRead, PatrolSim, WandSim  # noqa: E402
from simulators.site import meter_seed  # noqa: E402

OUT = ROOT / "tests" / "scenarios"
EXAMPLE = ROOT / "edge_config" / "site.example.yaml"
TZ = ZoneInfo("Asia/Shanghai")
SEED = 20261123
# Every scenario's recording runs until its story is over (alerts cleared, quiet periods passed),
# and is replayed with this short tail: longer, and the replay would find every meter silent
# (no poll records after the end) and raise offline alarms the site never had.
TAIL_S = 30

# ---- the scenario site -----------------------------------------------------------------------

# A TCP serial server in building 1's meter room (stairwells and a lift), and the guard-room
# RS-485 line (the north gate and two street-light circuits).
METERS = ["B01-stair", "B02-stair", "B03-stair", "B08-lift1", "GATE-N", "SL01", "SL02"]
RULES = ["voltage-high", "voltage-low", "meter-offline", "counter", "lights-daylight", "bad-card",
         "denied-burst", "staff-hours", "door-forced", "door-held",
         "patrol-north", "patrol-south", "patrol-perimeter"]
UNKNOWN_CARD = 3987654321          # not in cards.csv (nor in its low 24 bits)


def _flow(d: dict) -> str:
    return yaml.safe_dump(d, default_flow_style=True, allow_unicode=True, width=10_000, sort_keys=False).strip()


def site_data() -> dict:
    """The scenario site as data: the example site's parts the scenarios use, unchanged."""
    ex = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    meters = [m for m in ex["meters"] if m["id"] in METERS]
    buses = [b for b in ex["buses"] if b["id"] in {m["bus"] for m in meters}]
    by_id = {r["id"]: r for r in example_rules()}
    return {"site": ex["site"], "storage": ex["storage"], "meter_models": [], "buses": buses, "meters": meters,
            "mqtt": ex["mqtt"], "doors": ex["doors"], "card_readers": ex["card_readers"],
            "cards": {"file": "cards.csv", "hash_key_env": "CARD_HASH_KEY"}, "patrol": ex["patrol"],
            "rules": [by_id[r] for r in RULES]}


def write_site() -> None:
    d = site_data()
    lines = [
        "# The site the alarm scenarios of tests/scenarios/ are replayed against. Written by",
        "# tools/make_scenarios.py (do not edit by hand): a trimmed copy of edge_config/site.example.yaml,",
        "# every entry below unchanged from there. 7 of its meters (both models; stairwell, lift, gate and",
        "# street-light circuits) on 2 of its buses, all its doors, card readers and patrol devices, and",
        f"# {len(RULES)} of the 22 rules of example_rules() (those the scenarios exercise or must not trip).",
        "#   gateway check-config tests/scenarios/site.yaml",
        "#   gateway replay tests/scenarios/overvoltage.jsonl -c tests/scenarios/site.yaml --tail 30",
        f"site: {_flow(d['site'])}", "", f"storage: {_flow(d['storage'])}", "", "meter_models: []", "", "buses:"]
    lines += [f"  - {_flow(b)}" for b in d["buses"]]
    lines += ["", "meters:"] + [f"  - {_flow(m)}" for m in d["meters"]]
    lines += ["", f"mqtt: {_flow(d['mqtt'])}", "", "doors:"] + [f"  - {_flow(x)}" for x in d["doors"]]
    lines += ["", "card_readers:"] + [f"  - {_flow(x)}" for x in d["card_readers"]]
    lines += ["", "# rows of edge_config/cards.example.csv: the guards, two staff, residents, a revoked and an",
              "# expired card, two visitors", f"cards: {_flow(d['cards'])}", "", "patrol:", "  checkpoints:"]
    lines += [f"    - {_flow(c)}" for c in d["patrol"]["checkpoints"]]
    lines += ["  readers:"] + [f"    - {_flow(r)}" for r in d["patrol"]["readers"]]
    lines += ["  routes:"]
    for r in d["patrol"]["routes"]:
        lines += [f"    - id: {r['id']}", f"      name: {r['name']}", f"      checkpoints: {_flow(r['checkpoints'])}",
                  f"      leg_minutes: {r['leg_minutes']}", f"      tolerance_minutes: {r['tolerance_minutes']}",
                  "      shifts:"] + [f"        - {_flow(s)}" for s in r["shifts"]]
    lines += ["", "# from gateway.rules.models.example_rules()", "rules:"] + [f"  - {_flow(r)}" for r in d["rules"]]
    text = "\n".join(lines) + "\n"
    parse_site(yaml.safe_load(text), base_dir=OUT)       # the file must load as it is
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "site.yaml").write_text(text, encoding="utf-8")
    write_cards()


def write_cards() -> None:
    with open(ROOT / "edge_config" / "cards.example.csv", encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    pick = [r for r in rows if r["role"] == "staff:guard"]
    pick += [next(r for r in rows if r["role"] == role) for role in ("staff:electrician", "staff:cleaner")]
    pick += [r for r in rows if r["role"] == "resident" and not r["revoked"] and not r["valid_to"]][:48]
    pick.append(next(r for r in rows if r["revoked"]))
    pick.append(next(r for r in rows if r["valid_to"] == "2025-12-31"))
    pick += [r for r in rows if r["role"] == "visitor"][:2]
    with open(OUT / "cards.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(pick)


class Site:
    def __init__(self) -> None:
        self.cfg = parse_site(site_data(), base_dir=OUT)
        with open(OUT / "cards.csv", encoding="utf-8", newline="") as f:
            cards = list(csv.DictReader(f))
        self.guards = [int(r["number"]) for r in cards if r["role"] == "staff:guard"]
        self.residents = [int(r["number"]) for r in cards if r["role"] == "resident" and not r["revoked"]
                          and not r["valid_to"]]
        self.tags = {c.id: c.tag.upper() for c in self.cfg.patrol.checkpoints}


def local(y: int, mo: int, d: int, h: int, mi: int = 0, s: float = 0) -> datetime:
    return datetime(y, mo, d, h, mi, tzinfo=TZ) + timedelta(seconds=s)


# ---- a recording ---------------------------------------------------------------------------

class Traffic:
    """Records collected out of order, written in time order through the gateway's Recorder."""

    def __init__(self, start: datetime, end: datetime):
        self.start, self.end = start, end
        self.t0, self.t1 = start.timestamp(), end.timestamp()
        self.items: list[tuple[float, int, str, tuple]] = []

    def _add(self, t: float, kind: str, args: tuple) -> None:
        if self.t0 <= t < self.t1:
            self.items.append((round(t, 6), len(self.items), kind, args))

    def poll(self, t: float, bus: str, meter: str, exchanges: list) -> None:
        self._add(t, "poll", (bus, meter, exchanges))

    def serial(self, t: float, device: str, data: bytes) -> None:
        self._add(t, "serial", (device, data))

    def mqtt(self, t: float, topic: str, payload: bytes | str) -> None:
        self._add(t, "mqtt", (topic, payload.encode() if isinstance(payload, str) else payload))

    def ack(self, t: float, rule: str, source: str, by: str, note: str) -> None:
        self._add(t, "ack", (rule, source, by, note))

    def replacement(self, t: float, meter: str, at: datetime, old_final: str, new_initial: str) -> None:
        self._add(t, "replacement", (meter, at, old_final, new_initial))

    def write(self, path: Path) -> int:
        path.unlink(missing_ok=True)
        rec = Recorder(path, "wanhu", self.start.astimezone(timezone.utc))
        for t, _, kind, args in sorted(self.items):
            getattr(rec, kind)(datetime.fromtimestamp(t, timezone.utc), *args)
        rec.close()
        return rec.records


# ---- meters: the gateway's scheduler over simulated meters ---------------------------------

TURNAROUND_S = 0.012   # a meter's reply delay plus the serial server's, per request
START_S = 0.8          # from the recorder's header to the first poll (ledger, models, MQTT, rules)


class Field:
    """Hooks a scenario sets on the meters: dead(meter, t), force(meter, t) -> {field: value},
    lit(meter, t) (street lights on by day), replaced {meter: (t, new SimMeter factory)}."""

    def __init__(self, dead=None, force=None, lit=None, replaced=None):
        self.dead: Callable[[str, float], bool] = dead or (lambda m, t: False)
        self.force: Callable[[str, float], dict | None] = force or (lambda m, t: None)
        self.lit: Callable[[str, float], bool] = lit or (lambda m, t: False)
        self.replaced: dict[str, tuple[float, Callable]] = replaced or {}


def poll_meters(site: Site, tr: Traffic, field: Field | None = None) -> None:
    field = field or Field()
    cfg = site.cfg
    now = [tr.t0]
    clock = lambda: now[0]  # noqa: E731
    start = tr.t0 + START_S
    for bus in cfg.buses:
        states = []
        for m in cfg.meters:
            if m.bus != bus.id or not m.enabled:
                continue
            model = cfg.models[m.model]
            sim = SimMeter(model, m.unit, m.circuit, meter_seed(SEED, m.id), clock, cfg.site.timezone,
                           latitude=cfg.site.latitude, longitude=cfg.site.longitude)
            plan = plan_for_model(model, bus.max_gap_registers)
            states.append({"m": m, "sim": sim, "plan": plan, "due": start, "failures": 0, "new": None,
                           "timeout": m.timeout_s or bus.timeout_s,
                           "line": [line_time_s([r], getattr(bus, "baudrate", 9600), 10) for r in plan]})
        heap = [(start, i) for i in range(len(states))]
        heapq.heapify(heap)
        free = start
        while heap:
            due, i = heapq.heappop(heap)
            if due >= tr.t1:
                break
            st = states[i]
            m = st["m"]
            ts = t = max(due, free)
            sim = st["sim"]
            if m.id in field.replaced and t >= field.replaced[m.id][0]:
                if st["new"] is None:
                    now[0] = t
                    st["new"] = field.replaced[m.id][1](clock)
                sim = st["new"]
            exchanges, ok = [], True
            for req, line in zip(st["plan"], st["line"]):
                if field.dead(m.id, t):
                    exchanges.append({"error": "NoAnswer", "detail": f"no answer within {st['timeout']:g} s"})
                    t += st["timeout"]
                    ok = False
                    break
                now[0] = t
                sim.lights_on_daytime = field.lit(m.id, t)
                regs = list(sim.registers(req.function, req.address, req.count))
                for name, value in (field.force(m.id, t) or {}).items():
                    for spec in req.fields:
                        if spec.name == name:
                            words = spec.encode_raw(spec.raw_for(value))
                            regs[spec.address - req.address:spec.address - req.address + len(words)] = words
                exchanges.append({"fn": req.function, "addr": req.address, "count": req.count, "regs": regs})
                t += line + TURNAROUND_S
            tr.poll(ts, bus.id, m.id, exchanges)
            st["failures"] = 0 if ok else st["failures"] + 1
            free = t
            # ModbusBus._next_due: the fixed grid, overruns skipped, back-off by whole periods
            period = m.poll_s
            nxt = st["due"] + period
            if nxt <= t:
                nxt = st["due"] + (int((t - st["due"]) // period) + 1) * period
            if st["failures"] > 1:
                backoff = min(bus.backoff_max_s, period * 2 ** (st["failures"] - 2))
                nxt += period * int(backoff // period)
            st["due"] = nxt
            heapq.heappush(heap, (nxt, i))


# ---- people: gates and patrols ---------------------------------------------------------------

RDM6300 = SerialCardReaderSim("rdm6300")
W26 = SerialCardReaderSim("wiegand_text", encoding="decimal", bits=26)


def serial_swipe(tr: Traffic, t: float, reader: str, card: int, frames: int = 2, repeat_s: float = 0.15) -> None:
    """A card held at a serial reader: its frame repeated; each frame is one read of the port."""
    data = RDM6300.frame(card) if reader == "gate-n-in" else W26.frame(card & 0xFFFFFF)
    for k in range(frames):
        tr.serial(t + k * repeat_s, reader, data)


def door_event(tr: Traffic, t: float, door: str, event: str, delay: float = 0.08) -> None:
    tr.mqtt(t + delay, f"wanhu/acs/{door}/door",
            json.dumps({"door": door, "event": event, "time": iso_local(t, TZ)}, separators=(",", ":")))


def gates(site: Site, tr: Traffic, seed: int = SEED) -> None:
    """A normal day at the four gates: residents only (no unknown cards, nobody propping a gate
    open or forcing it), the north gate's swipes on its serial readers."""
    res = site.residents
    for k, gid in enumerate(("gate-n", "gate-s", "gate-e", "gate-w")):
        sim = GateControllerSim(None, "wanhu", gid, [{"id": gid, "readers_in": [f"{gid}-in"],
                                                     "readers_out": [f"{gid}-out"]}],
                                res[k::4], (), seed=seed + k, tz="Asia/Shanghai", held_open_per_day=0,
                                forced_open_per_day=0, unknown_per_day=0, held_open_s=60)
        for t, topic, payload in sim.events_between(tr.t0 - 3600, tr.t1):
            body = json.loads(payload)
            arrive = t + 0.06
            if topic.endswith("/swipe") and gid == "gate-n":
                serial_swipe(tr, t + 0.02, "gate-n-in" if body["direction"] == "in" else "gate-n-out",
                             int(body["card"]), frames=2 + int(t) % 3)
            else:
                tr.mqtt(arrive, topic, payload)


def round_starts(site: Site, route: str, t0: datetime, t1: datetime) -> list[datetime]:
    r = next(x for x in site.cfg.patrol.routes if x.id == route)
    out = []
    day = t0.date() - timedelta(days=1)
    while day <= t1.date():
        for sh in r.shifts:
            s = datetime.combine(day, datetime.strptime(sh.start, "%H:%M").time(), TZ)
            e = datetime.combine(day, datetime.strptime(sh.end, "%H:%M").time(), TZ)
            if e <= s:
                e += timedelta(days=1)
            while s < e:
                if t0 <= s < t1:
                    out.append(s)
                s += timedelta(minutes=sh.every_minutes)
        day += timedelta(days=1)
    return sorted(out)


def walk(site: Site, t0: datetime, t1: datetime, seed: int = SEED) -> dict[str, list[list[PatrolRead]]]:
    """Every round of every route starting in [t0, t1), walked on time: per route, per round,
    its reads in walking order. Legs vary a little (PatrolSim, no skips, no swaps, no held-up
    legs); each read is checked to be within 2.5 minutes of its expected time (tolerance 3)."""
    routes = site.cfg.patrol.routes
    defs = [{"id": r.id, "checkpoints": [site.tags[c] for c in r.checkpoints], "leg_minutes": r.legs(),
             "rounds": round_starts(site, r.id, t0, t1)} for r in routes]
    sim = PatrolSim(defs, site.guards, seed=seed, tz="Asia/Shanghai", skip_prob=0.0, reorder_prob=0.0,
                    late_prob=0.0, jitter_min=0.2, start_jitter_min=0.25)
    out: dict[str, list[list[PatrolRead]]] = {}
    for i, d in enumerate(defs):
        offs = [0.0]
        for leg in d["leg_minutes"]:
            offs.append(offs[-1] + leg)
        for s in d["rounds"]:
            reads = sim.walk(i, s)
            for p in reads:
                delta = (p.time - (s + timedelta(minutes=offs[p.position]))).total_seconds()
                assert abs(delta) <= 150, f"{d['id']} {s} {p.tag}: {delta:+.0f} s off (choose another seed)"
            out.setdefault(d["id"], []).append(reads)
    return out


ONLINE = {"north": "pr-1", "south": "pr-2"}


def online_reads(tr: Traffic, route: str, rounds: list[list[PatrolRead]]) -> None:
    reader = OnlinePatrolReaderSim(None, "wanhu", ONLINE[route], tz="Asia/Shanghai")
    for rd in rounds:
        for p in rd:
            if not p.skipped:
                # the reader's 4G link: a fraction of a second to a couple of seconds
                tr.mqtt(p.t + 0.35 + (p.t % 7) * 0.25, reader.topic, reader.payload(p))


def wand_download(tr: Traffic, t: float, reads: list[PatrolRead], wand: str = "wand-1") -> None:
    """The guard puts the wand in its cradle: the whole memory in 64-byte reads at 9600 baud."""
    w = WandSim(wand)
    w.record_all(sorted(reads, key=lambda p: p.t))
    data = w.batch()
    for k in range(0, len(data), 64):
        tr.serial(t + k / 960.0, wand, data[k:k + 64])


# ---- the scenarios ---------------------------------------------------------------------------

def patrol_night(site: Site) -> Traffic:
    """20:00-06:00: five rounds of each route. North 22:00 misses CP07, perimeter 02:00 misses
    CP36 (a wand route: found when the wand is downloaded at 05:30), south 00:00 reads CP20
    before CP19, both within the tolerance. Everything else on time."""
    tr = Traffic(local(2026, 11, 23, 19, 58), local(2026, 11, 24, 6))
    poll_meters(site, tr)
    rounds = walk(site, local(2026, 11, 23, 20), local(2026, 11, 24, 6))

    def edit(route: str, start: datetime, fn) -> None:
        rs = rounds[route]
        k = next(i for i, rd in enumerate(rs) if rd[0].round_start == start)
        rs[k] = fn(rs[k])

    skip = lambda pos: lambda rd: [replace(p, skipped=True) if p.position == pos else p for p in rd]  # noqa: E731
    edit("north", local(2026, 11, 23, 22), skip(6))          # CP07
    edit("perimeter", local(2026, 11, 24, 2), skip(7))       # CP36

    def swap(rd: list[PatrolRead]) -> list[PatrolRead]:      # CP20 at 00:17:40, then CP19 at 00:18:25
        s = rd[0].round_start
        out = []
        for p in rd:
            if p.position == 5:
                p = replace(p, time=s + timedelta(minutes=17, seconds=40), reordered=True)
            elif p.position == 4:
                p = replace(p, time=s + timedelta(minutes=18, seconds=25), reordered=True)
            out.append(p)
        return sorted(out, key=lambda p: p.t)
    edit("south", local(2026, 11, 24, 0), swap)

    for route in ONLINE:
        online_reads(tr, route, rounds[route])
    wand_download(tr, local(2026, 11, 24, 5, 30, 4).timestamp(), [p for rd in rounds["perimeter"] for p in rd])
    return tr


def streetlights_noon(site: Site) -> Traffic:
    """SL02's timer lost its setting after a power cut: the lamps come on at 11:52 and burn
    until the electrician switches them off at 12:31. SL01 stays dark, as it should."""
    tr = Traffic(local(2026, 11, 23, 11), local(2026, 11, 23, 13))
    on, off = local(2026, 11, 23, 11, 52).timestamp(), local(2026, 11, 23, 12, 31).timestamp()
    poll_meters(site, tr, Field(lit=lambda m, t: m == "SL02" and on <= t < off))
    return tr


OVERVOLTAGE = [235.6, 234.8, 235.7, 235.9, 236.2, 234.7, 235.8, 234.2, 235.6, 233.9, 235.5, 234.0, 234.6,
               232.1, 229.6, 227.9]


def overvoltage(site: Site) -> Traffic:
    """B01-stair (nearest the transformer, light load in the morning) reads these voltages on
    its polls from 09:10, one per poll (30 s): over 235.4, back under, over for a minute (the
    alert), then in and out of 235.4 while staying above 233.4 (235.4 - the 2 V hysteresis),
    then well under. After the list the simulator's own ~221 V again."""
    tr = Traffic(local(2026, 11, 23, 8, 55), local(2026, 11, 23, 9, 45))
    begin = local(2026, 11, 23, 9, 10).timestamp()

    def force(m: str, t: float):
        if m != "B01-stair" or t < begin:
            return None
        k = int((t - begin) // 30)
        return {"voltage_v": OVERVOLTAGE[k]} if k < len(OVERVOLTAGE) else None
    poll_meters(site, tr, Field(force=force))
    return tr


def unknown_card_forced_door(site: Site) -> Traffic:
    """03:00 at the north gate: a resident comes home at 02:58 (valid card, door opens and
    closes); at 03:00:12 an unknown card is held at the serial RDM6300 reader, and again at
    03:00:19 when the gate stays shut. At 03:04:40 the south gate's controller reports it forced
    open; it is closed at 03:05:10 (30 s: not long enough to count as held open). The guard on
    duty acknowledges the card alarm at 03:02:05 and the forced door at 03:04:52."""
    tr = Traffic(local(2026, 11, 23, 2, 56), local(2026, 11, 23, 3, 30))
    poll_meters(site, tr)
    t = local(2026, 11, 23, 2, 58, 41.3).timestamp()
    serial_swipe(tr, t, "gate-n-in", site.residents[0], frames=3)
    door_event(tr, t + 2, "gate-n", "opened")
    door_event(tr, t + 9, "gate-n", "closed")
    serial_swipe(tr, local(2026, 11, 23, 3, 0, 12.4).timestamp(), "gate-n-in", UNKNOWN_CARD, frames=3)
    serial_swipe(tr, local(2026, 11, 23, 3, 0, 19.7).timestamp(), "gate-n-in", UNKNOWN_CARD, frames=2)
    door_event(tr, local(2026, 11, 23, 3, 4, 40).timestamp(), "gate-s", "forced_open")
    tr.ack(local(2026, 11, 23, 3, 4, 52.5).timestamp(), "door-forced", "gate-s", "zhang", "正在去南门")
    door_event(tr, local(2026, 11, 23, 3, 5, 10).timestamp(), "gate-s", "closed")
    tr.ack(local(2026, 11, 23, 3, 2, 5).timestamp(), "bad-card", "gate-n", "zhang", "北门查看：无人，已登记")
    return tr


def meter_replaced(site: Site) -> Traffic:
    """16 November (mid-month), B02-stair's meter is replaced: the electrician disconnects the
    old meter at 11:20, the new one (counter at 0 kWh, same unit id) answers from 11:32; the
    gateway's back-off polls it again at 11:35:30. No replacement is recorded in the gateway."""
    tr = Traffic(local(2026, 11, 16, 11), local(2026, 11, 16, 12, 10))
    off, on = local(2026, 11, 16, 11, 20).timestamp(), local(2026, 11, 16, 11, 32).timestamp()
    cfg = site.cfg
    m = cfg.meter("B02-stair")

    def new_meter(clock):
        sim = SimMeter(cfg.models[m.model], m.unit, m.circuit, meter_seed(SEED, "B02-stair/new"), clock,
                       cfg.site.timezone, latitude=cfg.site.latitude, longitude=cfg.site.longitude)
        sim._import_kwh = sim._export_kwh = 0.0          # fresh from the factory
        return sim
    poll_meters(site, tr, Field(dead=lambda mid, t: mid == "B02-stair" and off <= t < on,
                                replaced={"B02-stair": (on, new_meter)}))
    return tr


def meter_replaced_recorded(site: Site) -> Traffic:
    """As meter_replaced, but the electrician records the replacement (`gateway meters replace`)
    at 11:33, after the new meter was connected at 11:32 and before the gateway polls it again."""
    tr = meter_replaced(site)
    tr.replacement(local(2026, 11, 16, 11, 33).timestamp(), "B02-stair", local(2026, 11, 16, 11, 32),
                   "18850.70", "0")
    return tr


def bus_dead(site: Site) -> Traffic:
    """15:10 a contractor cuts bus-n1's RS-485 trunk: its serial server still answers TCP, but
    none of its 4 meters answers (NoAnswer) until the cable is mended at 15:40. The guard-room
    bus carries on."""
    tr = Traffic(local(2026, 11, 25, 15), local(2026, 11, 25, 16))
    cut, mended = local(2026, 11, 25, 15, 10).timestamp(), local(2026, 11, 25, 15, 40).timestamp()
    bus = {m.id: m.bus for m in site.cfg.meters}
    poll_meters(site, tr, Field(dead=lambda m, t: bus[m] == "bus-n1" and cut <= t < mended))
    return tr


def full_day(site: Site) -> Traffic:
    """24 November, 00:00-24:00, nothing wrong: every meter at its poll period, residents at the
    four gates, every patrol round on time, wand-1 downloaded at the shift handovers, 07:50 (the
    night's rounds and the 06:00 one) and 19:50 (the day's)."""
    tr = Traffic(local(2026, 11, 24, 0), local(2026, 11, 25, 0))
    poll_meters(site, tr)
    gates(site, tr)
    rounds = walk(site, local(2026, 11, 23, 20), local(2026, 11, 24, 23))
    for route in ONLINE:
        online_reads(tr, route, rounds[route])
    perimeter = [p for rd in rounds["perimeter"] for p in rd]
    # at the shift handovers: the night's rounds and the 06:00 one at 07:50, the day's at 19:50
    morning, evening = local(2026, 11, 24, 7, 50, 3), local(2026, 11, 24, 19, 50, 5)
    wand_download(tr, morning.timestamp(), [p for p in perimeter if p.time < morning])
    wand_download(tr, evening.timestamp(), [p for p in perimeter if morning <= p.time < evening])
    return tr


SCENARIOS = {f.__name__: f for f in (patrol_night, streetlights_noon, overvoltage, unknown_card_forced_door,
                                     meter_replaced, meter_replaced_recorded, bus_dead, full_day)}


def make(name: str, out_dir: Path = OUT) -> Path:
    tr = SCENARIOS[name](Site())
    path = out_dir / f"{name}.jsonl"
    tr.write(path)
    return path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("names", nargs="*", help=f"scenarios (default: all): {', '.join(SCENARIOS)}")
    p.add_argument("--site", action="store_true", help="write only site.yaml and cards.csv")
    p.add_argument("--out", type=Path, default=OUT, help="where the recordings go (default: tests/scenarios)")
    a = p.parse_args(argv)
    write_site()
    if a.site:
        return
    for name in a.names or list(SCENARIOS):
        if name not in SCENARIOS:
            p.error(f"no scenario {name!r}")
        path = make(name, a.out)
        print(f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {path.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
