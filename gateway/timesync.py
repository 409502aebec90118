"""Clock safety: is the wall clock telling the truth, and mending what was recorded while it was not.

The box has no battery clock. After a power cut its wall clock is wrong (1970, or the time
fake-hwclock saved last) until NTP sets it, and NTP may later step it. `TimeSync` watches it:

- **Detection.** Every second it compares the wall clock's advance with the monotonic clock's:
  `d = wall - monotonic` is constant while nobody sets the clock, so a change of `d` beyond
  `threshold_s` is a step (logged once, with its size, and kept in `clock_steps`). Whether the
  clock is synchronised comes from the kernel (`adjtimex`, read-only), systemd-timesyncd
  (`/run/systemd/timesync/synchronized`) and `timedatectl`; whether it is plausible, from the
  software's release date and the newest trusted time already in the ledger.
- **States.** Trusted, or untrusted with a reason; each change is logged once. At start the
  clock is trusted when it is plausible and a time-sync service says it is synchronised (with no
  time-sync service on the machine the kernel's "unsynchronised" flag means nothing: then
  plausible is enough). Once trusted it stays trusted while `d` holds (a synchronised clock does
  not become wrong because NTP is out of reach for a day) — also across a restart of the
  gateway in the same boot (the anchor `d` is kept in the ledger). It becomes untrusted when it
  is stepped to an implausible time. It becomes trusted again when a time-sync service reports
  synchronised, or when it is stepped to a plausible time (someone set it).
- **Marking.** An untrusted stretch is an *episode* (a `clock_episodes` row: boot id, wall and
  monotonic clock at its start, so `d` of its timeline). The ledger asks `Timeline.place` for
  each event: an event whose own time (its `ts`; a patrol read's arrival) lies in an open
  episode's wall range gets that episode's id in its row, its energy counter goes to
  `energy_held` (billing never sees it) and its InfluxDB point to `outbox_held` (never sent).
- **Repair.** When the clock becomes trusted, each open episode of this boot has the offset
  `(wall_now - mono_now) - (wall_start - mono_start)` (true wall = trusted wall now - (mono now -
  mono then)), exact in microseconds; the ledger moves its rows by it in one transaction and
  releases the held counters and points (`Ledger.repair_clock`). Events still on their way
  (in the hub) are moved as they arrive. An episode of an earlier boot cannot be tied to this
  boot's monotonic clock: it is kept marked, never sent, and reported ("unrepairable").

Why per-episode and not a monotonic time per row: the events carry wall timestamps only (their
types stay as they are), and within one episode wall and monotonic move together, so the
episode's `d` gives each row's monotonic time back exactly; one offset per episode repairs a
whole table with one UPDATE on a partial index (`episode IS NOT NULL`), and the trusted rows
(all of them, normally) cost nothing.

The rules engine is paused while the clock is untrusted (no ticks: no patrol deadline, stale
meter, held door or re-notify is judged on a wrong clock); the events it would have seen are
held (`HeldEvents`) and given to it with their repaired times once the clock is trusted, so a
round walked while the clock was wrong counts, and nothing is judged twice. See runtime.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import dataclasses
import json
import logging
import os
import shutil
import subprocess
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Protocol

from .clock import Clock, from_us, signed_duration, to_us, when_text
from .events import AlertChange, PatrolCheckin

log = logging.getLogger(__name__)

# A wall clock before this cannot be right: the software did not exist yet. Move it forward at
# each release (it is a floor, so an old value is merely less useful, never wrong).
RELEASED = datetime(2026, 11, 1, tzinfo=timezone.utc)
STEP_THRESHOLD_S = 2.0
CHECK_S = 1.0
SEEN_EVERY_S = 60.0      # how often a trusted clock's time is noted in the ledger (a floor after a reboot)

# adjtimex(2)
TIME_ERROR = 5
STA_UNSYNC = 0x0040


# ---- the kernel's view: adjtimex --------------------------------------------------------------

class _TimexHead(ctypes.Structure):
    """The leading fields of `struct timex` (<sys/timex.h>): `unsigned int modes` then `long`s and
    `int status`. ctypes lays them out like the C compiler does, so the offsets are right for
    64-bit (status at byte 40) and 32-bit (byte 20) ARM and x86 alike; the call gets a buffer
    far larger than any `struct timex`, so the kernel never writes past it."""

    _fields_ = [("modes", ctypes.c_uint), ("offset", ctypes.c_long), ("freq", ctypes.c_long),
                ("maxerror", ctypes.c_long), ("esterror", ctypes.c_long), ("status", ctypes.c_int)]


@dataclass(frozen=True)
class KernelClock:
    state: int          # adjtimex's return value: TIME_OK 0 ... TIME_ERROR 5
    status: int         # STA_* bits
    maxerror_us: int
    esterror_us: int

    @property
    def synced(self) -> bool:
        return self.state != TIME_ERROR and not self.status & STA_UNSYNC

    def describe(self) -> str:
        word = "synchronised" if self.synced else "unsynchronised"
        return f"kernel: {word} (adjtimex {self.state}, status 0x{self.status:04x}, maxerror {self.maxerror_us} µs)"


_libc = None


def read_adjtimex() -> KernelClock | None:
    """The kernel's clock state, read only (modes = 0 needs no privilege); None where there is
    no adjtimex (not Linux, a sandbox that refuses the call)."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = _libc.adjtimex
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p]
    fn.restype = ctypes.c_int
    buf = ctypes.create_string_buffer(1024)   # struct timex is 208 bytes on 64-bit, 128 on 32-bit
    head = _TimexHead.from_buffer(buf)
    head.modes = 0
    try:
        rc = fn(ctypes.addressof(buf))
    except OSError:
        return None
    if rc < 0:
        return None
    return KernelClock(rc, head.status, head.maxerror, head.esterror)


# ---- where time comes from ----------------------------------------------------------------------

@dataclass(frozen=True)
class SyncState:
    synced: bool | None     # None: nobody on this machine can say (no time-sync service)
    detail: str


class ClockSource(Protocol):
    def wall_us(self) -> int: ...
    def mono_us(self) -> int: ...
    def boot_id(self) -> str: ...
    def sync_state(self) -> SyncState: ...


TIMESYNCD_FLAG = Path("/run/systemd/timesync/synchronized")
SERVICE_MARKS = (("systemd-timesyncd", Path("/run/systemd/timesync")), ("chrony", Path("/run/chrony")),
                 ("chrony", Path("/var/run/chrony")), ("ntpd", Path("/run/ntpd.pid")),
                 ("ntpd", Path("/var/run/ntpd.pid")), ("ntpsec", Path("/run/ntpsec")),
                 ("openntpd", Path("/run/openntpd")))


class SystemClockSource:
    """The machine's clocks: CLOCK_REALTIME, CLOCK_MONOTONIC (both slewed alike by NTP, so only a
    step changes wall - mono) and the kernel's boot id (the monotonic clock restarts with it)."""

    TIMEDATECTL_EVERY_S = 10.0

    def __init__(self) -> None:
        self._boot: str | None = None
        self._timedatectl_at = -1e9
        self._timedatectl: tuple[str, str] = ("", "")

    def wall_us(self) -> int:
        return time.time_ns() // 1000

    def mono_us(self) -> int:
        return time.monotonic_ns() // 1000

    def boot_id(self) -> str:
        if self._boot is None:
            try:
                self._boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
            except OSError:
                # No boot id: every start counts as a new boot (untrusted episodes of an earlier
                # run are then never tied to this one: safe, merely less repairable).
                self._boot = f"process-{os.getpid()}-{time.time_ns()}"
        return self._boot

    def _ask_timedatectl(self) -> tuple[str, str]:
        """(NTPSynchronized, NTP) from timedatectl, at most every TIMEDATECTL_EVERY_S; ("", "")
        where there is no systemd."""
        now = time.monotonic()
        if now - self._timedatectl_at < self.TIMEDATECTL_EVERY_S:
            return self._timedatectl
        self._timedatectl_at = now
        self._timedatectl = ("", "")
        if not Path("/run/systemd/system").is_dir() or shutil.which("timedatectl") is None:
            return self._timedatectl
        try:
            out = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "-p", "NTP"], capture_output=True,
                                 text=True, timeout=2).stdout
        except (OSError, subprocess.SubprocessError):
            return self._timedatectl
        values = dict(line.split("=", 1) for line in out.splitlines() if "=" in line)
        self._timedatectl = (values.get("NTPSynchronized", ""), values.get("NTP", ""))
        return self._timedatectl

    def sync_state(self) -> SyncState:
        kernel = read_adjtimex()
        if kernel is not None and kernel.synced:
            return SyncState(True, kernel.describe())
        if TIMESYNCD_FLAG.exists():
            return SyncState(True, f"systemd-timesyncd: {TIMESYNCD_FLAG} exists")
        synced, ntp = self._ask_timedatectl()
        if synced == "yes":
            return SyncState(True, "timedatectl: NTPSynchronized=yes")
        kernel_text = kernel.describe() if kernel is not None else "kernel: adjtimex not available"
        service = next((name for name, mark in SERVICE_MARKS if mark.exists()), "")
        if not service and ntp == "yes":
            service = "timedatectl NTP=yes"
        if service:
            return SyncState(False, f"{service} has not synchronised the clock yet ({kernel_text})")
        return SyncState(None, f"no time-sync service on this machine ({kernel_text})")


class FakeClockSource:
    """A simulated wall clock and monotonic clock (µs) for tests: `advance` moves both, `step`
    sets the wall clock alone, `reboot` starts a new boot (monotonic from `mono_s` again)."""

    def __init__(self, wall: datetime, mono_s: float = 10.0, boot: str = "boot-1", synced: bool | None = False):
        self.wall = to_us(wall)
        self.mono = round(mono_s * 1_000_000)
        self.boot = boot
        self.synced = synced

    def wall_us(self) -> int:
        return self.wall

    def mono_us(self) -> int:
        return self.mono

    def boot_id(self) -> str:
        return self.boot

    def sync_state(self) -> SyncState:
        word = {True: "synchronised", False: "unsynchronised", None: "unknown"}[self.synced]
        return SyncState(self.synced, f"fake source: {word}")

    def advance(self, seconds: float = 0.0, us: int = 0) -> None:
        n = round(seconds * 1_000_000) + us
        self.wall += n
        self.mono += n

    def step(self, seconds: float = 0.0, us: int = 0, to: datetime | None = None) -> None:
        self.wall = to_us(to) if to is not None else self.wall + round(seconds * 1_000_000) + us

    def reboot(self, wall: datetime, mono_s: float = 5.0, boot: str | None = None, synced: bool | None = False):
        self.wall = to_us(wall)
        self.mono = round(mono_s * 1_000_000)
        self.boot = boot or f"{self.boot}+"
        self.synced = synced


class SourceClock(Clock):
    """A Clock reading a ClockSource (a FakeClockSource in tests); the runtime watches its source."""

    def __init__(self, source: ClockSource):
        self.source = source

    def now(self) -> datetime:
        return from_us(self.source.wall_us())

    def monotonic(self) -> float:
        return self.source.mono_us() / 1_000_000


# ---- episodes as wall-time ranges -------------------------------------------------------------------

@dataclass
class Span:
    """One untrusted episode of this process's knowledge: its timestamps lie in [lo, hi] of the
    wrong timeline (hi None: still open, up to the wall clock now)."""

    id: int
    d: int                      # wall - mono of its timeline, µs
    lo: int
    hi: int | None
    state: str = "untrusted"    # untrusted | repaired | unrepairable
    offset: int | None = None   # once repaired: added to its timestamps


def own_time(event: object) -> datetime | None:
    """The instant of an event that the gateway's own clock gave: a patrol read's arrival (its
    `ts` is the reader's), an alert change's update, else its `ts`."""
    if isinstance(event, PatrolCheckin):
        return event.received
    if isinstance(event, AlertChange):
        return event.alert.updated_at
    return getattr(event, "ts", None)


class Timeline:
    """Which episode a timestamp came from, for the ledger and the rules. Empty (the normal case)
    it costs one attribute test per event."""

    def __init__(self, now_us: Callable[[], int], margin_us: int = int(STEP_THRESHOLD_S * 1_000_000)):
        self.now_us = now_us
        self.margin_us = margin_us
        self.spans: list[Span] = []

    def contains(self, span: Span, ts_us: int) -> bool:
        hi = span.hi if span.hi is not None else self.now_us() + self.margin_us
        return span.lo <= ts_us <= hi

    def find(self, ts_us: int) -> Span | None:
        for span in reversed(self.spans):   # the newest first where ranges overlap (a small step)
            if self.contains(span, ts_us):
                return span
        return None

    def get(self, episode: int) -> Span | None:
        return next((s for s in self.spans if s.id == episode), None)

    def place(self, event):
        """(event, episode): the event as it should be recorded, and the episode its row is marked
        with (None: trusted). An event of an episode already repaired comes back moved."""
        if not self.spans:
            return event, None
        own = own_time(event)
        if own is None:
            return event, None
        span = self.find(to_us(own))
        if span is None:
            return event, None
        if span.state == "repaired":
            return self.shift(event, span), None
        return event, span.id

    def shift(self, event, span: Span):
        """The event with the timestamps its own clock gave moved by the span's offset."""
        off = span.offset or 0

        def moved(t: datetime | None, own: bool = False):
            if t is None or not (own or self.contains(span, to_us(t))):
                return t
            return from_us(to_us(t) + off)
        if isinstance(event, PatrolCheckin):
            ts = event.ts if event.source == "wand" else moved(event.ts)
            return dataclasses.replace(event, ts=ts, received=moved(event.received, own=True))
        if isinstance(event, AlertChange):
            a = event.alert.snapshot()
            a.raised_at, a.updated_at = moved(a.raised_at), moved(a.updated_at, own=True)
            a.cleared_at, a.acked_at = moved(a.cleared_at), moved(a.acked_at)
            return AlertChange(a, event.what)
        return dataclasses.replace(event, ts=moved(event.ts, own=True))


# ---- the watcher --------------------------------------------------------------------------------

@dataclass
class Repair:
    episode: int
    offset_us: int
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.rows.values())


class TimeSync:
    """Watches a ClockSource, keeps the ledger's episodes and repairs them. `start()` once after
    the ledger is open (before anything is recorded), then `check()` every second (`run`)."""

    def __init__(self, source: ClockSource, ledger=None, threshold_s: float = STEP_THRESHOLD_S,
                 released: datetime = RELEASED, check_s: float = CHECK_S):
        self.source = source
        self.ledger = ledger
        self.threshold_us = int(threshold_s * 1_000_000)
        self.released_us = to_us(released)
        self.check_s = check_s
        self.timeline = Timeline(source.wall_us, self.threshold_us)
        self.trusted = False
        self.reason = "not looked at yet"
        self.since_us: int | None = None       # wall clock when the state began (untrusted: wrong)
        self.floor_us = self.released_us        # a wall clock before this is wrong
        self.boot = ""
        self.started_mono: int | None = None
        self.steps: list[dict] = []             # this run's steps, newest last (bounded)
        self.repairs: list[Repair] = []         # this run's repairs
        self.unrepairable: list[dict] = []      # episodes of earlier boots, reported at start
        self.listeners: list[Callable[[list[Repair]], None]] = []
        self._d = 0                             # wall - mono of the current timeline
        self._last_wall = self._last_mono = 0
        self._episode: Span | None = None       # the open episode (untrusted)
        self._seen_at = -10**18                 # mono of the last note of the trusted time
        self._repair_due = False                # trusted, but the episodes are not repaired yet
        self._repair_failed = ""
        if ledger is not None:
            ledger.timeline = self.timeline

    # ---- what the ledger says -----------------------------------------------------------------
    def _ledger_floor(self) -> int | None:
        if self.ledger is None:
            return None
        return self.ledger.newest_trusted_us()

    def _anchor(self) -> dict | None:
        if self.ledger is None:
            return None
        text = self.ledger.meta("clock_anchor")
        try:
            return json.loads(text) if text else None
        except ValueError:
            return None

    def _save_anchor(self, wall: int) -> None:
        if self.ledger is None:
            return
        try:
            self.ledger.set_meta("clock_anchor", json.dumps({"boot": self.boot, "d_us": self._d, "at_us": wall}))
            self.ledger.set_meta("clock_seen_us", str(wall))
        except Exception as e:  # noqa: BLE001 - a locked or full ledger: the anchor is a convenience
            log.warning("clock: cannot note the trusted clock in the ledger: %s", e)

    def _plausible(self, wall: int) -> str:
        """'' when the wall clock can be right, else why not."""
        if wall < self.released_us:
            return (f"the wall clock ({when_text(wall)}) is before this software was released "
                    f"({when_text(self.released_us)})")
        if wall < self.floor_us:
            return (f"the wall clock ({when_text(wall)}) is before the newest time already in the ledger "
                    f"({when_text(self.floor_us)})")
        return ""

    # ---- start -------------------------------------------------------------------------------
    def start(self) -> None:
        src = self.source
        self.boot = src.boot_id()
        wall, mono = src.wall_us(), src.mono_us()
        self.started_mono = mono
        self._d, self._last_wall, self._last_mono = wall - mono, wall, mono
        floor = self._ledger_floor()
        self.floor_us = max(self.released_us, floor or 0)
        episodes = self.ledger.clock_episodes(("untrusted", "unrepairable")) if self.ledger is not None else []
        known = [e for e in episodes if e["state"] == "unrepairable"]
        earlier = [e for e in episodes if e["state"] == "untrusted" and e["boot"] != self.boot]
        mine = [e for e in episodes if e["state"] == "untrusted" and e["boot"] == self.boot]
        self.unrepairable = list(known)
        if known:
            log.warning("clock: %d episodes of earlier boots could not be repaired (ids %s): their rows stay marked "
                        "and are never sent (clock_episodes)", len(known), ", ".join(str(e["id"]) for e in known))
        for e in earlier:
            self.ledger.set_clock_episode(e["id"], state="unrepairable")
            rows = self.ledger.clock_episode_rows(e["id"])
            info = {**e, "state": "unrepairable", "rows": rows}
            self.unrepairable.append(info)
            log.error("clock episode %d (boot %s, clock said %s … %s, reason: %s): the box restarted before the "
                      "clock was set, so its %d rows cannot be tied to true time; they stay marked in the ledger "
                      "and are never sent", e["id"], e["boot"][:8], when_text(e["wall_us"]),
                      when_text(e["last_wall_us"]), e["reason"], sum(rows.values()))
        for e in mine:   # the gateway restarted in this boot while the clock was untrusted
            self.timeline.spans.append(Span(e["id"], e["wall_us"] - e["mono_us"], e["wall_us"], e["last_wall_us"]))

        anchor = self._anchor()
        why = ""
        same_boot = anchor is not None and anchor.get("boot") == self.boot
        if same_boot and abs(self._d - int(anchor.get("d_us", 0))) <= self.threshold_us:
            how = f"same boot and no step since it was trusted at {when_text(int(anchor.get('at_us', wall)))}"
        else:
            why = self._plausible(wall)
            sync = src.sync_state()
            if not why and sync.synced is False:
                why = f"not synchronised: {sync.detail}"
            how = sync.detail if sync.synced else f"plausible ({sync.detail})"
        if why:
            reopen = next((s for s in reversed(self.timeline.spans)
                           if abs(s.d - self._d) <= self.threshold_us), None)
            self._untrusted(why, wall, mono, reopen=reopen)
        else:
            self._trusted(f"clock trusted at start: {how}", wall, mono)

    # ---- each second ---------------------------------------------------------------------------
    def check(self) -> None:
        src = self.source
        wall, mono = src.wall_us(), src.mono_us()
        if self.started_mono is None:
            self.start()
            return
        gap = max(0, mono - self._last_mono)
        d = wall - mono
        step = d - self._d
        if abs(step) > self.threshold_us:
            self._step(step, wall, mono, gap)
        elif self.trusted:
            if self._repair_due:
                self._try_repair(wall, mono)
            elif mono - self._seen_at >= SEEN_EVERY_S * 1_000_000 and self.ledger is not None:
                self._seen_at = mono
                self._save_anchor(wall)
        else:
            sync = src.sync_state()
            why = self._plausible(wall) if sync.synced else "still unsynchronised"
            if sync.synced and not why:
                self._close_episode(wall)
                self._trusted(f"clock trusted: synchronised ({sync.detail})", wall, mono)
        self._last_wall, self._last_mono = wall, mono

    def _step(self, step: int, wall: int, mono: int, gap: int) -> None:
        was = self.trusted
        self._d = wall - mono
        why = self._plausible(wall)
        note = (f"wall clock advanced {signed_duration(wall - self._last_wall)} while the monotonic clock advanced "
                f"{signed_duration(gap)}")
        log.warning("clock stepped %s by %s, now %s (%s); the clock %s", "forward" if step > 0 else "backward",
                    signed_duration(step)[1:], when_text(wall), note,
                    ("stays trusted" if not why else f"is no longer trusted: {why}") if was
                    else ("is trusted now" if not why else f"is still untrusted: {why}"))
        self.steps = (self.steps + [{"wall_us": wall, "mono_us": mono, "step_us": step, "trusted": not why}])[-20:]
        if self.ledger is not None:
            self.ledger.record_clock_step(self.boot, wall, mono, step, not why, note)
        if was and not why:
            self._save_anchor(wall)   # the new timeline is the trusted one (NTP corrected it)
            return
        if not was:
            # the old timeline reached at most its last look plus the time since
            self._close_episode(self._last_wall + gap)
        if why:
            # the step may have come right after the last look: the new timeline starts `gap` earlier
            self._untrusted(f"stepped to an implausible time: {why}", wall - gap, mono - gap)
        else:
            self._trusted(f"clock trusted: stepped to a plausible time ({when_text(wall)})", wall, mono)

    # ---- transitions ---------------------------------------------------------------------------
    def _untrusted(self, why: str, wall: int, mono: int, reopen: Span | None = None) -> None:
        self.trusted, self.reason, self.since_us = False, why, wall
        if reopen is not None:
            reopen.hi = None
            self._episode = reopen
            log.warning("clock untrusted: %s; recording goes on in episode %d (begun before this restart, same "
                        "boot), to be repaired when the clock is set", why, reopen.id)
            return
        after = self.floor_us if self.floor_us > self.released_us else None
        ep = (self.ledger.open_clock_episode(self.boot, why, wall, mono, after) if self.ledger is not None
              else len(self.timeline.spans) + 1)
        self._episode = Span(ep, wall - mono, wall, None)
        self.timeline.spans.append(self._episode)
        log.warning("clock untrusted: %s; what is recorded from now is marked (episode %d), alarms that need the "
                    "time wait, points for InfluxDB are held back, until the clock is set", why, ep)

    def _close_episode(self, last_wall: int) -> None:
        ep = self._episode
        if ep is None:
            return
        ep.hi = max(ep.lo, last_wall)
        if self.ledger is not None:
            self.ledger.set_clock_episode(ep.id, last_wall_us=ep.hi)
        self._episode = None

    def _trusted(self, how: str, wall: int, mono: int) -> None:
        self.trusted, self.reason, self.since_us = True, how, wall
        log.info("%s", how)
        self._save_anchor(wall)
        self._seen_at = mono
        self._repair_due = True
        self._try_repair(wall, mono)

    @property
    def settled(self) -> bool:
        """Trusted, and what was recorded before is repaired: the rules may judge again."""
        return self.trusted and not self._repair_due

    def _try_repair(self, wall: int, mono: int) -> None:
        try:
            repairs = self._repair(wall, mono)
        except Exception as e:  # noqa: BLE001 - a locked or full ledger: tried again each second
            if str(e) != self._repair_failed:
                log.error("clock: repairing the untrusted episodes failed, trying again: %s", e)
            self._repair_failed = str(e)
            return
        self._repair_due, self._repair_failed = False, ""
        for fn in self.listeners:
            fn(repairs)

    def _repair(self, wall: int, mono: int) -> list[Repair]:
        d_now = wall - mono
        todo = [s for s in self.timeline.spans if s.state == "untrusted"]
        if self.ledger is not None:
            # What waits in the batch must be in the tables before they are moved.
            self.ledger.flush()
        fixes = [(s.id, d_now - s.d, s.lo, s.hi if s.hi is not None else wall) for s in todo]
        counts = (self.ledger.repair_clock(fixes, wall, boot_start_us=d_now) if self.ledger is not None
                  else {s.id: {} for s in todo})
        out = []
        for s, (ep, off, lo, hi) in zip(todo, fixes):
            s.hi, s.state, s.offset = hi, "repaired", off
            r = Repair(ep, off, counts.get(ep, {}))
            out.append(r)
            log.info("clock episode %d repaired: %d rows moved by %s (%s) — %s", ep, r.total, signed_duration(off),
                     ", ".join(f"{n} {t}" for t, n in r.rows.items() if n) or "nothing recorded",
                     f"{when_text(lo)} … {when_text(hi)} became {when_text(lo + off)} … {when_text(hi + off)}")
        self.repairs += out
        return out

    # ---- for others ------------------------------------------------------------------------------
    def true_wall_us(self, mono_us: int) -> int | None:
        """The true wall time of a monotonic instant of this boot, when the clock is trusted."""
        if not self.trusted:
            return None
        return self.source.wall_us() - (self.source.mono_us() - mono_us)

    def status(self) -> dict:
        return {"trusted": self.trusted, "reason": self.reason,
                "since": when_text(self.since_us) if self.since_us is not None else None,
                "episode": self._episode.id if self._episode is not None else None,
                "steps": len(self.steps), "repaired": [(r.episode, r.offset_us, r.total) for r in self.repairs],
                "unrepairable": [e["id"] for e in self.unrepairable]}

    async def run(self) -> None:
        if self.started_mono is None:
            self.start()
        while True:
            await asyncio.sleep(self.check_s)
            self.check()


# ---- the rules' side ------------------------------------------------------------------------------

class HeldEvents:
    """Events the rules engine did not see while the clock was untrusted, given back in arrival
    order with their repaired times once it is trusted. Bounded: beyond `limit` the oldest go (they
    are in the ledger all the same; the rules just do not judge them), said once."""

    def __init__(self, timeline: Timeline, limit: int = 50_000):
        self.timeline = timeline
        self.limit = limit
        self._q: deque = deque()
        self.dropped = 0
        self.unplaced = 0          # events of episodes that could not be repaired

    def __len__(self) -> int:
        return len(self._q)

    def hold(self, events: Iterable) -> None:
        for e in events:
            self._q.append(e)
            if len(self._q) > self.limit:
                self._q.popleft()
                if not self.dropped:
                    log.warning("rules: more than %d events while the clock is untrusted; the oldest are no longer "
                                "kept for judging (the ledger has them all)", self.limit)
                self.dropped += 1

    def release(self, events: Iterable = ()) -> list:
        out = []
        for e in (*self._q, *events) if self._q else events:
            placed, episode = self.timeline.place(e)
            if episode is None:
                out.append(placed)
            else:
                self.unplaced += 1
        self._q.clear()
        return out
