"""The households file (`edge_config/households.csv`): who shares the public electricity.

Columns: id, building, unit, room, floor_area_m2, occupied. Building ids are the ones meters
name in the site file (`building: B01`). Problems are collected, one line each with the row.
"""

from __future__ import annotations

import csv
from decimal import Decimal, InvalidOperation
from pathlib import Path

from .model import Household

COLUMNS = ("id", "building", "unit", "room", "floor_area_m2", "occupied")
YES = {"1", "yes", "y", "true", "是", "已入住"}
NO = {"0", "no", "n", "false", "否", "空置", ""}


class HouseholdsError(ValueError):
    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


def load_households(path: Path) -> list[Household]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise HouseholdsError([f"{path}: no such file (allocation.households_file)"]) from None
    except (OSError, UnicodeDecodeError) as e:
        raise HouseholdsError([f"{path}: cannot read: {e}"]) from None
    rows = csv.DictReader(text.splitlines())
    missing = [c for c in COLUMNS if c not in (rows.fieldnames or [])]
    if missing:
        raise HouseholdsError([f"{path}: missing column(s) {', '.join(missing)} (expected {', '.join(COLUMNS)})"])
    out: list[Household] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=2):
        where = f"{path}:{n}"
        hid = (row["id"] or "").strip()
        if not hid:
            problems.append(f"{where}: empty id")
            continue
        if hid in seen:
            problems.append(f"{where}: household '{hid}' is already on line {seen[hid]}")
            continue
        seen[hid] = n
        try:
            area = Decimal((row["floor_area_m2"] or "").strip())
            if not area.is_finite() or area < 0:
                raise InvalidOperation
        except InvalidOperation:
            problems.append(f"{where}: floor_area_m2 {row['floor_area_m2']!r} is not an area in m²")
            continue
        occ = (row["occupied"] or "").strip().lower()
        if occ not in YES | NO:
            problems.append(f"{where}: occupied {row['occupied']!r} is not 1/0 (yes/no)")
            continue
        out.append(Household(hid, row["building"].strip(), row["unit"].strip(), row["room"].strip(), area,
                             occ in YES))
        if len(problems) > 50:
            break
    if problems:
        raise HouseholdsError(problems)
    if not out:
        raise HouseholdsError([f"{path}: no households"])
    return out
