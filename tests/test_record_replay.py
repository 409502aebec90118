"""`run --record` then `replay`: the replay gives the alerts the live gateway gave."""

from __future__ import annotations

import asyncio
import json
import sys

import yaml

from gateway.config import parse_site
from gateway.events import AlertChange
from gateway.replay import replay
from gateway.runtime import Gateway
from simulators.card_reader import SerialCardReaderSim
from simulators.site import SiteSimulation

SITE = {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15, "longitude": 125.83}
UNKNOWN = 3999999999


def site(tmp_path, broker, reader_port):
    (tmp_path / "cards.csv").write_text("number,holder,household,role,valid_from,valid_to,revoked\n"
                                        "1234567890,张伟,B01-1-101,resident,,,\n", encoding="utf-8")
    return {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2, "offline_after": 2}],
            "meters": [{"id": f"B0{u}-stair", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u,
                        "model": "chint-ddsu666", "poll_s": 1, "circuit": "stairwell_lighting"} for u in (1, 2, 3)],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "doors": [{"id": "gate-n"}, {"id": "gate-s", "topic": "wanhu/acs/gate-s/door"}],
            "card_readers": [{"id": "gate-n-in", "type": "serial", "port": reader_port, "format": "rdm6300",
                              "door": "gate-n", "direction": "in"}],
            "cards": {"file": "cards.csv", "hash_key_env": "GW_TEST_KEY"},
            "rules": [{"id": "voltage-test", "kind": "threshold", "field": "voltage_v", "above": 200,
                       "hysteresis": 1, "meters": ["B01-stair"]},
                      {"id": "offline", "kind": "offline", "periods": 2, "settle_periods": 0},
                      {"id": "cards", "kind": "access", "check": "invalid_card"},
                      {"id": "forced", "kind": "door", "check": "forced_open", "severity": "critical"}]}


def key(changes):
    """Per alert (rule and source), its changes in order: live and replayed agree on these; the
    interleaving of different alerts within a few milliseconds may differ (a poll is recorded
    when it ends, a swipe when it arrives)."""
    out: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for c in changes:
        out.setdefault((c.alert.rule, c.alert.source), []).append((c.what, c.alert.state))
    return out


async def test_replay_gives_the_alerts_of_the_live_run(tmp_path, mqtt_broker, monkeypatch):  # noqa: F811
    monkeypatch.setenv("GW_TEST_KEY", "k")
    broker = mqtt_broker()
    reader = SerialCardReaderSim("rdm6300")
    await reader.start()
    data = site(tmp_path, broker, reader.port_path)
    cfg = parse_site(data, base_dir=tmp_path)
    recording = tmp_path / "traffic.jsonl"
    async with SiteSimulation(cfg) as sim:
        patched = parse_site({**data, "buses": [dict(data["buses"][0], **sim.bus_overrides["b"])]}, base_dir=tmp_path)
        gw = Gateway(patched, record=recording)
        live = gw.hub.subscribe(AlertChange, name="test")
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))
        async with asyncio.timeout(10):
            while gw.mqtt is None or not gw.mqtt.connected:
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.5)
        sim.meter("B03-stair").dead = True
        reader.swipe(UNKNOWN)
        import aiomqtt
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:
            await c.publish("wanhu/acs/gate-s/door", json.dumps({"event": "forced_open"}), qos=1)
        await asyncio.sleep(2.0)
        forced = next(a for a in gw.rules.active() if a.rule == "forced")
        assert gw.ack_alert(forced.id, "zhang", "went to look") is not None   # a person's action, recorded too
        await asyncio.sleep(2.0)
        sim.meter("B03-stair").dead = False
        await asyncio.sleep(2.5)
        gw.stop()
        await asyncio.wait_for(task, 15)
    await reader.stop()
    live_changes = [c for c in live.take_all()]
    assert {c.alert.rule for c in live_changes if c.what == "raised"} == {"voltage-test", "offline", "cards", "forced"}
    assert any(c.what == "cleared" and c.alert.rule == "offline" for c in live_changes)

    kinds = [json.loads(line)["type"] for line in recording.read_text().splitlines()]
    assert kinds[0] == "header" and {"poll", "serial", "mqtt", "ack"} <= set(kinds)
    assert ("acknowledged", "acknowledged") in key(live_changes)[("forced", "gate-s")]

    replayed = await replay(cfg, recording, tail_s=0)
    # the same alerts with the same changes, judged at the recorded times
    assert key(replayed) == key(live_changes)
    raised_live = {c.alert.rule: c.alert.raised_at for c in live_changes if c.what == "raised"}
    raised_replay = {c.alert.rule: c.alert.raised_at for c in replayed if c.what == "raised"}
    for rule in ("voltage-test", "cards", "forced"):  # raised by an event: the event's own time
        assert raised_replay[rule] == raised_live[rule], rule
    # raised by a tick (stale meter) or the driver's offline event, whichever came first: the
    # replay ticks on whole seconds, the live gateway at its own phase
    assert abs((raised_replay["offline"] - raised_live["offline"]).total_seconds()) < 1.0

    # and through the command line
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "replay", str(recording), "-c",
                                                str(site_file), "--tail", "0", stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, env={"GW_TEST_KEY": "k", **__import__("os").environ})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert "forced gate-s" in out.decode() and "replay: 4 alerts raised" in out.decode()
