"""Lighting circuits lit in daylight, or dark after dusk.

Sunrise and sunset come from the site's latitude / longitude with astral (computed once per
local date, cached). With margin M:
- daylight window: [sunrise + M, sunset - M] — a circuit drawing more than `on_above` (in
  `field`, power_kw by default) there is "lit in daylight";
- night window of an evening: [sunset + M, end), end = the next sunrise - M, or the first
  `night_until` local time after that sunset if set (half-night lighting), whichever is first —
  a circuit at or below `on_above` there is "dark after dusk";
- in the margins (twilight) nothing is judged.
Both edges of a window belong to it. A condition must last `for_s` (from the first reading that
showed it; judged at readings and at tick with the last value) to raise; it clears as soon as a
reading or tick finds the condition gone (lamp changed, or the window ended).
If the sun does not rise or set that day (polar latitudes), nothing is judged.
An alert taken back after a restart is judged again at the meter's next reading (cleared if the
condition is gone or the window is over, kept as it is if not).
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import lru_cache

from astral import Observer
from astral.sun import sun

from ..events import Reading
from .base import Rule, fmt


class SunTimes:
    def __init__(self, latitude: float, longitude: float, tz):
        self.observer = Observer(latitude, longitude)
        self.tz = tz
        self.day = lru_cache(maxsize=64)(self._day)

    def _day(self, d: date) -> tuple[datetime, datetime] | None:
        try:
            s = sun(self.observer, date=d, tzinfo=self.tz)
        except ValueError:
            return None
        return s["sunrise"], s["sunset"]


class DaylightRuleImpl(Rule):
    kind = "daylight"
    wants = (Reading,)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.meters = self.select_meters()
        self.sun = SunTimes(site.latitude, site.longitude, site.tz)
        self.margin = timedelta(minutes=cfg.margin_minutes)
        self.for_td = timedelta(seconds=cfg.for_s)
        self.until = time.fromisoformat(cfg.night_until) if cfg.night_until else None
        self.checks = {"lit_in_daylight", "dark_after_dusk"} if cfg.check == "both" else {cfg.check}
        self.last: dict[str, float] = {}
        self.pending: dict[str, tuple[str, datetime]] = {}    # meter -> (what, since)

    def keys(self, event_type):
        return self.meters

    def restore_alert(self, a) -> bool | None:
        return False if a.source in self.meters else None

    def period(self, ts: datetime) -> str:
        """'day', 'night' or 'twilight' (not judged) at ts."""
        local = ts.astimezone(self.site.tz)
        d = local.date()
        today = self.sun.day(d)
        if today is None:
            return "twilight"
        rise, set_ = today
        if rise + self.margin <= ts <= set_ - self.margin:
            return "day"
        for evening in (d - timedelta(days=1), d):
            night = self._night(evening)
            if night is not None and night[0] <= ts <= night[1]:
                return "night"
        return "twilight"

    def _night(self, evening: date) -> tuple[datetime, datetime] | None:
        a, b = self.sun.day(evening), self.sun.day(evening + timedelta(days=1))
        if a is None or b is None:
            return None
        start, end = a[1] + self.margin, b[0] - self.margin
        if self.until is not None:
            cut = datetime.combine(evening, self.until, self.site.tz)
            if cut <= a[1]:
                cut += timedelta(days=1)
            end = min(end, cut)
        return start, end

    def _what(self, ts: datetime, v: float) -> str | None:
        p = self.period(ts)
        if p == "day" and v > self.cfg.on_above and "lit_in_daylight" in self.checks:
            return "lit_in_daylight"
        if p == "night" and v <= self.cfg.on_above and "dark_after_dusk" in self.checks:
            return "dark_after_dusk"
        return None

    def on_event(self, r: Reading) -> None:
        v = r.values.get(self.cfg.field)
        if v is None:
            return
        self.last[r.meter] = v
        self._judge(r.meter, r.ts, v)

    def tick(self, now: datetime) -> None:
        for m in list(self.pending) + [a.source for a in self.book.active(self.id)]:
            if m in self.last:
                self._judge(m, now, self.last[m])

    def _judge(self, m: str, ts: datetime, v: float) -> None:
        what = self._what(ts, v)
        a = self.active(m)
        if what is None:
            self.pending.pop(m, None)
            if a is not None:
                self.clear(m, ts, "condition gone")
            return
        if a is not None and a.details.get("what") == what:
            return
        if a is not None:
            self.clear(m, ts, "condition changed")
        prev = self.pending.get(m)
        if prev is None or prev[0] != what:
            prev = self.pending[m] = (what, ts)
        if ts - prev[1] >= self.for_td:
            del self.pending[m]
            self._raise(m, ts, what, v, prev[1])

    def _raise(self, m: str, ts: datetime, what: str, v: float, since: datetime) -> None:
        name = self.site.meter_name(m)
        d = ts.astimezone(self.site.tz).date()
        times = self.sun.day(d)
        rise, set_ = (t.astimezone(self.site.tz).strftime("%H:%M") for t in times)
        if what == "lit_in_daylight":
            msg = f"{name} 白天亮灯：功率 {fmt(v, 'kW')}（日出 {rise}，日落 {set_}）"
            msg_en = f"{name} lit in daylight: {fmt(v, 'kW')} (sunrise {rise}, sunset {set_})"
        else:
            msg = f"{name} 天黑未亮灯：功率 {fmt(v, 'kW')}（日落 {set_}）"
            msg_en = f"{name} dark after dusk: {fmt(v, 'kW')} (sunset {set_})"
        self.raise_(m, ts, msg, msg_en, value=v,
                    details={"what": what, "meter": m, "since": since.isoformat(), "sunrise": rise, "sunset": set_})
