"""Meters offline or stale, and whole buses down.

A meter is down when the driver reported it offline (DeviceStatus kind "meter") or when it has
given no reading for `periods` × its poll period (measured from its last reading, or from the
first time the engine saw the clock if it never answered). A meter alert is raised only after
the meter has been down for `settle_periods` × poll period more, so that a dead bus — every meter
of the bus down, or the bus itself reported offline (DeviceStatus kind "bus") — is recognised
first and reported as ONE bus alert (source = bus id), with its meters' alerts suppressed (and
cleared, if some were raised before the rest of the bus went quiet). A reading clears the meter
(and its bus); a DeviceStatus online only lifts the reported-offline flag.

After a restart, an alert taken back from the ledger (`restore_alert`) is neither raised again
nor cleared just because the new run has not waited a whole period yet: its meter counts as down
(since the alert's `since`) until it gives a reading; its bus counts as reported offline until
one of its meters gives a reading.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from ..events import DeviceStatus, Reading
from .base import Rule


class OfflineRuleImpl(Rule):
    kind = "offline"
    wants = (Reading, DeviceStatus)

    def __init__(self, cfg, site, book):
        self._dirty = True             # an event arrived since the last sweep
        self._next_due: datetime | None = None  # the next deadline a sweep must look at
        super().__init__(cfg, site, book)
        self.meters = self.select_meters()
        self.stale_after = {m: timedelta(seconds=cfg.periods * site.meters[m].poll_s) for m in self.meters}
        self.settle = {m: timedelta(seconds=cfg.settle_periods * site.meters[m].poll_s) for m in self.meters}
        self.buses: dict[str, list[str]] = {}
        for m in self.meters:
            self.buses.setdefault(site.meters[m].bus, []).append(m)
        self.last_good: dict[str, datetime] = {}
        self.reported_off: dict[str, datetime] = {}       # meter -> when the driver said offline
        self.bus_off: dict[str, datetime] = {}            # bus -> when the driver said offline
        self.down_since: dict[str, datetime] = {}
        self.bus_down: set[str] = set()
        self.held: dict[str, datetime] = {}               # meter -> down since (from before a restart)
        self.start: datetime | None = None

    def keys(self, event_type):
        return self.meters + list(self.buses)

    def on_event(self, e) -> None:
        if self.start is None:
            self.start = e.ts
        if isinstance(e, Reading):
            # only moves this meter's deadline later: no sweep needed for it
            self.last_good[e.meter] = e.ts
            self.reported_off.pop(e.meter, None)
            self.down_since.pop(e.meter, None)
            self.held.pop(e.meter, None)
            self.clear(e.meter, e.ts, "answering again")
            bus = self.site.meters[e.meter].bus
            self.bus_off.pop(bus, None)
            if bus in self.bus_down:
                self.bus_down.discard(bus)
                self.clear(bus, e.ts, f"meter {e.meter} answering again")
                # The bus is back: its other meters get a fresh period to answer before any of
                # them counts as down on its own (they are polled one after another).
                for other in self.buses.get(bus, []):
                    if other != e.meter:
                        self.reported_off.pop(other, None)
                        self.down_since.pop(other, None)
                        self.held.pop(other, None)
                        self.last_good[other] = max(self.last_good.get(other, e.ts), e.ts)
                self._dirty = True
            return
        self._dirty = True  # an offline report can make a meter or bus down before its deadline
        if e.kind == "bus":
            if not e.online:
                self.bus_off.setdefault(e.device, e.ts)
                self._bus_alert(e.device, e.ts, e.reason)
            else:
                self.bus_off.pop(e.device, None)
            return
        if e.kind == "meter" and e.device in self.stale_after:
            if not e.online:
                self.reported_off.setdefault(e.device, e.ts)
            else:
                self.reported_off.pop(e.device, None)

    def _down_from(self, m: str, now: datetime) -> datetime | None:
        """Since when meter m counts as down at `now` (None: it is up)."""
        held = self.held.get(m)
        if held is not None:
            return held
        last = self.last_good.get(m, self.start)
        stale_at = last + self.stale_after[m] if last is not None else None
        off = self.reported_off.get(m)
        if stale_at is not None and now >= stale_at:
            return min(stale_at, off) if off else stale_at
        return off

    def tick(self, now: datetime) -> None:
        if self.start is None:
            self.start = now
        # Nothing changes between events except deadlines passing: skip the sweep until one does.
        if not self._dirty and self._next_due is not None and now < self._next_due:
            return
        self._dirty = False
        next_due = None
        for bus, meters in self.buses.items():
            down = {}
            for m in meters:
                since = self._down_from(m, now)
                if since is not None:
                    down[m] = since
                    self.down_since.setdefault(m, since)
                    when = since + self.settle[m] if self.active(m) is None else None
                else:
                    self.down_since.pop(m, None)
                    last = self.last_good.get(m, self.start)
                    when = last + self.stale_after[m] if last is not None else None
                if when is not None and (next_due is None or when < next_due):
                    next_due = when
            self._next_due = next_due
            if self.cfg.bus_alarm and (bus in self.bus_off or (len(down) == len(meters) and len(meters) > 1)):
                self._bus_alert(bus, now, "all meters silent" if bus not in self.bus_off else "")
                continue
            if bus in self.bus_down:
                self.bus_down.discard(bus)
                self.clear(bus, now, "some meters answer")
            for m, since in down.items():
                if now - since >= self.settle[m] and self.active(m) is None:
                    self._meter_alert(m, now, since)
            # meters that came back were cleared by their reading

    def restore_alert(self, a) -> bool | None:
        self._dirty = True
        if a.source in self.buses:
            # as if the driver had said the bus is down: it stays down until a meter of it answers
            # (a driver reports a bus online only after it reported it offline in the same run)
            self.bus_down.add(a.source)
            self.bus_off.setdefault(a.source, a.raised_at)
            return False
        if a.source in self.stale_after:
            since = a.details.get("since")
            try:
                self.held[a.source] = datetime.fromisoformat(since) if since else a.raised_at
            except (TypeError, ValueError):
                self.held[a.source] = a.raised_at
            return False
        return None

    def _meter_alert(self, m: str, now: datetime, since: datetime) -> None:
        info = self.site.meters[m]
        last = self.last_good.get(m)
        why = "离线" if m in self.reported_off else "无数据"
        msg = f"{info.name} 电表{why}（自 {since.astimezone(self.site.tz):%m-%d %H:%M} 起）"
        msg_en = f"{info.name} meter {'offline' if m in self.reported_off else 'stale'} since {since.isoformat()}"
        self.raise_(m, now, msg, msg_en, details={"meter": m, "bus": info.bus, "since": since.isoformat(),
                                                   "last_reading": last.isoformat() if last else None})

    def _bus_alert(self, bus: str, now: datetime, reason: str) -> None:
        if not self.cfg.bus_alarm or bus not in self.buses:
            return
        meters = self.buses[bus]
        first = bus not in self.bus_down
        self.bus_down.add(bus)
        if first:
            for m in meters:
                self.clear(m, now, f"bus {bus} down: reported as one bus alarm")
            msg = f"总线 {bus} 故障：{len(meters)} 块电表全部无响应" + (f"（{reason}）" if reason else "")
            msg_en = f"bus {bus} down: all {len(meters)} meters silent" + (f" ({reason})" if reason else "")
            self.raise_(bus, now, msg, msg_en, value=float(len(meters)),
                        details={"bus": bus, "meters": list(meters), "reason": reason})
