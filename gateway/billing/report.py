"""The month's allocation rendered for people: a CSV the fee clerk imports into the billing
system, an Excel workbook for the accountant and a printable HTML report for the property
committee. Rendering only: every figure comes from the AllocationResult, rounded for display by
shown.py so that every row and column adds up as printed; nothing else is recomputed except sums
and shares. The CSV has no totals row: it is the billing system's import, one row per household.

Chinese by default, English with lang="en".
"""

from __future__ import annotations

import csv
import math
import os
from functools import lru_cache
from collections.abc import Sequence
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape
from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE
from openpyxl.styles import Font
from openpyxl.utils import get_column_letter

from .compare import Change, Comparison
from .model import FEN, QUALITY_KINDS, AllocationResult, GroupMonth, HouseholdCharge, MeterMonth, RunInfo
from .shown import shown
from .tables import FeeItem, fee_items, item_amounts, subtotals

TEMPLATES = Path(__file__).resolve().parent / "templates"
LANGS = ("zh", "en")

# --- words -------------------------------------------------------------------------------------

T: dict[str, dict[str, str]] = {
    "zh": {
        "title": "公共用电分摊报告", "site": "小区", "month": "月份", "period": "计费期间",
        "timezone": "时区", "generated": "生成时间", "to": "至",
        "metered_cost": "计量电费", "bill": "电费账单", "difference": "差额(账单−计量)",
        "difference_rule": "差额分摊规则", "recovered": "住户应缴合计", "households": "住户数",
        "allocated_kwh": "分摊电量(kWh)", "estimated_kwh": "其中估算电量(kWh)", "no_bill": "未录入",
        "reconciliation": "对账", "reconciled": "已平账",
        "not_reconciled": "未平账:住户应缴合计与电费账单不一致",
        "rounding_sheets": "金额与电量均为舍入到 0.01 后的数值,各行各列按显示值相加即合计:分表的电量和电费按最大余数法"
                           "一并舍入,使其合计等于分摊电量和计量电费;各组的差额分摊 = 应收金额 − 计量电费,舍入差计入差额分摊列。",
        "billed_total": "分摊电表合计", "unallocated_total": "未分配电表合计",
        "no_bill_note": "未录入电费账单:按计量电费分摊,各组金额四舍五入到分,舍入差如下。",
        "metered_exact": "计量电费(精确)",
        "summary": "汇总", "notes": "说明",
        "chart_daily": "每日分摊电量(kWh)", "chart_tou": "峰平谷电量与电费",
        "buildings_total": "楼栋合计", "units_total": "单元合计", "others": "其他",
        "no_data": "无数据", "share": "占比",
        "tariff_use": "分时电价使用", "tariff": "电价", "tou_period": "时段", "price": "单价(元/kWh)",
        "kwh": "电量(kWh)", "cost": "电费(元)", "total": "合计",
        "groups": "分摊组", "meters": "电表", "quality": "数据质量", "quality_none": "本月无数据质量问题。",
                "reference": "总表(仅对照,不分摊)", "unallocated": "未分配",
        "yes": "是", "no": "否", "yuan": "(元)",
        "rounding_bill": "舍入差(住户应缴合计 − 电费账单)", "rounding_metered": "舍入差(住户应缴合计 − 计量电费)",
        "kind_count": "{name}({n} 条)", "households_count": "住户分摊明细({n} 户)",
        "warning": "警告", "run": "分摊批次", "run_n": "第 {n} 次分摊", "state": "状态", "dry_run": "试算(未保存,未批准)",
        "state_prepared": "已编制(草稿,未批准)", "state_reviewed": "已审核(未批准)", "state_approved": "已批准",
        "state_superseded": "已作废(被第 {n} 次分摊取代)",
        "invoice": "电费发票号", "bill_period": "电费账单期间", "not_given": "未录入",
        "bill_period_differs": "电费账单期间 {a} 至 {b} 与分摊月份 {m} 不一致:账单金额按本月各表计量的电量分摊。",
        "draft_banner": "草稿:本次分摊尚未批准,不得据此收费。",
        "superseded_banner": "已作废:本次分摊已被第 {n} 次分摊取代,不得据此收费。",
        "placeholder_banner": "示例电价:本报告使用的电价({names})在站点文件中标为示例(placeholder: true),"
                              "不是本小区电费账单上的价格,所得金额不得用于收费。请在站点文件的 tariffs 中填入"
                              "实际电价并删除 placeholder 标记。",
        "vacant_rule": "空置房规则", "vacant_count": "本月空置房(入住=否)共 {n} 户。",
        "vacant_include": "空置房与入住户一样分摊:{items}。",
        "vacant_exclude": "空置房不分摊:{items}(由同组的入住户分摊)。",
        "signoff": "审批签字", "signoff_cols": ["环节", "签字人", "时间", "签名"],
        "role_prepared": "编制", "role_reviewed": "审核", "role_approved": "批准",
        "subtotals": "楼栋单元小计", "subtotal_cols": ["楼号", "单元", "户数", "建筑面积(m²)", "金额(元)"],
        "building_subtotal": "{b} 小计",
        "comparison": "与上月比较", "compare_with": "上月({m})第 {n} 次分摊,{state}",
        "lighting_saved": "照明节能(住户少付的电费)",
        "lighting_cols": ["回路", "基准期", "基准期用电(kWh)", "本月用电(kWh)", "按基准应用电(kWh)", "节约(kWh)", "节约(元)"],
        "lighting_explain": "基准为同一回路调整开关时间前的用电,按黑夜时长(日落到次日日出)折算到本月;"
                            "金额按本月电价在黑夜时段的平均价 {price} 元/kWh 计。",
        "compare_approved": "已批准", "compare_draft": "草稿,未批准",
        "no_previous": "上月({m})没有分摊结果,无从比较。",
        "compare_band": "金额变化超过 ±{pct} 的分摊组和住户标出(allocation.change_band);上月没有或本月没有的也标出。",
        "compare_counts": "{g} 个分摊组、{h} 户变化超出 ±{pct}。",
        "compare_group_cols": ["组号", "名称", "上月(元)", "本月(元)", "变化(元)", "变化率", "标记"],
        "compare_household_cols": ["户号", "上月(元)", "本月(元)", "变化(元)", "变化率", "标记"],
        "flag_beyond": "超出", "flag_new": "新增", "flag_gone": "本月无",
        "compare_households": "变化超出范围的住户", "compare_more": "另有 {n} 户,见 XLSX 的比较表。",
        "inspection_quality": "电表及线路巡检与数据质量", "inspection_head": "{name}({period})",
        "inspection_done": "{when} 由 {by} 完成", "inspection_open": "未完成(应于 {due} 前完成)",
        "inspection_missing": "本月没有巡检任务:无从核对电表及线路。",
        "insp_ok": "正常", "insp_fail": "异常", "insp_none": "未记录",
        "insp_cols": ["巡检项目", "结果", "说明", "记录人"], "insp_meter_cols": ["表号", "名称", "数据质量"],
        "insp_meters_none": "本月各表无数据质量问题。",
    },
    "en": {
        "title": "Public electricity allocation", "site": "Site", "month": "Month", "period": "Period",
        "timezone": "Time zone", "generated": "Generated", "to": "to",
        "metered_cost": "Metered cost", "bill": "Utility bill", "difference": "Difference (bill − metered)",
        "difference_rule": "Difference rule", "recovered": "Recovered from households",
        "households": "Households", "allocated_kwh": "Allocated kWh", "estimated_kwh": "of which estimated kWh",
        "no_bill": "not given", "reconciliation": "Reconciliation",
        "reconciled": "Reconciled", "not_reconciled": "NOT reconciled: recovered differs from the bill",
        "rounding_sheets": "Amounts and kWh are rounded to 0.01 and every row and column adds up as shown: the "
                           "billed meters' kWh and costs are rounded together (largest remainder) so that they add up "
                           "to the allocated kWh and the metered cost; a group's difference share is its amount less "
                           "its metered cost, so that column takes the rounding.",
        "billed_total": "Billed meters, total", "unallocated_total": "Unallocated meters, total",
        "no_bill_note": "No utility bill given: the metered cost is allocated, each group rounded to the "
                        "fen; the rounding is shown below.",
        "metered_exact": "Metered cost (exact)",
        "summary": "Summary", "notes": "Notes",
        "chart_daily": "Allocated kWh per day", "chart_tou": "Peak / flat / valley kWh and cost",
        "buildings_total": "All buildings", "units_total": "All units", "others": "Others",
        "no_data": "no data", "share": "Share",
        "tariff_use": "Tariff use", "tariff": "Tariff", "tou_period": "Period", "price": "Price (yuan/kWh)",
        "kwh": "kWh", "cost": "Cost (yuan)", "total": "Total",
        "groups": "Groups", "meters": "Meters", "quality": "Data quality",
        "quality_none": "No data-quality issues this month.",
                "reference": "main supply (reference, not allocated)", "unallocated": "unallocated",
        "yes": "yes", "no": "no", "yuan": " (yuan)",
        "rounding_bill": "Rounding (recovered − bill)", "rounding_metered": "Rounding (recovered − metered cost)",
        "kind_count": "{name} ({n})", "households_count": "Households ({n})",
        "warning": "Warning", "run": "Run", "run_n": "run {n}", "state": "State", "dry_run": "trial (not kept, not approved)",
        "state_prepared": "prepared (draft, not approved)", "state_reviewed": "reviewed (not approved)",
        "state_approved": "approved", "state_superseded": "superseded by run {n}",
        "invoice": "Utility invoice", "bill_period": "Bill period", "not_given": "not given",
        "bill_period_differs": "The bill's period {a} to {b} is not the month {m}: the bill is shared by this "
                               "month's metered consumption.",
        "draft_banner": "Draft: this run is not approved; do not bill from it.",
        "superseded_banner": "Superseded by run {n}: do not bill from this run.",
        "placeholder_banner": "Placeholder prices: the tariffs used ({names}) are marked as placeholders in the site "
                              "file (placeholder: true), not the prices on the estate's bill; these amounts must not "
                              "be billed. Put the real prices in the site file's tariffs and remove the mark.",
        "vacant_rule": "Vacant flats", "vacant_count": "{n} vacant flats (occupied = no) this month.",
        "vacant_include": "Vacant flats share like occupied ones: {items}.",
        "vacant_exclude": "Vacant flats do not share: {items} (the occupied households of the group do).",
        "signoff": "Sign-off", "signoff_cols": ["Step", "By", "When", "Signature"],
        "role_prepared": "Prepared", "role_reviewed": "Reviewed", "role_approved": "Approved",
        "subtotals": "Subtotals by building and unit",
        "subtotal_cols": ["building", "unit", "households", "area_m2", "amount_yuan"],
        "building_subtotal": "{b} subtotal",
        "comparison": "Compared with last month", "compare_with": "{m}, run {n}, {state}",
        "lighting_saved": "Lighting savings (what the households did not pay)",
        "lighting_cols": ["circuit", "baseline", "baseline kWh", "month kWh", "expected kWh", "saved kWh", "saved yuan"],
        "lighting_explain": "The baseline is the same circuit before its switching times changed, scaled to this "
                            "month by the hours of darkness (sunset to sunrise); the money at the month's mean "
                            "price over the dark hours, {price} yuan/kWh.",
        "compare_approved": "approved", "compare_draft": "a draft, not approved",
        "no_previous": "No allocation of {m} in the ledger: nothing to compare with.",
        "compare_band": "Groups and households whose amount changed by more than ±{pct} are flagged "
                        "(allocation.change_band), and those not there in one of the months.",
        "compare_counts": "{g} groups and {h} households changed by more than ±{pct}.",
        "compare_group_cols": ["group", "name", "last month (yuan)", "this month (yuan)", "change (yuan)", "change",
                               "flag"],
        "compare_household_cols": ["household", "last month (yuan)", "this month (yuan)", "change (yuan)", "change",
                                   "flag"],
        "flag_beyond": "beyond", "flag_new": "new", "flag_gone": "gone",
        "compare_households": "Households beyond the band", "compare_more": "{n} more: see the XLSX comparison sheet.",
        "inspection_quality": "Meter and line inspection beside data quality", "inspection_head": "{name} ({period})",
        "inspection_done": "done {when} by {by}", "inspection_open": "not done (due before {due})",
        "inspection_missing": "No inspection task this month: nobody checked the meters and lines.",
        "insp_ok": "ok", "insp_fail": "fault", "insp_none": "not recorded",
        "insp_cols": ["item", "result", "note", "by"], "insp_meter_cols": ["meter", "name", "data quality"],
        "insp_meters_none": "No meter has data-quality notes this month.",
    },
}

# Column headers. The CSV and the households sheet share theirs so the clerk sees one layout:
# these, then one column per fee item (item_header).
HOUSEHOLD_COLS = {
    "zh": ["月份", "户号", "楼号", "单元", "房号", "建筑面积(m²)", "入住", "金额(元)"],
    "en": ["month", "household", "building", "unit", "room", "area_m2", "occupied", "amount_yuan"],
}
METER_COLS = {
    "zh": ["表号", "名称", "回路", "楼号", "分摊组", "电量(kWh)", "估算电量(kWh)"],
    "en": ["meter", "name", "circuit", "building", "group", "kWh", "estimated kWh"],
}
METER_COLS_TAIL = {
    "zh": ["电费(元)", "读数条数", "月初读数", "月末读数"],
    "en": ["cost (yuan)", "readings", "first counter", "last counter"],
}
GROUP_COLS = {
    "zh": ["组号", "名称", "范围", "分摊方式", "电表数", "住户数", "电量(kWh)", "计量电费(元)", "差额分摊(元)",
           "应收金额(元)"],
    "en": ["group", "name", "scope", "key", "meters", "households", "kWh", "metered cost (yuan)",
           "difference share (yuan)", "amount (yuan)"],
}
LINE_COLS = {"zh": ["户号", "分摊组", "组名", "金额(元)"], "en": ["household", "group", "group name", "amount (yuan)"]}
QUALITY_COLS = {
    "zh": ["表号", "名称", "类型", "开始", "结束", "电量(kWh)", "说明"],
    "en": ["meter", "name", "kind", "start", "end", "kWh", "detail"],
}
TARIFF_COLS = {
    "zh": ["电价", "时段", "单价(元/kWh)", "电量(kWh)", "电费(元)"],
    "en": ["tariff", "period", "price (yuan/kWh)", "kWh", "cost (yuan)"],
}
SHEETS = {
    "zh": {"summary": "汇总", "meters": "电表", "groups": "分摊组", "households": "住户", "lines": "分摊明细",
           "quality": "数据质量", "subtotals": "楼栋单元小计", "comparison": "与上月比较",
           "inspection": "巡检与数据质量"},
    "en": {"summary": "Summary", "meters": "Meters", "groups": "Groups", "households": "Households",
           "lines": "Lines", "quality": "Data quality", "subtotals": "Subtotals", "comparison": "Comparison",
           "inspection": "Inspection"},
}

# Data-quality kinds: (short name, what the accountant should understand by it).
KINDS = {
    "zh": {
        "no_data": ("无读数", "本月无读数:该表整月没有可用读数,电量无法计量。"),
        "partial": ("部分无读数", "本月部分时间无读数:月初或月末一段时间没有读数,该段电量未能计入本月;月末未计的部分"
                               "在计数器恢复读数的那个月补计。"),
        "carried": ("跨月补计", "跨月补计:电表在月末前后没有读数,这段读数差全部计入计数器恢复读数的那个月,前一个月只算到最后一个读数,"
                              "因此不会漏计,也不会重复计。"),
        "gap": ("离线估算", "离线期间按线性插值估算:网关与电表失联期间的电量按前后读数线性插值分配到各时段。"),
        "replacement": ("换表", "换表:旧表与新表分别计量,电量为两段之和。"),
        "rollover": ("计数器翻转", "计数器翻转:电表计数器到达上限后从零重新计数,已按上限补足。"),
        "rejected_spike": ("剔除跳变", "剔除不可能的跳变读数:读数增量超过回路最大功率所能消耗的电量,判为错误读数。"),
        "rejected_low": ("剔除倒退", "剔除倒退读数:读数小于此前读数,判为错误读数。"),
        "restarted": ("计数器重新起算", "计数器未登记换表而重新起算:读数回落且未登记换表,按新计数器从零起算。"),
        "ignored_jitter": ("忽略抖动", "忽略读数抖动:在计量分辨率以内的微小倒退,视为正常抖动。"),
        "unallocated": ("未分配", "未分配到任何分摊组:该表电量不向住户分摊,请检查分摊组配置。"),
    },
    "en": {
        "no_data": ("no data", "No readings this month: the meter's consumption could not be measured."),
        "partial": ("partial", "Part of the month without readings: the consumption of that part is not in this "
                               "month; what is missing at its end is billed in the month where the counter resumes."),
        "carried": ("carried", "Silent across a month's end: the counter difference over the silence is billed in "
                               "the month where the counter resumed; the month before ends at its last reading, so "
                               "nothing is lost or billed twice."),
        "gap": ("gap", "Offline gap: the energy over the gap is estimated by linear interpolation between "
                       "the readings around it."),
        "replacement": ("replacement", "Meter replaced: the old and the new meter are counted separately "
                                       "and added."),
        "rollover": ("rollover", "Counter rollover: the counter wrapped to zero at its maximum; the "
                                 "wrap is added back."),
        "rejected_spike": ("rejected spike", "Impossible jump rejected: more energy than the circuit's "
                                             "maximum power allows."),
        "rejected_low": ("rejected low", "Backward reading rejected: lower than an earlier reading."),
        "restarted": ("restarted", "Counter restarted without a recorded replacement: counted from zero "
                                   "on the new counter."),
        "ignored_jitter": ("ignored jitter", "Tiny backward step within the meter's resolution, ignored "
                                             "as jitter."),
        "unallocated": ("unallocated", "Not in any allocation group: its energy is not charged to "
                                       "households; check the group configuration."),
    },
}

CIRCUITS = {
    "zh": {"stairwell_lighting": "楼道照明", "street_lighting": "路灯", "lift": "电梯", "pump": "水泵",
           "gate": "门禁道闸", "main_supply": "总进线", "other": "其他"},
    "en": {"stairwell_lighting": "stairwell lighting", "street_lighting": "street lighting", "lift": "lift",
           "pump": "pump", "gate": "gate", "main_supply": "main supply", "other": "other"},
}
SCOPES = {"zh": {"estate": "全小区", "building": "楼栋", "unit": "单元"},
          "en": {"estate": "estate", "building": "building", "unit": "unit"}}
KEYS = {"zh": {"area": "按建筑面积", "household": "按户", "fixed": "按固定份额"},
        "en": {"area": "by floor area", "household": "per household", "fixed": "fixed shares"}}
RULES = {"zh": {"by_cost": "按各组计量电费比例分摊", "by_area": "按建筑面积分摊到全部住户"},
         "en": {"by_cost": "pro rata to each group's metered cost", "by_area": "over all households by floor area"}}

# Tariff periods: a site names them in its config; these are the usual names, others show as given.
PERIOD_ORDER = ("sharp", "critical_peak", "peak", "flat", "valley", "deep_valley")
PERIODS = {"zh": {"sharp": "尖", "critical_peak": "尖峰", "peak": "峰", "flat": "平", "valley": "谷",
                  "deep_valley": "深谷"},
           "en": {"sharp": "sharp", "critical_peak": "critical peak", "peak": "peak", "flat": "flat",
                  "valley": "valley", "deep_valley": "deep valley"}}
PERIOD_COLORS = {"sharp": "#d6604d", "critical_peak": "#d6604d", "peak": "#f4a582", "flat": "#e6e6e6",
                 "valley": "#92c5de", "deep_valley": "#4393c3"}
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7",
           "#9c755f", "#bab0ac")
# More building (or unit) groups than this are drawn as one "all buildings" series.
FEW_GROUPS = 3
# The printed report lists this many flagged households at most; the workbook has them all.
HTML_FLAGGED = 200


def _lang(lang: str) -> str:
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {', '.join(LANGS)}, not {lang!r}")
    return lang


def _word(table: dict[str, dict[str, str]], lang: str, key: str | None) -> str:
    return "" if key is None else table[lang].get(key, key)


# --- numbers -----------------------------------------------------------------------------------

def _fen(d: Decimal) -> Decimal:
    return d.quantize(FEN, rounding=ROUND_HALF_UP)


def _money(d: Decimal | None) -> str:
    """For display: to the fen with thousands separators."""
    return "—" if d is None else f"{_fen(d):,f}"


def _exact4(d: Decimal) -> str:
    """Sub-fen amounts (unrounded metered cost, rounding) shown to 0.0001 yuan."""
    return f"{d.quantize(Decimal('0.0001'), rounding=ROUND_HALF_UP):,f}"


_kwh = _money       # kWh are shown to 0.01 as well


def _pct(part: Decimal, whole: Decimal) -> str:
    return "—" if not whole else f"{(part * 100 / whole).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP)}%"


def _plain(d: Decimal) -> str:
    """Exact decimal text without exponent (Decimal('1E+2') would print as '1E+2')."""
    return format(d, "f")


def _check_amounts(result: AllocationResult) -> None:
    """The clerk imports these figures as they are: refuse a result whose charges are not to the
    fen or do not add up to what the report says is recovered, rather than print wrong money."""
    total = Decimal(0)
    for c in result.households:
        if c.total != c.total.quantize(FEN):
            raise ValueError(f"household {c.household.id}: total {c.total} is not rounded to the fen")
        total += c.total
    if total != result.recovered:
        raise ValueError(f"household charges add up to {total}, not to recovered {result.recovered}")


def _group_names(result: AllocationResult) -> dict[str, str]:
    return {g.id: g.name or g.id for g in result.groups}


def item_header(item: FeeItem, lang: str) -> str:
    """A fee item's column: its name in Chinese, its id (a stable import name) in English."""
    return f"{item.name}(元)" if lang == "zh" else f"{item.id}_yuan"


def household_cols(items: list[FeeItem], lang: str) -> list[str]:
    return HOUSEHOLD_COLS[lang] + [item_header(i, lang) for i in items]


def _household_row(c: HouseholdCharge, month: str, items: list[FeeItem], item_of: dict[str, int],
                   lang: str) -> list:
    """Month, household id, building, unit, room, area, occupied, amount, then each fee item:
    Decimal stays Decimal."""
    h = c.household
    return [month, h.id, h.building, h.unit, h.room, h.area_m2, T[lang]["yes" if h.occupied else "no"],
            _fen(c.total), *(_fen(a) for a in item_amounts(c, items, item_of))]


def _item_index(items: list[FeeItem]) -> dict[str, int]:
    return {g: i for i, item in enumerate(items) for g in item.groups}


def _periods(result: AllocationResult) -> list[str]:
    """Every tariff period of the month, usual names in their usual order, others as they come."""
    seen: list[str] = []
    for name in [u.period for u in result.tariff_use] + [p for m in result.meters + result.reference
                                                         for p in m.kwh_by_period]:
        if name not in seen:
            seen.append(name)
    return sorted(seen, key=lambda p: (PERIOD_ORDER.index(p) if p in PERIOD_ORDER else len(PERIOD_ORDER),
                                       seen.index(p)))


def _meter_group(m: MeterMonth, reference: bool, lang: str) -> str:
    if reference:
        return T[lang]["reference"]
    return m.group if m.group is not None else T[lang]["unallocated"]


# --- the run: state, sign-off, banners ---------------------------------------------------------

ROLES = ("prepared", "reviewed", "approved")


def _when(d: datetime | None) -> str:
    return "" if d is None else f"{d:%Y-%m-%d %H:%M}"


def run_state(run: RunInfo | None, lang: str) -> str:
    t = T[lang]
    if run is None:
        return t["dry_run"]
    text = t[f"state_{run.state}"].format(n=run.superseded_by)
    return text


def run_rows(result: AllocationResult, run: RunInfo | None, lang: str) -> list[tuple[str, str]]:
    """(label, text) of the run for the report's header."""
    t = T[lang]
    rows = [(t["run"], t["run_n"].format(n=run.id) if run else "—"), (t["state"], run_state(run, lang))]
    invoice = run.invoice if run and run.invoice else t["not_given"]
    period = run.bill_period if run else None
    rows.append((t["invoice"], invoice))
    rows.append((t["bill_period"], f"{period[0]:%Y-%m-%d} {t['to']} {period[1]:%Y-%m-%d}" if period
                 else t["not_given"]))
    return rows


def signoff_rows(run: RunInfo | None, lang: str) -> list[tuple[str, str, str]]:
    """(step, who, when) for 编制 / 审核 / 批准; blank where not signed yet, to sign on paper."""
    t = T[lang]
    out = []
    for role in ROLES:
        s = getattr(run, role) if run is not None else None
        out.append((t[f"role_{role}"], s.by if s else "", _when(s.at) if s else ""))
    return out


def banners(result: AllocationResult, run: RunInfo | None, lang: str) -> list[str]:
    """What must stop a reader from billing with this report, most serious first."""
    t = T[lang]
    out = []
    if result.placeholder_tariffs:
        out.append(t["placeholder_banner"].format(names=", ".join(result.placeholder_tariffs)))
    if run is not None and run.state == "superseded":
        out.append(t["superseded_banner"].format(n=run.superseded_by))
    elif run is None or run.state != "approved":
        out.append(t["draft_banner"])
    return out


def bill_period_note(result: AllocationResult, run: RunInfo | None, lang: str) -> str | None:
    period = run.bill_period if run else None
    if period is None or (result.days and (period[0], period[1]) == (result.days[0], result.days[-1])):
        return None
    return T[lang]["bill_period_differs"].format(a=f"{period[0]:%Y-%m-%d}", b=f"{period[1]:%Y-%m-%d}",
                                                 m=result.month)


def vacant_lines(result: AllocationResult, lang: str) -> list[str]:
    """The rule for vacant flats (occupied = no), as the site file sets it per fee item."""
    t = T[lang]
    by_rule: dict[str, list[str]] = {"include": [], "exclude": []}
    for g in result.groups:
        names = by_rule.setdefault(g.vacant, [])
        if g.fee_item_name not in names:
            names.append(g.fee_item_name)
    vacant = sum(1 for c in result.households if not c.household.occupied)
    out = [t["vacant_count"].format(n=vacant)]
    for rule in ("include", "exclude"):
        if by_rule.get(rule):
            out.append(t[f"vacant_{rule}"].format(items="、".join(by_rule[rule]) if lang == "zh"
                                                  else ", ".join(by_rule[rule])))
    return out


def _ratio(c: Change) -> str:
    r = c.ratio
    return "" if r is None else f"{(r * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP):+}%"


def _flag(c: Change, lang: str) -> str:
    t = T[lang]
    if not c.flagged:
        return ""
    return t["flag_new"] if c.last is None else t["flag_gone"] if c.this is None else t["flag_beyond"]


def _band(comparison: Comparison) -> str:
    return f"{(comparison.band * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_UP).normalize():f} %"


def comparison_lines(comparison: Comparison | None, lang: str) -> list[str]:
    """What the comparison was made with, its band and what it flagged."""
    t = T[lang]
    if comparison is None:
        return []
    if comparison.run is None:
        return [t["no_previous"].format(m=comparison.month)]
    state = t["compare_approved"] if comparison.approved else t["compare_draft"]
    return [t["compare_with"].format(m=comparison.month, n=comparison.run, state=state),
            t["compare_band"].format(pct=_band(comparison)),
            t["compare_counts"].format(g=len(comparison.flagged_groups), h=len(comparison.flagged_households),
                                       pct=_band(comparison))]


def inspection_side(inspection: dict | None, result: AllocationResult, lang: str) -> dict | None:
    """The month's meter-and-line inspection (gateway/maintenance/inspections.py `for_report`) and
    the meters' data-quality notes, to be read side by side: a meter the electrician passed but
    whose readings had gaps (or the other way round) is what the accountant should ask about.
    None: the site has no such inspection plan (no section)."""
    if inspection is None:
        return None
    from zoneinfo import ZoneInfo

    from ..clock import from_us
    t = T[lang]
    tz = ZoneInfo(result.timezone)

    def when(us: int | None) -> str:
        return "" if us is None else f"{from_us(us).astimezone(tz):%Y-%m-%d %H:%M}"

    name = inspection["name"] if lang == "zh" else (inspection.get("name_en") or inspection["plan"])
    if inspection.get("missing"):
        status = t["inspection_missing"]
    elif inspection["done_us"] is not None:
        status = t["inspection_done"].format(when=when(inspection["done_us"]), by=inspection["done_by"] or "")
    else:
        status = t["inspection_open"].format(due=when(inspection["due_us"]))
    items = [(i["name"] if lang == "zh" else (i.get("name_en") or i["id"]),
              t["insp_none"] if i["ok"] is None else t["insp_ok"] if i["ok"] else t["insp_fail"],
              i["note"], i["by"], i["ok"]) for i in inspection["items"]]
    names = _meter_names(result)
    per_meter: dict[str, dict[str, int]] = {}
    for n in _sorted_notes(result):
        kinds = per_meter.setdefault(n.meter, {})
        kinds[n.kind] = kinds.get(n.kind, 0) + 1
    sep = "、" if lang == "zh" else ", "
    meters = [(m, names.get(m, ""), sep.join(f"{_kind_name(k, lang)} {c}" for k, c in kinds.items()))
              for m, kinds in per_meter.items()]
    return {"head": t["inspection_head"].format(name=name, period=inspection["period"]), "status": status,
            "missing": bool(inspection.get("missing")), "items": items, "meters": meters}


# --- CSV ---------------------------------------------------------------------------------------

def write_csv(result: AllocationResult, path: str | Path, lang: str = "zh") -> Path:
    """One row per household for the billing system's import: the month, the household, its
    amount and one column per fee item. UTF-8 with BOM because Excel in China opens BOM-less
    UTF-8 as GBK; amounts are exact decimal text, never floats."""
    lang = _lang(lang)
    _check_amounts(result)
    path = Path(path)
    items = fee_items(result)
    item_of = _item_index(items)
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        w = csv.writer(f)
        w.writerow(household_cols(items, lang))
        for c in result.households:
            row = _household_row(c, result.month, items, item_of, lang)
            w.writerow(row[:5] + [_plain(row[5]), row[6]] + [_plain(v) for v in row[7:]])
    return path


# --- XLSX --------------------------------------------------------------------------------------

MONEY, KWH, PRICE, AREA, STAMP = "#,##0.00", "#,##0.00", "0.0000##", "0.00", "yyyy-mm-dd hh:mm"
BOLD = Font(bold=True)
WARN = Font(bold=True, color="C00000")


def _cell(ws, value, fmt: str | None = None, bold: bool = False, font: Font | None = None) -> WriteOnlyCell:
    if isinstance(value, datetime) and value.tzinfo is not None:
        value = value.replace(tzinfo=None)      # Excel has no time zones; all times are site time
    if isinstance(value, str):
        value = ILLEGAL_CHARACTERS_RE.sub("", value)
    cell = WriteOnlyCell(ws, value)
    if isinstance(value, str) and value.startswith("="):
        cell.data_type = "s"                    # names from config stay text, never a formula
    if fmt:
        cell.number_format = fmt
    if font is not None:
        cell.font = font
    elif bold:
        cell.font = BOLD
    return cell


def _row(ws, values: Sequence, fmts: Sequence[str | None] = (), bold: bool = False, font: Font | None = None) -> None:
    fmts = list(fmts) + [None] * (len(values) - len(fmts))
    if bold or font is not None:
        ws.append([_cell(ws, v, f, bold, font) for v, f in zip(values, fmts)])
    else:
        # a plain value is written by openpyxl's own reused cell: much cheaper than a cell each
        ws.append([_cell(ws, v, f) if f or _needs_cell(v) else v for v, f in zip(values, fmts)])


def _needs_cell(v) -> bool:
    return isinstance(v, str) and (v.startswith("=") or ILLEGAL_CHARACTERS_RE.search(v) is not None) or \
        isinstance(v, datetime) and v.tzinfo is not None


def _sheet(wb: Workbook, title: str, headers: Sequence[str], widths: Sequence[int]):
    ws = wb.create_sheet(title)
    for i, width in enumerate(widths):
        ws.column_dimensions[get_column_letter(i + 1)].width = width
    ws.freeze_panes = "A2"
    _row(ws, headers, bold=True)
    return ws


def write_xlsx(result: AllocationResult, path: str | Path, lang: str = "zh", run: RunInfo | None = None,
               comparison: Comparison | None = None, inspection: dict | None = None) -> Path:
    """The accountant's workbook: summary (with the run, its sign-off and the warnings), meters,
    groups, households, household × group lines, data quality, subtotals per building and unit,
    and the comparison with last month. Every amount and kWh is written already rounded to 0.01
    (shown.py), so each row and column adds up exactly as displayed; every sheet but the
    data-quality notes and the comparison ends with its totals row."""
    lang = _lang(lang)
    _check_amounts(result)
    path = Path(path)
    t, sheets = T[lang], SHEETS[lang]
    names = _group_names(result)
    periods = _periods(result)
    fig = shown(result, periods)
    # write_only streams rows to disk: 9,216 households and their lines stay cheap in memory.
    wb = Workbook(write_only=True)

    ws = wb.create_sheet(sheets["summary"])
    ws.column_dimensions["A"].width = 24
    for c in "BCDE":
        ws.column_dimensions[c].width = 18
    for text in banners(result, run, lang):
        _row(ws, [t["warning"], text], bold=True, font=WARN)
    rows: list[tuple[str, object, str | None]] = [
        (t["site"], f"{result.site_name} ({result.site_id})", None),
        (t["month"], result.month, None),
        *((label, text, None) for label, text in run_rows(result, run, lang)),
        (t["period"], _period_text(result, lang), None),
        (t["timezone"], result.timezone, None),
        (t["metered_cost"], fig.metered_cost, MONEY),
        (t["bill"], result.bill if result.bill is not None else t["no_bill"], MONEY),
        (t["difference"], fig.difference, MONEY),
        (t["difference_rule"], _word(RULES, lang, result.difference_rule), None),
        (t["recovered"], result.recovered, MONEY),
        (t["households"], len(result.households), "0"),
        (t["allocated_kwh"], fig.allocated_kwh, KWH),
        (t["generated"], result.generated_at, STAMP),
    ]
    for label, value, fmt in rows:
        _row(ws, [label, value], [None, fmt])
    period_note = bill_period_note(result, run, lang)
    for note in result.note_texts(lang) + ([period_note] if period_note else []) + [t["rounding_sheets"]]:
        _row(ws, [t["notes"], note])
    for line in vacant_lines(result, lang):
        _row(ws, [t["vacant_rule"], line])
    for line in comparison_lines(comparison, lang):
        _row(ws, [t["comparison"], line])
    ws.append([])
    _row(ws, [t["signoff"]], bold=True)
    _row(ws, t["signoff_cols"], bold=True)
    for step, who, when in signoff_rows(run, lang):
        _row(ws, [step, who or None, when or None, "_" * 16])     # a line to sign on paper, signed or not
    ws.append([])
    _row(ws, TARIFF_COLS[lang], bold=True)
    for u, (kwh, cost) in zip(result.tariff_use, fig.tariff):
        _row(ws, [u.tariff, _word(PERIODS, lang, u.period), u.price, kwh, cost], [None, None, PRICE, KWH, MONEY])
    _row(ws, [t["total"], None, None, *_totals(fig.tariff)], [None, None, None, KWH, MONEY], bold=True)

    ws = _sheet(wb, sheets["meters"],
                METER_COLS[lang] + [f"{_word(PERIODS, lang, p)} kWh" for p in periods] + METER_COLS_TAIL[lang],
                [12, 24, 14, 8, 14, 12, 12] + [11] * len(periods) + [12, 9, 12, 12])
    fmts = [None] * 5 + [KWH] * (2 + len(periods)) + [MONEY, "0", KWH, KWH]
    billed = [m for m in result.meters if m.group is not None]
    blocks = [(billed, t["billed_total"]), ([m for m in result.meters if m.group is None], t["unallocated_total"]),
              (result.reference, None)]
    for meters, total in blocks:
        figures = []
        for m in meters:
            f = fig.meters[m.meter]
            figures.append([f.kwh, f.estimated_kwh, *f.kwh_by_period, f.cost, m.readings])
            _row(ws, [m.meter, m.name, _word(CIRCUITS, lang, m.circuit), m.building,
                      _meter_group(m, total is None, lang), *figures[-1], f.first_counter, f.last_counter], fmts)
        if meters and total:     # the main meters are a reference, not a part of any total
            _row(ws, [total, None, None, None, None, *_totals(figures)], fmts, bold=True)

    ws = _sheet(wb, sheets["groups"], GROUP_COLS[lang], [14, 24, 8, 12, 8, 8, 12, 14, 14, 14])
    money4 = [KWH, MONEY, MONEY, MONEY]
    figures = []
    for g in result.groups:
        f = fig.groups[g.id]
        figures.append([len(g.meters), len(g.households), f.kwh, f.metered_cost, f.difference_share, f.amount])
        _row(ws, [g.id, g.name, _word(SCOPES, lang, g.scope), _word(KEYS, lang, g.key), *figures[-1]],
             [None] * 4 + ["0", "0"] + money4)
    _row(ws, [t["total"], None, None, None, None, None, *_totals(figures)[2:]], [None] * 6 + money4, bold=True)

    items = fee_items(result)
    item_of = _item_index(items)
    ws = _sheet(wb, sheets["households"], household_cols(items, lang), [8, 12, 8, 8, 8, 12, 6, 12] + [12] * len(items))
    hh_fmts = [None] * 5 + [AREA, None] + [MONEY] * (1 + len(items))
    for c in result.households:
        _row(ws, _household_row(c, result.month, items, item_of, lang), hh_fmts)
    rows_by_building, total = subtotals(result, items)
    _row(ws, [t["total"], None, None, None, None, total.area_m2, None, total.amount, *total.items], hh_fmts, bold=True)

    ws = _sheet(wb, sheets["lines"], LINE_COLS[lang], [12, 14, 24, 12])
    for c in result.households:
        for g, amount in c.lines.items():
            _row(ws, [c.household.id, g, names.get(g, g), amount], [None, None, None, MONEY])
    _row(ws, [t["total"], None, None, result.recovered], [None, None, None, MONEY], bold=True)

    # The notes' kWh are of different kinds (estimated, rejected, carried): they have no total.
    ws = _sheet(wb, sheets["quality"], QUALITY_COLS[lang], [12, 24, 14, 17, 17, 12, 60])
    meter_names = _meter_names(result)
    for n in _sorted_notes(result):
        _row(ws, [n.meter, meter_names.get(n.meter, ""), _kind_name(n.kind, lang), n.start, n.end, n.kwh,
                  n.detail if lang == "zh" else n.detail_en], [None, None, None, STAMP, STAMP, KWH])

    ws = _sheet(wb, sheets["subtotals"], t["subtotal_cols"] + [item_header(i, lang) for i in items],
                [14, 8, 8, 12, 12] + [12] * len(items))
    sub_fmts = [None, None, "0", AREA, MONEY] + [MONEY] * len(items)
    for sub in rows_by_building:
        if sub.unit is None:
            _row(ws, [t["building_subtotal"].format(b=sub.building), None, sub.households, sub.area_m2, sub.amount,
                      *sub.items], sub_fmts, bold=True)
        else:
            _row(ws, [sub.building, sub.unit, sub.households, sub.area_m2, sub.amount, *sub.items], sub_fmts)
    _row(ws, [t["total"], None, total.households, total.area_m2, total.amount, *total.items], sub_fmts, bold=True)

    # Changes have no total: last month's and this month's groups need not be the same ones.
    ws = _sheet(wb, sheets["comparison"], t["compare_group_cols"], [14, 24, 14, 14, 14, 10, 8])
    for line in comparison_lines(comparison, lang):
        _row(ws, [line])
    if comparison is not None and comparison.run is not None:
        for c in comparison.groups:
            _row(ws, [c.key, c.name, c.last, c.this, c.delta, _ratio(c) or None, _flag(c, lang) or None],
                 [None, None, MONEY, MONEY, MONEY], font=WARN if c.flagged else None)
        ws.append([])
        _row(ws, t["compare_household_cols"], bold=True)
        for c in sorted(comparison.households, key=lambda c: not c.flagged):
            _row(ws, [c.key, c.last, c.this, c.delta, _ratio(c) or None, _flag(c, lang) or None],
                 [None, MONEY, MONEY, MONEY],
                 font=WARN if c.flagged else None)

    side = inspection_side(inspection, result, lang)
    if side is not None:
        # the inspection's items on the left, the meters with data-quality notes on the right
        ws = _sheet(wb, sheets["inspection"], t["insp_cols"] + [None] + t["insp_meter_cols"],
                    [28, 10, 30, 10, 3, 12, 24, 40])
        _row(ws, [side["head"], side["status"]], font=WARN if side["missing"] or any(
            i[4] is False for i in side["items"]) else None)
        left = [list(i[:4]) for i in side["items"]]
        right = [list(m) for m in side["meters"]] or [[t["insp_meters_none"]]]
        for k in range(max(len(left), len(right))):
            row = (left[k] if k < len(left) else [None] * 4) + [None] + (right[k] if k < len(right) else [])
            _row(ws, row, font=WARN if k < len(side["items"]) and side["items"][k][4] is False else None)

    wb.save(path)
    return path


def _totals(rows: Sequence[Sequence[Decimal]]) -> list[Decimal]:
    """Column sums of rows of figures (already rounded: the sums are what the eye adds up)."""
    return [sum(col, Decimal(0)) for col in zip(*rows)] if rows else []


def _period_text(result: AllocationResult, lang: str) -> str:
    if not result.days:
        return f"{result.start:%Y-%m-%d} {T[lang]['to']} {result.end:%Y-%m-%d}"
    return f"{result.days[0]:%Y-%m-%d} {T[lang]['to']} {result.days[-1]:%Y-%m-%d}"


def _meter_names(result: AllocationResult) -> dict[str, str]:
    return {m.meter: m.name for m in result.meters + result.reference}


def _kind_name(kind: str, lang: str) -> str:
    return KINDS[lang].get(kind, (kind, ""))[0]


def _sorted_notes(result: AllocationResult):
    """By kind in the report's order (unknown kinds last), then meter and time."""
    order = {k: i for i, k in enumerate(QUALITY_KINDS)}
    return sorted(result.quality, key=lambda n: (order.get(n.kind, len(order)), n.kind, n.meter, n.start))


# --- HTML --------------------------------------------------------------------------------------

def _daily_series(result: AllocationResult, lang: str) -> list[tuple[str, list[Decimal]]]:
    """The chart's series: each estate group by name; building (unit) groups each on their own
    when few, summed as one series when there are many (a site has one per building)."""
    n = len(result.days)

    def pad(xs: Sequence[Decimal]) -> list[Decimal]:
        return (list(xs) + [Decimal(0)] * n)[:n]

    def total(gs: list[GroupMonth]) -> list[Decimal]:
        return [sum(col, Decimal(0)) for col in zip(*(pad(g.daily_kwh) for g in gs))] if gs else pad([])

    series = [(g.name or g.id, pad(g.daily_kwh)) for g in result.groups if g.scope not in ("building", "unit")]
    for scope, label in (("building", T[lang]["buildings_total"]), ("unit", T[lang]["units_total"])):
        gs = [g for g in result.groups if g.scope == scope]
        if len(gs) <= FEW_GROUPS:
            series += [(g.name or g.id, pad(g.daily_kwh)) for g in gs]
        else:
            series.append((label, total(gs)))
    if len(series) > len(PALETTE):
        # Keep the largest series (in their order) and fold the rest so every colour stays distinct.
        big = set(sorted(range(len(series)), key=lambda i: sum(series[i][1]), reverse=True)[:len(PALETTE) - 1])
        rest = [s[1] for i, s in enumerate(series) if i not in big]
        series = [s for i, s in enumerate(series) if i in big]
        series.append((T[lang]["others"], [sum(col, Decimal(0)) for col in zip(*rest)]))
    return series


def _nice_scale(top: float) -> tuple[float, int]:
    """An axis maximum of 1, 2, 2.5 or 5 × 10^k steps above `top`, and the number of steps."""
    if top <= 0:
        return 1.0, 4
    raw = top / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    steps = max(1, math.ceil(top / step - 1e-9))
    return step * steps, steps


def _tick(v: float, step: float) -> str:
    return f"{v:,.0f}" if step >= 1 else f"{round(v, 6):g}"


def _svg_daily(result: AllocationResult, series: list[tuple[str, list[Decimal]]], lang: str) -> Markup:
    width, height, left, right, top, bottom = 720, 250, 52, 8, 12, 28
    pw, ph = width - left - right, height - top - bottom
    days = result.days
    totals = [sum((s[i] for _, s in series), Decimal(0)) for i in range(len(days))]
    ymax, steps = _nice_scale(float(max(totals, default=0)))
    title = escape(T[lang]["chart_daily"])
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
           f'role="img" aria-label="{title}">']
    for k in range(steps + 1):
        y = top + ph - ph * k / steps
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" class="grid"/>'
                   f'<text x="{left - 4}" y="{y + 3:.1f}" class="yl">{_tick(ymax * k / steps, ymax / steps)}</text>')
    if not days or not any(totals):
        out.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" class="empty">{escape(T[lang]["no_data"])}</text>')
    slot = pw / max(len(days), 1)
    for i, day in enumerate(days):
        x, y = left + slot * i + slot * 0.125, top + ph
        for (label, values), color in zip(series, PALETTE):
            v = values[i]
            if v <= 0:
                continue
            h = float(v) / ymax * ph
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{slot * 0.75:.1f}" height="{h:.1f}" fill="{color}">'
                       f'<title>{escape(label)} {day:%m-%d}: {_kwh(v)} kWh</title></rect>')
        out.append(f'<text x="{x + slot * 0.375:.1f}" y="{height - bottom + 14}" class="xl">{day.day}</text>')
    out.append("</svg>")
    return Markup("".join(out))


def _tou_rows(result: AllocationResult, tariff: list[tuple[Decimal, Decimal]], lang: str) -> list[dict]:
    """Tariff use as shown (`tariff`: kWh and cost per row of result.tariff_use) summed per period
    over the month's tariffs (a price change mid-month makes two)."""
    kwh: dict[str, Decimal] = {}
    cost: dict[str, Decimal] = {}
    for u, (k, c) in zip(result.tariff_use, tariff):
        kwh[u.period] = kwh.get(u.period, Decimal(0)) + k
        cost[u.period] = cost.get(u.period, Decimal(0)) + c
    periods = [p for p in _periods(result) if p in kwh]
    total_kwh, total_cost = sum(kwh.values(), Decimal(0)), sum(cost.values(), Decimal(0))
    others = iter(PALETTE)
    return [{"period": p, "label": _word(PERIODS, lang, p), "color": PERIOD_COLORS.get(p) or next(others),
             "kwh": kwh[p], "cost": cost[p], "kwh_share": _pct(kwh[p], total_kwh),
             "cost_share": _pct(cost[p], total_cost)} for p in periods]


def _svg_tou(rows: list[dict], lang: str) -> Markup:
    """Two 100 % horizontal stacked bars, kWh and cost, labelled with the period and its share."""
    width, left, bar, gap = 720, 70, 30, 12
    height = gap + 2 * (bar + gap)
    title = escape(T[lang]["chart_tou"])
    out = [f'<svg class="chart" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg" '
           f'role="img" aria-label="{title}">']
    pw = width - left - 8
    for n, (key, label) in enumerate((("kwh", "kWh"), ("cost", T[lang]["cost"]))):
        y = gap + n * (bar + gap)
        out.append(f'<text x="{left - 6}" y="{y + bar / 2 + 4}" class="yl">{escape(label)}</text>')
        total = sum((r[key] for r in rows), Decimal(0))
        if total <= 0:
            out.append(f'<rect x="{left}" y="{y}" width="{pw}" height="{bar}" class="none"/>'
                       f'<text x="{left + pw / 2}" y="{y + bar / 2 + 4}" class="empty">'
                       f'{escape(T[lang]["no_data"])}</text>')
            continue
        x = float(left)
        for r in rows:
            w = float(max(r[key], Decimal(0)) / total) * pw
            share = r[f"{key}_share"]
            value = f'{_kwh(r["kwh"])} kWh' if key == "kwh" else f'¥{_money(r["cost"])}'
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar}" fill="{r["color"]}">'
                       f'<title>{escape(r["label"])}: {escape(value)} ({share})</title></rect>')
            if w > 60:      # a label only where it fits; the table below the chart has every figure
                out.append(f'<text x="{x + w / 2:.1f}" y="{y + bar / 2 + 4}" class="bl">'
                           f'{escape(r["label"])} {share}</text>')
            x += w
    out.append("</svg>")
    return Markup("".join(out))


def _html_household(row: list) -> tuple[str, ...]:
    """A households-table row as shown: the CSV's columns without the month (the page says it)."""
    _, hid, building, unit, room, area, occupied, total, *items = row
    return (hid, building, unit, room, _plain(area), occupied, _money(total), *(_money(a) for a in items))


@lru_cache(maxsize=1)
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(money=_money, kwh=_kwh, exact4=_exact4)
    return env


def render_html(result: AllocationResult, lang: str = "zh", run: RunInfo | None = None,
                comparison: Comparison | None = None, lighting: list | None = None,
                inspection: dict | None = None) -> str:
    lang = _lang(lang)
    _check_amounts(result)
    t = T[lang]
    periods = _periods(result)
    meter_names = _meter_names(result)
    fig = shown(result, periods)

    quality = []
    notes = _sorted_notes(result)
    for kind in dict.fromkeys(n.kind for n in notes):
        name, explanation = KINDS[lang].get(kind, (kind, ""))
        quality.append({"kind": kind, "name": name, "explanation": explanation,
                        "notes": [{"meter": n.meter, "name": meter_names.get(n.meter, ""),
                                   "start": f"{n.start:%Y-%m-%d %H:%M}", "end": f"{n.end:%Y-%m-%d %H:%M}",
                                   "kwh": _kwh(n.kwh), "detail": n.detail if lang == "zh" else n.detail_en}
                                  for n in notes if n.kind == kind]})

    def meter_row(m: MeterMonth, reference: bool) -> dict:
        return {"m": m, "f": fig.meters[m.meter], "circuit": _word(CIRCUITS, lang, m.circuit),
                "group": _meter_group(m, reference, lang), "estimated": m.estimated_kwh > 0, "reference": reference}

    def meter_total(meters: list[MeterMonth], label: str) -> dict:
        rows = [[f.kwh, f.estimated_kwh, *f.kwh_by_period, f.cost, m.readings]
                for m, f in ((m, fig.meters[m.meter]) for m in meters)]
        kwh, estimated, *rest = _totals(rows)
        return {"label": label, "kwh": kwh, "estimated_kwh": estimated, "by_period": rest[:-2], "cost": rest[-2],
                "readings": rest[-1]}

    billed = [m for m in result.meters if m.group is not None]
    unallocated = [m for m in result.meters if m.group is None]
    meter_blocks = [([meter_row(m, False) for m in ms], meter_total(ms, t[label]) if ms else None)
                    for ms, label in ((billed, "billed_total"), (unallocated, "unallocated_total"))]
    meter_blocks.append(([meter_row(m, True) for m in result.reference], None))
    daily = _daily_series(result, lang)
    tou = _tou_rows(result, fig.tariff, lang)
    group_figures = [[fig.groups[g.id].kwh, fig.groups[g.id].metered_cost, fig.groups[g.id].difference_share,
                      fig.groups[g.id].amount] for g in result.groups]
    # without a bill the exact metered cost is shown to 0.0001, and the rounding so that they add up
    metered4 = result.metered_cost.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    items = fee_items(result)
    item_of = _item_index(items)
    rows_by_building, total = subtotals(result, items)
    period_note = bill_period_note(result, run, lang)
    flagged = comparison.flagged_households if comparison is not None else []
    context = {
        "t": t, "lang": lang, "r": result, "fig": fig,
        "period_text": _period_text(result, lang),
        "rule": _word(RULES, lang, result.difference_rule),
        "allocated_kwh": fig.allocated_kwh,
        "estimated_kwh": sum((fig.meters[m.meter].estimated_kwh for m in billed), Decimal(0)),
        "metered4": metered4,
        "rounding": (result.recovered - result.bill) if result.bill is not None else result.recovered - metered4,
        "daily_svg": _svg_daily(result, daily, lang),
        "daily_legend": list(zip((s[0] for s in daily), PALETTE)),
        "tou_svg": _svg_tou(tou, lang), "tou": tou,
        "tou_total": {k: sum((row[k] for row in tou), Decimal(0)) for k in ("kwh", "cost")},
        "tariff_use": [(u, _word(PERIODS, lang, u.period), k, c) for u, (k, c) in zip(result.tariff_use, fig.tariff)],
        "groups": [(g, _word(SCOPES, lang, g.scope), _word(KEYS, lang, g.key), f)
                   for g, f in zip(result.groups, group_figures)],
        "group_totals": _totals(group_figures),
        "periods": [_word(PERIODS, lang, p) for p in periods],
        "meter_blocks": meter_blocks,
        "meter_cols": METER_COLS[lang], "meter_cols_tail": METER_COLS_TAIL[lang],
        "group_cols": GROUP_COLS[lang], "tariff_cols": TARIFF_COLS[lang],
        "quality_cols": [c for i, c in enumerate(QUALITY_COLS[lang]) if i != 2],   # kind is the heading
        "household_cols": household_cols(items, lang)[1:],
        "quality": quality,
        # Pre-formatted strings: 9,216 rows render fast and the template stays a plain loop.
        "households": [_html_household(_household_row(c, result.month, items, item_of, lang))
                       for c in result.households],
        "hh_total": total,
        "area_total": _plain(total.area_m2),
        "notes": result.note_texts(lang) + ([period_note] if period_note else []),
        "banners": banners(result, run, lang),
        "run_rows": run_rows(result, run, lang),
        "run_state": run.state if run else "trial",
        "signoff": signoff_rows(run, lang),
        "vacant": vacant_lines(result, lang),
        "subtotal_cols": t["subtotal_cols"] + [item_header(i, lang) for i in items],
        "subtotals": [(t["building_subtotal"].format(b=x.building) if x.unit is None else x.building,
                       "" if x.unit is None else x.unit, x.households, _plain(x.area_m2), x.amount, x.items,
                       x.unit is None) for x in rows_by_building],
        "comparison": comparison if comparison is not None and comparison.run is not None else None,
        "comparison_lines": comparison_lines(comparison, lang),
        "compare_groups": [(c, _ratio(c), _flag(c, lang)) for c in (comparison.groups if comparison else [])],
        "compare_households": [(c, _ratio(c), _flag(c, lang)) for c in flagged[:HTML_FLAGGED]],
        "compare_more": max(0, len(flagged) - HTML_FLAGGED),
        # what the lighting plans saved (gateway/lighting/savings.py): rows, or None for no section
        "lighting": lighting or None,
        "lighting_price": next((str(x.price) for x in lighting or () if x.price is not None), "—"),
        "inspection": inspection_side(inspection, result, lang),
    }
    return _environment().get_template("report.html").render(context)


def write_html(result: AllocationResult, path: str | Path, lang: str = "zh", run: RunInfo | None = None,
               comparison: Comparison | None = None, lighting: list | None = None,
               inspection: dict | None = None) -> Path:
    """A self-contained printable report (inline CSS and SVG, no script, no external resource)."""
    path = Path(path)
    path.write_text(render_html(result, lang, run, comparison, lighting, inspection), encoding="utf-8")
    return path


# --- all ---------------------------------------------------------------------------------------

def report_names(month: str, run: int | None) -> str:
    """The files' stem: a kept run's own (`allocation-2026-10-run3`), else the month's."""
    return f"allocation-{month}" if run is None else f"allocation-{month}-run{run}"


def write_all(result: AllocationResult, out_dir: str | Path, lang: str = "zh", run: RunInfo | None = None,
              comparison: Comparison | None = None, month_files: bool | None = None,
              lighting: list | None = None, inspection: dict | None = None) -> dict[str, Path]:
    """The CSV, XLSX and HTML in out_dir (created if missing): `allocation-<month>-run<id>.*` for a
    kept run, and the same files as `allocation-<month>.*` when the run is the month's answer
    (`month_files` None) or `month_files` says so; a trial (`run` None) writes only the month's.
    Each file is written beside its name and moved into place, so a reader (the console) never
    sees half a file."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = report_names(result.month, run.id if run else None)
    writers = {"csv": lambda p: write_csv(result, p, lang),
               "xlsx": lambda p: write_xlsx(result, p, lang, run, comparison, inspection),
               "html": lambda p: write_html(result, p, lang, run, comparison, lighting, inspection)}
    files: dict[str, Path] = {}
    for kind, write in writers.items():
        path = out / f"{stem}.{kind}"
        part = out / f".{stem}.{kind}.part"
        write(part)
        os.replace(part, path)
        files[kind] = path
    if run is not None and (run.answer if month_files is None else month_files):
        for kind, path in files.items():
            part = out / f".{report_names(result.month, None)}.{kind}.part"
            part.write_bytes(path.read_bytes())
            os.replace(part, out / f"{report_names(result.month, None)}.{kind}")
    return files
