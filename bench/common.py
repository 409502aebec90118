"""What the bench scripts share: figures (percentiles, distributions, profiles), the child process
that runs simulators apart from the measured process, and the script's entry point.

The scripts are run as `python3 bench/<name>.py`, so bench/ is sys.path[0] and they import this
module as `common`. Importing it puts the project root and tests/ on sys.path (the gateway,
the simulators and the tests' `Mosquitto`).
"""

from __future__ import annotations

import asyncio
import cProfile
import json
import logging
import pstats
import resource
import signal
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "tests"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))


def peak_mb() -> float:
    """This process's peak resident memory: VmHWM, which starts afresh at exec; else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def out(line: str = "") -> None:
    print(line, flush=True)


def ms(ns: float) -> float:
    return ns / 1e6


def percentile(xs: list[float], q: float) -> float:
    """Nearest rank: the smallest value with at least q % of the values at or below it."""
    s = sorted(xs)
    k = max(0, min(len(s) - 1, -(-len(s) * q // 100) - 1))
    return s[int(k)]


def dist(xs: list[float]) -> dict:
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50": round(percentile(xs, 50), 3), "p99": round(percentile(xs, 99), 3),
            "max": round(max(xs), 3), "mean": round(sum(xs) / len(xs), 3)}


def fmt_dist(d: dict, show_n: bool = True) -> str:
    """A `dist` in ms on one line; `show_n` adds its count."""
    if not d.get("n"):
        return "none"
    line = f"p50 {d['p50']:.2f}  p99 {d['p99']:.2f}  max {d['max']:.2f} ms"
    return line + f" (n {d['n']})" if show_n else line


def print_profile(prof: cProfile.Profile, n: int, per: int, what: str, unit: str) -> list[dict]:
    """Print the n costliest functions (own time) in profiled µs per `unit` (`per` of them profiled)."""
    stats = pstats.Stats(prof)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:n]
    total = sum(v[2] for v in stats.stats.values())
    out(f"  profile of {what}: {total / per * 1e6:.1f} profiled µs per {unit} in all; costliest (own time):")
    res = []
    for (file, line, func), (cc, nc, tt, ct, _) in rows:
        where = f"{Path(file).name}:{line}({func})" if line else func
        out(f"    {tt / per * 1e6:8.2f} µs/{unit} own, {ct / per * 1e6:8.2f} cumulative, {nc:>9} calls  {where}")
        res.append({"function": where, "own_us": round(tt / per * 1e6, 3), "cum_us": round(ct / per * 1e6, 3),
                    "calls": nc})
    return res


async def until(cond, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ==== the child process ==========================================================================
# `python3 bench/<name>.py --child` reads one JSON command per line on stdin and answers one JSON
# line on stdout, so the measured process has its event loop and its CPU to itself.

def reply(obj: dict) -> None:
    """In the child: one answer line on stdout."""
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


async def serve_child(handle, stop, limit: int) -> None:
    """In the child: answer commands until stdin closes or the command `quit`.

    `await handle(op, cmd)` returns the answer to one command (`{"error": ...}` for an unknown
    op); on `quit`, `await stop()` cleans up, then the answer is `{"ok": true}`. An exception is
    answered as an error and the child keeps serving.
    """
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader(limit=limit)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        line = await stdin.readline()
        if not line:
            return
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "quit":
                await stop()
                reply({"ok": True})
                return
            reply(await handle(op, cmd))
        except Exception as e:  # noqa: BLE001 - tell the parent, keep serving
            reply({"error": f"{type(e).__name__}: {e}"})


async def swipe_spaced(sim, values: list[int], gap_s: float) -> list[int]:
    """In the child: one swipe every gap_s on a card reader simulator, each stamped
    (`time.monotonic_ns()`) just before its write; returns the stamps."""
    loop = asyncio.get_running_loop()
    stamps = []
    start = loop.time() + 0.05
    for i, v in enumerate(values):
        delay = start + i * gap_s - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        stamps.append(time.monotonic_ns())
        sim.swipe(v)
    await sim.drain()
    return stamps


def _die_with_parent() -> None:
    """In the child: get SIGTERM if the bench dies without cleaning up (Linux prctl)."""
    try:
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Child:
    """The child process (`script --child`), driven over its stdin/stdout."""

    def __init__(self, script: str | Path, log_file: Path):
        self.script = Path(script).resolve()
        self.log_file = log_file
        self.proc: asyncio.subprocess.Process | None = None
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> "Child":
        self._err = open(self.log_file, "wb")
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(self.script), "--child", cwd=ROOT,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=self._err,
            limit=1 << 26, preexec_fn=_die_with_parent)
        return self

    async def call(self, op: str, timeout: float = 120.0, **kw) -> dict:
        async with self._lock:
            self.proc.stdin.write((json.dumps({"op": op, **kw}) + "\n").encode())
            await self.proc.stdin.drain()
            line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError(f"bench child exited: {self._stderr_tail()}")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench child, {op}: {answer['error']}")
        return answer

    def _stderr_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-800:].strip() or "no output"
        except OSError:
            return "no output"

    async def __aexit__(self, *exc) -> None:
        if self.proc is None:
            return
        if self.proc.returncode is None:
            try:
                await self.call("quit", timeout=5)
                await asyncio.wait_for(self.proc.wait(), 5)
            except (Exception, asyncio.TimeoutError):  # noqa: BLE001
                if self.proc.returncode is None:
                    self.proc.kill()
                    await self.proc.wait()
        self._err.close()


# ==== entry point ================================================================================

def run(main, parse_args, child_main) -> None:
    """`--child`: serve as the child; else run the bench and print its figures as the last line."""
    if "--child" in sys.argv[1:]:
        asyncio.run(child_main())
        sys.exit(0)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    res = asyncio.run(main(parse_args()))
    print(json.dumps(res, ensure_ascii=False), flush=True)
