"""The households file (`allocation.households_file`): who shares the public electricity.

One row a household: id, building, unit, room, floor area (m²), occupied. The headers may be the
English ones or the Chinese ones the program writes in its own reports (户号, 楼号, 单元, 房号,
建筑面积(m²), 入住), so a report's CSV or a clerk's sheet reads back as it is; other columns are
left alone. The file may be UTF-8 (with or without the BOM Excel writes) or GBK, what Excel
writes for "CSV (逗号分隔)" on a Chinese Windows.

A typo here moves money silently (a household of building `B1` instead of `B01` pays no
stairwell share and its neighbours pay more), so every row is checked against the site before
anything is allocated, and every problem is one line with its row and column.
"""

from __future__ import annotations

import csv
import difflib
import io
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

from ..config import SiteConfig
from .model import Household

COLUMNS = ("id", "building", "unit", "room", "floor_area_m2", "occupied")

# Accepted headers per column, compared after _header() (case, spaces, full-width brackets, m²).
# The column's own name and the Chinese header of the reports come first (messages name them).
HEADERS: dict[str, tuple[str, ...]] = {
    "id": ("id", "户号", "household", "household_id", "住户编号", "编号"),
    "building": ("building", "楼号", "楼栋", "楼栋号", "楼"),
    "unit": ("unit", "单元", "单元号"),
    "room": ("room", "房号", "房间号", "门牌号", "室号"),
    "floor_area_m2": ("floor_area_m2", "建筑面积(m²)", "area_m2", "floor_area", "area", "建筑面积", "面积(m²)",
                      "面积", "建筑面积(平方米)", "面积(平方米)"),
    "occupied": ("occupied", "入住", "是否入住", "入住状态", "已入住"),
}
YES = ("1", "yes", "y", "true", "是", "已入住", "入住")
NO = ("0", "no", "n", "false", "否", "空置", "未入住")
MAX_PROBLEMS = 50          # then "... and N more": a wrong file should not scroll for pages
ENCODINGS = "UTF-8 (with or without BOM) or GBK"


class HouseholdsError(ValueError):
    """`problems`: one line each, perhaps cut short by a last "... and N more" line; `count`:
    how many problems there are in all."""

    def __init__(self, problems: list[str], count: int | None = None):
        super().__init__("\n".join(problems))
        self.problems = problems
        self.count = len(problems) if count is None else count


def _header(text: str) -> str:
    t = text.strip().lstrip("\ufeff").casefold().replace(" ", "").replace("（", "(").replace("）", ")")
    return t.replace("㎡", "m²").replace("m2", "m²")


_CANONICAL = {_header(h): col for col, hs in HEADERS.items() for h in hs}


@dataclass(frozen=True)
class Layout:
    """The buildings and units the site knows. `stated`: from allocation.buildings (units listed
    there are the only ones); `named`: the units meters and groups name in each building."""

    stated: dict[str, frozenset[str]]
    named: dict[str, frozenset[str]]

    @property
    def buildings(self) -> set[str]:
        return set(self.stated) | set(self.named)


def site_layout(cfg: SiteConfig) -> Layout:
    named: dict[str, set[str]] = {}
    for b, u in [(m.building, m.unit_no) for m in cfg.meters] + [(g.building, g.unit) for g in cfg.allocation.groups]:
        if b is not None:
            named.setdefault(b, set())
            if u is not None:
                named[b].add(u)
    return Layout({b: frozenset(us) for b, us in cfg.allocation.buildings.items()},
                  {b: frozenset(us) for b, us in named.items()})


def decode(data: bytes, path: Path) -> str:
    """The file's text: UTF-8 (a BOM or not), else GBK (as gb18030, its superset)."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise HouseholdsError([f"{path}: is UTF-16 text (Excel's \"Unicode text\"): save it as \"CSV UTF-8\" "
                               f"instead"])
    if data.startswith(b"PK\x03\x04"):
        raise HouseholdsError([f"{path}: is an Excel workbook, not CSV: save it as \"CSV UTF-8\" instead"])
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    # UTF-8 is strict: text in another encoding is hardly ever valid UTF-8 by accident (a short
    # GBK file can be: 楼 is C2 A5, UTF-8 for ¥; its building then does not match the site's)
    try:
        return data.decode("gb18030")
    except UnicodeDecodeError as e:
        raise HouseholdsError([f"{path}: is neither {ENCODINGS} text (byte {e.start}): save it as \"CSV UTF-8\" "
                               f"from Excel"]) from None


def _short(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _loose(name: str) -> str:
    """A building or unit as a person may mistype it: no case, no leading zeros, no 号楼/栋/单元."""
    t = re.sub(r"(号楼|号|栋|幢|单元|unit|building)$", "", name.strip().casefold())
    return re.sub(r"(?<!\d)0+(?=\d)", "", t)


def _suggest(name: str, known: set[str], loose: dict[str, list[str]]) -> str:
    """"; did you mean 'B01'?" or ''."""
    near = loose.get(_loose(name)) or difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f"; did you mean '{min(near)}'?" if near else ""


def _some(names) -> str:
    names = sorted(names)
    return ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")


def _area_problem(text: str) -> str | None:
    try:
        area = Decimal(text)
    except InvalidOperation:
        return f"{_short(text)} is not a floor area in m² (a number such as 86.5)" if text else \
            "is empty: give the floor area in m²"
    if not area.is_finite():
        return f"{_short(text)} is not a floor area in m² (a number such as 86.5)"
    if area < 0:
        return f"{text} is negative: give the floor area in m²"
    if area == 0:
        return ("is 0: a household without floor area pays nothing of the groups shared by area, and its "
                "neighbours pay its part; give its floor area in m²")
    return None


class _Problems:
    def __init__(self, path: Path):
        self.path, self.lines, self.more = path, [], 0

    def add(self, row: int, column: str, text) -> None:
        """`text` may be a function making it: past the limit only the count is kept, so a
        file of wrong rows costs no suggestions."""
        if len(self.lines) < MAX_PROBLEMS:
            self.lines.append(f"{self.path}: row {row}, {column}: {text() if callable(text) else text}")
        else:
            self.more += 1

    def all(self) -> list[str]:
        return self.lines + ([f"{self.path}: ... and {self.more} more problem(s)"] if self.more else [])


def parse_households(text: str, path: Path, layout: Layout | None = None) -> list[Household]:
    """The households of a file's text, in file order; HouseholdsError with every problem (one line
    each: file, row as a spreadsheet numbers it, column as its header says) otherwise. With a
    `layout`, buildings and units must be ones the site knows."""
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise HouseholdsError([f"{path}: is empty (expected a header row: {', '.join(COLUMNS)}, or 户号, 楼号, 单元, "
                               f"房号, 建筑面积(m²), 入住)"])
    where: dict[str, int] = {}
    problems: list[str] = []
    for k, h in enumerate(header):
        col = _CANONICAL.get(_header(h))
        if col is None:
            continue
        if col in where:
            problems.append(f"{path}: row 1: columns {header[where[col]]!r} and {h!r} are both {col}")
        else:
            where[col] = k
    missing = [c for c in COLUMNS if c not in where]
    if missing:
        problems.append(f"{path}: row 1: no column for {', '.join(missing)} (headers found: "
                        f"{', '.join(repr(h) for h in header[:12])}; accepted: "
                        + "; ".join(f"{c}: {' / '.join(HEADERS[c][:3])}" for c in missing) + ")")
    if problems:
        raise HouseholdsError(problems)
    name = {c: header[k].strip().lstrip("\ufeff") for c, k in where.items()}
    buildings = layout.buildings if layout else set()
    loose_b: dict[str, list[str]] = {}
    for b in buildings:
        loose_b.setdefault(_loose(b), []).append(b)
    out: list[Household] = []
    bad = _Problems(path)
    seen: dict[str, int] = {}
    width = max(where.values()) + 1
    for n, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue                                   # Excel's trailing rows of commas
        row = row + [""] * (width - len(row))
        v = {c: row[k].strip() for c, k in where.items()}
        ok = True
        hid = v["id"]
        if not hid:
            bad.add(n, name["id"], "is empty: every household needs its id")
            ok = False
        elif hid in seen:
            bad.add(n, name["id"], f"household {_short(hid)} is already on row {seen[hid]}")
            ok = False
        else:
            seen[hid] = n
        problem = _area_problem(v["floor_area_m2"])
        if problem:
            bad.add(n, name["floor_area_m2"], problem)
            ok = False
        occ = v["occupied"].casefold()
        if occ not in YES and occ not in NO:
            said = "is empty" if not occ else f"{_short(v['occupied'])} is not a yes or no"
            bad.add(n, name["occupied"], f"{said}: write {' / '.join(YES[:4])} for an occupied home, "
                                         f"{' / '.join(NO[:4])} for a vacant one")
            ok = False
        b, u = v["building"], v["unit"]
        if buildings and b not in buildings:
            bad.add(n, name["building"], _BuildingProblem(b, buildings, loose_b))
            ok = False
        elif layout and b in buildings:
            unit_problem = _unit_problem(layout, b, u)
            if unit_problem:
                bad.add(n, name["unit"], unit_problem)
                ok = False
        if ok:
            out.append(Household(hid, b, u, v["room"], Decimal(v["floor_area_m2"]), occ in YES))
    if bad.lines:
        raise HouseholdsError(bad.all(), len(bad.lines) + bad.more)
    if not out:
        raise HouseholdsError([f"{path}: no households (only the header row)"])
    return out


@dataclass(frozen=True)
class _BuildingProblem:
    """An unknown building's line, made only when it is shown (the suggestion searches)."""

    building: str
    known: set[str]
    loose: dict[str, list[str]]

    def __call__(self) -> str:
        b = self.building
        said = f"{_short(b)} is not a building of the site{_suggest(b, self.known, self.loose)}" if b else "is empty"
        return (f"{said} (buildings: {_some(self.known)}; list a building without meters of its own under "
                f"allocation.buildings)")


def _unit_problem(layout: Layout, b: str, u: str) -> str | None:
    """A unit must be one allocation.buildings lists for the building, when it lists any. Without
    such a list a unit no meter names is fine (a unit without a lift), unless it is a known one
    mistyped ('01' for '1'), which would lose that unit's share."""
    stated = layout.stated.get(b)
    if stated:
        if u in stated:
            return None
        loose = {}
        for x in stated:
            loose.setdefault(_loose(x), []).append(x)
        said = "is empty" if not u else f"building {b} has no unit {_short(u)}"
        return f"{said}{_suggest(u, set(stated), loose) if u else ''} (its units in allocation.buildings: " \
               f"{_some(stated)})"
    named = layout.named.get(b, frozenset())
    if not u or u in named:
        return None
    near = [x for x in named if _loose(x) == _loose(u)]
    if near:
        return (f"building {b} has no unit {_short(u)}; did you mean '{min(near)}'? (the units its "
                f"meters name: {_some(named)})")
    return None


def load_households(path: Path, layout: Layout | None = None) -> list[Household]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise HouseholdsError([f"{path}: no such file (allocation.households_file)"]) from None
    except OSError as e:
        raise HouseholdsError([f"{path}: cannot read: {e.strerror or e}"]) from None
    return parse_households(decode(data, path), path, layout)


def site_households(cfg: SiteConfig) -> list[Household]:
    """The site's households, checked against its buildings and units (HouseholdsError)."""
    return load_households(cfg.base_dir / cfg.allocation.households_file, site_layout(cfg))


def uses_households(cfg: SiteConfig) -> bool:
    """Whether the site allocates at all (it has groups or names its households file)."""
    return bool(cfg.allocation.groups) or "households_file" in cfg.allocation.model_fields_set
