"""Allocation: the monthly runs kept in the ledger (`gateway allocate`), their state and
summary, and the report files each run wrote into its own out_dir.

Only an approved run is "the" month (`run`); until one is, the month's newest run is shown as a
draft (`draft`), and a run made after the approved one is a draft waiting for approval. Every
run of the month, superseded ones too, is in `history` (gateway/billing/runs.py).

A file is only ever served from the run's out_dir, by a name built here from a checked month
and run id ("allocation-2026-10.csv": the month's answer; "allocation-2026-10-run3.csv": run 3),
and only if its real path (symlinks followed) is still inside that directory: nothing a URL
says can point anywhere else.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path
from zoneinfo import ZoneInfo

from ...billing.runs import Run, answer, from_rows
from ...ledger import allocation_runs

MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
KINDS = {"csv": "text/csv; charset=utf-8",
         "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
         "html": "text/html; charset=utf-8"}
FEN = Decimal("0.01")      # shown to the fen, half up as the reports round; the run keeps the exact figure


def _runs(db, month: str | None = None, run: int | None = None) -> list[Run]:
    return from_rows(allocation_runs(db, month, run)) if db is not None else []


def months(db) -> list[str]:
    """Months with a run, newest first."""
    return sorted({r.month for r in _runs(db)}, reverse=True)


def latest_run(db, month: str) -> dict | None:
    """The month's answer (its approved run, else its newest) as a dict for run_file, or None."""
    if db is None or not MONTH.match(month):
        return None
    ans = answer(_runs(db, month))
    return {"id": ans.id, "month": ans.month, "out_dir": str(ans.out_dir)} if ans else None


def run_by_id(db, run_id: int) -> dict | None:
    found = _runs(db, run=run_id)
    return {"id": found[0].id, "month": found[0].month, "out_dir": str(found[0].out_dir)} if found else None


def run_file(run: dict, kind: str, roots: list[Path] = (), own: bool = False) -> Path | None:
    """The run's report file of `kind` (its own with `own`, else the month's answer file) if it
    exists inside the run's out_dir (and, when the console was given allowed `roots`, that out_dir
    is inside one of them); else None."""
    if kind not in KINDS or not MONTH.match(run["month"]):
        return None
    stem = f"allocation-{run['month']}" + (f"-run{int(run['id'])}" if own else "")
    try:
        base = Path(run["out_dir"]).resolve(strict=True)
        path = (base / f"{stem}.{kind}").resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    if roots and not any(base.is_relative_to(Path(r).resolve()) for r in roots):
        return None
    return path


def _fen(d: Decimal | None) -> str | None:
    return str(d.quantize(FEN, ROUND_HALF_UP)) if d is not None else None


def _group(g: dict) -> dict:
    """A group of the run's summary; its metered cost is exact (many decimals): shown to the fen."""
    try:
        cost = Decimal(g["metered_cost"]) if g.get("metered_cost") is not None else None
    except InvalidOperation:
        cost = None
    return {**g, "metered_cost_exact": g.get("metered_cost"), "metered_cost": _fen(cost)}


def run_view(r: Run, tz: ZoneInfo, roots: list[Path] = (), answer_id: int | None = None) -> dict:
    def when(d) -> str:
        return d.astimezone(tz).strftime("%Y-%m-%d %H:%M")
    files = {k: run_file({"id": r.id, "month": r.month, "out_dir": str(r.out_dir)}, k, roots, own=True) is not None
             for k in KINDS}
    return {
        "id": r.id, "month": r.month, "state": r.state, "answer": r.id == answer_id,
        "created": when(r.created), "by": r.by, "invoice": r.invoice,
        "bill_period": [d.isoformat() for d in r.bill_period] if r.bill_period else None,
        "signoffs": {role: {"by": by, "at": when(at)} for role, (by, at) in r.signoffs.items()},
        "superseded_by": r.superseded_by,
        "bill": str(r.bill) if r.bill is not None else None,
        "metered_cost": _fen(r.metered_cost), "metered_cost_exact": str(r.metered_cost),
        "difference": _fen(r.bill - r.metered_cost) if r.bill is not None else None,
        "recovered": str(r.recovered), "households": r.households, "quality": r.quality,
        "difference_rule": r.summary.get("difference_rule", ""),
        "placeholder_tariffs": [x for x in r.summary.get("placeholder_tariffs", []) if isinstance(x, str)],
        "groups": [_group(g) for g in r.summary.get("groups", []) if isinstance(g, dict)],
        "files": files, "out_dir": str(r.out_dir),
    }


def allocation_view(db, tz: ZoneInfo, month: str = "", roots: list[Path] = ()) -> dict:
    """Months available and the selected one (default: the newest month): its approved run
    (`run`, None until one is), the draft waiting for approval (`draft`: the newest run when it is
    not the approved one) and every run of the month, newest first (`history`)."""
    all_months = months(db)
    chosen = month if month in all_months else (all_months[0] if all_months and not month else month)
    out = {"months": all_months, "month": chosen, "run": None, "draft": None, "history": [], "answer": None,
           "month_files": {k: False for k in KINDS}}
    month_runs = _runs(db, chosen) if chosen else []
    if not month_runs:
        return out
    ans = answer(month_runs)
    live = [r for r in month_runs if r.superseded_by is None]
    newest = max(live or month_runs, key=lambda r: r.id)
    approved = ans if ans is not None and ans.approved else None
    out["answer"] = ans.id if ans else None
    if ans is not None:         # the month's own files: the answer's, under the month's name
        where = {"id": ans.id, "month": ans.month, "out_dir": str(ans.out_dir)}
        out["month_files"] = {k: run_file(where, k, roots) is not None for k in KINDS}
    out["run"] = run_view(approved, tz, roots, out["answer"]) if approved else None
    if approved is None or newest.id != approved.id:
        out["draft"] = run_view(newest, tz, roots, out["answer"])
    out["history"] = [run_view(r, tz, roots, out["answer"]) for r in sorted(month_runs, key=lambda r: -r.id)]
    return out
