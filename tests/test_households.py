"""The households file: encodings, English and Chinese headers, and every row checked against the
site's buildings and units, each problem with its row and column."""

from __future__ import annotations

import re
from decimal import Decimal as D
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from gateway.billing.households import (
    MAX_PROBLEMS,
    HouseholdsError,
    Layout,
    load_households,
    parse_households,
    site_households,
)
from gateway.billing.model import Household
from gateway.billing.report import HOUSEHOLD_COLS, T, write_csv
from gateway.config import load_site

SITE = """
site: {id: t, name: 测试小区, timezone: Asia/Shanghai, latitude: 44.15, longitude: 125.83}
storage: {path: gw.db}
buses: [{id: b1, type: modbus_tcp, host: 127.0.0.1}]
meters:
  - {id: B01-stair, bus: b1, unit: 1, model: chint-ddsu666, circuit: stairwell_lighting, building: B01}
  - {id: B02-stair, bus: b1, unit: 2, model: chint-ddsu666, circuit: stairwell_lighting, building: B02}
  - {id: B01-lift1, bus: b1, unit: 3, model: chint-dtsu666, circuit: lift, building: B01, unit_no: '1'}
tariffs:
  - {name: t, valid_from: 2026-01-01, price: '0.50'}
allocation:
  households_file: households.csv
EXTRA
  groups:
    - {id: stair, name: 楼道照明, scope: building, circuits: [stairwell_lighting], key: area}
    - {id: lift, name: 电梯, scope: unit, circuits: [lift], key: household}
"""
HEAD = "id,building,unit,room,floor_area_m2,occupied\n"
GOOD = HEAD + "B01-1-101,B01,1,101,60.5,1\nB01-2-101,B01,2,101,80,0\nB02-1-101,B02,1,101,55.25,1\n"


def site(tmp_path: Path, households: str | bytes, extra: str = ""):
    (tmp_path / "site.yaml").write_text(SITE.replace("EXTRA\n", extra), encoding="utf-8")
    path = tmp_path / "households.csv"
    if isinstance(households, bytes):
        path.write_bytes(households)
    else:
        path.write_text(households, encoding="utf-8")
    return load_site(tmp_path / "site.yaml")


def problems(tmp_path: Path, households: str | bytes, extra: str = "") -> list[str]:
    cfg = site(tmp_path, households, extra)
    with pytest.raises(HouseholdsError) as e:
        site_households(cfg)
    return e.value.problems


# ---- encodings and headers -------------------------------------------------------------------------

ZH = "户号,楼号,单元,房号,建筑面积(m²),入住\nB01-1-101,B01,1,101,60.5,是\nB01-2-101,B01,2,101,80,否\n" \
     "B02-1-101,B02,1,101,55.25,已入住\n"


def test_gbk_as_chinese_excel_writes_it(tmp_path):
    data = ZH.replace("(m²)", "").encode("gbk")        # m² is not in GBK; Excel writes 建筑面积
    with pytest.raises(UnicodeDecodeError):
        data.decode("utf-8")
    homes = site_households(site(tmp_path, data))
    assert [(h.id, h.area_m2, h.occupied) for h in homes] == [("B01-1-101", D("60.5"), True),
                                                             ("B01-2-101", D("80"), False),
                                                             ("B02-1-101", D("55.25"), True)]


def test_utf8_with_bom_and_the_programs_own_chinese_headers(tmp_path):
    homes = site_households(site(tmp_path, ZH.encode("utf-8-sig")))
    assert [h.id for h in homes] == ["B01-1-101", "B01-2-101", "B02-1-101"]
    assert [h.occupied for h in homes] == [True, False, True]


@pytest.mark.parametrize("area_header", ["建筑面积", "面积(m2)", "建筑面积（㎡）", "面积", "Floor_Area_M2", "area_m2"])
def test_variants_of_the_area_header(tmp_path, area_header):
    text = GOOD.replace("floor_area_m2", area_header)
    assert [h.area_m2 for h in site_households(site(tmp_path, text))] == [D("60.5"), D("80"), D("55.25")]


def test_a_file_of_neither_encoding_is_one_line_naming_it(tmp_path):
    data = GOOD.encode() + b"B02-1-102,B02,1,102,50,\xff\xff\n"
    lines = problems(tmp_path, data)
    assert len(lines) == 1 and "households.csv" in lines[0] and "neither UTF-8" in lines[0] and "GBK" in lines[0]


def test_an_excel_workbook_is_named_as_such(tmp_path):
    lines = problems(tmp_path, b"PK\x03\x04" + b"\x00" * 40)
    assert lines == [f"{tmp_path / 'households.csv'}: is an Excel workbook, not CSV: save it as \"CSV UTF-8\" instead"]


def test_missing_columns_say_which_and_what_is_accepted(tmp_path):
    lines = problems(tmp_path, GOOD.replace("floor_area_m2", "size").replace("occupied", "状态"))
    assert len(lines) == 1
    assert "row 1: no column for floor_area_m2, occupied" in lines[0] and "建筑面积(m²)" in lines[0]


# ---- rows checked against the site -----------------------------------------------------------------

@pytest.mark.parametrize("typed", ["B1", "b01", "1号楼"])
def test_an_unknown_building_is_an_error_with_a_suggestion(tmp_path, typed):
    lines = problems(tmp_path, GOOD.replace("B01-2-101,B01,", f"B01-2-101,{typed},"))
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'households.csv'}: row 3, building: '{typed}' is not a building of "
                               f"the site")
    if typed != "1号楼":
        assert "did you mean 'B01'?" in lines[0]
    assert "buildings: B01, B02" in lines[0] and "allocation.buildings" in lines[0]


def test_a_building_without_meters_is_stated_in_the_site_file(tmp_path):
    text = GOOD + "B03-1-101,B03,1,101,70,1\n"
    assert "'B03' is not a building of the site" in problems(tmp_path, text)[0]
    homes = site_households(site(tmp_path, text, "  buildings: [B01, B02, B03]\n"))
    assert homes[-1].building == "B03"


def test_units_listed_in_the_site_file_are_the_only_ones(tmp_path):
    extra = "  buildings: {B01: [1, 2], B02: ['1']}\n"
    assert len(site_households(site(tmp_path, GOOD, extra))) == 3
    lines = problems(tmp_path, GOOD.replace("B01-2-101,B01,2,", "B01-2-101,B01,3,"), extra)
    assert lines == [f"{tmp_path / 'households.csv'}: row 3, unit: building B01 has no unit '3' (its units in "
                     f"allocation.buildings: 1, 2)"]
    lines = problems(tmp_path, GOOD.replace("B02-1-101,B02,1,", "B02-1-101,B02,01,"), extra)
    assert "row 4, unit: building B02 has no unit '01'; did you mean '1'?" in lines[0]


def test_a_mistyped_unit_a_meter_names_is_an_error(tmp_path):
    # unit 1 of B01 has the lift: '01' would pay no lift share; unit 2 (no lift meter) is fine
    lines = problems(tmp_path, GOOD.replace("B01-1-101,B01,1,", "B01-1-101,B01,01,"))
    assert lines == [f"{tmp_path / 'households.csv'}: row 2, unit: building B01 has no unit '01'; did you mean "
                     f"'1'? (the units its meters name: 1)"]


def test_the_site_file_checks_its_meters_against_stated_buildings(tmp_path):
    from gateway.config import ConfigError
    with pytest.raises(ConfigError) as e:
        site(tmp_path, GOOD, "  buildings: {B01: [2], B03: []}\n")
    assert "meters[1].building: 'B02' is not in allocation.buildings (B01, B03)" in e.value.problems
    assert "meters[2].unit_no: building 'B01' has no unit '1' in allocation.buildings (its units: 2)" in e.value.problems


@pytest.mark.parametrize("area, said", [("0", "is 0: a household without floor area pays nothing"),
                                        ("-5", "-5 is negative"), ("", "is empty"),
                                        ('"60,5"', "'60,5' is not a floor area in m²"), ("NaN", "'NaN' is not a floor")])
def test_floor_area_must_be_a_positive_number(tmp_path, area, said):
    lines = problems(tmp_path, GOOD.replace(",80,0", f",{area},0"))
    assert len(lines) == 1 and lines[0].startswith(f"{tmp_path / 'households.csv'}: row 3, floor_area_m2: {said}")


@pytest.mark.parametrize("occupied", ["", "maybe", "2"])
def test_occupied_must_say_yes_or_no(tmp_path, occupied):
    lines = problems(tmp_path, GOOD.replace(",80,0", f",80,{occupied}"))
    assert len(lines) == 1 and "households.csv: row 3, occupied: " in lines[0]
    assert "is empty" in lines[0] if not occupied else f"'{occupied}' is not a yes or no" in lines[0]
    assert "1 / yes / y / true" in lines[0] and "0 / no / n / false" in lines[0]


def test_problems_name_the_column_as_the_file_heads_it(tmp_path):
    text = ZH.replace("B01-2-101,B01,2,101,80,否", "B01-2-101,b01,2,101,0,") + ",B02,1,102,40,是\nB02-1-101,B02,1,1,1,1\n"
    lines = problems(tmp_path, text.encode("utf-8-sig"))
    assert [re.sub(r"^.*households\.csv: ", "", x).split(":")[0] for x in lines] == [
        "row 3, 建筑面积(m²)", "row 3, 入住", "row 3, 楼号", "row 5, 户号", "row 6, 户号"]
    assert "household 'B02-1-101' is already on row 4" in lines[-1]


def test_the_problems_shown_are_bounded(tmp_path):
    text = HEAD + "".join(f"H{i},B9,1,{i},60,1\n" for i in range(MAX_PROBLEMS + 70))
    cfg = site(tmp_path, text)
    with pytest.raises(HouseholdsError) as e:
        site_households(cfg)
    assert len(e.value.problems) == MAX_PROBLEMS + 1 and e.value.count == MAX_PROBLEMS + 70
    assert e.value.problems[-1] == f"{tmp_path / 'households.csv'}: ... and 70 more problem(s)"


def test_a_good_file_reads_as_written_without_excels_blank_rows(tmp_path):
    homes = site_households(site(tmp_path, GOOD + ",,,,,\n\n"))
    assert homes == [Household("B01-1-101", "B01", "1", "101", D("60.5"), True),
                     Household("B01-2-101", "B01", "2", "101", D("80"), False),
                     Household("B02-1-101", "B02", "1", "101", D("55.25"), True)]


# ---- any valid file reads back ---------------------------------------------------------------------

LAYOUT = Layout({}, {"A": frozenset({"1"}), "B": frozenset(), "楼7": frozenset()})

homes_st = st.lists(
    st.tuples(st.sampled_from(sorted(LAYOUT.buildings)), st.sampled_from(["1", "2", "东", ""]),
              st.text(st.characters(codec="gbk", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=6),
              st.decimals(D("0.01"), D("9999.99"), places=2), st.booleans()),
    min_size=1, max_size=25)


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=homes_st, lang=st.sampled_from(["en", "zh", "plain"]), encoding=st.sampled_from(["utf-8", "utf-8-sig", "gbk"]),
       order=st.randoms(use_true_random=False), crlf=st.booleans())
def test_any_valid_file_reads_back_in_any_order(tmp_path, rows, lang, encoding, order, crlf):
    import csv
    import io
    homes = [Household(f"{b}-{i}", b, u if b != "A" or u != "2" else "1", room, area, occ)
             for i, (b, u, room, area, occ) in enumerate(rows)]
    order.shuffle(homes)
    head = ["id", "building", "unit", "room", "floor_area_m2", "occupied"] if lang == "plain" else HOUSEHOLD_COLS[lang][1:7]   # the reports' CSV: month first, then the six
    if encoding == "gbk":
        head = [h.replace("(m²)", "") for h in head]
    yes, no = ("1", "0") if lang == "plain" else (T[lang]["yes"], T[lang]["no"])
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\r\n" if crlf else "\n")
    w.writerow(head)
    for h in homes:
        w.writerow([h.id, h.building, h.unit, h.room, h.area_m2, yes if h.occupied else no])
    data = buf.getvalue().encode(encoding)
    if encoding == "gbk":
        # the odd GBK text that is also valid UTF-8 reads as UTF-8 (households.decode)
        assume(not _utf8(data))
    path = tmp_path / "h.csv"
    path.write_bytes(data)
    assert load_households(path, LAYOUT) == [Household(h.id, h.building, h.unit, h.room.strip(), h.area_m2,
                                                       h.occupied) for h in homes]


def test_the_reports_own_csv_reads_back_as_the_households(tmp_path):
    from test_billing_allocate import fill, make_site

    from gateway.billing.allocate import allocate
    cfg = make_site(tmp_path)
    ledger = fill(cfg)
    result = allocate(cfg, ledger, "2026-10")
    ledger.close()
    for lang in ("zh", "en"):
        path = write_csv(result, tmp_path / f"out-{lang}.csv", lang)
        assert path.read_bytes().startswith(b"\xef\xbb\xbf")
        assert parse_households(path.read_bytes().decode("utf-8-sig"), path) == \
            [c.household for c in result.households]
        assert load_households(path) == [c.household for c in result.households]

