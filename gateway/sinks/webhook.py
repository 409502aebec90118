"""Alerts to HTTP webhooks, with retry: our JSON, or a WeCom (企业微信) group robot message.

The URL usually carries the robot's key, so it comes from an environment variable. A webhook
that is down is retried with back-off in order; alerts waiting for it are kept in memory up to a
bound (the ledger keeps the full history regardless).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections import deque
from zoneinfo import ZoneInfo

import aiohttp

from ..backoff import Backoff
from ..events import AlertChange
from .alert_message import alert_body

log = logging.getLogger(__name__)

SEVERITY_ZH = {"info": "提示", "warning": "警告", "critical": "严重"}
WHAT_ZH = {"raised": "告警", "updated": "告警更新", "acknowledged": "已确认", "cleared": "已恢复", "renotify": "仍未处理"}




def body_wecom(change: AlertChange, site_name: str, tz: ZoneInfo) -> dict:
    """A WeCom group-robot text message (msgtype text), in Chinese for the people on duty."""
    a = change.alert
    when = a.updated_at.astimezone(tz).strftime("%m-%d %H:%M")
    lines = [f"【{site_name}】{WHAT_ZH.get(change.what, change.what)}（{SEVERITY_ZH.get(a.severity, a.severity)}）",
             a.message, f"时间 {when}"]
    if a.state == "acknowledged" and a.acked_by:
        lines.append(f"确认人 {a.acked_by}" + (f"：{a.ack_note}" if a.ack_note else ""))
    lines.append(f"编号 {a.id}")
    return {"msgtype": "text", "text": {"content": "\n".join(lines)}}


class Webhook:
    def __init__(self, name: str, url: str, fmt: str, severities: set[str], site_name: str, tz: ZoneInfo,
                 timeout_s: float = 10.0, backoff_max_s: float = 300.0, queue_max: int = 1000, site_id: str = ""):
        self.name = name
        self.url = url
        self.fmt = fmt
        self.severities = severities
        self.site_name = site_name
        self.site_id = site_id
        self.tz = tz
        self.timeout_s = timeout_s
        self.backoff_max_s = backoff_max_s
        self._queue: deque[AlertChange] = deque(maxlen=queue_max)
        self._ready = asyncio.Event()
        self.sent = self.failures = self.dropped = self.skipped_updates = 0
        self._down = ""

    def offer(self, change: AlertChange) -> None:
        if change.alert.severity not in self.severities:
            return
        if change.what == "updated":
            # A round's next late checkpoint or a card's next swipe updates the console and MQTT;
            # a group chat gets the raise, the reminders, the acknowledgement and the clear.
            self.skipped_updates += 1
            return
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(change)
        self._ready.set()

    def _body(self, change: AlertChange) -> dict:
        return body_wecom(change, self.site_name, self.tz) if self.fmt == "wecom" else alert_body(change, self.site_id, self.site_name)

    async def run(self) -> None:
        backoff = Backoff(1.0, self.backoff_max_s, jitter=random.Random())
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s)) as session:
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                change = self._queue[0]
                try:
                    await self._post(session, change)
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError) as e:
                    self.failures += 1
                    if not self._down:
                        log.error("webhook %s: cannot deliver alarms (%s); retrying, %d waiting",
                                  self.name, e, len(self._queue))
                    self._down = str(e)
                    await asyncio.sleep(backoff.failed())
                    continue
                if self._queue and self._queue[0] is change:
                    self._queue.popleft()
                self.sent += 1
                backoff.reset()
                if self._down:
                    log.info("webhook %s: delivering again", self.name)
                    self._down = ""

    async def _post(self, session: aiohttp.ClientSession, change: AlertChange) -> None:
        data = json.dumps(self._body(change), ensure_ascii=False).encode()
        async with session.post(self.url, data=data, headers={"Content-Type": "application/json"}) as resp:
            text = await resp.text()
            if resp.status >= 300:
                raise ValueError(f"HTTP {resp.status}: {text[:200]}")
            if self.fmt == "wecom":
                # WeCom answers 200 with an error code in the body (e.g. 93000 invalid key)
                try:
                    code = json.loads(text).get("errcode", 0)
                except (ValueError, AttributeError):
                    code = 0
                if code:
                    raise ValueError(f"WeCom errcode {code}: {text[:200]}")
