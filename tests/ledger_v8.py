"""A ledger of schema 8, written by the release before the SD-card write path.

tests/fixtures/store_v8.py is gateway/store.py as it was at commit a12808c (its imports made
absolute, nothing else changed), so the rows below are written by that release's own code: its
migrations, its field sets and float64 values, its JSON counters, its `energy` rows, its outbox
lines, its held rows of an untrusted clock episode. A generator instead of a binary file: the
ledger is made anew by each test run.
"""

from __future__ import annotations

import math
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))

import store_v8  # noqa: E402

from gateway.clock import to_us  # noqa: E402
from gateway.config import parse_site  # noqa: E402
from gateway.events import (Alert, AlertChange, CardSwipe, DeviceStatus, DoorEvent, GatewayStats,  # noqa: E402
                            PatrolCheckin, Reading)
from gateway.sinks.schema import Encoder, SiteIndex  # noqa: E402
from gateway.timesync import Span, Timeline  # noqa: E402

T0 = datetime(2026, 10, 31, 14, 0, tzinfo=timezone.utc)      # 22:00 in Shanghai, the month's last evening
METERS = ("A-stair", "B-pump", "C-lift", "D-sensor")
DAMAGED = "E-old"            # a meter no longer in the site file, whose newest reading is damaged
EPISODE = (T0 + timedelta(minutes=70), T0 + timedelta(minutes=80))   # what the untrusted clock said
SCHEMA_8 = 8


def site(tmp: Path):
    meters = [{"id": m, "bus": "b", "unit": i + 1, "model": "chint-ddsu666", "circuit": "pump",
               "building": "B01"} for i, m in enumerate(METERS)]
    return parse_site({"site": {"id": "t", "name": "t", "timezone": "Asia/Shanghai", "latitude": 44.15,
                                "longitude": 125.83},
                       "storage": {"path": str(tmp / "gw.db")},
                       "influxdb": {"version": 1, "url": "http://127.0.0.1:1", "database": "gw"},
                       "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
                       "meters": meters}, base_dir=tmp)


def readings(k: int):
    """The site's polls of minute k (two hours of them in all)."""
    ts = T0 + timedelta(seconds=30 * k)
    kwh = Decimal("1234.50") + Decimal(k) / 100
    yield Reading("A-stair", ts, {"voltage_v": 229.9 + k % 7 / 10, "current_a": 1.234, "power_kw": 0.2841,
                                  "energy_kwh": float(kwh)}, {"energy_kwh": kwh})
    yield Reading("B-pump", ts + timedelta(milliseconds=333), {"voltage_l1_v": 231.25, "energy_kwh": 98765.4 + k,
                                                                "export_kwh": 1.5},
                  {"energy_kwh": Decimal("98765.40") + k, "export_kwh": Decimal("1.50")})
    if k % 2 == 0:                                      # a meter with a counter that has gone down once
        c = Decimal("500.0") + k if k != 100 else Decimal("12.0")
        yield Reading("C-lift", ts, {"energy_kwh": float(c), "freq_hz": math.nan if k == 40 else 50.01},
                      {"energy_kwh": c})
    yield Reading("D-sensor", ts, {"temperature_c": -4.5 + k / 10})        # no counter at all


def make_v8_ledger(tmp: Path) -> Path:
    """Write a schema-8 ledger at tmp/gw.db with the release's own code; returns its path."""
    cfg = site(tmp)
    path = cfg.storage_path
    enc = Encoder(SiteIndex.from_config(cfg))
    ledger = store_v8.Ledger(path, 1.0, enc)
    assert store_v8.SCHEMA_VERSION == SCHEMA_8
    # two hours of readings, statuses, swipes, doors, patrol reads, alerts, self metrics
    for k in range(240):
        for r in readings(k):
            ledger.add(r)
        if k % 20 == 0:
            ledger.add(DeviceStatus("B-pump", "meter", k % 40 == 0, T0 + timedelta(seconds=30 * k), "no answer"))
            ledger.add(CardSwipe("r1", "gate", "in", T0 + timedelta(seconds=30 * k + 5), f"00123456{k:02d}",
                                 f"h{k}", "resident", "张三", "B01-1-101", "owner"))
            ledger.add(DoorEvent("gate", "opened", T0 + timedelta(seconds=30 * k + 6), "controller"))
            ledger.add(GatewayStats(T0 + timedelta(seconds=30 * k), {"polls": k, "ok": k}, bus="b"))
        if k % 60 == 0:
            t = T0 + timedelta(seconds=30 * k + 9)
            ledger.add(PatrolCheckin("p1", "cp1", "tag1", "李四", "gh1", t - timedelta(seconds=3), t, "online"))
        if k == 30:
            a = Alert("night/B-pump/1", "night", "threshold", "B-pump", "warning", "active", "夜间用电",
                      "night use", T0 + timedelta(minutes=15), T0 + timedelta(minutes=15), value=2.5,
                      details={"field": "power_kw"})
            ledger.add(AlertChange(a, "raised"))
        if k == 90:
            a = Alert("night/B-pump/1", "night", "threshold", "B-pump", "warning", "cleared", "夜间用电",
                      "night use", T0 + timedelta(minutes=15), T0 + timedelta(minutes=45),
                      cleared_at=T0 + timedelta(minutes=45), value=2.5, details={"field": "power_kw"})
            ledger.add(AlertChange(a, "cleared"))
        if k % 30 == 29:
            ledger.flush()
        if k == 119:
            # an untrusted clock for ten minutes (the wall clock said EPISODE): rows held aside
            ep = ledger.open_clock_episode("boot-1", "no NTP after a power cut", to_us(EPISODE[0]), 5_000_000,
                                           to_us(T0 + timedelta(minutes=59)))
            tl = Timeline(lambda: to_us(EPISODE[1]))
            tl.spans.append(Span(ep, 0, to_us(EPISODE[0]), to_us(EPISODE[1])))
            ledger.timeline = tl
        if k == 159:
            ledger.timeline = None
    ledger.flush()
    # two readings of one meter at one instant (the higher counter stands), and a damaged row
    ledger.add(Reading("A-stair", T0, {"energy_kwh": 1234.49}, {"energy_kwh": Decimal("1234.49")}))
    ledger.flush()
    # InfluxDB took the first 500 points; one more was refused as bad data
    ledger.outbox_confirmed(ledger.outbox_batch(500), to_us(T0 + timedelta(hours=2)))
    ledger.outbox_reject(ledger.outbox_batch(1), 400, "field type conflict", to_us(T0 + timedelta(hours=2)))
    ledger.record_replacement(store_v8.Replacement("C-lift", T0 + timedelta(minutes=50), Decimal("549.00"),
                                                   Decimal("12.00"), "王五", "swapped", T0 + timedelta(hours=2)))
    enc_rows = [enc(GatewayStats(T0 + timedelta(hours=2), {"allocated": 1}))]
    ledger.save_allocation("2026-10", to_us(T0 + timedelta(hours=2)), "100.00", "90.00", "10.00", 0, "out",
                           "{}", [("B01-1-101", "stair", "12.34")],
                           [(r.measurement, r.priority, r.ts_ms, r.line, r.essential) for r in enc_rows])
    ledger.save_web_session("k1", "admin", "pw", to_us(T0), to_us(T0 + timedelta(hours=1)))
    ledger.set_meta("clock_seen_us", str(to_us(T0 + timedelta(hours=2))))
    ledger.close()
    db = sqlite3.connect(path)
    # a reading damaged on disk (its counters are no longer JSON), newest of its meter, and one before it
    db.executemany("INSERT INTO readings (meter, ts_us, field_set, vals, counters) SELECT ?, ts_us + ?, field_set, "
                   "vals, ? FROM readings WHERE meter = 'A-stair' ORDER BY id LIMIT 1",
                   [(DAMAGED, 60_000_000, '{"energy_kwh":"1.00"}'), (DAMAGED, 90_000_000, '{"energy_kwh":"9')])
    db.execute("INSERT INTO ack_requests (alert_id, by, note, ts_us) VALUES ('night/B-pump/1', 'w', '', ?)",
               (to_us(T0),))
    db.commit()
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_8
    db.close()
    return path
