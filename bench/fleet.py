"""Head office with N estates on this machine, through the shipped configuration.

For each N (--sizes, default 2 5 10): N gateways, each a `python -m gateway run` process on a
generated site file with 20 simulated meters (one Modbus TCP bus; the simulators of every estate
run in one child process), each with its own mosquitto bridged to one central mosquitto by the
shipped deploy/headoffice/mosquitto/site-bridge.conf (TLS, client certificates, persistent
sessions), the central one from the shipped central.conf, and one central InfluxDB 1.x.

Alarms are raised on purpose: at every estate a few meters stop answering and come back in turn,
so the gateway's offline rule raises and clears alarms all the time. Measured:
- alarm latency: for each alarm message (site, alarm_id, revision), its arrival at head office's
  subscriber minus its arrival at a subscriber on the estate's own broker (the bridge hop), and
  minus the gateway's own time of the change (`updated_at`: the whole way from the rule);
- points/s into the central InfluxDB (influxd's own write counter) in the steady state;
- catch-up after a partition (central broker and InfluxDB stopped, --partition-s, 60 s): from
  their restart until head office has every alarm revision the estates published before it,
  until the central InfluxDB holds every reading the estates polled before it, and until every
  estate's outbox has nothing older than it on disk (the ledger writes InfluxDB's confirmations
  once a minute to spare the SD card, so this one lags the data by up to a minute);
- CPU seconds (per minute of steady state) and RSS of each gateway process, and of the central
  mosquitto and influxd.

Prints human-readable lines, then one JSON object as the last line. Figures, not assertions.
Needs Debian's mosquitto and influxd (tools/setup-tests.sh) and openssl.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
from datetime import datetime
from pathlib import Path

import aiomqtt
import yaml
from common import ROOT, Child, dist, out, percentile, reply, run, serve_child  # noqa: F401  (sys.path first)
from headoffice_rig import DEPLOY, Broker, make_certs, render
from servers import Influx1

from gateway.config import parse_site
from gateway.ledger.queries import outbox_status, read_only

METERS = 20
FLAPPING = 5            # meters per estate that stop answering and come back, in turn
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def site_name(i: int) -> str:
    return f"estate{i:02d}"


def site_data(site: str, tmp: Path, broker_port: int, influx_url: str, poll_s: float) -> dict:
    meters = [{"id": f"m{u:02d}", "bus": "b", "unit": u, "model": "chint-ddsu666", "poll_s": poll_s,
               "circuit": "main_supply" if u == 1 else "stairwell_lighting",
               **({} if u == 1 else {"building": f"B{u:02d}"})} for u in range(1, METERS + 1)]
    return {"site": {"id": site, "name": f"小区{site[-2:]}", "latitude": 43.9, "longitude": 125.3},
            "storage": {"path": str(tmp / site / "gw.db")},
            # a flapping meter is offline after one silent poll and asked again within 5 s (defaults:
            # 3 polls, backoff up to 300 s), so that alarms are raised and cleared every few seconds
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3,
                       "offline_after": 1, "backoff_max_s": 5}],
            "meters": meters,
            "mqtt": {"host": "127.0.0.1", "port": broker_port, "client_id": f"gw-{site}"},
            "influxdb": {"version": 1, "url": influx_url, "database": "gateway"},
            "web": {"enabled": False},
            "rules": [{"id": "offline", "kind": "offline", "periods": 2, "settle_periods": 0,
                       "severity": "critical"}]}


# ==== the child: every estate's simulated meters ==================================================

async def child_main() -> None:
    from simulators.site import SiteSimulation
    sims: dict[str, SiteSimulation] = {}

    async def handle(op: str, cmd: dict) -> dict:
        if op == "start":
            sim = SiteSimulation(parse_site(cmd["site"], base_dir=Path(cmd["base_dir"])), seed=cmd["seed"])
            await sim.start()
            sims[cmd["site"]["site"]["id"]] = sim
            return {"buses": sim.bus_overrides}
        if op == "dead":
            sims[cmd["site"]].meter(cmd["meter"]).dead = cmd["dead"]
            return {"ok": True}
        return {"error": f"unknown op {op}"}

    async def stop() -> None:
        for sim in sims.values():
            await sim.stop()
    await serve_child(handle, stop, 1 << 20)


# ==== measuring processes ========================================================================

def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def influx_points(influx: Influx1) -> int:
    """Points influxd has accepted since it started (its `write` statistics)."""
    params = urllib.parse.urlencode({"q": "SHOW STATS FOR 'write'"})
    _, body = influx.http(f"/query?{params}", data=b"")
    doc = json.loads(body)
    (series,) = doc["results"][0]["series"]
    return int(dict(zip(series["columns"], series["values"][0]))["pointReq"])


# ==== head office's subscriber and the estates' own ==============================================

class Watch:
    """Arrival times of alarm messages, keyed (site, alarm_id, revision): the first arrival only."""

    def __init__(self, name: str, host: str, port: int, tls: ssl.SSLContext | None, topic: str):
        self.name, self.host, self.port, self.tls, self.topic = name, host, port, tls, topic
        self.arrived: dict[tuple[str, str, int], float] = {}
        self.changed_at: dict[tuple[str, str, int], float] = {}
        self.copies = 0
        self.connected = asyncio.Event()

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client(self.host, self.port, identifier=self.name, clean_session=False,
                                          tls_context=self.tls) as c:
                    await c.subscribe(self.topic, qos=1)
                    self.connected.set()
                    async for m in c.messages:
                        now = time.time()
                        if not m.payload:
                            continue
                        body = json.loads(m.payload)
                        key = (body["site"], body["alarm_id"], body["revision"])
                        self.copies += 1
                        if key not in self.arrived:
                            self.arrived[key] = now
                            self.changed_at[key] = datetime.fromisoformat(body["updated_at"]).timestamp()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)


# ==== one run with N estates ======================================================================

class Fleet:
    def __init__(self, n: int, tmp: Path, poll_s: float):
        self.n, self.tmp, self.poll_s = n, tmp, poll_s
        self.sites = [site_name(i) for i in range(1, n + 1)]
        self.gateways: dict[str, subprocess.Popen] = {}
        self.brokers: dict[str, Broker] = {}
        self.cfg_paths: dict[str, Path] = {}

    async def start(self, child: Child) -> None:
        tmp = self.tmp
        self.certs = make_certs(tmp / "certs", [*self.sites, "headoffice-consumer"])
        acl = tmp / "central.acl"
        acl.write_text((DEPLOY / "mosquitto" / "central.acl").read_text(encoding="utf-8"))
        self.central = Broker(tmp / "central", lambda port: render("central.conf", CERTS=str(self.certs),
                                                                   ACL=str(acl), PORT=str(port)))
        self.central.start()
        (tmp / "influx").mkdir()
        self.influx = Influx1(tmp / "influx")
        self.influx.start()
        for s in self.sites:
            self.brokers[s] = Broker(tmp / f"{s}-broker", lambda port, s=s: (
                f"listener {port} 127.0.0.1\nallow_anonymous true\n"
                + render("site-bridge.conf", SITE=s, HOST=f"box-{s}", CENTRAL=f"127.0.0.1:{self.central.port}",
                         CERTS=str(self.certs))))
            self.brokers[s].start()
        tls = ssl.create_default_context(cafile=str(self.certs / "headoffice-ca.pem"))
        tls.load_cert_chain(self.certs / "headoffice-consumer.pem", self.certs / "headoffice-consumer.key")
        self.head = Watch("bench-headoffice", "127.0.0.1", self.central.port, tls, "+/alerts/#")
        self.local = {s: Watch(f"bench-local-{s}", "127.0.0.1", self.brokers[s].port, None, f"{s}/alerts/#")
                      for s in self.sites}
        self.watchers = [asyncio.create_task(w.run()) for w in [self.head, *self.local.values()]]
        await asyncio.wait_for(asyncio.gather(*(w.connected.wait() for w in [self.head, *self.local.values()])), 30)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for i, s in enumerate(self.sites):
            (tmp / s).mkdir()
            data = site_data(s, tmp, self.brokers[s].port, self.influx.url, self.poll_s)
            ans = await child.call("start", site=data, base_dir=str(tmp), seed=i + 1)
            for bus in data["buses"]:
                bus.update(ans["buses"][bus["id"]])
            self.cfg_paths[s] = tmp / s / "site.yaml"
            self.cfg_paths[s].write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
            log = open(tmp / s / "gateway.log", "wb")
            self.gateways[s] = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(self.cfg_paths[s])],
                                                cwd=tmp / s, env=env, stdout=log, stderr=subprocess.STDOUT,
                                                start_new_session=True)

    def outbox_past(self, s: str, ms: int) -> tuple[bool, int]:
        try:
            with read_only(Path(self.tmp / s / "gw.db")) as db:
                st = outbox_status(db)
        except Exception:  # noqa: BLE001 - the ledger may not exist yet
            return False, -1
        return st.depth == 0 or (st.oldest_us is not None and st.oldest_us // 1000 > ms), st.depth

    def readings_before(self, s: str, ms: int) -> int:
        """Readings the estate's ledger holds from before `ms` (raw SQL: a bench may)."""
        with read_only(Path(self.tmp / s / "gw.db")) as db:
            return db.execute("SELECT count(*) FROM reading_log WHERE ts_us < ?", (ms * 1000,)).fetchone()[0]

    def influx_has_all_before(self, ms: int, want: dict[str, int]) -> bool:
        """Head office's InfluxDB holds every reading each estate polled before `ms`."""
        doc = self.influx.query(f'SELECT count("energy_kwh") FROM "meter" WHERE time < {ms}ms GROUP BY "site"')
        have = {ser["tags"]["site"]: ser["values"][0][1] for res in doc["results"] for ser in res.get("series", [])}
        return all(have.get(s, 0) >= n for s, n in want.items())

    def check_alive(self) -> None:
        for s, p in self.gateways.items():
            if p.poll() is not None:
                raise RuntimeError(f"gateway {s} exited: {(self.tmp / s / 'gateway.log').read_text()[-1500:]}")

    async def stop(self) -> None:
        for p in self.gateways.values():
            if p.poll() is None:
                p.terminate()
        for p in self.gateways.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for w in getattr(self, "watchers", []):
            w.cancel()
        await asyncio.gather(*getattr(self, "watchers", []), return_exceptions=True)
        for b in [*self.brokers.values(), getattr(self, "central", None)]:
            if b is not None:
                b.stop()
        if getattr(self, "influx", None) is not None:
            self.influx.stop()


async def flap(fleet: Fleet, child: Child, period_s: float, stop: asyncio.Event) -> None:
    """At every estate, FLAPPING meters, each in its own phase: dead for `period_s`, then
    answering for half as long, again and again (an offline alarm raised and cleared each time)."""
    async def one(meter: str, offset: float) -> None:
        if await _sleep(stop, offset):
            return
        while True:
            await asyncio.gather(*(child.call("dead", site=s, meter=meter, dead=True) for s in fleet.sites))
            stopped = await _sleep(stop, period_s)
            await asyncio.gather(*(child.call("dead", site=s, meter=meter, dead=False) for s in fleet.sites))
            if stopped or await _sleep(stop, period_s / 2):
                return
    cycle = period_s * 1.5
    await asyncio.gather(*(one(f"m{2 + k:02d}", cycle * k / FLAPPING) for k in range(FLAPPING)))


async def _sleep(stop: asyncio.Event, s: float) -> bool:
    """Sleep s seconds; True if `stop` was set meanwhile."""
    try:
        await asyncio.wait_for(stop.wait(), s)
        return True
    except TimeoutError:
        return False


def latencies(fleet: Fleet, since: float, until: float) -> tuple[list[float], list[float]]:
    """(bridge hop, whole way) in ms for the alarm revisions published locally in [since, until)."""
    hop, whole = [], []
    for s in fleet.sites:
        for key, t_local in fleet.local[s].arrived.items():
            if since <= t_local < until and key in fleet.head.arrived:
                hop.append((fleet.head.arrived[key] - t_local) * 1000)
                whole.append((fleet.head.arrived[key] - fleet.local[s].changed_at[key]) * 1000)
    return hop, whole


async def one_size(n: int, args, tmp: Path) -> dict:
    out(f"== {n} estates, {METERS} meters each, polled every {args.poll_s:g} s "
        f"({n * METERS / args.poll_s:.0f} readings/s in all); load {os.getloadavg()[0]:.2f}")
    fleet = Fleet(n, tmp, args.poll_s)
    t_start = time.monotonic()
    stop_flap = asyncio.Event()
    async with Child(__file__, tmp / "child.log") as child:
        try:
            await fleet.start(child)
            out(f"  started in {time.monotonic() - t_start:.0f} s; warming up {args.warmup_s:g} s")
            await asyncio.sleep(args.warmup_s)
            fleet.check_alive()
            flapper = asyncio.create_task(flap(fleet, child, args.flap_s, stop_flap))

            # ---- steady state ----
            load0 = os.getloadavg()[0]
            t0, p0 = time.time(), influx_points(fleet.influx)
            cpu0 = {s: cpu_s(p.pid) for s, p in fleet.gateways.items()}
            central_cpu0 = (cpu_s(fleet.central.proc.pid), cpu_s(fleet.influx.proc.pid))
            await asyncio.sleep(args.steady_s)
            t1, p1 = time.time(), influx_points(fleet.influx)
            fleet.check_alive()
            cpu = {s: (cpu_s(p.pid) - cpu0[s]) / (t1 - t0) * 60 for s, p in fleet.gateways.items()}
            rss = {s: rss_mb(p.pid) for s, p in fleet.gateways.items()}
            central_cpu = ((cpu_s(fleet.central.proc.pid) - central_cpu0[0]) / (t1 - t0) * 60,
                           (cpu_s(fleet.influx.proc.pid) - central_cpu0[1]) / (t1 - t0) * 60)
            central_rss = (rss_mb(fleet.central.proc.pid), rss_mb(fleet.influx.proc.pid))
            await asyncio.sleep(2)  # the last alarms of the window reach head office
            hop, whole = latencies(fleet, t0, t1)
            pps = (p1 - p0) / (t1 - t0)
            load1 = os.getloadavg()[0]
            out(f"  steady {t1 - t0:.0f} s: {pps:.0f} points/s into the central InfluxDB "
                f"({pps / n:.1f} per estate)")
            out(f"  alarm latency, estate broker -> head office: {fmt(hop)}")
            out(f"  alarm latency, gateway's change -> head office: {fmt(whole)}")
            out(f"  per gateway: CPU {min(cpu.values()):.2f}-{max(cpu.values()):.2f} s per minute "
                f"(mean {sum(cpu.values()) / n:.2f}), RSS {min(rss.values()):.0f}-{max(rss.values()):.0f} MB")
            out(f"  central mosquitto: CPU {central_cpu[0]:.2f} s/min, RSS {central_rss[0]:.0f} MB; "
                f"influxd: CPU {central_cpu[1]:.2f} s/min, RSS {central_rss[1]:.0f} MB; load {load0:.2f} -> {load1:.2f}")

            # ---- the partition ----
            out(f"  partition: central mosquitto and InfluxDB stopped for {args.partition_s:g} s")
            fleet.central.stop()
            fleet.influx.stop()
            await asyncio.sleep(args.partition_s)
            fleet.check_alive()
            fleet.central.start()
            fleet.influx.start()
            t_back = time.time()
            back_ms = int(t_back * 1000)
            p_back = influx_points(fleet.influx)
            wanted = {k for s in fleet.sites for k, t in fleet.local[s].arrived.items() if t < t_back}
            during = sum(t_back - args.partition_s - 5 <= t < t_back for s in fleet.sites
                         for t in fleet.local[s].arrived.values())
            alarms_at = outbox_at = influx_at = None
            backlog = {s: fleet.outbox_past(s, back_ms)[1] for s in fleet.sites}
            polled = {s: fleet.readings_before(s, back_ms) for s in fleet.sites}
            rate_samples: list[tuple[float, int]] = [(t_back, p_back)]
            deadline = time.monotonic() + args.catchup_timeout_s
            while (alarms_at is None or outbox_at is None or influx_at is None) and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                now = time.time()
                if alarms_at is None and wanted <= fleet.head.arrived.keys():
                    alarms_at = now - t_back
                if outbox_at is None and all(fleet.outbox_past(s, back_ms)[0] for s in fleet.sites):
                    outbox_at = now - t_back
                if influx_at is None and fleet.influx_has_all_before(back_ms, polled):
                    influx_at = now - t_back
                if len(rate_samples) == 1 or now - rate_samples[-1][0] >= 1:
                    try:
                        rate_samples.append((now, influx_points(fleet.influx)))
                    except (OSError, ValueError, KeyError):
                        pass
            missing = len(wanted - fleet.head.arrived.keys())
            peak = max(((b[1] - a[1]) / (b[0] - a[0]) for a, b in itertools.pairwise(rate_samples)), default=0)
            out(f"  catch-up after the partition: alarms {secs(alarms_at)} ({during} revisions during the "
                f"partition, {missing} of {len(wanted)} missing), readings in InfluxDB {secs(influx_at)}, outboxes "
                f"confirmed on disk {secs(outbox_at)} (backlog {sum(backlog.values())} points, peak {peak:.0f} points/s "
                f"into InfluxDB)")
            out(f"  head office got {fleet.head.copies} alarm messages for {len(fleet.head.arrived)} revisions "
                f"(copies from bridge redelivery)")
            fleet.check_alive()
            return {"estates": n, "meters_per_estate": METERS, "poll_s": args.poll_s,
                    "steady_s": round(t1 - t0, 1), "points_per_s": round(pps, 1),
                    "points_per_s_per_estate": round(pps / n, 2),
                    "alarm_latency_bridge_ms": dist(hop), "alarm_latency_from_change_ms": dist(whole),
                    "gateway_cpu_s_per_min": {"mean": round(sum(cpu.values()) / n, 3), "max": round(max(cpu.values()), 3)},
                    "gateway_rss_mb": {"mean": round(sum(rss.values()) / n, 1), "max": round(max(rss.values()), 1)},
                    "central_mosquitto": {"cpu_s_per_min": round(central_cpu[0], 3), "rss_mb": round(central_rss[0], 1)},
                    "central_influxd": {"cpu_s_per_min": round(central_cpu[1], 3), "rss_mb": round(central_rss[1], 1)},
                    "partition_s": args.partition_s,
                    "catchup_alarms_s": None if alarms_at is None else round(alarms_at, 1),
                    "catchup_influx_s": None if influx_at is None else round(influx_at, 1),
                    "catchup_outbox_s": None if outbox_at is None else round(outbox_at, 1),
                    "catchup_alarm_revisions": len(wanted), "partition_alarm_revisions": during, "catchup_alarms_missing": missing,
                    "catchup_backlog_points": sum(backlog.values()), "catchup_peak_points_per_s": round(peak),
                    "headoffice_copies": fleet.head.copies, "headoffice_revisions": len(fleet.head.arrived),
                    "load_1min": [round(load0, 2), round(load1, 2)]}
        finally:
            stop_flap.set()
            if "flapper" in locals():
                await asyncio.gather(flapper, return_exceptions=True)
            await fleet.stop()


def fmt(xs: list[float]) -> str:
    if not xs:
        return "none"
    return f"p50 {percentile(xs, 50):.0f} ms, p99 {percentile(xs, 99):.0f} ms, max {max(xs):.0f} ms (n {len(xs)})"


def secs(x: float | None) -> str:
    return "not within the timeout" if x is None else f"{x:.1f} s"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[2, 5, 10], help="numbers of estates (default 2 5 10)")
    p.add_argument("--poll-s", type=float, default=5.0,
                   help="poll period of every meter (default 5 s: 20 meters give 4 readings/s per estate, about "
                        "the reference site's 145 meters every 30 s)")
    p.add_argument("--steady-s", type=float, default=120.0)
    p.add_argument("--warmup-s", type=float, default=20.0)
    p.add_argument("--partition-s", type=float, default=60.0)
    p.add_argument("--flap-s", type=float, default=16.0, help="how long a flapping meter stays dead")
    p.add_argument("--catchup-timeout-s", type=float, default=300.0)
    p.add_argument("--quick", action="store_true", help="2 estates, short phases (a smoke run)")
    a = p.parse_args()
    if a.quick:
        a.sizes, a.steady_s, a.warmup_s, a.partition_s = [2], 40.0, 10.0, 15.0
    return a


async def main(args: argparse.Namespace) -> dict:
    out(f"bench/fleet.py: {os.cpu_count()} CPUs, load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    results = []
    for n in args.sizes:
        with tempfile.TemporaryDirectory(prefix=f"fleet{n}-") as d:
            results.append(await one_size(n, args, Path(d)))
    return {"bench": "fleet", "gateway": "one `python -m gateway run` process per estate", "cpus": os.cpu_count(),
            "runs": results}


if __name__ == "__main__":
    run(main, parse_args, child_main)
