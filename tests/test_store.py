"""The ledger: batching, exact counters, schema versions, and surviving a kill -9."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import yaml

from gateway.clock import from_us, to_us
from gateway.events import DeviceStatus, Reading
from gateway.hub import Hub
from gateway.ledger import Ledger, LedgerError
from gateway.ledger.schema import SCHEMA_VERSION
from hypothesis import given, strategies as st

T0 = datetime(2026, 11, 23, 12, 0, 0, 123456, tzinfo=timezone.utc)


@given(st.integers(0, 2**53))
def test_microsecond_timestamps_round_trip(us):
    assert to_us(from_us(us)) == us


async def test_hub_events_are_committed_in_batches(tmp_path):
    hub = Hub()
    ledger = Ledger(tmp_path / "l.db", commit_interval_s=0.2)
    task = asyncio.create_task(ledger.run(hub))
    await asyncio.sleep(0)
    for i in range(500):
        hub.publish(Reading("m1", T0, {"voltage_v": 220.0 + i}, {"energy_kwh": Decimal("1234.56") + i}))
    hub.publish(DeviceStatus("m1", "meter", True, T0, "answering"))
    await asyncio.sleep(0.5)
    assert ledger.count_readings() == 500
    assert ledger.commits <= 3  # not one transaction per reading
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    rows = list(ledger.readings("m1"))
    assert rows[7].counters == {"energy_kwh": Decimal("1241.56")} and rows[7].ts == T0
    assert ledger.latest_status() == {"m1": True}
    ledger.close()


async def test_cancel_flushes_what_was_received(tmp_path):
    hub = Hub()
    ledger = Ledger(tmp_path / "l.db", commit_interval_s=60)
    task = asyncio.create_task(ledger.run(hub))
    await asyncio.sleep(0)
    for _ in range(10):
        hub.publish(Reading("m", T0, {"x": 1.0}))
    task.cancel()  # before any periodic commit
    await asyncio.gather(task, return_exceptions=True)
    assert ledger.count_readings() == 10
    ledger.close()


def test_wal_mode_and_schema_version(tmp_path):
    Ledger(tmp_path / "l.db").close()
    db = sqlite3.connect(tmp_path / "l.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_newer_ledger_is_refused_with_a_clear_message(tmp_path):
    db = sqlite3.connect(tmp_path / "l.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(LedgerError, match="newer than this gateway"):
        Ledger(tmp_path / "l.db")


def test_unwritable_ledger_path_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(LedgerError, match="cannot open"):
        Ledger(tmp_path / "file" / "sub" / "l.db")


def _committed(path) -> int:
    """Readings another connection sees committed (0 while the gateway creates the ledger)."""
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


async def test_sigkill_leaves_a_consistent_ledger_with_the_committed_readings(tmp_path):
    """A power cut (here: SIGKILL) loses at most the last second; the file stays consistent."""
    from simulators.site import SiteSimulation
    from gateway.config import parse_site

    site = {"id": "t", "name": "t", "latitude": 44.15, "longitude": 125.83}
    meters = [{"id": f"m{u}", "bus": "b", "unit": u, "model": "chint-ddsu666", "poll_s": 1} for u in range(1, 11)]
    cfg = parse_site({"site": site, "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
                      "meters": meters}, base_dir=tmp_path)
    async with SiteSimulation(cfg) as sim:
        bus = dict(cfg.buses[0].model_dump(mode="json"), **sim.bus_overrides["b"])
        path = tmp_path / "site.yaml"
        path.write_text(yaml.safe_dump({"site": site, "storage": {"path": "gw.db"}, "buses": [bus],
                                        "meters": meters}))
        for round_ in range(3):
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(path),
                                                        stderr=asyncio.subprocess.DEVNULL)
            # a loaded machine starts a gateway process slower than an idle one: no fixed sleep
            async with asyncio.timeout(60):
                while (seen := _committed(tmp_path / "gw.db")) < 10 * (round_ + 1):
                    await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            db = sqlite3.connect(tmp_path / "gw.db")
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            n = db.execute("SELECT count(*) FROM readings").fetchone()[0]
            db.close()
            assert n >= 10 * (round_ + 1)  # each run committed at least its first cycle
            assert n >= seen               # and nothing another connection saw committed was lost


def test_energy_counters_are_kept_per_meter_and_the_higher_of_two_at_one_instant(tmp_path):
    t = datetime(2026, 10, 1, tzinfo=timezone.utc)
    ledger = Ledger(tmp_path / "l.db")
    ledger.add(Reading("M1", t, {"energy_kwh": 5.0}, {"energy_kwh": Decimal("5.00")}))
    ledger.add(Reading("M1", t, {"energy_kwh": 4.0}, {"energy_kwh": Decimal("4.00")}))   # same instant, lower
    ledger.add(Reading("M2", t, {"voltage_v": 230.0}))                                   # no counter
    ledger.add(Reading("M1", t + timedelta(minutes=1), {"energy_kwh": 5.5}, {"energy_kwh": Decimal("5.50")}))
    ledger.flush()
    us = to_us(t)
    assert ledger.energy_series("M1", us, us + 60_000_000) == [(us, "5.00"), (us + 60_000_000, "5.50")]
    assert ledger.energy_series("M2", 0, 2 * us) == []
    assert ledger.energy_before("M1", us + 1, 0) == (us, "5.00")
    assert ledger.energy_after("M1", us, 2 * us) == (us + 60_000_000, "5.50")
    ledger.close()


def test_upgrading_an_older_ledger_fills_the_energy_table(tmp_path):
    from gateway.ledger.schema import MIGRATIONS, _statements
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    for v in range(4):                                  # a ledger of schema version 4
        for stmt in _statements(MIGRATIONS[v]):
            db.execute(stmt)
    db.execute("PRAGMA user_version = 4")
    db.execute("INSERT INTO field_sets (id, names) VALUES (1, 'energy_kwh')")
    db.executemany("INSERT INTO readings (meter, ts_us, field_set, vals, counters) VALUES (?,?,1,x'',?)",
                   [("M1", 2, '{"energy_kwh":"7.25"}'), ("M1", 1, '{"energy_kwh":"7.00"}'),
                    ("M1", 2, '{"energy_kwh":"7.20"}'), ("M2", 1, "{}")])
    db.commit()
    db.close()
    ledger = Ledger(path)
    assert ledger.energy_series("M1", 0, 10) == [(1, "7.00"), (2, "7.25")]
    assert ledger.energy_series("M2", 0, 10) == []
    ledger.close()
