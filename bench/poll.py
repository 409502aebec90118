"""Polling benchmark: the gateway's Modbus path against a plain pymodbus loop and the wire's limit.

    python3 bench/poll.py [--seconds 8] [--rounds 4] [--warmup 0.5] [--cycles 2] [--no-plain-bus]
                          [--profile N]

Prints human-readable lines, then as the LAST line one JSON object:

tcp_100_meters
    100 CHINT DDSU666 on 5 Modbus TCP buses of 20 units (one serial server per building
    group), simulated in another process on 127.0.0.1, no line-speed emulation. Gateway side:
    the real path, `gateway.runtime.Gateway` (hub, SQLite ledger in a temporary directory, one
    `ModbusBus` scheduler per bus) with every meter due back to back (its `poll_s` replaced by
    1 ms after the site file was validated, so the buses never idle; the overruns this counts
    are expected). Baseline: a plain pymodbus loop, one `AsyncModbusTcpClient` (retries=0) per
    bus, each task looping over its 20 units doing exactly the reads of the gateway's plan
    (`plan_for_model`: same function, address, count) and decoding every field with
    `client.convert_from_registers` (times scale plus offset, into a dict). Both run in this
    process against the same simulator process, for the same wall time after the same
    warm-up; CPU is `time.process_time()` of this process over the window (client side only:
    the simulators' CPU is in the other process) and a reading is a completed poll of a meter
    (gateway: `MeterStats.ok`, which the ledger stores; plain: a meter whose reads all
    answered). `--seconds` per side is split into `--rounds` short rounds run alternately
    (gateway, plain, plain, gateway, ...): this VM's CPU speed swings by up to 2x within
    seconds (other tenants), so short interleaved rounds let both sides see the same
    conditions. Reported: the better figure of each side over its rounds (`ratio` compares
    those), the figures pooled over all rounds (also user time only, without the kernel's
    loopback work, which swings most with the machine's load), and the median ratio of
    adjacent rounds; every round is printed with the CPU other processes used meanwhile
    (/proc/stat). `machine.quiet` is false, and a warning printed, when others used more than
    a quarter of a core in some round or one side's rounds differ by more than 1.35x.
emulated_bus_20_dtsu666
    20 CHINT DTSU666 on one `modbus_rtu` bus over a pseudo-terminal, the simulator emulating
    the line time of 9600 8N1 (`--line-speed`). The gateway's `ModbusBus` polls them back to
    back; the cycle is the time for 20 consecutive readings, measured from the end of the first
    cycle (which includes opening the port) over `--cycles` further cycles. The theoretical
    minimum is 20 x `line_time_s(plan_for_model(dtsu666), 9600, 10)` (meters answering
    instantly, `shared/domain/meters.md`). For context a plain pymodbus `AsyncModbusSerialClient`
    loop doing the same reads is timed over one cycle (skip it with --no-plain-bus).
requests_per_poll
    `len(plan_for_model(model))` with the default bus gap (32) for every shipped model.
peak_rss_mib
    `ru_maxrss` of this process (the simulators run in their own processes).

House rules: the figures are printed and compared with a baseline measured in the same run;
nothing here asserts timing. `targets_met` only reports.

The simulators are started as `python -m simulators SITE_FILE` subprocesses on temporary site
files; they listen on 127.0.0.1 (ephemeral ports) or a local pty, and the bench refuses any
other address.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import logging
import os
import pstats
import resource
import select
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient  # noqa: E402
from pymodbus import FramerType  # noqa: E402

from gateway.config import SiteConfig, parse_site  # noqa: E402
from gateway.drivers.modbus import ModbusBus  # noqa: E402
from gateway.drivers.modbus_plan import ReadRequest, line_time_s, plan_for_model  # noqa: E402
from gateway.events import Reading  # noqa: E402
from gateway.meter_models import SHIPPED_MODELS_DIR, load_models  # noqa: E402
from gateway.runtime import Gateway  # noqa: E402

TARGETS = {"cpu_ratio_max": 1.3, "bus_ratio_max": 1.15, "requests_max_chint": 2}
SITE = {"id": "bench", "name": "poll benchmark", "timezone": "Asia/Shanghai",
        "latitude": 44.15, "longitude": 125.83}
TCP_BUSES, UNITS_PER_BUS = 5, 20
BUS_METERS = 20
FAST_POLL_S = 0.001  # "due continuously": far below one cycle of a bus
LOCAL_HOST = "127.0.0.1"

def out(line: str = "") -> None:
    print(line, flush=True)


# ---- simulator subprocess ---------------------------------------------------------------------

def _die_with_parent() -> None:
    """In the child: get SIGTERM if the bench dies without cleaning up (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Simulator:
    """`python -m simulators SITE_FILE` in its own process; `where[bus_id]` is what it printed."""

    def __init__(self, site_file: Path, line_speed: bool, log_file: Path):
        self.site_file, self.line_speed, self.log_file = site_file, line_speed, log_file
        self.proc: subprocess.Popen | None = None
        self.where: dict[str, str] = {}

    def __enter__(self) -> "Simulator":
        args = [sys.executable, "-m", "simulators", str(self.site_file)]
        if self.line_speed:
            args.append("--line-speed")
        self._err = open(self.log_file, "wb")
        self.proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._err,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        try:
            self._wait_ready(timeout=30.0)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        buf = b""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"simulator not ready within {timeout:g} s ({self._stderr_tail()})")
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"simulator exited ({self._stderr_tail()})")
            buf += chunk
            lines = buf.decode(errors="replace").splitlines()
            if "ready (Ctrl-C to stop)" in lines:
                break
        for line in lines:
            parts = line.split("\t")
            if len(parts) == 4:
                self.where[parts[0]] = parts[2]

    def _stderr_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-800:].strip() or "no output"
        except OSError:
            return "no output"

    def cpu_s(self) -> float:
        """user + system CPU of the simulator process so far (from /proc)."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return float("nan")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout:
            self.proc.stdout.close()
        self._err.close()


def write_site(path: Path, buses: list[dict], meters: list[dict], db: Path) -> dict:
    data = {"site": SITE, "storage": {"path": str(db), "commit_interval_s": 1.0},
            "buses": buses, "meters": meters}
    parse_site(data, base_dir=path.parent, source=str(path))  # valid before anything starts
    path.write_text(json.dumps(data, ensure_ascii=False, indent=1))  # JSON is YAML
    return data


def point_at_simulator(data: dict, where: dict[str, str]) -> dict:
    """The site data with every bus led to the simulator: 127.0.0.1 or a pty, nothing else."""
    data = json.loads(json.dumps(data))
    for bus in data["buses"]:
        addr = where[bus["id"]]
        if bus["type"] == "modbus_tcp":
            host, _, port = addr.rpartition(":")
            if host != LOCAL_HOST:
                raise RuntimeError(f"bus {bus['id']}: simulator at {addr}, refusing a non-loopback address")
            bus["host"], bus["port"] = host, int(port)
        else:
            if not addr.startswith("/dev/pts/"):
                raise RuntimeError(f"bus {bus['id']}: simulator at {addr}, expected a local pty")
            bus["port"] = addr
    return data


def due_continuously(cfg: SiteConfig) -> SiteConfig:
    """The validated config with every meter due back to back (poll_s ≥ 1 in a site file)."""
    meters = [m.model_copy(update={"poll_s": FAST_POLL_S}) for m in cfg.meters]
    fast = cfg.model_copy(update={"meters": meters})
    if not fast.models or fast.base_dir != cfg.base_dir:  # private attributes must come along
        raise RuntimeError("model_copy lost the parsed models of the site config")
    return fast


# ---- TCP: gateway vs plain pymodbus -----------------------------------------------------------

def machine_cpu_s() -> tuple[float, float]:
    """(busy, steal) CPU seconds of the whole machine so far, from /proc/stat (all cores)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return float("nan"), float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = v
    tck = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tck, steal / tck


class Window:
    """CPU of this process, wall time and a reading count over the measured window."""

    def __init__(self, sim: Simulator, profiler: cProfile.Profile | None = None):
        self.sim = sim
        self.profiler = profiler

    def start(self, readings: int) -> None:
        if self.profiler:
            self.profiler.enable()
        self.t0, self.m0 = os.times(), machine_cpu_s()
        self.c0, self.w0, self.n0, self.s0 = time.process_time(), time.perf_counter(), readings, self.sim.cpu_s()

    def stop(self, readings: int) -> dict:
        cpu, wall = time.process_time() - self.c0, time.perf_counter() - self.w0
        t1, m1 = os.times(), machine_cpu_s()
        if self.profiler:
            self.profiler.disable()
        n = readings - self.n0
        sim_cpu = self.sim.cpu_s() - self.s0
        others = (m1[0] - self.m0[0] - cpu - sim_cpu) / wall  # cores busy with anything but the two of us
        return {"readings": n, "wall_s": wall, "cpu_s": cpu,
                "cpu_us_per_reading": cpu / n * 1e6 if n else float("inf"),
                "sys_us_per_reading": (t1.system - self.t0.system) / n * 1e6 if n else float("inf"),
                "readings_per_s": n / wall, "client_cpu_share": cpu / wall,
                "simulator_cpu_share": sim_cpu / wall, "other_cpu_cores": others,
                "steal_cpu_cores": (m1[1] - self.m0[1]) / wall}


async def gateway_tcp_round(data: dict, tmp: Path, tag: str, sim: Simulator,
                            warmup: float, seconds: float, profiler: cProfile.Profile | None = None) -> dict:
    data = json.loads(json.dumps(data))
    data["storage"]["path"] = str(tmp / f"ledger-{tag}.db")
    gw = Gateway(due_continuously(parse_site(data, base_dir=tmp, source="bench site")))

    def ok() -> int:
        return sum(st.stats.ok for b in gw.buses for st in b.meters)

    def failures() -> int:
        return sum(st.stats.failures for b in gw.buses for st in b.meters)

    task = asyncio.create_task(gw.run(status_every_s=None))
    await asyncio.sleep(warmup)
    win = Window(sim, profiler)
    f0 = failures()
    win.start(ok())
    await asyncio.sleep(seconds)
    res = win.stop(ok())
    res["failures"] = failures() - f0
    gw.stop()
    await asyncio.wait_for(task, 15)
    res["stored_total"], res["polled_total"] = gw.ledger.readings_written, ok()
    return res


DATATYPES = {"float32": "FLOAT32", "int32": "INT32", "uint32": "UINT32", "int16": "INT16",
             "uint16": "UINT16", "int64": "INT64", "uint64": "UINT64"}
WORD_ORDER = {"ABCD": "big", "CDAB": "little"}  # pymodbus swaps words only (libraries.md)


def plain_decoder(plan: list[ReadRequest]):
    """Per read: (function, address, count, [(name, offset, words, datatype, word order, scale, offset)])."""
    dt = AsyncModbusTcpClient.DATATYPE
    reads = []
    for req in plan:
        fields = []
        for f in req.fields:
            if f.word_order not in WORD_ORDER:
                raise ValueError(f"{f.name}: word order {f.word_order} needs a byte swap the plain loop lacks")
            fields.append((f.name, f.address - req.address, f.words, getattr(dt, DATATYPES[f.type]),
                           WORD_ORDER[f.word_order], f.scale, f.offset))
        reads.append((req.function, req.address, req.count, fields))
    return reads


async def plain_tcp_round(addresses: list[tuple[str, int]], plan: list[ReadRequest], sim: Simulator,
                          warmup: float, seconds: float, profiler: cProfile.Profile | None = None) -> dict:
    reads = plain_decoder(plan)
    clients = []
    for host, port in addresses:
        if host != LOCAL_HOST:
            raise RuntimeError(f"plain loop: refusing {host}, not the loopback address")
        c = AsyncModbusTcpClient(host, port=port, timeout=2.0, retries=0, reconnect_delay=0)
        if not await c.connect():
            raise RuntimeError(f"plain loop: cannot connect to {host}:{port}")
        clients.append(c)
    count = [0, 0]  # readings, failures
    stop = asyncio.Event()

    async def loop(client) -> None:
        convert = client.convert_from_registers
        while not stop.is_set():
            for unit in range(1, UNITS_PER_BUS + 1):
                values: dict[str, float] = {}
                for function, address, n, fields in reads:
                    call = client.read_holding_registers if function == 3 else client.read_input_registers
                    rr = await call(address, count=n, device_id=unit)
                    if rr.isError():
                        count[1] += 1
                        break
                    regs = rr.registers
                    for name, off, words, datatype, order, scale, offset in fields:
                        values[name] = convert(regs[off:off + words], datatype, word_order=order) * scale + offset
                else:
                    count[0] += 1
                if stop.is_set():
                    return

    tasks = [asyncio.create_task(loop(c)) for c in clients]
    await asyncio.sleep(warmup)
    win = Window(sim, profiler)
    f0 = count[1]
    win.start(count[0])
    await asyncio.sleep(seconds)
    res = win.stop(count[0])
    res["failures"] = count[1] - f0
    stop.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 10)
    for c in clients:
        c.close()
    return res


async def bench_tcp(tmp: Path, warmup: float, seconds: float, rounds: list[str], profile: int = 0) -> dict:
    buses = [{"id": f"srv-{i}", "type": "modbus_tcp", "host": LOCAL_HOST, "port": 502, "timeout_s": 1.0}
             for i in range(1, TCP_BUSES + 1)]
    meters = [{"id": f"{b['id']}-m{u:02d}", "bus": b["id"], "unit": u, "model": "chint-ddsu666",
               "poll_s": 1, "circuit": "stairwell_lighting"}
              for b in buses for u in range(1, UNITS_PER_BUS + 1)]
    data = write_site(tmp / "tcp-site.yaml", buses, meters, tmp / "unused.db")
    with Simulator(tmp / "tcp-site.yaml", False, tmp / "sim-tcp.log") as sim:
        data = point_at_simulator(data, sim.where)
        cfg = parse_site(data, base_dir=tmp)
        plan = plan_for_model(cfg.models["chint-ddsu666"], cfg.buses[0].max_gap_registers)
        addresses = [(b["host"], b["port"]) for b in data["buses"]]
        results: dict[str, list[dict]] = {"gateway": [], "plain": []}
        for i, side in enumerate(rounds):
            if side == "gateway":
                r = await gateway_tcp_round(data, tmp, str(i), sim, warmup, seconds)
            else:
                r = await plain_tcp_round(addresses, plan, sim, warmup, seconds)
            results[side].append(r)
            extra = (f", stored {r['stored_total']} of {r['polled_total']} polled" if side == "gateway" else "")
            out(f"  round {i + 1} {side:8s} {r['cpu_us_per_reading']:7.1f} µs CPU/reading "
                f"({r['sys_us_per_reading']:5.1f} in the kernel)  "
                f"{r['readings_per_s']:7.0f} readings/s  ({r['readings']} readings in {r['wall_s']:.2f} s, "
                f"client CPU {r['client_cpu_share']:.0%}, simulator CPU {r['simulator_cpu_share']:.0%}, "
                f"others {r['other_cpu_cores']:.2f} cores, "
                f"{r['failures']} failures{extra})")
        for side in ("gateway", "plain") if profile else ():
            prof = cProfile.Profile()
            if side == "gateway":
                r = await gateway_tcp_round(data, tmp, "profile", sim, warmup, seconds, prof)
            else:
                r = await plain_tcp_round(addresses, plan, sim, warmup, seconds, prof)
            print_profile(side, prof, r, profile)
    return results


def print_profile(side: str, prof: cProfile.Profile, r: dict, top: int) -> None:
    """The costliest functions of a profiled round, in profiled µs per reading (cProfile inflates them)."""
    n = r["readings"]
    stats = pstats.Stats(prof).stats
    rows = sorted(((tt, nc, ct, fn) for fn, (_, nc, tt, ct, _) in stats.items()), reverse=True)
    out(f"  profile of one {side} round (not in the figures): {r['cpu_us_per_reading']:.1f} µs/reading "
        f"under cProfile; own time, calls and cumulative time per reading:")
    for tt, nc, ct, (path, line, name) in rows[:top]:
        where = f"{Path(path).name}:{line}" if line else "builtin"
        out(f"    {tt / n * 1e6:7.1f} µs  {nc / n:6.2f} calls  cum {ct / n * 1e6:7.1f} µs  {name} ({where})")


# ---- emulated RS-485 bus ----------------------------------------------------------------------

async def gateway_bus_cycle(cfg: SiteConfig, cycles: int) -> tuple[float, dict]:
    times: list[float] = []
    need = BUS_METERS * (cycles + 1)
    done = asyncio.Event()

    def publish(event) -> None:
        if isinstance(event, Reading):
            times.append(time.perf_counter())
            if len(times) >= need:
                done.set()

    fast = due_continuously(cfg)
    bus = ModbusBus(fast.buses[0], [(m, fast.models[m.model]) for m in fast.meters], publish)
    task = asyncio.create_task(bus.run())
    try:
        await asyncio.wait_for(done.wait(), 30 + 10 * cycles)
    finally:
        bus.stop()
        await asyncio.wait_for(task, 10)
    first = BUS_METERS - 1
    return (times[first + BUS_METERS * cycles] - times[first]) / cycles, bus.stats()


async def plain_bus_cycle(port: str, plan: list[ReadRequest], cycles: int) -> float:
    reads = plain_decoder(plan)
    client = AsyncModbusSerialClient(port, framer=FramerType.RTU, baudrate=9600, bytesize=8, parity="N",
                                     stopbits=1, timeout=1.0, retries=0, reconnect_delay=0)
    if not await client.connect():
        raise RuntimeError(f"plain loop: cannot open {port}")
    times = []
    try:
        for _ in range(cycles + 1):
            for unit in range(1, BUS_METERS + 1):
                values: dict[str, float] = {}
                for function, address, n, fields in reads:
                    call = client.read_holding_registers if function == 3 else client.read_input_registers
                    rr = await call(address, count=n, device_id=unit)
                    if rr.isError():
                        raise RuntimeError(f"plain loop: unit {unit}: {rr}")
                    for name, off, words, datatype, order, scale, offset in fields:
                        values[name] = client.convert_from_registers(
                            rr.registers[off:off + words], datatype, word_order=order) * scale + offset
                times.append(time.perf_counter())
    finally:
        client.close()
    first = BUS_METERS - 1
    return (times[first + BUS_METERS * cycles] - times[first]) / cycles


async def bench_bus(tmp: Path, cycles: int, plain: bool) -> dict:
    buses = [{"id": "rs485", "type": "modbus_rtu", "port": "/dev/null", "baudrate": 9600, "bytesize": 8,
              "parity": "N", "stopbits": 1, "timeout_s": 1.0}]
    meters = [{"id": f"pump-{u:02d}", "bus": "rs485", "unit": u, "model": "chint-dtsu666", "poll_s": 1,
               "circuit": "pump"} for u in range(1, BUS_METERS + 1)]
    data = write_site(tmp / "bus-site.yaml", buses, meters, tmp / "unused.db")
    with Simulator(tmp / "bus-site.yaml", True, tmp / "sim-bus.log") as sim:
        data = point_at_simulator(data, sim.where)
        cfg = parse_site(data, base_dir=tmp)
        plan = plan_for_model(cfg.models["chint-dtsu666"], cfg.buses[0].max_gap_registers)
        per_meter = line_time_s(plan, 9600, 10)
        minimum = BUS_METERS * per_meter
        cycle, stats = await gateway_bus_cycle(cfg, cycles)
        res = {"cycle_s": cycle, "theoretical_min_s": minimum, "ratio": cycle / minimum,
               "per_meter_min_s": per_meter, "requests_per_meter": len(plan),
               "failures": stats["failures"]}
        out(f"  gateway ModbusBus: {cycle:.4f} s per cycle of {BUS_METERS} meters "
            f"(mean of {cycles} cycles, {stats['failures']} failures); theoretical minimum "
            f"{minimum:.4f} s = {BUS_METERS} x {per_meter * 1000:.2f} ms ({len(plan)} requests each); "
            f"ratio {cycle / minimum:.3f}")
        if plain:
            pc = await plain_bus_cycle(data["buses"][0]["port"], plan, 1)
            res["plain_cycle_s"], res["plain_ratio"] = pc, pc / minimum
            out(f"  plain pymodbus serial loop, same reads (context, 1 cycle): {pc:.4f} s per cycle, "
                f"ratio {pc / minimum:.3f}")
    return res


# ---- main -------------------------------------------------------------------------------------

def best(rounds: list[dict]) -> tuple[float, float]:
    """The better figure of each kind over a side's rounds (least CPU, most readings/s)."""
    return (min(r["cpu_us_per_reading"] for r in rounds), max(r["readings_per_s"] for r in rounds))


def pooled(rounds: list[dict], user: bool = False) -> float:
    """CPU µs per reading over all of a side's rounds together (user time only: without the kernel's)."""
    n = sum(r["readings"] for r in rounds)
    cpu = sum(r["cpu_s"] - (r["sys_us_per_reading"] * r["readings"] / 1e6 if user else 0) for r in rounds)
    return cpu / n * 1e6


async def main(args: argparse.Namespace) -> dict:
    result: dict = {}
    load_at_start = os.getloadavg()[0]  # before anything of ours runs: other work on the machine
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as t:
        tmp = Path(t)

        out("requests per poll (default gap 32 registers):")
        models, problems = load_models([SHIPPED_MODELS_DIR])
        if problems:
            raise RuntimeError("; ".join(problems))
        rpp = {name: len(plan_for_model(m)) for name, m in sorted(models.items())}
        for name, n in rpp.items():
            out(f"  {name:16s} {n}")
        result["requests_per_poll"] = rpp

        per_round = args.seconds / args.rounds
        out(f"tcp: {TCP_BUSES * UNITS_PER_BUS} x chint-ddsu666 on {TCP_BUSES} Modbus TCP buses (127.0.0.1); "
            f"{args.rounds} rounds per side of {args.warmup:g} s warm-up + {per_round:g} s measured:")
        order = [("gateway", "plain"), ("plain", "gateway")]
        sides = [side for i in range(args.rounds) for side in order[i % 2]]
        rounds = await bench_tcp(tmp, args.warmup, per_round, sides, args.profile)
        g_cpu, g_rate = best(rounds["gateway"])
        p_cpu, p_rate = best(rounds["plain"])
        g_pool, p_pool = pooled(rounds["gateway"]), pooled(rounds["plain"])
        pairs = sorted(g["cpu_us_per_reading"] / p["cpu_us_per_reading"]
                       for g, p in zip(rounds["gateway"], rounds["plain"]))
        pair_median = statistics.median(pairs)
        g_user, p_user = pooled(rounds["gateway"], user=True), pooled(rounds["plain"], user=True)
        result["tcp_100_meters"] = {
            "gateway_cpu_us_per_reading": round(g_cpu, 1), "plain_cpu_us_per_reading": round(p_cpu, 1),
            "ratio": round(g_cpu / p_cpu, 3),
            "gateway_readings_per_s": round(g_rate, 1), "plain_readings_per_s": round(p_rate, 1),
            "pooled": {"gateway_cpu_us_per_reading": round(g_pool, 1),
                       "plain_cpu_us_per_reading": round(p_pool, 1), "ratio": round(g_pool / p_pool, 3),
                       "gateway_user_us_per_reading": round(g_user, 1),
                       "plain_user_us_per_reading": round(p_user, 1), "user_ratio": round(g_user / p_user, 3)},
            "paired_ratio_median": round(pair_median, 3),
            "spread": {side: round(max(r["cpu_us_per_reading"] for r in rs) /
                                   min(r["cpu_us_per_reading"] for r in rs), 3) for side, rs in rounds.items()},
            "rounds": {side: [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
                              for r in rs] for side, rs in rounds.items()},
        }
        out(f"  best round of each: gateway {g_cpu:.1f} µs/reading, {g_rate:.0f} readings/s; plain pymodbus "
            f"{p_cpu:.1f} µs/reading, {p_rate:.0f} readings/s; CPU ratio {g_cpu / p_cpu:.3f}")
        out(f"  pooled over all rounds: gateway {g_pool:.1f}, plain {p_pool:.1f} µs/reading, ratio "
            f"{g_pool / p_pool:.3f} (user time only: {g_user:.1f} / {p_user:.1f}, ratio {g_user / p_user:.3f}); "
            f"median ratio of adjacent gateway/plain rounds {pair_median:.3f}")
        spread = max(result["tcp_100_meters"]["spread"].values())
        others = max(r["other_cpu_cores"] for rs in rounds.values() for r in rs)
        quiet = others <= 0.25 and spread <= 1.35
        result["tcp_100_meters"]["machine"] = {
            "cores": os.cpu_count(), "loadavg_1min_at_start": round(load_at_start, 2),
            "max_other_cpu_cores": round(others, 3), "quiet": quiet}
        if not quiet:
            out(f"  WARNING: noisy machine (other processes used up to {others:.2f} cores during a round, "
                f"rounds of one side differ up to {spread:.2f}x): the CPU figures are unreliable; "
                f"run again on a quiet machine")

        out(f"emulated bus: {BUS_METERS} x chint-dtsu666 on one modbus_rtu pty at 9600 8N1 (line-speed emulation):")
        bus = await bench_bus(tmp, args.cycles, not args.no_plain_bus)
        result["emulated_bus_20_dtsu666"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in bus.items()}

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    result["peak_rss_mib"] = round(rss, 1)
    out(f"peak RSS of this process: {rss:.1f} MiB")
    result["targets"] = TARGETS
    result["targets_met"] = {
        "cpu_ratio": result["tcp_100_meters"]["ratio"] <= TARGETS["cpu_ratio_max"],
        "bus_ratio": bus["ratio"] <= TARGETS["bus_ratio_max"],
        "requests_chint": all(rpp[m] <= TARGETS["requests_max_chint"] for m in ("chint-ddsu666", "chint-dtsu666")),
    }
    for k, ok in result["targets_met"].items():
        note = "" if k != "cpu_ratio" or result["tcp_100_meters"]["machine"]["quiet"] else " (noisy machine: unreliable)"
        out(f"target {k}: {'met' if ok else 'MISSED'}{note}")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0,
                   help="measured wall time per side of the TCP comparison, split into --rounds (default 8)")
    p.add_argument("--rounds", type=int, default=4, help="TCP rounds per side, alternating (default 4)")
    p.add_argument("--warmup", type=float, default=0.5, help="warm-up before each TCP round (default 0.5)")
    p.add_argument("--cycles", type=int, default=2, help="measured cycles of the emulated bus (default 2)")
    p.add_argument("--no-plain-bus", action="store_true", help="skip the plain pymodbus loop on the emulated bus")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="also run one cProfile'd round per TCP side (not in the figures) and print its N "
                        "costliest functions in profiled µs per reading")
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.warmup < 0 or args.cycles < 1 or args.rounds < 1 or args.profile < 0:
        p.error("--seconds > 0, --warmup >= 0, --cycles >= 1, --rounds >= 1, --profile >= 0")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    logging.getLogger("pymodbus").setLevel(logging.CRITICAL)
    res = asyncio.run(main(parse_args()))
    print(json.dumps(res, ensure_ascii=False), flush=True)
