"""Allocation runs: history, sign-off, the month's answer, and InfluxDB holding only the answer
(gateway/billing/runs.py), through a real ledger, the CLI and a real InfluxDB 1.x on loopback."""

import asyncio
import json
import sqlite3
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import openpyxl
import pytest
from typer.testing import CliRunner

from gateway.billing import runs as runs_mod
from gateway.billing.monthly import run_month
from gateway.billing.runs import RunError, answer, check_sign, parse_bill_period, runs, sign
from gateway.cli import app
from gateway.config import load_site
from gateway.ledger import Ledger
from gateway.ledger.schema import MIGRATIONS

from test_billing_allocate import HOUSEHOLDS, SITE, fill, make_site

D = Decimal
NOW = datetime(2026, 11, 3, 2, 0, tzinfo=timezone.utc)


def states(ledger, month="2026-10") -> list[tuple[int, str, bool]]:
    return [(r.id, r.state, r.published) for r in runs(ledger, month)]


# ---- the run history and its sign-off, in the ledger ------------------------------------------------

def test_runs_are_kept_with_who_when_and_the_bill_they_answer(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    first = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5400.00"), by="张会计", invoice="No.0012345",
                      bill_period=(date(2026, 10, 3), date(2026, 11, 2)), now=NOW)
    second = run_month(cfg, "2026-10", tmp_path / "out", by="李会计", now=NOW + timedelta(hours=1))
    assert (first.run_id, second.run_id) == (1, 2)
    ledger = Ledger(cfg.storage_path)
    try:
        one, two = runs(ledger, "2026-10")
        assert (one.by, one.invoice, one.bill_period, one.bill, one.created) == (
            "张会计", "No.0012345", (date(2026, 10, 3), date(2026, 11, 2)), D("5400.00"), NOW)
        assert (two.by, two.invoice, two.bill_period, two.bill) == ("李会计", None, None, None)
        # a newer run while none is approved is the month's answer (a draft); the older stays a draft
        assert states(ledger) == [(1, "prepared", False), (2, "prepared", True)]
        assert answer(runs(ledger, "2026-10")).id == 2
        # history: every run keeps its charges
        assert len(ledger.allocation_charges(1)) == len(ledger.allocation_charges(2)) > 0
    finally:
        ledger.close()
    assert first.info.prepared.by == "张会计" and first.info.answer and second.info.answer


def test_review_comes_before_approval_and_a_newer_approval_supersedes(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    for bill in ("5400.00", "5401.00", "5402.00"):
        run_month(cfg, "2026-10", tmp_path / "out", bill=D(bill), by="张", now=NOW)
    ledger = Ledger(cfg.storage_path)
    try:
        with pytest.raises(RunError, match="run 2 of 2026-10 has not been reviewed: review it first"):
            sign(cfg, ledger, 2, "approved", "王", now=NOW)
        with pytest.raises(RunError, match="give one of reviewed, approved"):
            sign(cfg, ledger, 2, "prepared", "王", now=NOW)
        with pytest.raises(RunError, match="no allocation run 9"):
            sign(cfg, ledger, 9, "reviewed", "王", now=NOW)
        with pytest.raises(RunError, match="run 2 is of 2026-10, not 2026-11"):
            sign(cfg, ledger, 2, "reviewed", "王", now=NOW, month="2026-11")
        with pytest.raises(RunError, match="say who signs"):
            sign(cfg, ledger, 2, "reviewed", "  ", now=NOW)
        done = sign(cfg, ledger, 2, "reviewed", "王", now=NOW)
        assert done.superseded == [] and done.run.state == "reviewed"
        with pytest.raises(RunError, match="run 2 of 2026-10 was already reviewed by 王 at 2026-11-03 10:00"):
            sign(cfg, ledger, 2, "reviewed", "赵", now=NOW)
        # the same person may review and approve (not enforced otherwise)
        done = sign(cfg, ledger, 2, "approved", "王", now=NOW + timedelta(minutes=5))
        assert done.superseded == [1]
        assert done.published.run == 2 and done.published.previous == 3
        # run 2 approved is the answer although run 3 is newer; run 3 waits, run 1 is superseded
        assert states(ledger) == [(1, "superseded", False), (2, "approved", True), (3, "prepared", False)]
        assert runs(ledger, "2026-10")[0].superseded_by == 2
        with pytest.raises(RunError, match="run 1 of 2026-10 was superseded by run 2"):
            sign(cfg, ledger, 1, "reviewed", "王", now=NOW)
        sign(cfg, ledger, 3, "reviewed", "赵", now=NOW)
        done = sign(cfg, ledger, 3, "approved", "钱", now=NOW)
        assert done.superseded == [2]
        assert states(ledger) == [(1, "superseded", False), (2, "superseded", False), (3, "approved", True)]
        three = runs(ledger, "2026-10")[2]
        assert {role: by for role, (by, _) in three.signoffs.items()} == {"reviewed": "赵", "approved": "钱"}
        # a run made after the approval is a draft waiting beside it, not the answer
    finally:
        ledger.close()
    late = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5403.00"), by="张", now=NOW)
    assert late.published is None and late.answer == 3 and not late.info.answer and late.points == 0
    assert not (tmp_path / "out" / "allocation-2026-10.csv").read_text(encoding="utf-8-sig") == \
        (tmp_path / "out" / "allocation-2026-10-run4.csv").read_text(encoding="utf-8-sig")


def test_check_sign_is_decided_by_the_runs_alone():
    tz = timezone.utc

    def run(i, signed=(), superseded=None):
        return runs_mod.Run(i, "2026-10", NOW, "x", None, None, None, D(1), D(1), 1, 0, Path("."), {},
                            {role: ("y", NOW) for role in signed}, superseded)
    month = [run(1, ("reviewed", "approved"), 3), run(2, ("reviewed",), 3), run(3, ("reviewed", "approved")),
             run(4), run(5, ("reviewed",))]
    assert answer(month).id == 3                    # the newest approved, though 4 and 5 are newer
    assert check_sign(month, 4, "reviewed", tz) == []
    with pytest.raises(RunError) as e:
        check_sign(month, 4, "approved", tz)
    assert e.value.code == "not_reviewed"
    with pytest.raises(RunError) as e:
        check_sign(month, 2, "approved", tz)
    assert e.value.code == "superseded"
    with pytest.raises(RunError) as e:
        check_sign(month, 5, "reviewed", tz)
    assert e.value.code == "already"
    assert check_sign(month, 5, "approved", tz) == [3, 4]          # every older run still standing
    assert answer([run(1), run(2)]).id == 2 and answer([run(1, ("reviewed", "approved")), run(2)]).id == 1
    assert answer([]) is None


@pytest.mark.parametrize("text, why", [("2026-10-03", "give the bill's first and last day"),
                                       ("2026-10-03..2026-13-01", "give the bill's first and last day"),
                                       ("2026-11-02..2026-10-03", "the last day is before the first"),
                                       ("2026-01-01..2026-12-31", "longer than three months")])
def test_bill_period_is_checked(text, why):
    with pytest.raises(RunError, match=why):
        parse_bill_period(text)


def test_bill_period_must_overlap_the_month(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    res = CliRunner().invoke(app, ["allocate", "-c", str(tmp_path / "site.yaml"), "--month", "2026-10",
                                   "--bill-period", "2026-11-01..2026-11-30", "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and "--bill-period 2026-11-01..2026-11-30 does not overlap 2026-10" in res.output
    runs_mod.check_bill_period((date(2026, 9, 20), date(2026, 10, 1)), "2026-10")
    runs_mod.check_bill_period((date(2026, 12, 31), date(2027, 1, 2)), "2026-12")
    with pytest.raises(RunError):
        runs_mod.check_bill_period((date(2026, 9, 1), date(2026, 9, 30)), "2026-10")


def test_bill_period_is_parsed():
    assert parse_bill_period(" 2026-10-03 .. 2026-11-02 ") == (date(2026, 10, 3), date(2026, 11, 2))
    assert parse_bill_period(None) is None


# ---- the reports of a run ------------------------------------------------------------------------------

def signoff_rows(path: Path) -> list[tuple]:
    ws = openpyxl.load_workbook(path)["汇总"]
    rows = [r for r in ws.iter_rows(values_only=True)]
    start = next(i for i, r in enumerate(rows) if r[0] == "环节")
    return [tuple(r[:4]) for r in rows[start + 1:start + 4]]


def test_reports_carry_the_run_and_are_printed_again_when_signed(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    out = tmp_path / "out"
    made = run_month(cfg, "2026-10", out, bill=D("5400.00"), by="张会计", invoice="No.0012345",
                     bill_period=(date(2026, 10, 3), date(2026, 11, 2)), now=NOW)
    html = made.files["html"].read_text(encoding="utf-8")
    assert made.files["html"].name == "allocation-2026-10-run1.html"
    assert '<table class="run" id="run" data-state="prepared">' in html
    for text in ("第 1 次分摊", "已编制(草稿,未批准)", "No.0012345", "2026-10-03 至 2026-11-02",
                 "电费账单期间 2026-10-03 至 2026-11-02 与分摊月份 2026-10 不一致", "草稿:本次分摊尚未批准,不得据此收费。",
                 '<tr data-signed="yes"><td>编制</td><td>张会计</td><td>2026-11-03 10:00</td>',
                 '<tr data-signed="no"><td>审核</td><td></td><td></td>', '<tr data-signed="no"><td>批准</td>'):
        assert text in html, text
    # blank lines to sign on paper while not signed
    line = "_" * 16
    assert signoff_rows(made.files["xlsx"]) == [("编制", "张会计", "2026-11-03 10:00", line),
                                               ("审核", None, None, line), ("批准", None, None, line)]
    ledger = Ledger(cfg.storage_path)
    try:
        sign(cfg, ledger, 1, "reviewed", "李审核", now=NOW + timedelta(hours=2))
        done = sign(cfg, ledger, 1, "approved", "王经理", now=NOW + timedelta(hours=3))
    finally:
        ledger.close()
    assert done.files["html"] == made.files["html"] and done.reprint_errors == []
    html = made.files["html"].read_text(encoding="utf-8")
    assert 'data-state="approved"' in html and "草稿" not in html
    assert '<tr data-signed="yes"><td>批准</td><td>王经理</td><td>2026-11-03 13:00</td>' in html
    assert signoff_rows(made.files["xlsx"]) == [("编制", "张会计", "2026-11-03 10:00", line),
                                               ("审核", "李审核", "2026-11-03 12:00", line),
                                               ("批准", "王经理", "2026-11-03 13:00", line)]
    # the month's answer under the month's name is the same report
    assert (out / "allocation-2026-10.html").read_text(encoding="utf-8") == html
    # the amounts printed again are the run's, whatever the ledger's readings say now
    assert (out / "allocation-2026-10-run1.csv").read_bytes() == (out / "allocation-2026-10.csv").read_bytes()
    rows = (out / "allocation-2026-10.csv").read_text(encoding="utf-8-sig").splitlines()[1:]
    assert sum(D(r.split(",")[7]) for r in rows) == D("5400.00")


def test_a_trial_run_says_so_and_keeps_nothing(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    made = run_month(cfg, "2026-10", tmp_path / "out", keep=False, now=NOW)
    assert made.run_id is None and made.files["csv"].name == "allocation-2026-10.csv"
    html = made.files["html"].read_text(encoding="utf-8")
    assert 'data-state="trial"' in html and "试算(未保存,未批准)" in html
    ledger = Ledger(cfg.storage_path)
    assert runs(ledger) == []
    ledger.close()


def test_placeholder_prices_are_said_in_every_report(tmp_path):
    text = SITE.format(rule="by_cost").replace("price: '0.50'}", "price: '0.50', placeholder: true}")
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    (tmp_path / "households.csv").write_text(HOUSEHOLDS, encoding="utf-8")
    cfg = load_site(tmp_path / "site.yaml")
    fill(cfg).close()
    made = run_month(cfg, "2026-10", tmp_path / "zh", now=NOW)
    assert made.result.placeholder_tariffs == ["old"]          # "new" is a real price list
    html = made.files["html"].read_text(encoding="utf-8")
    assert '<p class="banner" data-banner>示例电价:本报告使用的电价(old)在站点文件中标为示例' in html
    ws = openpyxl.load_workbook(made.files["xlsx"])["汇总"]
    first = next(ws.iter_rows(values_only=True))
    assert first[0] == "警告" and first[1].startswith("示例电价")
    en = run_month(cfg, "2026-10", tmp_path / "en", lang="en", now=NOW)
    assert "Placeholder prices: the tariffs used (old) are marked as placeholders" in \
        en.files["html"].read_text(encoding="utf-8")
    res = CliRunner().invoke(app, ["allocate", "-c", str(tmp_path / "site.yaml"), "--month", "2026-10", "--out",
                                   str(tmp_path / "cli")])
    assert res.exit_code == 0 and "warning: the tariffs old are placeholders" in res.output
    # the example site's prices are placeholders, and its file says so
    example = load_site(Path(__file__).resolve().parents[1] / "edge_config" / "site.example.yaml")
    assert example.tariffs and all(t.placeholder for t in example.tariffs)
    # without the mark there is no banner
    (tmp_path / "plain").mkdir()
    plain = make_site(tmp_path / "plain")
    fill(plain).close()
    assert "示例电价" not in run_month(plain, "2026-10", tmp_path / "plain" / "out", now=NOW).files["html"] \
        .read_text(encoding="utf-8")


def test_the_vacant_flat_rule_is_stated(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    made = run_month(cfg, "2026-10", tmp_path / "out", now=NOW)
    html = made.files["html"].read_text(encoding="utf-8")
    vacant = html[html.index('<ul id="vacant">'):html.index("</ul>", html.index('<ul id="vacant">'))]
    # households.csv has A-1-102 vacant; only the lift group (vacant: exclude) leaves it out
    assert "本月空置房(入住=否)共 1 户。" in vacant
    assert "空置房与入住户一样分摊:楼道照明、路灯、门岗。" in vacant and "空置房不分摊:电梯(由同组的入住户分摊)。" in vacant
    lifts = [g for g in made.result.groups if g.fee_item == "lift"]
    assert lifts and all("A-1-102" not in g.households for g in lifts)
    en = run_month(cfg, "2026-10", tmp_path / "en", lang="en", keep=False, now=NOW).files["html"]
    assert "Vacant flats do not share: 电梯 (the occupied households of the group do)." in en.read_text(
        encoding="utf-8")


# ---- InfluxDB holds the month's answer, once --------------------------------------------------------

async def drain(cfg, tmp_path) -> None:
    from gateway.sinks.drainer import Drainer
    from gateway.sinks.influxdb import make_writer
    ledger = Ledger(cfg.storage_path)
    drainer = Drainer(ledger, make_writer(cfg.influxdb, tmp_path), cfg.influxdb)
    task = asyncio.create_task(drainer.run())
    try:
        async with asyncio.timeout(60):
            while ledger.outbox_depth:
                await asyncio.sleep(0.05)
    finally:
        drainer.stop()
        await asyncio.wait_for(task, 10)
        ledger.close()


def outbox(cfg) -> dict[str, int]:
    con = sqlite3.connect(cfg.storage_path)
    try:
        return dict(con.execute("SELECT measurement, count(*) FROM outbox GROUP BY measurement").fetchall())
    finally:
        con.close()


def counts(influx) -> dict[str, int]:
    """Points per measurement (every energy_interval point has kwh; the others are few)."""
    res = influx.query('SELECT count(kwh) FROM "energy_interval"')["results"][0].get("series", [])
    return {"energy_interval": res[0]["values"][0][1] if res else 0,
            "allocation": len(influx.points("allocation")), "allocation_run": len(influx.points("allocation_run"))}


def influx_site(tmp_path, influx, households=HOUSEHOLDS, estate="estate"):
    text = SITE.format(rule="by_cost").replace("{id: estate,", f"{{id: {estate},")
    (tmp_path / "site.yaml").write_text(text + f"influxdb: {{version: 1, url: '{influx.url}', database: "
                                               f"{influx.database}, batch_age_s: 0}}\n", encoding="utf-8")
    (tmp_path / "households.csv").write_text(households, encoding="utf-8")
    return load_site(tmp_path / "site.yaml")


async def test_allocating_a_month_again_replaces_its_points_in_influxdb(tmp_path, influx1):
    cfg = influx_site(tmp_path, influx1)
    fill(cfg).close()
    slots = 31 * 96
    one = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5400.00"), by="张", now=NOW)
    per_run = 6 * slots + 1 + 5 + 5 + 1               # meters x slots; site, groups, households; its state
    assert one.points == per_run and sum(outbox(cfg).values()) == per_run
    # again before anything was sent: the queued points of run 1 are taken out, not doubled
    two = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5401.00"), by="张", now=NOW)
    assert two.points == per_run and two.published.removed == per_run and two.published.zeros == 0
    assert sum(outbox(cfg).values()) == per_run
    await drain(cfg, tmp_path)
    once = counts(influx1)
    assert once == {"energy_interval": 6 * slots, "allocation": 11, "allocation_run": 1}
    # and again after they were sent: InfluxDB overwrites, it holds as many points as after one run
    three = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5402.00"), by="张", now=NOW)
    assert three.published.removed == 0
    await drain(cfg, tmp_path)
    assert counts(influx1) == once

    def site_point():
        return next(p for p in influx1.points("allocation") if p["level"] == "site")
    assert site_point()["recovered"] == 5402.00
    assert [(p["run"], p["approved"], p["state"]) for p in influx1.points("allocation_run")] == [(3, False, "prepared")]

    # the older run 1 approved: it is the month's answer, and InfluxDB has its values
    ledger = Ledger(cfg.storage_path)
    try:
        sign(cfg, ledger, 1, "reviewed", "李", now=NOW)
        assert sum(outbox(cfg).values()) == 1            # the state point only: run 3 is still the answer
        done = sign(cfg, ledger, 1, "approved", "王", now=NOW)
        assert done.published.run == 1 and done.published.previous == 3 and done.published.queued == per_run
    finally:
        ledger.close()
    await drain(cfg, tmp_path)
    assert counts(influx1) == once
    assert site_point()["recovered"] == 5400.00 and site_point()["bill"] == 5400.00
    households = {p["household"]: p["amount"] for p in influx1.points("allocation") if p["level"] == "household"}
    ledger = Ledger(cfg.storage_path)
    want: dict[str, Decimal] = {}
    for h, _, amount in ledger.allocation_charges(1):
        want[h] = want.get(h, D(0)) + D(amount)
    ledger.close()
    assert households == pytest.approx({h: float(a) for h, a in want.items()})
    assert [(p["run"], p["approved"]) for p in influx1.points("allocation_run")] == [(1, True)]

    # a run made now waits for its approval: nothing of it is queued
    four = run_month(cfg, "2026-10", tmp_path / "out", bill=D("5403.00"), by="张", now=NOW)
    assert four.points == 0 and four.published is None and outbox(cfg) == {}


def approve(cfg, run_id: int):
    ledger = Ledger(cfg.storage_path)
    try:
        sign(cfg, ledger, run_id, "reviewed", "李", now=NOW)
        return sign(cfg, ledger, run_id, "approved", "王", now=NOW)
    finally:
        ledger.close()


@pytest.mark.parametrize("via", ["draft", "approval"])
async def test_series_a_new_answer_does_not_have_are_set_to_zero(tmp_path, influx1, via):
    """A household gone from the households file and a group renamed: the previous answer's
    points of those series are overwritten with zeros (InfluxDB replaces only a point of the same
    series and time), so nothing stale adds to the month; whether the new run is the answer as a
    draft or by its approval (which supersedes the previous answer)."""
    cfg = influx_site(tmp_path, influx1)
    fill(cfg).close()
    run_month(cfg, "2026-10", tmp_path / "out", bill=D("5400.00"), by="张", now=NOW)
    if via == "approval":
        approve(cfg, 1)
    await drain(cfg, tmp_path)
    before = counts(influx1)
    fewer = "\n".join(line for line in HOUSEHOLDS.splitlines() if not line.startswith("B-1-102")) + "\n"
    cfg2 = influx_site(tmp_path, influx1, households=fewer, estate="streets")
    again = run_month(cfg2, "2026-10", tmp_path / "out", bill=D("5400.00"), by="张", now=NOW)
    if via == "approval":
        assert again.published is None and outbox(cfg2) == {}          # waits for its approval
        published = approve(cfg2, 2).published
        ledger = Ledger(cfg2.storage_path)
        assert not ledger.has_allocation_points(1) and ledger.has_allocation_points(2)   # 1 is superseded
        ledger.close()
    else:
        published = again.published
    # SL1's slots under its old group tag, the old group point and the household that is gone
    assert published.zeros == 31 * 96 + 1 + 1
    await drain(cfg2, tmp_path)
    after = counts(influx1)
    assert after["energy_interval"] == before["energy_interval"] + 31 * 96     # SL1 under its new group too
    households = {p["household"]: p["amount"] for p in influx1.points("allocation") if p["level"] == "household"}
    assert households["B-1-102"] == 0 and round(sum(households.values()), 2) == 5400.00
    groups = {p["group"]: p["amount"] for p in influx1.points("allocation") if p["level"] == "group"}
    assert groups["estate"] == 0 and groups["streets"] > 0
    old = influx1.query("SELECT sum(kwh) FROM energy_interval WHERE meter = 'SL1' AND \"group\" = 'estate'")
    new = influx1.query("SELECT sum(kwh) FROM energy_interval WHERE meter = 'SL1' AND \"group\" = 'streets'")
    assert old["results"][0]["series"][0]["values"][0][1] == 0
    assert new["results"][0]["series"][0]["values"][0][1] == pytest.approx(2.0 * 31 * 96)


# ---- the command line -----------------------------------------------------------------------------------

def test_cli_runs_approve_and_the_answer(tmp_path):
    cfg = make_site(tmp_path)
    fill(cfg).close()
    runner = CliRunner()
    site = str(tmp_path / "site.yaml")
    out = str(tmp_path / "out")
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--bill", "5400", "--out", out,
                              "--by", "张会计", "--invoice", "No.77", "--bill-period", "2026-10-03..2026-11-02"])
    assert res.exit_code == 0, res.output
    assert "kept in the ledger as allocation run 1" in res.output
    assert "run 1 is the month's answer, a draft until approved" in res.output
    assert "no allocation of 2026-09 in the ledger to compare with" in res.output
    for bad, why in ((["--bill-period", "2026-10-03"], "--bill-period '2026-10-03': give the bill's first and last"),
                     (["--by", " "], "--by: say who prepares the run"),
                     (["--invoice", ""], "--invoice: give the bill's number")):
        res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--out", out, *bad])
        assert res.exit_code == 2 and why in res.output and "Traceback" not in res.output, res.output
    res = runner.invoke(app, ["allocate", "-c", site, "--out", out])
    assert res.exit_code == 2 and "error: missing option --month" in res.output
    res = runner.invoke(app, ["allocate", "approve", "-c", site, "--month", "2026-10", "--run", "1", "--by", "王"])
    assert res.exit_code == 2 and res.output.strip().endswith("review it first (--role reviewed), then approve it")
    for role in ("reviewed", "approved"):
        res = runner.invoke(app, ["allocate", "approve", "-c", site, "--month", "2026-10", "--run", "1",
                                  "--by", "王经理", "--role", role])
        assert res.exit_code == 0 and f"run 1 of 2026-10 {role} by 王经理" in res.output, res.output
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-10", "--out", out, "--by", "李"])
    assert "run 1 is approved and stays the month's answer until this one is approved" in res.output
    listed = runner.invoke(app, ["allocate", "runs", "-c", site])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert lines[0].startswith("* 2026-10  run 1    approved") and "invoice No.77" in lines[0]
    assert "bill period 2026-10-03..2026-11-02" in lines[0] and "approved by 王经理" in lines[0]
    assert lines[1].startswith("  2026-10  run 2    prepared") and "by 李" in lines[1]
    data = json.loads(runner.invoke(app, ["allocate", "runs", "-c", site, "--month", "2026-10", "--json"]).output)
    assert [(r["id"], r["state"], r["answer"]) for r in data] == [(1, "approved", True), (2, "prepared", False)]
    assert data[0]["signoffs"]["approved"]["by"] == "王经理"
    res = runner.invoke(app, ["allocate", "approve", "-c", site, "--month", "2026-10", "--run", "2", "--by", "王",
                              "--role", "reviewed"])
    res = runner.invoke(app, ["allocate", "approve", "-c", site, "--month", "2026-10", "--run", "2", "--by", "王"])
    assert res.exit_code == 0 and "superseded: run 1" in res.output
    res = runner.invoke(app, ["allocate", "approve", "-c", site, "--month", "2026-10", "--run", "1", "--by", "王"])
    assert res.exit_code == 2 and "run 1 of 2026-10 was superseded by run 2" in res.output
    assert "no allocation runs of 2026-09" in runner.invoke(app, ["allocate", "runs", "-c", site, "--month",
                                                                  "2026-09"]).output


# ---- a ledger of the version before runs ------------------------------------------------------------------

def test_runs_of_an_older_ledger_are_read_and_the_newest_was_published(tmp_path):
    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    # the ledger as it was before the migration that added allocation runs (later ones may follow it)
    runs_added = next(i for i, m in enumerate(MIGRATIONS) if "ALTER TABLE allocations ADD COLUMN by" in m)
    for v, script in enumerate(MIGRATIONS[:runs_added]):
        con.executescript(script)
        con.execute(f"PRAGMA user_version = {v + 1}")
    for i, month in ((1, "2026-09"), (2, "2026-10"), (3, "2026-10")):
        con.execute("INSERT INTO allocations (id, month, created_us, bill, metered_cost, recovered, households, "
                    "quality, out_dir, summary) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    (i, month, 1_790_000_000_000_000 + i, None, "1.00", "1.00", 1, 0, str(tmp_path), "{}"))
    con.commit()
    con.close()
    ledger = Ledger(db)
    try:
        got = [(r.id, r.month, r.state, r.published, r.by) for r in runs(ledger)]
        assert got == [(1, "2026-09", "prepared", True, ""), (2, "2026-10", "prepared", False, ""),
                       (3, "2026-10", "prepared", True, "")]
    finally:
        ledger.close()


async def test_a_report_that_cannot_be_printed_again_is_said_and_the_sign_off_stands(tmp_path):
    from gateway.billing.reprint import reprint_in_child
    cfg = make_site(tmp_path)
    fill(cfg).close()
    out = tmp_path / "out"
    run_month(cfg, "2026-10", out, by="张", now=NOW)
    ledger = Ledger(cfg.storage_path)
    sign(cfg, ledger, 1, "reviewed", "李", now=NOW)
    ledger.close()
    # the console prints them in a child process: it prints the run as the ledger has it now
    assert await reprint_in_child(cfg, 1, []) == []
    assert 'data-state="reviewed"' in (out / "allocation-2026-10-run1.html").read_text(encoding="utf-8")
    for p in out.iterdir():
        p.unlink()
    out.rmdir()
    out.write_text("not a directory")
    lines = await reprint_in_child(cfg, 1, [])
    assert len(lines) == 1 and lines[0].startswith("the reports of run 1 could not be written again: ")
    res = CliRunner().invoke(app, ["allocate", "approve", "-c", str(tmp_path / "site.yaml"), "--month", "2026-10",
                                   "--run", "1", "--by", "王"])
    assert res.exit_code == 0 and "run 1 of 2026-10 approved by 王" in res.output
    assert "warning: the reports of run 1 could not be written again" in res.output
    ledger = Ledger(cfg.storage_path)
    assert states(ledger) == [(1, "approved", True)]
    ledger.close()
