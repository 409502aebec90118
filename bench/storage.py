"""Storage: what the ledger writes to the SD card per day, and how big it is after a year.

Three parts, all on the example site (145 meters on 7 buses at 9600 8N1, 144 read every 30 s,
MAIN every 15 s), with the real `Ledger` (WAL, synchronous=FULL, commits at most once per
`commit_interval_s`) and the real InfluxDB encoder:

1. **Writes per day.** The polls are laid out as the bus schedulers make them (every meter due
   on its grid, one exchange at a time per bus, each taking the line time of its model's request
   plan at 9600 8N1 plus 10 ms), after six hours of history, for `--warm` simulated minutes (not
   counted) and then `--minutes` more. Every simulated second the ledger takes what arrived and
   commits it as `Ledger.run` does (self metrics and InfluxDB confirmations wait for a commit of
   rows); the ledger's two worker threads are run in step with the simulation instead of by
   their own timers: the checkpoint after each commit when due, the per-meter batch every
   `index_min` simulated minutes (whole hours). With the outbox, a drainer stand-in confirms what
   a server would have (batch_age_s 5), and self metrics are queued every 60 s. The log is at its
   kept size before measuring (a log that grows costs a filesystem journal commit per sync).
   Measured: the bytes the filesystem sent to its block device (`/sys/block/loopN/stat`, journal
   and metadata included) on a small ext4 mounted with `noatime` on a loop device, as Raspberry
   Pi OS mounts its root; also the process's `write_bytes` (`/proc/self/io`) and the WAL frames
   SQLite wrote (from the -wal file, as the checkpoint thread counts them). Extrapolated linearly to 24 h. Baselines: the readings
   as schema 8 stored them (`rows_mb_per_day`: meter name, time, float64 values, JSON counters
   and the energy counter again) and as this ledger stores them (`stored_rows_mb_per_day`).
   Time is simulated, so the filesystem's own 5-second journal commits of inode times happen far
   less often than on a running box (see docs/storage.md). Variants: see VARIANTS. Without root
   (no loop mount) only `write_bytes` is measured.
2. **Size per day.** A whole day of the site written in bulk into a fresh ledger (readings with
   every field of their model, energy counters, and the access/patrol/alert traffic of a day as
   assumed below), then `dbstat` per table and index.
3. **Retention.** On that ledger, 62 days later: the real `Retention` run deletes the day's
   readings and thins its energy counters (the day is the last of its month) in batches; the
   longest batch is how long a commit could wait behind it (batches run in the ledger's commit
   thread; the event loop does not wait for them). The size after a year with retention applied
   is then projected from the per-day figures: `raw_days` days of readings and whole energy
   counters, the rest of the year of thinned counters, a year of events (`events_days` 400 >
   365). A full year (150 million readings) would take hours to write here; the per-day figures
   are what a year is made of, and the B-tree pages do not change their fill with the file size.

The last line printed is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gateway.clock import from_us, to_us  # noqa: E402
from gateway.ledger.checkpoint import wal_frames  # noqa: E402
from gateway.drivers.modbus_plan import line_time_s, plan_for_model  # noqa: E402
from gateway.events import (Alert, AlertChange, CardSwipe, DoorEvent, GatewayStats, PatrolCheckin,  # noqa: E402
                            Reading)

SITE = ROOT / "edge_config" / "site.example.yaml"
MB = 1024 * 1024
TURNAROUND_S = 0.010            # the meter's own answer delay, per exchange
START = datetime(2026, 10, 30, 16, 0, tzinfo=timezone.utc)   # 2026-10-31 00:00 in Shanghai: a month's last day
# a day of access and patrol traffic (assumed: bench/rules.py's simulated day has ~36,000 such events)
DAY_SWIPES, DAY_DOORS, DAY_CHECKINS, DAY_ALERT_CHANGES = 26_000, 10_000, 300, 200
# SD card assumptions for the endurance figure
CARD_GB, CARD_PE_CYCLES, CARD_WAF = 32, 500, 4


# Part 1's variants. `autocheckpoint` set: SQLite's own checkpoint inside the commit every that
# many pages (the ledger's checkpoint thread stopped), as before the write path was reworked;
# unset: the ledger's checkpoint thread at `wal_mb`. `page_size` None: what a new ledger gets.
VARIANTS = {
    "defaults": dict(outbox=False),
    "outbox": dict(outbox=True),
    "page4096": dict(outbox=False, page_size=4096),
    "outbox+page4096": dict(outbox=True, page_size=4096),
    "page2048": dict(outbox=False, page_size=2048),
    "page512": dict(outbox=False, page_size=512),
    "autocheckpoint1000": dict(outbox=False, autocheckpoint=1000),
    "wal4mb": dict(outbox=False, wal_mb=4),
    "wal8mb": dict(outbox=False, wal_mb=8),
    "wal32mb": dict(outbox=False, wal_mb=32),
    "wal64mb": dict(outbox=False, wal_mb=64),
    "index30min": dict(outbox=False, index_min=30),
    "index120min": dict(outbox=False, index_min=120),
    "index240min": dict(outbox=False, index_min=240),
    "commit5s": dict(outbox=False, commit_s=5.0),
}
DEFAULT_VARIANTS = list(VARIANTS)


def out(line: str = "") -> None:
    print(line, flush=True)


def site(db: Path, influx: bool):
    import yaml

    from gateway.config import parse_site
    data = yaml.safe_load(SITE.read_text(encoding="utf-8"))
    data["storage"]["path"] = str(db)
    if influx:
        data["influxdb"] = {"version": 1, "url": "http://127.0.0.1:8086", "database": "bench"}
    return parse_site(data, base_dir=SITE.parent)


# ---- the polls --------------------------------------------------------------------------------------

def exchange_s(model, bus) -> float:
    """How long one poll of a meter holds its bus: the line time of its requests, plus the meter's delay."""
    baud = getattr(bus, "baudrate", 9600)             # Modbus TCP buses: serial servers at 9600 8N1
    if hasattr(model, "max_registers"):
        plan = plan_for_model(model, bus.max_gap_registers)
        return line_time_s(plan, baud, 10) + TURNAROUND_S * len(plan)
    # DL/T 645: one frame per data identifier; about 20 characters asked, 20 + the value's bytes answered, 8E1
    return sum((40 + f.nbytes) * 11 / baud + TURNAROUND_S for f in model.fields)


def poll_schedule(cfg, start_s: float, end_s: float) -> list[tuple[float, str]]:
    """(time, meter) of every poll in [start_s, end_s), as one scheduler per bus makes them."""
    polls = []
    for bus in cfg.buses:
        meters = [m for m in cfg.meters if m.enabled and m.bus == bus.id]
        took = [exchange_s(cfg.models[m.model], bus) for m in meters]
        heap = [(start_s, i) for i in range(len(meters))]
        free = start_s
        while heap:
            due, i = heapq.heappop(heap)
            if due >= end_s:
                continue
            t = max(free, due)
            polls.append((t, meters[i].id))
            free = t + took[i]
            nxt = due + meters[i].poll_s
            while nxt <= free:
                nxt += meters[i].poll_s          # an overrun is skipped, not queued
            heapq.heappush(heap, (nxt, i))
    polls.sort()
    return polls


class Values:
    """Plausible values for every field of each meter's model; counters integrate the power."""

    def __init__(self, cfg, seed: int = 1):
        from gateway.billing.allocate import meter_limits
        self.rng = random.Random(seed)
        # a load within what billing takes for plausible (a fifth to a half of the circuit's maximum)
        self.max_kw = {m.id: meter_limits(cfg, m).max_power_kw or 10.0 for m in cfg.meters}
        self.fields = {m.id: [f.name for f in cfg.models[m.model].fields] for m in cfg.meters}
        self.counter = {m.id: {f.name for f in cfg.models[m.model].fields if f.counter} for m in cfg.meters}
        self.phases = {m.id: cfg.models[m.model].phases for m in cfg.meters}
        self.kw = {m.id: self.rng.uniform(0.2, 0.5) * self.max_kw[m.id] for m in cfg.meters}
        self.kwh = {m.id: self.rng.uniform(1000, 60000) for m in cfg.meters}
        self.last = {m.id: None for m in cfg.meters}

    def reading(self, meter: str, t: float) -> Reading:
        r = self.rng
        if self.last[meter] is not None:
            self.kwh[meter] += self.kw[meter] * (t - self.last[meter]) / 3600
        self.last[meter] = t
        top = self.max_kw[meter]
        self.kw[meter] = min(0.5 * top, max(0.01 * top, self.kw[meter] * r.uniform(0.97, 1.03)))
        kw = self.kw[meter]
        values, counters = {}, {}
        for name in self.fields[meter]:
            if name in self.counter[meter]:
                c = Decimal(f"{self.kwh[meter]:.2f}") if name == "energy_kwh" else Decimal("12.34")
                counters[name] = c
                values[name] = float(c)
            elif name.endswith("_v"):
                values[name] = round(r.uniform(218, 236), 1)
            elif name.endswith("_a"):
                values[name] = round(kw * 1000 / 230 / self.phases[meter] * r.uniform(0.95, 1.05), 3)
            elif name.endswith("_kw"):
                values[name] = round(kw * r.uniform(0.98, 1.02), 4)
            elif name == "pf":
                values[name] = round(r.uniform(0.9, 1.0), 3)
            elif name == "freq_hz":
                values[name] = round(r.uniform(49.95, 50.05), 2)
            else:
                values[name] = round(kw * r.uniform(0.1, 0.3), 4)
        ts = from_us(int(t * 1_000_000))
        return Reading(meter, ts, values, counters)


# ---- measuring writes ---------------------------------------------------------------------------------

class LoopFs:
    """A small ext4 on a loop device, mounted as Raspberry Pi OS mounts its root (noatime)."""

    def __init__(self, where: Path, size_mb: int):
        self.image, self.mnt = where / "fs.img", where / "mnt"
        self.dev = None
        self.size_mb = size_mb

    def __enter__(self):
        self.mnt.mkdir(parents=True, exist_ok=True)
        subprocess.run(["truncate", "-s", f"{self.size_mb}M", str(self.image)], check=True)
        subprocess.run(["mkfs.ext4", "-q", "-F", str(self.image)], check=True, capture_output=True)
        done = subprocess.run(["mount", "-o", "loop,noatime", str(self.image), str(self.mnt)], capture_output=True)
        if done.returncode != 0:
            raise OSError(done.stderr.decode().strip())
        src = subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(self.mnt)], capture_output=True, text=True)
        self.dev = Path(src.stdout.strip()).name
        return self

    def sectors_written(self) -> int:
        return int(Path(f"/sys/block/{self.dev}/stat").read_text().split()[6])

    def __exit__(self, *exc):
        subprocess.run(["umount", str(self.mnt)], check=False)
        self.image.unlink(missing_ok=True)


def proc_write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def row_bytes(event) -> int:
    """What a reading is, as schema 8 stored it (the baseline of every variant, whatever its
    layout): meter name, time, field set, float64 values, counters as JSON, and its energy
    counter again (meter, time, text)."""
    n = len(event.meter) + 8 + 1 + 8 * len(event.values) + len(json.dumps(
        {k: str(v) for k, v in event.counters.items()}, separators=(",", ":")))
    kwh = event.counters.get("energy_kwh")
    return n + (len(event.meter) + 8 + len(str(kwh)) if kwh is not None else 0)


def stored_bytes(ledger) -> int:
    """The column values about to be committed, as the ledger stores them: its readings
    (meter id, time, field set, values, energy counter, other counters) and outbox points."""
    n = sum(1 + 8 + 1 + len(r[3]) + len(r[4] or "") + 1 + len(r[6]) for r in ledger._readings)
    n += sum(len(o[0]) + 1 + 8 + len(o[3]) + len(o[4] or "") for o in ledger._outbox)
    return n


def simulate_writes(fs: LoopFs | None, base: Path, name: str, minutes: float, warm: float, outbox: bool,
                    commit_s: float = 1.0, autocheckpoint: int | None = None, page_size: int | None = None,
                    wal_mb: float | None = None, history_h: float = 6, index_min: float = 60) -> dict:
    from gateway.sinks.schema import Encoder, SiteIndex
    from gateway.ledger import Ledger
    where = (fs.mnt if fs else base) / name
    where.mkdir(parents=True, exist_ok=True)
    db_path = where / "gw.db"
    cfg = site(db_path, outbox)
    if page_size is not None:
        con = sqlite3.connect(db_path)
        con.execute(f"PRAGMA page_size = {page_size}")
        con.execute("CREATE TABLE _x (a)")
        con.execute("DROP TABLE _x")
        con.close()
    from gateway.ledger.checkpoint import WAL_BYTES
    wal_bytes = int(wal_mb * MB) if wal_mb is not None else WAL_BYTES
    sim = {"now": 0.0}
    ledger = Ledger(db_path, commit_s, Encoder(SiteIndex.from_config(cfg)) if outbox else None, wal_bytes=wal_bytes,
                    monotonic=lambda: sim["now"])
    # The checkpoint thread's work is done here, after each commit, with its own connection: the
    # simulation runs hours in seconds, with no idle second between commits for the thread. The
    # indexer's batches likewise, every `index_min` simulated minutes.
    ledger.checkpointer.stop()
    ledger.indexer.stop()
    ckpt_db = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
    if autocheckpoint is not None:
        ledger._db.execute(f"PRAGMA wal_autocheckpoint = {autocheckpoint}")
    page = ledger._db.execute("PRAGMA page_size").fetchone()[0]
    try:
        values = Values(cfg)
        t0 = START.timestamp()
        # History first, in bulk: every meter's newest index and counter pages are then its own,
        # as in a ledger that has been running for a while (an empty one shares them: fewer writes).
        hist = poll_schedule(cfg, t0 - history_h * 3600, t0)
        for i, (t, meter) in enumerate(hist, 1):
            ledger.add(values.reading(meter, t))
            if i % 5000 == 0 or i == len(hist):
                ledger.flush()
                while ledger.outbox_depth:
                    ledger.outbox_confirmed(ledger.outbox_batch(50_000), int(t * 1e6))
        ledger.catch_up()
        # The log at the size it keeps in a ledger that has run for a while: a log that grows
        # costs a filesystem journal commit at every sync, one overwritten in place none.
        ledger._db.executescript(f"BEGIN; CREATE TABLE _pad (b); INSERT INTO _pad VALUES (zeroblob({wal_bytes * 3 // 2}));"
                                 " DROP TABLE _pad; COMMIT;")
        ledger._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        polls = poll_schedule(cfg, t0, t0 + (warm + minutes) * 60)
        measure_from = t0 + warm * 60
        k = 0
        stats_at = t0 + 60
        buses = [b.id for b in cfg.buses]
        counted = {"commits": 0, "deletes": 0, "rows_bytes": 0, "stored_bytes": 0, "frames": 0, "readings": 0,
                   "points": 0, "batches": 0}
        index_at = t0 + index_min * 60
        began = None
        flush_s: list[float] = []        # each commit, autocheckpoints included: the event loop waits that long
        last_frames = wal_frames(db_path)
        steps = int((warm + minutes) * 60 / commit_s)
        wall = time.perf_counter()
        for step in range(1, steps + 1):
            now = t0 + step * commit_s
            sim["now"] = now
            if began is None and now > measure_from:
                ledger._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
                os.sync()
                began = (proc_write_bytes(), fs.sectors_written() if fs else 0, ledger.commits,
                         ledger.checkpointer.checkpoints)
                last_frames = wal_frames(db_path)
                counted = {k2: 0 for k2 in counted}
            arrived = 0
            while k < len(polls) and polls[k][0] < now:
                reading = values.reading(polls[k][1], polls[k][0])
                ledger.add(reading)
                if began is not None:
                    counted["rows_bytes"] += row_bytes(reading)
                k += 1
                arrived += 1
            if outbox and now >= stats_at:
                stats_at += 60
                for b in buses:
                    ledger.add(GatewayStats(from_us(int(now * 1e6)), {"polls": step, "ok": step, "failures": 0,
                                                                      "timeouts": 0, "overruns": 0, "busy_s": 1.0}, bus=b))
                ledger.add(GatewayStats(from_us(int(now * 1e6)), {"readings_stored": step, "outbox_depth": 1}))
            if began is not None:
                counted["stored_bytes"] += stored_bytes(ledger)
                counted["readings"] += arrived
                counted["points"] += len(ledger._outbox)
            c0, before = time.perf_counter(), ledger.commits
            ledger._flush_logged(lazy=True)          # as Ledger.run does
            if began is not None and ledger.commits > before:
                flush_s.append(time.perf_counter() - c0)
            if now >= index_at:
                index_at += index_min * 60
                ledger.indexer.catch_up(whole_hours=True)     # what the worker does
                counted["batches"] += 1
            if autocheckpoint is None:
                ledger.checkpointer.step(ckpt_db)
            if outbox:   # the drainer: a batch once its oldest point is 5 s old, deleted when "confirmed"
                while ledger.outbox_depth:
                    rows = ledger.outbox_batch(5000)
                    oldest = ledger.outbox_ts_ms(rows[0][0])
                    if len(rows) < 5000 and now * 1000 - oldest < 5000:
                        break
                    ledger.outbox_confirmed(rows, int(now * 1e6))
                    if began is not None:
                        counted["deletes"] += 1
            frames = wal_frames(db_path)
            if began is not None:
                counted["frames"] += frames - last_frames if frames >= last_frames else frames
            last_frames = frames
        ledger._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        os.sync()
        wrote = proc_write_bytes() - began[0]
        device = (fs.sectors_written() - began[1]) * 512 if fs else None
        commits = ledger.commits - began[2]
        checkpoints = ledger.checkpointer.checkpoints - began[3]
    finally:
        ckpt_db.close()
        ledger.close()
        shutil.rmtree(where, ignore_errors=True)       # the next variant's room on the small filesystem
    day = 1440 / minutes
    res = {
        "variant": name, "outbox": outbox, "commit_interval_s": commit_s, "wal_autocheckpoint": autocheckpoint,
        "checkpoint_wal_mb": None if autocheckpoint is not None else round(wal_bytes / MB, 1),
        "checkpoints_per_day": round(checkpoints * 1440 / minutes) if autocheckpoint is None else None,
        "page_size": page, "simulated_min": minutes, "readings_per_day": round(counted["readings"] * day),
        "commits_per_day": round(commits * day),
        "rows_mb_per_day": round(counted["rows_bytes"] * day / MB, 1),
        "stored_rows_mb_per_day": round(counted["stored_bytes"] * day / MB, 1),
        "index_batches_per_day": round(counted["batches"] * day),
        "wal_mb_per_day": round(counted["frames"] * (page + 24) * day / MB, 1),
        "process_write_mb_per_day": round(wrote * day / MB, 1),
        "device_write_mb_per_day": round(device * day / MB, 1) if device is not None else None,
        "wall_s": round(time.perf_counter() - wall, 1),
        "commit_ms_p50": round(pct(flush_s, 50) * 1000, 2), "commit_ms_max": round(max(flush_s) * 1000, 1),
    }
    written = res["device_write_mb_per_day"] or res["process_write_mb_per_day"]
    res["write_amplification"] = round(written / res["rows_mb_per_day"], 1) if res["rows_mb_per_day"] else None
    res["bytes_per_reading_written"] = round(written * MB / res["readings_per_day"]) if res["readings_per_day"] else None
    return res


# ---- a day in bulk, sizes, retention -------------------------------------------------------------------

def table_sizes(db: sqlite3.Connection) -> dict[str, dict]:
    rows = db.execute("SELECT name, count(*), sum(pgsize), sum(payload), sum(unused) FROM dbstat GROUP BY name")
    return {n: {"pages": p, "bytes": b, "payload": pl, "unused": u} for n, p, b, pl, u in rows}


def write_day(base: Path) -> tuple[object, object, dict]:
    from gateway.ledger import Ledger
    db_path = base / "day" / "gw.db"
    cfg = site(db_path, False)
    ledger = Ledger(db_path, 1.0)
    values = Values(cfg, seed=2)
    t0 = START.timestamp()
    polls = poll_schedule(cfg, t0, t0 + 86400)
    wall = time.perf_counter()
    step = 300
    k = 0
    for end in range(int(t0) + step, int(t0) + 86400 + step, step):
        while k < len(polls) and polls[k][0] < end:
            ledger.add(values.reading(polls[k][1], polls[k][0]))
            k += 1
        ledger.flush()
    ledger.catch_up()
    rng = random.Random(3)
    day_us = to_us(START)
    at = lambda: from_us(day_us + rng.randrange(86_400_000_000))  # noqa: E731
    for i in range(DAY_SWIPES):
        ledger.add(CardSwipe(f"gate-{i % 4}-in", f"gate-{i % 4}", "in", at(), f"{2000000000 + i % 12000:010d}",
                             f"{rng.getrandbits(64):016x}", "resident", "张三", f"B{i % 64:02d}-{i % 6}-{i % 30:03d}",
                             "owner"))
    for i in range(DAY_DOORS):
        ledger.add(DoorEvent(f"gate-{i % 4}", "opened" if i % 2 else "closed", at(), "controller"))
    for i in range(DAY_CHECKINS):
        ts = at()
        ledger.add(PatrolCheckin(f"pr-{i % 2}", f"cp-{i % 40}", f"{rng.getrandbits(32):08x}", "李四",
                                 f"{rng.getrandbits(64):016x}", ts, ts, "online"))
    for i in range(DAY_ALERT_CHANGES):
        ts = at()
        a = Alert(f"rule/src{i}/{to_us(ts)}", "voltage-high", "threshold", f"B{i % 64:02d}-stair", "warning",
                  "active", "电压过高 245.1 V", "voltage high 245.1 V", ts, ts, value=245.1,
                  details={"field": "voltage_v", "limit": 242.0})
        ledger.add(AlertChange(a, "raised"))
    ledger.flush()
    ledger._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    info = {"readings": len(polls), "write_s": round(time.perf_counter() - wall, 1)}
    return cfg, ledger, info


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q / 100))] if s else 0.0


def size_and_retention(base: Path, res: dict) -> None:
    from gateway.ledger.retention import Retention
    # ---- 2. size per day ----
    cfg, ledger, info = write_day(base)
    sizes = table_sizes(ledger._db)
    n = info["readings"]
    out(f"2. a day of the site in one ledger: {n:,} readings ({info['write_s']} s to write)")
    groups = {"readings": ["reading_log", "readings_by_meter", "meters"], "energy": ["energy"],
              "events": ["swipes", "swipes_ts", "door_events", "door_events_ts", "patrol_checkins",
                         "patrol_checkins_ts", "sqlite_autoindex_patrol_checkins_1", "alerts", "alerts_state",
                         "sqlite_autoindex_alerts_1", "alert_history", "alert_history_ts"]}
    per = {}
    for g, names in groups.items():
        b = sum(sizes.get(x, {}).get("bytes", 0) for x in names)
        pl = sum(sizes.get(x, {}).get("payload", 0) for x in names)
        per[g] = {"bytes": b, "payload": pl}
    for x, s in sorted(sizes.items(), key=lambda kv: -kv[1]["bytes"])[:6]:
        out(f"  {x:<22} {s['bytes'] / MB:>7.1f} MB in {s['pages']:>6,} pages, payload {s['payload'] / MB:6.1f} MB")
    res["day"] = {"readings": n, "tables": {g: {"mb": round(v["bytes"] / MB, 1), "payload_mb": round(v["payload"] / MB, 1)}
                                            for g, v in per.items()},
                  "bytes_per_reading": round((per["readings"]["bytes"] + per["energy"]["bytes"]) / n, 1),
                  "readings_table_bytes_per_reading": round(per["readings"]["bytes"] / n, 1),
                  "energy_bytes_per_reading": round(per["energy"]["bytes"] / n, 1)}
    out(f"  per reading in the ledger: {res['day']['bytes_per_reading']} B ({res['day']['readings_table_bytes_per_reading']}"
        f" in readings and its index, {res['day']['energy_bytes_per_reading']} in energy); events of a day "
        f"({DAY_SWIPES:,} swipes, {DAY_DOORS:,} door events, {DAY_CHECKINS} checkins, {DAY_ALERT_CHANGES} alert "
        f"changes): {per['events']['bytes'] / MB:.1f} MB")

    # ---- 3. retention ----
    now = START + timedelta(days=62 + 2)
    ret = Retention(ledger, cfg, batch_rows=2000)
    wall = time.perf_counter()
    run = asyncio.run(ret.run_once(now))
    took = time.perf_counter() - wall
    after = table_sizes(ledger._db)
    energy_thin = after.get("energy", {}).get("bytes", 0)
    free_pages = ledger._db.execute("PRAGMA freelist_count").fetchone()[0]
    out(f"3. retention 62 days later: {run.line()}")
    out(f"  batches of 2000 rows: p50 {pct(ret.pauses, 50) * 1000:.1f} ms, p99 {pct(ret.pauses, 99) * 1000:.1f} ms, "
        f"longest {run.longest_s * 1000:.1f} ms (in the commit thread: a commit waits that long at most); {took:.1f} s in all "
        f"(the thinning check runs in a worker thread)")
    out(f"  energy of the day: {per['energy']['bytes'] / MB:.2f} MB -> {energy_thin / MB:.2f} MB thinned "
        f"(payload {after.get('energy', {}).get('payload', 0) / MB:.2f} MB); {free_pages * ledger.page_size / MB:.0f} MB of "
        f"freed pages for the next rows")
    st = cfg.storage
    raw_day = per["readings"]["bytes"] + per["energy"]["bytes"]
    year = (st.raw_days * raw_day + (365 - st.raw_days) * energy_thin + 365 * per["events"]["bytes"]
            + 4 * MB + raw_day / 24)            # + the WAL and an hour of freed pages waiting for reuse
    no_ret = 365 * (raw_day + per["events"]["bytes"])
    ten = (st.raw_days * raw_day + (round(st.energy_years * 365) - st.raw_days) * energy_thin
           + st.events_days * per["events"]["bytes"])
    res["retention"] = {"removed": dict(run.removed), "batches": run.batches,
                        "longest_batch_ms": round(run.longest_s * 1000, 1),
                        "p99_batch_ms": round(pct(ret.pauses, 99) * 1000, 1), "run_s": round(took, 1),
                        "energy_mb_per_day_raw": round(per["energy"]["bytes"] / MB, 2),
                        "energy_mb_per_day_thinned": round(energy_thin / MB, 2),
                        "thinned_months": run.thinned_months, "kept_raw": run.raw_months}
    res["year"] = {"ledger_gb_after_a_year": round(year / 1024 / MB, 2),
                   "ledger_gb_after_a_year_without_retention": round(no_ret / 1024 / MB, 1),
                   "ledger_gb_steady_state_10_years": round(ten / 1024 / MB, 2),
                   "how": "projected from the per-day sizes: raw_days of readings and whole counters, the rest "
                          "of the year thinned counters, a year of events"}
    out(f"  ledger after a year with retention: {year / 1024 / MB:.2f} GB (without: {no_ret / 1024 / MB:.1f} GB); "
        f"after {st.energy_years:g} years (counters at their limit): {ten / 1024 / MB:.2f} GB")
    ledger.close()


def loop_lag(where: Path | None) -> dict | None:
    """bench/loop_lag.py's throttled run (its own process: it needs root, mounts its own loop
    device and lifts its blkio rule when it ends): its last line's JSON, the run's lines shown."""
    script = Path(__file__).with_name("loop_lag.py")
    cmd = [sys.executable, str(script), "--only", "throttled"] + (["--dir", str(where)] if where else [])
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        out(f"  | {line}")
    try:
        found = json.loads(lines[-1])
        lag = found["loop_lag_ms_max"]
    except (IndexError, ValueError, KeyError, TypeError):
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        out(f"  loop lag: bench/loop_lag.py gave no result (exit {done.returncode}: {why}); loop_lag_ms_max stays null")
        return None
    out(f"  loop lag on a throttled disk (bench/loop_lag.py): longest {lag} ms")
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=360, help="simulated minutes measured per variant")
    ap.add_argument("--warm", type=float, default=10, help="simulated minutes before measuring")
    ap.add_argument("--quick", action="store_true", help="defaults and outbox only, 20 minutes")
    ap.add_argument("--only", default="", help="comma-separated variants of part 1: " + ", ".join(VARIANTS))
    ap.add_argument("--writes-only", action="store_true", help="part 1 only")
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--lag", action="store_true",
                    help="also the event loop's longest lag on a throttled disk (bench/loop_lag.py, root)")
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.warm = 120, 5
    base = Path(tempfile.mkdtemp(prefix="bench-storage-", dir=args.dir))
    res: dict = {"site": "edge_config/site.example.yaml", "meters": 145}
    try:
        # ---- 1. writes per day ----
        variants = [(n, VARIANTS[n]) for n in (args.only.split(",") if args.only else DEFAULT_VARIANTS)]
        if args.quick:
            variants = variants[:2]
        fs = None
        try:
            fs = LoopFs(base, 1024).__enter__()
            how = f"ext4 on {fs.dev} (noatime), device writes incl. journal"
        except (OSError, subprocess.CalledProcessError) as e:
            how = f"no loop mount ({e}): process write_bytes only"
            fs = None
        out(f"1. SD-card writes per day, {args.minutes:.0f} simulated minutes per variant after {args.warm:.0f} "
            f"of warm-up, extrapolated to 24 h; {how}")
        runs = []
        try:
            for name, kw in variants:
                r = simulate_writes(fs, base, name, args.minutes, args.warm, **kw)
                runs.append(r)
                dev = f"{r['device_write_mb_per_day']:>7.0f}" if r["device_write_mb_per_day"] is not None else "      -"
                out(f"  {name:<27} {r['readings_per_day']:>7,} readings/day {r['commits_per_day']:>6,} commits/day  "
                    f"rows {r['rows_mb_per_day']:>6.0f} MB  WAL {r['wal_mb_per_day']:>6.0f} MB  process "
                    f"{r['process_write_mb_per_day']:>6.0f} MB  device {dev} MB/day  "
                    f"(x{r['write_amplification']} of the rows, {r['bytes_per_reading_written']:,} B/reading); "
                    f"commit p50 {r['commit_ms_p50']} ms, longest {r['commit_ms_max']} ms")
        finally:
            if fs:
                fs.__exit__(None, None, None)
        res["writes"] = runs
        tbw = CARD_GB * CARD_PE_CYCLES / 1000
        res["endurance"] = {"card_gb": CARD_GB, "pe_cycles": CARD_PE_CYCLES, "card_tbw": tbw,
                            "card_internal_waf": CARD_WAF, "years": {}}
        for r in runs:
            per_day = r["device_write_mb_per_day"] or r["process_write_mb_per_day"]
            years = tbw * 1e6 / CARD_WAF / (per_day * 365)
            res["endurance"]["years"][r["variant"]] = round(years, 1)
        out(f"  endurance: a {CARD_GB} GB card of {CARD_PE_CYCLES} P/E cycles takes {tbw:.0f} TB of flash writes; with "
            f"a card-internal amplification of {CARD_WAF} for small synced writes that lasts "
            + ", ".join(f"{y} years ({v})" for v, y in res["endurance"]["years"].items()))

        if not args.writes_only:
            size_and_retention(base, res)
        # The throttled-disk measurement is its own bench (bench/loop_lag.py); null unless asked for.
        lag = loop_lag(args.dir) if args.lag else None
        res["loop_lag_ms_max"] = lag["loop_lag_ms_max"] if lag else None
        if lag:
            res["loop_lag"] = {k: lag.get(k) for k in ("loop_lag_ms_p99", "seconds", "commits", "checkpoints",
                                                       "index_batches", "throttle", "knobs")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(res, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
