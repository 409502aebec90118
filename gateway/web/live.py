"""Live updates for the pages: events from the hub fanned out to every open page (SSE).

One hub subscription feeds any number of clients; each client has a small queue of its own,
and a client that stops reading loses its oldest messages rather than slowing anyone else.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import deque

from ..events import AlertChange

log = logging.getLogger(__name__)


def alert_json(change: AlertChange, tz) -> dict:
    a = change.alert
    local = lambda t: t.astimezone(tz).strftime("%m-%d %H:%M:%S") if t else ""  # noqa: E731
    return {"id": a.id, "rule": a.rule, "kind": a.kind, "source": a.source, "severity": a.severity,
            "state": a.state, "message": a.message, "message_en": a.message_en, "raised": local(a.raised_at),
            "updated": local(a.updated_at), "acked_by": a.acked_by, "ack_note": a.ack_note, "what": change.what}


class Client:
    def __init__(self, owner: str = "", limit: int = 200):
        self.owner = owner                # the session it was opened in
        self.items: deque[str] = deque(maxlen=limit)
        self.wake = asyncio.Event()
        self.closed = False               # its session ended: the stream stops

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def put(self, text: str) -> None:
        self.items.append(text)
        self.wake.set()

    async def next_batch(self, timeout: float) -> list[str]:
        if not self.items and not self.closed:
            self.wake.clear()
            try:
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                return []
        out = list(self.items)
        self.items.clear()
        return out


class Broadcaster:
    """Takes AlertChange events from the hub and sends them to every connected client as SSE."""

    def __init__(self, hub, tz):
        self.hub = hub
        self.tz = tz
        self.clients: set[Client] = set()
        self.sent = 0

    def connect(self, owner: str = "") -> Client:
        c = Client(owner)
        self.clients.add(c)
        return c

    def disconnect(self, c: Client) -> None:
        self.clients.discard(c)

    def close(self, owner: str) -> None:
        """End the streams opened in a session (logged out)."""
        for c in [c for c in self.clients if c.owner == owner]:
            c.close()

    def send(self, event: str, data: dict) -> None:
        text = f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
        for c in self.clients:
            c.put(text)
        self.sent += 1

    async def run(self) -> None:
        sub = self.hub.subscribe(AlertChange, maxlen=10_000, name="web")
        try:
            while True:
                for change in await sub.get_batch():
                    self.send("alert", alert_json(change, self.tz))
        finally:
            sub.close()
