"""What the lighting plans saved: kWh against the circuit's own baseline, per hour of darkness."""

import sqlite3
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from astral import Observer
from astral.sun import sun

from gateway.clock import to_us
from gateway.config import parse_site
from gateway.lighting.savings import month_savings, totals
from gateway.ledger import Ledger

TZ = ZoneInfo("Asia/Shanghai")


def dark_hours(first: date, last: date) -> float:
    h, d = 0.0, first
    while d <= last:
        s0 = sun(Observer(44.15, 125.83), date=d, tzinfo=TZ)
        s1 = sun(Observer(44.15, 125.83), date=d + timedelta(days=1), tzinfo=TZ)
        h += (s1["sunrise"] - s0["sunset"]).total_seconds() / 3600
        d += timedelta(days=1)
    return h


def cfg(tmp: Path):
    return parse_site({
        "site": {"id": "t", "name": "t", "latitude": 44.15, "longitude": 125.83},
        "storage": {"path": str(tmp / "gw.db")},
        "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
        "meters": [{"id": "SL01", "bus": "b", "unit": 1, "model": "chint-ddsu666", "circuit": "street_lighting"}],
        "outputs": [{"id": "K1", "bus": "b", "unit": 40, "address": 0}],
        "tariffs": [{"name": "flat", "valid_from": "2026-01-01", "price": "0.5500"}],
        "lighting": {"schedules": [{"id": "s"}],
                     "circuits": [{"id": "SL01", "outputs": ["K1"], "meters": ["SL01"], "schedule": "s",
                                   "baseline": "2026-10-01..2026-10-31"}]},
    }, base_dir=tmp)


def put(path: Path, rows):
    Ledger(path).close()                       # the schema
    with sqlite3.connect(path) as db:
        db.executemany("INSERT INTO energy (meter, ts_us, kwh) VALUES (?,?,?)", rows)


def at(d: date) -> int:
    return to_us(datetime.combine(d, time(0), TZ))


def test_saving_is_normalised_by_the_length_of_the_nights(tmp_path):
    c = cfg(tmp_path)
    base_dark = dark_hours(date(2026, 10, 1), date(2026, 10, 31))
    month_dark = dark_hours(date(2026, 11, 1), date(2026, 11, 30))
    assert month_dark > base_dark + 20             # November's nights are longer
    kw = 3.0
    base_end = Decimal("1000.00") + Decimal(str(round(kw * base_dark, 2)))
    # November: all night but 100 hours (the new curfew)
    nov_used = Decimal(str(round(kw * (month_dark - 100), 2)))
    put(c.storage_path, [("SL01", at(date(2026, 10, 1)), "1000.00"), ("SL01", at(date(2026, 11, 1)), str(base_end)),
                         ("SL01", at(date(2026, 12, 1)), str(base_end + nov_used))])
    with sqlite3.connect(c.storage_path) as db:
        (row,) = month_savings(c, db, "2026-11")
    assert abs(row.saved_kwh - Decimal("300.00")) <= Decimal("0.05"), row
    assert row.price == Decimal("0.5500") and row.saved_yuan == (row.saved_kwh * Decimal("0.55")).quantize(Decimal("0.01"))
    assert totals([row])["saved_kwh"] == row.saved_kwh


def test_a_period_without_counters_is_not_judged(tmp_path):
    c = cfg(tmp_path)
    put(c.storage_path, [("SL01", at(date(2026, 11, 1)), "10.00"), ("SL01", at(date(2026, 12, 1)), "20.00")])
    with sqlite3.connect(c.storage_path) as db:
        (row,) = month_savings(c, db, "2026-11")
    assert row.saved_kwh is None and "no counter of SL01" in row.note
    assert totals([row]) == {"circuits": 1, "judged": 0, "saved_kwh": 0, "saved_yuan": 0}


def test_cli_prints_the_months_savings(tmp_path):
    import json
    import subprocess
    import sys

    import yaml
    c = cfg(tmp_path)
    base_dark = dark_hours(date(2026, 10, 1), date(2026, 10, 31))
    month_dark = dark_hours(date(2026, 11, 1), date(2026, 11, 30))
    end = Decimal("1000") + Decimal(str(round(2 * base_dark, 2)))
    put(c.storage_path, [("SL01", at(date(2026, 10, 1)), "1000"), ("SL01", at(date(2026, 11, 1)), str(end)),
                         ("SL01", at(date(2026, 12, 1)), str(end + Decimal(str(round(2 * (month_dark - 50), 2)))))])
    site = tmp_path / "site.yaml"
    data = c.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    site.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "gateway", "lighting", "savings", "--month", "2026-11", "-c", str(site),
                          "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert abs(Decimal(got["saved_kwh"]) - Decimal("100")) <= Decimal("0.05")


def test_the_console_view_shows_the_months_savings(tmp_path):
    from gateway.web.views.lighting import lighting_view
    c = cfg(tmp_path)
    put(c.storage_path, [("SL01", at(date(2026, 10, 1)), "1000"), ("SL01", at(date(2026, 11, 1)), "2200"),
                         ("SL01", at(date(2026, 12, 1)), "3000")])
    with sqlite3.connect(c.storage_path) as db:
        view = lighting_view(c, db, datetime(2026, 11, 15, 12, tzinfo=TZ))
        (row,) = month_savings(c, db, "2026-11")
    assert view["savings"]["month"] == "2026-11" and view["savings"]["saved_kwh"] == str(row.saved_kwh)
    assert Decimal(view["savings"]["saved_kwh"]) > 0
