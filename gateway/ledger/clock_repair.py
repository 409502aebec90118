"""Clock safety in the ledger (gateway/timesync.py): untrusted clock episodes, the steps seen,
and the repair that moves an episode's rows to true time. `ClockEpisodes` is a part of
`Ledger` (gateway/ledger/writer.py); rows of an episode are written by the writer's commit."""

from __future__ import annotations

import re
from datetime import timedelta

from .queries import SLOT_SQL, SLOT_US
from .schema import INSERT_OUTBOX, last_reading as _last_reading, transaction


class ClockEpisodes:
    """The clock part of `Ledger`: its `_db` and outbox counts are the ledger's."""

    def newest_trusted_us(self) -> int | None:
        """The newest time the gateway's own clock wrote while trusted: its latest readings and
        statuses (by insertion, a few index steps) and the time it last noted (meta clock_seen_us).
        A wall clock before it after a reboot is wrong (fake-hwclock restores an older time)."""
        return self._db.execute(
            "SELECT max(t) FROM ("
            " SELECT (SELECT max(ts_us) FROM (SELECT ts_us FROM reading_log WHERE episode IS NULL "
            "         ORDER BY id DESC LIMIT 100)) AS t"
            " UNION ALL SELECT (SELECT max(ts_us) FROM (SELECT ts_us FROM device_status WHERE episode IS NULL "
            "         ORDER BY id DESC LIMIT 100))"
            " UNION ALL SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'clock_seen_us')").fetchone()[0]

    def open_clock_episode(self, boot: str, reason: str, wall_us: int, mono_us: int, after_us: int | None) -> int:
        return self._db.execute(
            "INSERT INTO clock_episodes (boot, state, reason, wall_us, mono_us, last_wall_us, after_us) "
            "VALUES (?, 'untrusted', ?, ?, ?, ?, ?)", (boot, reason, wall_us, mono_us, wall_us, after_us)).lastrowid

    def set_clock_episode(self, episode: int, state: str | None = None, last_wall_us: int | None = None) -> None:
        if state is not None:
            self._db.execute("UPDATE clock_episodes SET state = ? WHERE id = ?", (state, episode))
        if last_wall_us is not None:
            self._db.execute("UPDATE clock_episodes SET last_wall_us = max(last_wall_us, ?) WHERE id = ?",
                             (last_wall_us, episode))

    _EPISODE_COLS = ("id", "boot", "state", "reason", "wall_us", "mono_us", "last_wall_us", "after_us", "before_us",
                     "offset_us", "rows", "repaired_us")
    CLOCK_TABLES = ("readings", "device_status", "swipes", "door_events", "patrol_checkins", "alerts",
                    "alert_history", "lighting_commands")

    def clock_episodes(self, states: tuple[str, ...] | None = None) -> list[dict]:
        sql = f"SELECT {', '.join(self._EPISODE_COLS)} FROM clock_episodes"
        args: tuple = ()
        if states is not None:
            sql += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(states)
        return [dict(zip(self._EPISODE_COLS, r)) for r in self._db.execute(sql + " ORDER BY id", args)]

    def clock_episode_rows(self, episode: int) -> dict[str, int]:
        """Rows still marked with the episode, per table (energy: held counters, outbox: held points)."""
        db = self._db
        out = {t: db.execute(f"SELECT count(*) FROM {'reading_log' if t == 'readings' else t} WHERE episode = ?",
                             (episode,)).fetchone()[0]
               for t in self.CLOCK_TABLES}
        out["energy"] = db.execute("SELECT count(*) FROM energy_held WHERE episode = ?", (episode,)).fetchone()[0]
        out["outbox"] = db.execute("SELECT count(*) FROM outbox_held WHERE episode = ?", (episode,)).fetchone()[0]
        return out

    def unrepaired_clock(self) -> list[dict]:
        """Episodes not (yet) repaired, oldest first: the episode's columns, `rows` per table and
        `energy` {meter: (counters held, first and last ts_us as the wrong clock said)}. Billing
        never sees their counters (they are not in `energy`); it notes them (billing/allocate.py)."""
        out = []
        for e in self.clock_episodes(("untrusted", "unrepairable")):
            e["rows"] = self.clock_episode_rows(e["id"])
            e["energy"] = {m: (n, lo, hi) for m, n, lo, hi in self._db.execute(
                "SELECT meter, count(*), min(ts_us), max(ts_us) FROM energy_held WHERE episode = ? GROUP BY meter "
                "ORDER BY meter", (e["id"],))}
            out.append(e)
        return out

    def record_clock_step(self, boot: str, wall_us: int, mono_us: int, step_us: int, trusted: bool, note: str) -> None:
        self._db.execute("INSERT INTO clock_steps (boot, wall_us, mono_us, step_us, trusted, note) "
                         "VALUES (?,?,?,?,?,?)",
                         (boot, wall_us, mono_us, step_us, int(trusted), note))

    def clock_steps(self) -> list[dict]:
        cols = ("id", "boot", "wall_us", "mono_us", "step_us", "trusted", "note")
        return [dict(zip(cols, r)) for r in self._db.execute(f"SELECT {', '.join(cols)} FROM clock_steps ORDER BY id")]

    def repair_clock(self, fixes: list[tuple[int, int, int, int]], now_us: int,
                     boot_start_us: int | None = None) -> dict[int, dict[str, int]]:
        """Move the rows of untrusted episodes to true time, in one transaction. `fixes` are
        (episode, offset_us, lo_us, hi_us): every timestamp the gateway's clock gave in the episode
        (they lie in [lo, hi] of the wrong timeline) gets offset_us added; a patrol read's own
        time does so only if it was the gateway's (online reader, in range), an alert's times
        only those in range. Held energy counters go into `energy`, held points into the outbox
        with their line's time (and a patrol point's delay_s) rebuilt. `boot_start_us` (true time
        of this boot's start) bounds the unrepairable episodes that had no upper bound yet.
        Returns rows moved per episode and table."""
        out: dict[int, dict[str, int]] = {}
        points: list[tuple] = []
        held = cursor_sends = 0
        with transaction(self._db, "IMMEDIATE") as db:
            for ep, off, lo, hi in fixes:
                n: dict[str, int] = {}
                # the per-meter entries of those already moved there go with them
                db.execute(f"UPDATE readings_by_meter SET ts_us = ts_us + :off, slot = (ts_us + :off) / {SLOT_US} "
                           f"WHERE (slot, meter, ts_us, id) IN (SELECT {SLOT_SQL}, meter, ts_us, id FROM "
                           "reading_log WHERE episode = :ep)", {"off": off, "ep": ep})
                n["readings"] = db.execute("UPDATE reading_log SET ts_us = ts_us + ?, episode = NULL WHERE episode = ?",
                                           (off, ep)).rowcount
                for t in ("device_status", "swipes", "door_events", "alert_history"):
                    n[t] = db.execute(f"UPDATE {t} SET ts_us = ts_us + ?, episode = NULL WHERE episode = ?",
                                      (off, ep)).rowcount
                moved = db.execute("UPDATE lighting_commands SET ts_us = ts_us + ?, episode = NULL WHERE episode = ?",
                                   (off, ep)).rowcount
                if moved:   # said only where there is lighting
                    n["lighting_commands"] = moved
                args = {"off": off, "lo": lo, "hi": hi, "ep": ep}
                n["patrol_checkins"] = db.execute(
                    "UPDATE OR REPLACE patrol_checkins SET received_us = received_us + :off, ts_us = CASE WHEN "
                    "source != 'wand' AND ts_us BETWEEN :lo AND :hi THEN ts_us + :off ELSE ts_us END, episode = NULL "
                    "WHERE episode = :ep", args).rowcount
                n["alerts"] = db.execute(
                    "UPDATE alerts SET "
                    + ", ".join(f"{c} = CASE WHEN {c} BETWEEN :lo AND :hi THEN {c} + :off ELSE {c} END"
                                for c in ("raised_us", "updated_us", "cleared_us", "acked_us"))
                    + ", episode = NULL WHERE episode = :ep", args).rowcount
                db.execute("INSERT INTO energy (meter, ts_us, kwh) SELECT meter, ts_us + :off, kwh FROM energy_held "
                           "WHERE episode = :ep ORDER BY meter, ts_us, CAST(kwh AS REAL) ON CONFLICT (meter, ts_us) "
                           "DO UPDATE SET kwh = excluded.kwh "
                           "WHERE CAST(excluded.kwh AS REAL) > CAST(energy.kwh AS REAL)",
                           args)
                n["energy"] = db.execute("DELETE FROM energy_held WHERE episode = ?", (ep,)).rowcount
                rows = db.execute("SELECT measurement, priority, ts_us, line, essential, shift_ts, shift_delay, "
                                  "reading FROM outbox_held WHERE episode = ? ORDER BY id", (ep,)).fetchall()
                # a reading the cursor has not passed yet sends its own point (now of trusted time)
                later = {i for i, r in enumerate(rows) if r[7] is not None and self._points is not None
                         and r[7] > self._scanned and self._in_done(r[7]) is None}
                cursor_sends += len(later)
                moved = [_retimed_point(r[:7], off) for i, r in enumerate(rows) if i not in later]
                db.executemany(INSERT_OUTBOX, [(*r, _last_reading(db)) for r in moved])
                db.execute("DELETE FROM outbox_held WHERE episode = ?", (ep,))
                n["outbox"] = len(rows)
                held += len(rows)
                points += moved
                db.execute("UPDATE clock_episodes SET state = 'repaired', offset_us = ?, rows = ?, repaired_us = ?, "
                           "last_wall_us = max(last_wall_us, ?) WHERE id = ?", (off, sum(n.values()), now_us, hi, ep))
                out[ep] = n
            if boot_start_us is not None:
                db.execute("UPDATE clock_episodes SET before_us = ? WHERE state = 'unrepairable' AND before_us IS NULL",
                           (boot_start_us,))
        self.outbox_held -= held
        self._r_depth += cursor_sends
        if cursor_sends:
            self.committed.set()
        if points:
            self._o_depth += len(points)
            self._o_bytes += sum(len(p[3]) for p in points)
            self.committed.set()
        return out


_DELAY = re.compile(r"([ ,])delay_s=([^ ,]+)( -?\d+)$")


def _retimed_point(row: tuple, off: int) -> tuple:
    """An outbox_held row as an outbox row (measurement, priority, ts_ms, line, essential), moved by
    `off` µs: the line's timestamp (the last token) when the point's time was the gateway's, and a
    patrol point's delay_s (its last field: arrival - reader time) when only the arrival moved."""
    measurement, priority, ts_us, line, essential, shift_ts, shift_delay = row
    ms = (ts_us + off if shift_ts else ts_us) // 1000

    def fix(text: str | None) -> str | None:
        if text is None:
            return None
        text = text[:text.rindex(" ") + 1] + str(ms)
        if shift_delay:
            def delay(m: re.Match) -> str:
                us = round(float(m.group(2)) * 1_000_000) + off
                return f"{m.group(1)}delay_s={timedelta(microseconds=us).total_seconds()!r}{m.group(3)}"
            text = _DELAY.sub(delay, text)
        return text
    return measurement, priority, ms, fix(line), fix(essential)
