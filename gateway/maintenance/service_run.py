"""`gateway report service`: build a month's service and safety report from the ledger, write its
HTML and XLSX, and queue its InfluxDB points in the outbox (as `gateway allocate` queues the
allocation's) when the site has InfluxDB."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

from ..clock import to_us
from ..config import SiteConfig
from ..ledger.queries import read_only
from ..ledger.service import queue_points
from .service_points import outbox_rows
from .service_render import write_all
from .service_report import ServiceMonth, TrendPoint, build, month_bounds


class ServiceReportError(Exception):
    """A month that cannot be reported (not begun, no ledger): one line for people."""


@dataclass
class ServiceRun:
    report: ServiceMonth
    files: dict[str, Path]
    points: int                 # queued for InfluxDB (0 without InfluxDB, or when not sent)
    complete: bool              # the month is over at the report's time


def run_service(cfg: SiteConfig, month: str, out_dir: Path, lang: str = "zh", trend: int = 5,
                now: datetime | None = None, send: bool = True,
                known: dict[str, TrendPoint] | None = None) -> ServiceRun:
    now = now or datetime.now(timezone.utc)
    try:
        start, end = month_bounds(month, ZoneInfo(cfg.site.timezone))
    except ValueError as e:
        raise ServiceReportError(f"--month: {e}") from None
    if start > to_us(now):
        raise ServiceReportError(f"--month {month}: the month has not begun")
    if not cfg.storage_path.exists():
        raise ServiceReportError(f"no ledger at {cfg.storage_path}: nothing has been recorded for this site yet")
    with read_only(cfg.storage_path) as db:
        report = build(cfg, db, month, now, trend=trend, known=known)
    files = write_all(report, out_dir, lang)
    queued = queue_points(cfg.storage_path, outbox_rows(report)) if send and cfg.influxdb is not None else 0
    return ServiceRun(report, files, queued, end <= to_us(now))
