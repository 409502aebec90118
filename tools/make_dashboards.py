"""Writes deploy/grafana/dashboards/{meters,fleet}-{influxql,flux}.json from one description each.

meters: one estate's public meters, devices and gateway health; fleet: head office's overview,
one row per estate, from the company's central InfluxDB (deploy/headoffice/README.md).

Both files show the same panels with the same variables; only the queries differ (InfluxQL for
InfluxDB 1.x and 3.x's InfluxQL endpoint, Flux for InfluxDB 2.x). Edit the description here and
run `python3 tools/make_dashboards.py`; tests/test_dashboards.py checks that the JSON files are
what this script writes, runs every InfluxQL query against a real InfluxDB 1.x and checks the
Flux queries against the schema (they are not executed: there is no Flux engine in the tests).

Conventions every query follows (the test substitutes them the way Grafana would):
- template variables are written `${name:regex}` inside `/^...$/`; "All" is the custom all value
  `.*`, so meters without a `building` tag (estate-wide meters) are kept when building is "All";
- InfluxQL uses `$timeFilter` and `$__interval`; Flux uses `v.defaultBucket` (the datasource's
  default bucket), `v.timeRangeStart`/`v.timeRangeStop` and `v.windowPeriod`;
- "now" panels (devices offline) read the whole history, because a status point is written only
  when a device changes state: a meter that went offline last week is still offline now.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "deploy" / "grafana" / "dashboards"

DATASOURCES = {
    "influxql": {"type": "influxdb", "uid": "estate-gateway-influxql"},
    "flux": {"type": "influxdb", "uid": "estate-gateway-flux"},
}

# Daylight all year at the reference site (44.15 N, 125.83 E, Asia/Shanghai): the latest sunrise
# is about 07:11 and the earliest sunset about 15:58, so 08:00-15:30 is day on every date.
DAYLIGHT = {"from": "08:00", "to": "15:30", "cron": "0 8 * * *", "duration": "7h30m",
            "timezone": "Asia/Shanghai"}

# GB/T 12325-2008: 220 V single-phase supply may deviate +7 % / -10 % (198-235.4 V); the same
# limits the rules engine uses for the example site.
VOLTAGE_LOW, VOLTAGE_HIGH = 198, 235.4

VARIABLES = ["site", "circuit", "building", "meter"]
VARIABLE_LABELS = {"site": "小区 Site", "circuit": "回路 Circuit", "building": "楼栋 Building",
                   "meter": "电表 Meter"}

# ---- query fragments -----------------------------------------------------------------------

def _re(var: str) -> str:
    return f"/^${{{var}:regex}}$/"


IQ_SITE = f'"site" =~ {_re("site")}'
IQ_METERS = (f'{IQ_SITE} AND "circuit" =~ {_re("circuit")} AND "building" =~ {_re("building")} '
             f'AND "meter" =~ {_re("meter")}')

FX_FROM = "from(bucket: v.defaultBucket)\n  |> range(start: v.timeRangeStart, stop: v.timeRangeStop)"
FX_FROM_ALL_TIME = "from(bucket: v.defaultBucket)\n  |> range(start: 0)"
FX_SITE = f"r.site =~ {_re('site')}"
# A meter without a building tag (estate-wide) has no `building` column: treat it as "" so
# that "All" (.*) keeps it and a chosen building drops it, as in InfluxQL.
FX_METERS = (f"  |> filter(fn: (r) => {FX_SITE} and r.circuit =~ {_re('circuit')} "
             f"and r.meter =~ {_re('meter')})\n"
             f"  |> filter(fn: (r) => (if exists r.building then r.building else \"\") =~ {_re('building')})")


def fx_fields(measurement: str, fields: list[str]) -> str:
    ors = " or ".join(f'r._field == "{f}"' for f in fields)
    if len(fields) > 1:
        ors = f"({ors})"
    return f'  |> filter(fn: (r) => r._measurement == "{measurement}" and {ors})'


def iq_select(fn: str, fields: list[str], extra: str = "") -> str:
    return ", ".join(f'{fn}("{f}"{extra}) AS "{f}"' for f in fields)


def iq_meter_series(fields: list[str], fn: str = "mean") -> str:
    return (f'SELECT {iq_select(fn, fields)} FROM "meter" WHERE {IQ_METERS} AND $timeFilter '
            f'GROUP BY time($__interval), "site", "meter" fill(none)')


def fx_meter_series(fields: list[str], fn: str = "mean") -> str:
    return "\n".join([FX_FROM, fx_fields("meter", fields), FX_METERS,
                      f"  |> aggregateWindow(every: v.windowPeriod, fn: {fn}, createEmpty: false)"])


def iq_energy_per_hour(by: list[str], extra_where: str = "") -> str:
    inner_by = ", ".join(f'"{c}"' for c in dict.fromkeys(["site", "meter", *by]))
    outer_by = ", ".join(f'"{c}"' for c in by)
    inner = (f'SELECT non_negative_difference(last("energy_kwh")) AS "used_kwh" FROM "meter" '
             f'WHERE {IQ_METERS}{extra_where} AND $timeFilter GROUP BY time(1h), {inner_by}')
    return (f'SELECT sum("used_kwh") AS "used_kwh" FROM ({inner}) WHERE $timeFilter '
            f'GROUP BY time(1h), {outer_by} fill(none)')


def fx_energy_per_hour(by: list[str], extra_filter: str = "") -> str:
    cols = ", ".join(f'"{c}"' for c in by)
    return "\n".join([
        FX_FROM, fx_fields("meter", ["energy_kwh"]), FX_METERS, *([extra_filter] if extra_filter else []),
        '  |> aggregateWindow(every: 1h, fn: last, createEmpty: false, timeSrc: "_start")',
        "  |> difference()",
        "  // a counter that went down is an alarm (see the panel below), never consumption: drop it.",
        "  // (not difference(nonNegative: true): some Flux versions then count the new reading as used)",
        "  |> filter(fn: (r) => r._value >= 0.0)",
        f'  |> group(columns: [{cols}, "_time"])',
        "  |> sum()",
        f"  |> group(columns: [{cols}])",
        '  |> sort(columns: ["_time"])',
    ])


def iq_gateway_rate(fields: list[str], unit: str) -> str:
    sel = ", ".join(f'non_negative_derivative(last("{f}"), {unit}) AS "{f}"' for f in fields)
    return (f'SELECT {sel} FROM "gateway" WHERE {IQ_SITE} AND "bus" != \'\' AND $timeFilter '
            f'GROUP BY time($__interval), "site", "bus" fill(none)')


def fx_gateway(fields: list[str], per_bus: bool, tail: list[str]) -> str:
    bus = "exists r.bus" if per_bus else "not exists r.bus"
    return "\n".join([FX_FROM, fx_fields("gateway", fields),
                      f"  |> filter(fn: (r) => {FX_SITE} and {bus})",
                      "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)", *tail])


def fx_gateway_rate(fields: list[str], unit: str) -> str:
    # Counters restart from 0 when the gateway restarts: nonNegative treats that as a restart.
    return fx_gateway(fields, True, [f"  |> derivative(unit: {unit}, nonNegative: true)"])


def iq_overall(fields: list[str]) -> str:
    return (f'SELECT {iq_select("last", fields)} FROM "gateway" WHERE {IQ_SITE} AND "bus" = \'\' '
            f'AND $timeFilter GROUP BY time($__interval), "site" fill(none)')


def iq_overall_rate(fields: list[str], unit: str) -> str:
    sel = ", ".join(f'non_negative_derivative(last("{f}"), {unit}) AS "{f}"' for f in fields)
    return (f'SELECT {sel} FROM "gateway" WHERE {IQ_SITE} AND "bus" = \'\' AND $timeFilter '
            f'GROUP BY time($__interval), "site" fill(none)')


# ---- the panels ------------------------------------------------------------------------------
# Each panel: title, type, size (w, h), queries [{refId, influxql, flux, format}], and the Grafana
# options that are the same for both flavours. Rows are {"row": title}.

# Series named by circuit get the Chinese name the staff use (the tag values stay English).
CIRCUIT_NAMES = {"stairwell_lighting": "楼道照明", "street_lighting": "路灯", "lift": "电梯", "pump": "水泵",
                 "gate": "门闸", "main_supply": "总进线", "other": "其他"}
CIRCUIT_NAMES_OVERRIDES = [
    {"matcher": {"id": "byName", "options": tag},
     "properties": [{"id": "displayName", "value": f"{zh} {tag}"}]} for tag, zh in CIRCUIT_NAMES.items()]

STACKED = {"stacking": {"mode": "normal", "group": "A"}, "fillOpacity": 40}
BARS = {"drawStyle": "bars", "fillOpacity": 80, "stacking": {"mode": "normal", "group": "A"}}
TABLE_RENAMES = {"Time": "时间 Time", "time": "时间 Time", "_time": "时间 Time", "site": "小区 Site",
                 "device": "设备 Device", "kind": "类型 Kind", "reason": "原因 Reason",
                 "meter": "电表 Meter", "change_kwh": "变化 Change (kWh)"}

OFFLINE_COUNT = {
    "influxql": (f'SELECT count("online") AS "offline" FROM (SELECT last("online") AS "online" FROM "device_status" '
                 f'WHERE {IQ_SITE} AND "kind" = \'meter\' GROUP BY "site", "device") WHERE "online" = false'),
    "flux": "\n".join([FX_FROM_ALL_TIME, fx_fields("device_status", ["online"]),
                       f'  |> filter(fn: (r) => {FX_SITE} and r.kind == "meter")',
                       "  |> last()",
                       "  |> filter(fn: (r) => r._value == false)",
                       "  |> group()",
                       "  |> count()"]),
}
OFFLINE_TABLE = {
    "influxql": (f'SELECT "online", "reason" FROM (SELECT last("online") AS "online", "reason" FROM "device_status" '
                 f'WHERE {IQ_SITE} GROUP BY "site", "device", "kind") WHERE "online" = false '
                 f'GROUP BY "site", "device", "kind"'),
    "flux": "\n".join([FX_FROM_ALL_TIME, fx_fields("device_status", ["online", "reason"]),
                       f"  |> filter(fn: (r) => {FX_SITE})",
                       "  |> last()",
                       '  |> pivot(rowKey: ["_time"], columnKey: ["_field"], valueColumn: "_value")',
                       "  |> filter(fn: (r) => r.online == false)",
                       "  |> group()",
                       '  |> keep(columns: ["_time", "site", "device", "kind", "reason"])',
                       '  |> sort(columns: ["_time"], desc: true)']),
}
COUNTER_BACKWARDS = {
    "influxql": (f'SELECT "change_kwh" FROM (SELECT difference(last("energy_kwh")) AS "change_kwh" FROM "meter" '
                 f'WHERE {IQ_METERS} AND $timeFilter GROUP BY time($__interval), "site", "meter") '
                 f'WHERE "change_kwh" < 0 AND $timeFilter GROUP BY "site", "meter"'),
    "flux": "\n".join([FX_FROM, fx_fields("meter", ["energy_kwh"]), FX_METERS,
                       "  |> aggregateWindow(every: v.windowPeriod, fn: last, createEmpty: false)",
                       "  |> difference()",
                       "  |> filter(fn: (r) => r._value < 0.0)",
                       "  |> group()",
                       "  |> map(fn: (r) => ({_time: r._time, site: r.site, meter: r.meter, change_kwh: r._value}))",
                       '  |> sort(columns: ["_time"], desc: true)']),
}

PANELS: list[dict] = [
    {"row": "概览 Overview"},
    {
        "title": "离线电表 Meters offline now", "type": "stat", "w": 6, "h": 6,
        "description": "此刻离线的电表数(每块表最新一条 device_status 为 online=false)。"
                       "Meters whose latest device_status says offline, whenever that was.",
        "unit": "none", "noValue": "0",
        "thresholds": [("green", None), ("red", 1)],
        "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                    "colorMode": "background", "graphMode": "none", "textMode": "value",
                    "justifyMode": "center", "orientation": "auto"},
        "queries": [{"refId": "A", "format": "table", **OFFLINE_COUNT}],
    },
    {
        "title": "离线设备及原因 Devices offline now", "type": "table", "w": 18, "h": 6,
        "description": "最新状态为离线的电表和总线,时间为离线开始时间,原因来自网关。"
                       "Meters and buses whose latest status is offline: since when and why.",
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "transformations": [{"id": "organize", "options": {
            "excludeByName": {"online": True}, "renameByName": TABLE_RENAMES}}],
        "queries": [{"refId": "A", "format": "table", **OFFLINE_TABLE}],
    },
    {"row": "用电 Power and energy"},
    {
        "title": "公共用电功率 Power by circuit", "type": "timeseries", "w": 12, "h": 9,
        "description": "按回路叠加的有功功率(各表平均功率之和)。Active power summed per circuit, stacked.",
        "unit": "kwatt", "custom": STACKED, "legend": ["circuit"],
        "queries": [{
            "refId": "A",
            "influxql": (f'SELECT sum("power_kw") AS "power_kw" FROM (SELECT mean("power_kw") AS "power_kw" FROM "meter" '
                         f'WHERE {IQ_METERS} AND $timeFilter GROUP BY time($__interval), "site", "meter", "circuit" fill(none)) '
                         f'WHERE $timeFilter GROUP BY time($__interval), "circuit" fill(none)'),
            "flux": "\n".join([FX_FROM, fx_fields("meter", ["power_kw"]), FX_METERS,
                               "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)",
                               '  |> group(columns: ["circuit", "_field", "_time"])',
                               "  |> sum()",
                               '  |> group(columns: ["circuit", "_field"])',
                               '  |> sort(columns: ["_time"])']),
        }],
    },
    {
        "title": "路灯功率(白天应为零) Street-light power, day and night", "type": "timeseries", "w": 12, "h": 9,
        "description": "路灯回路功率。浅色带为全年都是白天的时段(北京时间 08:00–15:30,长春纬度),"
                       "这段时间路灯功率应接近 0;夜里应亮灯。"
                       "Street lights should be off in the shaded band (daylight on every date at 44 N) "
                       "and on at night.",
        "unit": "kwatt", "custom": STACKED, "legend": ["meter"],
        "queries": [{
            "refId": "A",
            "influxql": (f'SELECT mean("power_kw") AS "power_kw" FROM "meter" WHERE {IQ_SITE} '
                         f'AND "circuit" = \'street_lighting\' AND $timeFilter '
                         f'GROUP BY time($__interval), "site", "meter" fill(none)'),
            "flux": "\n".join([FX_FROM, fx_fields("meter", ["power_kw"]),
                               f'  |> filter(fn: (r) => {FX_SITE} and r.circuit == "street_lighting")',
                               "  |> aggregateWindow(every: v.windowPeriod, fn: mean, createEmpty: false)"]),
        }],
        "daylight": True,
    },
    {
        "title": "每小时用电量·按回路 Energy per hour by circuit", "type": "timeseries", "w": 12, "h": 9,
        "description": "每小时电量 = 电度计数 energy_kwh 的差值;计数倒退(换表、故障)不计入用电,见下方告警表。"
                       "Hourly difference of the energy counter; a counter going down is never counted.",
        "unit": "kwatth", "custom": BARS, "legend": ["circuit"], "interval": "1h",
        "queries": [{"refId": "A", "influxql": iq_energy_per_hour(["circuit"]),
                     "flux": fx_energy_per_hour(["circuit"])}],
    },
    {
        "title": "每小时用电量·按楼栋 Energy per hour by building", "type": "timeseries", "w": 12, "h": 9,
        "description": "按楼栋的每小时电量(不含小区公共的无楼栋电表)。"
                       "Hourly consumption per building; estate-wide meters (no building) are left out.",
        "unit": "kwatth", "custom": BARS, "legend": ["building", "site"],
        "interval": "1h",
        "queries": [{"refId": "A",
                     "influxql": iq_energy_per_hour(["site", "building"], " AND \"building\" != ''"),
                     "flux": fx_energy_per_hour(["site", "building"],
                                                "  |> filter(fn: (r) => exists r.building)")}],
    },
    {
        "title": "电量计数倒退(告警) Energy counter went backwards", "type": "table", "w": 24, "h": 6,
        "description": "电度计数下降:换表、清零或读数错误。这不是用电,需要电工核实。"
                       "The energy counter went down (meter replaced, reset or misread): an alarm, not consumption.",
        "unit": "kwatth",
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}},
        "transformations": [{"id": "organize", "options": {"renameByName": TABLE_RENAMES}}],
        "queries": [{"refId": "A", "format": "table", **COUNTER_BACKWARDS}],
    },
    {"row": "电压电流 Voltage and current"},
    {
        "title": f"电压 Voltage per meter ({VOLTAGE_LOW}–{VOLTAGE_HIGH} V)", "type": "timeseries", "w": 12, "h": 9,
        "description": f"单相表 voltage_v,三相表 voltage_l1_v..l3_v(相电压)。绿色带为 220 V ±10 % "
                       f"({VOLTAGE_LOW}–{VOLTAGE_HIGH} V);GB/T 12325 对 220 V 单相供电的上限更严(+7 %,235.4 V)。"
                       f"Single-phase and per-phase voltage; green band 220 V +-10 % ({VOLTAGE_LOW}-{VOLTAGE_HIGH} V). "
                       "GB/T 12325 allows only +7 % (235.4 V) above 220 V for single-phase supply.",
        "unit": "volt", "legend": ["meter", "_field"],
        "custom": {"thresholdsStyle": {"mode": "line+area"}},
        "thresholds": [("red", None), ("green", VOLTAGE_LOW), ("red", VOLTAGE_HIGH)],
        "softMin": 190, "softMax": 250,
        "queries": [
            {"refId": "A", "influxql": iq_meter_series(["voltage_v"]), "flux": fx_meter_series(["voltage_v"])},
            {"refId": "B", "influxql": iq_meter_series(["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"]),
             "flux": fx_meter_series(["voltage_l1_v", "voltage_l2_v", "voltage_l3_v"])},
        ],
    },
    {
        "title": "电流 Current per meter", "type": "timeseries", "w": 12, "h": 9,
        "description": "单相表 current_a,三相表 current_l1_a..l3_a。Single-phase and per-phase current.",
        "unit": "amp", "legend": ["meter", "_field"],
        "queries": [
            {"refId": "A", "influxql": iq_meter_series(["current_a"]), "flux": fx_meter_series(["current_a"])},
            {"refId": "B", "influxql": iq_meter_series(["current_l1_a", "current_l2_a", "current_l3_a"]),
             "flux": fx_meter_series(["current_l1_a", "current_l2_a", "current_l3_a"])},
        ],
    },
    {"row": "网关运行 Gateway health"},
    {
        "title": "轮询速率 Polls per second by bus", "type": "timeseries", "w": 8, "h": 8,
        "description": "每条总线每秒轮询电表次数。Meter polls per second on each bus.",
        "unit": "ops", "legend": ["bus"],
        "queries": [{"refId": "A", "influxql": iq_gateway_rate(["polls"], "1s"),
                     "flux": fx_gateway_rate(["polls"], "1s")}],
    },
    {
        "title": "轮询故障 Failures, timeouts, CRC errors, bad answers, overruns per bus", "type": "timeseries", "w": 8, "h": 8,
        "description": "每分钟:失败、超时、CRC 错误、错误应答(功能码、字节数或单元号不符)、超期(总线忙错过轮询时刻)。"
                       "Per minute: failed polls, timeouts, CRC errors, bad answers (wrong function, byte count or unit), "
                       "overruns (deadline missed, bus busy).",
        "unit": "short", "axisLabel": "次/分钟 per minute",
        "legend": ["bus", "_field"],
        "queries": [{"refId": "A",
                     "influxql": iq_gateway_rate(["failures", "timeouts", "crc_errors", "bad_answers", "overruns"], "1m"),
                     "flux": fx_gateway_rate(["failures", "timeouts", "crc_errors", "bad_answers", "overruns"], "1m")}],
    },
    {
        "title": "各总线在线/离线电表 Meters online and offline per bus", "type": "timeseries", "w": 8, "h": 8,
        "description": "网关自报的每条总线在线与离线电表数。Online and offline meters per bus, as the gateway counts them.",
        "unit": "none", "legend": ["bus", "_field"], "decimals": 0,
        "queries": [{"refId": "A",
                     "influxql": (f'SELECT {iq_select("last", ["online", "offline"])} FROM "gateway" '
                                  f'WHERE {IQ_SITE} AND "bus" != \'\' AND $timeFilter '
                                  f'GROUP BY time($__interval), "site", "bus" fill(none)'),
                     "flux": fx_gateway(["online", "offline"], True, [])}],
    },
    {
        "title": "发送队列 Outbox depth", "type": "timeseries", "w": 6, "h": 8,
        "description": "尚未写入 InfluxDB 的点数(左轴)和字节数(右轴);网络断开时上升,恢复后回落。"
                       "Points (left) and bytes (right) waiting to be written to InfluxDB.",
        "unit": "none", "legend": ["site", "_field"],
        "overrides": [{"matcher": {"id": "byRegexp", "options": ".*outbox_bytes.*"},
                       "properties": [{"id": "unit", "value": "bytes"},
                                      {"id": "custom.axisPlacement", "value": "right"}]}],
        "queries": [{"refId": "A", "influxql": iq_overall(["outbox_depth", "outbox_bytes"]),
                     "flux": fx_gateway(["outbox_depth", "outbox_bytes"], False, [])}],
    },
    {
        "title": "发送队列积压时长 Outbox age", "type": "timeseries", "w": 6, "h": 8,
        "description": "队列中最早一个点已等待的时间。Age of the oldest point still waiting in the outbox.",
        "unit": "s", "legend": ["site", "_field"],
        "custom": {"thresholdsStyle": {"mode": "dashed"}},
        "thresholds": [("green", None), ("orange", 300), ("red", 3600)],
        "queries": [{"refId": "A", "influxql": iq_overall(["outbox_age_s"]),
                     "flux": fx_gateway(["outbox_age_s"], False, [])}],
    },
    {
        "title": "写入点数 Points written and rejected", "type": "timeseries", "w": 6, "h": 8,
        "description": "每分钟写入 InfluxDB 的点数,以及被 InfluxDB 拒收(格式/类型冲突)的点数。"
                       "Points written per minute, and points InfluxDB refused.",
        "unit": "short", "axisLabel": "点/分钟 per minute",
        "legend": ["site", "_field"],
        "queries": [{"refId": "A", "influxql": iq_overall_rate(["points_written", "points_rejected"], "1m"),
                     "flux": fx_gateway(["points_written", "points_rejected"], False,
                                        ["  |> derivative(unit: 1m, nonNegative: true)"])}],
    },
    {
        "title": "写入失败 Write failures", "type": "timeseries", "w": 6, "h": 8,
        "description": "每分钟写入失败次数(网络、InfluxDB 不可用);数据留在网关队列中,不会丢失。"
                       "Failed writes per minute; the points stay in the gateway's outbox.",
        "unit": "short", "axisLabel": "次/分钟 per minute",
        "legend": ["site", "_field"],
        "queries": [{"refId": "A", "influxql": iq_overall_rate(["write_failures"], "1m"),
                     "flux": fx_gateway(["write_failures"], False,
                                        ["  |> derivative(unit: 1m, nonNegative: true)"])}],
    },
]

# ---- variables ---------------------------------------------------------------------------------

VARIABLE_QUERIES = {
    "site": {
        "influxql": 'SHOW TAG VALUES FROM "meter" WITH KEY = "site"',
        "flux": None,
    },
    "circuit": {
        "influxql": f'SHOW TAG VALUES FROM "meter" WITH KEY = "circuit" WHERE {IQ_SITE}',
        "flux": FX_SITE,
    },
    "building": {
        "influxql": (f'SHOW TAG VALUES FROM "meter" WITH KEY = "building" WHERE {IQ_SITE} '
                     f'AND "circuit" =~ {_re("circuit")}'),
        "flux": f"{FX_SITE} and r.circuit =~ {_re('circuit')}",
    },
    "meter": {
        "influxql": (f'SHOW TAG VALUES FROM "meter" WITH KEY = "meter" WHERE {IQ_SITE} '
                     f'AND "circuit" =~ {_re("circuit")} AND "building" =~ {_re("building")}'),
        "flux": (f"{FX_SITE} and r.circuit =~ {_re('circuit')} "
                 f"and (if exists r.building then r.building else \"\") =~ {_re('building')}"),
    },
}


def variable_query(name: str, flavour: str, queries: dict = VARIABLE_QUERIES, measurement: str = "meter") -> str:
    q = queries[name][flavour]
    if flavour == "influxql":
        return q
    pred = f'r._measurement == "{measurement}"' + (f" and {q}" if q else "")
    return ('import "influxdata/influxdb/schema"\n\n'
            f'schema.tagValues(bucket: v.defaultBucket, tag: "{name}", predicate: (r) => {pred}, '
            "start: v.timeRangeStart, stop: v.timeRangeStop)")


def variable(name: str, flavour: str, queries: dict = VARIABLE_QUERIES, measurement: str = "meter") -> dict:
    q = variable_query(name, flavour, queries, measurement)
    return {
        "name": name, "label": VARIABLE_LABELS[name], "type": "query",
        "datasource": DATASOURCES[flavour], "query": q, "definition": q,
        # InfluxQL SHOW TAG VALUES ignores time; Flux's schema.tagValues looks at the time range.
        "refresh": 1 if flavour == "influxql" else 2,
        "includeAll": True, "allValue": ".*", "multi": True, "sort": 1, "regex": "", "hide": 0,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}, "options": [],
    }


METERS = {
    "uid": {"influxql": "estate-meters-influxql", "flux": "estate-meters-flux"},
    "title": {"influxql": "小区公共用电 Estate meters (InfluxQL)", "flux": "小区公共用电 Estate meters (Flux)"},
    "description": "小区公共区域电表、设备状态与网关运行情况 (estate-gateway).",
    "panels": PANELS, "variables": VARIABLES, "variable_queries": VARIABLE_QUERIES, "variable_measurement": "meter",
    "time": {"from": "now-24h", "to": "now"}, "refresh": "1m",
}

# ---- building the JSON -------------------------------------------------------------------------

def _thresholds(steps) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def iq_alias(legend: list[str]) -> str:
    """Grafana's InfluxQL alias for a series name made of tags and the column ($col)."""
    return " ".join("$col" if part == "_field" else f"$tag_{part}" for part in legend)


def fx_name(legend: list[str]) -> list[str]:
    """The same series name in Flux: put it in _field and keep no other label, so Grafana shows it."""
    expr = ' + " " + '.join(f"r.{part}" for part in legend)
    return [f"  |> map(fn: (r) => ({{r with _field: {expr}}}))",
            '  |> keep(columns: ["_time", "_value", "_field"])']


def _target(q: dict, flavour: str, legend: list[str] | None) -> dict:
    query = q[flavour]
    if flavour == "flux" and legend:
        query = "\n".join([query, *fx_name(legend)])
    t = {"refId": q["refId"], "datasource": DATASOURCES[flavour], "query": query}
    if flavour == "influxql":
        t.update(rawQuery=True, resultFormat=q.get("format", "time_series"))
        if legend:
            t["alias"] = iq_alias(legend)
    return t


def _panel(p: dict, pid: int, pos: dict, flavour: str) -> dict:
    if "row" in p:
        return {"type": "row", "id": pid, "title": p["row"], "collapsed": False, "gridPos": pos, "panels": []}
    defaults: dict = {"unit": p.get("unit", "short"), "color": {"mode": "palette-classic"},
                      "mappings": p.get("mappings", [])}
    if p["type"] == "timeseries":
        custom = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                  "spanNulls": False, "axisSoftMin": 0, "thresholdsStyle": {"mode": "off"},
                  "stacking": {"mode": "none", "group": "A"}}
        custom.update(p.get("custom", {}))
        if "softMin" in p:
            custom["axisSoftMin"], custom["axisSoftMax"] = p["softMin"], p["softMax"]
        if "axisLabel" in p:
            custom["axisLabel"] = p["axisLabel"]
        defaults["custom"] = custom
    elif "custom" in p:
        defaults["custom"] = p["custom"]
    defaults["thresholds"] = _thresholds(p.get("thresholds", [("green", None)]))
    if p["type"] == "stat":
        defaults["color"] = {"mode": "thresholds"}
    for key in ("noValue", "decimals"):
        if key in p:
            defaults[key] = p[key]
    options = p.get("options") or {
        "legend": {"showLegend": True, "displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"}}
    panel = {
        "type": p["type"], "id": pid, "title": p["title"], "description": p.get("description", ""),
        "datasource": DATASOURCES[flavour], "gridPos": pos,
        "fieldConfig": {"defaults": defaults, "overrides": p.get("overrides", []) + (
            CIRCUIT_NAMES_OVERRIDES if p.get("legend") == ["circuit"] else [])},
        "options": options,
        "targets": [_target(q, flavour, p.get("legend")) for q in p["queries"]],
    }
    # Meters are polled every 30 s and the gateway reports its health every 60 s: finer buckets
    # than a minute would be empty ($__interval is never below the panel's interval).
    panel["interval"] = p.get("interval", "1m")
    if "timeFrom" in p:
        panel["timeFrom"] = p["timeFrom"]
    if "transformations" in p:
        panel["transformations"] = p["transformations"]
    return panel


def layout(panels: list[dict]) -> list[tuple[dict, int, dict]]:
    """(panel, id, gridPos) in reading order: rows full width, panels flowing left to right."""
    out, x, y, row_h, pid = [], 0, 0, 0, 0
    for p in panels:
        pid += 1
        if "row" in p:
            y += row_h
            out.append((p, pid, {"h": 1, "w": 24, "x": 0, "y": y}))
            x, y, row_h = 0, y + 1, 0
            continue
        if x + p["w"] > 24:
            x, y, row_h = 0, y + row_h, 0
        out.append((p, pid, {"h": p["h"], "w": p["w"], "x": x, "y": y}))
        x += p["w"]
        row_h = max(row_h, p["h"])
    return out


ANNOTATIONS_BUILTIN = {"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"}, "enable": True,
                       "hide": True, "iconColor": "rgba(0, 211, 255, 1)", "name": "Annotations & Alerts",
                       "type": "dashboard"}


def dashboard(flavour: str, name: str = "meters") -> dict:
    spec = DASHBOARDS[name]
    placed = layout(spec["panels"])
    daylight_ids = [pid for p, pid, _ in placed if p.get("daylight")]
    return {
        "uid": spec["uid"][flavour],
        "title": spec["title"][flavour],
        "description": spec["description"] + " Generated by tools/make_dashboards.py: edit that, not this file.",
        "tags": ["estate-gateway", flavour],
        "editable": True, "graphTooltip": 1, "schemaVersion": 39, "version": 1,
        "time": spec["time"], "timezone": "browser", "refresh": spec["refresh"],
        "fiscalYearStartMonth": 0, "liveNow": False, "weekStart": "",
        "timepicker": {}, "links": [],
        "annotations": {"list": [ANNOTATIONS_BUILTIN, *([
            {"datasource": {"type": "datasource", "uid": "grafana"}, "enable": True, "hide": False,
             "iconColor": "rgba(255, 214, 0, 0.12)", "name": "白天 Daylight (08:00–15:30)",
             "filter": {"exclude": False, "ids": daylight_ids},
             "target": {"refId": "Anno", "queryType": "timeRegions", "limit": 100, "matchAny": False,
                        "timeRegion": {"mode": "cron", "cronExpr": DAYLIGHT["cron"],
                                       "duration": DAYLIGHT["duration"], "from": DAYLIGHT["from"],
                                       "to": DAYLIGHT["to"], "timezone": DAYLIGHT["timezone"]}}},
        ] if daylight_ids else [])]},
        "templating": {"list": [variable(v, flavour, spec["variable_queries"], spec["variable_measurement"])
                                for v in spec["variables"]]},
        "panels": [_panel(p, pid, pos, flavour) for p, pid, pos in placed],
    }


# ---- the fleet overview: one row per estate, for head office's central InfluxDB -----------------
# Each query answers one table keyed by the `site` tag; Grafana joins them on `site` (outer join,
# so an estate missing from one query still has its row). The panel's time range is "this month
# so far" (timeFrom now/M) for the kWh; the other columns say "now" whatever the range:
# reporting looks at the last REPORTING_WINDOW, the latest values and open alarms at all history
# (a gateway writes its self metrics every 60 s; an alarm point is written only when it changes).

REPORTING_WINDOW = "5m"
SEVERITIES = ("critical", "warning", "info")
SEVERITY_ZH = {"critical": "严重", "warning": "警告", "info": "提示"}
IQ_OVERALL = f'{IQ_SITE} AND "bus" = \'\''


def iq_open_alarms(severity: str) -> str:
    # An alarm is (rule, source) at a site: its newest point's state says whether it is open.
    inner = (f'SELECT last("state") AS "state" FROM "alert" WHERE {IQ_SITE} AND "severity" = \'{severity}\' '
             f'GROUP BY "site", "rule", "source"')
    return f'SELECT count("state") AS "{severity}" FROM ({inner}) WHERE "state" != \'cleared\' GROUP BY "site"'


def fx_open_alarms(severity: str) -> str:
    return "\n".join([FX_FROM_ALL_TIME, fx_fields("alert", ["state"]),
                      f'  |> filter(fn: (r) => {FX_SITE} and r.severity == "{severity}")',
                      '  |> group(columns: ["site", "rule", "source"])',
                      "  |> last()",
                      '  |> filter(fn: (r) => r._value != "cleared")',
                      '  |> group(columns: ["site"])',
                      "  |> count()",
                      f"  |> map(fn: (r) => ({{site: r.site, {severity}: r._value}}))"])


FLEET_QUERIES = [
    {"refId": "A", "format": "table",
     "influxql": (f'SELECT count("clock_trusted") AS "reporting" FROM "gateway" WHERE {IQ_OVERALL} '
                  f'AND time > now() - {REPORTING_WINDOW} GROUP BY "site"'),
     "flux": "\n".join([f"from(bucket: v.defaultBucket)\n  |> range(start: -{REPORTING_WINDOW})",
                        fx_fields("gateway", ["clock_trusted"]),
                        f"  |> filter(fn: (r) => {FX_SITE} and not exists r.bus)",
                        '  |> group(columns: ["site"])',
                        "  |> count()",
                        "  |> map(fn: (r) => ({site: r.site, reporting: r._value}))"])},
    {"refId": "B", "format": "table",
     "influxql": (f'SELECT {iq_select("last", ["clock_trusted", "outbox_depth", "outbox_age_s"])} FROM "gateway" '
                  f'WHERE {IQ_OVERALL} GROUP BY "site"'),
     "flux": "\n".join([FX_FROM_ALL_TIME, fx_fields("gateway", ["clock_trusted", "outbox_depth", "outbox_age_s"]),
                        f"  |> filter(fn: (r) => {FX_SITE} and not exists r.bus)",
                        "  |> last()",
                        '  |> pivot(rowKey: ["site"], columnKey: ["_field"], valueColumn: "_value")',
                        "  |> group()",
                        '  |> keep(columns: ["site", "clock_trusted", "outbox_depth", "outbox_age_s"])'])},
    *({"refId": ref, "format": "table", "influxql": iq_open_alarms(sev), "flux": fx_open_alarms(sev)}
      for ref, sev in zip("CDE", SEVERITIES)),
    # The main supply's counter, hour by hour as on the meters dashboard: a counter that went
    # down (meter replaced) counts nothing, never a jump. What came in before the month's first
    # full hour's last reading is not counted (at most an hour of the month).
    {"refId": "F", "format": "table",
     "influxql": (f'SELECT sum("used_kwh") AS "month_kwh" FROM (SELECT non_negative_difference(last("energy_kwh")) '
                  f'AS "used_kwh" FROM "meter" WHERE {IQ_SITE} AND "circuit" = \'main_supply\' AND $timeFilter '
                  f'GROUP BY time(1h), "site", "meter") WHERE $timeFilter GROUP BY "site"'),
     "flux": "\n".join([FX_FROM, fx_fields("meter", ["energy_kwh"]),
                        f'  |> filter(fn: (r) => {FX_SITE} and r.circuit == "main_supply")',
                        '  |> aggregateWindow(every: 1h, fn: last, createEmpty: false)',
                        "  |> difference()",
                        "  |> filter(fn: (r) => r._value >= 0.0)",
                        '  |> group(columns: ["site"])',
                        "  |> sum()",
                        "  |> map(fn: (r) => ({site: r.site, month_kwh: r._value}))"])},
]
FLEET_COLUMNS = ["site", "reporting", "clock_trusted", "outbox_depth", "outbox_age_s", *SEVERITIES, "month_kwh"]
FLEET_RENAMES = {"site": "小区 Site", "reporting": f"网关在线 Up (last {REPORTING_WINDOW})",
                 "clock_trusted": "时钟可信 Clock trusted", "outbox_depth": "发送队列 Outbox (points)",
                 "outbox_age_s": "队列积压 Outbox age", "month_kwh": "本月总进线电量 This month (kWh)",
                 **{s: f"未消除告警·{SEVERITY_ZH[s]} Open {s}" for s in SEVERITIES}}


def _column(name: str, *props: tuple[str, object]) -> dict:
    return {"matcher": {"id": "byName", "options": name},
            "properties": [{"id": k, "value": v} for k, v in props]}


COLORED = ("custom.cellOptions", {"type": "color-background", "mode": "basic"})
FLEET_OVERRIDES = [
    # reporting counts self-metric points in the window: an estate with none has no value
    _column("reporting", COLORED, ("noValue", "无数据 silent"), ("mappings", [
        {"type": "range", "options": {"from": 1, "to": 1e9, "result": {"text": "在线 up", "color": "green", "index": 0}}},
        {"type": "special", "options": {"match": "null", "result": {"text": "无数据 silent", "color": "red", "index": 1}}}]),
        ("thresholds", _thresholds([("red", None), ("green", 1)]))),
    _column("clock_trusted", COLORED, ("mappings", [
        {"type": "value", "options": {"1": {"text": "可信 trusted", "color": "green", "index": 0},
                                      "0": {"text": "不可信 untrusted", "color": "red", "index": 1}}}])),
    _column("outbox_depth", ("decimals", 0)),
    _column("outbox_age_s", ("unit", "s"), COLORED, ("thresholds", _thresholds([("green", None), ("orange", 300),
                                                                                 ("red", 3600)]))),
    *(_column(sev, ("decimals", 0), ("noValue", "0"), COLORED, ("thresholds", _thresholds([("green", None), (color, 1)])))
      for sev, color in zip(SEVERITIES, ("red", "orange", "blue"))),
    _column("month_kwh", ("unit", "kwatth"), ("decimals", 0)),
]

FLEET_PANELS: list[dict] = [
    {
        "title": "各小区概况 Estates at a glance", "type": "table", "w": 24, "h": 16, "timeFrom": "now/M",
        "description": "每个小区一行:网关近 5 分钟是否上报自身指标(没有:网关停机、网络断开,或时钟不可信"
                       "——不可信时间的数据留在网关,修复后才发送)、最新的时钟状态与发送队列、未消除告警数(按级别)、"
                       "本月总进线(main_supply 电表)用电量。"
                       "One row per estate: whether the gateway reported its own metrics in the last 5 minutes "
                       "(if not: it is down, its network is, or its clock is untrusted and its points wait for the "
                       "repair), its latest clock state and outbox, open alarms by severity, and this month's kWh "
                       "of its main supply meters.",
        "options": {"showHeader": True, "cellHeight": "sm", "footer": {"show": False},
                    "sortBy": [{"displayName": FLEET_RENAMES["site"], "desc": False}]},
        "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
        "overrides": FLEET_OVERRIDES,
        "transformations": [
            {"id": "joinByField", "options": {"byField": "site", "mode": "outer"}},
            {"id": "filterFieldsByName", "options": {"include": {"names": FLEET_COLUMNS}}},
            {"id": "organize", "options": {"indexByName": {c: i for i, c in enumerate(FLEET_COLUMNS)},
                                           "renameByName": FLEET_RENAMES}},
        ],
        "queries": FLEET_QUERIES,
    },
]

FLEET = {
    "uid": {"influxql": "estate-fleet-influxql", "flux": "estate-fleet-flux"},
    "title": {"influxql": "各小区总览 Estates overview (InfluxQL)", "flux": "各小区总览 Estates overview (Flux)"},
    "description": "总部:各小区网关、时钟、发送队列、告警与本月用电 (estate-gateway, head office).",
    "panels": FLEET_PANELS, "variables": ["site"],
    "variable_queries": {"site": {"influxql": 'SHOW TAG VALUES FROM "gateway" WITH KEY = "site"', "flux": None}},
    "variable_measurement": "gateway",
    "time": {"from": "now-24h", "to": "now"}, "refresh": "1m",
}
DASHBOARDS = {"meters": METERS, "fleet": FLEET}


def render(flavour: str, name: str = "meters") -> str:
    return json.dumps(dashboard(flavour, name), ensure_ascii=False, indent=2) + "\n"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name in DASHBOARDS:
        for flavour in DATASOURCES:
            path = OUT / f"{name}-{flavour}.json"
            path.write_text(render(flavour, name), encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
