"""Alarms end to end: simulators -> gateway rules -> ledger and a real MQTT broker, acknowledged
through the CLI, cleared when the condition goes."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import sys

import aiomqtt
import yaml

from gateway.config import parse_site
from gateway.events import AlertChange
from gateway.runtime import Gateway
from simulators.site import SiteSimulation

SITE = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}


async def cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_alarm_raised_published_acknowledged_and_cleared(tmp_path, mqtt_broker):  # noqa: F811
    broker = mqtt_broker()
    meters = [{"id": f"B0{u}-stair", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u, "model": "chint-ddsu666",
               "poll_s": 1, "circuit": "stairwell_lighting", "building": f"B0{u}"} for u in (1, 2)]
    data = {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2}],
            "meters": meters, "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "rules": [
                # the simulated supply sits near 220 V: a 200 V limit is crossed at once
                {"id": "voltage-test", "kind": "threshold", "field": "voltage_v", "above": 200, "hysteresis": 1,
                 "severity": "critical", "meters": ["B01-stair"]},
                {"id": "offline", "kind": "offline", "periods": 2, "settle_periods": 0, "severity": "warning"},
            ]}
    cfg = parse_site(data, base_dir=tmp_path)
    received: list[tuple[str, bytes, bool]] = []

    async def watch():
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.subscribe("wanhu/alerts/#", qos=1)
            async for m in c.messages:
                received.append((str(m.topic), m.payload, m.retain))

    watcher = asyncio.create_task(watch())
    async with SiteSimulation(cfg) as sim:
        patched = sim.patched_config().model_dump(mode="json")
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(patched, allow_unicode=True), encoding="utf-8")
        gw = Gateway(parse_site(patched, base_dir=tmp_path))
        changes = gw.hub.subscribe(AlertChange, name="test")
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))

        async def until(cond, timeout=15):
            async with asyncio.timeout(timeout):
                while not cond():
                    await asyncio.sleep(0.05)

        seen: list[AlertChange] = []

        def got(what, rule):
            seen.extend(changes.take_all())
            return [c for c in seen if c.what == what and c.alert.rule == rule]

        await until(lambda: got("raised", "voltage-test"))
        (raised,) = got("raised", "voltage-test")
        alert_id = raised.alert.id
        assert raised.alert.source == "B01-stair" and raised.alert.severity == "critical"
        assert "1号楼楼道照明" in raised.alert.message and "200" in raised.alert.message
        await until(lambda: any(t == "wanhu/alerts/voltage-test/B01-stair" for t, _, _ in received))

        await asyncio.sleep(0.5)  # a ledger commit
        code, out, err = await cli("alarms", "list", "-c", str(site_file))
        assert code == 0, err
        assert alert_id in out and "1号楼楼道照明" in out
        code, out, err = await cli("alarms", "ack", alert_id, "--by", "张师傅", "--note", "已到现场", "-c", str(site_file))
        assert code == 0, err
        await until(lambda: got("acknowledged", "voltage-test"))
        (acked,) = got("acknowledged", "voltage-test")
        assert (acked.alert.acked_by, acked.alert.ack_note, acked.alert.state) == ("张师傅", "已到现场", "acknowledged")
        code, _, err = await cli("alarms", "ack", "no-such-id", "--by", "x", "-c", str(site_file))
        assert code == 2 and "no alarm with id" in err

        # a meter dies: offline alarm; it comes back: cleared, and its retained message is deleted
        sim.meter("B02-stair").dead = True
        await until(lambda: got("raised", "offline"), timeout=20)
        sim.meter("B02-stair").dead = False
        await until(lambda: got("cleared", "offline"), timeout=20)
        offline_topic = got("raised", "offline")[0].alert.source
        gw.stop()
        await asyncio.wait_for(task, 15)
    watcher.cancel()

    db = sqlite3.connect(tmp_path / "gw.db")
    states = dict(db.execute("SELECT rule, state FROM alerts").fetchall())
    assert states == {"voltage-test": "acknowledged", "offline": "cleared"}
    history = [w for (w,) in db.execute("SELECT what FROM alert_history WHERE alert_id = ? ORDER BY id", (alert_id,))]
    assert history[0] == "raised" and "acknowledged" in history
    lines = [r[0] for r in db.execute("SELECT line FROM outbox WHERE measurement = 'alert'")]
    assert lines == []  # no influxdb section: nothing queued
    # MQTT: the voltage alert is retained (still open); the offline one was deleted (empty retained payload)
    voltage_msgs = [json.loads(p) for t, p, _ in received if t == "wanhu/alerts/voltage-test/B01-stair" and p]
    assert voltage_msgs[0]["state"] == "active" and voltage_msgs[-1]["state"] == "acknowledged"
    # every message stands alone for head office: its estate, an id unique across estates, and a
    # revision growing by one with each change of the alarm
    bodies = [json.loads(p) for _, p, _ in received if p]
    assert bodies and all((m["site"], m["site_name"], m["alarm_id"], m["schema"]) == ("wanhu", "万户新居", f"wanhu/{m['id']}", 1)
                          for m in bodies)
    assert [m["revision"] for m in voltage_msgs] == list(range(1, len(voltage_msgs) + 1))
    assert [m["revision"] for m in voltage_msgs] == [
        c.alert.revision for c in seen if c.alert.id == alert_id]
    offline_msgs = [(p, r) for t, p, r in received if t == f"wanhu/alerts/offline/{offline_topic}"]
    assert offline_msgs[-1][0] == b"" and json.loads(offline_msgs[-2][0])["state"] == "cleared"
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:  # a newcomer sees only what is open
        await c.subscribe("wanhu/alerts/#", qos=1)
        retained = []
        try:
            async with asyncio.timeout(1.0):
                async for m in c.messages:
                    retained.append(str(m.topic))
        except TimeoutError:
            pass
    assert retained == ["wanhu/alerts/voltage-test/B01-stair"]
