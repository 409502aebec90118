"""Time series into real InfluxDB 1.x and VictoriaMetrics (InfluxDB v2 write API): nothing lost,
nothing doubled, bad data set aside."""

from __future__ import annotations

import asyncio
import itertools
import logging
import signal
import sqlite3
import sys
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings, strategies as st

from gateway.clock import to_us
from gateway.config import parse_site
from gateway.events import CardSwipe, DeviceStatus, GatewayStats, Reading
from gateway.runtime import Gateway
from gateway.sinks.drainer import Drainer
from gateway.sinks.influxdb import make_writer
from gateway.sinks.lineprotocol import Unwritable, line
from gateway.sinks.schema import Encoder, SiteIndex
from gateway.ledger import Ledger
from gateway.ledger.writer import NEVER_SHED
from servers import Influx1
from simulators.site import SiteSimulation

SITE = {"id": "wanhu", "name": "万户新居", "latitude": 44.15, "longitude": 125.83}
T0 = datetime(2026, 11, 23, 12, 0, 0, 123000, tzinfo=timezone.utc)
T0_MS = int(T0.timestamp() * 1000)


def influx_cfg(kind: str, server, **extra) -> dict:
    if kind == "v1":
        return {"version": 1, "url": server.url, "database": server.database, "batch_age_s": 0, **extra}
    return {"version": 2, "url": server.url, "org": "wanhu", "bucket": "gateway", "batch_age_s": 0, **extra}


def small_site(tmp_path, influx: dict | None, buses=None, meters=None):
    data = {"site": SITE, "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": buses or [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.3}],
            "meters": meters or [
                {"id": "B01-stair", "bus": "b", "unit": 1, "model": "chint-ddsu666", "poll_s": 1,
                 "circuit": "stairwell_lighting", "building": "B01"},
                {"id": "PUMP1", "bus": "b", "unit": 2, "model": "chint-dtsu666", "poll_s": 1, "circuit": "pump"}]}
    if influx:
        data["influxdb"] = influx
    return parse_site(data, base_dir=tmp_path)


async def drain(ledger: Ledger, drainer: Drainer, timeout: float = 20) -> None:
    task = asyncio.create_task(drainer.run())
    try:
        async with asyncio.timeout(timeout):
            while ledger.outbox_depth:
                await asyncio.sleep(0.05)
    finally:
        drainer.stop()
        await asyncio.wait_for(task, 10)


# ---- line protocol --------------------------------------------------------------------------

def test_line_protocol_escaping_and_types():
    got = line("meter", {"site": "wan hu", "meter": "B,01=x", "building": ""},
               {"voltage_v": 220.0, "energy_kwh": Decimal("12345.67"), "n": 3, "ok": True,
                "reason": 'say "hi"\\', "bad": float("nan")}, 1700000000123)
    assert got == ('meter,meter=B\\,01\\=x,site=wan\\ hu voltage_v=220.0,energy_kwh=12345.67,n=3i,ok=true,'
                   'reason="say \\"hi\\"\\\\" 1700000000123')
    assert line("m", {}, {"x": float("inf")}, 1) is None


@given(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=0, max_value=10**9))
def test_counters_are_written_as_their_exact_decimal_text(d):
    text = line("meter", {}, {"energy_kwh": d}, 0).split(" ")[1].split("=")[1]
    assert Decimal(text) == d and "E" not in text.upper()


def test_schema_describes_meter_points_with_site_tags(tmp_path):
    cfg = small_site(tmp_path, None)
    row = Encoder(SiteIndex.from_config(cfg))(
        Reading("B01-stair", T0, {"voltage_v": 221.5, "energy_kwh": 1234.56}, {"energy_kwh": Decimal("1234.56")}))
    assert row.line == (f"meter,building=B01,circuit=stairwell_lighting,meter=B01-stair,site=wanhu "
                        f"voltage_v=221.5,energy_kwh=1234.56 {T0_MS}")
    assert row.essential == f"meter,building=B01,circuit=stairwell_lighting,meter=B01-stair,site=wanhu energy_kwh=1234.56 {T0_MS}"
    status = Encoder(SiteIndex.from_config(cfg))(DeviceStatus("b", "bus", False, T0, "refused"))
    assert status.line == f'device_status,device=b,kind=bus,site=wanhu online=false,reason="refused" {T0_MS}'


# What line protocol cannot carry is refused: a newline ends the point; a backslash before a
# backslash, an escaped character, a double quote or the end is read differently by the engines.
UNWRITABLE = ["a\nb", "a\\", "a\\\\b", "a\\,b", "a\\=b", "a\\ b", 'a\\"b']


@pytest.mark.parametrize("text", UNWRITABLE)
def test_what_line_protocol_cannot_carry_is_refused(text):
    for tags, fields in [({"t": text}, {"f": 1}), ({text: "v"}, {"f": 1}), ({}, {text: 1})]:
        with pytest.raises(Unwritable, match="line protocol cannot carry"):
            line("m", tags, fields, 1)


_names = itertools.count()
# Every character, and often the ones line protocol escapes or treats specially.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",)) | st.sampled_from(list(',= \\"\'\t\r\n\x00#é漢')),
                min_size=1, max_size=12)


# A few batches of 50-80 texts: each example is a round trip through the server, so no
# shrinking (the assertion's set difference names the text that failed).
@settings(max_examples=4, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(_TEXT, min_size=50, max_size=80, unique=True))
def test_any_text_round_trips_through_influxdb_1_as_tag_value_and_field_key(influx1, texts):
    """Whatever `line()` writes, a real InfluxDB 1.x reads back as the same tag value and field
    key; it refuses only texts with a newline or a backslash (and a field key that starts with
    a tab or NUL, which InfluxDB skips as blank)."""
    n = next(_names)
    tags_m, keys_m = f"tagv{n}", f"fkey{n}"
    lines, tag_values, field_keys = [], {}, set()
    for i, text in enumerate(texts):
        try:
            lines.append(line(tags_m, {"i": str(i), "v": text}, {"f": 1}, T0_MS))
            tag_values[str(i)] = text
        except Unwritable:
            assert "\n" in text or "\\" in text
        try:
            lines.append(line(keys_m, {"i": str(i)}, {text: i}, T0_MS))
            field_keys.add(text)
        except Unwritable:
            assert "\n" in text or "\\" in text or text[0] in "\t\x00"
    assert len(tag_values) >= len(texts) // 2  # most are written: the test is not vacuous
    status, body = influx1.http(f"/write?db={influx1.database}&precision=ms", "\n".join(lines).encode())
    assert status == 204, body
    result = influx1.query(f'SELECT * FROM "{tags_m}" GROUP BY *')["results"][0]
    assert {s["tags"]["i"]: s["tags"]["v"] for s in result["series"]} == tag_values
    result = influx1.query(f'SHOW FIELD KEYS FROM "{keys_m}"')["results"][0]
    assert {k for k, _ in result["series"][0]["values"]} == field_keys


INJECTION = "r x,site=evil y=1\nmeter,…\\"  # item 5 of the defects issue: a controller's `reader`


async def test_an_injected_reader_never_shifts_the_tags(tmp_path, influx1, caplog):
    cfg = small_site(tmp_path, influx_cfg("v1", influx1))
    encoder = Encoder(SiteIndex.from_config(cfg))

    def swipe(reader: str, second: int) -> CardSwipe:
        return CardSwipe(reader, "gate-s", "in", T0 + timedelta(seconds=second), "0012345678",
                         "0123456789abcdef", "unknown")

    # As sent, it cannot be written: refused, said once, the ledger keeps the event.
    assert encoder(swipe(INJECTION, 0)) is None and encoder(swipe(INJECTION, 1)) is None
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(said) == 1 and "access point: tag reader" in said[0] and "newline" in said[0]
    # Without the newline and the final backslash it is written, and is only a reader's name.
    variants = [INJECTION.replace("\n", " ")[:-1], INJECTION.split("\n")[0]]
    ledger = Ledger(cfg.storage_path, encoder=encoder)
    for k, reader in enumerate(variants):
        ledger.add(swipe(reader, 10 + k))
    ledger.flush()
    await drain(ledger, Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb))
    points = sorted(influx1.points("access"), key=lambda p: p["time"])
    assert [(p["site"], p["reader"], p["door"]) for p in points] == [("wanhu", r, "gate-s") for r in variants]
    ledger.close()


# ---- both server generations read back exactly ------------------------------------------------

def _events():
    out = []
    for i in range(50):
        ts = T0 + timedelta(seconds=30 * i)
        out.append(Reading("B01-stair", ts, {"voltage_v": 220.0 + i / 8, "power_kw": 0.125 * i,
                                             "energy_kwh": 1000.5 + i},
                           {"energy_kwh": Decimal("1000.5") + i}))
        out.append(Reading("PUMP1", ts, {"voltage_l1_v": 230.25, "energy_kwh": 98765.43 + i},
                           {"energy_kwh": Decimal("98765.43") + i}))
    out.append(DeviceStatus("PUMP1", "meter", False, T0 + timedelta(seconds=7), "no answer within 0.3 s"))
    return out


@pytest.mark.parametrize("kind", ["v1", "v2"])
async def test_points_read_back_exactly(tmp_path, kind, request):
    server = request.getfixturevalue("influx1" if kind == "v1" else "victoria")
    cfg = small_site(tmp_path, influx_cfg(kind, server, batch_size=17))
    ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    for e in _events():
        ledger.add(e)
    ledger.flush()
    assert ledger.outbox_depth == 101
    await drain(ledger, Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb))
    if kind == "v1":
        points = server.points("meter")
        assert len(points) == 100
        stair = sorted((p for p in points if p["meter"] == "B01-stair"), key=lambda p: p["time"])
        for i, p in enumerate(stair):
            assert p["time"] == T0_MS + 30_000 * i
            assert (p["site"], p["building"], p["circuit"]) == ("wanhu", "B01", "stairwell_lighting")
            assert p["voltage_v"] == 220.0 + i / 8 and p["power_kw"] == 0.125 * i
            assert Decimal(repr(p["energy_kwh"])) == Decimal("1000.5") + i
        pump = [p for p in points if p["meter"] == "PUMP1"]
        assert {p["circuit"] for p in pump} == {"pump"} and all(p["building"] is None for p in pump)
        (status,) = server.points("device_status")
        assert status["online"] is False and status["reason"] == "no answer within 0.3 s"
        assert status["time"] == T0_MS + 7000
    else:
        series = {s["metric"]["__name__"] + "/" + s["metric"]["meter"]: s
                  for s in server.export('{__name__=~"meter_.*"}')}
        s = series["meter_energy_kwh/B01-stair"]
        assert s["metric"] == {"__name__": "meter_energy_kwh", "site": "wanhu", "meter": "B01-stair",
                               "building": "B01", "circuit": "stairwell_lighting"}
        assert s["timestamps"] == [T0_MS + 30_000 * i for i in range(50)]
        assert [Decimal(repr(v)) for v in s["values"]] == [Decimal("1000.5") + i for i in range(50)]
        assert series["meter_voltage_l1_v/PUMP1"]["values"] == [230.25] * 50
    ledger.close()


# ---- bad data, oversize batches, the disk budget --------------------------------------------

async def test_bad_points_are_set_aside_without_blocking_the_rest(tmp_path, influx1):
    cfg = small_site(tmp_path, influx_cfg("v1", influx1, batch_size=1000))
    ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
    events = _events()
    for e in events[:40]:
        ledger.add(e)
    ledger.flush()
    # a point whose field type conflicts with what the database already has (string vs float)
    # once the first half is written, and a line that is not line protocol at all
    ledger._outbox.append(("meter", 1, T0_MS, f'meter,meter=X,site=wanhu voltage_v="high" {T0_MS}', None))
    ledger._outbox.append(("meter", 1, T0_MS, "this is not line protocol", None))
    for e in events[40:]:
        ledger.add(e)
    ledger.flush()
    drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb)
    await drain(ledger, drainer)
    assert len(influx1.points("meter")) == 100  # every good point behind the bad ones arrived
    rejected = sqlite3.connect(cfg.storage_path).execute(
        "SELECT line, status, reason FROM outbox_rejected ORDER BY id").fetchall()
    assert [r[0] for r in rejected] == [f'meter,meter=X,site=wanhu voltage_v="high" {T0_MS}', "this is not line protocol"]
    assert all(r[1] == 400 and r[2] for r in rejected)
    assert drainer.rejected == 2
    ledger.close()


async def test_413_splits_the_batch(tmp_path):
    server = Influx1(tmp_path / "small", max_body_size=3000)
    (tmp_path / "small").mkdir()
    server.start()
    try:
        cfg = small_site(tmp_path, influx_cfg("v1", server, batch_size=100, gzip=False))
        ledger = Ledger(cfg.storage_path, encoder=Encoder(SiteIndex.from_config(cfg)))
        for e in _events():
            ledger.add(e)
        ledger.flush()
        drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb)
        await drain(ledger, drainer)
        assert len(server.points("meter")) == 100 and drainer.rejected == 0
        assert drainer.batches_written > 2
        ledger.close()
    finally:
        server.stop()


def test_budget_sheds_self_metrics_first_and_never_energy_counters(tmp_path):
    cfg = small_site(tmp_path, None)
    ledger = Ledger(tmp_path / "l.db", encoder=Encoder(SiteIndex.from_config(cfg)))
    for i in range(200):
        ledger.add(GatewayStats(T0 + timedelta(seconds=i), {"polls": i, "outbox_depth": 5}))
    for e in _events():
        ledger.add(e)
    ledger.flush()
    # A reading's point is the reading itself until InfluxDB has been unreachable for longer than
    # storage.raw_days: retention then deletes the reading and its point waits in the outbox as a
    # line, under the outbox's budget.
    ledger.catch_up()
    first, last = ledger.reading_id_after(None, 10**6)
    assert ledger.delete_readings(first, last, to_us(T0) + 10**12) == 100 and ledger.outbox_depth == 301
    full = ledger.outbox_bytes
    # 1) a budget that self metrics alone can satisfy
    shed = ledger.shed(full - 1000)
    assert set(shed) == {"gateway"} and ledger.outbox_bytes <= full - 1000
    # 2) nothing left but energy counters, whatever the budget
    ledger.shed(0)
    rows = sqlite3.connect(tmp_path / "l.db").execute("SELECT measurement, priority, line FROM outbox").fetchall()
    assert len(rows) == 100 and {r[0] for r in rows} == {"meter"} and {r[1] for r in rows} == {NEVER_SHED}
    assert all(" energy_kwh=" in r[2] and "voltage" not in r[2] for r in rows)
    assert ledger.outbox_depth == 100
    ledger.close()


# ---- outages and crashes, end to end with the simulators ------------------------------------

def ledger_points(db_path) -> set[tuple[str, int]]:
    db = sqlite3.connect(db_path)
    return {(m, ts // 1000) for m, ts in db.execute("SELECT meter, ts_us FROM readings")}


def influx_points(server) -> list[tuple[str, int]]:
    if isinstance(server, Influx1):
        return [(p["meter"], p["time"]) for p in server.points("meter")]
    return [(s["metric"]["meter"], ts) for s in server.export('{__name__="meter_energy_kwh"}')
            for ts in s["timestamps"]]


@pytest.mark.parametrize("kind", ["v1", "v2"])
async def test_outage_loses_and_doubles_nothing(tmp_path, kind, request):
    server = request.getfixturevalue("influx1" if kind == "v1" else "victoria")
    cfg = small_site(tmp_path, influx_cfg(kind, server, batch_size=50, backoff_max_s=1))
    async with SiteSimulation(cfg) as sim:
        gw = Gateway(sim.patched_config())
        task = asyncio.create_task(gw.run(status_every_s=None))
        await asyncio.sleep(2)
        server.stop()
        await asyncio.sleep(4)  # polling goes on; points wait in the outbox
        assert gw.ledger.outbox_depth > 0
        server.start()
        async with asyncio.timeout(20):
            while gw.ledger.outbox_depth:
                await asyncio.sleep(0.1)
        gw.stop()
        await asyncio.wait_for(task, 10)
    left = sqlite3.connect(cfg.storage_path).execute("SELECT count(*) FROM outbox").fetchone()[0]
    assert left == 0  # the final points were sent on the way out
    expected = ledger_points(cfg.storage_path)
    written = influx_points(server)
    assert len(written) == len(set(written))  # exactly once
    assert set(written) == expected
    assert len(written) >= 2 * 6


async def test_points_keep_going_out_while_readings_keep_coming(tmp_path, influx1):
    """With `batch_age_s` above zero (the default is 5 s) a batch too young to go alone waits for
    more: the points read for it must go with the next batch, not be skipped until a restart."""
    cfg = small_site(tmp_path, influx_cfg("v1", influx1, batch_age_s=1))
    async with SiteSimulation(cfg) as sim:
        gw = Gateway(sim.patched_config())
        task = asyncio.create_task(gw.run(status_every_s=None))
        try:
            async with asyncio.timeout(20):      # two meters polled every second
                while len(influx_points(influx1)) < 16:
                    await asyncio.sleep(0.2)
        finally:
            gw.stop()
            await asyncio.wait_for(task, 10)
    written = influx_points(influx1)
    assert len(written) == len(set(written))
    assert set(written) == ledger_points(cfg.storage_path)


async def test_without_influxdb_the_ledger_alone_runs(tmp_path):
    cfg = small_site(tmp_path, None)
    async with SiteSimulation(cfg) as sim:
        gw = Gateway(sim.patched_config())
        task = asyncio.create_task(gw.run(status_every_s=None))
        await asyncio.sleep(1.5)
        gw.stop()
        await asyncio.wait_for(task, 10)
    assert gw.drainer is None
    db = sqlite3.connect(cfg.storage_path)
    assert db.execute("SELECT count(*) FROM readings").fetchone()[0] >= 2
    assert db.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0


def _readings(path) -> int:
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute("SELECT count(*) FROM readings").fetchone()[0]
    except sqlite3.OperationalError:       # the gateway is still creating its tables
        return 0
    finally:
        db.close()


async def _until_readings(path, n: int, timeout: float = 60) -> None:
    """Wait until the ledger holds `n` committed readings (a loaded machine starts a gateway
    process slower than an idle one, so no fixed sleep)."""
    async with asyncio.timeout(timeout):
        while _readings(path) < n:
            await asyncio.sleep(0.1)


async def test_sigkill_during_run_loses_and_doubles_nothing(tmp_path, influx1):
    cfg = small_site(tmp_path, influx_cfg("v1", influx1, batch_size=5, backoff_max_s=1))
    async with SiteSimulation(cfg) as sim:
        data = sim.patched_config().model_dump(mode="json")
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        for round_ in range(4):
            if round_ == 1:
                influx1.stop()      # one run with the database down
            if round_ == 2:
                influx1.start()
            before = _readings(cfg.storage_path)
            proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(site_file),
                                                        stderr=asyncio.subprocess.DEVNULL)
            await _until_readings(cfg.storage_path, before + 4)   # two polls of both meters committed
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        # a last, clean run drains what the kills left behind
        before = _readings(cfg.storage_path)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", "run", "-c", str(site_file),
                                                    stderr=asyncio.subprocess.DEVNULL)
        await _until_readings(cfg.storage_path, before + 4)
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0
    ledger = Ledger(cfg.storage_path)
    depth = ledger.outbox_depth
    ledger.close()
    if depth:  # the last run's final points: send them now
        ledger = Ledger(cfg.storage_path, encoder=None)
        await drain(ledger, Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb))
        ledger.close()
    written = influx_points(influx1)
    assert len(written) == len(set(written))
    assert set(written) == ledger_points(cfg.storage_path)
    assert len(written) >= 5 * 2 * 2


# ---- visibility ------------------------------------------------------------------------------

async def _gateway_cli(*args: str, env=None) -> tuple[int, str, str]:
    import os
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *args,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                                                env={**os.environ, **(env or {})})
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def test_status_shows_buses_meters_and_the_outbox(tmp_path, influx1):
    cfg = small_site(tmp_path, influx_cfg("v1", influx1, batch_size=10_000, batch_age_s=3600))
    async with SiteSimulation(cfg) as sim:
        sim.meter("PUMP1").dead = True
        data = sim.patched_config().model_dump(mode="json")
        data["buses"][0]["offline_after"] = 1
        site_file = tmp_path / "site.yaml"
        site_file.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
        code, _, err = await _gateway_cli("status", "-c", str(site_file))
        assert code == 1 and "no ledger" in err
        gw = Gateway(parse_site(data, base_dir=tmp_path))
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=0.1))
        await asyncio.sleep(2.0)
        code, out, err = await _gateway_cli("status", "-c", str(site_file), "--json")
        gw.stop()
        await asyncio.wait_for(task, 10)
    assert code == 0, err
    import json
    st = json.loads(out)
    (bus,) = st["buses"]
    assert bus["meters"] == 2 and bus["online"] == 1 and bus["connected"] is None
    assert [m["meter"] for m in bus["offline"]] == ["PUMP1"] and "no answer" in bus["offline"][0]["reason"]
    assert bus["last_reading_age_s"] < 5
    o = st["outbox"]
    assert o["depth"] >= 2 and o["oldest_age_s"] >= 1 and o["last_write_age_s"] is None  # batch not due yet
    code, out, _ = await _gateway_cli("status", "-c", str(site_file))
    assert code == 0 and "PUMP1" in out and "outbox" in out


async def test_missing_secret_env_is_one_clear_line(tmp_path, influx1):
    cfg = {"site": SITE, "influxdb": {"version": 1, "url": influx1.url, "database": "gateway",
                                      "username_env": "GW_TEST_INFLUX_USER"}}
    site_file = tmp_path / "site.yaml"
    site_file.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    code, _, err = await _gateway_cli("run", "-c", str(site_file))
    assert code == 2
    assert err.strip() == f"{site_file}: influxdb.username_env: environment variable GW_TEST_INFLUX_USER is not set"


@pytest.mark.parametrize("kind", ["v1", "v2"])
async def test_tls_with_a_ca_file(tmp_path, kind):
    from servers import Victoria
    (tmp_path / "srv").mkdir()
    server = (Influx1 if kind == "v1" else Victoria)(tmp_path / "srv", tls=True)
    server.start()
    try:
        for ca_file, ok in ((None, False), (str(server.ca), True)):
            extra = {"ca_file": ca_file} if ca_file else {}
            cfg = small_site(tmp_path, influx_cfg(kind, server, **extra))
            writer = make_writer(cfg.influxdb, tmp_path)
            try:
                line_ = f"meter,meter=tls,site=wanhu voltage_v=230.5 {T0_MS}"
                if ok:
                    await writer.write([line_])
                else:
                    from gateway.sinks.influxdb import WriteError
                    with pytest.raises(WriteError, match="(?i)certificate"):
                        await writer.write([line_])
            finally:
                await writer.close()
        if kind == "v1":
            assert [p["voltage_v"] for p in server.points("meter")] == [230.5]
        else:
            assert server.export('{__name__="meter_voltage_v"}')[0]["values"] == [230.5]
    finally:
        server.stop()


def test_budget_warns_at_80_percent_and_sheds_over_it(tmp_path, caplog):
    cfg = small_site(tmp_path, {"version": 1, "url": "http://127.0.0.1:9", "database": "g", "outbox_max_mb": 0.01})
    ledger = Ledger(tmp_path / "l.db", encoder=Encoder(SiteIndex.from_config(cfg)))
    drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb)
    budget = drainer.budget
    # points of their own in the outbox (a reading's point is the reading itself: no outbox space)
    events = (GatewayStats(T0 + timedelta(seconds=i), {"polls": i, "outbox_depth": 5}) for i in itertools.count())
    while ledger.outbox_bytes < 0.85 * budget:
        ledger.add(next(events))
        ledger.flush()
    drainer.check_budget()
    assert any("outbox at 8" in r.getMessage() for r in caplog.records)
    assert ledger.outbox_bytes > 0.8 * budget  # a warning, nothing shed yet
    while ledger.outbox_bytes <= budget:
        ledger.add(next(events))
        ledger.flush()
    drainer.check_budget()
    assert ledger.outbox_bytes <= 0.9 * budget
    assert any("shed" in r.getMessage() for r in caplog.records)
    ledger.close()
