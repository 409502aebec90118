"""Loop lag: how late the event loop runs while the ledger writes to a slow SD card.

The real `Ledger` runs as the gateway runs it: `Ledger.run` on the event loop (a commit every
`commit_interval_s`), its checkpoint thread and its indexer thread with their own connections.
The reference site's readings (145 meters on 7 buses, 144 read every 30 s and MAIN every 15 s)
are published on a `Hub` at the times the bus schedulers would poll them (bench/storage.py's
`poll_schedule`: a bus's meters back to back, so they arrive in bursts), in real time. A ticker
task sleeps `TICK_S` (5 ms) over and over and records how late it wakes: that is how long
anything else on the loop (a poll's timeout, a web request, a rule) would have waited.

The ledger lives on a small ext4 on a loop device (bench/storage.py's `LoopFs`, mounted
noatime). Each run is made twice in the same process: on that device as it is (baseline), and
with the device throttled to a cheap SD card (`--bps`, `--iops`; default 1.5 MB/s and 400
I/O a second). The throttle is a cgroup v1 blkio rule on the loop device in the root blkio
cgroup: every write sent to that device is throttled, whoever sends it (the process's own
fdatasync, the kernel's writeback threads, ext4's journal thread). A rule in a child cgroup
holding only this process throttles what it writes in fsync but not the journal commits nor
background writeback (measured: syncs then take about 1 ms); cgroup v2's `io.max` and dm-delay
are not available on this machine. The rule is removed when the bench ends. Before each run a
short disk check prints what the device does: a 4 KiB overwrite + fdatasync (the WAL's commit,
in place), a 4 KiB append + fsync (a file that grows: a journal commit), and 4 MB written
sequentially + fsync.

So that the short run contains what a running box does every hour (and its worst moment):
- history: `--history-h` hours of readings written first, indexed into their per-meter form
  except the last hour, and the run's readings start `--lead-s` before an hour boundary, so the
  indexer's hourly batch (a whole hour, 17,500 readings) falls inside the run: the indexer
  wakes every `--index-every-s` (the ledger's `index={"every_s": ...}`; 3,600 on a box);
- a full checkpoint: the WAL is filled to `--prefill-mb` below the checkpoint threshold
  (`--wal-mb`, the ledger's `wal_bytes`, default as on the box) before the run, with pages the
  checkpoint must copy (a table of zeros written and dropped); the run's commits and the batch
  push it over, and the checkpoint thread copies them all into the database file while the
  commits go on. Every page of the pad is distinct, so this checkpoint writes at least as much
  as a real one of that size (whose log holds many versions of the same pages).

While the loop is late by more than `STALL_MS`, a watchdog thread samples where the loop's
thread is (its innermost Python frames) and whether the checkpoint or indexer thread is busy:
the stalls are printed by cause.

Needs root (loop mount, blkio rule). The last line printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from storage import MB, START, LoopFs, Values, poll_schedule, site   # bench/storage.py's helpers

from gateway.hub import Hub  # noqa: E402
from gateway.ledger.checkpoint import WAL_BYTES  # noqa: E402
from gateway.ledger import Ledger  # noqa: E402

TICK_S = 0.005
STALL_MS = 15.0                  # the watchdog samples the loop's thread when it is this late
TARGET_MS = 20.0                 # issue 13: the event loop's longest lag under 20 ms
BLKIO = Path("/sys/fs/cgroup/blkio")
HOUR_S = 3600


def out(line: str = "") -> None:
    print(line, flush=True)


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * q / 100))] if s else 0.0


# ---- the slow disk ----------------------------------------------------------------------------------

class Throttle:
    """A blkio (cgroup v1) write limit on one block device, for every task (the root cgroup's rule)."""

    def __init__(self, dev: str, bps: int, iops: int):
        self.majmin = Path(f"/sys/block/{dev}/dev").read_text().strip()
        self.bps, self.iops = bps, iops

    def _set(self, bps: int, iops: int) -> None:
        (BLKIO / "blkio.throttle.write_bps_device").write_text(f"{self.majmin} {bps}\n")
        (BLKIO / "blkio.throttle.write_iops_device").write_text(f"{self.majmin} {iops}\n")

    def __enter__(self):
        os.sync()                     # the baseline's dirty pages are not the throttled run's
        self._set(self.bps, self.iops)
        return self

    def __exit__(self, *exc):
        self._set(0, 0)               # 0: no limit (the rule is removed)


def disk_check(where: Path) -> dict:
    """What the device does now: syncs of a 4 KiB overwrite (fdatasync, as a WAL kept at its size),
    of a 4 KiB append (fsync of a growing file: a journal commit), and sequential throughput."""
    path = where / "disk-check.dat"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, 4 * MB)
        os.pwrite(fd, b"\1" * (4 * MB), 0)
        os.fsync(fd)
        block, rng = os.urandom(4096), random.Random(1)
        over, grow = [], []
        for i in range(40):
            os.pwrite(fd, block, rng.randrange(1024) * 4096)
            t = time.perf_counter()
            os.fdatasync(fd)
            over.append(time.perf_counter() - t)
            time.sleep(0.02)
        for i in range(20):
            os.pwrite(fd, block, 4 * MB + i * 4096)
            t = time.perf_counter()
            os.fsync(fd)
            grow.append(time.perf_counter() - t)
            time.sleep(0.02)
        time.sleep(1.0)               # an idle second, as between commits
        data = os.urandom(4 * MB)
        t = time.perf_counter()
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        seq = time.perf_counter() - t
    finally:
        os.close(fd)
        path.unlink()
    return {"overwrite_fdatasync_ms_p50": round(pct(over, 50) * 1000, 1),
            "overwrite_fdatasync_ms_max": round(max(over) * 1000, 1),
            "append_fsync_ms_p50": round(pct(grow, 50) * 1000, 1),
            "append_fsync_ms_max": round(max(grow) * 1000, 1),
            "sequential_mb_s": round(4 / seq, 2)}


# ---- the ledger before the run ------------------------------------------------------------------------

def prepare(db_path: Path, cfg, values: Values, t0: float, history_h: float, prefill_mb: float) -> sqlite3.Connection:
    """History, indexed but for its last hour; the WAL filled with `prefill_mb` MB of pages not yet
    in the database file. Returns a connection that must stay open until the measured ledger is
    open: the last connection to close would checkpoint the log."""
    keeper = sqlite3.connect(db_path, isolation_level=None)
    keeper.execute("PRAGMA wal_autocheckpoint=0")    # its pad must stay in the log
    prep = Ledger(db_path, 1.0, wal_bytes=1 << 40)       # no checkpoint while writing the history
    prep.checkpointer.stop()
    prep.indexer.stop()
    hour = (t0 // HOUR_S + 1) * HOUR_S      # the hour the run crosses
    for lo, hi, index in ((t0 - history_h * HOUR_S, hour - HOUR_S, True), (hour - HOUR_S, t0, False)):
        polls = poll_schedule(cfg, lo, hi)
        for i, (t, meter) in enumerate(polls, 1):
            prep.add(values.reading(meter, t))
            if i % 5000 == 0 or i == len(polls):
                prep.flush()
        if index:
            prep.catch_up()
    keeper.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    if prefill_mb > 0:
        keeper.executescript(f"BEGIN; CREATE TABLE _pad (b); WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 "
                             f"FROM n WHERE i < {int(prefill_mb * MB / 1048)}) INSERT INTO _pad SELECT zeroblob(900) "
                             f"FROM n; DROP TABLE _pad; COMMIT;")
    prep.close()
    return keeper


def wal_mb(db_path: Path) -> float:
    try:
        return os.path.getsize(f"{db_path}-wal") / MB
    except OSError:
        return 0.0


# ---- the measured run -----------------------------------------------------------------------------------

class Watchdog(threading.Thread):
    """Samples the loop's thread while the loop is late: where it is, and what the ledger's
    worker threads are doing meanwhile."""

    def __init__(self, loop_thread: int):
        super().__init__(name="loop-lag-watchdog", daemon=True)
        self.loop_thread = loop_thread
        self.beat = time.perf_counter()
        self.samples: Counter = Counter()
        self.spans: list[tuple[str, float, float]] = []    # (worker, from, to) while it was not idle
        self.stop = False

    @staticmethod
    def _where(frame, depth: int = 3) -> str:
        names = []
        while frame is not None and len(names) < depth:
            code = frame.f_code
            if "asyncio" not in code.co_filename:
                names.append(f"{Path(code.co_filename).name}:{frame.f_lineno}({code.co_name})")
            frame = frame.f_back
        return " < ".join(names) or "asyncio"

    def _busy(self, frames: dict, name: str) -> str:
        for t in threading.enumerate():
            if t.name == name and t.ident in frames:
                f = frames[t.ident]
                stack = []
                while f is not None:
                    stack.append(f.f_code.co_name)
                    f = f.f_back
                if "wait" in stack[:2]:
                    return ""
                return name.split("-")[-1]
        return ""

    def run(self) -> None:
        was: dict[str, float | None] = {"checkpoint": None, "indexer": None}
        while not self.stop:
            time.sleep(0.002)
            frames = sys._current_frames()
            now = time.perf_counter()
            busy = [b for b in (self._busy(frames, "ledger-checkpoint"), self._busy(frames, "ledger-indexer")) if b]
            for w, since in was.items():          # the workers' busy spans, for the timeline
                if w in busy and since is None:
                    was[w] = now
                elif w not in busy and since is not None:
                    self.spans.append((w, since, now))
                    was[w] = None
            if (now - self.beat) * 1000 < STALL_MS:
                continue
            main = frames.get(self.loop_thread)
            if main is not None:
                self.samples[(self._where(main), "+".join(busy) or "idle")] += 1
        self.spans.extend((w, since, time.perf_counter()) for w, since in was.items() if since is not None)


async def measure(db_path: Path, cfg, values: Values, t0: float, seconds: float, wal_bytes: int,
                  index_every_s: float) -> dict:
    loop = asyncio.get_running_loop()
    ledger = Ledger(db_path, 1.0, wal_bytes=wal_bytes, index={"every_s": index_every_s})
    hub = Hub()
    writer = asyncio.create_task(ledger.run(hub))
    lags: list[float] = []
    late: list[tuple[float, float]] = []          # (seconds into the run, lag ms) of lags over STALL_MS
    dog = Watchdog(threading.get_ident())
    dog.start()
    begin = loop.time()
    polls = poll_schedule(cfg, t0, t0 + seconds)

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            dog.beat = t
            await asyncio.sleep(TICK_S)
            now = time.perf_counter()
            dog.beat = now
            lag = (now - t - TICK_S) * 1000
            lags.append(lag)
            if lag > STALL_MS:
                late.append((now - began, lag))

    async def buses() -> None:
        for t, meter in polls:
            wait = (t - t0) - (loop.time() - begin)
            if wait > 0:
                await asyncio.sleep(wait)
            hub.publish(values.reading(meter, t))

    began = time.perf_counter()
    tick = asyncio.create_task(ticker())
    wal_peak = 0.0
    try:
        feed = asyncio.create_task(buses())
        while loop.time() - begin < seconds:
            await asyncio.sleep(0.5)
            wal_peak = max(wal_peak, wal_mb(db_path))
        await feed
    finally:
        tick.cancel()
        writer.cancel()
        await asyncio.gather(tick, writer, return_exceptions=True)
        dog.stop = True
        dog.join()
        res = {"seconds": round(time.perf_counter() - began, 1), "readings": len(polls), "commits": ledger.commits,
               "readings_written": ledger.readings_written, "checkpoints": ledger.checkpointer.checkpoints,
               "index_batches": ledger.indexer.batches, "indexed_readings": ledger.indexer.moved,
               "wal_mb_peak": round(wal_peak, 1)}
        ledger.close()
    lag_ms = {"loop_lag_ms_max": round(max(lags), 1), "loop_lag_ms_p99": round(pct(lags, 99), 2),
              "loop_lag_ms_p50": round(pct(lags, 50), 2), "ticks": len(lags),
              "lags_over_20ms": sum(1 for x in lags if x > TARGET_MS)}
    worst = sorted(late, key=lambda x: -x[1])[:8]
    busy = [{"worker": w, "from_s": round(a - began, 1), "to_s": round(b - began, 1)} for w, a, b in sorted(
        dog.spans, key=lambda x: x[1]) if b - a > 0.05]
    stalls = [{"where": w, "workers": b, "samples": n} for (w, b), n in dog.samples.most_common(8)]
    return {**lag_ms, **res, "worst": [{"at_s": round(a, 1), "lag_ms": round(b, 1)} for a, b in sorted(worst)],
            "busy": busy,
            "stalls": stalls}


def run(fs: LoopFs, name: str, args, throttle: Throttle | None) -> dict:
    where = fs.mnt / name
    where.mkdir()
    db_path = where / "gw.db"
    cfg = site(db_path, False)
    values = Values(cfg)
    hour = START.timestamp() // HOUR_S * HOUR_S + HOUR_S
    t0 = hour - args.lead_s
    wal_bytes = int(args.wal_mb * MB)
    prefill = max(0.0, args.wal_mb - args.prefill_mb)
    wall = time.perf_counter()
    keeper = prepare(db_path, cfg, values, t0, args.history_h, prefill)
    out(f"  {name}: {args.history_h:g} h of history written in {time.perf_counter() - wall:.0f} s; WAL "
        f"{wal_mb(db_path):.1f} MB waiting for the first checkpoint (at {args.wal_mb:g} MB)")
    os.sync()
    ctx = throttle if throttle is not None else _Nothing()
    with ctx:
        check = disk_check(where)
        out(f"  {name}: disk: 4 KiB overwrite + fdatasync p50 {check['overwrite_fdatasync_ms_p50']} ms (max "
            f"{check['overwrite_fdatasync_ms_max']}), 4 KiB append + fsync p50 {check['append_fsync_ms_p50']} ms "
            f"(max {check['append_fsync_ms_max']}), 4 MB sequential + fsync {check['sequential_mb_s']} MB/s")
        try:
            res = asyncio.run(measure(db_path, cfg, values, t0, args.seconds, wal_bytes, args.index_every_s))
        finally:
            keeper.close()
        os.sync()                     # the run's writes leave the device before the limit goes
    res = {"variant": name, **res, "disk": check}
    out(f"  {name}: {res['seconds']} s, {res['readings_written']:,} readings in {res['commits']} commits, "
        f"{res['checkpoints']} checkpoint passes, {res['index_batches']} index batches ({res['indexed_readings']:,} "
        f"readings moved), WAL up to {res['wal_mb_peak']} MB")
    out(f"  {name}: loop lag p50 {res['loop_lag_ms_p50']} ms, p99 {res['loop_lag_ms_p99']} ms, longest "
        f"{res['loop_lag_ms_max']} ms; {res['lags_over_20ms']} of {res['ticks']:,} ticks over {TARGET_MS:g} ms")
    if res["worst"]:
        out("    longest lags (s into the run: ms): " + ", ".join(f"{w['at_s']}: {w['lag_ms']}" for w in res["worst"]))
    if res["busy"]:
        out("    workers busy (s into the run): " + ", ".join(f"{b['worker']} {b['from_s']}-{b['to_s']}" for b in res["busy"]))
    for s in res["stalls"]:
        out(f"    late loop sampled {s['samples']:>4}x in {s['where']}  (busy: {s['workers']})")
    return res


class _Nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=150, help="real seconds measured per run")
    ap.add_argument("--bps", type=int, default=1_572_864, help="throttled write bytes a second (1.5 MiB)")
    ap.add_argument("--iops", type=int, default=400, help="throttled write I/Os a second")
    ap.add_argument("--wal-mb", type=float, default=WAL_BYTES / MB, help="the ledger's checkpoint threshold")
    ap.add_argument("--prefill-mb", type=float, default=0.5,
                    help="the WAL starts this far below the threshold (0: no prefill)")
    ap.add_argument("--index-every-s", type=float, default=60, help="the indexer's period (3600 on a box)")
    ap.add_argument("--lead-s", type=float, default=30, help="the run starts this long before an hour boundary")
    ap.add_argument("--history-h", type=float, default=6)
    ap.add_argument("--only", choices=["baseline", "throttled"], default=None)
    ap.add_argument("--dir", type=Path, default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("loop_lag: needs root (a loop-mounted ext4 and a blkio rule on its device)")
    # a kill must still lift the rule: the next user of this loop device would be throttled too
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("loop_lag: terminated"))
    base = Path(tempfile.mkdtemp(prefix="bench-loop-lag-", dir=args.dir))
    res: dict = {"site": "edge_config/site.example.yaml", "meters": 145, "tick_ms": TICK_S * 1000,
                 "target_ms": TARGET_MS, "runs": []}
    try:
        with LoopFs(base, 512) as fs:
            throttle = Throttle(fs.dev, args.bps, args.iops)
            res["throttle"] = {"how": "cgroup v1 blkio rule on the loop device, root cgroup (all writers)",
                               "device": f"{fs.dev} ({throttle.majmin})", "write_bps": args.bps,
                               "write_iops": args.iops}
            res["knobs"] = {"wal_mb": args.wal_mb, "prefill_below_mb": args.prefill_mb,
                            "index_every_s": args.index_every_s, "lead_s": args.lead_s, "history_h": args.history_h,
                            "commit_interval_s": 1.0}
            out(f"Loop lag with the ledger on ext4 on {fs.dev}, {args.seconds:g} s per run; throttled: "
                f"{args.bps / MB:.2f} MiB/s and {args.iops} writes/s (blkio rule on {throttle.majmin}); load "
                f"average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
            for name in ("baseline", "throttled"):
                if args.only and args.only != name:
                    continue
                res["runs"].append(run(fs, name, args, throttle if name == "throttled" else None))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    for r in res["runs"]:
        r.pop("worst", None)
        r.pop("busy", None)
    top = next((r for r in res["runs"] if r["variant"] == "throttled"), res["runs"][-1] if res["runs"] else None)
    if top:
        for k in ("loop_lag_ms_max", "loop_lag_ms_p99", "seconds", "commits", "checkpoints", "index_batches"):
            res[k] = top[k]
    print(json.dumps(res, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
