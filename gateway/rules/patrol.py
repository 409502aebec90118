"""Guard patrol rounds judged against the route's schedule.

Schedule: each shift (start, end, every_minutes; site local time; end <= start crosses midnight)
starts a round at start, start + every, ... while before end. Checkpoint k of a round is expected
at round start + the sum of the first k legs. Tolerance T = the rule's, else the route's.

A read (PatrolCheckin of a route checkpoint, from one of the rule's `readers` if given) belongs
to the round whose expected time for that checkpoint is nearest to the read's RECORDED time
(`ts`, never the arrival time). Per checkpoint, its first read decides: |delta| <= T on time,
delta < -T early, delta > T late. A checkpoint first read after a later checkpoint of the same
round was read is out of order. A checkpoint with no read by expected + T (strictly after) is
missed; a
round with no read at all by start + T is "not started" (one issue, not one per checkpoint).
All issues of a round go into ONE alert, source "<route>@<YYYY-MM-DDTHH:MM local start>",
updated as issues appear; it is latching (cleared by its acknowledgement).

Online routes (some reader of the route is not a wand) are judged live: at tick for deadlines,
at the read for early / late / out of order (a checkpoint first called missed and then read late
becomes late). Reader offline: a DeviceStatus(kind "reader", online False) for a route reader
raises a reader alert (source = reader id, cleared when it is back online) and no round issue
is raised while it is offline; a round that had no read at all while another patrol reader
reported during it is, at its end, reported as that route's reader being silent (reader alert)
instead of "not started".

Wand routes (every reader of the route is a wand): reads arrive in downloads, hours late.
Nothing is judged at tick. A download is the wand reads arriving; it is judged `settle_s` after
its last read arrived (so the whole batch is in), as of D, that last arrival. It judges, once and
completely by the recorded times, every round of the schedule that ended (last expected + T)
before D and within its period:
- the period starts at the previous download (its D: the rounds that ended before it were its to
  judge). With no download known (the first one since the gateway started, or after a restart
  none in the ledger's reads), it starts at the earlier of when the gateway began watching
  (`observing_since`, else the first tick) and the start of the earliest round with a read: while
  the gateway watches, every download comes to it, and the wand's memory reaches back at least
  to its earliest read;
- and at most `wand_lookback_hours` (default 24) before D: older rounds are not reported (one log
  line says how many).
So the rounds that ended before the gateway started, or while it was down, are judged by the next
download like the others; one with no read on the wand is "not started". D is the arrival, not
the wand's latest read: a round over before the wand reached the cradle has all its reads on it
(judging up to the latest read would never report the rounds after the guard's last read). A
round still under way at D waits for the next download. A round is judged once: reads for it
that come later (a second download of the same reads, e.g. from a driver restarted and no longer
remembering them) change nothing, and the rounds before the previous download are not in the
next one's period (after a restart neither: see below).
Stale wand: a round that ended more than `wand_wait_hours` ago, after the latest download (and
after the gateway began watching), raises a reader alert (wand not downloaded), cleared when the
next download is judged. A download is contact even if all its reads are old: the rounds that
ended before it are its own to judge, never waiting, so the download cannot raise the alert (it
used to, for the round of a read older than `wand_wait_hours`, until the download was judged).
(A download with no new reads publishes nothing, so it cannot be told from no download.)

Acknowledged: a round's alert latches, so its acknowledgement clears it; the round raises a new
alert only for an issue that was not in the acknowledged one (not again for the same issues).

Observing since: the engine's `observing_since` (set after a restart or at the start of a replay;
else the first tick) is when the gateway started watching. A checkpoint of an online route that
was expected before it and has no read is not missed but unknown: it is not alerted (logged once
per round); a round that started before it is judged checkpoint by checkpoint, never "not
started". Wand routes are not concerned (the wand keeps its reads until downloaded).
After a restart, `restore(checkins, now, last_activity)` is given the ledger's recent reads (fed
as they came, nothing published), makes the rounds still to be judged and leaves alone those the
previous run had finished judging (ended before its last activity; wand rounds before its last
download, whose arrival is the next download's period start: the reads in the ledger tell it, so
the ledger's reads must reach `wand_lookback_hours` back); `restore_alert` takes back a round's
open alert with its issues.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta

from ..events import DeviceStatus, PatrolCheckin
from .base import Rule

log = logging.getLogger(__name__)
READER_ALERTS = ("reader_offline", "reader_silent", "not_downloaded")

WHAT_ZH = {"not_started": "未开始", "missed": "漏点", "late": "迟到", "early": "早到", "out_of_order": "顺序错误"}


@dataclass
class Round:
    route: str
    start: datetime
    expected: list[datetime]
    end: datetime                                   # last expected + T
    reads: dict[int, datetime] = field(default_factory=dict)   # checkpoint index -> first recorded time
    order: list[tuple[datetime, int]] = field(default_factory=list)
    issues: dict[tuple[str, int], dict] = field(default_factory=dict)
    judged: bool = False
    closed: bool = False
    shown: set = field(default_factory=set)         # issue keys in the round's last alert
    unknown_logged: bool = False


class PatrolRuleImpl(Rule):
    kind = "patrol"
    wants = (PatrolCheckin, DeviceStatus)

    def __init__(self, cfg, site, book):
        super().__init__(cfg, site, book)
        self.routes = {r: site.routes[r] for r in (cfg.routes or site.routes)}
        self.readers = set(cfg.readers)
        self.tol = {r: timedelta(minutes=cfg.tolerance_minutes if cfg.tolerance_minutes is not None
                                 else info.tolerance_min) for r, info in self.routes.items()}
        self.offsets = {}
        for r, info in self.routes.items():
            acc, offs = 0.0, [0.0]
            for leg in info.legs_min:
                acc += leg
                offs.append(acc)
            self.offsets[r] = [timedelta(minutes=x) for x in offs]
        self.index = {r: {cp: i for i, cp in enumerate(info.checkpoints)} for r, info in self.routes.items()}
        route_readers = self.readers or set(site.readers)
        self.wand = bool(route_readers) and all(site.readers.get(x) == "wand" for x in route_readers)
        self.rounds: dict[tuple[str, datetime], Round] = {}
        self.offline: set[str] = set()
        self.other_reads: list[datetime] = []        # recorded times of reads by readers not ours
        self.download_at: datetime | None = None    # latest arrival of a wand read
        self.download_seen: datetime | None = None  # latest arrival already judged: the next period's start
        self.checks = set(cfg.checks)
        self.started: datetime | None = None
        self.observing_since: datetime | None = None   # None: since the first tick (`started`)
        self._horizon: dict[str, datetime] = {}     # route -> round starts generated up to here
        self._restoring = False

    def keys(self, event_type):
        if event_type is DeviceStatus:
            return sorted(self.readers or self.site.readers)
        return None

    # ---- the schedule ----------------------------------------------------------------------
    def starts_on(self, route: str, d: date) -> list[datetime]:
        """Round starts of shifts that begin on local date d (computed once per route and day)."""
        cache = self.__dict__.setdefault("_starts", {})
        found = cache.get((route, d))
        if found is None:
            if len(cache) > 64:
                cache.clear()
            found = cache[(route, d)] = self._starts_on(route, d)
        return found

    def _starts_on(self, route: str, d: date) -> list[datetime]:
        return round_starts_on(self.routes[route].shifts, d, self.site.tz)

    def _round(self, route: str, start: datetime) -> Round:
        key = (route, start)
        rd = self.rounds.get(key)
        if rd is None:
            exp = [start + o for o in self.offsets[route]]
            rd = self.rounds[key] = Round(route, start, exp, exp[-1] + self.tol[route])
        return rd

    def _nearest(self, route: str, k: int, ts: datetime) -> Round:
        d = ts.astimezone(self.site.tz).date()
        best = None
        for day in (d - timedelta(days=1), d, d + timedelta(days=1)):
            for s in self.starts_on(route, day):
                delta = abs(ts - (s + self.offsets[route][k]))
                if best is None or delta < best[0]:
                    best = (delta, s)
        return self._round(route, best[1])

    # ---- events ------------------------------------------------------------------------------
    def on_event(self, e) -> None:
        if isinstance(e, DeviceStatus):
            if e.kind != "reader":
                return
            if e.online:
                self.offline.discard(e.device)
                self.clear(e.device, e.ts, "reader back online")
            else:
                self.offline.add(e.device)
                self.raise_(e.device, e.ts, f"巡更机 {e.device} 离线" + (f"（{e.reason}）" if e.reason else ""),
                            f"patrol reader {e.device} offline" + (f" ({e.reason})" if e.reason else ""),
                            details={"reader": e.device, "what": "reader_offline"})
            return
        if self.readers and e.reader not in self.readers:
            self.other_reads.append(e.ts)
            if len(self.other_reads) > 1000:
                del self.other_reads[:500]
            return
        for route, idx in self.index.items():
            k = idx.get(e.checkpoint)
            if k is None:
                continue
            rd = self._nearest(route, k, e.ts)
            if k not in rd.reads or e.ts < rd.reads[k]:
                rd.reads[k] = e.ts
            rd.order.append((e.ts, k))
            if self.wand:
                if self.download_at is None or e.received > self.download_at:
                    if self._restoring and self.download_at is not None \
                            and e.received - self.download_at >= timedelta(seconds=self.cfg.settle_s):
                        self.download_seen = self.download_at   # an earlier download: the previous run judged it
                    self.download_at = e.received
            elif not rd.judged:
                self._judge_reads(rd)
                self._publish(rd, e.received)

    def _judge_reads(self, rd: Round) -> None:
        """Early / late / out of order for every read of the round, from the recorded times (so
        the verdict does not depend on the order in which reads arrived)."""
        tol = self.tol[rd.route]
        rd.issues = {key: v for key, v in rd.issues.items() if key[0] in ("missed", "not_started")}
        if rd.reads:
            rd.issues.pop(("not_started", 0), None)
        cps = self.routes[rd.route].checkpoints
        for k, ts in rd.reads.items():
            rd.issues.pop(("missed", k), None)
            delta = ts - rd.expected[k]
            info = {"checkpoint": cps[k], "expected": rd.expected[k].isoformat(),
                    "recorded": ts.isoformat(), "delta_min": round(delta.total_seconds() / 60, 1)}
            if delta > tol:
                rd.issues[("late", k)] = info
            elif delta < -tol:
                rd.issues[("early", k)] = info
            # out of order: a later checkpoint of this round was read before this one
            if any(t < ts and j > k for j, t in rd.reads.items()):
                rd.issues[("out_of_order", k)] = info

    def _judge_deadlines(self, rd: Round, now: datetime) -> None:
        tol = self.tol[rd.route]
        since = self.observing_since if self.observing_since is not None else self.started
        partly = not self.wand and since is not None and rd.start < since   # began before we watched
        if not rd.reads and not partly:
            if now > rd.start + tol:
                rd.issues[("not_started", 0)] = {"expected": rd.start.isoformat()}
            return
        if partly and not rd.unknown_logged:
            unknown = [k for k, exp in enumerate(rd.expected) if exp < since and k not in rd.reads]
            if unknown:
                self._log_unknown(rd, unknown, since)
        for k, exp in enumerate(rd.expected):
            if k not in rd.reads and now > exp + tol:
                if partly and exp < since:
                    continue                         # due before the gateway was watching: unknown
                rd.issues[("missed", k)] = {"checkpoint": self.routes[rd.route].checkpoints[k],
                                            "expected": exp.isoformat()}

    def _log_unknown(self, rd: Round, unknown: list[int], since: datetime) -> None:
        rd.unknown_logged = True
        cps = self.routes[rd.route].checkpoints
        log.info("patrol %s: round %s %s: %s due before the gateway was watching (since %s), no read known: "
                 "unknown, not reported as missed", self.id, rd.route,
                 f"{rd.start.astimezone(self.site.tz):%Y-%m-%d %H:%M}", ", ".join(cps[k] for k in unknown),
                 f"{since.astimezone(self.site.tz):%Y-%m-%d %H:%M:%S}")

    def source(self, rd: Round) -> str:
        return f"{rd.route}@{rd.start.astimezone(self.site.tz):%Y-%m-%dT%H:%M}"

    def _publish(self, rd: Round, at: datetime) -> None:
        if self._restoring:
            return
        issues = {key: v for key, v in rd.issues.items() if key[0] in self.checks}
        source = self.source(rd)
        if not issues:
            if self.active(source) is not None:
                self.clear(source, at, "no issue left")
                rd.shown = set()
            return
        if self.active(source) is None and rd.shown and set(issues) <= rd.shown:
            return                                   # said and acknowledged: nothing new
        rd.shown = set(issues)
        info = self.routes[rd.route]
        parts_zh, parts_en = [], []
        for (what, k), v in sorted(issues.items(), key=lambda kv: (kv[0][1], kv[0][0])):
            if what == "not_started":
                parts_zh.append("未开始")
                parts_en.append("not started")
                continue
            cp = self.site.checkpoints.get(v["checkpoint"], v["checkpoint"])
            extra = f"（{v['delta_min']:+g} 分钟）" if "delta_min" in v and what in ("late", "early") else ""
            parts_zh.append(f"{WHAT_ZH[what]} {cp}{extra}")
            parts_en.append(f"{what.replace('_', ' ')} {v['checkpoint']}"
                            + (f" ({v['delta_min']:+g} min)" if extra else ""))
        local = rd.start.astimezone(self.site.tz)
        self.raise_(source, at, f"{info.name} {local:%H:%M} 巡更：" + "；".join(parts_zh),
                    f"{info.name} round {local:%H:%M}: " + "; ".join(parts_en), value=float(len(issues)),
                    details={"route": rd.route, "round_start": rd.start.isoformat(),
                             "issues": [dict(v, what=w) for (w, _), v in sorted(issues.items())]},
                    latching=True)

    # ---- time ----------------------------------------------------------------------------
    def _due_rounds(self, now: datetime) -> None:
        """Create the rounds that have started (so a round with no read at all is seen)."""
        d = now.astimezone(self.site.tz).date()
        for route in self.routes:
            since = self._horizon.get(route, self.started)
            for day in (d - timedelta(days=1), d):
                for s in self.starts_on(route, day):
                    if since <= s <= now:
                        self._round(route, s)
            self._horizon[route] = now

    def tick(self, now: datetime) -> None:
        if self.started is None:
            self.started = now
        self._due_rounds(now)
        if self.wand:
            self._tick_wand(now)
            return
        for key, rd in list(self.rounds.items()):
            if rd.closed:
                if now - rd.end > timedelta(hours=6):
                    del self.rounds[key]
                continue
            if now < rd.start:
                continue
            if self._offline_route():
                rd.issues = {k: v for k, v in rd.issues.items() if k[0] not in ("missed", "not_started")}
            else:
                self._judge_deadlines(rd, now)
            if now > rd.end:
                rd.closed = True
                if not rd.reads and not self._offline_route() and self._others_reported(rd):
                    rd.issues = {k: v for k, v in rd.issues.items() if k[0] not in ("missed", "not_started")}
                    self._publish(rd, now)
                    self._silent_reader(rd, now)
                    continue
            self._publish(rd, now)

    def _offline_route(self) -> bool:
        return bool(self.offline) and (not self.readers or bool(self.readers & self.offline))

    def _others_reported(self, rd: Round) -> bool:
        lo, hi = rd.start - self.tol[rd.route], rd.end
        return any(lo <= t <= hi for t in self.other_reads)

    def _silent_reader(self, rd: Round, now: datetime) -> None:
        reader = ",".join(sorted(self.readers)) or rd.route
        local = rd.start.astimezone(self.site.tz)
        self.raise_(reader, now, f"巡更机 {reader} 无数据（{self.routes[rd.route].name} {local:%H:%M} 一轮无任何记录，"
                                 "其他巡更机正常），疑似离线",
                    f"patrol reader {reader} silent for round {local:%H:%M} of {rd.route} while others report",
                    details={"reader": reader, "what": "reader_silent", "round_start": rd.start.isoformat()})

    def _tick_wand(self, now: datetime) -> None:
        got = self.download_at
        if got is not None and got != self.download_seen and now - got >= timedelta(seconds=self.cfg.settle_s):
            self._judge_download(got, now)
        wait = timedelta(hours=self.cfg.wand_wait_hours)
        # a round over before the latest download is that download's to judge: not waiting
        waiting = [rd for rd in self.rounds.values()
                   if not rd.judged and (got is None or rd.end >= got) and now - rd.end > wait]
        if waiting:
            reader = ",".join(sorted(self.readers)) or "wand"
            oldest = min(rd.start for rd in waiting)
            local = oldest.astimezone(self.site.tz)
            self.raise_(reader, now, f"巡更棒 {reader} 超过 {self.cfg.wand_wait_hours:g} 小时未下载"
                                     f"（自 {local:%m-%d %H:%M} 那一轮起）",
                        f"patrol wand {reader} not downloaded for {self.cfg.wand_wait_hours:g} h "
                        f"(rounds since {local:%m-%d %H:%M} not judged)",
                        details={"reader": reader, "what": "not_downloaded", "oldest_round": oldest.isoformat()})

    def _judge_download(self, got: datetime, now: datetime) -> None:
        """Judge the rounds of the download that arrived until `got` (see the module docstring)."""
        reader = ",".join(sorted(self.readers)) or "wand"
        self.clear(reader, now, "downloaded")
        oldest = got - timedelta(hours=self.cfg.wand_lookback_hours)
        if self.download_seen is not None:
            begin = self.download_seen
        else:
            since = self.observing_since if self.observing_since is not None else self.started
            begin = min([since] + [rd.start for rd in self.rounds.values() if rd.reads])
        begin = max(begin, oldest)
        for route in self.routes:
            for s in self._ending_between(route, begin, got):
                self._round(route, s)
        too_old = 0
        for rd in sorted(self.rounds.values(), key=lambda rd: rd.start):
            if rd.judged or rd.end >= got:
                continue
            rd.judged = True
            if rd.end < begin:   # before the look-back, or judged by an earlier download
                too_old += rd.end < oldest and (self.download_seen is None or rd.end >= self.download_seen)
                continue
            self._judge_reads(rd)
            self._judge_deadlines(rd, rd.end + timedelta(microseconds=1))
            self._publish(rd, now)
        if too_old:
            log.warning("patrol %s: %d rounds ended more than %g h (wand_lookback_hours) before the download of "
                        "%s: not judged", self.id, too_old, self.cfg.wand_lookback_hours,
                        f"{got.astimezone(self.site.tz):%Y-%m-%d %H:%M:%S}")
        self.download_seen = got
        for key in [k for k, rd in self.rounds.items() if rd.judged and now - rd.end > timedelta(days=2)]:
            del self.rounds[key]

    def _ending_between(self, route: str, lo: datetime, hi: datetime) -> list[datetime]:
        """Starts of the route's rounds that end in [lo, hi)."""
        span = self.offsets[route][-1] + self.tol[route]
        tz = self.site.tz
        day, last = (lo - span).astimezone(tz).date() - timedelta(days=1), hi.astimezone(tz).date()
        out = []
        while day <= last:
            out += [s for s in self.starts_on(route, day) if lo <= s + span < hi]
            day += timedelta(days=1)
        return out

    # ---- after a restart ---------------------------------------------------------------------
    def _issue_keys(self, route: str, issues) -> dict[tuple[str, int], dict]:
        out = {}
        index = self.index[route]
        for i in issues if isinstance(issues, list) else ():
            if not isinstance(i, dict) or i.get("what") not in WHAT_ZH:
                continue
            k = 0 if i["what"] == "not_started" else index.get(i.get("checkpoint"))
            if k is not None:
                out[(i["what"], k)] = {key: v for key, v in i.items() if key != "what"}
        return out

    def restore_alert(self, a) -> bool | None:
        what = a.details.get("what")
        if what in READER_ALERTS:
            readers = ",".join(sorted(self.readers))
            if what == "reader_offline":
                if a.source not in (self.readers or self.site.readers):
                    return None
                self.offline.add(a.source)
            elif what == "not_downloaded" and a.source != (readers or "wand"):
                return None
            elif what == "reader_silent" and a.source != readers and a.source not in self.routes:
                return None
            return False
        route = a.details.get("route")
        try:
            start = datetime.fromisoformat(a.details["round_start"])
        except (KeyError, TypeError, ValueError):
            return None
        if route not in self.routes or start.tzinfo is None:
            return None
        rd = self._round(route, start)
        if self.source(rd) != a.source:
            return None
        keys = self._issue_keys(route, a.details.get("issues"))
        for key, v in keys.items():
            rd.issues.setdefault(key, v)
        rd.shown = set(keys)
        rd.judged = self.wand                       # a wand round is alerted once judged, by a download
        return True

    def restore_acked(self, source: str, details: dict) -> None:
        """A round alert the guard room acknowledged (so cleared) before the restart: its issues
        are not announced again (only new ones)."""
        route = details.get("route")
        try:
            start = datetime.fromisoformat(details["round_start"])
        except (KeyError, TypeError, ValueError):
            return
        if route in self.routes and start.tzinfo is not None and self.active(source) is None:
            rd = self._round(route, start)
            if self.source(rd) == source:
                rd.shown |= set(self._issue_keys(route, details.get("issues")))

    def restore(self, checkins, now: datetime, last_activity: datetime | None) -> int:
        """Take back the reads of the rounds still being judged (`checkins`: PatrolCheckin from the
        ledger, in the order they arrived; for a wand route those of the last `wand_lookback_hours`,
        which tell its downloads), silently; make the rounds in progress at `now` (and, for a wand
        route, those made since the gateway was watching, for the not-downloaded alert); the rounds
        the previous run finished judging (ended before `last_activity`, its last sign of life;
        wand rounds ended before the last download it judged, which starts the next download's
        period) are left as judged. Returns the number of reads fed."""
        n = 0
        self._restoring = True
        try:
            for e in checkins:
                if e.ts <= now:
                    self.on_event(e)
                    n += 1
        finally:
            self._restoring = False
        tz = self.site.tz
        d = now.astimezone(tz).date()
        back = int(self.cfg.wand_wait_hours // 24) + 2 if self.wand else 1
        watching = self.observing_since if self.observing_since is not None else now
        # online rounds still to judge: not finished by the previous run (it closes a round at its
        # end), and not over before the gateway was watching again (nothing of them can be judged)
        judged_to = max(min(last_activity, now) if last_activity else now, min(watching, now))
        for route in self.routes:
            span = self.offsets[route][-1] + self.tol[route]
            for day in (d - timedelta(days=i) for i in range(back, -1, -1)):
                for s in self.starts_on(route, day):
                    if s > now:
                        continue
                    if self.wand:
                        # rounds the previous run had made (it was watching when they began)
                        if s >= watching and now - (s + span) <= timedelta(hours=self.cfg.wand_wait_hours + 1):
                            self._round(route, s)
                    elif s + span >= judged_to:
                        self._round(route, s)
            self._horizon[route] = now
        if self.wand:
            last = self.download_at
            if last is not None and now - last >= timedelta(seconds=self.cfg.settle_s):
                self.download_seen = last
            if self.download_seen is not None:
                for rd in self.rounds.values():
                    if rd.end < self.download_seen:
                        rd.judged = True
        elif last_activity is not None:
            for rd in self.rounds.values():
                if rd.end < last_activity:
                    rd.closed = True
        if self.started is None:
            self.started = now
        return n


def round_starts_on(shifts, d: date, tz) -> list[datetime]:
    """Round starts of the shifts ((start "HH:MM", end "HH:MM", every_minutes), ...) that begin on
    local date d: wall-clock steps on an aware local time; a shift ending at or before its start
    runs past midnight. Shared with the console's patrol page so both judge the same rounds."""
    out = []
    for start, end, every in shifts:
        s = datetime.combine(d, time.fromisoformat(start), tz)
        e = datetime.combine(d, time.fromisoformat(end), tz)
        if e <= s:
            e += timedelta(days=1)
        t = s
        while t < e:
            out.append(t)
            t = t + timedelta(minutes=every)
    return sorted(out)
