"""The ledger's read model: what people and programs read, as typed values or plain rows.

`read_status` is the one status figure set (buses, meters online/offline and why, the outbox,
the last write to InfluxDB, the clock, the disk). `gateway status`, the console's health page,
`/metrics` and the demo's summary all show what it returns, so they cannot disagree. A running
gateway adds what only it knows: its poll counters per bus (`BusCounters`).

Every function takes any connection to the ledger (the ledger's own, a worker's, a read-only
one of `gateway status` or the console: WAL lets a reader in while `gateway run` writes) and
changes nothing (`request_ack` excepted: it asks the running gateway for something).

Readings are appended to `reading_log` in the order they arrive; a worker
(gateway/ledger/indexer.py) moves them in batches into `readings_by_meter` (hour, meter, time,
id: one meter's readings of an hour are one range of it) and their energy counters into
`energy`, and notes in `meta` how far it got (`indexed`: every reading up to that id is in
both). The rows after that mark are the tail: at most about a batch interval of readings (an
hour: 17,520 for the reference site). Every query here reads the per-meter form and the tail
together, so what it answers does not depend on when the worker last ran; a reading the worker
moved while the query looked is seen once (by id, and `energy` keeps one counter per meter and
instant whichever way it came).

Row formats (`reading_log.counters` tells them apart): a BLOB is the compact form
(gateway/ledger/codec.py; the energy counter in `kwh`); TEXT is a reading of schema 8 or older,
kept as it was written (values float64 little-endian, counters JSON).
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from ..clock import signed_duration, when_text
from ..config import SiteConfig
from .codec import decode_counters, decode_vals

ENERGY_FIELD = "energy_kwh"
LOG_COLS = "id, meter, ts_us, field_set, vals, kwh, counters, episode"
SLOT_US = 3_600_000_000                 # readings_by_meter.slot: the hour of a reading
SLOT_SQL = f"ts_us / {SLOT_US}"


def slot(ts_us: int) -> int:
    """The hour of a time, as SQLite's integer division gives it (towards zero)."""
    return ts_us // SLOT_US if ts_us >= 0 else -((-ts_us) // SLOT_US)


def slots(lo_us: int, hi_us: int) -> str:
    """The hours of [lo_us, hi_us] as a JSON list (for `slot IN (SELECT value FROM json_each(?))`)."""
    return json.dumps(list(range(slot(lo_us), slot(hi_us) + 1)))


def _slot_range(db: sqlite3.Connection) -> tuple[int, int] | None:
    lo = db.execute("SELECT min(slot) FROM readings_by_meter").fetchone()[0]
    return None if lo is None else (lo, db.execute("SELECT max(slot) FROM readings_by_meter").fetchone()[0])


def _back(db: sqlite3.Connection, sql: str, args: dict, before_us: int | None, bounds=None):
    """The first row `sql` finds (it takes :slot) in the hours before `before_us` (None: all),
    newest hour first."""
    bounds = bounds or _slot_range(db)
    if bounds is None:
        return None
    top = bounds[1] if before_us is None else min(bounds[1], slot(before_us))
    for s in range(top, bounds[0] - 1, -1):
        row = db.execute(sql, {**args, "slot": s}).fetchone()
        if row is not None:
            return row
    return None


# ---- one row --------------------------------------------------------------------------------------

class Names:
    """Field-set names and meter names of one connection, looked up again when one is new."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db
        self.sets: dict[int, tuple[str, ...]] = {}
        self.meters: dict[str, int] = {}
        self.meter_names: dict[int, str] = {}
        self.frozen = False            # inside an SQL function: no queries on the connection

    def fields(self, set_id: int) -> tuple[str, ...]:
        names = self.sets.get(set_id)
        if names is None and not self.frozen:
            self.sets = {i: tuple(n.split(",")) if n else () for i, n in
                         self.db.execute("SELECT id, names FROM field_sets")}
            self.sets[0] = ()
            names = self.sets.get(set_id)
        return names or ()

    def meter_id(self, name: str) -> int | None:
        found = self.meters.get(name)
        if found is None:
            self._load_meters()
            found = self.meters.get(name)
        return found

    def meter_name(self, mid: int) -> str:
        found = self.meter_names.get(mid)
        if found is None:
            self._load_meters()
            found = self.meter_names.get(mid, f"?{mid}")
        return found

    def _load_meters(self) -> None:
        self.meters = dict(self.db.execute("SELECT name, id FROM meters"))
        self.meter_names = {i: n for n, i in self.meters.items()}


def values_of(names: Names, fset: int, vals: bytes, counters) -> dict[str, float]:
    fields = names.fields(fset)
    if isinstance(counters, str):
        return dict(zip(fields, struct.unpack(f"<{len(fields)}d", vals)))
    return dict(zip(fields, decode_vals(vals)))


def counters_of(names: Names, kwh: str | None, counters) -> dict[str, Decimal]:
    """A row's counters as exact decimals; raises ValueError when a schema-8 row's JSON is damaged."""
    if isinstance(counters, str):
        return {k: Decimal(v) for k, v in json.loads(counters).items()}
    set_id, vals = decode_counters(counters)
    out: dict[str, Decimal] = {}
    it = iter(vals)
    for name in names.fields(set_id):
        if name == ENERGY_FIELD:
            if kwh is not None:
                out[name] = Decimal(kwh)
        else:
            out[name] = next(it)
    return out


def counter_texts(names: Names, kwh: str | None, counters) -> dict[str, object]:
    """The counters as stored (exact text), {} for a damaged schema-8 row."""
    if isinstance(counters, str):
        try:
            found = json.loads(counters)
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}
    return {k: str(v) for k, v in counters_of(names, kwh, counters).items()}


def counter_value(names: Names, kwh: str | None, counters, field: str):
    """(counter `field` as stored or None, damaged): what json_extract gave on schema 8."""
    if isinstance(counters, str):
        try:
            found = json.loads(counters)
        except ValueError:
            return None, True
        v = found.get(field) if isinstance(found, dict) else None
        return (json.dumps(v) if isinstance(v, (dict, list)) else v), False
    if field == ENERGY_FIELD:
        return kwh, False
    set_id, vals = decode_counters(counters)
    it = iter(vals)
    for name in names.fields(set_id):
        if name == ENERGY_FIELD:
            continue
        v = next(it)
        if name == field:
            return str(v), False
    return None, False


# ---- the tail ---------------------------------------------------------------------------------------

def has_log(db: sqlite3.Connection) -> bool:
    """The ledger has the appended log (a ledger of schema 8 not opened by this gateway yet has not)."""
    return db.execute("SELECT 1 FROM sqlite_master WHERE name = 'reading_log'").fetchone() is not None


def indexed(db: sqlite3.Connection) -> int:
    """Every reading with an id up to this is in readings_by_meter and (its counter) in energy."""
    row = db.execute("SELECT value FROM meta WHERE key = 'indexed'").fetchone()
    return int(row[0]) if row else 0


def tail(db: sqlite3.Connection, mark: int, meter_ids: Iterable[int] | None = None) -> list[tuple]:
    """Rows after `mark` (LOG_COLS), in id order; of these meters only, if given."""
    if meter_ids is None:
        return db.execute(f"SELECT {LOG_COLS} FROM reading_log WHERE id > ? ORDER BY id", (mark,)).fetchall()
    ids = list(meter_ids)
    if not ids:
        return []
    return db.execute(f"SELECT {LOG_COLS} FROM reading_log WHERE id > ? AND meter IN "
                      f"(SELECT value FROM json_each(?)) ORDER BY id", (mark, json.dumps(ids))).fetchall()


def _by_meter(rows: list[tuple]) -> dict[int, list[tuple]]:
    out: dict[int, list[tuple]] = {}
    for r in rows:
        out.setdefault(r[1], []).append(r)
    return out


# ---- all readings -----------------------------------------------------------------------------------

def count_readings(db: sqlite3.Connection, meter: str | None = None) -> int:
    if meter is None:
        return db.execute("SELECT count(*) FROM reading_log").fetchone()[0]
    mid = Names(db).meter_id(meter)
    if mid is None:
        return 0
    mark = indexed(db)
    n = 0
    bounds = _slot_range(db)
    if bounds is not None:
        n = db.execute("SELECT count(*) FROM readings_by_meter WHERE slot IN (SELECT value FROM json_each(?)) "
                       "AND meter = ? AND id <= ?", (json.dumps(list(range(bounds[0], bounds[1] + 1))), mid, mark)
                       ).fetchone()[0]
    return n + db.execute("SELECT count(*) FROM reading_log WHERE id > ? AND meter = ?", (mark, mid)).fetchone()[0]


def all_rows(db: sqlite3.Connection, meter: str | None = None) -> Iterator[tuple]:
    """(id, meter name, ts_us, values, counters) of every reading (of one meter) in id order."""
    names = Names(db)
    sql, args = f"SELECT {LOG_COLS} FROM reading_log", ()
    if meter is not None:
        mid = names.meter_id(meter)
        if mid is None:
            return
        sql, args = sql + " WHERE meter = ?", (mid,)
    for rid, mid, ts, fset, vals, kwh, counters, _ in db.execute(sql + " ORDER BY id", args):
        yield (rid, names.meter_name(mid), ts, values_of(names, fset, vals, counters),
               counters_of(names, kwh, counters))


def has_readings(db: sqlite3.Connection, meter: str, start_us: int, end_us: int) -> bool:
    """Any reading of `meter` in [start_us, end_us]."""
    mid = Names(db).meter_id(meter)
    if mid is None:
        return False
    if db.execute("SELECT 1 FROM readings_by_meter WHERE slot IN (SELECT value FROM json_each(?)) AND meter = ? "
                  "AND ts_us BETWEEN ? AND ? LIMIT 1", (slots(start_us, end_us), mid, start_us, end_us)).fetchone():
        return True
    return db.execute("SELECT 1 FROM reading_log WHERE id > ? AND meter = ? AND ts_us BETWEEN ? AND ? LIMIT 1",
                      (indexed(db), mid, start_us, end_us)).fetchone() is not None


# ---- one meter's readings (the console) ------------------------------------------------------------------

def last_reading(db: sqlite3.Connection, meter: str, names: Names | None = None,
                 tail_rows: dict[int, list[tuple]] | None = None) -> dict | None:
    """The meter's newest reading by time: {"ts_us", "values", "counters" (exact text)}.
    `tail_rows` (rows after the mark by meter id) may be given when asking for many meters."""
    names = names or Names(db)
    mid = names.meter_id(meter)
    if mid is None:
        return None
    if tail_rows is None:
        tail_rows = _by_meter(tail(db, indexed(db), [mid]))
    best = None
    for r in tail_rows.get(mid, ()):
        if best is None or r[2] >= best[2]:
            best = r
    hit = _back(db, "SELECT ts_us, id FROM readings_by_meter WHERE slot = :slot AND meter = :m "
                    "ORDER BY ts_us DESC, id DESC LIMIT 1", {"m": mid}, None)
    if hit is not None and (best is None or (hit[0], hit[1]) > (best[2], best[0])):
        best = db.execute(f"SELECT {LOG_COLS} FROM reading_log WHERE id = ?", (hit[1],)).fetchone() or best
    if best is None:
        return None
    rid, _, ts, fset, vals, kwh, counters, _ = best
    return {"ts_us": ts, "values": values_of(names, fset, vals, counters),
            "counters": counter_texts(names, kwh, counters)}


def last_readings(db: sqlite3.Connection, meters: list[str]) -> dict[str, dict | None]:
    names = Names(db)
    ids = [i for i in (names.meter_id(m) for m in meters) if i is not None]
    rows = _by_meter(tail(db, indexed(db), ids))
    return {m: last_reading(db, m, names, rows) for m in meters}


def meter_rows(db: sqlite3.Connection, meter: str, start_us: int, end_us: int) -> list[tuple[int, dict]]:
    """(ts_us, values) of the meter's readings in [start_us, end_us), in time order."""
    names = Names(db)
    mid = names.meter_id(meter)
    if mid is None:
        return []
    mark = indexed(db)
    rows = {r[0]: r for r in db.execute(
        f"SELECT {', '.join('l.' + c for c in LOG_COLS.split(', '))} FROM readings_by_meter b "
        "JOIN reading_log l ON l.id = b.id WHERE b.slot IN (SELECT value FROM json_each(?)) AND b.meter = ? "
        "AND b.ts_us >= ? AND b.ts_us < ?", (slots(start_us, end_us), mid, start_us, end_us))}
    for r in tail(db, mark, [mid]):
        if start_us <= r[2] < end_us:
            rows[r[0]] = r
    out = sorted(rows.values(), key=lambda r: (r[2], r[0]))
    return [(r[2], values_of(names, r[3], r[4], r[6])) for r in out]


def last_reading_times(db: sqlite3.Connection) -> dict[str, int]:
    """meter -> the time of its newest reading."""
    names = Names(db)
    names._load_meters()
    out: dict[int, int] = {}
    bounds = _slot_range(db)
    for mid in names.meter_names:
        t = _back(db, "SELECT max(ts_us) FROM readings_by_meter WHERE slot = :slot AND meter = :m HAVING count(*)",
                  {"m": mid}, None, bounds) if bounds else None
        if t is not None:
            out[mid] = t[0]
    for mid, t in db.execute("SELECT meter, max(ts_us) FROM reading_log WHERE id > ? GROUP BY meter",
                             (indexed(db),)):
        out[mid] = max(out.get(mid, t), t)
    return {names.meter_name(m): t for m, t in out.items()}


# ---- energy counters (billing, compaction, the console's daily kWh) ---------------------------------------

_tails: dict[int, tuple[tuple, dict[str, list[tuple[int, str]]]]] = {}


def _tail_energy(db: sqlite3.Connection, meter: str, lo: int, hi: int) -> list[tuple[int, str]]:
    """(ts_us, kwh) of the tail's trusted readings of `meter` with lo <= ts <= hi, in id order.
    The tail is read once for all meters and kept while nothing changed (billing asks for each
    meter in turn)."""
    key = (db.execute("PRAGMA database_list").fetchone()[2], indexed(db),
           db.execute("SELECT max(id) FROM reading_log").fetchone()[0], db.total_changes,
           db.execute("PRAGMA data_version").fetchone()[0])
    cached = _tails.get(id(db))
    if cached is None or cached[0] != key:
        names = Names(db)
        by: dict[str, list[tuple[int, str]]] = {}
        for mid, ts, kwh in db.execute("SELECT meter, ts_us, kwh FROM reading_log WHERE id > ? AND kwh IS NOT NULL "
                                       "AND episode IS NULL ORDER BY id", (key[1],)):
            by.setdefault(names.meter_name(mid), []).append((ts, kwh))
        if len(_tails) > 64:
            _tails.clear()
        cached = _tails[id(db)] = (key, by)
    return [(ts, kwh) for ts, kwh in cached[1].get(meter, ()) if lo <= ts <= hi]


def _higher(old: str, new: str) -> bool:
    """What `energy` does with two counters of one meter at one instant: the higher stands
    (compared as SQLite's CAST AS REAL does), the first of two equal ones."""
    try:
        return float(new) > float(old)
    except ValueError:
        return False


def _merged(rows: list[tuple[int, str]], extra: list[tuple[int, str]]) -> dict[int, str]:
    out = dict(rows)
    for ts, kwh in extra:
        old = out.get(ts)
        if old is None or _higher(old, kwh):
            out[ts] = kwh
    return out


def energy_series(db: sqlite3.Connection, meter: str, start_us: int, end_us: int) -> list[tuple[int, str]]:
    """(ts_us, exact counter text) of one meter in [start_us, end_us], in time order."""
    rows = db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us BETWEEN ? AND ? ORDER BY ts_us",
                      (meter, start_us, end_us)).fetchall()
    extra = _tail_energy(db, meter, start_us, end_us)
    if not extra:
        return rows
    return sorted(_merged(rows, extra).items())


def energy_before(db: sqlite3.Connection, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
    """The last counter before `ts_us` but not before `limit_us`."""
    row = db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us < ? AND ts_us >= ? "
                     "ORDER BY ts_us DESC LIMIT 1", (meter, ts_us, limit_us)).fetchone()
    extra = _tail_energy(db, meter, limit_us, ts_us - 1)
    if not extra:
        return row
    merged = _merged([row] if row else [], extra)
    t = max(merged)
    return t, merged[t]


def energy_after(db: sqlite3.Connection, meter: str, ts_us: int, limit_us: int) -> tuple[int, str] | None:
    """The first counter after `ts_us` but not after `limit_us`."""
    row = db.execute("SELECT ts_us, kwh FROM energy WHERE meter = ? AND ts_us > ? AND ts_us <= ? "
                     "ORDER BY ts_us LIMIT 1", (meter, ts_us, limit_us)).fetchone()
    extra = _tail_energy(db, meter, ts_us + 1, limit_us)
    if not extra:
        return row
    merged = _merged([row] if row else [], extra)
    t = min(merged)
    return t, merged[t]


# ---- counters around instants (rules restore) ------------------------------------------------------------

def _register(db: sqlite3.Connection, names: Names) -> None:
    names.fields(-1)               # all of them, now: the functions below run inside a query
    names.frozen = True

    def counter(kwh, counters, field):
        if counters is None:
            return None
        v, _ = counter_value(names, kwh, counters, field)
        return v if v is None or isinstance(v, (str, int, float)) else str(v)

    def damaged(counters):
        if not isinstance(counters, str):
            return 0
        try:
            json.loads(counters)
        except ValueError:
            return 1
        return 0
    db.create_function("ledger_counter", 3, counter, deterministic=True)
    db.create_function("ledger_damaged", 1, damaged, deterministic=True)


def _nearest(rows: list[tuple], t: int, before: bool, lo: int, hi: int, field: str | None,
             names: Names) -> tuple | None:
    """Among tail rows (LOG_COLS) of one meter in [lo, hi], the last before t (or the first at or
    after t), of trusted time with the counter `field` if given; by (time, id) as an index is."""
    best = None
    for r in rows:
        ts = r[2]
        if not lo <= ts <= hi or (ts >= t if before else ts < t):
            continue
        if field is not None and (r[7] is not None or counter_value(names, r[5], r[6], field)[0] is None):
            continue
        key = (ts, r[0])
        if best is None or (key > best[0] if before else key < best[0]):
            best = (key, r)
    return best[1] if best else None


def last_counters(db: sqlite3.Connection, meters: list[str], field: str,
                  before_us: int) -> list[tuple[str, int, object, int]]:
    """Per meter, its last reading before `before_us` (of trusted time) that has the counter
    `field`: (meter, ts_us, counter as stored, damaged) where damaged is 1 when newer readings
    were passed over because their counters were not valid JSON."""
    names = Names(db)
    _register(db, names)
    mark = indexed(db)
    ids = {m: names.meter_id(m) for m in meters}
    rows = _by_meter(tail(db, mark, [i for i in ids.values() if i is not None]))
    cols = ", ".join("r." + c for c in LOG_COLS.split(", "))
    bounds = _slot_range(db)
    out = []
    for meter in meters:
        mid = ids[meter]
        if mid is None:
            continue
        own = rows.get(mid, [])
        hit = _back(db, f"SELECT {cols} FROM readings_by_meter b JOIN reading_log r ON r.id = b.id "
                        "WHERE b.slot = :slot AND b.meter = :m AND b.ts_us < :before AND r.episode IS NULL "
                        "AND ledger_counter(r.kwh, r.counters, :field) IS NOT NULL ORDER BY b.ts_us DESC, b.id DESC "
                        "LIMIT 1", {"m": mid, "before": before_us, "field": field}, before_us, bounds)
        t = _nearest(own, before_us, True, -2**63, before_us, field, names)
        if t is not None and (hit is None or (t[2], t[0]) > (hit[2], hit[0])):
            hit = t
        if hit is None:
            continue
        newest = _back(db, f"SELECT {cols} FROM readings_by_meter b JOIN reading_log r ON r.id = b.id "
                           "WHERE b.slot = :slot AND b.meter = :m AND b.ts_us < :before "
                           "ORDER BY b.ts_us DESC, b.id DESC LIMIT 1", {"m": mid, "before": before_us}, before_us,
                           bounds)
        t = _nearest(own, before_us, True, -2**63, before_us, None, names)
        if t is not None and (newest is None or (t[2], t[0]) > (newest[2], newest[0])):
            newest = t
        bad = int(newest is not None and counter_value(names, newest[5], newest[6], field)[1])
        out.append((meter, hit[2], counter_value(names, hit[5], hit[6], field)[0], bad))
    return out


def counters_around(db: sqlite3.Connection, meters: list[str], field: str, times_us: list[int], max_gap_us: int,
                    before_us: int) -> list[tuple]:
    """The counter `field` either side of each instant, per meter: the last reading before t
    (not more than max_gap_us before) and the first at or after t (not more than max_gap_us
    after, and before `before_us`), of trusted time. Rows (meter, t_us, before_ts_us,
    before_counter, after_ts_us, after_counter, damaged), None where there is no such reading;
    damaged counts the nearest readings passed over because their counters were not valid JSON.
    Index probes only, and the tail."""
    names = Names(db)
    _register(db, names)
    mark = indexed(db)
    cols = ", ".join("r." + c for c in LOG_COLS.split(", "))
    ok = "r.episode IS NULL AND ledger_counter(r.kwh, r.counters, :field) IS NOT NULL"
    at = ("FROM readings_by_meter b JOIN reading_log r ON r.id = b.id WHERE b.slot IN "
          "(SELECT value FROM json_each(:slots)) AND b.meter = :m")
    probes = {
        "b": f"SELECT {cols} {at} AND b.ts_us < :t AND b.ts_us >= :t - :gap AND {ok} "
             "ORDER BY b.ts_us DESC, b.id DESC LIMIT 1",
        "a": f"SELECT {cols} {at} AND b.ts_us >= :t AND b.ts_us <= :t + :gap AND b.ts_us < :before AND {ok} "
             "ORDER BY b.ts_us, b.id LIMIT 1",
        "nb": f"SELECT {cols} {at} AND b.ts_us < :t AND b.ts_us >= :t - :gap ORDER BY b.ts_us DESC, b.id DESC LIMIT 1",
        "na": f"SELECT {cols} {at} AND b.ts_us >= :t AND b.ts_us <= :t + :gap AND b.ts_us < :before "
              "ORDER BY b.ts_us, b.id LIMIT 1",
    }
    ids = {m: names.meter_id(m) for m in meters}
    rows = _by_meter(tail(db, mark, [i for i in ids.values() if i is not None]))
    out = []
    for meter in meters:
        mid = ids[meter]
        own = rows.get(mid, []) if mid is not None else []
        for t in times_us:
            found = {}
            for key, sql in probes.items():
                before = key in ("b", "nb")
                hit = None
                lo, hi = (t - max_gap_us, t - 1) if before else (t, min(t + max_gap_us, before_us - 1))
                if mid is not None and lo <= hi:
                    hit = db.execute(sql, {"m": mid, "t": t, "gap": max_gap_us, "before": before_us, "field": field,
                                           "slots": slots(lo, hi)}).fetchone()
                tr = _nearest(own, t, before, lo, hi, field if key in ("b", "a") else None, names)
                if tr is not None and (hit is None or ((tr[2], tr[0]) > (hit[2], hit[0]) if before
                                                       else (tr[2], tr[0]) < (hit[2], hit[0]))):
                    hit = tr
                found[key] = hit
            b, a = found["b"], found["a"]
            bad = sum(int(r is not None and counter_value(names, r[5], r[6], field)[1])
                      for r in (found["nb"], found["na"]))
            out.append((meter, t,
                        b[2] if b else None, counter_value(names, b[5], b[6], field)[0] if b else None,
                        a[2] if a else None, counter_value(names, a[5], a[6], field)[0] if a else None, bad))
    return out


def activity(db: sqlite3.Connection, devices: list[str], start_us: int, end_us: int, bucket_us: int) -> set[int]:
    """The time buckets in [start_us, end_us) with a reading of one of `devices`."""
    names = Names(db)
    ids = [i for i in (names.meter_id(d) for d in devices) if i is not None]
    if not ids:
        return set()
    arg = json.dumps(ids)
    bounds = _slot_range(db)
    if bounds is None:
        out: set[int] = set()
    else:
        lo, hi = max(start_us, bounds[0] * SLOT_US), min(end_us - 1, (bounds[1] + 1) * SLOT_US - 1)
        out = {b for (b,) in db.execute(
            "SELECT DISTINCT ts_us / ? FROM readings_by_meter WHERE slot IN (SELECT value FROM json_each(?)) "
            "AND meter IN (SELECT value FROM json_each(?)) AND ts_us >= ? AND ts_us < ?",
            (bucket_us, slots(lo, hi) if lo <= hi else "[]", arg, start_us, end_us))}
    out.update(b for (b,) in db.execute(
        "SELECT DISTINCT ts_us / ? FROM reading_log WHERE id > ? AND meter IN (SELECT value FROM json_each(?)) "
        "AND ts_us >= ? AND ts_us < ?", (bucket_us, indexed(db), arg, start_us, end_us)))
    return out


# ---- the outbox (gateway status, the console without a running gateway) ----------------------------------

def outbox_summary(db: sqlite3.Connection) -> tuple[int, int, int | None]:
    """(points waiting for InfluxDB, bytes of the outbox table, the oldest waiting point's time
    in ms or None): the rows of `outbox` and the readings after the cursor (writer.py)."""
    depth, size, oldest = db.execute("SELECT count(*), coalesce(sum(length(line)), 0), min(ts_ms) FROM outbox "
                                     ).fetchone()
    index = db.execute("SELECT value FROM meta WHERE key = 'influx_index'").fetchone()
    cur = db.execute("SELECT value FROM meta WHERE key = 'outbox_cursor'").fetchone()
    if index is None or cur is None or not has_log(db):
        return depth, size, oldest
    state = json.loads(cur[0])
    c = state["c"]
    n = db.execute("SELECT count(*) FROM reading_log WHERE id > ? AND episode IS NULL", (c,)).fetchone()[0]
    for a, b in state.get("done", []):
        n -= db.execute("SELECT count(*) FROM reading_log WHERE id BETWEEN ? AND ? AND episode IS NULL",
                        (a, b)).fetchone()[0]
    if n > 0:
        first = db.execute("SELECT ts_us FROM reading_log WHERE id > ? AND episode IS NULL ORDER BY id LIMIT 1",
                           (c,)).fetchone()
        if first is not None:
            oldest = first[0] // 1000 if oldest is None else min(oldest, first[0] // 1000)
    return depth + max(0, n), size, oldest


# ---- the status read model ------------------------------------------------------------------

def connect_read_only(path: Path, timeout: float = 5.0) -> sqlite3.Connection:
    """A read-only connection to an existing ledger (the caller closes it)."""
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=timeout)


@contextmanager
def read_only(path: Path, timeout: float = 5.0) -> Iterator[sqlite3.Connection | None]:
    """A read-only connection to the ledger at `path`, or None while there is no ledger yet."""
    if not path.exists():
        yield None
        return
    db = connect_read_only(path, timeout)
    try:
        yield db
    finally:
        db.close()


@dataclass(frozen=True)
class DeviceStatus:
    """The newest online/offline decision the poller recorded for a device (meter or bus)."""
    online: bool
    ts_us: int
    reason: str | None


def device_status(db: sqlite3.Connection, device: str) -> DeviceStatus | None:
    """The newest online/offline decision about one device (a seek in its index, not a scan)."""
    row = db.execute("SELECT online, ts_us, reason FROM device_status WHERE device = ? "
                     "ORDER BY ts_us DESC, id DESC LIMIT 1", (device,)).fetchone()
    return DeviceStatus(bool(row[0]), row[1], row[2]) if row else None


def last_reading_us(db: sqlite3.Connection, meter: str) -> int | None:
    """The time of the meter's newest reading: the newest hour of it in readings_by_meter and
    its rows in the tail (index seeks, whatever the ledger's size)."""
    if not has_log(db):                  # a schema-8 ledger no gateway of this version opened yet
        return db.execute("SELECT max(ts_us) FROM readings WHERE meter = ?", (meter,)).fetchone()[0]
    mid = Names(db).meter_id(meter)
    if mid is None:
        return None
    hit = _back(db, "SELECT max(ts_us) FROM readings_by_meter WHERE slot = :slot AND meter = :m HAVING count(*)",
                {"m": mid}, None)
    t = db.execute("SELECT max(ts_us) FROM reading_log WHERE id > ? AND meter = ?", (indexed(db), mid)).fetchone()[0]
    found = [x for x in (hit[0] if hit else None, t) if x is not None]
    return max(found) if found else None


def meter_state(last_reading_us: int | None, status: DeviceStatus | None) -> str:
    """online | offline | never (no reading and never reported online)."""
    if status is not None and not status.online and (last_reading_us is None or last_reading_us <= status.ts_us):
        return "offline"                  # the poller gave up on it and it has not answered since
    if last_reading_us is not None or (status is not None and status.online):
        return "online"
    return "never"


@dataclass(frozen=True)
class MeterStatus:
    id: str
    state: str                            # online | offline | never
    last_reading_us: int | None
    offline_since_us: int | None = None
    reason: str | None = None


@dataclass(frozen=True)
class BusCounters:
    """What only the running gateway knows about a bus: its poll counters since it started."""
    polls: int
    ok: int
    failures: int
    busy_s: float


@dataclass(frozen=True)
class BusStatus:
    id: str
    type: str
    where: str | None
    connected: bool | None                # the bus's own newest status; None: never reported
    meters: tuple[MeterStatus, ...]
    counters: BusCounters | None = None   # None outside the gateway process

    def count(self, state: str) -> int:
        return sum(1 for m in self.meters if m.state == state)

    @property
    def last_reading_us(self) -> int | None:
        return max((m.last_reading_us for m in self.meters if m.last_reading_us is not None), default=None)


@dataclass(frozen=True)
class OutboxStatus:
    depth: int
    bytes: int
    oldest_us: int | None
    last_write_us: int | None             # the last batch InfluxDB accepted
    rejected: int


def outbox_status(db: sqlite3.Connection) -> OutboxStatus:
    """Points waiting: the rows of `outbox` and the readings past the cursor (`outbox_summary`)."""
    depth, size, oldest_ms = outbox_summary(db)
    last_ok = db.execute("SELECT value FROM meta WHERE key = 'influx_last_ok_us'").fetchone()
    rejected = db.execute("SELECT count(*) FROM outbox_rejected").fetchone()[0]
    return OutboxStatus(depth, size, oldest_ms * 1000 if oldest_ms is not None else None,
                        int(last_ok[0]) if last_ok else None, rejected)


@dataclass(frozen=True)
class DiskStatus:
    path: str
    total: int
    used: int
    free: int

    @property
    def used_share(self) -> float | None:
        return self.used / self.total if self.total else None


def ledger_bytes(path: Path) -> int | None:
    """The database with its write-ahead log and shared-memory index (all of it is on disk)."""
    files = [p for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()]
    return sum(p.stat().st_size for p in files) if path.exists() else None


@dataclass(frozen=True)
class Status:
    site: str
    ledger: str
    schema_version: int | None            # None: no ledger yet
    buses: tuple[BusStatus, ...]
    outbox: OutboxStatus | None           # None: no ledger yet
    influxdb: str | None
    clock: dict
    disk: DiskStatus
    ledger_bytes: int | None
    readings_meters: int = 0
    meters_total: int = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "meters_total", sum(len(b.meters) for b in self.buses))

    def count(self, state: str) -> int:
        return sum(b.count(state) for b in self.buses)


def _where(b) -> str | None:
    return f"{b.host}:{b.port}" if b.type == "modbus_tcp" else b.port


def bus_statuses(cfg: SiteConfig, db: sqlite3.Connection | None,
                 counters: dict[str, BusCounters] | None = None) -> tuple[BusStatus, ...]:
    """Every bus of the site file with its enabled meters' states: a few index seeks per meter,
    so it costs the same whatever the ledger's size."""
    buses = []
    # one pass over the log's tail for all meters, then a seek per meter
    lasts = last_reading_times(db) if db is not None and has_log(db) else None
    for b in cfg.buses:
        meters = []
        for m in (m for m in cfg.meters if m.bus == b.id and m.enabled):
            s = device_status(db, m.id) if db is not None else None
            if db is None:
                last = None
            else:
                last = lasts.get(m.id) if lasts is not None else last_reading_us(db, m.id)
            state = meter_state(last, s)
            off = state == "offline"
            meters.append(MeterStatus(m.id, state, last, s.ts_us if off else None, s.reason if off else None))
        bus = device_status(db, b.id) if db is not None else None
        buses.append(BusStatus(b.id, b.type, _where(b), None if bus is None else bus.online, tuple(meters),
                               (counters or {}).get(b.id)))
    return tuple(buses)


def read_status(cfg: SiteConfig, db: sqlite3.Connection | None,
                counters: dict[str, BusCounters] | None = None) -> Status:
    """The status of the site's ledger (and, with `counters`, of the running gateway's buses)."""
    buses = bus_statuses(cfg, db, counters)
    path = cfg.storage_path
    where = path.parent if path.parent.exists() else Path(".")
    usage = shutil.disk_usage(where)
    return Status(
        site=cfg.site.id, ledger=str(path),
        schema_version=db.execute("PRAGMA user_version").fetchone()[0] if db is not None else None,
        buses=buses, outbox=outbox_status(db) if db is not None else None,
        influxdb=cfg.influxdb.url if cfg.influxdb else None,
        clock=clock_report(db) if db is not None else {"untrusted_now": False, "unrepaired": [], "steps": 0,
                                                       "last_step": None},
        disk=DiskStatus(str(where), usage.total, usage.used, usage.free),
        ledger_bytes=ledger_bytes(path),
        readings_meters=sum(1 for b in buses for m in b.meters if m.last_reading_us is not None))


def alert_counts(db: sqlite3.Connection) -> dict[tuple[str, str], int]:
    """Open alerts by (state, severity)."""
    rows = db.execute("SELECT state, severity, count(*) FROM alerts WHERE state != 'cleared' "
                      "GROUP BY state, severity")
    return {(s, v): n for s, v, n in rows}


# ---- alerts ---------------------------------------------------------------------------------

ALERT_KEYS = ("id", "rule", "kind", "source", "severity", "state", "message", "message_en", "raised_us",
              "updated_us", "acked_by", "ack_note")
HISTORY_KEYS = ("ts_us", "what", "state", "message", "message_en", "id", "severity", "rule", "source", "acked_by")


def open_alerts(db: sqlite3.Connection) -> list[dict]:
    """Alerts not cleared, newest raised first."""
    rows = db.execute(f"SELECT {', '.join(ALERT_KEYS)} FROM alerts WHERE state != 'cleared' "
                      "ORDER BY raised_us DESC")
    return [dict(zip(ALERT_KEYS, r)) for r in rows]


def alert_kind_state(db: sqlite3.Connection, alert_id: str) -> tuple[str, str] | None:
    row = db.execute("SELECT kind, state FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return (row[0], row[1]) if row else None


def alert_history(db: sqlite3.Connection, since_us: int, severity: str = "", rule: str = "", what: str = "",
                  limit: int | None = None, newest_first: bool = True) -> list[dict]:
    """Every change of an alert since `since_us`, optionally of one severity, rule or kind of change."""
    sql = ("SELECT h.ts_us, h.what, h.state, h.message, a.message_en, h.alert_id, a.severity, a.rule, a.source, "
           "a.acked_by FROM alert_history h JOIN alerts a ON a.id = h.alert_id WHERE h.ts_us >= ?")
    args: list = [since_us]
    for col, val in (("a.severity", severity), ("a.rule", rule), ("h.what", what)):
        if val:
            sql += f" AND {col} = ?"
            args.append(val)
    sql += " ORDER BY h.id DESC" if newest_first else " ORDER BY h.id"
    if limit is not None:
        sql += " LIMIT ?"
        args.append(limit)
    return [dict(zip(HISTORY_KEYS, r)) for r in db.execute(sql, args)]


def alert_changes(db: sqlite3.Connection, alert_id: str) -> list[dict]:
    """One alert's changes, oldest first."""
    sql = ("SELECT h.ts_us, h.what, h.state, h.message, a.message_en, h.alert_id, a.severity, a.rule, a.source, "
           "a.acked_by FROM alert_history h JOIN alerts a ON a.id = h.alert_id WHERE h.alert_id = ? ORDER BY h.id")
    return [dict(zip(HISTORY_KEYS, r)) for r in db.execute(sql, (alert_id,))]


def request_ack(path: Path, alert_id: str, by: str, note: str, ts_us: int) -> None:
    """An acknowledgement asked for outside the gateway's process (the CLI, a console on its
    own): the running gateway applies it within a second (`Ledger.ack_requests`)."""
    db = sqlite3.connect(path, timeout=5)
    try:
        with db:
            db.execute("INSERT INTO ack_requests (alert_id, by, note, ts_us) VALUES (?,?,?,?)",
                       (alert_id, by, note, ts_us))
    finally:
        db.close()


# ---- access and patrol ----------------------------------------------------------------------

SWIPE_KEYS = ("ts_us", "reader", "door", "direction", "card_tail", "category", "holder", "household", "role")


def recent_swipes(db: sqlite3.Connection, door: str = "", category: str = "", limit: int = 200) -> list[dict]:
    """Swipes newest first, filtered by door and category when given."""
    sql = f"SELECT {', '.join(SWIPE_KEYS)} FROM swipes"
    where, args = [], []
    for col, val in (("door", door), ("category", category)):
        if val:
            where.append(f"{col} = ?")
            args.append(val)
    if where:
        sql += " WHERE " + " AND ".join(where)
    rows = db.execute(sql + " ORDER BY ts_us DESC, id DESC LIMIT ?", (*args, limit))
    return [dict(zip(SWIPE_KEYS, r)) for r in rows]


def door_events_in(db: sqlite3.Connection, start_us: int, end_us: int, states: tuple[str, ...]) -> list[tuple]:
    """(ts_us, door, state, source) of the door events in [start, end] in these states, newest first."""
    marks = ",".join("?" * len(states))
    return db.execute(f"SELECT ts_us, door, state, source FROM door_events WHERE ts_us >= ? AND ts_us <= ? "
                      f"AND state IN ({marks}) ORDER BY ts_us DESC, id DESC", (start_us, end_us, *states)).fetchall()


def patrol_checkins(db: sqlite3.Connection, start_us: int, end_us: int) -> list[tuple]:
    """(ts_us, reader, checkpoint, guard) of the checkins in [start, end), oldest first."""
    return db.execute("SELECT ts_us, reader, checkpoint, guard FROM patrol_checkins WHERE ts_us >= ? AND ts_us < ? "
                      "ORDER BY ts_us, id", (start_us, end_us)).fetchall()


def last_download_us(db: sqlite3.Connection, since_us: int, readers: list[str]) -> int | None:
    """When the newest checkin read since `since_us` from these readers (wands) arrived."""
    marks = ",".join("?" * len(readers))
    return db.execute(f"SELECT max(received_us) FROM patrol_checkins WHERE ts_us >= ? AND reader IN ({marks})",
                      (since_us, *readers)).fetchone()[0]


# ---- clock ----------------------------------------------------------------------------------

EPISODE_TABLES = ("readings", "device_status", "swipes", "door_events", "patrol_checkins", "alert_history")
EPISODE_SOURCE = {"readings": "reading_log"}   # where a kind of row is kept (schema 8: under its own name)


@dataclass(frozen=True)
class ClockRows:
    """The ledger's clock record: episodes not repaired (with their rows per table and points
    held back), the number of steps seen and the newest (wall_us, step_us)."""
    episodes: list[dict]
    steps: int
    last_step: tuple[int, int] | None


def clock_rows(db: sqlite3.Connection) -> ClockRows:
    """A ledger older than clock safety gives an empty record."""
    try:
        episodes = db.execute(
            "SELECT id, boot, state, reason, wall_us, last_wall_us, after_us, before_us FROM clock_episodes "
            "WHERE state IN ('untrusted', 'unrepairable') ORDER BY id").fetchall()
        steps, last_step = db.execute("SELECT count(*), max(id) FROM clock_steps").fetchone()
        last = db.execute("SELECT wall_us, step_us FROM clock_steps WHERE id = ?", (last_step,)).fetchone()
    except sqlite3.OperationalError:
        return ClockRows([], 0, None)
    out = []
    log = has_log(db)
    for eid, boot, state, reason, wall, last_wall, after, before in episodes:
        rows = {t: db.execute(f"SELECT count(*) FROM {EPISODE_SOURCE.get(t, t) if log else t} WHERE episode = ?",
                              (eid,)).fetchone()[0] for t in EPISODE_TABLES}
        held = db.execute("SELECT count(*) FROM outbox_held WHERE episode = ?", (eid,)).fetchone()[0]
        out.append({"id": eid, "boot": boot, "state": state, "reason": reason, "wall_us": wall,
                    "last_wall_us": last_wall, "after_us": after, "before_us": before, "rows": rows, "held": held})
    return ClockRows(out, steps, tuple(last) if last else None)


def clock_report(db) -> dict:
    """What the ledger says about the clock, read only: whether the gateway is recording in an
    untrusted episode now, the episodes not repaired (an earlier boot's are never repaired: their
    rows stay marked and unsent), and the steps seen. `db`: a sqlite3 connection (mode=ro is fine);
    a ledger older than clock safety gives an empty report."""
    rec = clock_rows(db)
    out = [{"id": e["id"], "state": e["state"], "boot": e["boot"], "reason": e["reason"],
            "clock_said": [when_text(e["wall_us"]), when_text(e["last_wall_us"])],
            "true_time_between": [when_text(e["after_us"]) if e["after_us"] is not None else None,
                                  when_text(e["before_us"]) if e["before_us"] is not None else None],
            "rows": e["rows"], "points_held": e["held"]} for e in rec.episodes]
    steps, last = rec.steps, rec.last_step
    return {"untrusted_now": any(e["state"] == "untrusted" for e in out), "unrepaired": out, "steps": steps,
            "last_step": {"at": when_text(last[0]), "step": signed_duration(last[1])} if last else None}


def counter_near(db: sqlite3.Connection, meter: str, ts_us: int, within_us: int) -> tuple[int, str] | None:
    """The energy counter of `meter` nearest to `ts_us` within `within_us` either side (the last
    at or before it if there is one, else the first after): what a savings figure reads at the
    edge of a period (gateway/lighting/savings.py). The log's tail counts as `energy` does."""
    before = energy_before(db, meter, ts_us + 1, ts_us - within_us)
    after = energy_after(db, meter, ts_us, ts_us + within_us)
    if before is None or after is None:
        return before or after
    return before if ts_us - before[0] <= after[0] - ts_us else after


# ---- public lighting (the console's lighting page) ------------------------------------------------------

def lighting_last_commands(db: sqlite3.Connection) -> dict[str, dict]:
    """circuit -> its last command that was carried out (confirmed, or already so)."""
    out = {}
    for cid, state, source, by, reason, result, ts_us in db.execute(
            "SELECT circuit, state, source, by, reason, result, max(ts_us) FROM lighting_commands "
            "WHERE result IN ('confirmed', 'unchanged') GROUP BY circuit"):
        out[cid] = {"on": bool(state), "source": source, "by": by, "reason": reason, "ts_us": ts_us}
    return out


def lighting_overrides(db: sqlite3.Connection, now_us: int) -> dict[str, dict]:
    """circuit -> its newest override still active at `now_us` (until_us as stored)."""
    return {cid: {"on": bool(state), "until_us": until_us, "by": by, "role": role, "reason": reason}
            for cid, state, until_us, by, role, reason in db.execute(
                "SELECT circuit, state, until_us, by, role, reason FROM lighting_overrides WHERE cancelled_us IS "
                "NULL AND until_us > ? ORDER BY id", (now_us,))}
