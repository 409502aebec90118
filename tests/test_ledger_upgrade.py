"""Upgrade in place: a ledger written by the release before the SD-card write path (schema 8,
tests/ledger_v8.py) opened by this gateway loses and changes no row that anything reads."""

from __future__ import annotations

import json
from contextlib import closing
import math
import shutil
import sqlite3
from datetime import timedelta
from decimal import Decimal

import pytest

import gateway.ledger.writer as store
from gateway.ledger import schema
from gateway.clock import to_us
from gateway.events import Reading
from gateway.ledger import queries
from gateway.sinks.schema import Encoder, SiteIndex
from ledger_v8 import DAMAGED, EPISODE, METERS, T0, make_v8_ledger, site, store_v8

# tables the new schema leaves as they were (column for column, row for row)
UNCHANGED = ("field_sets", "device_status", "swipes", "door_events", "patrol_checkins", "alerts", "alert_history",
             "ack_requests", "meter_replacements", "allocations", "allocation_charges", "energy", "energy_held",
             "outbox_rejected", "clock_episodes", "clock_steps", "web_sessions")
ALL_US = (0, 2**62)


def table(db: sqlite3.Connection, name: str, cols: str = "*") -> list[tuple]:
    return sorted(db.execute(f"SELECT {cols} FROM {name}").fetchall(), key=repr)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN (a float field may be NaN)."""
    return json.dumps(a, default=str, sort_keys=True) == json.dumps(b, default=str, sort_keys=True)


def stored(ledger) -> list[tuple]:
    """Every reading of the site's meters (DAMAGED's newest cannot be read whole, then or now)."""
    return [(r.id, r.meter, r.ts, {k: ("nan" if isinstance(v, float) and math.isnan(v) else v)
                                   for k, v in r.values.items()}, r.counters) for m in METERS for r in ledger.readings(m)]


def with_later_fields(read: dict, path) -> dict:
    """What the release read, with what later releases read besides: an alert's `revision` (head
    office, issue 17: its changes in alert_history, counted in the release's own ledger) and the
    lighting commands an episode holds (issue 15: that release had none)."""
    with closing(sqlite3.connect(path)) as con:
        revisions = dict(con.execute("SELECT alert_id, count(*) FROM alert_history GROUP BY alert_id"))
    for a in read["alerts"]:
        a["revision"] = revisions.get(a["id"], 0)
    for e in read["unrepaired"]:
        e["rows"]["lighting_commands"] = 0
    return read


def what_is_read(ledger) -> dict:
    """Everything the gateway reads about readings, counters and clock episodes, by its API."""
    now = to_us(T0 + timedelta(hours=3))
    probes = [to_us(T0 + timedelta(minutes=m)) for m in (0, 1, 29, 45, 60, 75, 100, 119)]
    every = [*METERS, DAMAGED]
    return {
        "readings": stored(ledger),
        "count": {m or "all": ledger.count_readings(m) for m in (*every, None)},
        "energy": {m: ledger.energy_series(m, *ALL_US) for m in METERS},
        "before": {m: [ledger.energy_before(m, t, 0) for t in probes] for m in METERS},
        "after": {m: [ledger.energy_after(m, t, 2**62) for t in probes] for m in METERS},
        "last": ledger.last_counters(every, "energy_kwh", now),
        "last_export": ledger.last_counters(every, "export_kwh", now),
        "around": ledger.counters_around(every, "energy_kwh", probes, 10 * 60_000_000, now),
        "activity": ledger.activity(list(METERS) + ["b", "gate"], *ALL_US, 10_000_000),
        "status": ledger.latest_status(),
        "alerts": ledger.alert_rows(("active", "acknowledged", "cleared")),
        "replacements": ledger.replacements(),
        "allocations": ledger.allocations(),
        "patrol": ledger.patrol_checkins_between(*ALL_US),
        "episodes": ledger.clock_episodes(),
        "unrepaired": ledger.unrepaired_clock(),
        "held": ledger.outbox_held,
        "trusted_us": ledger.newest_trusted_us(),
        "sessions": ledger.web_sessions(),
        "acks": ledger.ack_requests(),
    }


def drained(ledger) -> list[str]:
    """Every point the ledger would send to InfluxDB, in order (confirmed as it goes)."""
    out, after = [], 0
    while True:
        rows = ledger.outbox_batch(97, after)
        if not rows:
            return out
        out += [line for _, line in rows]
        ledger.outbox_confirmed(rows, to_us(T0))
        after = rows[-1][0]


def console(db: sqlite3.Connection) -> dict:
    """What the console and `gateway status` read (the schema-8 SQL, or the new read model)."""
    if not queries.has_log(db):
        sets = {i: tuple(n.split(",")) for i, n in db.execute("SELECT id, names FROM field_sets")}
        last = {}
        for m in (*METERS, DAMAGED):
            row = db.execute("SELECT ts_us, field_set, vals, counters FROM readings WHERE meter = ? "
                             "ORDER BY ts_us DESC LIMIT 1", (m,)).fetchone()
            import struct
            names = sets[row[1]]
            try:
                exact = json.loads(row[3])
            except ValueError:
                exact = {}
            last[m] = {"ts_us": row[0], "values": dict(zip(names, struct.unpack(f"<{len(names)}d", row[2]))),
                       "counters": exact}
        times = dict(db.execute("SELECT meter, max(ts_us) FROM readings GROUP BY meter"))
        depth = db.execute("SELECT count(*) FROM outbox").fetchone()[0]
    else:
        last = queries.last_readings(db, [*METERS, DAMAGED])
        times = queries.last_reading_times(db)
        depth = queries.outbox_summary(db)[0]
    return {"last": last, "times": times, "outbox_depth": depth}


@pytest.fixture(scope="module")
def v8(tmp_path_factory):
    return make_v8_ledger(tmp_path_factory.mktemp("v8"))


def copy(v8, tmp_path, name="gw.db"):
    dst = tmp_path / name
    shutil.copy(v8, dst)
    keys = v8.with_name(v8.name + ".keys")
    if keys.exists():
        shutil.copy(keys, dst.with_name(name + ".keys"))
    return dst


def test_the_fixture_is_a_ledger_of_the_release_with_every_kind_of_row(v8):
    db = sqlite3.connect(v8)
    assert db.execute("PRAGMA user_version").fetchone()[0] == 8 == store_v8.SCHEMA_VERSION
    counts = {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
              for t in ("readings", "energy", "energy_held", "outbox", "outbox_held", "outbox_rejected", "alerts",
                        "alert_history", "clock_episodes", "meter_replacements", "allocations")}
    assert all(counts.values()), counts
    assert db.execute("SELECT count(*) FROM readings WHERE episode IS NOT NULL").fetchone()[0] > 0


def test_upgrade_keeps_every_row_that_anything_reads(v8, tmp_path):
    cfg = site(tmp_path)
    old_path, new_path = copy(v8, tmp_path, "old.db"), copy(v8, tmp_path, "new.db")
    old = store_v8.Ledger(old_path)
    want = what_is_read(old)
    want_points = drained(old)
    old.close()
    want = with_later_fields(want, old_path)
    want_console = console(sqlite3.connect(new_path))
    before = sqlite3.connect(new_path)
    # the release's columns (later schemas may add columns, as allocation runs did)
    columns = {t: ", ".join(c[1] for c in before.execute(f"PRAGMA table_info({t})")) for t in UNCHANGED}
    tables = {t: table(before, t, columns[t]) for t in UNCHANGED}
    outbox = table(before, "outbox")
    held = table(before, "outbox_held")
    before.close()

    ledger = store.Ledger(new_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    db = sqlite3.connect(new_path)
    assert db.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    assert db.execute("SELECT count(*) FROM sqlite_master WHERE name = 'readings_old'").fetchone()[0] == 0
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert {t: table(db, t, columns[t]) for t in UNCHANGED} == tables
    assert table(db, "outbox", "id, measurement, priority, ts_ms, line, essential") == outbox
    assert table(db, "outbox_held", "id, episode, measurement, priority, ts_us, line, essential, shift_ts, "
                                    "shift_delay") == held
    got = what_is_read(ledger)
    for k in want:
        assert same(got[k], want[k]), k
    assert same(console(db), want_console)
    # InfluxDB gets what was waiting, in its order, and no reading's point a second time
    assert drained(ledger) == want_points
    ledger.close()


def test_an_upgraded_ledger_goes_on_as_a_new_one(v8, tmp_path):
    """After the upgrade: new readings, the repair of the held episode, billing's counters and the
    points, as the release would have had them (its own code does the same on a copy)."""
    cfg = site(tmp_path)
    enc = Encoder(SiteIndex.from_config(cfg))
    old = store_v8.Ledger(copy(v8, tmp_path, "old.db"), encoder=enc)
    new = store.Ledger(copy(v8, tmp_path, "new.db"), encoder=enc)
    later = [Reading("A-stair", T0 + timedelta(hours=3, seconds=s), {"energy_kwh": 1240.0 + s},
                     {"energy_kwh": Decimal("1240.00") + s}) for s in range(5)]
    fixes = [(1, 3_600_000_000, to_us(EPISODE[0]), to_us(EPISODE[1]))]      # the clock was an hour behind
    for ledger in (old, new):
        drained(ledger)
        for r in later:
            ledger.add(r)
        ledger.flush()
    moved = [ledger.repair_clock(fixes, to_us(T0 + timedelta(hours=4))) for ledger in (old, new)]
    assert moved[0] == moved[1] and moved[0][1]["readings"] > 0
    new.catch_up()
    assert same(what_is_read(new), with_later_fields(what_is_read(old), old.path))
    points = [drained(ledger) for ledger in (old, new)]
    assert sorted(points[1]) == sorted(points[0]) and len(points[0]) > 5 + 70   # repaired and new, once each
    old.close()
    new.close()


def test_an_upgrade_cut_short_goes_on_at_the_next_start(v8, tmp_path, monkeypatch):
    path = copy(v8, tmp_path)
    old = store_v8.Ledger(copy(v8, tmp_path, "old.db"))
    want = with_later_fields(what_is_read(old), old.path)
    monkeypatch.setattr(store, "UPGRADE_ROWS", 100)
    chunks = []

    def crash(self):
        chunks.append(1)
        if len(chunks) == 3:
            raise KeyboardInterrupt        # SIGINT, or a power cut, in the middle of the copy
    monkeypatch.setattr(store.Checkpointer, "note_commit", crash)
    with pytest.raises(KeyboardInterrupt):
        store.Ledger(path)
    monkeypatch.undo()
    db = sqlite3.connect(path)
    left = db.execute("SELECT count(*) FROM readings_old").fetchone()[0]
    assert 0 < left < 843 and db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    ledger = store.Ledger(path)
    got = what_is_read(ledger)
    for k in want:
        assert same(got[k], want[k]), k
    ledger.close()


def test_a_ledger_of_the_lighting_release_before_the_write_path_upgrades(tmp_path):
    """The release that brought lighting numbered its migration 10, the write path's number here:
    its ledgers have lighting's tables at version 10 and the old readings table."""
    path = tmp_path / "lighting.db"
    con = sqlite3.connect(path)
    for v, script in enumerate(schema.MIGRATIONS[:schema.WRITE_PATH_VERSION - 1]):
        con.executescript(script)
        con.execute(f"PRAGMA user_version = {v + 1}")
    con.executescript(schema.MIGRATIONS[schema.WRITE_PATH_VERSION])        # lighting's, after the write path's
    con.execute(f"PRAGMA user_version = {schema.WRITE_PATH_VERSION}")
    con.execute("INSERT INTO lighting_commands (ts_us, circuit, state, source, by, reason, result) "
                "VALUES (1, 'L1', 1, 'plan', 'plan', 'dusk', 'confirmed')")
    con.commit()
    con.close()
    ledger = store.Ledger(path)
    try:
        assert ledger.last_lighting_switch() == {"L1": (1, True)}
        ledger.add(Reading("A-stair", T0, {"energy_kwh": 5.0}, {"energy_kwh": Decimal("5.00")}))
        ledger.flush()
        assert ledger.count_readings("A-stair") == 1
    finally:
        ledger.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA user_version").fetchone()[0] == schema.SCHEMA_VERSION
    con.close()
