"""Access (card swipes) and door rules.

access / invalid_card: a swipe whose category is in `categories` (unknown, revoked, expired)
  raises the door's alert (source = door id); further cases update it (count, last holder);
  it clears `quiet_s` after the last case.
access / staff_hours: a staff card (optionally only `roles`) swiped outside `hours` (site local
  time, start inclusive, end exclusive; end <= start means the hours cross midnight).
access / denied_burst: `count` denied swipes (unknown / revoked / expired) at one door within
  `window_s` (a swipe exactly window_s after the first still counts); clears after `quiet_s`
  without a new denied swipe.
door / forced_open: a forced_open event raises; the door closing clears.
door / held_open: a door open strictly longer than held_open_s (the rule's, else the door's) is
  raised at tick; a held_open event from the controller raises at once; closing clears.

After a restart: an access alert taken back clears `quiet_s` after its last case (its last
update), its count goes on; a door alert clears when the door closes (a close that happened while
the gateway was down is not known: the alert then waits for the next close).
"""

from __future__ import annotations

from collections import deque
from datetime import datetime, time, timedelta

from ..events import CardSwipe, DoorEvent
from .base import Rule

CATEGORY_ZH = {"unknown": "未登记卡", "revoked": "已注销卡", "expired": "过期卡"}
DENIED = frozenset(CATEGORY_ZH)


def in_hours(local: time, start: time, end: time) -> bool:
    if start < end:
        return start <= local < end
    return local >= start or local < end          # crosses midnight (or start == end: all day)


def _hm(text: str) -> time:
    h, m = text.split(":")
    return time(int(h), int(m))


class AccessRuleImpl(Rule):
    kind = "access"
    wants = (CardSwipe,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.doors = self.select_doors()
        self.categories = frozenset(cfg.categories)
        self.quiet = timedelta(seconds=cfg.quiet_s)
        self.window = timedelta(seconds=cfg.window_s)
        self.last_case: dict[str, datetime] = {}
        self.counts: dict[str, int] = {}
        self.denied: dict[str, deque] = {}
        if cfg.hours is not None:
            self.start, self.end = _hm(cfg.hours.start), _hm(cfg.hours.end)
        self.judged_untrusted = cfg.check in ("invalid_card", "denied_burst")   # staff hours need the time of day

    def shift_times(self, repaired) -> None:
        self.last_case = {d: repaired(t) for d, t in self.last_case.items()}
        self.denied = {d: deque(repaired(t) for t in q) for d, q in self.denied.items()}

    def keys(self, event_type):
        return self.doors

    def on_event(self, s: CardSwipe) -> None:
        check = self.cfg.check
        door = self.site.door_name(s.door)
        who = s.holder or s.card_hash
        if check == "invalid_card":
            if s.category not in self.categories:
                return
            n = self.counts.get(s.door, 0) + 1 if self.active(s.door) else 1
            self.counts[s.door] = n
            self.last_case[s.door] = s.ts
            zh = CATEGORY_ZH[s.category]
            msg = f"{door} 刷{zh}" + (f"（{s.holder}）" if s.holder else "") + (f"，共 {n} 次" if n > 1 else "")
            msg_en = f"{s.category} card at {door}" + (f" ({s.holder})" if s.holder else "") + \
                (f", {n} times" if n > 1 else "")
            self.raise_(s.door, s.ts, msg, msg_en, value=float(n),
                        details={"door": s.door, "reader": s.reader, "category": s.category, "card_hash": s.card_hash,
                                 "holder": s.holder, "household": s.household, "count": n})
        elif check == "staff_hours":
            if s.category != "staff" or (self.cfg.roles and s.role not in self.cfg.roles):
                return
            local = s.ts.astimezone(self.site.tz)
            if in_hours(local.time(), self.start, self.end):
                return
            self.last_case[s.door] = s.ts
            msg = f"{door} 员工卡非工作时间刷卡：{who} {local:%H:%M}"
            msg_en = f"staff card outside hours at {door}: {who} at {local:%H:%M}"
            self.raise_(s.door, s.ts, msg, msg_en,
                        details={"door": s.door, "holder": s.holder, "role": s.role, "card_hash": s.card_hash,
                                 "local_time": local.isoformat()})
        else:  # denied_burst
            if s.category not in DENIED:
                return
            q = self.denied.setdefault(s.door, deque())
            q.append(s.ts)
            while q and s.ts - q[0] > self.window:
                q.popleft()
            if len(q) >= self.cfg.count:
                self.last_case[s.door] = s.ts
                n = len(q)
                msg = f"{door} {int(self.cfg.window_s // 60) or self.cfg.window_s}" \
                      f"{'分钟' if self.cfg.window_s >= 60 else '秒'}内 {n} 次无效刷卡"
                msg_en = f"{n} denied swipes at {door} within {self.cfg.window_s:g} s"
                a = self.active(s.door)
                if a is None or (a.value or 0) < n:
                    self.raise_(s.door, s.ts, msg, msg_en, value=float(n), details={"door": s.door, "count": n})

    def restore_alert(self, a) -> bool | None:
        if a.source not in self.doors:
            return None
        self.last_case[a.source] = a.updated_at
        if self.cfg.check == "invalid_card":
            try:
                self.counts[a.source] = int(a.details.get("count") or a.value or 1)
            except (TypeError, ValueError):
                self.counts[a.source] = 1
        return False

    def tick(self, now: datetime) -> None:
        if not self.last_case:
            return
        for door, last in list(self.last_case.items()):
            if now - last >= self.quiet:
                del self.last_case[door]
                self.counts.pop(door, None)
                self.clear(door, now, f"no new case for {self.cfg.quiet_s:g} s")
        for door, q in list(self.denied.items()):
            while q and now - q[0] > self.window:
                q.popleft()
            if not q:
                del self.denied[door]


class DoorRuleImpl(Rule):
    kind = "door"
    wants = (DoorEvent,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.doors = self.select_doors()
        self.limit = {d: timedelta(seconds=cfg.held_open_s or site.doors.get(d, ("", 60.0))[1]) for d in self.doors}
        self.opened: dict[str, datetime] = {}
        self.judged_untrusted = cfg.check == "forced_open"     # held-open needs a trusted clock to time it

    def keys(self, event_type):
        return self.doors

    def on_event(self, e: DoorEvent) -> None:
        door = self.site.door_name(e.door)
        if e.state == "closed":
            self.opened.pop(e.door, None)
            self.clear(e.door, e.ts, "door closed")
            return
        if self.cfg.check == "forced_open":
            if e.state == "forced_open":
                self.raise_(e.door, e.ts, f"{door} 门被强行打开", f"{door} forced open", details={"door": e.door})
            return
        if e.state in ("opened", "forced_open"):
            self.opened.setdefault(e.door, e.ts)
        elif e.state == "held_open":
            since = self.opened.setdefault(e.door, e.ts)
            self._held(e.door, e.ts, since, reported=True)

    def restore_alert(self, a) -> bool | None:
        if a.source not in self.limit:
            return None
        if self.cfg.check == "held_open":
            try:
                self.opened[a.source] = datetime.fromisoformat(a.details["opened_at"])
            except (KeyError, TypeError, ValueError):
                self.opened[a.source] = a.raised_at
        return False

    def tick(self, now: datetime) -> None:
        for d, since in self.opened.items():
            if now - since > self.limit[d] and self.active(d) is None:
                self._held(d, now, since)

    def _held(self, d: str, now: datetime, since: datetime, reported: bool = False) -> None:
        if self.active(d) is not None:
            return
        secs = (now - since).total_seconds()
        name = self.site.door_name(d)
        limit = self.limit[d].total_seconds()
        self.raise_(d, now, f"{name} 门长时间未关（已开 {secs:.0f} 秒，限 {limit:g} 秒）",
                    f"{name} held open {secs:.0f} s (limit {limit:g} s)", value=secs,
                    details={"door": d, "opened_at": since.isoformat(), "reported_by_controller": reported})
