"""The rules engine: events in (`handle`), time in (`tick`), alerts out (through the AlertBook).

`handle(event)` is synchronous and cheap: rules are indexed by event type and by the event's
meter / device / door, so one event costs only the rules that care about it. `tick(now)` runs the
time-based checks (stale meters, held-open doors, `for` durations, patrol deadlines, re-notify);
the runtime calls it every second, replay calls it from its simulated clock. No rule ever asks
the wall clock: time comes from event timestamps and `tick(now)`.

After a restart, gateway/rules/restore.py gives the engine back what the ledger knows: the open
alerts (`restore_alerts`), the time from which the gateway has been watching
(`set_observing_since`), and each rule's own history through the rule's methods.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from ..events import CardSwipe, DeviceStatus, DoorEvent, PatrolCheckin, Reading
from ..identity import SITE_IDENTITY_RULE
from .access import AccessRuleImpl, DoorRuleImpl
from .alerts import DEFAULT_RENOTIFY_S, Alert, AlertBook, OnChange
from .base import Rule, SiteView
from .consumption import ConsumptionRuleImpl
from .counter import CounterRuleImpl
from .daylight import DaylightRuleImpl
from .models import Rule as RuleModel
from .models import parse_rules
from .offline import OfflineRuleImpl
from .patrol import PatrolRuleImpl
from .threshold import ThresholdRuleImpl

IMPLS: dict[str, type[Rule]] = {
    "threshold": ThresholdRuleImpl, "offline": OfflineRuleImpl, "counter": CounterRuleImpl,
    "daylight": DaylightRuleImpl, "consumption": ConsumptionRuleImpl, "access": AccessRuleImpl,
    "door": DoorRuleImpl, "patrol": PatrolRuleImpl,
}

_KEY = {Reading: lambda e: e.meter, DeviceStatus: lambda e: e.device, CardSwipe: lambda e: e.door,
        DoorEvent: lambda e: e.door, PatrolCheckin: lambda e: e.reader}


class Engine:
    def __init__(self, site: SiteView | Any, rules: Iterable[RuleModel | dict] = (),
                 on_change: OnChange | None = None, book: AlertBook | None = None):
        self.site = site if isinstance(site, SiteView) else SiteView.from_config(site)
        models = [r if not isinstance(r, dict) else parse_rules([r])[0] for r in rules]
        self.models = {m.id: m for m in models}
        self._renotify = {m.id: m.renotify_s for m in models}
        self.book = book or AlertBook(on_change, self._renotify_s)
        if book is not None and on_change is not None:
            self.book.on_change = on_change
        self.rules: list[Rule] = [IMPLS[m.kind](m, self.site, self.book) for m in models if m.enabled]
        self.by_id = {r.id: r for r in self.rules}
        # event type -> (key -> rules, rules for every key)
        self._index: dict[type, tuple[dict[str, list[Rule]], list[Rule]]] = {}
        for t in _KEY:
            keyed: dict[str, list[Rule]] = {}
            anyone: list[Rule] = []
            for r in self.rules:
                if t not in r.wants:
                    continue
                keys = r.keys(t)
                if keys is None:
                    anyone.append(r)
                else:
                    for k in keys:
                        keyed.setdefault(k, []).append(r)
            self._index[t] = (keyed, anyone)
        self._tickers = [r for r in self.rules if type(r).tick is not Rule.tick]
        self.handled = 0
        self.last_tick: datetime | None = None
        self.observing_since: datetime | None = None

    def _renotify_s(self, a: Alert) -> float | None:
        every = self._renotify.get(a.rule)
        if every is not None:
            return every
        return DEFAULT_RENOTIFY_S if a.severity == "critical" else None

    def handle(self, event: object, part: str | None = None) -> None:
        """`part`: None, every rule; "untrusted", only the rules judged while the wall clock is
        untrusted; "deferred", only the others (given the held events once the clock is repaired)."""
        entry = self._index.get(type(event))
        if entry is None:
            return
        self.handled += 1
        keyed, anyone = entry
        if part is None:
            if keyed:
                for r in keyed.get(_KEY[type(event)](event), ()):
                    r.on_event(event)
            for r in anyone:
                r.on_event(event)
            return
        live = part == "untrusted"
        for r in (*(keyed.get(_KEY[type(event)](event), ()) if keyed else ()), *anyone):
            if r.judged_untrusted == live:
                r.on_event(event)

    def shift_times(self, repaired) -> None:
        """The clock was repaired: open alerts and the live-judged rules' times move to true time."""
        for a in self.book.active():
            a.raised_at, a.updated_at = repaired(a.raised_at), repaired(a.updated_at)
            if a.acked_at is not None:
                a.acked_at = repaired(a.acked_at)
        for r in self.rules:
            if r.judged_untrusted:
                r.shift_times(repaired)

    def tick(self, now: datetime) -> None:
        self.last_tick = now
        for r in self._tickers:
            r.tick(now)
        self.book.due_renotify(now)

    # ---- people and the ledger ----------------------------------------------------------------
    def ack(self, alert_id: str, by: str, note: str, at: datetime) -> Alert | None:
        return self.book.ack(alert_id, by, note, at)

    def note_replacement(self, meter: str, at: datetime, now: datetime | None = None) -> None:
        """A meter replacement was recorded (old meter's last reading before `at`, the new meter's
        from `at` on): counters start again from the new meter's first reading, whether it has
        already arrived or not. `now` is when the record was seen (for an alert it clears)."""
        for r in self.rules:
            if isinstance(r, CounterRuleImpl | ConsumptionRuleImpl):
                r.note_replacement(meter, at, now)

    # ---- after a restart -------------------------------------------------------------------------
    def set_observing_since(self, t: datetime) -> None:
        """The gateway has been watching (running, its devices heard) since `t`: what was due
        before it and is not in the ledger is unknown, not missed (patrol checkpoints)."""
        self.observing_since = t
        for r in self.rules:
            if isinstance(r, PatrolRuleImpl):
                r.observing_since = t

    def restore_alerts(self, alerts: Iterable[Alert], now: datetime) -> dict[str, int]:
        """Alerts that were open (active or acknowledged) when the gateway stopped go back into the
        book, so that the one-alert-per-rule-and-source rule holds across the restart, acks are
        kept, re-notify goes on and each rule can clear them. Cleared at once, with the reason:
        alerts of a rule that is no longer in the site file (or is disabled, or changed kind),
        alerts for a source the rule no longer watches, and older duplicates of one rule and
        source (left by a restart before this existed). Returns counts by outcome."""
        counts = {"restored": 0, "acknowledged": 0, "cleared": 0}
        latest: dict[tuple[str, str], Alert] = {}
        dupes: list[Alert] = []
        for a in sorted(alerts, key=lambda a: (a.raised_at, a.id)):
            older = latest.get((a.rule, a.source))
            if older is not None:
                dupes.append(older)
            latest[(a.rule, a.source)] = a
        for a in latest.values():
            mine = self.book.get(a.rule, a.source)
            if mine is not None:   # judged live since the start (the clock was untrusted): it stands
                if mine.id != a.id:
                    self.book.clear_detached(a, now, "superseded by the alert raised since the restart")
                    counts["cleared"] += 1
                continue
            rule = self.by_id.get(a.rule)
            why = ""
            latching: bool | None = False
            if rule is None and a.rule == SITE_IDENTITY_RULE:
                why = "judged again after the restart (gateway/identity.py)"
            elif rule is None:
                model = self.models.get(a.rule)
                why = "rule removed from the site file" if model is None else "rule disabled in the site file"
            elif rule.kind != a.kind:
                why = f"rule {a.rule} is now of kind {rule.kind}, not {a.kind}"
            else:
                latching = rule.restore_alert(a)
                if latching is None:
                    why = f"{a.source} is no longer watched by rule {a.rule}"
            self.book.restore(a, now, latching=bool(latching))
            if why:
                self.book.clear(a.rule, a.source, now, why)
                counts["cleared"] += 1
            else:
                counts["restored"] += 1
                counts["acknowledged"] += a.state == "acknowledged"
        for old in dupes:
            kept = self.book.get(old.rule, old.source)
            self.book.clear_detached(old, now, f"duplicate of {kept.id if kept else 'a newer alert'}")
            counts["cleared"] += 1
        return counts

    def active(self) -> list[Alert]:
        return self.book.active()
