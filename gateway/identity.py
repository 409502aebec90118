"""Which box speaks for a site: `<site>/gateway/info`, and another box using our site id.

Head office tells estates apart by `site.id` alone (the `site` tag of every point, the `site`
field and topic prefix of every alarm). Two estates configured with the same id (the example's
`wanhu` copied twice) would merge their data silently, so each box announces itself, retained,
on `<site>/gateway/info` (box id, host, version, started, clock trusted, sent at) every
`mqtt.announce_s` (60 s) and when its clock becomes trusted, and listens on the same topic. A
message from another box that is fresh (sent within 3 × announce_s) means two boxes use one
site id: one loud error line and a critical alarm (`SITE_IDENTITY_RULE`), cleared once that box
has been silent as long. A stale retained message (a box that was replaced) is only logged.

The box id is made once and kept in `box-id` beside the ledger, so a copied site file on another
box (or a second data directory on this one) is a different box, and a restart is the same one.
"""

from __future__ import annotations

import json
import logging
import socket
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Callable

from . import __version__

log = logging.getLogger(__name__)

FRESH_ANNOUNCEMENTS = 3      # another box counts as present this many announcement periods
SITE_IDENTITY_RULE = "site-identity"     # the alarm's rule id (built in: no site-file rule raises it)
EXAMPLE_SITE_ID = "wanhu"                # edge_config/site.example.yaml


def info_topic(site_id: str) -> str:
    return f"{site_id}/gateway/info"


def box_id(ledger_path: Path) -> str:
    """This box's id, made at the first start and kept beside the ledger."""
    path = ledger_path.with_name("box-id")
    try:
        text = path.read_text(encoding="ascii").strip()
        if text:
            return text
    except (OSError, UnicodeDecodeError):
        pass
    text = uuid.uuid4().hex[:12]
    try:
        path.write_text(text + "\n", encoding="ascii")
    except OSError as e:
        log.warning("identity: cannot keep the box id in %s (%s); a new one is made at each start", path, e)
    return text


@dataclass(frozen=True)
class Identity:
    site_id: str
    site_name: str
    box: str
    started: datetime
    host: str = socket.gethostname()
    version: str = __version__

    def message(self, now: datetime, clock_trusted: bool) -> str:
        return json.dumps({"site": self.site_id, "site_name": self.site_name, "box": self.box, "host": self.host,
                           "version": self.version, "started": self.started.isoformat(),
                           "clock_trusted": clock_trusted, "at": now.isoformat()}, ensure_ascii=False)


@dataclass
class OtherBox:
    box: str
    host: str
    started: str
    last_seen: datetime         # by our clock, when its last fresh message arrived


class IdentityWatch:
    """Judges the site's info messages. `on_conflict(other, at)` when another box is heard,
    `on_gone(other, at)` once it has been silent for FRESH_ANNOUNCEMENTS × announce_s (`tick`)."""

    def __init__(self, me: Identity, on_conflict: Callable[[OtherBox, datetime], None],
                 on_gone: Callable[[OtherBox, datetime], None], announce_s: float = 60.0):
        self.me = me
        self.fresh = timedelta(seconds=FRESH_ANNOUNCEMENTS * announce_s)
        self.on_conflict, self.on_gone = on_conflict, on_gone
        self.others: dict[str, OtherBox] = {}
        self._stale_said: set[str] = set()

    def handle(self, topic: str, payload: bytes, at: datetime) -> None:
        if not payload:
            return
        try:
            msg = json.loads(payload)
            box, sent = str(msg["box"]), datetime.fromisoformat(str(msg["at"]))
        except (ValueError, KeyError, TypeError):
            log.warning("identity: %s: not a gateway info message, ignored", topic)
            return
        if box == self.me.box:
            return
        if sent.tzinfo is None or abs(at - sent) > self.fresh:
            if box not in self._stale_said:
                self._stale_said.add(box)
                log.info("identity: %s was last announced by box %s (%s) at %s: a box replaced since?",
                         self.me.site_id, box, msg.get("host", "?"), msg.get("at"))
            return
        other = self.others.get(box)
        if other is None:
            other = self.others[box] = OtherBox(box, str(msg.get("host", "?")), str(msg.get("started", "?")), at)
            log.error("identity: site id '%s' is also used by another gateway (box %s on host %s, started %s): "
                      "head office would merge two estates' data; give each estate its own site.id",
                      self.me.site_id, box, other.host, other.started)
            self.on_conflict(other, at)
        other.last_seen = at

    def tick(self, now: datetime) -> None:
        for box, other in list(self.others.items()):
            if now - other.last_seen > self.fresh:
                del self.others[box]
                log.warning("identity: box %s (host %s) has not announced site '%s' for %.0f s",
                            box, other.host, self.me.site_id, self.fresh.total_seconds())
                self.on_gone(other, now)
