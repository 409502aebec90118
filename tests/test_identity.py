"""Which box speaks for a site: `<site>/gateway/info`, and two boxes configured with one site id."""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import datetime, timedelta, timezone

import aiomqtt

from gateway.config import parse_site, site_warnings
from gateway.events import AlertChange
from gateway.identity import SITE_IDENTITY_RULE, Identity, IdentityWatch, box_id
from gateway.runtime import Gateway

T0 = datetime(2026, 12, 4, 20, 0, tzinfo=timezone.utc)
ME = Identity("wanhu", "万户新居", "aaaaaaaaaaaa", T0, host="pi-north")


def other(box: str, at: datetime, host: str = "pi-south") -> bytes:
    return Identity("wanhu", "万户新居", box, T0, host=host).message(at, True).encode()


def watch():
    said: list[tuple[str, str]] = []
    w = IdentityWatch(ME, lambda o, at: said.append(("conflict", o.box)), lambda o, at: said.append(("gone", o.box)),
                      announce_s=60)
    return w, said


def test_own_and_stale_announcements_are_no_conflict(caplog):
    w, said = watch()
    w.handle("wanhu/gateway/info", ME.message(T0, True).encode(), T0)
    with caplog.at_level(logging.INFO, logger="gateway.identity"):
        # a replaced box's retained message, an hour old: said once, no alarm
        w.handle("wanhu/gateway/info", other("bbbbbbbbbbbb", T0 - timedelta(hours=1)), T0)
        w.handle("wanhu/gateway/info", other("bbbbbbbbbbbb", T0 - timedelta(hours=1)), T0 + timedelta(seconds=5))
        w.handle("wanhu/gateway/info", b"not json", T0)
        w.handle("wanhu/gateway/info", b"", T0)                     # a deleted retained message
    assert said == []
    assert sum("box replaced since" in r.message for r in caplog.records) == 1
    assert any("not a gateway info message" in r.message for r in caplog.records)


def test_another_box_is_one_conflict_until_it_falls_silent(caplog):
    w, said = watch()
    with caplog.at_level(logging.ERROR, logger="gateway.identity"):
        for s in range(0, 300, 60):                                  # announcing every minute
            w.handle("wanhu/gateway/info", other("bbbbbbbbbbbb", T0 + timedelta(seconds=s)), T0 + timedelta(seconds=s))
            w.tick(T0 + timedelta(seconds=s + 30))
    assert said == [("conflict", "bbbbbbbbbbbb")]
    (line,) = [r.message for r in caplog.records]
    assert "site id 'wanhu' is also used by another gateway" in line and "pi-south" in line
    w.tick(T0 + timedelta(seconds=240 + 179))
    assert said == [("conflict", "bbbbbbbbbbbb")]
    w.tick(T0 + timedelta(seconds=240 + 181))                        # 3 announcements missed
    assert said == [("conflict", "bbbbbbbbbbbb"), ("gone", "bbbbbbbbbbbb")]


def test_box_id_is_kept_beside_the_ledger(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = box_id(tmp_path / "a" / "gw.db")
    assert first == box_id(tmp_path / "a" / "gw.db") and len(first) == 12
    assert box_id(tmp_path / "b" / "gw.db") != first                # a copied site file on another box


def test_the_example_site_id_is_a_warning(tmp_path):
    base = {"site": {"id": "wanhu", "name": "万户新居", "latitude": 44.15, "longitude": 125.83}}
    assert any(w.startswith("site.id: 'wanhu' is the example site's id")
               for w in site_warnings(parse_site(base, base_dir=tmp_path)))
    base["site"]["id"] = "lvyuan"
    assert not any(w.startswith("site.id:") for w in site_warnings(parse_site(base, base_dir=tmp_path)))


async def test_two_boxes_with_one_site_id_raise_the_alarm_and_announce_themselves(tmp_path, mqtt_broker):  # noqa: F811
    broker = mqtt_broker()

    def site(name: str) -> dict:
        (tmp_path / name).mkdir()
        return {"site": {"id": "lvyuan", "name": "绿园", "latitude": 44.15, "longitude": 125.83},
                "storage": {"path": str(tmp_path / name / "gw.db"), "commit_interval_s": 0.2},
                "mqtt": {"host": "127.0.0.1", "port": broker.port, "client_id": f"gw-{name}", "announce_s": 0.5},
                "rules": [{"id": "offline", "kind": "offline"}]}

    gws = [Gateway(parse_site(site(n), base_dir=tmp_path)) for n in ("north", "south")]
    subs = [gw.hub.subscribe(AlertChange, name="test") for gw in gws]
    tasks = [asyncio.create_task(gw.run(status_every_s=None, grace_s=1)) for gw in gws]
    seen: list[list[AlertChange]] = [[], []]

    async def until(cond, timeout=20):
        async with asyncio.timeout(timeout):
            while not cond():
                await asyncio.sleep(0.05)
                for i, s in enumerate(subs):
                    seen[i].extend(s.take_all())

    def raised(i):
        return [c.alert for c in seen[i] if c.what == "raised" and c.alert.rule == SITE_IDENTITY_RULE]

    try:
        await until(lambda: raised(0) and raised(1))
        boxes = [box_id(tmp_path / n / "gw.db") for n in ("north", "south")]
        assert [a.source for a in raised(0) + raised(1)] == [boxes[1], boxes[0]]
        assert all(a.severity == "critical" and "lvyuan" in a.message for a in raised(0) + raised(1))
        gws[1].stop()
        await asyncio.wait_for(tasks[1], 15)
        await until(lambda: any(c.what == "cleared" and c.alert.rule == SITE_IDENTITY_RULE for c in seen[0]))
        async with aiomqtt.Client("127.0.0.1", broker.port) as c:       # the retained announcement
            await c.subscribe("lvyuan/gateway/info", qos=1)
            async with asyncio.timeout(5):
                async for m in c.messages:
                    info = json.loads(m.payload)
                    if info["box"] == boxes[0]:
                        break
        assert info["site"] == "lvyuan" and info["clock_trusted"] is True and info["version"]
        assert datetime.fromisoformat(info["started"]) <= datetime.fromisoformat(info["at"])
    finally:
        for gw in gws:
            gw.stop()
        await asyncio.gather(*tasks, return_exceptions=True)
