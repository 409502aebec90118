"""The allocation reports: CSV for the fee clerk, XLSX for the accountant, HTML for print.
Results are built by hand so each test knows the figures it must find."""

import csv
import re
import xml.etree.ElementTree as ET
import zipfile
from datetime import date, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import openpyxl
import pytest

from gateway.billing import report
from gateway.billing.model import (FEN, AllocationResult, GroupMonth, Household, HouseholdCharge, MeterMonth,
                                   QualityNote, TariffUse)

TZ = ZoneInfo("Asia/Shanghai")
DAYS = [date(2026, 10, 1) + timedelta(days=i) for i in range(31)]
D = Decimal
PRICES = {"peak": D("0.8265"), "flat": D("0.5510"), "valley": D("0.2755")}
EVIL = "路灯<script>alert(1)</script>"


def at(day, hour=0, minute=0):
    return datetime(2026, 10, day, hour, minute, tzinfo=TZ)


def split(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """Amount over weights to the fen, remainder to the largest fractions (adds up exactly)."""
    cents, whole = int(amount / FEN), sum(weights)
    raw = [cents * w / whole for w in weights]
    out = [int(r) for r in raw]
    for i in sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)[:cents - sum(out)]:
        out[i] += 1
    return [D(c) * FEN for c in out]


def daily(kwh: Decimal) -> list[Decimal]:
    return split(kwh, [D(1 + i % 3) for i in range(len(DAYS))])


def meter(mid, name, circuit, building, group, kwh, estimated=D(0)):
    by_period = dict(zip(PRICES, split(kwh, [D(3), D(4), D(3)])))
    cost_by_period = {p: k * PRICES[p] for p, k in by_period.items()}
    return MeterMonth(meter=mid, name=name, circuit=circuit, building=building, group=group, kwh=kwh,
                      estimated_kwh=estimated, kwh_by_period=by_period, cost=sum(cost_by_period.values()),
                      cost_by_period=cost_by_period, daily_kwh=daily(kwh), readings=2976,
                      first_counter=D("10234.56"), last_counter=D("10234.56") + kwh)


def households(buildings: int, per_building: int) -> list[Household]:
    out = []
    for b in range(1, buildings + 1):
        for i in range(per_building):
            unit, room = 1 + i // 48, 101 + (i % 48) // 2 * 100 + i % 2
            out.append(Household(id=f"{b}-{unit}-{room}", building=f"{b}号楼", unit=f"{unit}单元", room=str(room),
                                 area_m2=D("89.50") + D(i % 5) * D("10.25"), occupied=i % 7 != 3))
    return out


def build(with_bill: bool = True, buildings: int = 2, per_building: int = 3) -> AllocationResult:
    """An estate street-lighting group over everyone and one stairwell group per building;
    with a bill, its difference to the metered cost is spread by cost."""
    homes = households(buildings, per_building)
    meters = [meter("M03", EVIL, "street_lighting", None, "street", D("300.00"), estimated=D("12.50")),
              meter("M04", "=HYPERLINK(\"http://x\")水泵", "pump", None, None, D("40.00"))]
    groups = [GroupMonth(id="street", name="公共路灯", scope="estate", key="area", meters=["M03"],
                         households=[h.id for h in homes], kwh=D(0), metered_cost=D(0), difference_share=D(0),
                         amount=D(0), daily_kwh=[])]
    for b in range(1, buildings + 1):
        m = meter(f"M1{b:02d}", f"{b}号楼楼道照明", "stairwell_lighting", f"{b}号楼", f"stair-{b}", D("100.00") + b)
        meters.append(m)
        groups.append(GroupMonth(id=f"stair-{b}", name=f"{b}号楼楼道照明", scope="building", key="household",
                                 meters=[m.meter], households=[h.id for h in homes if h.building == f"{b}号楼"],
                                 kwh=D(0), metered_cost=D(0), difference_share=D(0), amount=D(0), daily_kwh=[],
                                 item="stair", item_name="楼道照明"))
    by_id = {m.meter: m for m in meters}
    for g in groups:
        g.kwh = sum(by_id[m].kwh for m in g.meters)
        g.metered_cost = sum(by_id[m].cost for m in g.meters)
        g.daily_kwh = [sum(x) for x in zip(*(by_id[m].daily_kwh for m in g.meters))]
    metered = sum(g.metered_cost for g in groups)
    bill = (metered * D("1.05")).quantize(FEN) if with_bill else None
    for g in groups:
        g.difference_share = (bill - metered) * g.metered_cost / metered if with_bill else D(0)
    amounts = split(bill if with_bill else metered.quantize(FEN), [g.metered_cost for g in groups])
    lines: dict[str, dict[str, Decimal]] = {h.id: {} for h in homes}
    for g, amount in zip(groups, amounts):
        g.amount = amount
        sharing = set(g.households)
        members = [h for h in homes if h.id in sharing]
        weights = [h.area_m2 if g.key == "area" else D(1) for h in members]
        for h, a in zip(members, split(amount, weights)):
            lines[h.id][g.id] = a
    charges = [HouseholdCharge(household=h, lines=lines[h.id], total=sum(lines[h.id].values())) for h in homes]
    use = [TariffUse(tariff="吉林峰谷电价2026", period=p, price=price,
                     kwh=sum(m.kwh_by_period[p] for m in meters if m.group),
                     cost=sum(m.cost_by_period[p] for m in meters if m.group)) for p, price in PRICES.items()]
    quality = [
        QualityNote("M101", "gap", at(3, 2), at(3, 9, 15), D("3.25"), "离线7小时15分钟,按线性插值补 3.25 kWh",
                    "offline 7 h 15 min, 3.25 kWh interpolated"),
        QualityNote("M102", "replacement", at(12, 10), at(12, 10, 30), None, "旧表 MX-1 末读数 5123.4,新表起始 0",
                    "old meter MX-1 ended at 5123.4, new one starts at 0"),
        QualityNote("M03", "rejected_spike", at(20, 13), at(20, 13, 15), D("9999.00"), "跳变 9999 kWh 已剔除",
                    "jump of 9999 kWh rejected"),
        QualityNote("M04", "unallocated", at(1), at(31, 23, 59), D("40.00"), "水泵未配置分摊组",
                    "pump is in no group"),
    ]
    reference = [meter("M00", "总进线", "main_supply", None, None, D("600.00"))]
    return AllocationResult(
        site_id="cc-lakeside", site_name="长春湖畔花园", month="2026-10", timezone="Asia/Shanghai",
        start=at(1), end=datetime(2026, 11, 1, tzinfo=TZ), days=DAYS, meters=meters, reference=reference,
        groups=groups, households=charges, quality=quality, tariff_use=use, metered_cost=metered, bill=bill,
        difference=(bill - metered) if with_bill else None, difference_rule="by_cost",
        recovered=sum(c.total for c in charges), generated_at=datetime(2026, 11, 2, 8, 30, tzinfo=TZ),
        notes=[("10月12日2号楼换表", "building 2 meter replaced on 12 October")])


def as_decimal(v) -> Decimal:
    """A number read back from Excel (a binary float) as yuan to the fen."""
    return D(str(v)).quantize(FEN)


# --- CSV ---------------------------------------------------------------------------------------

def test_csv_has_bom_chinese_header_and_exact_amounts(tmp_path):
    r = build()
    path = report.write_csv(r, tmp_path / "a.csv")
    raw = path.read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf")
    rows = list(csv.reader(raw.decode("utf-8-sig").splitlines()))
    # one column per fee item: every building's stairwell group is the one item 楼道照明
    assert rows[0] == ["月份", "户号", "楼号", "单元", "房号", "建筑面积(m²)", "入住", "金额(元)", "公共路灯(元)",
                       "楼道照明(元)"]
    body = rows[1:]
    assert [row[1] for row in body] == [c.household.id for c in r.households]
    assert {row[0] for row in body} == {"2026-10"}
    assert all(re.fullmatch(r"\d+\.\d\d", v) for row in body for v in row[7:])
    assert sum(D(row[7]) for row in body) == r.recovered
    first = r.households[0]
    assert body[0][2:7] == ["1号楼", "1单元", "101", "89.50", "是"]
    assert D(body[0][7]) == first.total
    assert body[0][8:] == [str(first.lines["street"]), str(first.lines["stair-1"])]
    second = next(i for i, c in enumerate(r.households) if c.household.building == "2号楼")
    assert D(body[second][9]) == r.households[second].lines["stair-2"]           # building 2 in the same column
    # each row adds up to its amount, each item column to its groups' amounts
    assert all(D(row[8]) + D(row[9]) == D(row[7]) for row in body)
    assert sum(D(row[8]) for row in body) == r.groups[0].amount
    assert sum(D(row[9]) for row in body) == sum(g.amount for g in r.groups[1:])


def test_csv_english_headers(tmp_path):
    rows = list(csv.reader(report.write_csv(build(), tmp_path / "a.csv", lang="en")
                           .read_text(encoding="utf-8-sig").splitlines()))
    assert rows[0] == ["month", "household", "building", "unit", "room", "area_m2", "occupied", "amount_yuan",
                       "street_yuan", "stair_yuan"]
    assert rows[1][6] == "yes"


def test_refuses_charges_that_do_not_add_up(tmp_path):
    r = build()
    r.households[0].total += FEN
    with pytest.raises(ValueError, match="recovered"):
        report.write_csv(r, tmp_path / "a.csv")
    r.households[0].total -= D("0.005")
    with pytest.raises(ValueError, match="fen"):
        report.write_xlsx(r, tmp_path / "a.xlsx")


# --- XLSX --------------------------------------------------------------------------------------

def summary_value(ws, label):
    for row in ws.iter_rows(values_only=True):
        if row[0] == label:
            return row[1]
    raise AssertionError(f"no row {label!r}")


def test_xlsx_reads_back_exact_to_the_fen(tmp_path):
    r = build()
    path = report.write_xlsx(r, tmp_path / "a.xlsx")
    wb = openpyxl.load_workbook(path)
    assert wb.sheetnames == ["汇总", "电表", "分摊组", "住户", "分摊明细", "数据质量", "楼栋单元小计", "与上月比较"]

    summary = wb["汇总"]
    assert isinstance(summary_value(summary, "住户应缴合计"), float)
    assert as_decimal(summary_value(summary, "住户应缴合计")) == r.recovered
    assert as_decimal(summary_value(summary, "电费账单")) == r.bill
    assert summary_value(summary, "差额分摊规则") == "按各组计量电费比例分摊"
    assert summary_value(summary, "住户数") == len(r.households)
    tariff_rows = [row for row in summary.iter_rows(values_only=True) if row[0] == "吉林峰谷电价2026"]
    assert [row[1] for row in tariff_rows] == ["峰", "平", "谷"]
    assert [as_decimal(row[2] * 10000) for row in tariff_rows] == [p * 10000 for p in PRICES.values()]

    homes = list(wb["住户"].iter_rows(values_only=True))
    assert homes[0] == ("月份", "户号", "楼号", "单元", "房号", "建筑面积(m²)", "入住", "金额(元)", "公共路灯(元)",
                        "楼道照明(元)")
    assert homes[-1][0] == "合计" and as_decimal(homes[-1][7]) == r.recovered          # the totals row
    homes = homes[:-1]
    assert [as_decimal(row[7]) for row in homes[1:]] == [c.total for c in r.households]
    assert sum(as_decimal(row[7]) for row in homes[1:]) == r.recovered

    lines = list(wb["分摊明细"].iter_rows(values_only=True))[1:]
    assert lines[-1][0] == "合计" and as_decimal(lines[-1][3]) == r.recovered
    lines = lines[:-1]
    assert len(lines) == sum(len(c.lines) for c in r.households)
    assert sum(as_decimal(row[3]) for row in lines) == r.recovered
    assert ("1-1-101", "street", "公共路灯") == lines[0][:3]

    groups = list(wb["分摊组"].iter_rows(values_only=True))
    assert [row[0] for row in groups[1:]] == ["street", "stair-1", "stair-2", "合计"]
    assert groups[1][2:4] == ("全小区", "按建筑面积")
    assert as_decimal(groups[-1][9]) == r.recovered

    meters = {row[0]: row for row in wb["电表"].iter_rows(values_only=True)}
    assert meters["表号"][7:10] == ("峰 kWh", "平 kWh", "谷 kWh")
    assert meters["M03"][1] == EVIL and as_decimal(meters["M03"][6]) == D("12.50")
    assert meters["M04"][4] == "未分配" and meters["M00"][4].startswith("总表")

    quality = list(wb["数据质量"].iter_rows(values_only=True))[1:]
    assert [row[2] for row in quality] == ["离线估算", "换表", "剔除跳变", "未分配"]
    assert quality[0][3] == datetime(2026, 10, 3, 2, 0) and quality[1][5] is None


def test_xlsx_text_is_never_a_formula(tmp_path):
    path = report.write_xlsx(build(), tmp_path / "a.xlsx")
    with zipfile.ZipFile(path) as z:
        sheets = [z.read(n).decode() for n in z.namelist() if n.startswith("xl/worksheets/sheet")]
    assert sheets and not any("<f>" in s for s in sheets)
    meters = {row[0]: row for row in openpyxl.load_workbook(path)["电表"].iter_rows(values_only=True)}
    assert meters["M04"][1].startswith("=HYPERLINK")


def test_xlsx_english_and_without_bill(tmp_path):
    r = build(with_bill=False)
    wb = openpyxl.load_workbook(report.write_xlsx(r, tmp_path / "a.xlsx", lang="en"))
    assert wb.sheetnames == ["Summary", "Meters", "Groups", "Households", "Lines", "Data quality", "Subtotals",
                             "Comparison"]
    assert summary_value(wb["Summary"], "Utility bill") == "not given"
    assert as_decimal(summary_value(wb["Summary"], "Recovered from households")) == r.recovered
    assert next(wb["Households"].iter_rows(values_only=True))[:2] == ("month", "household")


# --- HTML --------------------------------------------------------------------------------------

def svgs(html: str) -> list[ET.Element]:
    """Every inline chart, parsed as XML: proves the markup (and its escaping) is well formed."""
    return [ET.fromstring(s) for s in re.findall(r"<svg\b.*?</svg>", html, re.S)]


def test_html_report(tmp_path):
    r = build()
    html = report.write_html(r, tmp_path / "a.html").read_text(encoding="utf-8")
    assert "长春湖畔花园" in html and "2026-10" in html and "2026-11-02 08:30" in html
    assert f'<b id="recovered">{r.recovered:,.2f}</b>' in html
    assert "已平账" in html and f"{r.bill:,.2f}" in html
    # the malicious meter name is shown, escaped, in the tables and in no script
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    # self-contained: nothing fetched from elsewhere
    assert not re.search(r"<link|<img|<script|@import|url\(|src=", html)
    daily_chart, tou_chart = svgs(html)
    ns = "{http://www.w3.org/2000/svg}"
    assert len(daily_chart.findall(f"{ns}rect")) == 3 * 31      # three groups, every day positive
    assert {t.text for t in tou_chart.iter(f"{ns}text")} >= {"峰 30.0%", "平 40.0%", "谷 30.0%"}
    assert "公共路灯" in html and "1号楼楼道照明" in html      # few building groups: each its own series
    # data quality: each kind once, explained, with its notes
    for title, explanation in (("离线估算(1 条)", "离线期间按线性插值估算"), ("换表(1 条)", "换表"),
                               ("剔除跳变(1 条)", "剔除不可能的跳变读数"), ("未分配(1 条)", "未分配到任何分摊组")):
        assert title in html and explanation in html
    assert "离线7小时15分钟,按线性插值补 3.25 kWh" in html
    assert html.index("离线估算(") < html.index("换表(") < html.index("未分配(")
    assert 'class="n est">12.50<' in html                           # estimated kWh highlighted
    assert html.count("<tr><td>1-") == 3                              # household rows, one column per fee item
    assert "<th>公共路灯(元)</th><th>楼道照明(元)</th>" in html


def test_html_without_bill_shows_the_rounding():
    r = build(with_bill=False)
    html = report.render_html(r)
    rounding = r.recovered - r.metered_cost
    assert rounding and abs(rounding) < D("0.01") * len(r.groups)
    assert "未录入电费账单" in html
    assert f"{r.metered_cost.quantize(D('0.0001')):,f}" in html
    assert f">{rounding.quantize(D('0.0001'))}<" in html


def test_html_english():
    html = report.render_html(build(), lang="en")
    assert '<html lang="en">' in html
    for text in ("Reconciliation", "Reconciled", "Data quality", "<th>household</th>", "Offline gap",
                 "offline 7 h 15 min, 3.25 kWh interpolated", "peak 30.0%"):
        assert text in html
    assert "离线" not in html


def test_html_flags_an_unreconciled_bill():
    r = build()
    r.bill += D("1.00")
    assert "未平账" in report.render_html(r)


def test_html_shows_figures_that_add_up():
    r = build()
    html = report.render_html(r)
    # exact: metered cost and difference have sub-fen parts; shown, they add up to the bill
    assert r.metered_cost != r.metered_cost.quantize(FEN) and r.difference != r.difference.quantize(FEN)
    recon = re.search(r'id="reconciliation">(.*?)</div>', html, re.S).group(1)
    metered, difference, bill = (D(x.replace(",", "")) for x in re.findall(r'class="n">([\d,.-]+)<', recon)[:3])
    assert metered + difference == bill == r.bill and "已平账" in recon
    groups = re.search(r'<section class="groups">(.*?)</section>', html, re.S).group(1)
    def figures(tr: str) -> list[Decimal]:
        return [D(x.replace(",", "")) for x in re.findall(r'class="n">([\d,.-]+)<', tr)]
    body = [figures(tr)[2:] for tr in re.findall(r"<tr><td>.*?</tr>", groups, re.S)]    # after the counts
    total = figures(re.search(r'<tr class="total">.*?</tr>', groups, re.S).group(0))
    assert [sum(col) for col in zip(*body)] == total                    # columns
    assert all(kwh >= 0 and m + d == a for kwh, m, d, a in body)        # metered + difference = amount
    assert total[1] == metered and total[3] == r.recovered


def test_many_building_groups_are_summed():
    r = build(buildings=12, per_building=2)
    series = dict(report._daily_series(r, "zh"))
    assert list(series) == ["公共路灯", "楼栋合计"]
    assert series["楼栋合计"] == [sum(g.daily_kwh[i] for g in r.groups[1:]) for i in range(31)]


def test_unknown_lang_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lang"):
        report.write_csv(build(), tmp_path / "a.csv", lang="fr")


# --- all, and at the size of the estate ---------------------------------------------------------

def test_write_all_at_estate_size(tmp_path):
    r = build(buildings=96, per_building=96)
    assert len(r.households) == 9216
    files = report.write_all(r, tmp_path / "out" / "2026-10")
    assert {k: p.name for k, p in files.items()} == {"csv": "allocation-2026-10.csv", "xlsx": "allocation-2026-10.xlsx",
                                                     "html": "allocation-2026-10.html"}
    rows = list(csv.reader(files["csv"].read_text(encoding="utf-8-sig").splitlines()))[1:]
    assert len(rows) == 9216 and sum(D(row[7]) for row in rows) == r.recovered

    wb = openpyxl.load_workbook(files["xlsx"], read_only=True)
    homes = list(wb["住户"].iter_rows(min_row=2, values_only=True))[:-1]     # without the totals row
    assert len(homes) == 9216 and sum(as_decimal(row[7]) for row in homes) == r.recovered
    assert as_decimal(summary_value(wb["汇总"], "住户应缴合计")) == r.recovered
    wb.close()

    html = files["html"].read_text(encoding="utf-8")
    assert html.count("<tr><td>") >= 9216 and "楼栋合计" in html
    assert len(svgs(html)) == 2


# --- every sheet adds up as shown --------------------------------------------------------------

def shown_value(v) -> Decimal:
    """A number as Excel holds it, which must already be a value to 0.01 (no hidden decimals)."""
    d = D(repr(v))
    assert d == d.quantize(FEN), f"{v} is not rounded to 0.01"
    return d.quantize(FEN)


def check_adds_up(path, r) -> None:
    """Open the workbook as the accountant does and add up every row and column as displayed."""
    wb = openpyxl.load_workbook(path)
    summary = list(wb.worksheets[0].iter_rows(values_only=True))
    value = {row[0]: row[1] for row in summary if row and row[0]}
    labels = report.T["zh"]
    metered, recovered = shown_value(value[labels["metered_cost"]]), shown_value(value[labels["recovered"]])
    allocated = shown_value(value[labels["allocated_kwh"]])
    if r.bill is not None:
        assert metered + shown_value(value[labels["difference"]]) == shown_value(value[labels["bill"]]) == recovered
    start = next(i for i, row in enumerate(summary) if row and row[0] == report.TARIFF_COLS["zh"][0])
    *tariffs, total = summary[start + 1:]
    for col, want in ((3, allocated), (4, metered)):
        assert sum(shown_value(t[col]) for t in tariffs) == shown_value(total[col]) == want

    periods = len(report._periods(r))
    blocks, block = [], []
    for row in list(wb.worksheets[1].iter_rows(values_only=True))[1:]:
        figures = [shown_value(v) for v in row[5:5 + 2 + periods + 1]]
        if row[0] in (labels["billed_total"], labels["unallocated_total"]):
            assert [sum(col) for col in zip(*block)] == figures, row[0]
            blocks.append((row[0], figures))
            block = []
        else:
            assert sum(figures[2:2 + periods]) == figures[0], row[0]          # kWh by period add up
            block.append(figures)
    billed = dict(blocks)[labels["billed_total"]]
    assert billed[0] == allocated and billed[-1] == metered

    *groups, total = list(wb.worksheets[2].iter_rows(values_only=True))[1:]
    rows = [[shown_value(v) for v in g[6:10]] for g in groups]
    for kwh, m, d, a in rows:
        assert m + d == a
    assert [sum(col) for col in zip(*rows)] == [shown_value(v) for v in total[6:10]]
    assert shown_value(total[6]) == allocated and shown_value(total[7]) == metered
    assert shown_value(total[9]) == recovered

    header, *homes, total = list(wb.worksheets[3].iter_rows(values_only=True))
    items = len(header) - 8                                               # one column per fee item
    assert items >= 1
    amounts = {h[1]: shown_value(h[7]) for h in homes}
    assert sum(amounts.values()) == shown_value(total[7]) == recovered
    for h in homes:                                                       # a household's items add up to it
        assert sum(shown_value(v) for v in h[8:]) == shown_value(h[7]), h[1]
    columns = [[shown_value(v) for v in col] for col in zip(*(h[8:] for h in homes))]
    assert [sum(col) for col in columns] == [shown_value(v) for v in total[8:]]
    assert sum(shown_value(v) for v in total[8:]) == recovered

    # subtotals: a building's units add up to its subtotal, the buildings to the total, in every column
    sheet = wb[report.SHEETS["zh"]["subtotals"]]
    _, *subs, grand = list(sheet.iter_rows(values_only=True))
    assert grand[0] == labels["total"] and grand[2] == len(homes)
    units, buildings = [], []
    for row in subs:
        figures = [D(row[2]), shown_value(row[3]), shown_value(row[4]), *(shown_value(v) for v in row[5:])]
        assert sum(figures[3:]) == figures[2], row                        # items add up to the amount
        if row[1] is None:                                                # a building's subtotal
            assert [sum(col) for col in zip(*units)] == figures, row[0]
            buildings.append(figures)
            units = []
        else:
            units.append(figures)
    assert units == [] and buildings
    grand_figures = [D(grand[2]), shown_value(grand[3]), shown_value(grand[4]), *(shown_value(v) for v in grand[5:])]
    assert [sum(col) for col in zip(*buildings)] == grand_figures
    assert grand_figures[2] == recovered and grand_figures[3:] == [shown_value(v) for v in total[8:]]
    by_building: dict = {}
    for h in homes:
        by_building[h[2]] = by_building.get(h[2], D(0)) + shown_value(h[7])
    assert [b[2] for b in buildings] == list(by_building.values())
    *lines, total = list(wb.worksheets[4].iter_rows(values_only=True))[1:]
    per_home: dict[str, Decimal] = {}
    for h, _, _, a in lines:
        per_home[h] = per_home.get(h, D(0)) + shown_value(a)
    assert sum(per_home.values()) == shown_value(total[3]) == recovered
    assert {h: a for h, a in amounts.items() if a} == per_home


@pytest.mark.parametrize("with_bill", [True, False])
def test_every_sheet_adds_up_as_shown(tmp_path, with_bill):
    r = build(with_bill=with_bill, buildings=12, per_building=7)
    check_adds_up(report.write_xlsx(r, tmp_path / "a.xlsx"), r)


@pytest.mark.parametrize("rule", ["by_cost", "by_area"])
def test_a_generated_month_adds_up_as_shown(tmp_path, rule):
    from gateway.billing.monthly import run_month
    from simulators.month import generate_month
    from test_billing_allocate import make_site

    cfg = make_site(tmp_path, rule=rule)
    s = generate_month(cfg, cfg.storage_path, "2026-10", seed=7, every_s=900)     # with its four faults
    assert {f.kind for f in s.faults} >= {"gap", "replacement", "spike"}
    run = run_month(cfg, "2026-10", tmp_path / "out", bill=D("123456.78"), force=True, keep=False)
    check_adds_up(run.files["xlsx"], run.result)
