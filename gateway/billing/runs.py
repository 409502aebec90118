"""A month's allocation runs: who made each, its sign-off, and which run is the month's answer.

Every `gateway allocate` of a month is a run kept in the ledger with its id, who ran it and
when, and the utility bill it answers (invoice number, the bill's own period). A run is
prepared (编制) when it is made, then reviewed (审核) and then approved (批准), each by a named
person at a recorded time. Review comes before approval: a run cannot be approved before it has
been reviewed (one person may do both; that the approver is someone other than the preparer is
not enforced). Approving a run supersedes every older run of its month (marked with the run
that superseded it): a superseded run can be neither reviewed nor approved any more, and a run
older than the month's approved run is always superseded.

The month's answer is its newest approved run, else its newest run (a draft, said so wherever
it is shown). InfluxDB holds the answer's points only: when the answer changes (a first run, a
newer draft while none is approved, an approval), the month's points of other runs still waiting
in the outbox are taken out, the answer's are queued, and series the previous answer had but
the new one has not get zeros at the same times (points.zero_row), since InfluxDB overwrites
only a point of the same series and time. A run made while another is approved waits with its
points until it is approved itself.

The reports of a run (`allocation-<month>-run<id>.*`) are printed again when it is signed off or
superseded, from its result as kept; the month's answer is also `allocation-<month>.*` in its
report directory.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

from ..clock import from_us, to_us
from ..config import SiteConfig
from ..ledger import Ledger
from .model import RunInfo, SignOff
from .points import outbox_row, series_key, state_row, zero_row

ROLES = ("reviewed", "approved")
STATES = ("prepared", "reviewed", "approved", "superseded")


class RunError(ValueError):
    """A sign-off that cannot be made; the text is one line for a person, `code` says which
    refusal it is (the console words it in its own language)."""

    def __init__(self, text: str, code: str = "refused"):
        super().__init__(text)
        self.code = code


@dataclass
class Run:
    id: int
    month: str
    created: datetime                      # UTC
    by: str
    invoice: str | None
    bill_period: tuple[date, date] | None
    bill: Decimal | None
    metered_cost: Decimal
    recovered: Decimal
    households: int
    quality: int
    out_dir: Path
    summary: dict
    signoffs: dict[str, tuple[str, datetime]] = field(default_factory=dict)   # role -> (by, when, UTC)
    superseded_by: int | None = None
    published: bool = False                # its points are the month's in InfluxDB

    @property
    def state(self) -> str:
        if self.superseded_by is not None:
            return "superseded"
        return "approved" if "approved" in self.signoffs else "reviewed" if "reviewed" in self.signoffs else "prepared"

    @property
    def approved(self) -> bool:
        return "approved" in self.signoffs

    @property
    def lang(self) -> str:
        return self.summary.get("lang", "zh") if self.summary.get("lang") in ("zh", "en") else "zh"

    def info(self, tz: ZoneInfo, answer: bool = False) -> RunInfo:
        def signed(role: str) -> SignOff | None:
            s = self.signoffs.get(role)
            return SignOff(s[0], s[1].astimezone(tz)) if s else None
        return RunInfo(self.id, self.state, SignOff(self.by, self.created.astimezone(tz)) if self.by else None,
                       signed("reviewed"), signed("approved"), self.invoice, self.bill_period, self.superseded_by,
                       answer)


def _dec(text: str | None) -> Decimal | None:
    return Decimal(text) if text is not None else None


def from_rows(rows: list[dict]) -> list[Run]:
    """Runs from the ledger's rows (ledger.allocation_runs)."""
    out = []
    for r in rows:
        try:
            summary = json.loads(r["summary"] or "{}")
        except ValueError:
            summary = {}
        period = None
        if r["bill_from"] and r["bill_until"]:
            period = (date.fromisoformat(r["bill_from"]), date.fromisoformat(r["bill_until"]))
        out.append(Run(r["id"], r["month"], from_us(r["created_us"]), r["by"] or "", r["invoice"], period,
                       _dec(r["bill"]), Decimal(r["metered_cost"]), Decimal(r["recovered"]), r["households"],
                       r["quality"], Path(r["out_dir"]), summary if isinstance(summary, dict) else {},
                       {role: (by, from_us(at)) for role, (by, at) in r["signoffs"].items()}, r["superseded_by"],
                       bool(r["published"])))
    return out


def runs(ledger: Ledger, month: str | None = None) -> list[Run]:
    """Runs of one month (or all), oldest first."""
    return from_rows(ledger.allocation_runs(month))


def run(ledger: Ledger, run_id: int) -> Run | None:
    found = from_rows(ledger.allocation_runs(run=run_id))
    return found[0] if found else None


def answer(month_runs: list[Run]) -> Run | None:
    """The month's answer: its newest approved run, else its newest run."""
    approved = [r for r in month_runs if r.approved and r.superseded_by is None]
    pool = approved or [r for r in month_runs if r.superseded_by is None] or month_runs
    return max(pool, key=lambda r: r.id) if pool else None


def check_sign(month_runs: list[Run], run_id: int, role: str, tz: ZoneInfo) -> list[int]:
    """Why `role` cannot be signed for the run (RunError), else the runs it supersedes."""
    if role not in ROLES:
        raise RunError(f"--role {role!r}: give one of {', '.join(ROLES)}", "bad_role")
    this = next((r for r in month_runs if r.id == run_id), None)
    if this is None:
        raise RunError(f"no allocation run {run_id}", "no_run")
    if this.superseded_by is not None:
        raise RunError(f"run {run_id} of {this.month} was superseded by run {this.superseded_by}: it cannot be "
                       f"{role} any more", "superseded")
    if role in this.signoffs:
        by, at = this.signoffs[role]
        raise RunError(f"run {run_id} of {this.month} was already {role} by {by} at "
                       f"{at.astimezone(tz):%Y-%m-%d %H:%M}", "already")
    if role == "approved" and "reviewed" not in this.signoffs:
        raise RunError(f"run {run_id} of {this.month} has not been reviewed: review it first (--role reviewed), "
                       f"then approve it", "not_reviewed")
    if role == "approved":
        return [r.id for r in month_runs if r.id < run_id and r.superseded_by is None]
    return []


def month_start_ms(month: str, tz: ZoneInfo) -> int:
    y, m = (int(x) for x in month.split("-"))
    return to_us(datetime(y, m, 1, tzinfo=tz)) // 1000


@dataclass
class Published:
    run: int                               # the month's answer now
    previous: int | None                   # the answer before (None: none was)
    queued: int = 0                        # its points queued (the state point included)
    removed: int = 0                       # points of other runs taken out of the outbox unsent
    zeros: int = 0                         # zeros queued over the previous answer's series


def settle(cfg: SiteConfig, ledger: Ledger, month: str, state_changed: bool = False,
           queued: tuple[int, int] | None = None) -> Published | None:
    """Make InfluxDB's points of the month the answer's: publish the answer if it is not the
    published run (also after a crash between a sign-off and its publication); with
    `state_changed`, queue the answer's state point again (it was just reviewed or approved).
    `queued`: (run, points) a run queued when it was saved. None when nothing was queued or taken
    out."""
    month_runs = runs(ledger, month)
    ans = answer(month_runs)
    if ans is None:
        return None
    tz = ZoneInfo(cfg.site.timezone)
    start_ms = month_start_ms(month, tz)
    state = state_row(cfg.site.id, month, start_ms, ans.id, ans.state) if cfg.influxdb is not None else None
    published = [r for r in month_runs if r.published]
    if [r.id for r in published] == [ans.id]:
        if state_changed and state is not None:
            ledger.publish_allocation(month, ans.id, [state], replace=False)
            return Published(ans.id, ans.id, queued=1)
        return None
    previous = max(published, key=lambda r: r.id) if published else None
    rows: list | tuple = ()
    zeros: list | tuple = ()
    own = queued is not None and queued[0] == ans.id
    if cfg.influxdb is not None:
        def answer_rows():
            if own:                     # its points went into the outbox when it was saved
                if state is not None:
                    yield state
                return
            for line in ledger.allocation_point_lines(ans.id):
                yield outbox_row(line)
            if state is not None:
                yield state
        rows = answer_rows()
        if previous is not None and ledger.has_allocation_points(previous.id):
            keep = {series_key(line) for line in ledger.allocation_point_lines(ans.id)}
            zeros = [z for line in ledger.allocation_point_lines(previous.id)
                     if series_key(line) not in keep and (z := zero_row(line)) is not None]
    done = ledger.publish_allocation(month, ans.id, rows, zeros, keep_own=own)
    return Published(ans.id, previous.id if previous else None, done["queued"] + (queued[1] if own else 0),
                     done["removed"], done["zeros"])


def parse_bill_period(text: str | None) -> tuple[date, date] | None:
    """`2026-10-03..2026-11-02` (local dates, both included)."""
    if text is None:
        return None
    first, sep, last = text.strip().partition("..")
    try:
        if not sep:
            raise ValueError
        period = (date.fromisoformat(first.strip()), date.fromisoformat(last.strip()))
    except ValueError:
        raise RunError(f"--bill-period {text!r}: give the bill's first and last day as 2026-10-03..2026-11-02") \
            from None
    if period[1] < period[0]:
        raise RunError(f"--bill-period {text!r}: the last day is before the first")
    if (period[1] - period[0]).days > 92:
        raise RunError(f"--bill-period {text!r}: longer than three months; a utility bill covers about one")
    return period


def check_bill_period(period: tuple[date, date] | None, month: str) -> None:
    """A bill's period need not be the calendar month, but it must overlap it (else it is another
    month's bill, or a typing error)."""
    if period is None:
        return
    y, m = (int(x) for x in month.split("-"))
    first = date(y, m, 1)
    last = (date(y + (m == 12), m % 12 + 1, 1)) - timedelta(days=1)
    if period[1] < first or period[0] > last:
        raise RunError(f"--bill-period {period[0]}..{period[1]} does not overlap {month}: is it this month's bill?")


# ---- printing a run again ---------------------------------------------------------------------------

def comparison_for(cfg: SiteConfig, ledger: Ledger, result):
    """`result` against the answer of the month before it, as kept in the ledger now."""
    from .compare import compare, previous_month
    last_month = previous_month(result.month)
    last = answer(runs(ledger, last_month))
    if last is None:
        return compare(result, cfg.allocation.change_band, last_month, None, False, None, [])
    return compare(result, cfg.allocation.change_band, last_month, last.id, last.approved,
                   json.dumps(last.summary), ledger.allocation_charges(last.id))


def reprint(cfg: SiteConfig, ledger: Ledger, run_id: int, month_files: bool | None = None) -> dict[str, Path]:
    """Write the run's reports again (its sign-off or state changed), and the month's files
    (`allocation-<month>.*`) if it is the answer or `month_files` says so. Empty when its result
    is not kept (a run of an older version)."""
    from .report import write_all
    from .stored import loads
    text = ledger.allocation_result(run_id)
    this = run(ledger, run_id)
    if text is None or this is None:
        return {}
    result = loads(text)
    ans = answer(runs(ledger, this.month))
    is_answer = ans is not None and ans.id == run_id
    info = this.info(ZoneInfo(cfg.site.timezone), is_answer)
    from ..lighting.savings import for_report
    from ..maintenance.inspections import for_report as inspection_for
    return write_all(result, this.out_dir, this.lang, run=info, comparison=comparison_for(cfg, ledger, result),
                     month_files=month_files, lighting=for_report(cfg, this.month),
                     inspection=inspection_for(cfg, this.month))


@dataclass
class Signed:
    run: Run
    superseded: list[int]
    published: Published | None
    files: dict[str, Path]
    reprint_errors: list[str]


def sign(cfg: SiteConfig, ledger: Ledger, run_id: int, role: str, by: str, now: datetime | None = None,
         month: str | None = None, reprint_reports: bool = True) -> Signed:
    """Review or approve a run: recorded in the ledger with who and when; an approval supersedes
    the month's older runs and makes the run the month's answer (its points replace the others'
    in InfluxDB). The reports of the runs concerned are printed again (unless not
    `reprint_reports`: the console does it after answering); a report that cannot be written (its
    directory gone or not writable) is said, the sign-off stands."""
    by = by.strip()
    if not by:
        raise RunError("--by: say who signs (a name)", "no_name")
    this = run(ledger, run_id)
    if this is None:
        raise RunError(f"no allocation run {run_id}", "no_run")
    if month is not None and this.month != month:
        raise RunError(f"run {run_id} is of {this.month}, not {month}", "wrong_month")
    tz = ZoneInfo(cfg.site.timezone)
    month_runs = runs(ledger, this.month)
    supersede = check_sign(month_runs, run_id, role, tz)
    now = now or datetime.now(timezone.utc)
    ledger.sign_allocation(run_id, role, by, to_us(now), supersede)
    published = settle(cfg, ledger, this.month, state_changed=True)
    ledger.drop_superseded_points(this.month)
    files, errors = reprint_signed(cfg, ledger, run_id, supersede) if reprint_reports else ({}, [])
    return Signed(run(ledger, run_id), supersede, published, files, errors)


def reprint_signed(cfg: SiteConfig, ledger: Ledger, run_id: int, superseded: list[int]) \
        -> tuple[dict[str, Path], list[str]]:
    """Print the signed run's reports again, and those of the runs its approval superseded:
    (the signed run's files, one line per report that could not be written)."""
    this = run(ledger, run_id)
    ans = answer(runs(ledger, this.month)) if this else None
    files: dict[str, Path] = {}
    errors: list[str] = []
    for rid in [run_id, *superseded]:
        # a superseded run's month files in a directory of its own would still look like the answer
        old = run(ledger, rid)
        stale = (rid != run_id and ans is not None and old is not None and old.out_dir != ans.out_dir
                 and (old.out_dir / f"allocation-{old.month}.csv").exists())
        try:
            got = reprint(cfg, ledger, rid, month_files=True if stale else None)
        except OSError as e:
            errors.append(f"the reports of run {rid} could not be written again: {e}")
            continue
        if rid == run_id:
            files = got
    return files, errors
