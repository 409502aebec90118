"""In-process publish/subscribe: drivers publish events, store/rules/sinks/web subscribe.

`publish` never blocks and never awaits, so a driver's timing does not depend on who listens.
A subscriber that must not lose anything (the ledger) subscribes unbounded; others give a
bound and lose the oldest events they failed to take, counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

log = logging.getLogger(__name__)


class Subscription:
    def __init__(self, hub: "Hub", types: tuple[type, ...], maxlen: int | None, name: str):
        self._hub = hub
        self.types = types
        self.name = name
        self._items: deque = deque(maxlen=maxlen)
        self._wakeup = asyncio.Event()
        self.dropped = 0

    def _put(self, event: object) -> None:
        if self._items.maxlen is not None and len(self._items) == self._items.maxlen:
            if not self.dropped:
                log.warning("subscriber %s is not keeping up: dropping its oldest events", self.name)
            self.dropped += 1
        self._items.append(event)
        self._wakeup.set()

    async def get_batch(self) -> list:
        """Wait for at least one event, then take everything that is waiting."""
        while not self._items:
            self._wakeup.clear()
            await self._wakeup.wait()
        return self.take_all()

    def take_all(self) -> list:
        batch = list(self._items)
        self._items.clear()
        return batch

    def pending(self) -> int:
        return len(self._items)

    def close(self) -> None:
        self._hub._unsubscribe(self)


class Hub:
    def __init__(self) -> None:
        self._subs: list[Subscription] = []
        self._routes: dict[type, list[Subscription]] = {}
        self.published = 0

    def subscribe(self, *types: type, maxlen: int | None = None, name: str = "") -> Subscription:
        sub = Subscription(self, types, maxlen, name or ",".join(t.__name__ for t in types))
        self._subs.append(sub)
        self._routes.clear()
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subs:
            self._subs.remove(sub)
            self._routes.clear()

    def publish(self, event: object) -> None:
        self.published += 1
        cls = type(event)
        subs = self._routes.get(cls)
        if subs is None:
            subs = self._routes[cls] = [s for s in self._subs if not s.types or issubclass(cls, s.types)]
        for sub in subs:
            sub._put(event)
