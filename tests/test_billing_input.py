"""What the accountant and the electrician type in, checked where it is typed: `gateway
check-config` with the households file, gaps between tariffs and implausible prices, and
`gateway meters replace` against the counters the ledger holds."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from decimal import Decimal as D

import pytest
from test_billing_allocate import fill, make_site
from test_households import GOOD, site
from typer.testing import CliRunner

from gateway.billing.allocate import AllocationError, allocate
from gateway.billing.tariffs import implausible_prices, plan_month
from gateway.cli import app
from gateway.config import ConfigError, load_site
from gateway.events import Reading
from gateway.ledger import Ledger

runner = CliRunner()


def check(path) -> tuple[int, str]:
    res = runner.invoke(app, ["check-config", str(path)])
    return res.exit_code, res.output


# ---- check-config and the households file ------------------------------------------------------------

def test_check_config_reads_the_households_file(tmp_path):
    site(tmp_path, GOOD)
    code, out = check(tmp_path / "site.yaml")
    assert code == 0, out
    assert "households: 3 in households.csv (2 buildings, 2 occupied); 3 allocation groups" in out
    # a site that allocates nothing needs no households file
    plain = (tmp_path / "site.yaml").read_text(encoding="utf-8")
    (tmp_path / "site.yaml").write_text(plain[:plain.index("allocation:")], encoding="utf-8")
    (tmp_path / "households.csv").unlink()
    code, out = check(tmp_path / "site.yaml")
    assert code == 0 and "households" not in out


def test_check_config_shows_every_problem_of_the_households_file(tmp_path):
    text = GOOD.replace("B01-2-101,B01,2,101,80,0", "B01-2-101,b01,2,101,0,") + "B02-1-101,B1,1,102,40,1\n"
    site(tmp_path, text)
    code, out = check(tmp_path / "site.yaml")
    csv = tmp_path / "households.csv"
    assert code == 2 and not out.startswith("OK")
    lines = out.splitlines()
    assert lines[0] == f"{csv}: row 3, floor_area_m2: is 0: a household without floor area pays nothing of the " \
                       f"groups shared by area, and its neighbours pay its part; give its floor area in m²"
    assert lines[1].startswith(f"{csv}: row 3, occupied: is empty: write 1 / yes")
    assert lines[2].startswith(f"{csv}: row 3, building: 'b01' is not a building of the site; did you mean 'B01'?")
    assert lines[3] == f"{csv}: row 5, id: household 'B02-1-101' is already on row 4"
    assert lines[4].startswith(f"{csv}: row 5, building: 'B1' is not a building of the site; did you mean 'B01'?")
    assert lines[5] == f"5 problem(s) in {csv} (allocation.households_file of {tmp_path / 'site.yaml'})"


def test_check_config_says_a_missing_households_file(tmp_path):
    site(tmp_path, GOOD)
    (tmp_path / "households.csv").unlink()
    code, out = check(tmp_path / "site.yaml")
    assert code == 2 and f"{tmp_path / 'households.csv'}: no such file (allocation.households_file)" in out


def test_check_config_shows_groups_nobody_shares(tmp_path):
    site(tmp_path, GOOD.replace("B02-1-101,B02,1,101,55.25,1\n", ""))
    code, out = check(tmp_path / "site.yaml")
    assert code == 2
    assert f"{tmp_path / 'site.yaml'}: allocation.groups[0] (stair): no households share stair-B02 (building B02); " \
           f"its meters B02-stair could not be charged to anyone" in out


# ---- tariffs -------------------------------------------------------------------------------------

TARIFFS = """tariffs:
  - {name: t, valid_from: 2026-01-01, price: '0.50'}
"""


def with_tariffs(tmp_path, tariffs: str):
    site(tmp_path, GOOD)
    text = (tmp_path / "site.yaml").read_text(encoding="utf-8").replace(TARIFFS, tariffs)
    (tmp_path / "site.yaml").write_text(text, encoding="utf-8")
    return tmp_path / "site.yaml"


def test_a_gap_between_tariffs_is_a_site_file_error(tmp_path):
    path = with_tariffs(tmp_path, """tariffs:
  - {name: 2026年上半年, valid_from: 2026-01-01, valid_until: 2026-07-01, price: '0.50'}
  - {name: 2026年下半年, valid_from: 2026-07-03, price: '0.52'}
""")
    code, out = check(path)
    assert code == 2
    assert (f"{path}: tariffs: no tariff for 2026-07-01 to 2026-07-02: '2026年上半年' (tariffs[0]) has valid_until "
            f"2026-07-01 (its last day is 2026-06-30) and '2026年下半年' (tariffs[1]) valid_from 2026-07-03; give "
            f"'2026年上半年' valid_until 2026-07-03 or '2026年下半年' valid_from 2026-07-01") in out
    # one missing day, tariffs written out of order: the indices are the file's
    path = with_tariffs(tmp_path, """tariffs:
  - {name: b, valid_from: 2026-07-02, price: '0.52'}
  - {name: a, valid_from: 2026-01-01, valid_until: 2026-07-01, price: '0.50'}
""")
    with pytest.raises(ConfigError) as e:
        load_site(path)
    assert e.value.problems == ["tariffs: no tariff for 2026-07-01: 'a' (tariffs[1]) has valid_until 2026-07-01 (its "
                                "last day is 2026-06-30) and 'b' (tariffs[0]) valid_from 2026-07-02; give 'a' "
                                "valid_until 2026-07-02 or 'b' valid_from 2026-07-01"]


def test_an_implausible_price_is_a_warning(tmp_path):
    path = with_tariffs(tmp_path, """tariffs:
  - {name: 分时, valid_from: 2026-01-01, prices: {peak: 8400, flat: '0.60', valley: '0.05'},
     periods: {peak: ['08:00-10:00'], flat: ['10:00-24:00'], valley: ['00:00-08:00']}}
""")
    code, out = check(path)
    assert code == 0 and out.startswith("OK")
    warnings = [x for x in out.splitlines() if x.startswith("warning:")]
    assert warnings == [
        f"warning: {path}: tariffs[0].prices.peak: 8400 yuan/kWh for '分时' is outside 0.10-3.00 yuan/kWh, where "
        f"electricity prices in China lie: a slipped decimal point? (gateway allocate refuses it without --force)",
        f"warning: {path}: tariffs[0].prices.valley: 0.05 yuan/kWh for '分时' is outside 0.10-3.00 yuan/kWh, where "
        f"electricity prices in China lie: a slipped decimal point? (gateway allocate refuses it without --force)"]
    code, out = check(with_tariffs(tmp_path, TARIFFS))
    assert code == 0 and "warning" not in out


def test_allocate_refuses_an_implausible_price_unless_forced(tmp_path):
    make_site(tmp_path)
    (tmp_path / "site.yaml").write_text((tmp_path / "site.yaml").read_text(encoding="utf-8")
                                        .replace("price: '0.50'", "price: '50'"), encoding="utf-8")
    cfg = load_site(tmp_path / "site.yaml")
    ledger = fill(cfg)
    with pytest.raises(AllocationError) as e:
        allocate(cfg, ledger, "2026-10")
    assert e.value.problems == ["tariff 'old' (flat) prices a kWh at 50 yuan, outside the plausible 0.10–3.00 "
                                "yuan/kWh: check the tariffs in the site file, or give --force to allocate it anyway"]
    r = allocate(cfg, ledger, "2026-10", force=True)
    assert r.waived == [("按 --force 分摊：电价 'old' flat 时段 50 元/kWh 不在合理范围 0.10–3.00 元/kWh 之内",
                         "allocated with --force: tariff 'old' (flat) prices a kWh at 50 yuan, outside the "
                         "plausible 0.10–3.00 yuan/kWh")]
    # only the prices in force in the month count: November has the time-of-use tariff alone
    assert implausible_prices(plan_month("2026-11", cfg.site.timezone, cfg.tariffs)) == []
    ledger.close()


# ---- meters replace ------------------------------------------------------------------------------

SWAP = datetime(2026, 10, 15, 2, 0, tzinfo=timezone.utc)          # 10:00 in Shanghai


def swapped_ledger(tmp_path):
    """A-stair's old meter at 10921.00 from 08:00, 0.10 kWh every 15 min, swapped at 10:00; the new
    meter from 0.00, read at 10:15 on."""
    cfg = make_site(tmp_path)
    ledger = Ledger(cfg.storage_path)
    for k in range(8):
        t = SWAP - timedelta(hours=2) + k * timedelta(minutes=15)
        c = D("10921.00") + D("0.10") * k
        ledger.add(Reading("A-stair", t, {"energy_kwh": float(c)}, {"energy_kwh": c}))
    for k in range(1, 5):
        c = D("0.10") * k
        ledger.add(Reading("A-stair", SWAP + k * timedelta(minutes=15), {"energy_kwh": float(c)}, {"energy_kwh": c}))
    ledger.flush()
    ledger.close()
    return str(tmp_path / "site.yaml")


def replace(site_file, at, old, new, *extra):
    res = runner.invoke(app, ["meters", "replace", "A-stair", "--at", at, "--old-final", old, "--new-initial", new,
                              "--by", "王师傅", "-c", site_file, *extra])
    return res.exit_code, res.output


@pytest.mark.parametrize("at, old, new, said", [
    ("2026-10-15 10:00", "5", "0",
     "error: --old-final 5 kWh is below the old meter's last stored reading, 10921.70 kWh at 2026-10-15 09:45: a "
     "counter does not go back; read the old meter's final figure again"),
    ("2026-10-15 10:00", "20000", "0",
     "error: --old-final 20000 kWh is 9078.30 kWh above the old meter's last stored reading, 10921.70 kWh at "
     "2026-10-15 09:45, but its circuit (4 kW at most) can add at most 1.00 kWh by 2026-10-15 10:00"),
    ("2026-10-15 10:00", "10921.80", "5",
     "error: --new-initial 5 kWh is above the first reading stored after --at, 0.10 kWh at 2026-10-15 10:15: the "
     "new meter's counter would go back"),
    ("2026-10-15 09:00", "10921.45", "0",
     "error: the first reading stored after --at, 10921.50 kWh at 2026-10-15 09:15, is 10921.50 kWh above "
     "--new-initial 0, more than the circuit (4 kW at most) can use in between (1.00 kWh): is that reading the "
     "old meter's, i.e. was it swapped later than --at?"),
    ("2026-10-01 00:00", "10921.00", "0",
     "error: --at 2026-10-01 00:00: meter A-stair has no stored reading before it (its first is 10921.00 kWh at "
     "2026-10-15 08:00): a replacement before a meter's first reading changes nothing; give the time of the swap"),
])
def test_a_replacement_that_does_not_fit_the_counters_is_refused(tmp_path, at, old, new, said):
    site_file = swapped_ledger(tmp_path)
    code, out = replace(site_file, at, old, new)
    assert code == 2 and said in out.splitlines(), out
    assert "nothing recorded: correct the figures, or give --force to record them anyway" in out
    assert "没有换表记录" in runner.invoke(app, ["meters", "replacements", "-c", site_file]).output


def test_a_replacement_that_fits_is_recorded_one_that_does_not_only_with_force(tmp_path):
    (tmp_path / "fits").mkdir()
    site_file = swapped_ledger(tmp_path / "fits")
    code, out = replace(site_file, "2026-10-15 10:00", "10921.80", "0")
    assert code == 0 and out.startswith("recorded: meter A-stair replaced at 2026-10-15T10:00+08:00"), out
    assert "warning" not in out
    site_file = swapped_ledger(tmp_path)
    code, out = replace(site_file, "2026-10-15 10:00", "5", "0", "--force", "--note", "表盘模糊")
    assert code == 0, out
    assert "warning: recorded with --force: --old-final 5 kWh is below the old meter's last stored reading" in out
    listed = runner.invoke(app, ["meters", "replacements", "-c", site_file]).output
    assert "old final 5 -> new first 0" in listed and "(表盘模糊 [recorded with --force: --old-final 5 kWh is below" \
        in listed
    # a second replacement at the same time is refused whatever its figures, --force or not
    code, out = replace(site_file, "2026-10-15 10:00", "10921.80", "0", "--force")
    assert code == 2 and "error: meter A-stair already has a replacement recorded at 2026-10-15 10:00 (old final " \
                         "5, new first 0, by 王师傅)" in out
