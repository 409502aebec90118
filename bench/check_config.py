"""Site-file check benchmark: seconds and peak memory of `gateway check-config` by site size.

    python3 bench/check_config.py [--sizes 1000,20000,100000] [--per-bus 32]

For each size it writes, in a temporary directory, the example site (edge_config/site.example.yaml)
with its buses and meters replaced by N meters on N/per-bus Modbus TCP buses, one flow mapping a
line (id, bus, unit, model, poll_s, building: about 85 bytes a meter, so 100,000 meters stay
under the 10 MB a site file may have), and its households file: `--households-per-meter` rows per
meter (default 1) spread over those buildings, checked row by row against them. Then, each in its
own process:

- `cli`: `python -m gateway check-config FILE` as people run it (wall and CPU seconds, peak RSS
  from wait4), interpreter start and imports included;
- `load`: `read_yaml_file` (parse and build the data), `validate`: `parse_site` (models,
  meter models, checks across sections) and `households`: the households file read and checked
  against the site and the allocation groups planned (`site_households`, `plan_groups`), in CPU
  seconds (the machine may be shared), timed in a child process that does only that.

The linear expectation for a size is the smallest size's load + validate + households seconds
scaled by the meter count; `x linear` is the measured CPU time over it (about 1.0 when the check is linear).
Prints human-readable lines, then as the LAST line one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT, out

EXAMPLE = ROOT / "edge_config" / "site.example.yaml"


def site_text(n: int, per_bus: int) -> str:
    """The example site with `n` meters on ceil(n / per_bus) buses instead of its own."""
    head, rest = EXAMPLE.read_text(encoding="utf-8").split("\nbuses:\n", 1)
    tail = rest[rest.index("\n# MQTT broker"):]
    buses = [f"  - {{id: b{b:05d}, type: modbus_tcp, host: 10.{b // 65536 % 256}.{b // 256 % 256}.{b % 256}}}"
             for b in range(-(-n // per_bus))]
    meters = [f"  - {{id: M{i:06d}, bus: b{i // per_bus:05d}, unit: {i % per_bus + 1}, model: chint-ddsu666, "
              f"poll_s: 30, building: B{i // per_bus:05d}}}" for i in range(n)]
    return f"{head}\nbuses:\n" + "\n".join(buses) + "\n\nmeters:\n" + "\n".join(meters) + f"\n{tail}"


def households_text(n: int, per_bus: int, per_meter: int) -> str:
    """`per_meter` households a meter, in the buildings of site_text's meters."""
    rows = [f"H{k:07d},B{k // per_meter // per_bus:05d},{k % 4 + 1},{k % 100 + 101},{60 + k % 50}.5,{k % 7 != 0:d}"
            for k in range(n * per_meter)]
    return "id,building,unit,room,floor_area_m2,occupied\n" + "\n".join(rows) + "\n"


def run_measured(args: list[str]) -> tuple[float, float, int, str, str, int]:
    """Run a child; (wall seconds, CPU seconds, its peak RSS in MB, stdout, stderr, exit code)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryFile() as o, tempfile.TemporaryFile() as e:
        t0 = time.perf_counter()
        proc = subprocess.Popen(args, stdout=o, stderr=e, env=env, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage (Popen.wait would lose it)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        o.seek(0)
        e.seek(0)
        cpu = usage.ru_utime + usage.ru_stime
        return wall, cpu, usage.ru_maxrss // 1024, o.read().decode(), e.read().decode(), proc.returncode


def child(path: str) -> None:
    """Time the two phases of load_site on their own (run in a fresh process)."""
    from gateway.billing.allocate import plan_groups
    from gateway.billing.households import site_households
    from gateway.config import parse_site
    from gateway.yamlfile import read_yaml_file
    t0 = time.process_time()
    data = read_yaml_file(Path(path))
    t1 = time.process_time()
    cfg = parse_site(data, base_dir=Path(path).parent)
    t2 = time.process_time()
    homes = site_households(cfg)
    _, problems = plan_groups(cfg, homes)
    t3 = time.process_time()
    assert not problems, problems[:3]
    print(json.dumps({"load_s": t1 - t0, "validate_s": t2 - t1, "households_s": t3 - t2, "meters": len(cfg.meters),
                      "households": len(homes)}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="1000,20000,100000")
    ap.add_argument("--per-bus", type=int, default=32)
    ap.add_argument("--households-per-meter", type=int, default=1)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child)
    sizes = [int(s) for s in a.sizes.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            path = Path(tmp) / f"site-{n}.yaml"
            path.write_text(site_text(n, a.per_bus), encoding="utf-8")
            (Path(tmp) / "households.csv").write_text(households_text(n, a.per_bus, a.households_per_meter),
                                                      encoding="utf-8")
            mb = path.stat().st_size / 1e6
            cli_s, cli_cpu, cli_mb, stdout, stderr, code = run_measured(
                [sys.executable, "-m", "gateway", "check-config", str(path)])
            if code != 0:
                out(f"{n:>7} meters ({mb:.1f} MB): check-config exit {code}: {stderr.strip()[:300]}")
                results.append({"meters": n, "file_mb": round(mb, 2), "exit": code})
                continue
            _, _, phase_mb, stdout, stderr, code = run_measured(
                [sys.executable, str(Path(__file__).resolve()), "--child", str(path)])
            phases = json.loads(stdout.strip().splitlines()[-1])
            results.append({"meters": n, "file_mb": round(mb, 2), "cli_s": round(cli_s, 2),
                            "cli_cpu_s": round(cli_cpu, 2), "cli_peak_mb": cli_mb,
                            "load_s": round(phases["load_s"], 3), "validate_s": round(phases["validate_s"], 3),
                            "households": phases["households"], "households_s": round(phases["households_s"], 3),
                            "phases_peak_mb": phase_mb})
    measured = [r for r in results if "load_s" in r]
    if measured:
        base = measured[0]
        per_meter = (base["load_s"] + base["validate_s"] + base["households_s"]) / base["meters"]
        for r in measured:
            r["x_linear"] = round((r["load_s"] + r["validate_s"] + r["households_s"]) / (per_meter * r["meters"]), 2)
    for r in measured:
        out(f"{r['meters']:>7} meters ({r['file_mb']:.1f} MB): check-config {r['cli_s']:.2f} s ({r['cli_cpu_s']:.2f} s CPU), peak {r['cli_peak_mb']} MB; "
            f"CPU load {r['load_s']:.2f} s + validate {r['validate_s']:.2f} s + {r['households']} households "
            f"{r['households_s']:.2f} s: {r['x_linear']:.2f} x linear "
            f"(from {measured[0]['meters']} meters)")
    print(json.dumps({"python": sys.version.split()[0], "per_bus": a.per_bus,
                      "households_per_meter": a.households_per_meter, "sizes": results}))


if __name__ == "__main__":
    main()
