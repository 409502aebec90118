"""Grafana provisioning in deploy/grafana: both dashboard flavours, their data sources, and their
queries. Every InfluxQL query runs against a real InfluxDB 1.x holding points written the way the
gateway writes them; the Flux queries are only checked against the schema (no Flux engine here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import inspect
import json
import math
import re
import typing
import urllib.parse
from datetime import datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml

from gateway.config import Meter
from gateway.drivers.modbus import MeterStats
from gateway.events import Alert, AlertChange, DeviceStatus, GatewayStats, Reading
from gateway.runtime import Gateway
from gateway.sinks.drainer import Drainer
from gateway.sinks.schema import MEASUREMENTS, Encoder, SiteIndex

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
FLAVOURS = ("influxql", "flux")


def _generator():
    spec = importlib.util.spec_from_file_location("make_dashboards", ROOT / "tools" / "make_dashboards.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


GEN = _generator()
NAMES = ("meters", "fleet")
ALL_DASH = {(n, f): json.loads((GRAFANA / "dashboards" / f"{n}-{f}.json").read_text(encoding="utf-8"))
            for n in NAMES for f in FLAVOURS}
DASH = {f: ALL_DASH["meters", f] for f in FLAVOURS}
FLEET = {f: ALL_DASH["fleet", f] for f in FLAVOURS}
PROVISIONED = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "estate-gateway.yaml").read_text())
DS_BY_UID = {d["uid"]: d for d in PROVISIONED["datasources"]}


def panels(flavour: str, name: str = "meters") -> list[dict]:
    return [p for p in ALL_DASH[name, flavour]["panels"] if p["type"] != "row"]


# ---- the schema, read from the code and the meter models -----------------------------------

def _gateway_fields() -> set[str]:
    bus = {f.name for f in dataclasses.fields(MeterStats)} | {"meters", "online", "offline"}
    outbox = set(re.findall(r'"(\w+)":', inspect.getsource(Drainer.stats)))
    overall = set(re.findall(r'"(\w+)":', inspect.getsource(Gateway.self_metrics)))
    return bus | outbox | overall


MODEL_FIELDS = {p.stem: list(yaml.safe_load(p.read_text())["fields"])
                for p in sorted((ROOT / "edge_config" / "meter_models").glob("*.yaml"))}
SCHEMA = {
    "meter": {"tags": {"site", "meter", "building", "circuit"},
              "fields": set().union(*MODEL_FIELDS.values())},
    "device_status": {"tags": {"site", "device", "kind"}, "fields": {"online", "reason"}},
    "gateway": {"tags": {"site", "bus"}, "fields": _gateway_fields()},
    "alert": {"tags": {"site", "rule", "kind", "source", "severity"},
              "fields": {"id", "event", "state", "message", "message_en", "value"}},
}
SCHEMA_TAGS = set().union(*(m["tags"] for m in SCHEMA.values()))
FLUX_COLUMNS = {"_measurement", "_field", "_value", "_time", "_start", "_stop"}


def test_schema_used_here_is_the_gateways():
    assert {m.name for m in MEASUREMENTS} >= set(SCHEMA)
    assert {"polls", "ok", "failures", "timeouts", "exceptions", "crc_errors", "bad_answers", "bus_down", "overruns", "requests",
            "meters", "online", "offline", "readings_stored", "outbox_depth", "outbox_bytes", "outbox_age_s",
            "points_written", "write_failures", "points_rejected"} <= SCHEMA["gateway"]["fields"]
    assert {"voltage_v", "current_a", "power_kw", "energy_kwh", "voltage_l1_v", "current_l1_a"} <= SCHEMA["meter"]["fields"]
    assert "clock_trusted" in SCHEMA["gateway"]["fields"]
    # the alert measurement as the gateway's encoder writes it
    t = datetime(2026, 1, 5, 8, tzinfo=timezone.utc)
    alert = Alert("a1", "voltage", "threshold", "B01-stair", "critical", "active", "电压高", "high", t, t, value=246.0)
    row = Encoder(SiteIndex("wanhu", {}))(AlertChange(alert, "raised"))
    head, fields, _ = row.line.split(" ")
    assert {kv.split("=")[0] for kv in head.split(",")[1:]} == SCHEMA["alert"]["tags"]
    assert {kv.split("=")[0] for kv in re.split(r',(?=\w+=)', fields)} == SCHEMA["alert"]["fields"]


# ---- structure ------------------------------------------------------------------------------

def test_dashboards_are_what_the_generator_writes():
    assert sorted(p.name for p in (GRAFANA / "dashboards").glob("*.json")) == \
        sorted(f"{n}-{f}.json" for n in NAMES for f in FLAVOURS)
    for n in NAMES:
        for f in FLAVOURS:
            text = (GRAFANA / "dashboards" / f"{n}-{f}.json").read_text(encoding="utf-8")
            assert text == GEN.render(f, n), f"run python3 tools/make_dashboards.py ({n}-{f} is stale)"


def test_provisioned_datasources_have_stable_uids_and_secrets_from_the_environment():
    ql, fx = DS_BY_UID[GEN.DATASOURCES["influxql"]["uid"]], DS_BY_UID[GEN.DATASOURCES["flux"]["uid"]]
    assert ql["type"] == fx["type"] == "influxdb"
    assert ql["jsonData"]["version"] == "InfluxQL" and fx["jsonData"]["version"] == "Flux"
    assert ql["jsonData"]["dbName"] == "${INFLUX_DATABASE}"
    assert ql["user"].startswith("${") and ql["secureJsonData"]["password"].startswith("${")
    assert fx["jsonData"]["organization"].startswith("${") and fx["jsonData"]["defaultBucket"].startswith("${")
    assert fx["secureJsonData"]["token"].startswith("${")
    for ds in (ql, fx):
        assert ds["url"].startswith("${")
    provider = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "estate-gateway.yaml").read_text())
    (p,) = provider["providers"]
    assert p["type"] == "file" and p["options"]["path"].startswith("/")
    assert p["options"]["path"] in (GRAFANA / "README.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_every_panel_uses_a_provisioned_datasource_of_its_flavour(flavour, name):
    want = GEN.DATASOURCES[flavour]["uid"]
    version = "InfluxQL" if flavour == "influxql" else "Flux"
    assert DS_BY_UID[want]["jsonData"]["version"] == version
    for p in panels(flavour, name):
        assert p["datasource"]["uid"] == want, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == want, p["title"]
    for v in ALL_DASH[name, flavour]["templating"]["list"]:
        assert v["datasource"]["uid"] == want


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flavour", FLAVOURS)
def test_panel_ids_unique_and_panels_do_not_overlap(flavour, name):
    d = ALL_DASH[name, flavour]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, p["title"]
        cells |= mine
    assert d["schemaVersion"] == 39 and d["uid"] == GEN.DASHBOARDS[name]["uid"][flavour]
    assert len({ALL_DASH[k]["uid"] for k in ALL_DASH}) == len(ALL_DASH)


@pytest.mark.parametrize("name", NAMES)
def test_both_flavours_have_the_same_panels_and_variables(name):
    a, b = ALL_DASH[name, "influxql"], ALL_DASH[name, "flux"]
    assert [(p["id"], p["type"], p["title"], p["gridPos"]) for p in a["panels"]] == \
           [(p["id"], p["type"], p["title"], p["gridPos"]) for p in b["panels"]]
    keys = ("name", "label", "type", "multi", "includeAll", "allValue")
    assert [tuple(v[k] for k in keys) for v in a["templating"]["list"]] == \
           [tuple(v[k] for k in keys) for v in b["templating"]["list"]]
    assert [v["name"] for v in a["templating"]["list"]] == \
        {"meters": ["site", "circuit", "building", "meter"], "fleet": ["site"]}[name]
    for pa, pb in zip(panels("influxql", name), panels("flux", name)):
        assert [t["refId"] for t in pa["targets"]] == [t["refId"] for t in pb["targets"]]
        assert pa["fieldConfig"] == pb["fieldConfig"] and pa.get("transformations") == pb.get("transformations")


@pytest.mark.parametrize("name", NAMES)
def test_titles_are_chinese_with_english(name):
    d = ALL_DASH[name, "influxql"]
    for p in [d, *d["panels"]]:
        assert re.search(r"[\u4e00-\u9fff]", p["title"]) and re.search(r"[A-Za-z]{3}", p["title"]), p["title"]
    for v in d["templating"]["list"]:
        assert re.search(r"[\u4e00-\u9fff]", v["label"]) and re.search(r"[A-Za-z]", v["label"])


def test_voltage_panel_has_the_gb_t_12325_band():
    (p,) = [p for p in panels("influxql") if p["fieldConfig"]["defaults"].get("unit") == "volt"]
    steps = [s["value"] for s in p["fieldConfig"]["defaults"]["thresholds"]["steps"]]
    assert steps == [None, 198, 235.4] and 198 == round(220 * 0.9) and 235.4 == round(220 * 1.07, 1)
    assert p["fieldConfig"]["defaults"]["custom"]["thresholdsStyle"]["mode"] != "off"


def test_daylight_band_is_on_the_street_light_panel():
    for f in FLAVOURS:
        (anno,) = [a for a in DASH[f]["annotations"]["list"] if a.get("target", {}).get("queryType") == "timeRegions"]
        (pid,) = anno["filter"]["ids"]
        (p,) = [p for p in panels(f) if p["id"] == pid]
        assert "street_lighting" in p["targets"][0]["query"]
        region = anno["target"]["timeRegion"]
        assert region["timezone"] == "Asia/Shanghai" and region["cronExpr"] == "0 8 * * *"


@pytest.mark.parametrize("name", NAMES)
def test_variables_are_written_one_way_only(name):
    defined = set(GEN.DASHBOARDS[name]["variables"])
    for f in FLAVOURS:
        d = ALL_DASH[name, f]
        text = json.dumps([p.get("targets") for p in panels(f, name)] + [v["query"] for v in d["templating"]["list"]],
                          ensure_ascii=False)
        used = set(re.findall(r"\$\{(\w+):regex\}", text))
        assert used <= defined and used == defined
        # no other form of a template variable ($site, [[site]], ${site} without :regex)
        assert not re.search(r"\$(site|circuit|building|meter)\b|\[\[\w+\]\]|\$\{(site|circuit|building|meter)\}", text)
        for v in d["templating"]["list"]:
            assert v["includeAll"] and v["multi"] and v["allValue"] == ".*"


# ---- InfluxQL against a real InfluxDB 1.x -----------------------------------------------------

def grafana_regex(values: list[str] | None) -> str:
    """What Grafana puts for ${var:regex}: the custom all value (.*) for All, else escaped values."""
    if values is None:
        return ".*"
    esc = [re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\1", v) for v in values]
    return esc[0] if len(esc) == 1 else "(" + "|".join(esc) + ")"


ALL = {v: None for v in ("site", "circuit", "building", "meter")}


def substitute(q: str, selection: dict[str, list[str] | None] = ALL, time_filter: str = "time > now() - 6h") -> str:
    for name, values in {**ALL, **selection}.items():
        q = q.replace(f"${{{name}:regex}}", grafana_regex(values))
    q = q.replace("$timeFilter", time_filter).replace("$__interval", "1m")
    assert not re.search(r"\$[\w{]|\[\[", q), q  # every Grafana variable and macro was replaced
    return q


def run(influx, q: str) -> tuple[str | None, list[dict]]:
    """(error, series) of one InfluxQL statement."""
    params = urllib.parse.urlencode({"q": q, "db": influx.database, "epoch": "ms"})
    status, body = influx.http(f"/query?{params}", data=b"")
    try:
        doc = json.loads(body)
    except ValueError:
        return f"HTTP {status}: {body[:300]!r}", []
    if status != 200 or "error" in doc:
        return f"HTTP {status}: {doc.get('error')}", []
    (result,) = doc["results"]
    if "error" in result:
        return result["error"], []
    return None, result.get("series", [])


def rows(series: list[dict]) -> list[dict]:
    return [{**s.get("tags", {}), **dict(zip(s["columns"], v))} for s in series for v in s["values"]]


# The estate: (site, meter, model, circuit, building, bus). Two sites, so the site filter matters.
METERS = [
    ("wanhu", "B01-stair", "chint-ddsu666", "stairwell_lighting", "B01", "bus-n1"),
    ("wanhu", "B02-stair", "chint-ddsu666", "stairwell_lighting", "B02", "bus-n1"),  # offline 40 min ago
    ("wanhu", "B08-lift1", "chint-dtsu666", "lift", "B08", "bus-n1"),
    ("wanhu", "PUMP1", "chint-dtsu666", "pump", "", "bus-n2"),  # replaced 2 h ago: counter starts again
    ("wanhu", "MAIN-2", "eastron-sdm630", "main_supply", "", "bus-n2"),
    ("wanhu", "SL-N1", "chint-ddsu666", "street_lighting", "", "bus-guard"),
    ("wanhu", "GATE-E", "eastron-sdm120", "gate", "", "bus-guard"),  # offline for half an hour, back
    ("lvyuan", "B01-stair", "chint-ddsu666", "stairwell_lighting", "B01", "bus-1"),  # offline 1 h ago
]
SHANGHAI = ZoneInfo("Asia/Shanghai")
SPAN_MIN = 350  # readings every minute for the last 5 h 50 min (the queries look at 6 h)


def power_kw(circuit: str, ts: datetime, minute: int) -> float:
    night = not 6 <= ts.astimezone(SHANGHAI).hour < 18
    return {"street_lighting": 2.4 if night else 0.0,
            "stairwell_lighting": 0.3 if night else 0.05,
            "lift": 3.0 + 2.0 * math.sin(minute / 7),
            "pump": 5.5 if minute % 20 < 12 else 0.5,
            "gate": 0.1,
            "main_supply": 12.0 + 3.0 * math.sin(minute / 30)}[circuit]


def reading_values(fields: list[str], p: float, energy: float, minute: int, meter: str) -> tuple[dict, dict]:
    phases = 3 if any(f.startswith("voltage_l") for f in fields) else 1
    values, counters = {}, {}
    for f in fields:
        if re.fullmatch(r"voltage_l\d_l\d_v", f):
            values[f] = 380.0 + (minute % 5) * 0.3
        elif f.startswith("voltage"):
            phase = int(f[9]) if re.fullmatch(r"voltage_l\d_v", f) else 0
            swell = meter == "B01-stair" and 100 <= minute < 110  # an over-voltage episode
            values[f] = 246.0 if swell else 220.0 + 3.0 * math.sin(minute / 11) + phase
        elif f.startswith("current"):
            values[f] = round(p * 1000 / 220 / phases, 3)
        elif f == "power_kw":
            values[f] = round(p, 4)
        elif f.startswith("power_l"):
            values[f] = round(p / 3, 4)
        elif f.startswith("pf"):
            values[f] = 0.95
        elif f == "freq_hz":
            values[f] = 50.0
        elif f.endswith("_kwh"):
            share = 1 / 3 if re.fullmatch(r"energy_l\d_kwh", f) else 0.0 if f.startswith("export") else 1.0
            counters[f] = Decimal(f"{energy * share:.2f}")
            values[f] = float(counters[f])
        else:  # reactive_kvar, apparent_kva
            values[f] = round(p * 0.3, 4)
    return values, counters


def estate_lines(now: datetime) -> list[str]:
    """Line protocol for a few hours of the estate, encoded by the gateway's own encoder."""
    encoders = {site: Encoder(SiteIndex(site, {m: {"building": b, "circuit": c}
                                               for s, m, _, c, b, _ in METERS if s == site}))
                for site in {m[0] for m in METERS}}
    t0 = now.replace(second=0, microsecond=0) - timedelta(minutes=SPAN_MIN)
    out: list[tuple[str, object]] = []
    for site, meter, model, circuit, building, bus in METERS:
        out.append((site, DeviceStatus(meter, "meter", True, t0 - timedelta(seconds=30), "answering")))
        energy = 1000.0 + len(meter) * 37.5
        for minute in range(SPAN_MIN):
            ts = t0 + timedelta(minutes=minute)
            if meter == "PUMP1" and minute == SPAN_MIN - 120:
                energy = 3.0  # a new meter
            p = power_kw(circuit, ts, minute)
            energy += p / 60
            if meter == "B02-stair" and minute >= SPAN_MIN - 40:
                continue
            if meter == "GATE-E" and SPAN_MIN - 180 <= minute < SPAN_MIN - 150:
                continue
            if site == "lvyuan" and minute >= SPAN_MIN - 60:
                continue
            values, counters = reading_values(MODEL_FIELDS[model], p, energy, minute, meter)
            out.append((site, Reading(meter, ts, values, counters)))
    at = lambda m: t0 + timedelta(minutes=m, seconds=20)  # noqa: E731
    out += [
        ("wanhu", DeviceStatus("B02-stair", "meter", False, at(SPAN_MIN - 39), "no answer (timeout 0.5 s) x3")),
        ("wanhu", DeviceStatus("GATE-E", "meter", False, at(SPAN_MIN - 178), "exception 0x02 (illegal data address)")),
        ("wanhu", DeviceStatus("GATE-E", "meter", True, at(SPAN_MIN - 150), "answering")),
        ("wanhu", DeviceStatus("bus-guard", "bus", False, at(SPAN_MIN - 240), "[Errno 2] /dev/ttyUSB0: no such device")),
        ("wanhu", DeviceStatus("bus-guard", "bus", True, at(SPAN_MIN - 230), "connected")),
        ("lvyuan", DeviceStatus("B01-stair", "meter", False, at(SPAN_MIN - 58), "no answer (timeout 1.0 s) x3")),
    ]
    # Self metrics every minute; the gateway restarts 3 h ago, so every counter starts again at 0.
    buses = sorted({(s, b) for s, _, _, _, _, b in METERS})
    written = 0
    for minute in range(SPAN_MIN):
        ts = t0 + timedelta(minutes=minute, seconds=45)
        up = minute - (SPAN_MIN - 180) if minute >= SPAN_MIN - 180 else minute
        for site, bus in buses:
            n = sum(1 for s, _, _, _, _, b in METERS if (s, b) == (site, bus))
            offline = 1 if (bus == "bus-n1" and minute >= SPAN_MIN - 39) or (site == "lvyuan" and minute >= SPAN_MIN - 58) else 0
            stats = {f.name: 0 for f in dataclasses.fields(MeterStats)}
            stats.update(polls=2 * n * up, ok=2 * (n - offline) * up, failures=up // 10, timeouts=up // 10,
                         crc_errors=up // 45, bad_answers=up // 60, overruns=up // 90, requests=4 * n * up)
            out.append((site, GatewayStats(ts, {"meters": n, "online": n - offline, "offline": offline, **stats}, bus=bus)))
        outage = SPAN_MIN - 100 <= minute < SPAN_MIN - 80  # InfluxDB unreachable for 20 minutes
        written = 0 if up == 0 else written + (0 if outage else 60)
        for site in ("wanhu", "lvyuan"):
            out.append((site, GatewayStats(ts, {
                "readings_stored": 2 * 7 * up, "outbox_depth": 400 * (minute - (SPAN_MIN - 100)) if outage else 3,
                "outbox_bytes": 40_000 * (minute - (SPAN_MIN - 100)) if outage else 300,
                "outbox_age_s": 60.0 * (minute - (SPAN_MIN - 100)) + 0.5 if outage else 0.8,
                "points_written": written, "write_failures": up // 100 + (minute - (SPAN_MIN - 100) if outage else 0),
                "points_rejected": 1 if up > 30 else 0})))
    lines = [encoders[site](event).line for site, event in out]
    return [ln for ln in lines if ln]


@pytest.fixture
def estate(influx1):
    lines = estate_lines(datetime.now(timezone.utc))
    for i in range(0, len(lines), 5000):
        status, body = influx1.http(f"/write?db={influx1.database}&precision=ms",
                                    "\n".join(lines[i:i + 5000]).encode())
        assert status == 204, body
    return influx1


def influxql_targets(names=("meters",)):
    for n in names:
        for p in panels("influxql", n):
            for t in p["targets"]:
                yield pytest.param(p, t, id=f"{n}-{p['id']}{t['refId']}" if n != "meters" else f"{p['id']}{t['refId']}")


SELECTIONS = {
    "all": ALL,
    "wanhu": {"site": ["wanhu"]},
    "two-circuits": {"site": ["wanhu"], "circuit": ["stairwell_lighting", "pump"]},
    "one-building": {"site": ["wanhu"], "building": ["B01"]},
    "one-meter": {"site": ["wanhu"], "meter": ["B08-lift1"]},
}


@pytest.mark.parametrize("panel,target", list(influxql_targets()))
def test_every_influxql_query_runs_and_shows_data(estate, panel, target):
    for name, sel in SELECTIONS.items():
        err, series = run(estate, substitute(target["query"], sel))
        assert err is None, f"{panel['title']} [{name}]: {err}\n{substitute(target['query'], sel)}"
        if name == "all":
            assert series, f"{panel['title']}: no data\n{substitute(target['query'])}"
            for r in rows(series):
                for k, v in r.items():
                    assert not (isinstance(v, float) and math.isnan(v)), (panel["title"], r)


def query_of(title_part: str, ref: str = "A") -> str:
    (p,) = [p for p in panels("influxql") if title_part in p["title"]]
    return next(t["query"] for t in p["targets"] if t["refId"] == ref)


def ask(influx, title_part: str, ref: str = "A", **sel) -> list[dict]:
    err, series = run(influx, substitute(query_of(title_part, ref), sel))
    assert err is None, err
    return rows(series)


def test_offline_panels_show_devices_offline_now_with_their_reason(estate):
    assert ask(estate, "Meters offline now", site=["wanhu"])[0]["offline"] == 1
    assert ask(estate, "Meters offline now")[0]["offline"] == 2  # both estates
    table = ask(estate, "Devices offline now", site=["wanhu"])
    assert [(r["device"], r["kind"], r["reason"]) for r in table] == \
           [("B02-stair", "meter", "no answer (timeout 0.5 s) x3")]
    # GATE-E and the bus came back: not offline any more; the other estate's meter is filtered out


def test_power_by_circuit_sums_meters_and_street_lights_follow_the_day(estate):
    by_circuit = {r["circuit"] for r in ask(estate, "Power by circuit", site=["wanhu"])}
    # MAIN-2 is an SDM630: its power_kw is the total system power register
    assert by_circuit == {"stairwell_lighting", "lift", "pump", "street_lighting", "gate", "main_supply"}
    rows_ = ask(estate, "Power by circuit", circuit=["pump"])
    assert rows_ and all(0.5 <= r["power_kw"] <= 5.5 for r in rows_)
    street = ask(estate, "Street-light power", site=["wanhu"])
    assert {r["meter"] for r in street} == {"SL-N1"}
    for r in street:
        hour = datetime.fromtimestamp(r["time"] / 1000, SHANGHAI).hour
        assert r["power_kw"] == (0.0 if 6 <= hour < 18 else 2.4)


def test_energy_per_hour_is_never_negative_and_the_replaced_meter_counts_no_jump(estate):
    per_circuit = ask(estate, "Energy per hour by circuit", site=["wanhu"])
    assert {r["circuit"] for r in per_circuit} >= {"stairwell_lighting", "lift", "pump", "main_supply"}
    assert all(r["used_kwh"] >= 0 for r in per_circuit)
    pump = [r["used_kwh"] for r in per_circuit if r["circuit"] == "pump"]
    assert pump and max(pump) <= 5.5 + 1e-6  # the pump draws at most 5.5 kW: no counter jump counted
    by_building = ask(estate, "Energy per hour by building", site=["wanhu"])
    assert {r["building"] for r in by_building} == {"B01", "B02", "B08"}  # estate-wide meters left out
    assert all(r["used_kwh"] >= 0 for r in by_building)
    assert {r["building"] for r in ask(estate, "Energy per hour by building", site=["wanhu"], building=["B01"])} == {"B01"}
    assert {(r["site"], r["building"]) for r in ask(estate, "Energy per hour by building", building=["B01"])} == \
           {("wanhu", "B01"), ("lvyuan", "B01")}


def test_counter_going_backwards_is_an_alarm_row(estate):
    table = ask(estate, "Energy counter went backwards")
    assert [(r["site"], r["meter"]) for r in table] == [("wanhu", "PUMP1")]
    assert table[0]["change_kwh"] < -1000


def test_voltage_and_current_cover_single_and_three_phase_meters(estate):
    single = {r["meter"] for r in ask(estate, "Voltage per meter", "A", site=["wanhu"])}
    three = ask(estate, "Voltage per meter", "B", site=["wanhu"])
    assert single == {"B01-stair", "B02-stair", "SL-N1", "GATE-E"}
    assert {r["meter"] for r in three} == {"B08-lift1", "PUMP1", "MAIN-2"}
    assert all(r["voltage_l1_v"] and r["voltage_l3_v"] for r in three)
    assert max(r["voltage_v"] for r in ask(estate, "Voltage per meter", "A", meter=["B01-stair"], site=["wanhu"])) > 242
    assert {r["meter"] for r in ask(estate, "Current per meter", "B", site=["wanhu"])} == {"B08-lift1", "PUMP1", "MAIN-2"}


def test_gateway_health_rates_survive_a_restart(estate):
    polls = ask(estate, "Polls per second", site=["wanhu"])
    assert {r["bus"] for r in polls} == {"bus-n1", "bus-n2", "bus-guard"}
    assert all(r["polls"] >= 0 for r in polls)
    assert max(r["polls"] for r in polls if r["bus"] == "bus-n1") == pytest.approx(2 * 3 / 60)
    errors = ask(estate, "Failures, timeouts", site=["wanhu"])
    assert all(r[k] >= 0 for r in errors for k in ("failures", "timeouts", "crc_errors", "bad_answers", "overruns"))
    online = ask(estate, "Meters online and offline per bus", site=["wanhu"])
    assert max(r["offline"] for r in online if r["bus"] == "bus-n1") == 1
    depth = ask(estate, "Outbox depth", site=["wanhu"])
    assert max(r["outbox_depth"] for r in depth) >= 7000 and max(r["outbox_bytes"] for r in depth) >= 700_000
    assert max(r["outbox_age_s"] for r in ask(estate, "Outbox age", site=["wanhu"])) > 1000
    written = ask(estate, "Points written and rejected", site=["wanhu"])
    assert all(r["points_written"] >= 0 for r in written) and max(r["points_written"] for r in written) == 60
    assert all(r["write_failures"] >= 0 for r in ask(estate, "Write failures", site=["wanhu"]))


def variable_values(influx, name: str, **sel) -> set[str]:
    (v,) = [v for v in DASH["influxql"]["templating"]["list"] if v["name"] == name]
    err, series = run(influx, substitute(v["query"], sel))
    assert err is None, err
    return {r["value"] for r in rows(series)}


def test_influxql_variables_cascade(estate):
    assert variable_values(estate, "site") == {"wanhu", "lvyuan"}
    assert variable_values(estate, "circuit", site=["wanhu"]) == \
           {"stairwell_lighting", "lift", "pump", "main_supply", "street_lighting", "gate"}
    assert variable_values(estate, "building", site=["wanhu"]) == {"B01", "B02", "B08"}
    assert variable_values(estate, "building", site=["wanhu"], circuit=["lift"]) == {"B08"}
    # "All" buildings keeps the estate-wide meters, which have no building tag
    assert variable_values(estate, "meter", site=["wanhu"]) == {m for s, m, *_ in METERS if s == "wanhu"}
    assert variable_values(estate, "meter", site=["wanhu"], building=["B01", "B02"]) == {"B01-stair", "B02-stair"}


# ---- InfluxQL and Flux: names that exist --------------------------------------------------------

def influxql_names(q: str) -> tuple[set[str], set[str], set[str]]:
    """(measurements, quoted identifiers, aliases) of an InfluxQL query."""
    measurements = set(re.findall(r'FROM "(\w+)"', q))
    aliases = set(re.findall(r'AS "(\w+)"', q))
    idents = set(re.findall(r'"(\w+)"', q)) - measurements
    return measurements, idents, aliases


@pytest.mark.parametrize("panel,target", list(influxql_targets(NAMES)))
def test_influxql_names_only_fields_and_tags_of_the_schema(panel, target):
    measurements, idents, aliases = influxql_names(target["query"])
    (m,) = measurements
    known = SCHEMA[m]["tags"] | SCHEMA[m]["fields"]
    assert idents - aliases <= known, (panel["title"], idents - aliases - known)
    assert aliases <= known | {"used_kwh", "change_kwh", "offline", "reporting", "month_kwh", *GEN.SEVERITIES}, \
        panel["title"]


FLUX_NOW = "range(start: 0)"
FLUX_WINDOW = "range(start: v.timeRangeStart, stop: v.timeRangeStop)"
FLUX_RECENT = f"range(start: -{GEN.REPORTING_WINDOW})"
IQ_RECENT = f"time > now() - {GEN.REPORTING_WINDOW}"


def flux_pairs():
    for n in NAMES:
        for pq, pf in zip(panels("influxql", n), panels("flux", n)):
            for tq, tf in zip(pq["targets"], pf["targets"]):
                yield pytest.param(pf["title"], tq["query"], tf["query"],
                                   id=f"{n}-{pf['id']}{tf['refId']}" if n != "meters" else f"{pf['id']}{tf['refId']}")


def test_series_are_named_alike_in_both_flavours():
    """InfluxQL names series with an alias ($tag_meter $col); Flux puts the same name in _field."""
    for pq, pf in zip(panels("influxql"), panels("flux")):
        for tq, tf in zip(pq["targets"], pf["targets"]):
            if pq["type"] != "timeseries":
                assert "alias" not in tq and "keep(columns: [\"_time\", \"_value\", \"_field\"])" not in tf["query"]
                continue
            parts = ["_field" if a == "$col" else a.removeprefix("$tag_") for a in tq["alias"].split()]
            assert all(a == "_field" or a in SCHEMA_TAGS for a in parts), tq["alias"]
            (expr,) = re.findall(r"\{r with _field: ([^}]*)\}", tf["query"])
            assert re.findall(r"r\.(\w+)", expr) == parts, pq["title"]
            assert tf["query"].endswith('\n  |> keep(columns: ["_time", "_value", "_field"])'), pq["title"]


def test_circuit_series_are_shown_with_their_chinese_names():
    circuits = set(typing.get_args(Meter.model_fields["circuit"].annotation))
    assert set(GEN.CIRCUIT_NAMES) == circuits
    for p in panels("influxql"):
        if p["targets"][0].get("alias") == "$tag_circuit":
            names = {o["matcher"]["options"]: o["properties"][0]["value"] for o in p["fieldConfig"]["overrides"]}
            assert set(names) == circuits and all(re.search(r"[\u4e00-\u9fff]", v) for v in names.values())


def _balanced(q: str) -> bool:
    stack, pairs = [], {")": "(", "]": "[", "}": "{"}
    for ch in re.sub(r'"[^"]*"|/\^[^/]*\$/|//[^\n]*', "", q):
        if ch in "([{":
            stack.append(ch)
        elif ch in pairs:
            if not stack or stack.pop() != pairs[ch]:
                return False
    return not stack


@pytest.mark.parametrize("title,influxql,flux", list(flux_pairs()))
def test_flux_query_is_consistent_with_the_schema_and_its_influxql_twin(title, influxql, flux):
    """Static checks only: the Flux queries are never executed (no Flux engine in these tests)."""
    assert flux.startswith("from(bucket: v.defaultBucket)\n"), title
    assert _balanced(flux), title
    for line in flux.splitlines()[1:]:
        assert line.startswith("  |> ") or line.startswith("  //"), (title, line)
    # the time range: the dashboard's, the last few minutes (as InfluxQL's), or all history for "now"
    # panels exactly where InfluxQL has no time condition
    if "$timeFilter" in influxql:
        assert FLUX_WINDOW in flux and FLUX_NOW not in flux and "now()" not in influxql, title
    elif IQ_RECENT in influxql:
        assert FLUX_RECENT in flux and FLUX_NOW not in flux and "v.timeRangeStart" not in flux, title
    else:
        assert "time " not in influxql, title
        assert FLUX_NOW in flux and "v.timeRangeStart" not in flux, title
    (m,) = set(re.findall(r'r\._measurement == "(\w+)"', flux))
    assert m in SCHEMA
    fields = set(re.findall(r'r\._field == "(\w+)"', flux))
    assert fields and fields <= SCHEMA[m]["fields"], (title, fields - SCHEMA[m]["fields"])
    # the same measurement and fields as the InfluxQL twin
    q_meas, q_idents, _ = influxql_names(influxql)
    assert q_meas == {m} and q_idents & SCHEMA[m]["fields"] == fields, title
    # the same template variables
    assert set(re.findall(r"\$\{(\w+):regex\}", flux)) == set(re.findall(r"\$\{(\w+):regex\}", influxql)), title
    # every column named is a tag, a field (after pivot) or a Flux column
    known = SCHEMA[m]["tags"] | SCHEMA[m]["fields"] | FLUX_COLUMNS
    columns = set(re.findall(r"\br\.(\w+)", flux))
    for lst in re.findall(r"columns: \[([^\]]*)\]|rowKey: \[([^\]]*)\]", flux):
        columns |= set(re.findall(r'"(\w+)"', "".join(lst)))
    assert columns <= known, (title, columns - known)
    # per-bus and overall gateway points are told apart by the bus tag, as in InfluxQL
    if m == "gateway":
        assert ("not exists r.bus" in flux) == ("\"bus\" = ''" in influxql), title
    # energy counters: a drop is never counted as consumption
    # an alarm is open when its newest state is not cleared, in both languages
    if m == "alert":
        assert "last(\"state\")" in influxql and "\"state\" != 'cleared'" in influxql, title
        assert '|> last()' in flux and 'r._value != "cleared"' in flux, title
    if "energy_kwh" in fields:
        assert "nonNegative" not in re.sub(r"//[^\n]*", "", flux), title
        assert "|> filter(fn: (r) => r._value >= 0.0)" in flux or "|> filter(fn: (r) => r._value < 0.0)" in flux
        assert ("non_negative_difference" in influxql) == (">= 0.0" in flux), title


def test_flux_variables_read_tag_values_of_the_meter_measurement():
    for v in DASH["flux"]["templating"]["list"]:
        q = v["query"]
        assert q.startswith('import "influxdata/influxdb/schema"\n'), v["name"]
        assert f'schema.tagValues(bucket: v.defaultBucket, tag: "{v["name"]}"' in q
        assert 'r._measurement == "meter"' in q and "start: v.timeRangeStart" in q and _balanced(q)
        assert set(re.findall(r"\br\.(\w+)", q)) <= SCHEMA["meter"]["tags"] | FLUX_COLUMNS
        assert v["name"] in SCHEMA["meter"]["tags"]


# ---- the fleet overview against a real InfluxDB 1.x ---------------------------------------------
# Three estates as head office's central InfluxDB holds them, written by the gateway's encoder:
# wanhu reports now, its main supply counts a steady 1 kWh per 10 minutes; lvyuan went silent
# 20 minutes ago and its main supply meter was replaced; hexie reports, has no main supply meter
# and only cleared alarms.

def _alarm(aid: str, rule: str, source: str, severity: str, state: str, at: datetime, what: str) -> AlertChange:
    return AlertChange(Alert(aid, rule, "threshold", source, severity, state, "告警", "alarm", at, at), what)


def fleet_lines(now: datetime, month_start: datetime) -> list[str]:
    sites = ("wanhu", "lvyuan", "hexie")
    encoders = {s: Encoder(SiteIndex(s, {f"{s}-MAIN": {"building": "", "circuit": "main_supply"},
                                         f"{s}-B01": {"building": "B01", "circuit": "stairwell_lighting"}}))
                for s in sites}
    out: list[tuple[str, object]] = []
    for minute in range(60):                       # self metrics every minute for the last hour
        ts = now - timedelta(minutes=minute, seconds=10)
        for site in sites:
            if site == "lvyuan" and minute < 20:
                continue
            out.append((site, GatewayStats(ts, {"clock_trusted": 1, "outbox_depth": 1200 if site == "lvyuan" else 3,
                                                "outbox_age_s": 900.0 if site == "lvyuan" else 0.8})))
            out.append((site, GatewayStats(ts, {"polls": minute}, bus="b")))  # per bus: not the overall row
    # main supply: one reading every 10 minutes from 2 h before the month until now
    t = month_start - timedelta(hours=2)
    energy = {"wanhu": Decimal("50000.00"), "lvyuan": Decimal("30000.00")}
    while t <= now:
        for site in energy:
            if site == "lvyuan" and abs(t - (month_start + timedelta(hours=2, minutes=30))) < timedelta(minutes=5):
                energy[site] = Decimal("0.50")     # the new meter
            energy[site] += 1
            out.append((site, Reading(f"{site}-MAIN", t, {"energy_kwh": float(energy[site])},
                                      {"energy_kwh": energy[site]})))
        out.append(("wanhu", Reading("wanhu-B01", t, {"energy_kwh": 900.0}, {"energy_kwh": Decimal("900.00")})))
        t += timedelta(minutes=10)
    at = lambda m: now - timedelta(minutes=m)  # noqa: E731
    out += [
        ("wanhu", _alarm("v1", "voltage", "wanhu-B01", "critical", "active", at(50), "raised")),
        ("wanhu", _alarm("p1", "power", "wanhu-MAIN", "warning", "active", at(40), "raised")),
        ("wanhu", _alarm("p1", "power", "wanhu-MAIN", "warning", "cleared", at(30), "cleared")),
        ("wanhu", _alarm("p2", "power", "wanhu-MAIN", "warning", "active", at(20), "raised")),    # again: open
        ("wanhu", _alarm("p2", "power", "wanhu-MAIN", "warning", "acknowledged", at(10), "acknowledged")),
        ("wanhu", _alarm("o1", "offline", "wanhu-B01", "warning", "active", at(9), "raised")),
        ("lvyuan", _alarm("d1", "door", "gate-s", "info", "active", at(45), "raised")),
        ("hexie", _alarm("v9", "voltage", "hexie-B01", "critical", "active", at(55), "raised")),
        ("hexie", _alarm("v9", "voltage", "hexie-B01", "critical", "cleared", at(5), "cleared")),
    ]
    return [ln for ln in (encoders[site](event).line for site, event in out) if ln]


@pytest.fixture
def fleet(influx1):
    now = datetime.now(timezone.utc).replace(microsecond=0)
    # "this month" begins 6 h ago on a whole hour: Grafana's now/M, made independent of the test's date
    month_start = now.replace(minute=0, second=0) - timedelta(hours=6)
    status, body = influx1.http(f"/write?db={influx1.database}&precision=ms",
                                "\n".join(fleet_lines(now, month_start)).encode())
    assert status == 204, body
    return influx1, now, month_start


def fleet_table(fleet, **sel) -> dict[str, dict]:
    """The fleet table as Grafana builds it: every query's rows joined on `site`."""
    influx, now, month_start = fleet
    joined: dict[str, dict] = {}
    (panel,) = panels("influxql", "fleet")
    time_filter = f"time >= {int(month_start.timestamp() * 1000)}ms and time <= {int(now.timestamp() * 1000) + 1000}ms"
    for t in panel["targets"]:
        err, series = run(influx, substitute(t["query"], sel, time_filter))
        assert err is None, f"{t['refId']}: {err}"
        for r in rows(series):
            joined.setdefault(r["site"], {}).update({k: v for k, v in r.items() if k in GEN.FLEET_COLUMNS})
    return joined


def test_fleet_overview_shows_each_estate(fleet):
    _, now, month_start = fleet
    table = fleet_table(fleet)
    assert set(table) == {"wanhu", "lvyuan", "hexie"}
    wanhu, lvyuan, hexie = table["wanhu"], table["lvyuan"], table["hexie"]
    # up: self metrics in the last 5 minutes (one a minute); lvyuan has been silent for 20
    assert 4 <= wanhu["reporting"] <= 6 and 4 <= hexie["reporting"] <= 6 and "reporting" not in lvyuan
    # the latest self metrics, however old
    assert (lvyuan["clock_trusted"], lvyuan["outbox_depth"], lvyuan["outbox_age_s"]) == (1, 1200, 900.0)
    assert (wanhu["clock_trusted"], wanhu["outbox_depth"]) == (1, 3)
    # open alarms by severity: newest state per (rule, source); a cleared one raised again is open
    assert (wanhu.get("critical"), wanhu.get("warning"), wanhu.get("info")) == (1, 2, None)
    assert (lvyuan.get("critical"), lvyuan.get("warning"), lvyuan.get("info")) == (None, None, 1)
    assert not {"critical", "warning", "info"} & set(hexie)
    # this month: 1 kWh per 10 minutes since the last reading of the month's first hour (the
    # readings before the month and the stairwell meter are not counted)
    last = month_start + timedelta(minutes=10 * ((now - month_start) // timedelta(minutes=10)))
    want = (last - (month_start + timedelta(minutes=50))) // timedelta(minutes=10)
    assert wanhu["month_kwh"] == pytest.approx(want)
    # the replaced meter: its counter going down counts nothing, never -30,000 or +30,000
    assert 0 < lvyuan["month_kwh"] <= want and "month_kwh" not in hexie


def test_fleet_overview_follows_the_site_variable(fleet):
    assert set(fleet_table(fleet, site=["wanhu"])) == {"wanhu"}
    assert set(fleet_table(fleet, site=["wanhu", "hexie"])) == {"wanhu", "hexie"}
    influx = fleet[0]
    (v,) = FLEET["influxql"]["templating"]["list"]
    err, series = run(influx, substitute(v["query"]))
    assert err is None and {r["value"] for r in rows(series)} == {"wanhu", "lvyuan", "hexie"}
