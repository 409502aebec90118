"""The monthly service and safety report for people: a printable HTML page (inline CSS, SVG charts
drawn here, no script) and an Excel workbook. Rendering only: every figure is service_report.py's.

Chinese by default, English with lang="en".
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from ..clock import from_us
from .service_report import Durations, ServiceMonth

TEMPLATES = Path(__file__).resolve().parent / "templates"
LANGS = ("zh", "en")

T: dict[str, dict] = {
    "zh": {
        "title": "月度服务与安全报告", "site": "小区", "month": "月份", "period": "统计期间", "as_of": "统计截至",
        "timezone": "时区", "to": "至", "summary": "概要", "none": "本月没有记录。",
        "alarms": "告警", "alarms_explain": "本月发生的告警按类型统计；确认、消除用时从发生时起算（跨月确认的也计入发生的月份）。",
        "alarm_cols": ["类型", "发生", "已确认", "已消除", "未消除", "确认用时 中位", "确认用时 P90", "消除用时 中位",
                       "消除用时 P90"],
        "orders": "维修工单", "orders_explain": "本月报修的工单按类别统计；响应（到场）和维修（完成）用时从报修（或重开）时起算，"
                                             "与该类别的时限比较；尚未到场或完成而已超过时限的计为超时。",
        "order_cols": ["类别", "时限(响应/维修)", "报修", "已到场", "响应及时", "响应超时", "响应用时 中位", "响应用时 P90",
                       "已完成", "维修及时", "维修超时", "维修用时 中位", "维修用时 P90", "未完成", "重开", "已回访", "满意度"],
        "repeats": "重复故障", "repeats_explain": "同一设备在 {days} 天内报修 {n} 次及以上的标出（以本月的报修为窗口终点）。",
        "repeat_cols": ["设备", "名称", "本月报修", "{days} 天内报修", "工单", "标记"], "repeat_flag": "重复故障",
        "inspections": "巡检", "inspections_explain": "本月到期的巡检任务（月度任务在月末到期）。",
        "inspection_cols": ["巡检计划", "到期任务", "按时完成", "逾期完成", "未完成", "不合格项"],
        "patrol": "巡更", "patrol_explain": "本月开始的巡更轮次；完整率 = 已打卡点 / 应到点（尚未到时的点不计）。"
                                           "漏检点计入该轮打卡最多的保安；无人打卡的轮次单列。",
        "route_cols": ["路线", "轮次", "应到点", "已打卡", "准时", "迟到", "早到", "漏检", "完整率"],
        "guard_cols": ["保安", "轮次", "应到点", "已打卡", "准时", "迟到", "早到", "漏检", "完整率"],
        "by_route": "按路线", "by_guard": "按保安", "nobody": "（无人巡更）",
        "access": "门禁与门报警", "access_explain": "未登记卡、已注销卡、已过期卡的刷卡，以及强行开门、门长时间未关，按门岗和时段统计。",
        "gate_cols": ["门岗", "未登记卡", "已注销卡", "已过期卡", "强行开门", "长时间未关"],
        "hour_chart": "按时段（每小时）", "hour_cols": ["时段", "未登记卡", "已注销卡", "已过期卡", "强行开门", "长时间未关"],
        "trend": "趋势", "trend_explain": "本月与此前各月比较。",
        "trend_cols": ["月份", "告警", "确认用时 中位", "工单", "响应及时率", "维修及时率", "巡检按时率", "巡更完整率",
                       "异常刷卡", "强行开门"],
        "trend_counts": "数量", "trend_rates": "比率",
        "total": "合计", "all_kinds": "全部", "yes": "是", "no": "", "no_data": "无数据",
        "f_alarms": "告警", "f_ack": "确认用时（中位）", "f_orders": "报修工单", "f_resp": "响应及时率", "f_rep": "维修及时率",
        "f_insp": "巡检按时率", "f_patrol": "巡更完整率", "f_cards": "异常刷卡", "f_forced": "强行开门", "f_repeat": "重复故障设备",
        "s": "秒", "min": "分钟", "h": "小时", "minutes_unit": "（分钟）",
    },
    "en": {
        "title": "Monthly service and safety report", "site": "Site", "month": "Month", "period": "Period",
        "as_of": "As of", "timezone": "Time zone", "to": "to", "summary": "Summary", "none": "Nothing this month.",
        "alarms": "Alarms", "alarms_explain": "Alarms raised this month by kind; the times to acknowledge and to clear "
                                             "count from the raising (one acknowledged next month still counts here).",
        "alarm_cols": ["kind", "raised", "acknowledged", "cleared", "open", "to ack p50", "to ack p90", "to clear p50",
                       "to clear p90"],
        "orders": "Repair orders", "orders_explain": "Orders reported this month by category; response (on site) and "
                                                     "repair (done) times count from the report (or the reopening), "
                                                     "against the category's targets; one not there or not done yet "
                                                     "past its target counts as missed.",
        "order_cols": ["category", "targets (respond/repair)", "reported", "on site", "response on time",
                       "response missed", "response p50", "response p90", "done", "repair on time", "repair missed",
                       "repair p50", "repair p90", "open", "reopened", "followed up", "satisfaction"],
        "repeats": "Repeat faults", "repeats_explain": "A device with {n} or more orders within {days} days (the "
                                                       "window ending at one of this month's) is flagged.",
        "repeat_cols": ["device", "name", "this month", "within {days} days", "orders", "flag"],
        "repeat_flag": "repeat fault",
        "inspections": "Inspections", "inspections_explain": "Inspection tasks due this month (a month's task is due "
                                                             "at its end).",
        "inspection_cols": ["plan", "due", "on time", "late", "not done", "failed items"],
        "patrol": "Patrol", "patrol_explain": "Rounds that began this month; completeness = checkpoints read / "
                                              "checkpoints due (those not due yet are not counted). A round's missed "
                                              "checkpoints go to the guard who read most of it; rounds nobody walked "
                                              "are listed apart.",
        "route_cols": ["route", "rounds", "due", "read", "on time", "late", "early", "missed", "completeness"],
        "guard_cols": ["guard", "rounds", "due", "read", "on time", "late", "early", "missed", "completeness"],
        "by_route": "By route", "by_guard": "By guard", "nobody": "(nobody)",
        "access": "Access and door alarms", "access_explain": "Swipes of unknown, revoked and expired cards, and "
                                                              "doors forced or held open, by gate and by hour.",
        "gate_cols": ["gate", "unknown", "revoked", "expired", "forced open", "held open"],
        "hour_chart": "By hour of day", "hour_cols": ["hour", "unknown", "revoked", "expired", "forced open",
                                                      "held open"],
        "trend": "Trend", "trend_explain": "This month against the months before it.",
        "trend_cols": ["month", "alarms", "to ack p50", "orders", "response on time", "repair on time",
                       "inspections on time", "patrol completeness", "refused cards", "forced doors"],
        "trend_counts": "Counts", "trend_rates": "Rates",
        "total": "Total", "all_kinds": "all", "yes": "yes", "no": "", "no_data": "no data",
        "f_alarms": "alarms", "f_ack": "to acknowledge (p50)", "f_orders": "repair orders",
        "f_resp": "response on time", "f_rep": "repair on time", "f_insp": "inspections on time",
        "f_patrol": "patrol completeness", "f_cards": "refused cards", "f_forced": "forced doors",
        "f_repeat": "repeat-fault devices", "s": "s", "min": "min", "h": "h", "minutes_unit": " (min)",
    },
}

KIND_NAMES = {
    "zh": {"threshold": "越限", "offline": "离线", "counter": "电能表计数异常", "daylight": "白天亮灯",
           "consumption": "用电异常", "access": "门禁刷卡", "door": "门报警", "patrol": "巡更",
           "lighting_stuck": "照明未按计划开关", "lighting_dark": "照明不亮", "lighting_readback": "照明回读不符",
           "repair_response": "维修响应超时", "repair_overdue": "维修超时", "inspection_overdue": "巡检逾期",
           "clock": "时钟", "disk": "存储"},
    "en": {"repair_response": "repair response late", "repair_overdue": "repair overdue",
           "inspection_overdue": "inspection overdue", "lighting_stuck": "lighting stuck",
           "lighting_dark": "lighting dark", "lighting_readback": "lighting read-back"},
}
SERIES = ("unknown", "revoked", "expired", "forced_open", "held_open")
COLORS = {"unknown": "#f28e2b", "revoked": "#e15759", "expired": "#edc948", "forced_open": "#4e79a7",
          "held_open": "#76b7b2", "alarms": "#4e79a7", "orders": "#f28e2b", "card_refusals": "#e15759",
          "forced_doors": "#76b7b2", "response_on_time": "#4e79a7", "repair_on_time": "#f28e2b",
          "inspections_on_time": "#59a14f", "patrol_completeness": "#b07aa1"}


def _lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}, not {lang!r}")
    return lang


def kind_name(kind: str, lang: str) -> str:
    if not kind:
        return T[lang]["all_kinds"]
    return KIND_NAMES[lang].get(kind, kind)


def duration(s: float | None, lang: str) -> str:
    """A duration for the eye: seconds, minutes or hours."""
    t = T[lang]
    if s is None:
        return "—"
    if abs(s) < 60:
        return f"{s:.0f} {t['s']}"
    if abs(s) < 3600:
        return f"{s / 60:.1f} {t['min']}"
    return f"{s / 3600:.1f} {t['h']}"


def minutes(s: float | None) -> float | None:
    return None if s is None else round(s / 60, 1)


def pct(x: float | None) -> str:
    return "—" if x is None else f"{x * 100:.1f}%"


def _when(us: int, tz: ZoneInfo) -> str:
    return f"{from_us(us).astimezone(tz):%Y-%m-%d %H:%M}"


def _targets(o, lang: str) -> str:
    if o.respond_minutes is None:
        return ""
    return f"{o.respond_minutes:g} {T[lang]['min']} / {o.repair_hours:g} {T[lang]['h']}"


# ---- tables as rows: the HTML and the workbook show the same ---------------------------------------

def alarm_rows(r: ServiceMonth, lang: str, numbers: bool = False) -> list[list]:
    f = (lambda s: minutes(s)) if numbers else (lambda s: duration(s, lang))
    return [[kind_name(a.kind, lang) if a.kind else T[lang]["total"], a.raised, a.acked, a.cleared, a.open,
             f(a.to_ack.p50), f(a.to_ack.p90), f(a.to_clear.p50), f(a.to_clear.p90)]
            for a in r.alarms + [r.alarm_total]]


ORDER_COLS = ["category", "targets", "created", "responded", "response_on_time", "response_missed", "response_p50",
              "response_p90", "done", "repair_on_time", "repair_missed", "repair_p50", "repair_p90", "open",
              "reopened", "followed_up", "satisfaction"]


def order_rows(r: ServiceMonth, lang: str, numbers: bool = False) -> list[list]:
    f = (lambda s: minutes(s)) if numbers else (lambda s: duration(s, lang))
    out = []
    for o in r.orders + [r.order_total]:
        name = (o.name if lang == "zh" else o.name_en) if o.category else T[lang]["total"]
        sat = None if o.satisfaction is None else round(o.satisfaction, 2)
        out.append([name, _targets(o, lang), o.created, o.responded, o.response_on_time, o.response_missed,
                    f(o.response.p50), f(o.response.p90), o.done, o.repair_on_time, o.repair_missed, f(o.repair.p50),
                    f(o.repair.p90), o.open, o.reopened, o.followed_up, sat if numbers else ("—" if sat is None
                                                                                          else f"{sat:.2f}")])
    return out


def repeat_rows(r: ServiceMonth, lang: str) -> list[list]:
    return [[d.device, d.name, d.in_month, d.in_window, " ".join(f"#{o}" for o in d.orders),
             T[lang]["repeat_flag"] if d.flagged else ""] for d in r.repeats]


def inspection_rows(r: ServiceMonth, lang: str) -> list[list]:
    return [[i.name if lang == "zh" else i.name_en, i.due, i.on_time, i.late, i.not_done, i.failed_items]
            for i in r.inspections]


def patrol_rows(rows, lang: str, guards: bool = False, numbers: bool = False) -> list[list]:
    out = []
    for p in rows:
        name = (p.name or T[lang]["nobody"]) if guards else p.name
        c = p.completeness
        out.append([name, p.rounds, p.due, p.read, p.on_time, p.late, p.early, p.missed,
                    (None if c is None else round(c, 4)) if numbers else pct(c)])
    return out


def gate_rows(r: ServiceMonth) -> list[list]:
    rows = [[g.name, g.unknown, g.revoked, g.expired, g.forced_open, g.held_open] for g in r.gates]
    return rows


def trend_rows(r: ServiceMonth, lang: str, numbers: bool = False) -> list[list]:
    out = []
    for p in r.trend:
        rates = [p.response_on_time, p.repair_on_time, p.inspections_on_time, p.patrol_completeness]
        out.append([p.month, p.alarms, minutes(p.ack_p50_s) if numbers else duration(p.ack_p50_s, lang), p.orders,
                    *([None if x is None else round(x, 4) for x in rates] if numbers else [pct(x) for x in rates]),
                    p.card_refusals, p.forced_doors])
    return out


def figures(r: ServiceMonth, lang: str) -> list[tuple[str, str, str]]:
    """(key, label, value) of the summary."""
    t, h = T[lang], r.trend[-1] if r.trend else r.headline()
    return [("alarms", t["f_alarms"], str(h.alarms)), ("ack", t["f_ack"], duration(h.ack_p50_s, lang)),
            ("orders", t["f_orders"], str(h.orders)), ("response", t["f_resp"], pct(h.response_on_time)),
            ("repair", t["f_rep"], pct(h.repair_on_time)), ("inspections", t["f_insp"], pct(h.inspections_on_time)),
            ("patrol", t["f_patrol"], pct(h.patrol_completeness)), ("cards", t["f_cards"], str(h.card_refusals)),
            ("forced", t["f_forced"], str(h.forced_doors)),
            ("repeat", t["f_repeat"], str(sum(1 for d in r.repeats if d.flagged)))]


# ---- SVG -----------------------------------------------------------------------------------------

def _scale(top: float) -> tuple[float, int]:
    """An axis maximum of 1, 2, 2.5 or 5 × 10^k steps above `top`, and the number of steps."""
    if top <= 0:
        return 1.0, 4
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * max(1, math.ceil(top / step - 1e-9)), max(1, math.ceil(top / step - 1e-9))


def _open(width: int, height: int, title: str, name: str) -> list[str]:
    return [f'<svg class="chart" data-chart="{name}" viewBox="0 0 {width} {height}" '
            f'xmlns="http://www.w3.org/2000/svg" role="img" aria-label="{escape(title)}">']


def svg_hbars(rows: list[tuple[str, int]], title: str, name: str, lang: str) -> Markup:
    """Horizontal bars, one per row, labelled with its value."""
    width, left, bar, gap = 720, 150, 18, 6
    height = max(1, len(rows)) * (bar + gap) + gap
    out = _open(width, height, title, name)
    top = max((v for _, v in rows), default=0)
    if not rows or top <= 0:
        out.append(f'<text x="{width / 2}" y="{height / 2 + 4}" class="empty">{escape(T[lang]["no_data"])}</text>')
    pw = width - left - 60
    for i, (label, v) in enumerate(rows):
        y = gap + i * (bar + gap)
        w = pw * v / top if top else 0
        out.append(f'<text x="{left - 6}" y="{y + bar / 2 + 4}" class="yl">{escape(label)}</text>'
                   f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar}" fill="{COLORS["alarms"]}">'
                   f'<title>{escape(label)}: {v}</title></rect>'
                   f'<text x="{left + w + 4:.1f}" y="{y + bar / 2 + 4}" class="vl">{v}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def svg_stacked(columns: list[str], series: list[tuple[str, str, list[float]]], title: str, name: str,
                lang: str) -> Markup:
    """Vertical stacked bars: `series` (key, label, one value per column)."""
    width, height, left, right, top, bottom = 720, 220, 44, 8, 12, 28
    pw, ph = width - left - right, height - top - bottom
    totals = [sum(s[2][i] for s in series) for i in range(len(columns))]
    ymax, steps = _scale(max(totals, default=0))
    out = _open(width, height, title, name)
    for k in range(steps + 1):
        y = top + ph - ph * k / steps
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" class="yl">{ymax * k / steps:g}</text>')
    if not any(totals):
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">{escape(T[lang]["no_data"])}</text>')
    slot = pw / max(len(columns), 1)
    for i, col in enumerate(columns):
        x, y = left + slot * i + slot * 0.15, top + ph
        for key, label, values in series:
            v = values[i]
            if v <= 0:
                continue
            h = v / ymax * ph
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.7:.1f}" height="{h:.1f}" '
                       f'fill="{COLORS.get(key, "#999")}" data-series="{key}"><title>{escape(label)} {escape(col)}: '
                       f'{v:g}</title></rect>')
        out.append(f'<text x="{x + slot * 0.35:.1f}" y="{height - bottom + 14}" class="xl">{escape(col)}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def svg_lines(columns: list[str], series: list[tuple[str, str, list[float | None]]], title: str, name: str,
              lang: str) -> Markup:
    """Shares 0..1 as lines over the columns (a gap where a month has no figure)."""
    width, height, left, right, top, bottom = 720, 200, 44, 8, 12, 28
    pw, ph = width - left - right, height - top - bottom
    out = _open(width, height, title, name)
    for k in range(5):
        y = top + ph - ph * k / 4
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" class="yl">{25 * k}%</text>')
    slot = pw / max(len(columns), 1)
    xs = [left + slot * (i + 0.5) for i in range(len(columns))]
    for i, col in enumerate(columns):
        out.append(f'<text x="{xs[i]:.1f}" y="{height - bottom + 14}" class="xl">{escape(col)}</text>')
    if not any(v is not None for _, _, vs in series for v in vs):
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">{escape(T[lang]["no_data"])}</text>')
    for key, label, values in series:
        color = COLORS.get(key, "#999")
        run: list[str] = []
        for i, v in enumerate(values + [None]):
            if v is not None:
                y = top + ph - ph * max(0.0, min(1.0, v))
                run.append(f"{xs[i]:.1f},{y:.1f}")
                out.append(f'<circle cx="{xs[i]:.1f}" cy="{y:.1f}" r="3" fill="{color}" data-series="{key}">'
                           f'<title>{escape(label)} {escape(columns[i])}: {pct(v)}</title></circle>')
            elif run:
                if len(run) > 1:
                    out.append(f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" stroke-width="2"/>')
                run = []
    out.append("</svg>")
    return Markup("".join(out))


# ---- HTML ----------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _environment() -> Environment:
    return Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                       trim_blocks=True, lstrip_blocks=True)


def context(r: ServiceMonth, lang: str) -> dict:
    lang = _lang(lang)
    t = T[lang]
    tz = ZoneInfo(r.timezone)
    hour_labels = [f"{h:02d}" for h in range(24)]
    hour_series = [(k, t["hour_cols"][i + 1], [float(h[k]) for h in r.hours]) for i, k in enumerate(SERIES)]
    months = [p.month for p in r.trend]
    counts = [(k, t["trend_cols"][c], [float(getattr(p, k)) for p in r.trend])
              for k, c in (("alarms", 1), ("orders", 3), ("card_refusals", 8), ("forced_doors", 9))]
    rates = [(k, t["trend_cols"][c], [getattr(p, k) for p in r.trend])
             for k, c in (("response_on_time", 4), ("repair_on_time", 5), ("inspections_on_time", 6),
                          ("patrol_completeness", 7))]
    return {
        "t": t, "lang": lang, "r": r,
        "period": f"{_when(r.start_us, tz)} {t['to']} {_when(r.end_us, tz)}", "as_of": _when(r.as_of_us, tz),
        "figures": figures(r, lang),
        "alarm_rows": alarm_rows(r, lang), "alarm_svg": svg_hbars(
            [(kind_name(a.kind, lang), a.raised) for a in r.alarms], t["alarms"], "alarms", lang),
        "order_rows": order_rows(r, lang),
        # each row's category id ("" the total) and each column's name: what a page or a test finds a
        # figure by, whatever the language
        "order_keys": [o.category for o in r.orders + [r.order_total]], "order_col_keys": ORDER_COLS,
        "repeat_rows": repeat_rows(r, lang),
        "repeat_cols": [c.format(days=r.repeat_days) for c in t["repeat_cols"]],
        "repeats_explain": t["repeats_explain"].format(n=r.repeat_faults, days=r.repeat_days),
        "inspection_rows": inspection_rows(r, lang),
        "route_rows": patrol_rows(r.routes, lang), "guard_rows": patrol_rows(r.guards, lang, guards=True),
        "gate_rows": gate_rows(r),
        "hour_svg": svg_stacked(hour_labels, hour_series, t["hour_chart"], "hours", lang),
        "hour_legend": [(t["hour_cols"][i + 1], COLORS[k]) for i, k in enumerate(SERIES)],
        "trend_rows": trend_rows(r, lang),
        "trend_counts_svg": svg_stacked(months, counts, t["trend_counts"], "trend-counts", lang),
        "trend_counts_legend": [(label, COLORS[k]) for k, label, _ in counts],
        "trend_rates_svg": svg_lines(months, rates, t["trend_rates"], "trend-rates", lang),
        "trend_rates_legend": [(label, COLORS[k]) for k, label, _ in rates],
    }


def render_html(r: ServiceMonth, lang: str = "zh") -> str:
    return _environment().get_template("service_report.html").render(context(r, lang))


# ---- XLSX ----------------------------------------------------------------------------------------

BOLD = Font(bold=True)
WARN = Font(bold=True, color="C00000")


def _clean(v):
    return ILLEGAL_CHARACTERS_RE.sub("", v) if isinstance(v, str) else v


def _sheet(wb: Workbook, title: str, headers: list[str], rows: list[list], widths: list[int] | None = None,
           flagged=lambda row: False):
    ws = wb.create_sheet(title)
    ws.append([_clean(h) for h in headers])
    for c in ws[1]:
        c.font = BOLD
    ws.freeze_panes = "A2"
    for row in rows:
        ws.append([_clean(v) for v in row])
        if flagged(row):
            for c in ws[ws.max_row]:
                c.font = WARN
    for i, w in enumerate(widths or [14] + [11] * (len(headers) - 1)):
        ws.column_dimensions[get_column_letter(i + 1)].width = w
    for cell in ws[1]:
        if isinstance(cell.value, str) and cell.value.startswith("="):
            cell.data_type = "s"
    return ws


SHEETS = {"zh": ["概要", "告警", "维修工单", "重复故障", "巡检", "巡更路线", "巡更保安", "门禁", "按时段", "趋势"],
          "en": ["Summary", "Alarms", "Orders", "Repeat faults", "Inspections", "Patrol routes", "Patrol guards",
                 "Access", "By hour", "Trend"]}


def write_xlsx(r: ServiceMonth, path: str | Path, lang: str = "zh") -> Path:
    """One sheet per section; durations in minutes, shares as fractions (formatted as %)."""
    lang = _lang(lang)
    t, names = T[lang], SHEETS[lang]
    tz = ZoneInfo(r.timezone)
    wb = Workbook()
    wb.remove(wb.active)
    unit = t["minutes_unit"]
    summary = [[t["site"], f"{r.site_name} ({r.site_id})"], [t["month"], r.month],
               [t["period"], f"{_when(r.start_us, tz)} {t['to']} {_when(r.end_us, tz)}"], [t["as_of"], _when(r.as_of_us, tz)],
               [t["timezone"], r.timezone]] + [[label, value] for _, label, value in figures(r, lang)]
    _sheet(wb, names[0], [t["title"], ""], summary, [24, 36])
    ac = t["alarm_cols"]
    _sheet(wb, names[1], ac[:5] + [c + unit for c in ac[5:]], alarm_rows(r, lang, numbers=True))
    oc = t["order_cols"]
    _sheet(wb, names[2], [oc[i] + (unit if i in (6, 7, 11, 12) else "") for i in range(len(oc))],
           order_rows(r, lang, numbers=True))
    _sheet(wb, names[3], [c.format(days=r.repeat_days) for c in t["repeat_cols"]], repeat_rows(r, lang),
           flagged=lambda row: bool(row[5]))
    _sheet(wb, names[4], t["inspection_cols"], inspection_rows(r, lang))
    ws = _sheet(wb, names[5], t["route_cols"], patrol_rows(r.routes, lang, numbers=True))
    _percent(ws, 9)
    ws = _sheet(wb, names[6], t["guard_cols"], patrol_rows(r.guards, lang, guards=True, numbers=True))
    _percent(ws, 9)
    _sheet(wb, names[7], t["gate_cols"], gate_rows(r))
    _sheet(wb, names[8], t["hour_cols"], [[f"{h['hour']:02d}:00", *(h[k] for k in SERIES)] for h in r.hours])
    tc = t["trend_cols"]
    ws = _sheet(wb, names[9], [tc[0], tc[1], tc[2] + unit, *tc[3:]], trend_rows(r, lang, numbers=True))
    for col in (5, 6, 7, 8):
        _percent(ws, col)
    wb.save(path)
    return Path(path)


def _percent(ws, col: int) -> None:
    for row in ws.iter_rows(min_row=2, min_col=col, max_col=col):
        for c in row:
            c.number_format = "0.0%"


def write_all(r: ServiceMonth, out_dir: str | Path, lang: str = "zh") -> dict[str, Path]:
    """service-<month>.html and .xlsx in out_dir (created if missing), each written beside its
    name and moved into place so a reader never sees half a file."""
    import os
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {}
    for kind in ("html", "xlsx"):
        path = out / f"service-{r.month}.{kind}"
        part = out / f".service-{r.month}.{kind}.part"
        if kind == "html":
            part.write_text(render_html(r, lang), encoding="utf-8")
        else:
            write_xlsx(r, part, lang)
        os.replace(part, path)
        files[kind] = path
    return files


__all__ = ["Durations", "render_html", "write_all", "write_xlsx"]
