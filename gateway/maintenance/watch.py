"""Inside the gateway: the repair targets and the inspection rhythm, watched.

Every `maintenance.check_every_s` it makes the inspection tasks of the current (and previous)
period, and raises an alarm, through the same lifecycle as the rules' (gateway/rules/alerts.py),
for every open order past its response or repair target and every inspection task past its due
time; each alarm clears by itself once the electrician is on site, the order is done or the
inspection recorded. Nothing is judged while the wall clock is untrusted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Callable

from ..clock import Clock, to_us
from ..config import SiteConfig
from ..events import AlertChange
from ..ledger import maintenance as book
from ..ledger.queries import read_only
from ..rules.alerts import AlertBook
from .inspections import plan as plan_of
from .inspections import wanted_tasks
from .orders import OPEN_STATES, targets

log = logging.getLogger(__name__)

RESPONSE, REPAIR, INSPECTION = "maintenance:response", "maintenance:repair", "maintenance:inspection"
RULES = (RESPONSE, REPAIR, INSPECTION)
KINDS = {RESPONSE: "repair_response", REPAIR: "repair_overdue", INSPECTION: "inspection_overdue"}


class MaintenanceWatch:
    def __init__(self, cfg: SiteConfig, publish: Callable, clock: Clock, trusted: Callable[[], bool] = lambda: True,
                 ledger=None):
        self.cfg = cfg
        self.clock = clock
        self.trusted = trusted
        self.ledger = ledger            # the gateway's Ledger: only to take back open alarms at start
        self.book = AlertBook(lambda a, what: publish(AlertChange(a.snapshot(), what)))
        self._error = ""
        self._restored = False

    async def run(self) -> None:
        while True:
            if self.trusted():
                try:
                    await asyncio.to_thread(self._gather_and_judge)
                    self._error = ""
                except Exception as e:  # noqa: BLE001 - a locked or damaged ledger: said once, tried again
                    if str(e) != self._error:
                        self._error = str(e)
                        log.error("maintenance: cannot look at orders and inspections: %s", e)
            await asyncio.sleep(self.cfg.maintenance.check_every_s)

    def _restore(self, now: datetime) -> None:
        from ..rules.restore import alert_from_row
        self._restored = True
        if self.ledger is None:
            return
        try:
            for row in self.ledger.alert_rows():
                if row["rule"] in RULES:
                    self.book.restore(alert_from_row(row), now)
        except Exception as e:  # noqa: BLE001 - an old or damaged ledger: start without them
            log.warning("maintenance: could not take back the open alarms: %s", e)

    def _gather_and_judge(self) -> None:
        now = self.clock.now()
        if not self._restored:
            self._restore(now)
        with read_only(self.cfg.storage_path) as db:
            known = book.task_plans(db)
        book.ensure_tasks(self.cfg.storage_path, wanted_tasks(self.cfg, now, known))
        with read_only(self.cfg.storage_path) as db:
            open_orders = book.orders(db, OPEN_STATES)
            late_tasks = [t for t in book.tasks(db, open_only=True) if t["due_us"] <= to_us(now)]
        self.judge(open_orders, late_tasks, now)

    def judge(self, open_orders: list[dict], late_tasks: list[dict], now: datetime) -> None:
        """Raise what is late, clear what is not (any more)."""
        now_us = to_us(now)
        due: dict[tuple[str, str], tuple] = {}
        names = {c.id: c for c in self.cfg.maintenance.categories}
        for o in open_orders:
            t = targets(self.cfg, o, now_us)
            c = names.get(o["category"])
            cname = (c.name, c.name_en or c.id) if c else (o["category"], o["category"])
            severity = c.severity if c else "warning"
            src = f"order-{o['id']}"
            if o["on_site_us"] is None and t.respond_missed:
                late_min = (now_us - t.respond_due_us) / 60e6
                due[(RESPONSE, src)] = (severity, f"工单 #{o['id']}（{cname[0]}）超过响应时限未到场：{o['what']}",
                                        f"order #{o['id']} ({cname[1]}): nobody on site within the target: "
                                        f"{o['what']}", round(late_min, 1), {"order": o["id"], "device": o["device"]})
            if o["done_us"] is None and t.repair_missed:
                due[(REPAIR, src)] = (severity, f"工单 #{o['id']}（{cname[0]}）超过维修时限未完成：{o['what']}",
                                      f"order #{o['id']} ({cname[1]}): not repaired within the target: {o['what']}",
                                      round((now_us - t.repair_due_us) / 3600e6, 2),
                                      {"order": o["id"], "device": o["device"]})
        for t in late_tasks:
            p = plan_of(self.cfg, t["plan"])
            name = (p.name, p.name_en or p.id) if p else (t["plan"], t["plan"])
            due[(INSPECTION, f"{t['plan']}@{t['period']}")] = (
                "warning", f"巡检逾期：{name[0]}（{t['period']}）", f"inspection overdue: {name[1]} ({t['period']})",
                round((now_us - t["due_us"]) / 86400e6, 2), {"task": t["id"], "plan": t["plan"]})
        for rule in RULES:
            for a in self.book.active(rule):
                if (rule, a.source) not in due:
                    self.book.clear(rule, a.source, now, "on site" if rule == RESPONSE else "done")
        for (rule, src), (severity, msg, msg_en, value, details) in due.items():
            open_ = self.book.get(rule, src)
            if open_ is not None:
                continue               # raised once: the lateness grows, the alarm does not change
            self.book.raise_(rule, src, kind=KINDS[rule], severity=severity, at=now, message=msg, message_en=msg_en,
                             value=value, details=details)

    def alert(self, alert_id: str):
        return self.book.by_id(alert_id)

