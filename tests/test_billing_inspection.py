"""The allocation report lists the month's meter-and-line inspection beside the meters'
data-quality notes (issue 16, step 2): through a real ledger and `run_month`, HTML and XLSX."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

import openpyxl

from gateway.billing import report
from gateway.billing.monthly import run_month
from gateway.clock import to_us
from gateway.ledger import maintenance as book
from gateway.ledger.queries import read_only
from gateway.maintenance.inspections import for_report, plan
from test_billing_allocate import START, fill, make_site
from test_billing_report import build

NOW = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)
TZ = ZoneInfo("Asia/Shanghai")


def inspect(cfg, month: str, failing: str | None, at: datetime, complete: bool = True) -> None:
    """The electrician's month task of meters and lines, recorded item by item."""
    p = plan(cfg, "meters_lines")
    y, m = map(int, month.split("-"))
    start = datetime.combine(datetime(y, m, 1).date(), time(0), TZ)
    end = datetime.combine(datetime(y + m // 12, m % 12 + 1, 1).date(), time(0), TZ)
    book.ensure_tasks(cfg.storage_path, [("meters_lines", month, to_us(start), to_us(end))])
    with read_only(cfg.storage_path) as db:
        tid = book.task_by_period(db, "meters_lines", month)["id"]
    items = p.items if complete else p.items[:1]
    for item in items:
        bad = item.id == failing
        book.record_result(cfg.storage_path, tid, item.id, not bad, "3号楼配电箱接线发热" if bad else "", None,
                           to_us(at), "王电工", [i.id for i in p.items])


def gap_in_b(meter: str, t: datetime) -> bool:
    """B-stair silent for six hours on the 10th: a data-quality note of that meter."""
    return meter == "B-stair" and START + timedelta(days=9, hours=2) <= t < START + timedelta(days=9, hours=8)


def test_the_report_shows_the_inspection_beside_the_quality_notes(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg, skip=gap_in_b).close()
    inspect(cfg, "2026-10", "lines", datetime(2026, 10, 28, 9, 30, tzinfo=TZ))
    run = run_month(cfg, "2026-10", tmp_path / "out", now=NOW)
    noted = {n.meter for n in run.result.quality}
    assert "B-stair" in noted
    html = run.files["html"].read_text(encoding="utf-8")
    section = html[html.index('id="inspection-quality"'):]
    section = section[:section.index("</section>")]
    assert "公共电表及线路巡检(2026-10)" in section and "2026-10-28 09:30 由 王电工 完成" in section
    # every checklist item with its result; the failed one flagged with the electrician's note
    rows = re.findall(r'<tr class="(flag)?" data-ok="(\w+)"><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>', section)
    assert [(r[1], r[2], r[3]) for r in rows] == [
        ("true", "电表运行、读数正常，铅封完好", "正常"), ("false", "线路无老化、无发热、无私接", "异常"),
        ("true", "与供电局电费账单核对", "正常")]
    assert rows[1][0] == "flag" and rows[1][4] == "3号楼配电箱接线发热"
    # beside it, every meter with a data-quality note and nothing else
    assert set(re.findall(r'<tr data-meter="([^"]+)">', section)) == noted

    wb = openpyxl.load_workbook(run.files["xlsx"], read_only=True)
    ws = wb["巡检与数据质量"]
    values = [list(r) for r in ws.iter_rows(values_only=True)]
    assert values[0][:4] == ["巡检项目", "结果", "说明", "记录人"] and values[0][5:8] == ["表号", "名称", "数据质量"]
    assert values[1][:2] == ["公共电表及线路巡检(2026-10)", "2026-10-28 09:30 由 王电工 完成"]
    assert [r[:2] for r in values[2:5]] == [["电表运行、读数正常，铅封完好", "正常"], ["线路无老化、无发热、无私接", "异常"],
                                             ["与供电局电费账单核对", "正常"]]
    assert values[3][2] == "3号楼配电箱接线发热" and values[3][3] == "王电工"
    assert {r[5] for r in values[2:] if len(r) > 5 and r[5]} == noted
    wb.close()


def test_a_month_without_the_task_says_so_and_an_unfinished_one_is_open(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    got = for_report(cfg, "2026-10")
    assert got["missing"] and [i["ok"] for i in got["items"]] == [None, None, None]
    html = report.render_html(build(), inspection=got)
    assert "本月没有巡检任务" in html and html.count('data-ok="none"') == 3
    inspect(cfg, "2026-10", None, datetime(2026, 10, 5, 10, 0, tzinfo=TZ), complete=False)
    got = for_report(cfg, "2026-10")
    assert not got["missing"] and [i["ok"] for i in got["items"]] == [True, None, None]
    html = report.render_html(build(), inspection=got)
    assert "未完成(应于 2026-11-01 00:00 前完成)" in html


def test_english_and_no_section_without_the_plan(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    inspect(cfg, "2026-10", "meters", datetime(2026, 10, 28, 9, 30, tzinfo=TZ))
    html = report.render_html(build(), lang="en", inspection=for_report(cfg, "2026-10"))
    for text in ("Meter and line inspection beside data quality", "public meters and lines (2026-10)",
                 "done 2026-10-28 09:30 by 王电工", "meters running, readings plausible, seals intact", ">fault<"):
        assert text in html
    no_plan = cfg.model_copy(update={"maintenance": cfg.maintenance.model_copy(update={
        "inspections": [p for p in cfg.maintenance.inspections if p.id != "meters_lines"]})})
    assert for_report(no_plan, "2026-10") is None
    assert 'id="inspection-quality"' not in report.render_html(build(), inspection=None)
