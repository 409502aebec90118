"""Allocation runs in the ledger (gateway/billing/runs.py): a run with its household charges,
its kept InfluxDB points and result, its sign-off, and which run is the month's answer in
InfluxDB. `AllocationRuns` is a part of `Ledger` (gateway/ledger/writer.py)."""

from __future__ import annotations

import sqlite3
import zlib
from typing import Iterable, Iterator

from .schema import INSERT_OUTBOX, LedgerError, last_reading as _last_reading, transaction

POINTS_CHUNK = 20_000      # lines per compressed chunk of a run's kept points
RUN_COLS = ("id", "month", "created_us", "by", "invoice", "bill_from", "bill_until", "bill", "metered_cost",
            "recovered", "households", "quality", "out_dir", "summary", "superseded_by", "published")


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk: list = []
    for x in items:
        chunk.append(x)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def allocation_runs(db: sqlite3.Connection, month: str | None = None, run: int | None = None) -> list[dict]:
    """Allocation runs, oldest first, as dicts of RUN_COLS plus `signoffs` {role: (by, at_us)};
    of one month or one run if given. Takes any connection, so the console can read them through
    its read-only one."""
    sql = f"SELECT {', '.join(RUN_COLS)} FROM allocations"
    where, args = [], []
    if month is not None:
        where.append("month = ?")
        args.append(month)
    if run is not None:
        where.append("id = ?")
        args.append(run)
    if where:
        sql += " WHERE " + " AND ".join(where)
    runs = [dict(zip(RUN_COLS, r)) for r in db.execute(sql + " ORDER BY month, id", args)]
    signed: dict[int, dict] = {}
    ids = [r["id"] for r in runs]
    for i in range(0, len(ids), 500):
        part = ids[i:i + 500]
        for rid, role, by, at in db.execute(f"SELECT run, role, by, at_us FROM allocation_signoffs WHERE run IN "
                                            f"({','.join('?' * len(part))})", part):
            signed.setdefault(rid, {})[role] = (by, at)
    for r in runs:
        r["signoffs"] = signed.get(r["id"], {})
    return runs


class AllocationRuns:
    """The allocation part of `Ledger`: its `_db`, outbox counts (`_o_depth`, `_o_bytes`,
    `_confirmed_o`) and `committed` event are the ledger's."""

    def save_allocation(self, month: str, created_us: int, bill: str | None, metered_cost: str, recovered: str,
                        quality: int, out_dir: str, summary: str, charges: list[tuple[str, str, str]],
                        outbox: Iterable[tuple] = (), *, by: str = "", invoice: str | None = None,
                        bill_period: tuple[str, str] | None = None, result: str | None = None,
                        points: Iterable[tuple] = (), queue: bool = False) -> tuple[int, int]:
        """One allocation run with its household charges (household, group, amount), atomically.
        `outbox` rows (measurement, priority, ts_ms, line, essential) are queued at once; `points`
        (outbox rows too) are kept with the run (their lines), for `publish_allocation` to queue
        when the run becomes the month's answer, and with `queue` also queued now, as the run's own
        (a run that is the answer the moment it is made: one pass instead of two). `result` (JSON)
        is kept to print the run again. Returns the run's id and the number of points queued."""
        counted = [0, 0]
        queued: list[tuple] = []

        def count(rows):
            for r in rows:
                counted[0] += 1
                counted[1] += len(r[3])
                yield r

        def kept(rows):
            # a chunk's rows are queued as the chunk is kept: the month is never all in memory
            for i, chunk in enumerate(_chunks(rows, POINTS_CHUNK)):
                if queue:
                    queued.extend(chunk)
                yield run, i, zlib.compress("\n".join(r[3] for r in chunk).encode(), 1)

        with transaction(self._db, "IMMEDIATE") as db:
            cur = db.execute("INSERT INTO allocations (month, created_us, bill, metered_cost, recovered, households, "
                             "quality, out_dir, summary, by, invoice, bill_from, bill_until) "
                             "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             (month, created_us, bill, metered_cost, recovered,
                              len({h for h, _, _ in charges}), quality, out_dir, summary, by, invoice,
                              *(bill_period or (None, None))))
            run = cur.lastrowid
            db.executemany("INSERT INTO allocation_charges (allocation, household, grp, amount) VALUES (?,?,?,?)",
                           [(run, h, g, a) for h, g, a in charges])
            last = _last_reading(db)
            first = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0] + 1
            for row in kept(points):
                db.execute("INSERT INTO allocation_points (run, chunk, lines) VALUES (?,?,?)", row)
                if queued:
                    db.executemany(INSERT_OUTBOX, ((*r, last) for r in count(queued)))
                    queued.clear()
            if counted[0]:
                top = db.execute("SELECT max(id) FROM outbox").fetchone()[0]
                db.execute("INSERT INTO allocation_outbox (run, first_id, last_id, zeros) VALUES (?,?,?,0)",
                           (run, first, top))
            if result is not None:
                db.execute("INSERT INTO allocation_results (run, data) VALUES (?,?)",
                           (run, zlib.compress(result.encode(), 6)))
            db.executemany(INSERT_OUTBOX, ((*r, last) for r in count(outbox)))
        self._o_depth += counted[0]
        self._o_bytes += counted[1]
        if counted[0]:
            self.committed.set()
        return run, counted[0]

    def allocations(self) -> list[tuple]:
        return self._db.execute("SELECT id, month, created_us, bill, metered_cost, recovered, households, quality, "
                                "out_dir FROM allocations ORDER BY month DESC, id DESC").fetchall()

    def allocation_runs(self, month: str | None = None, run: int | None = None) -> list[dict]:
        return allocation_runs(self._db, month, run)

    def allocation_charges(self, run: int) -> list[tuple[str, str, str]]:
        """(household, group, amount as exact text) of one run."""
        return self._db.execute("SELECT household, grp, amount FROM allocation_charges WHERE allocation = ? "
                                "ORDER BY household, grp", (run,)).fetchall()

    def allocation_result(self, run: int) -> str | None:
        row = self._db.execute("SELECT data FROM allocation_results WHERE run = ?", (run,)).fetchone()
        return zlib.decompress(row[0]).decode() if row else None

    def allocation_point_lines(self, run: int) -> Iterator[str]:
        """The points kept with a run, in the order they were made (empty once they are dropped)."""
        chunks = [c for (c,) in self._db.execute("SELECT chunk FROM allocation_points WHERE run = ? ORDER BY chunk",
                                                 (run,))]
        for c in chunks:
            row = self._db.execute("SELECT lines FROM allocation_points WHERE run = ? AND chunk = ?",
                                   (run, c)).fetchone()
            if row:
                yield from zlib.decompress(row[0]).decode().split("\n")

    def has_allocation_points(self, run: int) -> bool:
        return self._db.execute("SELECT 1 FROM allocation_points WHERE run = ? LIMIT 1", (run,)).fetchone() is not None

    def sign_allocation(self, run: int, role: str, by: str, at_us: int, supersede: Iterable[int] = ()) -> None:
        """Record a sign-off (reviewed | approved) of a run, and mark `supersede` (older runs of its
        month) as superseded by it, in one transaction."""
        try:
            with transaction(self._db, "IMMEDIATE") as db:
                db.execute("INSERT INTO allocation_signoffs (run, role, by, at_us) VALUES (?,?,?,?)",
                           (run, role, by, at_us))
                for old in supersede:
                    db.execute("UPDATE allocations SET superseded_by = ? WHERE id = ? AND superseded_by IS NULL",
                               (run, old))
        except sqlite3.IntegrityError:
            raise LedgerError(f"allocation run {run} is already {role}") from None

    def drop_superseded_points(self, month: str) -> None:
        """Forget the kept points of the month's superseded runs (none of them becomes the answer
        again); call it once the answer is published, which reads the previous answer's series."""
        with transaction(self._db) as db:
            db.execute("DELETE FROM allocation_points WHERE run IN (SELECT id FROM allocations WHERE month = ? AND "
                       "superseded_by IS NOT NULL AND published = 0)", (month,))

    def publish_allocation(self, month: str, run: int, rows: Iterable[tuple], zeros: Iterable[tuple] = (),
                           replace: bool = True, keep_own: bool = False) -> dict[str, int]:
        """Make `run` the month's answer in InfluxDB, in one transaction: the month's points still
        waiting in the outbox (of any run: the run's own are queued again in full) are taken out,
        `rows` (the run's points) and `zeros` (an earlier answer's series this run does not have,
        set to zero) are queued, and the run is marked published. Zeros queued earlier stay: they
        clear series no run has any more. With keep_own the run's own points queued when it was
        saved stay; with replace=False `rows` are only added (a new state of the published run).
        Outbox rows: (measurement, priority, ts_ms, line, essential)."""
        out = {"removed": 0, "queued": 0, "zeros": 0}
        removed_bytes = added_bytes = 0
        with transaction(self._db, "IMMEDIATE") as db:
            ranges = db.execute("SELECT o.rowid, o.first_id, o.last_id FROM allocation_outbox o JOIN allocations a "
                                "ON a.id = o.run WHERE a.month = ? AND o.zeros = 0 AND o.run != ?",
                                (month, run if keep_own else -1)).fetchall() if replace else []
            confirmed = set(self._confirmed_o)    # already taken off the counts (outbox_forget)
            for rowid, first, last in ranges:
                n = size = 0
                for rid, length in db.execute("SELECT id, length(line) FROM outbox WHERE id BETWEEN ? AND ?",
                                              (first, last)):
                    if rid not in confirmed:
                        n += 1
                        size += length
                db.execute("DELETE FROM outbox WHERE id BETWEEN ? AND ?", (first, last))
                db.execute("DELETE FROM allocation_outbox WHERE rowid = ?", (rowid,))
                out["removed"] += n
                removed_bytes += size
            reading = _last_reading(db)
            for key, batch, zero in (("queued", rows, 0), ("zeros", zeros, 1)):
                before = db.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()[0]
                sizes = [0, 0]

                def count(rows):
                    for r in rows:
                        sizes[0] += 1
                        sizes[1] += len(r[3])
                        yield r
                db.executemany(INSERT_OUTBOX, ((*r, reading) for r in count(batch)))
                if sizes[0]:
                    after = db.execute("SELECT max(id) FROM outbox").fetchone()[0]
                    db.execute("INSERT INTO allocation_outbox (run, first_id, last_id, zeros) VALUES (?,?,?,?)",
                               (run, before + 1, after, zero))
                out[key] = sizes[0]
                added_bytes += sizes[1]
            if replace:
                db.execute("UPDATE allocations SET published = (id = ?) WHERE month = ?", (run, month))
        self._o_depth += out["queued"] + out["zeros"] - out["removed"]
        self._o_bytes += added_bytes - removed_bytes
        if out["queued"] or out["zeros"]:
            self.committed.set()
        return out
