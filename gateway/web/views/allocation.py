"""Allocation: the monthly runs kept in the ledger (`gateway allocate`), their summary, and the
report files each run wrote into its own out_dir.

A file is only ever served from the run's out_dir, by a name built here from a checked month
("allocation-2026-10.csv"), and only if its real path (symlinks followed) is still inside that
directory: nothing a URL says can point anywhere else.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

from ...clock import from_us

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
KINDS = {"csv": "text/csv; charset=utf-8",
         "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
         "html": "text/html; charset=utf-8"}
FEN = Decimal("0.01")      # shown to the fen, half up as the reports round; the run keeps the exact figure
COLS = ("id", "month", "created_us", "bill", "metered_cost", "recovered", "households", "quality", "out_dir",
        "summary")


def months(db) -> list[dict]:
    """The latest run of each month, newest month first."""
    if db is None:
        return []
    rows = db.execute(f"SELECT {', '.join(COLS)} FROM allocations WHERE id IN "
                      "(SELECT max(id) FROM allocations GROUP BY month) ORDER BY month DESC").fetchall()
    return [dict(zip(COLS, r)) for r in rows]


def latest_run(db, month: str) -> dict | None:
    if db is None or not MONTH.match(month):
        return None
    row = db.execute(f"SELECT {', '.join(COLS)} FROM allocations WHERE month = ? ORDER BY id DESC LIMIT 1",
                     (month,)).fetchone()
    return dict(zip(COLS, row)) if row else None


def run_file(run: dict, kind: str, roots: list[Path] = ()) -> Path | None:
    """The run's report file of `kind` if it exists inside the run's out_dir (and, when the
    console was given allowed `roots`, that out_dir is inside one of them); else None."""
    if kind not in KINDS or not MONTH.match(run["month"]):
        return None
    try:
        base = Path(run["out_dir"]).resolve(strict=True)
        path = (base / f"allocation-{run['month']}.{kind}").resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    if roots and not any(base.is_relative_to(Path(r).resolve()) for r in roots):
        return None
    return path


def _dec(text: str | None) -> Decimal | None:
    try:
        return Decimal(text) if text is not None else None
    except InvalidOperation:
        return None


def _group(g: dict) -> dict:
    """A group of the run's summary; its metered cost is exact (many decimals): shown to the fen."""
    cost = _dec(g.get("metered_cost"))
    return {**g, "metered_cost_exact": g.get("metered_cost"),
            "metered_cost": str(cost.quantize(FEN, ROUND_HALF_UP)) if cost is not None else None}


def allocation_view(db, tz: ZoneInfo, month: str = "", roots: list[Path] = ()) -> dict:
    """Months available and the selected one's summary (default: the newest month)."""
    runs = months(db)
    chosen = next((r for r in runs if r["month"] == month), runs[0] if runs and not month else None)
    out = {"months": [r["month"] for r in runs], "month": chosen["month"] if chosen else month, "run": None}
    if chosen is None:
        return out
    bill, metered = _dec(chosen["bill"]), _dec(chosen["metered_cost"])
    try:
        summary = json.loads(chosen["summary"])
    except ValueError:
        summary = {}
    files = {k: run_file(chosen, k, roots) is not None for k in KINDS}
    out["run"] = {
        "id": chosen["id"], "month": chosen["month"],
        "created": from_us(chosen["created_us"]).astimezone(tz).strftime("%Y-%m-%d %H:%M"),
        "bill": chosen["bill"],
        "metered_cost": str(metered.quantize(FEN, ROUND_HALF_UP)) if metered is not None else None,
        "metered_cost_exact": chosen["metered_cost"],
        "difference": str((bill - metered).quantize(FEN, ROUND_HALF_UP)) if bill is not None and metered is not None
        else None,
        "recovered": chosen["recovered"], "households": chosen["households"], "quality": chosen["quality"],
        "difference_rule": summary.get("difference_rule", ""),
        "groups": [_group(g) for g in summary.get("groups", []) if isinstance(g, dict)],
        "files": files, "out_dir": chosen["out_dir"],
    }
    return out
