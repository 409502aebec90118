"""Head office across estates, through the shipped configuration (deploy/headoffice/): two
estates' gateways, each with its own mosquitto bridged over TLS (client certificates) to a
central mosquitto, and one central InfluxDB. A partition of 30 s (central broker and InfluxDB
stopped) while both estates poll and raise alarms; afterwards head office's deduplicated view of
the alarms equals each estate's own, and InfluxDB holds every reading once."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import sys
import time
from pathlib import Path

import aiomqtt
from aiohttp import web
from headoffice_rig import DEPLOY, Broker, make_certs, render

from gateway.clock import to_us
from gateway.config import parse_site
from gateway.events import AlertChange, Reading
from gateway.ledger.queries import outbox_status, read_only
from gateway.runtime import Gateway
from simulators.site import SiteSimulation

SITES = ("lvyuan", "hexie")
PARTITION_S = 30.0


def site_data(site: str, broker: Broker, influx_url: str, tmp: Path) -> dict:
    meters = [{"id": f"{site}-m{u}", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u, "model": "chint-ddsu666",
               "poll_s": 1, "circuit": "stairwell_lighting", "building": f"B0{u}"} for u in (1, 2)]
    return {"site": {"id": site, "name": {"lvyuan": "绿园小区", "hexie": "和谐家园"}[site], "latitude": 43.9,
                     "longitude": 125.3},
            "storage": {"path": str(tmp / site / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2}],
            "meters": meters, "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": f"gw-{site}"},
            "influxdb": {"version": 1, "url": influx_url, "database": "gateway", "batch_age_s": 0.5},
            "rules": [
                # ~220 V from the simulator: raised at once
                {"id": "voltage-test", "kind": "threshold", "field": "voltage_v", "above": 200, "hysteresis": 1,
                 "severity": "critical", "meters": [f"{site}-m1"]},
                {"id": "offline", "kind": "offline", "periods": 2, "settle_periods": 0, "severity": "warning"}]}


class HeadOffice:
    """A central subscriber with a persistent session: every alarm message, reconnecting through
    outages, and the deduplicated view a consumer keeps by (site, alarm_id, revision)."""

    def __init__(self, port: int, certs: Path):
        self.port = port
        self.tls = ssl.create_default_context(cafile=str(certs / "headoffice-ca.pem"))
        self.tls.load_cert_chain(certs / "headoffice-consumer.pem", certs / "headoffice-consumer.key")
        self.messages: list[dict] = []
        self.arrived: dict[tuple[str, str, int], float] = {}

    async def run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.port, identifier="headoffice-test",
                                          clean_session=False, tls_context=self.tls) as c:
                    await c.subscribe("+/alerts/#", qos=1)
                    async for m in c.messages:
                        if m.payload:
                            body = json.loads(m.payload)
                            assert str(m.topic).startswith(f"{body['site']}/alerts/"), (m.topic, body)
                            self.messages.append(body)
                            self.arrived.setdefault((body["site"], body["alarm_id"], body["revision"]),
                                                    time.monotonic())
            except aiomqtt.MqttError:
                await asyncio.sleep(0.3)

    def view(self) -> dict[tuple[str, str], tuple[int, str]]:
        """(site, alarm_id) -> (revision, state) of the newest revision; cleared ones left out."""
        newest: dict[tuple[str, str], dict] = {}
        for m in self.messages:
            key = (m["site"], m["alarm_id"])
            if key not in newest or m["revision"] > newest[key]["revision"]:
                newest[key] = m
        return {k: (m["revision"], m["state"]) for k, m in newest.items() if m["state"] != "cleared"}


class Forwarder:
    """deploy/headoffice/forward_critical.py as head office runs it, posting to a fake WeCom robot."""

    def __init__(self, central_port: int, certs: Path, wecom_url: str, state: Path):
        self.env = {**os.environ, "CENTRAL_HOST": "127.0.0.1", "CENTRAL_PORT": str(central_port),
                    "CERTS": str(certs), "WECOM_URL": wecom_url}
        self.state = state
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, str(DEPLOY / "forward_critical.py"), "--state", str(self.state), env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        line = await asyncio.wait_for(self.proc.stdout.readline(), 30)
        assert line.strip() == b"forwarding", line

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def wecom_robot() -> tuple[web.AppRunner, str, list[dict]]:
    got: list[dict] = []

    async def send(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.json_response({"errcode": 0, "errmsg": "ok"})
    app = web.Application()
    app.router.add_post("/cgi-bin/webhook/send", send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/cgi-bin/webhook/send?key=test", got


async def until(cond, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout} s")
        await asyncio.sleep(0.1)


async def test_two_estates_bridged_to_head_office_survive_a_partition(tmp_path, influx1):
    certs = make_certs(tmp_path / "certs", [*SITES, "headoffice-consumer"])
    acl = tmp_path / "central.acl"
    acl.write_text((DEPLOY / "mosquitto" / "central.acl").read_text(encoding="utf-8"))
    central = Broker(tmp_path / "central", lambda port: render("central.conf", CERTS=str(certs), ACL=str(acl),
                                                               PORT=str(port)))
    central.start()
    # the estate's own listener for its box, as Debian's default conf would have it
    brokers = {s: Broker(tmp_path / f"{s}-broker", lambda port, s=s: (
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        + render("site-bridge.conf", SITE=s, HOST=f"box-{s}", CENTRAL=f"127.0.0.1:{central.port}", CERTS=str(certs))))
               for s in SITES}
    for b in brokers.values():
        b.start()
    ho = HeadOffice(central.port, certs)
    watcher = asyncio.create_task(ho.run())
    robot, robot_url, posted = await wecom_robot()
    forwarder = Forwarder(central.port, certs, robot_url, tmp_path / "forwarded.json")
    await forwarder.start()
    sims: dict[str, SiteSimulation] = {}
    gws: dict[str, Gateway] = {}
    tasks = []
    readings: dict[str, list[Reading]] = {s: [] for s in SITES}
    try:
        for s in SITES:
            (tmp_path / s).mkdir()
            sims[s] = SiteSimulation(parse_site(site_data(s, brokers[s], influx1.url, tmp_path), base_dir=tmp_path))
            await sims[s].start()
            gws[s] = Gateway(parse_site(sims[s].patched_config().model_dump(mode="json"), base_dir=tmp_path))
        subs = {s: gws[s].hub.subscribe(Reading, name="test") for s in SITES}
        alert_subs = {s: gws[s].hub.subscribe(AlertChange, name="test") for s in SITES}
        changes: dict[str, list[AlertChange]] = {s: [] for s in SITES}

        def drain() -> None:
            for s in SITES:
                readings[s].extend(subs[s].take_all())
                changes[s].extend(alert_subs[s].take_all())

        def own_view() -> dict[tuple[str, str], tuple[int, str]]:
            drain()
            return {(s, f"{s}/{a.id}"): (a.revision, a.state) for s in SITES if gws[s].rules is not None
                    for a in gws[s].rules.active()}

        tasks = [asyncio.create_task(gws[s].run(status_every_s=None, grace_s=1)) for s in SITES]
        await until(lambda: len(own_view()) == 2 and ho.view() == own_view(), "voltage alarms of both estates centrally")
        assert {site for site, _ in ho.view()} == set(SITES)
        await until(lambda: len(posted) == 2, "both critical alarms forwarded to WeCom")
        assert sorted(p["text"]["content"].split("\n")[0] for p in posted) == ["【和谐家园】严重告警", "【绿园小区】严重告警"]

        # ---- the partition: head office's broker and InfluxDB are gone for 30 s ----
        await forwarder.stop()            # and the forwarder restarts after it: nothing is sent twice
        central.stop()
        influx1.stop()
        cut_started = time.monotonic()
        for s in SITES:
            sims[s].meter(f"{s}-m2").dead = True                      # an offline alarm at each estate
        await until(lambda: all(any(c.what == "raised" and c.alert.rule == "offline" for c in changes[s])
                                for s in SITES) or drain(), "offline alarms during the partition", 20)
        lvyuan_voltage = next(a for a in gws["lvyuan"].rules.active() if a.rule == "voltage-test")
        gws["lvyuan"].ack_alert(lvyuan_voltage.id, "王师傅", "已到现场")  # acknowledged while cut off
        await asyncio.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_started)))
        cut_ms = to_us(gws["lvyuan"].clock.now()) // 1000
        central.start()
        influx1.start()
        await forwarder.start()           # hexie's alarm, still retained as raised, is delivered again

        # ---- afterwards: head office's view is each estate's own, InfluxDB has every reading once ----
        await until(lambda: ho.view() == own_view(), "head office's view equal to the estates' own", 90)
        assert ("lvyuan", f"lvyuan/{lvyuan_voltage.id}") in ho.view()
        assert ho.view()[("lvyuan", f"lvyuan/{lvyuan_voltage.id}")][1] == "acknowledged"

        def drained(s: str) -> bool:
            with read_only(gws[s].cfg.storage_path) as db:
                st = outbox_status(db)
            return st.depth == 0 or (st.oldest_us is not None and st.oldest_us // 1000 > cut_ms)
        await until(lambda: all(drained(s) for s in SITES), "both outboxes past the partition", 90)
        drain()
        for s in SITES:
            ours = sorted((r.meter, to_us(r.ts) // 1000) for r in readings[s] if to_us(r.ts) // 1000 < cut_ms)
            rows = influx1.query(f"SELECT energy_kwh, meter FROM meter WHERE site = '{s}' AND time < {cut_ms}ms")
            theirs = sorted((row[2], row[0]) for res in rows["results"] for ser in res.get("series", [])
                            for row in ser["values"])
            assert len(ours) >= PARTITION_S and theirs == ours, (s, len(ours), len(theirs))   # m1 at 1 s

        def forwarded_all() -> bool:
            state = json.loads(forwarder.state.read_text()) if forwarder.state.exists() else {}
            return all(state.get(f"{site}|{alarm}", 0) >= rev for (site, alarm), (rev, _) in ho.view().items())
        await until(forwarded_all, "the forwarder through every alarm")
        assert len(posted) == 2                                  # the redelivered copy was not forwarded
    finally:
        for gw in gws.values():
            gw.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await forwarder.stop()
        await robot.cleanup()
        for sim in sims.values():
            await sim.stop()
        for b in [*brokers.values(), central]:
            b.stop()
