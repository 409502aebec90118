"""The equipment register (设备台账): every device the gateway knows, from the site file, plus the
equipment it does not poll (pumps, lifts, fire and fitness equipment, street-light poles), each
with its place, model, serial, install date, warranty and notes.

The site's devices are listed whatever the ledger holds; a register row with the same id adds
their details. Spreadsheets (XLSX, or CSV in UTF-8 or GBK as Chinese Excel writes it) are read
like the households file: every problem is one line with its row and column, and a file with any
problem changes nothing.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path

from ..billing.households import decode as decode_text
from ..billing.households import HouseholdsError
from ..config import SiteConfig

# kind -> (Chinese, English); the first group are what the site file declares
SITE_KINDS = {
    "meter": ("电表", "meter"), "bus": ("RS-485 总线", "RS-485 line"), "serial_server": ("串口服务器", "serial server"),
    "lighting_circuit": ("照明回路", "lighting circuit"), "lighting_output": ("照明输出（继电器）", "lighting output (relay)"),
    "card_reader": ("读卡器", "card reader"), "door": ("门/道闸", "door or gate"),
    "checkpoint": ("巡更点", "patrol checkpoint"), "patrol_reader": ("巡更机", "patrol reader"),
}
OTHER_KINDS = {
    "pump": ("水泵", "pump"), "lift": ("电梯", "lift"), "fire_equipment": ("消防设施", "fire equipment"),
    "fitness_equipment": ("健身器材", "fitness equipment"), "street_light": ("路灯灯杆", "street-light pole"),
    "distribution_box": ("配电箱", "distribution box"), "other": ("其他", "other"),
}
KINDS = {**SITE_KINDS, **OTHER_KINDS}
STATUSES = {"in_service": ("在用", "in service"), "retired": ("停用", "retired")}

COLUMNS = ("id", "kind", "name", "building", "unit", "location", "model", "serial", "installed", "warranty_until",
           "status", "notes")
TITLES = {   # the headers the export writes (zh, en); the import accepts these and a few more
    "id": ("设备编号", "id"), "kind": ("类别", "kind"), "name": ("名称", "name"), "building": ("楼栋", "building"),
    "unit": ("单元", "unit"), "location": ("位置", "location"), "model": ("型号", "model"),
    "serial": ("序列号", "serial"), "installed": ("安装日期", "installed"),
    "warranty_until": ("保修至", "warranty_until"), "status": ("状态", "status"), "notes": ("备注", "notes"),
}
ALIASES = {
    "id": ("编号", "设备号", "device", "device_id"), "kind": ("设备类别", "类型", "type"),
    "name": ("设备名称",), "building": ("楼号", "楼"), "unit": ("单元号",), "location": ("安装位置", "地点"),
    "model": ("规格型号", "规格"), "serial": ("出厂编号", "序号", "serial_no"), "installed": ("安装时间", "install_date"),
    "warranty_until": ("保修期至", "保修到期", "warranty"), "status": ("使用状态",), "notes": ("说明",),
}
MAX_PROBLEMS = 50
MAX_TEXT = 500
ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _header(text: str) -> str:
    return text.strip().lstrip("\ufeff").casefold().replace(" ", "").replace("（", "(").replace("）", ")")


_CANONICAL = {_header(h): col for col in COLUMNS for h in (*TITLES[col], *ALIASES.get(col, ()))}
_KIND_WORDS = {_header(w): k for k, (zh, en) in KINDS.items() for w in (k, zh, en)}
_STATUS_WORDS = {_header(w): k for k, (zh, en) in STATUSES.items() for w in (k, zh, en)} | \
    {_header(w): "retired" for w in ("报废", "拆除", "scrapped")} | {_header(w): "in_service" for w in ("正常", "使用")}


class RegisterError(HouseholdsError):
    """`problems`: one line each (file, row, column); nothing was imported."""


@dataclass(frozen=True)
class Device:
    """A device the site file declares (its register kind, where it is, what it is)."""
    id: str
    kind: str
    name: str
    building: str = ""
    unit: str = ""
    location: str = ""
    model: str = ""


def site_devices(cfg: SiteConfig) -> list[Device]:
    """Every device the gateway knows, in the site file's order. A lighting circuit often has
    its meter's id: a device is its (id, kind)."""
    out: list[Device] = []
    for b in cfg.buses:
        if b.type == "modbus_tcp":
            out.append(Device(b.id, "serial_server" if b.framer == "rtu" else "bus", b.id, location=b.host))
        else:
            out.append(Device(b.id, "bus", b.id, location=b.port))
    for m in cfg.meters:
        out.append(Device(m.id, "meter", m.name or m.id, m.building or "", m.unit_no or "", model=m.model))
    for c in cfg.lighting.circuits:
        out.append(Device(c.id, "lighting_circuit", c.name or c.id))
    for o in cfg.outputs:
        out.append(Device(o.id, "lighting_output", o.name or o.id))
    for r in cfg.card_readers:
        out.append(Device(r.id, "card_reader", r.id, location=r.door or ""))
    for d in cfg.doors:
        out.append(Device(d.id, "door", d.name or d.id))
    for cp in cfg.patrol.checkpoints:
        out.append(Device(cp.id, "checkpoint", cp.name or cp.id))
    for r in cfg.patrol.readers:
        out.append(Device(r.id, "patrol_reader", r.id))
    return list({(d.id, d.kind): d for d in out}.values())


def merged(cfg: SiteConfig, stored: list[dict]) -> list[dict]:
    """The register as people see it: the site's devices (with the register's details where it
    has a row of the same id and kind), then the register's own equipment by id."""
    rows = {(r["id"], r["kind"]): r for r in stored}
    out = []
    for d in site_devices(cfg):
        r = rows.pop((d.id, d.kind), None) or {}
        out.append({"id": d.id, "kind": d.kind, "name": r.get("name") or d.name,
                    "building": r.get("building") or d.building, "unit": r.get("unit") or d.unit,
                    "location": r.get("location") or d.location, "model": r.get("model") or d.model,
                    "serial": r.get("serial", ""), "installed": r.get("installed") or "",
                    "warranty_until": r.get("warranty_until") or "", "status": r.get("status") or "in_service",
                    "notes": r.get("notes", ""), "site": True})
    for r in sorted(rows.values(), key=lambda r: (r["id"], r["kind"])):
        out.append({**{c: r.get(c) or "" for c in COLUMNS}, "status": r.get("status") or "in_service", "site": False})
    return out


# ---- reading a spreadsheet ----------------------------------------------------------------------

def _col_letter(k: int) -> str:
    s = ""
    k += 1
    while k:
        k, r = divmod(k - 1, 26)
        s = chr(65 + r) + s
    return s


def _date(value) -> tuple[str | None, str | None]:
    """(ISO date, None) or (None, problem); an empty cell is (None, None)."""
    if value is None:
        return None, None
    if isinstance(value, datetime):
        return value.date().isoformat(), None
    if isinstance(value, date):
        return value.isoformat(), None
    text = str(value).strip()
    if not text:
        return None, None
    m = re.fullmatch(r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?(?:\s+00:00(?::00)?)?", text)
    if m:
        try:
            return date(int(m[1]), int(m[2]), int(m[3])).isoformat(), None
        except ValueError:
            return None, f"{text!r} is not a date of the calendar"
    return None, f"{text!r} is not a date (write 2024-05-01)"


def _cell_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))               # a serial number Excel stored as a number
    if isinstance(value, (datetime, date)):
        return value.isoformat()[:10]
    return str(value).strip()


def read_rows(data: bytes, name: str) -> tuple[list, list[list]]:
    """(header, rows) of an XLSX (first sheet) or CSV (UTF-8 or GBK) file's bytes."""
    if data.startswith(b"PK\x03\x04"):
        import openpyxl
        try:
            wb = openpyxl.load_workbook(io.BytesIO(data), read_only=True, data_only=True)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign workbook: one line
            raise RegisterError([f"{name}: not a workbook Excel can open ({type(e).__name__})"]) from None
        try:
            ws = wb.worksheets[0]
            rows = [list(r) for r in ws.iter_rows(values_only=True)]
        finally:
            wb.close()
        if not rows:
            raise RegisterError([f"{name}: the first sheet is empty"])
        return [_cell_text(h) for h in rows[0]], rows[1:]
    text = decode_text(data, Path(name))
    reader = list(csv.reader(io.StringIO(text, newline="")))
    if not reader:
        raise RegisterError([f"{name}: is empty (expected a header row: {', '.join(t[0] for t in TITLES.values())})"])
    return reader[0], reader[1:]


def parse_register(data: bytes, name: str, cfg: SiteConfig) -> list[dict]:
    """The register rows of a spreadsheet, checked; RegisterError with every problem otherwise."""
    header, rows = read_rows(data, name)
    where: dict[str, int] = {}
    problems = []
    for k, h in enumerate(header):
        col = _CANONICAL.get(_header(str(h or "")))
        if col is None:
            continue
        if col in where:
            problems.append(f"{name}: row 1, column {_col_letter(k)}: {h!r} is {col} again (column "
                            f"{_col_letter(where[col])})")
        else:
            where[col] = k
    missing = [c for c in ("id", "name") if c not in where]
    if missing:
        problems.append(f"{name}: row 1: no column for {', '.join(missing)} (accepted headers: "
                        + "; ".join(f"{' / '.join(TITLES[c])}" for c in missing) + ")")
    if problems:
        raise RegisterError(problems)
    devices: dict[str, dict[str, Device]] = {}
    for d in site_devices(cfg):
        devices.setdefault(d.id, {})[d.kind] = d
    out: list[dict] = []
    lines: list[str] = []
    more = 0
    seen: dict[tuple, int] = {}

    def bad(row: int, col: str, text: str) -> None:
        nonlocal more
        if len(lines) < MAX_PROBLEMS:
            k = where[col]
            lines.append(f"{name}: row {row}, column {_col_letter(k)} ({str(header[k]).strip()}): {text}")
        else:
            more += 1

    for n, raw in enumerate(rows, start=2):
        cells = list(raw) + [None] * (len(header) - len(raw))
        if not any(_cell_text(c) for c in cells):
            continue
        v = {c: cells[k] for c, k in where.items()}
        t = {c: _cell_text(x) for c, x in v.items()}
        ok = True
        rid = t["id"]
        if not rid:
            bad(n, "id", "is empty: every piece of equipment needs its id")
            ok = False
        elif not ID.match(rid):
            bad(n, "id", f"{rid[:40]!r} is not an id (letters, digits, '_', '.', '-'; at most 64)")
            ok = False
        known = devices.get(rid, {})
        kind = None
        if "kind" in where and t["kind"]:
            kind = _KIND_WORDS.get(_header(t["kind"]))
            if kind is None:
                bad(n, "kind", f"{t['kind'][:40]!r} is not a kind (one of: "
                               f"{', '.join(f'{k} / {zh}' for k, (zh, _) in KINDS.items())})")
                ok = False
            elif known and kind not in known:
                bad(n, "kind", f"{rid} is a {' and a '.join(known)} in the site file, not a {kind}")
                ok = False
            elif not known and kind in SITE_KINDS:
                bad(n, "kind", f"a {kind} is declared in the site file, and it has no {kind} {rid!r}: add it there "
                               f"(or give the equipment another kind)")
                ok = False
        elif len(known) == 1:
            kind = next(iter(known))
        elif known:
            bad(n, "kind" if "kind" in where else "id",
                f"{rid} is a {' and a '.join(known)} in the site file: say which")
            ok = False
        elif rid:
            bad(n, "kind" if "kind" in where else "id",
                f"no kind for {rid!r}, which is not a device of the site file (one of: "
                f"{', '.join(OTHER_KINDS)})")
            ok = False
        site = known.get(kind) if kind else None
        if ok and rid:
            if (rid, kind) in seen:
                bad(n, "id", f"{rid!r} is already on row {seen[(rid, kind)]}")
                ok = False
            else:
                seen[(rid, kind)] = n
        if not t["name"] and not known:
            bad(n, "name", "is empty: give the equipment a name")
            ok = False
        for col in COLUMNS:
            if col in where and len(t[col]) > MAX_TEXT:
                bad(n, col, f"is {len(t[col])} characters long (at most {MAX_TEXT})")
                ok = False
        dates = {}
        for col in ("installed", "warranty_until"):
            if col in where:
                dates[col], problem = _date(v[col])
                if problem:
                    bad(n, col, problem)
                    ok = False
        if dates.get("installed") and dates.get("warranty_until") and dates["warranty_until"] < dates["installed"]:
            bad(n, "warranty_until", f"{dates['warranty_until']} is before the install date {dates['installed']}")
            ok = False
        status = "in_service"
        if "status" in where and t["status"]:
            status = _STATUS_WORDS.get(_header(t["status"]))
            if status is None:
                bad(n, "status", f"{t['status'][:40]!r} is not a status (在用 / in_service, 停用 / retired)")
                ok = False
        if ok:
            out.append({"id": rid, "kind": kind, "name": t["name"] or (site.name if site else ""),
                        **{c: t.get(c, "") for c in ("building", "unit", "location", "model", "serial", "notes")},
                        "installed": dates.get("installed"), "warranty_until": dates.get("warranty_until"),
                        "status": status})
    if lines:
        raise RegisterError(lines + ([f"{name}: ... and {more} more problem(s)"] if more else []),
                            len(lines) + more)
    if not out:
        raise RegisterError([f"{name}: no equipment (only the header row)"])
    return out


# ---- writing one --------------------------------------------------------------------------------

def _values(r: dict, lang: str) -> list[str]:
    i = 0 if lang == "zh" else 1
    kind = KINDS.get(r["kind"], (r["kind"], r["kind"]))[i]
    status = STATUSES.get(r["status"], (r["status"], r["status"]))[i]
    return [r["id"], kind, r["name"], r["building"], r["unit"], r["location"], r["model"], r["serial"],
            r["installed"] or "", r["warranty_until"] or "", status, r["notes"]]


def export_csv(rows: list[dict], encoding: str = "utf-8", lang: str = "zh") -> bytes:
    """CSV as Excel reads it: UTF-8 with a BOM, or GBK (gb18030 for what GBK lacks)."""
    buf = io.StringIO(newline="")
    w = csv.writer(buf, lineterminator="\r\n")
    w.writerow([TITLES[c][0 if lang == "zh" else 1] for c in COLUMNS])
    for r in rows:
        w.writerow(_values(r, lang))
    text = buf.getvalue()
    return text.encode("gb18030") if encoding.lower() in ("gbk", "gb18030") else ("\ufeff" + text).encode("utf-8")


def export_xlsx(rows: list[dict], lang: str = "zh") -> bytes:
    import openpyxl
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "设备台账" if lang == "zh" else "equipment"
    ws.append([TITLES[c][0 if lang == "zh" else 1] for c in COLUMNS])
    for r in rows:
        ws.append(_values(r, lang))
    ws.freeze_panes = "A2"
    for k, width in enumerate((18, 14, 24, 8, 6, 20, 16, 16, 12, 12, 8, 30)):
        ws.column_dimensions[_col_letter(k)].width = width
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


# ---- the register in the ledger ---------------------------------------------------------------

def ensure_schema(cfg: SiteConfig) -> None:
    """Open the ledger once through the write path, which creates or upgrades its tables."""
    from ..ledger.writer import Ledger
    Ledger(cfg.storage_path).close()


def load_register(cfg: SiteConfig) -> list[dict]:
    """The merged register (site devices and stored equipment) read from the ledger."""
    from ..ledger.maintenance import equipment_rows, has_tables
    from ..ledger.queries import read_only
    with read_only(cfg.storage_path) as db:
        stored = equipment_rows(db) if db is not None and has_tables(db) else []
    return merged(cfg, stored)


def import_register(cfg: SiteConfig, data: bytes, name: str, by: str, at_us: int) -> tuple[int, int]:
    """Check a whole spreadsheet, then write all of it in one transaction: (added, changed)."""
    from ..ledger.maintenance import save_equipment
    rows = parse_register(data, name, cfg)
    ensure_schema(cfg)
    return save_equipment(cfg.storage_path, rows, at_us, by)


def export_register(cfg: SiteConfig, kind: str, encoding: str = "utf-8", lang: str = "zh") -> bytes:
    rows = load_register(cfg)
    return export_xlsx(rows, lang) if kind == "xlsx" else export_csv(rows, encoding, lang)
