"""Alerts and their lifecycle: raised -> (updated) -> acknowledged -> cleared.

One active alert per (rule, source): raising again while one is active updates it. Every change
goes out through `on_change(alert, what)` with what in raised / updated / acknowledged / cleared /
renotify; the runtime wires that to the hub (MQTT, ledger, outbox). Time comes from the caller
(event timestamps or `tick(now)`), never from the wall clock.

After a restart, `restore(alert, now)` takes back an alert that was open in the ledger, silently
(its ledger row and retained MQTT message are already right), keeping its id, ack and re-notify
rhythm; the engine decides what comes back (gateway/rules/engine.py `restore_alerts`).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Callable, Iterable

from ..clock import to_us
from ..events import Alert  # noqa: F401  (the lifecycle's subject; re-exported)

SEVERITIES = ("info", "warning", "critical")
STATES = ("active", "acknowledged", "cleared")
DEFAULT_RENOTIFY_S = 900.0  # unacknowledged critical alerts, unless the rule says otherwise


OnChange = Callable[[Alert, str], None]


class AlertBook:
    """The open alerts, keyed by (rule, source), and their lifecycle.

    `renotify_s(alert)` says how often an unacknowledged alert is announced again (None: never);
    by default critical alerts every 15 minutes.
    """

    def __init__(self, on_change: OnChange | None = None,
                 renotify_s: Callable[[Alert], float | None] | None = None):
        self.on_change = on_change
        self._renotify_s = renotify_s or (lambda a: DEFAULT_RENOTIFY_S if a.severity == "critical" else None)
        self._open: dict[tuple[str, str], Alert] = {}
        self._by_id: dict[str, Alert] = {}
        self._notified: dict[str, datetime] = {}
        self._latching: set[str] = set()
        self.history: list[tuple[str, Alert]] = []   # bounded by the caller's patience; tests read it
        self.keep_history = True

    # ---- queries ---------------------------------------------------------------------------
    def active(self, rule: str | None = None, source: str | None = None) -> list[Alert]:
        return [a for (r, s), a in self._open.items()
                if (rule is None or r == rule) and (source is None or s == source)]

    def get(self, rule: str, source: str) -> Alert | None:
        return self._open.get((rule, source))

    def by_id(self, alert_id: str) -> Alert | None:
        return self._by_id.get(alert_id)

    # ---- changes ---------------------------------------------------------------------------
    def _emit(self, alert: Alert, what: str) -> None:
        alert.revision += 1
        if self.keep_history:
            self.history.append((what, alert.snapshot()))
        if self.on_change is not None:
            self.on_change(alert, what)

    def raise_(self, rule: str, source: str, *, kind: str, severity: str, at: datetime, message: str,
               message_en: str = "", value: float | None = None, details: dict[str, Any] | None = None,
               latching: bool = False) -> Alert:
        """Raise (or update the open) alert of `rule` for `source`. A latching alert is cleared
        by its acknowledgement (for things that cannot "go away": a missed checkpoint)."""
        if severity not in SEVERITIES:
            raise ValueError(f"unknown severity {severity!r}")
        key = (rule, source)
        a = self._open.get(key)
        if a is not None:
            changed = (a.message != message or a.value != value or a.severity != severity
                       or (details is not None and details != a.details))
            if not changed:
                return a
            escalated = SEVERITIES.index(severity) > SEVERITIES.index(a.severity)
            a.message, a.message_en, a.value, a.severity, a.updated_at = message, message_en, value, severity, at
            if details is not None:
                a.details = dict(details)
            self._emit(a, "updated")
            if escalated and a.state == "active":
                self._notified[a.id] = at
            return a
        alert_id = f"{rule}/{source}/{to_us(at)}"
        while alert_id in self._by_id:
            alert_id += "+"
        a = Alert(alert_id, rule, kind, source, severity, "active", message, message_en, at, at,
                  value=value, details=dict(details or {}))
        self._open[key] = a
        self._by_id[alert_id] = a
        self._notified[alert_id] = at
        if latching:
            self._latching.add(alert_id)
        self._emit(a, "raised")
        return a

    def clear(self, rule: str, source: str, at: datetime, reason: str = "") -> Alert | None:
        a = self._open.pop((rule, source), None)
        if a is None:
            return None
        a.state, a.cleared_at, a.updated_at = "cleared", at, at
        if reason:
            a.details["cleared_because"] = reason
        self._notified.pop(a.id, None)
        self._latching.discard(a.id)
        self._emit(a, "cleared")
        del self._by_id[a.id]
        return a

    def ack(self, alert_id: str, by: str, note: str, at: datetime) -> Alert | None:
        """Acknowledge an open alert; returns None for an unknown or already cleared id."""
        a = self._by_id.get(alert_id)
        if a is None or a.state != "active":
            return a if a is not None and a.state == "acknowledged" else None
        a.state, a.acked_by, a.ack_note, a.acked_at, a.updated_at = "acknowledged", by, note, at, at
        self._notified.pop(a.id, None)
        self._emit(a, "acknowledged")
        if alert_id in self._latching:
            self.clear(a.rule, a.source, at, "acknowledged")
        return a

    def due_renotify(self, now: datetime) -> list[Alert]:
        """Announce again every unacknowledged alert whose re-notify interval has passed."""
        out = []
        for alert_id, last in list(self._notified.items()):
            a = self._by_id[alert_id]
            every = self._renotify_s(a)
            if every is None or a.state != "active":
                continue
            if now - last >= timedelta(seconds=every):
                self._notified[alert_id] = now
                out.append(a)
                self._emit(a, "renotify")
        return out

    def clear_all(self, rule: str, sources: Iterable[str], at: datetime, reason: str = "") -> None:
        for s in list(sources):
            self.clear(rule, s, at, reason)

    # ---- after a restart ------------------------------------------------------------------------
    def restore(self, alert: Alert, now: datetime, latching: bool = False) -> Alert:
        """Take back an alert that was open when the gateway stopped (from the ledger), as it was:
        no change is announced (its retained MQTT message and its ledger row are already right).
        Re-notify keeps its rhythm: the next announcement is due where it would have been had the
        gateway not stopped (raised_at + k × interval), so a restart neither repeats nor skips one."""
        if alert.severity not in SEVERITIES:
            raise ValueError(f"unknown severity {alert.severity!r}")
        if alert.state not in ("active", "acknowledged"):
            raise ValueError(f"alert {alert.id} is {alert.state}, not open")
        key = (alert.rule, alert.source)
        if key in self._open:
            raise ValueError(f"an alert of rule {alert.rule} for {alert.source} is already open")
        self._open[key] = alert
        self._by_id[alert.id] = alert
        if latching:
            self._latching.add(alert.id)
        every = self._renotify_s(alert)
        if alert.state == "active" and every:
            step = timedelta(seconds=every)
            base = alert.raised_at
            n = max(0, int((now - base) / step)) if now > base else 0
            self._notified[alert.id] = base + n * step
        return alert

    def clear_detached(self, alert: Alert, at: datetime, reason: str) -> Alert:
        """Clear an open alert that is not the book's alert for its rule and source (an older
        duplicate found in the ledger). Its MQTT topic is the open one's too, so the open one,
        if any, is stated again ("updated") after the clear deleted the retained message."""
        alert.state, alert.cleared_at, alert.updated_at = "cleared", at, at
        alert.details["cleared_because"] = reason
        self._emit(alert, "cleared")
        kept = self._open.get((alert.rule, alert.source))
        if kept is not None and kept is not alert:
            self._emit(kept, "updated")
        return alert
