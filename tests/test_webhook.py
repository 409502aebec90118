"""Alerts to a webhook over real HTTP on loopback: retried in order while it fails, WeCom format."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

from aiohttp import web

from gateway.events import Alert, AlertChange
from gateway.sinks.webhook import Webhook, body_wecom

T = datetime(2026, 11, 23, 19, 2, tzinfo=timezone.utc)


def change(n: int, what: str = "raised", severity: str = "critical") -> AlertChange:
    a = Alert(f"voltage-high/B0{n}-stair/1", "voltage-high", "threshold", f"B0{n}-stair", severity,
              "acknowledged" if what == "acknowledged" else "active", f"{n}号楼楼道照明 电压 240.0 V 超过上限 235.4 V",
              "voltage above limit", T, T, acked_by="张师傅" if what == "acknowledged" else "", ack_note="已处理")
    return AlertChange(a, what)


async def server(fail_first: int):
    got: list[dict] = []
    calls = {"n": 0}

    async def hook(request: web.Request) -> web.Response:
        calls["n"] += 1
        if calls["n"] <= fail_first:
            return web.Response(status=503, text="busy")
        got.append(json.loads(await request.read()))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    app = web.Application()
    app.router.add_post("/hook", hook)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/hook", got, calls


async def test_failing_webhook_is_retried_in_order_and_filters_severity():
    runner, url, got, calls = await server(fail_first=3)
    w = Webhook("duty", url, "json", {"critical"}, "万户新居", ZoneInfo("Asia/Shanghai"), backoff_max_s=0.2,
                site_id="wanhu")
    task = asyncio.create_task(w.run())
    try:
        for n in (1, 2, 3):
            w.offer(change(n))
        w.offer(change(4, severity="info"))  # not for this webhook
        async with asyncio.timeout(15):
            while len(got) < 3:
                await asyncio.sleep(0.05)
        assert [g["source"] for g in got] == ["B01-stair", "B02-stair", "B03-stair"]
        assert {(g["site"], g["site_name"], g["alarm_id"]) for g in got} == {
            ("wanhu", "万户新居", f"wanhu/{g['id']}") for g in got}     # the MQTT message's contract
        assert calls["n"] == 6 and w.failures == 3 and w.sent == 3
    finally:
        task.cancel()
        await runner.cleanup()


async def test_wecom_robot_text_message():
    runner, url, got, _ = await server(fail_first=0)
    w = Webhook("wecom", url, "wecom", {"warning", "critical"}, "万户新居", ZoneInfo("Asia/Shanghai"))
    task = asyncio.create_task(w.run())
    try:
        w.offer(change(1, "acknowledged"))
        async with asyncio.timeout(10):
            while not got:
                await asyncio.sleep(0.05)
    finally:
        task.cancel()
        await runner.cleanup()
    (msg,) = got
    assert msg["msgtype"] == "text"
    text = msg["text"]["content"]
    assert text.startswith("【万户新居】已确认（严重）")
    assert "1号楼楼道照明 电压 240.0 V" in text and "时间 11-24 03:02" in text and "确认人 张师傅：已处理" in text
    assert body_wecom(change(2), "x", ZoneInfo("Asia/Shanghai"))["text"]["content"].startswith("【x】告警（严重）")


def test_updates_do_not_go_to_the_group_chat():
    """A round's next late checkpoint (an "updated" change) stays on the console and MQTT."""
    from datetime import datetime, timezone
    from zoneinfo import ZoneInfo

    from gateway.events import Alert, AlertChange
    from gateway.sinks.webhook import Webhook

    w = Webhook("duty", "http://127.0.0.1:9/", "wecom", {"warning", "critical"}, "万户新居", ZoneInfo("Asia/Shanghai"))
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    a = Alert(id="patrol/north@0/1", rule="patrol", kind="patrol", source="north@0", severity="warning",
              state="active", message="北环线 巡更：迟到", message_en="late", raised_at=now, updated_at=now)
    for what in ("raised", "updated", "updated", "acknowledged", "cleared"):
        w.offer(AlertChange(a, what))
    assert [c.what for c in w._queue] == ["raised", "acknowledged", "cleared"]
    assert w.skipped_updates == 2
