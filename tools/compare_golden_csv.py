"""Checks that a household CSV in a new layout carries exactly the amounts of one in the old
layout before the golden file is replaced (tests/golden/, tools/make_golden_month.py).

    python3 tools/compare_golden_csv.py OLD.csv NEW.csv

Old layout: 户号, 楼号, 单元, 房号, 建筑面积(m²), 入住, 金额(元), 明细 ("B01 楼道照明: 0.87; 路灯及水泵: 2.60").
New layout: 月份, then those but 明细, then one `<fee item>(元)` column per fee item. A group of the
detail text belongs to the fee item whose name it ends with (B01 楼道照明 -> 楼道照明). Every
household, every column it shares and every amount must match to the fen; prints one line per
difference and exits 1 if there is any.
"""

from __future__ import annotations

import csv
import sys
from decimal import Decimal
from pathlib import Path


def rows(path: Path) -> list[list[str]]:
    return list(csv.reader(path.read_text(encoding="utf-8-sig").splitlines()))


def item_of(group_name: str, items: list[str]) -> str:
    found = [i for i in items if group_name == i or group_name.endswith(" " + i)]
    if len(found) != 1:
        raise SystemExit(f"group {group_name!r} matches {len(found)} fee items of {items}")
    return found[0]


def main(old_path: Path, new_path: Path) -> int:
    old, new = rows(old_path), rows(new_path)
    items = [h.removesuffix("(元)") for h in new[0][8:]]
    problems: list[str] = []
    if old[0][:7] != new[0][1:8]:
        problems.append(f"columns differ: {old[0][:7]} / {new[0][1:8]}")
    if len(old) != len(new):
        problems.append(f"{len(old) - 1} households / {len(new) - 1}")
    months = {r[0] for r in new[1:]}
    totals = [Decimal(0), Decimal(0)]
    for o, n in zip(old[1:], new[1:]):
        if o[:7] != n[1:8]:
            problems.append(f"{o[0]}: {o[:7]} / {n[1:8]}")
        want = {i: Decimal(0) for i in items}
        for part in filter(None, (p.strip() for p in o[7].split(";"))):
            name, _, amount = part.rpartition(": ")
            want[item_of(name, items)] += Decimal(amount)
        got = {i: Decimal(v) for i, v in zip(items, n[8:])}
        if got != want:
            problems.append(f"{o[0]}: fee items {want} / {got}")
        if sum(got.values()) != Decimal(n[7]):
            problems.append(f"{o[0]}: fee items add up to {sum(got.values())}, not {n[7]}")
        totals[0] += Decimal(o[6])
        totals[1] += Decimal(n[7])
    for p in problems[:20]:
        print(p)
    print(f"{len(new) - 1} households, month {', '.join(sorted(months))}, fee items {', '.join(items)}: "
          f"total {totals[0]} / {totals[1]}; {len(problems)} differences")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
