"""The equipment register: the site's devices listed by themselves, spreadsheets in and out
(XLSX, CSV in UTF-8 and GBK), every problem with its row and column, nothing half-imported."""

from __future__ import annotations

import csv
import io
import sqlite3
from datetime import date

import openpyxl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from gateway.cli import app
from gateway.config import load_site
from gateway.maintenance.register import (KINDS, OTHER_KINDS, RegisterError, export_csv, export_xlsx, import_register,
                                          load_register, parse_register)
from web_fixtures import EXAMPLE_SITE

GOOD_GBK = ("设备编号,类别,名称,楼栋,单元,位置,型号,序列号,安装日期,保修至,状态,备注\r\n"
            "PUMP-01,水泵,1号生活水泵,B01,,地下泵房,格兰富 CR5,SN-8812,2021/6/1,2024-06-01,在用,\r\n"
            "B01-stair,电表,,B01,1,楼道配电箱,,8600123,2020-09-15,,在用,换过互感器\r\n"
            "LIFT-B02-1,电梯,2号楼1号梯,B02,1,,,,2019年5月20日,,停用,\r\n")


@pytest.fixture()
def cfg(tmp_path):
    c = load_site(EXAMPLE_SITE)
    return c.model_copy(update={"storage": c.storage.model_copy(update={"path": str(tmp_path / "gw.db")})})


def _stored(cfg) -> list[tuple]:
    if not cfg.storage_path.exists():
        return []
    con = sqlite3.connect(cfg.storage_path)
    try:
        return con.execute("SELECT id, kind, name, installed, warranty_until, status, notes FROM equipment "
                           "ORDER BY id").fetchall()
    finally:
        con.close()


def test_every_device_of_the_site_file_is_listed_without_an_import(cfg):
    rows = load_register(cfg)
    by_kind = {}
    for r in rows:
        by_kind.setdefault(r["kind"], set()).add(r["id"])
    assert by_kind.get("meter", set()) == {m.id for m in cfg.meters}
    assert by_kind.get("door", set()) == {d.id for d in cfg.doors}
    assert by_kind.get("card_reader", set()) == {r.id for r in cfg.card_readers}
    assert by_kind.get("checkpoint", set()) == {c.id for c in cfg.patrol.checkpoints}
    assert by_kind.get("patrol_reader", set()) == {r.id for r in cfg.patrol.readers}
    assert by_kind.get("lighting_circuit", set()) == {c.id for c in cfg.lighting.circuits}
    assert by_kind.get("lighting_output", set()) == {o.id for o in cfg.outputs}
    assert by_kind.get("bus", set()) | by_kind.get("serial_server", set()) == {b.id for b in cfg.buses}
    assert len(rows) == len({(r["id"], r["kind"]) for r in rows})


def test_a_gbk_file_as_chinese_excel_writes_it_is_imported_and_merged(cfg):
    added, changed = import_register(cfg, GOOD_GBK.encode("gbk"), "台账.csv", "张电工", 1)
    assert (added, changed) == (3, 0)
    assert _stored(cfg) == [
        ("B01-stair", "meter", "1号楼楼道照明", "2020-09-15", None, "in_service", "换过互感器"),
        ("LIFT-B02-1", "lift", "2号楼1号梯", "2019-05-20", None, "retired", ""),
        ("PUMP-01", "pump", "1号生活水泵", "2021-06-01", "2024-06-01", "in_service", ""),
    ]
    rows = {(r["id"], r["kind"]): r for r in load_register(cfg)}
    meter = rows[("B01-stair", "meter")]
    assert meter["serial"] == "8600123" and meter["site"] is True and meter["notes"] == "换过互感器"
    assert rows[("B01-stair", "lighting_circuit")]["serial"] == ""      # the circuit of the same id is another device
    assert rows[("PUMP-01", "pump")]["site"] is False and rows[("PUMP-01", "pump")]["model"] == "格兰富 CR5"
    # importing again changes, adds nothing
    assert import_register(cfg, GOOD_GBK.encode("gbk"), "台账.csv", "张电工", 2) == (0, 3)


def test_a_gbk_file_with_errors_names_each_by_row_and_column_and_imports_nothing(cfg):
    text = ("设备编号,类别,名称,安装日期,保修至,状态\r\n"
            "PUMP-01,水泵,1号水泵,2021-06-01,,在用\r\n"            # good, but must not be imported
            ",水泵,无编号,,,\r\n"                                    # row 3: id empty
            "PUMP-01,水泵,重复,,,\r\n"                               # row 4: duplicate id
            "FAN-1,风扇,排风扇,,,\r\n"                               # row 5: unknown kind
            "B01-stair,水泵,,,,\r\n"                                 # row 6: a meter of the site, not a pump
            "X-1,其他,某设备,2021-02-30,2020-01-01,\r\n"             # row 7: no such date
            "X-2,其他,某设备,2022-01-01,2021-01-01,\r\n"             # row 8: warranty before install
            "X-3,其他,某设备,,,坏了\r\n"                             # row 9: unknown status
            "X-4,,某设备,,,\r\n"                                     # row 10: no kind, not a site device
            "reader-9,读卡器,新读卡器,,,\r\n")                       # row 11: site kinds live in the site file
    with pytest.raises(RegisterError) as e:
        import_register(cfg, text.encode("gbk"), "台账.csv", "张电工", 1)
    lines = e.value.problems
    assert lines == [
        "台账.csv: row 3, column A (设备编号): is empty: every piece of equipment needs its id",
        "台账.csv: row 4, column A (设备编号): 'PUMP-01' is already on row 2",
        "台账.csv: row 5, column B (类别): '风扇' is not a kind (one of: "
        + ", ".join(f"{k} / {zh}" for k, (zh, _) in KINDS.items()) + ")",
        "台账.csv: row 6, column B (类别): B01-stair is a meter and a lighting_circuit in the site file, not a pump",
        "台账.csv: row 7, column D (安装日期): '2021-02-30' is not a date of the calendar",
        "台账.csv: row 8, column E (保修至): 2021-01-01 is before the install date 2022-01-01",
        "台账.csv: row 9, column F (状态): '坏了' is not a status (在用 / in_service, 停用 / retired)",
        "台账.csv: row 10, column B (类别): no kind for 'X-4', which is not a device of the site file (one of: "
        + ", ".join(OTHER_KINDS) + ")",
        "台账.csv: row 11, column B (类别): a card_reader is declared in the site file, and it has no card_reader "
        "'reader-9': add it there (or give the equipment another kind)",
    ]
    assert e.value.count == len(lines)
    assert _stored(cfg) == []                      # not even the good row


def test_missing_columns_are_said_at_once(cfg):
    with pytest.raises(RegisterError) as e:
        parse_register("类别,型号\n水泵,CR5\n".encode(), "x.csv", cfg)
    assert e.value.problems == ["x.csv: row 1: no column for id, name (accepted headers: 设备编号 / id; 名称 / name)"]


def test_xlsx_round_trip_keeps_every_value(cfg, tmp_path):
    import_register(cfg, GOOD_GBK.encode("gbk"), "台账.csv", "张电工", 1)
    before = load_register(cfg)
    data = export_xlsx(before)
    wb = openpyxl.load_workbook(io.BytesIO(data))
    ws = wb.active
    assert [c.value for c in ws[1]][:3] == ["设备编号", "类别", "名称"]
    assert ws.max_row == len(before) + 1
    # an electrician edits the workbook (a date typed as a date cell) and imports it back
    for row in ws.iter_rows(min_row=2):
        if row[0].value == "PUMP-01":
            row[8].value = date(2021, 7, 1)
            row[11].value = "更换机械密封"
    buf = io.BytesIO()
    wb.save(buf)
    added, changed = import_register(cfg, buf.getvalue(), "台账.xlsx", "张电工", 3)
    assert added == len(before) - 3 and changed == 3
    after = {(r["id"], r["kind"]): r for r in load_register(cfg)}
    pump = after[("PUMP-01", "pump")]
    assert pump["installed"] == "2021-07-01" and pump["notes"] == "更换机械密封"
    for r in before:
        if r["id"] != "PUMP-01":
            assert after[(r["id"], r["kind"])] == r


def test_xlsx_errors_name_the_cell(cfg):
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["id", "kind", "name", "installed"])
    ws.append(["P-1", "pump", "pump one", "soon"])
    buf = io.BytesIO()
    wb.save(buf)
    with pytest.raises(RegisterError) as e:
        parse_register(buf.getvalue(), "r.xlsx", cfg)
    assert e.value.problems == ["r.xlsx: row 2, column D (installed): 'soon' is not a date (write 2024-05-01)"]


@pytest.mark.parametrize("encoding", ["utf-8", "gbk"])
def test_csv_export_reads_back_in_its_encoding(cfg, encoding):
    rows = load_register(cfg)
    data = export_csv(rows, encoding)
    text = data.decode("utf-8-sig" if encoding == "utf-8" else "gbk")
    back = list(csv.reader(io.StringIO(text)))
    assert len(back) == len(rows) + 1 and back[1][0] == rows[0]["id"]
    assert parse_register(data, "x.csv", cfg)[0]["id"] == rows[0]["id"]


def test_the_cli_imports_and_exports_and_says_every_problem(cfg, tmp_path):
    import yaml
    site = tmp_path / "site.yaml"
    data = yaml.safe_load(EXAMPLE_SITE.read_text(encoding="utf-8"))
    data["storage"]["path"] = str(tmp_path / "cli.db")
    for key in ("cards", "allocation"):
        data.pop(key, None)
    site.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    bad = tmp_path / "bad.csv"
    bad.write_bytes("设备编号,类别,名称\nP-1,水泵,\n".encode("gbk"))
    r = CliRunner().invoke(app, ["equipment", "import", str(bad), "--by", "x", "-c", str(site)])
    assert r.exit_code == 2
    assert "row 2, column C (名称): is empty: give the equipment a name" in r.output
    assert "nothing was imported" in r.output and "Traceback" not in r.output
    good = tmp_path / "good.csv"
    good.write_bytes(GOOD_GBK.encode("gbk"))
    r = CliRunner().invoke(app, ["equipment", "import", str(good), "--by", "x", "-c", str(site)])
    assert r.exit_code == 0, r.output
    assert "3 added, 0 updated" in r.output
    out = tmp_path / "out.xlsx"
    r = CliRunner().invoke(app, ["equipment", "export", str(out), "-c", str(site)])
    assert r.exit_code == 0, r.output
    ids = [row[0] for row in openpyxl.load_workbook(out).active.iter_rows(min_row=2, values_only=True)]
    assert "PUMP-01" in ids and "B01-stair" in ids


_cell = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(st.lists(_cell, min_size=0, max_size=8), max_size=6))
def test_any_csv_is_rows_or_problems_never_a_crash(cfg, rows):
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["设备编号", "类别", "名称", "安装日期", "保修至", "状态", "备注"])
    for r in rows:
        w.writerow(r)
    try:
        out = parse_register(buf.getvalue().encode("utf-8"), "f.csv", cfg)
    except RegisterError as e:
        assert e.problems and all(line.startswith("f.csv: ") and "\n" not in line for line in e.problems)
    else:
        assert all(r["kind"] in KINDS and r["name"] for r in out)
