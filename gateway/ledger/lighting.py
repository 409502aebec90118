"""What public lighting (gateway/lighting/) keeps in the ledger: the overrides people set from
the console and the commands sent, read back after a restart. Mixed into Ledger; its commands
are written with the other field events of a commit (writer.py, _insert_field_events)."""

from __future__ import annotations

from .schema import transaction


class LightingRecords:
    """Ledger methods of public lighting (uses the Ledger's connection)."""

    def add_lighting_override(self, circuit: str, on: bool, until_us: int, by: str, role: str, reason: str,
                              created_us: int) -> int:
        """A person's override; it replaces any still active for the circuit."""
        with transaction(self._db) as db:
            db.execute("UPDATE lighting_overrides SET cancelled_us = ?, cancelled_by = ? WHERE circuit = ? AND "
                       "cancelled_us IS NULL AND until_us > ?", (created_us, by, circuit, created_us))
            cur = db.execute("INSERT INTO lighting_overrides (circuit, state, until_us, by, role, reason, created_us) "
                             "VALUES (?,?,?,?,?,?,?)", (circuit, int(on), until_us, by, role, reason, created_us))
        return cur.lastrowid

    def cancel_lighting_override(self, circuit: str, by: str, at_us: int) -> int:
        cur = self._db.execute("UPDATE lighting_overrides SET cancelled_us = ?, cancelled_by = ? WHERE circuit = ? "
                               "AND cancelled_us IS NULL AND until_us > ?", (at_us, by, circuit, at_us))
        return cur.rowcount

    def active_lighting_overrides(self, now_us: int) -> list[dict]:
        """The newest active override of each circuit."""
        rows = self._db.execute("SELECT id, circuit, state, until_us, by, role, reason, created_us FROM "
                                "lighting_overrides WHERE cancelled_us IS NULL AND until_us > ? ORDER BY id",
                                (now_us,)).fetchall()
        keys = ("id", "circuit", "on", "until_us", "by", "role", "reason", "created_us")
        return list({r[1]: {**dict(zip(keys, r)), "on": bool(r[2])} for r in rows}.values())

    def lighting_commands(self, circuit: str | None = None, since_us: int = 0, limit: int = 1000) -> list[dict]:
        sql = ("SELECT ts_us, circuit, state, source, by, reason, result, detail, latency_s FROM lighting_commands "
               "WHERE ts_us >= ?")
        args: tuple = (since_us,)
        if circuit is not None:
            sql += " AND circuit = ?"
            args += (circuit,)
        keys = ("ts_us", "circuit", "on", "source", "by", "reason", "result", "detail", "latency_s")
        return [dict(zip(keys, r)) for r in self._db.execute(sql + " ORDER BY id DESC LIMIT ?", args + (limit,))]

    def last_lighting_switch(self) -> dict[str, tuple[int, bool]]:
        """circuit -> (time, state) of its last confirmed switching: the contactor's minimum
        times hold across a restart."""
        rows = self._db.execute("SELECT circuit, max(ts_us), state FROM lighting_commands WHERE result = 'confirmed' "
                                "GROUP BY circuit").fetchall()
        return {c: (ts, bool(s)) for c, ts, s in rows}
