"""Interval consumption: a meter's cumulative counter turned into kWh per 15-minute slot.

The counter readings are walked in time order (sorted here, so the order they arrived in does
not matter) and every step from one accepted reading to the next is judged:

- a recorded replacement inside the step: the old meter's final reading closes it and the new
  meter's first reading opens the next one;
- lower than before: a rollover if the meter's counter maximum makes the step plausible, a
  jitter within the counter's resolution (ignored, counted), otherwise a rejected reading;
- higher than the circuit's maximum power could deliver in the time: a rejected spike;
- readings rejected three times in a row that agree with each other mean the counter really
  restarted (a replacement nobody recorded): they are accepted from there on, and the energy
  of the unexplained step is unknown (counted as 0 and flagged);
- a step longer than the gap threshold (the meter was offline) is spread by linear
  interpolation over the slots it covers and flagged as estimated;
- such a step across the month's start or end (the meter was silent at the boundary) is not
  split between the months: all of it is billed in the month where the counter resumes, spread
  over that month's part of the step, and flagged in both months ("carried"). The month before
  ends at its last reading, whenever it is allocated, so over consecutive months nothing is lost
  and nothing is billed twice.

A step's energy is spread over the slots it overlaps in proportion to time, the last slot
taking the remainder, so the month's slots add up exactly to the counter difference plus
rollovers and replacements. Every adjustment becomes a QualityNote.

Coverage is the part of the month whose consumption the counters measure: from the first
accepted reading to the last one that counts for the month, less the steps whose energy is
unknown (a counter restart). Time inside an interpolated gap is covered: its energy is measured,
only its spread over the slots is estimated.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from typing import Iterable
from zoneinfo import ZoneInfo

from .model import QualityNote
from .tariffs import SLOT_US

ZERO = Decimal(0)
SHARE_Q = Decimal("1e-6")   # interpolated shares are kept to the milliwatt-hour
CONFIRM = 3                 # agreeing rejected readings that prove a counter restart
HOUR_US = 3_600_000_000


@dataclass(frozen=True)
class Replaced:
    at_us: int
    old_final: Decimal
    new_initial: Decimal


@dataclass
class MeterLimits:
    max_power_kw: float | None      # None: spikes are not judged
    counter_max_kwh: Decimal | None  # None: the counter never wraps
    resolution_kwh: Decimal
    gap_us: int


@dataclass
class MeterIntervals:
    meter: str
    kwh: list[Decimal]
    estimated: set[int] = field(default_factory=set)      # slots that hold interpolated energy
    estimated_kwh: Decimal = ZERO
    notes: list[QualityNote] = field(default_factory=list)
    used: int = 0                                          # readings accepted
    first_counter: Decimal | None = None                   # at the month's start (interpolated)
    last_counter: Decimal | None = None                    # at its end, on the meter then installed
    coverage: Decimal = ZERO                               # part of the month the counters measure

    @property
    def total(self) -> Decimal:
        return sum(self.kwh, ZERO)


def _local(us: int, tz: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(us / 1e6, timezone.utc).astimezone(tz)


class _Walk:
    def __init__(self, meter: str, start_us: int, end_us: int, limits: MeterLimits, tz: ZoneInfo):
        self.m = meter
        self.start_us, self.end_us = start_us, end_us
        self.lim = limits
        self.tz = tz
        self.out = MeterIntervals(meter, [ZERO] * ((end_us - start_us) // SLOT_US))
        self.jitter = 0
        self.jitter_span: tuple[int, int] | None = None
        self.carried_out: tuple[int, int, Decimal] | None = None   # a silent step across the month's end
        self.unknown_us = 0                                         # month time of steps of unknown energy
        self.last_t = start_us
        self.max_kwh_per_us = (Decimal(repr(limits.max_power_kw)) / HOUR_US) if limits.max_power_kw else None

    def note(self, kind: str, a_us: int, b_us: int, kwh: Decimal | None, zh: str, en: str) -> None:
        self.out.notes.append(QualityNote(self.m, kind, _local(a_us, self.tz), _local(b_us, self.tz), kwh, zh, en))

    def plausible(self, delta: Decimal, dt_us: int) -> bool:
        if self.max_kwh_per_us is None:
            return True
        return delta <= self.max_kwh_per_us * dt_us + self.lim.resolution_kwh

    # -- spreading a step over the slots --------------------------------------------------------
    def step(self, t0: int, c0: Decimal, t1: int, c1: Decimal, delta: Decimal) -> None:
        """Energy `delta` used between t0 and t1 (counter c0 at t0, c1 at t1 on the same meter
        after adjustments); records the counter at the month's boundaries on the way."""
        s, e = self.start_us, self.end_us
        gap = t1 - t0 > self.lim.gap_us
        if gap and t0 < e < t1:
            # silent across the month's end: billed in the month where the counter resumes
            if self.out.first_counter is None and t0 <= s:
                self.out.first_counter = c0
            if self.out.last_counter is None:
                self.out.last_counter = c0
            self.carried_out = (t0, t1, delta)
            return
        if gap and t0 < s < t1:
            # silent across the month's start: all of it here, over the month's part of the step
            before = self._part(delta, t0, t1, s)
            self.note("carried", t0, t1, before,
                      f"{_local(t0, self.tz):%m-%d %H:%M} 至 {_local(t1, self.tz):%m-%d %H:%M} 跨月初没有读数：读数差 "
                      f"{delta} kWh 全部计入本月（上月按其最后读数结算），其中约 {before} kWh 属于月初之前",
                      f"no reading from {_local(t0, self.tz):%m-%d %H:%M} to {_local(t1, self.tz):%m-%d %H:%M} "
                      f"across the month's start: all of the counter difference {delta} kWh is billed in this month "
                      f"(the month before ended at its last reading), about {before} kWh of it from before the start")
            if self.out.first_counter is None:
                self.out.first_counter = c0
            t0 = s
        if t0 <= s <= t1 and self.out.first_counter is None:
            self.out.first_counter = c0 + self._part(delta, t0, t1, s)
        if t0 <= e <= t1 and self.out.last_counter is None:
            self.out.last_counter = c0 + self._part(delta, t0, t1, e)
        if t1 <= s or t0 >= e or delta == 0:
            return
        kwh = self.out.kwh
        i0 = (t0 - s) // SLOT_US
        i1 = (t1 - 1 - s) // SLOT_US
        if i0 == i1 and not gap:            # the common case: both readings inside one slot
            kwh[i0] += delta
            return
        # Shares by cumulative interpolation: slot k gets F(b_k) - F(a_k), F exact at t1, so the
        # shares of the whole step add up to delta; only the slots inside the month are kept.
        in_month = ZERO
        for k in range(max(i0, 0), min(i1, len(kwh) - 1) + 1):
            a = max(t0, s + k * SLOT_US)
            b = min(t1, s + (k + 1) * SLOT_US)
            share = self._part(delta, t0, t1, b) - self._part(delta, t0, t1, a)
            kwh[k] += share
            in_month += share
            if gap:
                self.out.estimated.add(k)
        if gap:
            self.out.estimated_kwh += in_month
            hours = (t1 - t0) / HOUR_US
            self.note("gap", max(t0, s), min(t1, e), in_month,
                      f"{hours:.1f} 小时没有可用读数（离线或读数被剔除）：读数差 {delta} kWh 按时间线性插值分摊，"
                      f"本月计入 {in_month} kWh（估算）",
                      f"no usable reading for {hours:.1f} h (offline or rejected readings): the counter difference "
                      f"{delta} kWh spread linearly over time, {in_month} kWh in this month (estimated)")

    @staticmethod
    def _part(delta: Decimal, t0: int, t1: int, x: int) -> Decimal:
        """Energy of the step up to time x (linear in time; exact at both ends)."""
        if x <= t0:
            return ZERO
        if x >= t1:
            return delta
        return (delta * (x - t0) / (t1 - t0)).quantize(SHARE_Q)

    # -- judging readings ------------------------------------------------------------------------
    def run(self, points: list[tuple[int, Decimal]], replacements: list[Replaced]) -> MeterIntervals:
        reps = sorted(replacements, key=lambda r: r.at_us)
        next_rep = reps[0].at_us if reps else None
        ri = 0
        t, c = points[0]
        used = 1
        pending: list[tuple[int, Decimal, str]] = []
        # The loop runs once per reading (millions a month): the common case is kept inline.
        s, e, gap_us, kwh = self.start_us, self.end_us, self.lim.gap_us, self.out.kwh
        res, per_us = self.lim.resolution_kwh, self.max_kwh_per_us
        for t1, c1 in points:
            if next_rep is not None and next_rep <= t1:
                t, c, ri = self._replacements(reps, ri, t, c, t1, pending)
                pending = []
                next_rep = reps[ri].at_us if ri < len(reps) else None
            if t1 <= t:
                continue                     # the first point, or the old meter at the replacement instant
            delta = c1 - c
            if delta > res and per_us is not None and delta > per_us * (t1 - t) + res:
                kind = "rejected_spike"
            elif delta < 0:
                kind = self._below(t, c, t1, c1)
                if kind == "rollover":
                    delta = self.lim.counter_max_kwh - c + c1
                elif kind == "jitter":
                    self.step(t, c, t1, c, ZERO)
                    t = t1
                    continue
            else:
                kind = ""
            if kind and kind != "rollover":
                pending.append((t1, c1, kind))
                if self._restarted(pending):
                    t, c, n = self._restart(t, c, pending)
                    used += n
                    pending = []
                continue
            if pending:
                self._flush_rejected(pending)
                pending = []
            used += 1
            if s < t and t1 < e and t1 - t <= gap_us:
                i = (t - s) // SLOT_US
                if i == (t1 - 1 - s) // SLOT_US:
                    kwh[i] += delta
                    t, c = t1, c1
                    continue
            self.step(t, c, t1, c1, delta)
            t, c = t1, c1
        self.out.used = used
        self.last_t = t
        self._flush_rejected(pending)
        if self.jitter:
            a, b = self.jitter_span
            self.note("ignored_jitter", a, b, ZERO,
                      f"{self.jitter} 个读数比前一读数低不超过分辨率 {self.lim.resolution_kwh} kWh：忽略",
                      f"{self.jitter} readings at most {self.lim.resolution_kwh} kWh below the previous one: ignored")
        return self.out

    def _replacements(self, reps: list[Replaced], ri: int, t: int, c: Decimal, t1: int,
                      pending: list) -> tuple[int, Decimal, int]:
        """Close the old meter and open the new one for each replacement up to t1."""
        while ri < len(reps) and reps[ri].at_us <= t1:
            r = reps[ri]
            ri += 1
            if r.at_us <= t:
                continue                     # before this meter's history: nothing to close
            self._flush_rejected(pending)
            pending.clear()
            used_old = r.old_final - c
            if used_old < 0:
                self.note("replacement", r.at_us, r.at_us, None,
                          f"换表记录的旧表止码 {r.old_final} 低于此前读数 {c}：按 0 计",
                          f"the replacement's old final reading {r.old_final} is below the last reading "
                          f"{c}: counted as 0")
                used_old = ZERO
            self.step(t, c, r.at_us, c + used_old, used_old)
            self.note("replacement", r.at_us, r.at_us, used_old,
                      f"换表：旧表止码 {r.old_final}，新表起码 {r.new_initial}",
                      f"meter replaced: old meter's final reading {r.old_final}, new meter's first "
                      f"{r.new_initial}")
            t, c = r.at_us, r.new_initial
        return t, c, ri

    def _below(self, t: int, c: Decimal, t1: int, c1: Decimal) -> str:
        """A reading lower than the last accepted one: rollover, jitter or rejected."""
        wrap = self.lim.counter_max_kwh
        if wrap is not None and self.plausible(wrap - c + c1, t1 - t):
            self.note("rollover", t, t1, wrap - c + c1,
                      f"计数器在 {wrap} 处翻转归零：{c} → {c1}，计 {wrap - c + c1} kWh",
                      f"the counter wrapped at {wrap}: {c} -> {c1}, {wrap - c + c1} kWh")
            return "rollover"
        if c - c1 <= self.lim.resolution_kwh:
            self.jitter += 1    # the meter was there: time moves on, the counter keeps its value
            self.jitter_span = (self.jitter_span or (t1, t1))[0], t1
            return "jitter"
        return "rejected_low"

    def _restarted(self, pending: list[tuple[int, Decimal, str]]) -> bool:
        if len(pending) < CONFIRM:
            return False
        tail = pending[-CONFIRM:]
        return all(0 <= c1 - c0 and self.plausible(c1 - c0, t1 - t0)
                   for (t0, c0, _), (t1, c1, _) in zip(tail, tail[1:]))

    def _restart(self, t: int, c: Decimal, pending: list[tuple[int, Decimal, str]]) -> tuple[int, Decimal, int]:
        """The counter moved to a new level for good: accept it from the first agreeing reading."""
        first = len(pending) - CONFIRM
        self._flush_rejected(pending[:first])
        (ta, ca, _) = pending[first]
        self.step(t, c, ta, c, ZERO)        # unknown energy: counted as none, flagged below
        self.unknown_us += max(0, min(ta, self.end_us) - max(t, self.start_us))
        self.note("restarted", t, ta, None,
                  f"读数从 {c} 变为 {ca} 且持续，但没有换表记录：这段用电量未知（按 0 计）。"
                  f"如已换表，请用 gateway meters replace 登记后重新分摊",
                  f"the counter moved from {c} to {ca} and stayed there with no replacement recorded: the "
                  f"energy of this step is unknown (counted as 0). If the meter was replaced, record it with "
                  f"`gateway meters replace` and allocate again")
        t, c = ta, ca
        for t1, c1, _ in pending[first + 1:]:
            self.step(t, c, t1, c1, c1 - c)
            t, c = t1, c1
        return t, c, CONFIRM

    def _flush_rejected(self, pending: list[tuple[int, Decimal, str]]) -> None:
        for t1, c1, kind in pending:
            if kind == "rejected_spike":
                self.note(kind, t1, t1, None, f"剔除读数 {c1}：超过该回路最大功率 {self.lim.max_power_kw} kW 可能的用电量",
                          f"reading {c1} rejected: more than the circuit's maximum power "
                          f"{self.lim.max_power_kw} kW could deliver")
            else:
                self.note(kind, t1, t1, None, f"剔除读数 {c1}：低于此前读数且没有换表记录",
                          f"reading {c1} rejected: below the previous reading with no replacement recorded")


def meter_intervals(meter: str, readings: Iterable[tuple[int, Decimal]], start_us: int, end_us: int,
                    limits: MeterLimits, tz: ZoneInfo, replacements: Iterable[Replaced] = ()) -> MeterIntervals:
    """kWh per slot of [start_us, end_us) from (ts_us, counter) readings, which should include
    the last reading before the start and the first after the end when there are any."""
    points = sorted(readings)
    # Two values at one instant: keep the higher, whichever arrived first.
    dedup = [p for p, q in zip(points, points[1:]) if p[0] != q[0]] + points[-1:]
    walk = _Walk(meter, start_us, end_us, limits, tz)
    if not dedup:
        walk.note("no_data", start_us, end_us, None, "本月没有读数：用电量未知，按 0 计",
                  "no readings this month: consumption unknown, counted as 0")
        return walk.out
    out = walk.run(dedup, list(replacements))
    first_t = dedup[0][0]
    last_t = walk.carried_out[0] if walk.carried_out else walk.last_t
    if first_t > start_us:
        walk.note("partial", start_us, min(first_t, end_us), None,
                  "月初至首个读数之间没有读数：这段用电量未知", "no reading between the start of the month and the "
                  "first reading: the energy before it is unknown")
    if walk.carried_out:
        t0, t1, delta = walk.carried_out
        walk.note("carried", max(t0, start_us), end_us, delta,
                  f"最后一个读数之后至月末没有读数，计数器 {_local(t1, tz):%Y-%m-%d %H:%M} 才恢复：这段读数差 {delta} kWh "
                  f"计入恢复的那个月，不计入本月",
                  f"no reading from the last one to the month's end; the counter resumed on "
                  f"{_local(t1, tz):%Y-%m-%d %H:%M}: its difference over the silence, {delta} kWh, is billed in "
                  f"that month, not in this one")
    elif last_t < end_us:
        walk.note("partial", max(last_t, start_us), end_us, None,
                  "最后一个读数之后至月末没有读数：这段用电量未知，将计入计数器恢复的那个月",
                  "no reading between the last reading and the end of the month: the energy after it is not "
                  "known yet and will be billed in the month where the counter resumes")
    covered = min(end_us, last_t) - max(start_us, first_t) - walk.unknown_us
    out.coverage = (Decimal(max(covered, 0)) / (end_us - start_us)).quantize(SHARE_Q)
    return out
