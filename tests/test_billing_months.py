"""What a month's allocation cannot know: a month not over, counters that cover too little of it
(refused unless --allow-partial), and a meter silent across a month's end (carried into the month
where its counter resumes, so consecutive months bill it exactly once)."""

from datetime import datetime, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest
from typer.testing import CliRunner

from gateway.billing.allocate import AllocationError, allocate
from gateway.billing.monthly import run_month
from gateway.cli import app
from gateway.ledger import Ledger
from simulators.month import generate_month
from test_billing_allocate import make_site

TZ = ZoneInfo("Asia/Shanghai")
D = Decimal


def local(*args) -> datetime:
    return datetime(*args, tzinfo=TZ)


def counter_at(ledger: Ledger, meter: str, at: datetime) -> Decimal:
    us = int(at.timestamp()) * 1_000_000
    (ts, kwh), = ledger.energy_series(meter, us, us)
    return D(kwh)


def kwh(result, meter: str) -> Decimal:
    return next(m.kwh for m in result.meters if m.meter == meter)


def kinds(result, meter: str) -> list[str]:
    return [q.kind for q in result.quality if q.meter == meter]


def test_a_meter_silent_across_the_months_end_is_billed_once(tmp_path):
    cfg = make_site(tmp_path)
    # the street lights (on at night) silent from 12:00 on 31 October to 08:00 on 1 November
    silent = {"SL1": (local(2026, 10, 31, 12).astimezone(timezone.utc), local(2026, 11, 1, 8).astimezone(timezone.utc))}
    october = generate_month(cfg, cfg.storage_path, "2026-10", seed=4, every_s=900, faults=False, margin_h=0,
                             silent=silent)
    ledger = Ledger(cfg.storage_path)
    try:
        # October allocated before the counter resumed, and again after: the same
        early = allocate(cfg, ledger, "2026-10", now=local(2026, 11, 1, 1))
        assert kinds(early, "SL1") == ["partial"]
        november = generate_month(cfg, cfg.storage_path, "2026-11", seed=4, every_s=900, faults=False, margin_h=0,
                                  silent=silent, follow=october)
        oct_ = allocate(cfg, ledger, "2026-10", now=local(2026, 12, 1, 1))
        nov = allocate(cfg, ledger, "2026-11", now=local(2026, 12, 1, 1))
        assert kwh(oct_, "SL1") == kwh(early, "SL1")
        # October ends at the meter's last reading; November has the whole silence
        start, silence, end = local(2026, 10, 1), local(2026, 10, 31, 11, 45), local(2026, 12, 1)
        assert kwh(oct_, "SL1") == counter_at(ledger, "SL1", silence) - counter_at(ledger, "SL1", start)
        assert kwh(oct_, "SL1") + kwh(nov, "SL1") == counter_at(ledger, "SL1", end) - counter_at(ledger, "SL1", start)
        assert kwh(oct_, "SL1") + kwh(nov, "SL1") == october.consumption_kwh["SL1"] + november.consumption_kwh["SL1"]
        assert kwh(oct_, "SL1") < october.consumption_kwh["SL1"] and kwh(nov, "SL1") > november.consumption_kwh["SL1"]
        assert kinds(oct_, "SL1") == ["carried"] and kinds(nov, "SL1") == ["carried", "gap"]
        carried_out = next(q for q in oct_.quality if q.kind == "carried")
        carried_in = next(q for q in nov.quality if q.kind == "carried")
        assert carried_out.kwh == kwh(nov, "SL1") - (counter_at(ledger, "SL1", end)
                                                      - counter_at(ledger, "SL1", local(2026, 11, 1, 8)))
        assert "billed in that month" in carried_out.detail_en and "2026-11-01 08:00" in carried_out.detail_en
        assert 0 < carried_in.kwh < carried_out.kwh and "billed in this month" in carried_in.detail_en
        # every other meter: each month exactly its own counter difference
        for m in ("A-stair", "B-stair", "A-lift1", "GATE", "MAIN"):
            for r, truth in ((oct_, october), (nov, november)):
                got = {x.meter: x.kwh for x in r.meters + r.reference}[m]
                assert got == truth.consumption_kwh[m], (m, r.month)
        sl1 = next(m for m in oct_.meters if m.meter == "SL1")
        # counted to 11:45, its last reading: 49 quarter hours of 2,976 not covered
        assert sl1.coverage == (1 - D(49) / (31 * 96)).quantize(D("1e-6"))
        assert next(m for m in nov.meters if m.meter == "SL1").coverage == 1
    finally:
        ledger.close()


def test_a_month_not_over_is_refused_unless_allowed(tmp_path):
    cfg = make_site(tmp_path)
    generate_month(cfg, cfg.storage_path, "2026-10", seed=1, every_s=900, faults=False)
    ledger = Ledger(cfg.storage_path)
    try:
        for now in (local(2026, 10, 20), local(2026, 11, 1, 0, 19)):   # readings across the end come by 00:20
            with pytest.raises(AllocationError) as e:
                allocate(cfg, ledger, "2026-10", now=now)
            assert e.value.problems == ["2026-10 is not over: it ends 2026-11-01 00:00 Asia/Shanghai and its "
                                        "readings are complete 20 min later: give --allow-partial to allocate it "
                                        "anyway"]
        with pytest.raises(AllocationError, match="2026-12 has not begun"):
            allocate(cfg, ledger, "2026-12", now=local(2026, 11, 5))
        assert allocate(cfg, ledger, "2026-10", now=local(2026, 11, 1, 0, 20)).waived == []
        r = allocate(cfg, ledger, "2026-10", now=local(2026, 10, 20), allow_partial=True)
        assert [en for _, en in r.waived] == ["allocated with --allow-partial: 2026-10 is not over: it ends "
                                              "2026-11-01 00:00 Asia/Shanghai and its readings are complete 20 min "
                                              "later"]
    finally:
        ledger.close()


def test_too_little_coverage_is_refused_unless_allowed_and_the_report_says_so(tmp_path):
    cfg = make_site(tmp_path)
    # October with two hours on either side: September has only its last two hours
    generate_month(cfg, cfg.storage_path, "2026-10", seed=1, every_s=900, faults=False)
    runner = CliRunner()
    site = str(tmp_path / "site.yaml")
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-09", "--out", str(tmp_path / "sep")])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().splitlines() == [
        "error: 2026-09: the counters of 5 of 5 billed meters cover less than 95 % of the month (lowest A-lift1, "
        "0.3 %; allocation.min_coverage): give --allow-partial to allocate it anyway"]
    assert not (tmp_path / "sep").exists()
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-09", "--out", str(tmp_path / "sep"),
                              "--allow-partial", "--en"])
    assert res.exit_code == 0, res.output
    assert "warning: allocated with --allow-partial: 2026-09: the counters of 5 of 5 billed meters" in res.output
    html = (tmp_path / "sep" / "allocation-2026-09.html").read_text(encoding="utf-8")
    assert "allocated with --allow-partial: 2026-09: the counters of 5 of 5 billed meters" in html
    # a lower threshold in the site file lets a month with a day missing through
    text = (tmp_path / "site.yaml").read_text(encoding="utf-8")
    (tmp_path / "site.yaml").write_text(text.replace("  difference_rule:", "  min_coverage: 0.002\n  difference_rule:"),
                                        encoding="utf-8")
    res = runner.invoke(app, ["allocate", "-c", site, "--month", "2026-09", "--out", str(tmp_path / "sep2")])
    assert res.exit_code == 0, res.output


def test_the_demo_refuses_an_unfinished_month_before_generating_it(tmp_path):
    res = CliRunner().invoke(app, ["demo", "--month", "2099-12", "--data-dir", str(tmp_path / "d")])
    assert res.exit_code == 2
    assert "2099-12 has not begun" in res.output and "--allow-partial" in res.output
    assert not (tmp_path / "d" / "gateway.db").exists()


def test_an_unfinished_month_with_a_bill_is_not_called_balanced(tmp_path):
    # the month of the issue: no readings yet, a bill of 5,000.00 that would all be "line losses"
    cfg = make_site(tmp_path)
    generate_month(cfg, cfg.storage_path, "2026-10", seed=1, every_s=900, faults=False)
    ledger = Ledger(cfg.storage_path)
    try:
        now = local(2026, 12, 3)
        with pytest.raises(AllocationError, match="2026-12 is not over"):
            allocate(cfg, ledger, "2026-12", bill=D("5000.00"), now=now)
        with pytest.raises(AllocationError) as e:
            allocate(cfg, ledger, "2026-12", bill=D("5000.00"), now=now, allow_partial=True)
        assert e.value.problems[0].startswith("the sub-meters' metered cost is 0: all of the bill, 5,000.00 yuan, "
                                              "would be shared as line losses")
        out = run_month(cfg, "2026-12", tmp_path / "dec", bill=D("5000.00"), now=now, allow_partial=True,
                        force=True, keep=False)
        assert [en.split(":")[0] for _, en in out.result.waived] == ["allocated with --allow-partial"] * 2 + [
            "allocated with --force"]
    finally:
        ledger.close()
