"""A generated history for the monthly service and safety report (tests and bench/report.py):
alarms, repair orders (some late, one device failing again and again), inspection tasks (on
time, late, not done, failed items), patrol rounds with missed checkpoints, refused cards and
door alarms, written straight into a ledger's tables.

It also returns what it meant to write where the report's own judgement is involved (which
checkpoints it left unread, who walked each round), so a test can check the report against the
intent rather than against the report's own arithmetic.
"""

from __future__ import annotations

import random
import sqlite3
from collections import defaultdict
from datetime import date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from gateway.clock import to_us
from gateway.ledger import Ledger
from gateway.maintenance.inspections import period_of
from gateway.web.views.patrol import rounds_of_day, schedules

KINDS = ("threshold", "offline", "door", "access", "patrol", "counter", "repair_response")
GUARDS = ("张伟", "王强", "李军", "赵磊", "陈刚", "刘洋", "杨勇", "黄斌", "周杰", "吴涛")
REPEAT_DEVICE = "B01-stair"      # fails every 25 days: three orders within 90 days


def _days(months: list[str]) -> list[date]:
    out = []
    for m in months:
        y, mo = map(int, m.split("-"))
        d = date(y, mo, 1)
        while d.month == mo:
            out.append(d)
            d += timedelta(days=1)
    return out


def generate(cfg, months: list[str], seed: int = 1, busy: float = 1.0, resident_swipes: int = 40,
             door_events: int = 20, as_of: datetime | None = None) -> dict:
    """Write the months' history into cfg's ledger (created if missing). Returns the intent:
    {"rounds": [(route, start_us, guard or "", points, missed)], "devices": [...]}."""
    Ledger(cfg.storage_path).close()          # the schema, migrated
    rng = random.Random(seed)
    tz = ZoneInfo(cfg.site.timezone)
    days = _days(months)
    db = sqlite3.connect(cfg.storage_path)
    intent: dict = {"rounds": []}
    cats = cfg.maintenance.categories
    devices = [m.id for m in cfg.meters if m.id != REPEAT_DEVICE] or ["dev-1", "dev-2"]
    doors = [d.id for d in cfg.doors] or ["gate"]
    readers = {d: [r.id for r in cfg.card_readers if r.door == d] or [d] for d in doors}
    alerts, orders, steps, swipes, dev, checkins = [], [], [], [], [], []
    order_id = db.execute("SELECT coalesce(max(id), 0) FROM repair_orders").fetchone()[0]
    last_repeat = None
    for day in days:
        midnight = datetime.combine(day, time(0), tz)
        day_us = to_us(midnight)
        span = to_us(midnight + timedelta(days=1)) - day_us

        def at() -> int:
            return day_us + rng.randrange(span)

        # ---- alarms: acknowledged after minutes to hours (some next day), most cleared
        for _ in range(int(rng.randint(2, 8) * busy)):
            kind = rng.choice(KINDS)
            raised = at()
            acked = raised + int(rng.lognormvariate(6.5, 1.3) * 1e6) if rng.random() < 0.85 else None
            cleared = (acked or raised) + int(rng.lognormvariate(7.5, 1.2) * 1e6) if rng.random() < 0.9 else None
            state = "cleared" if cleared else "acknowledged" if acked else "active"
            src = f"src-{rng.randrange(30)}"
            alerts.append((f"{kind}-rule/{src}/{raised}", f"{kind}-rule", kind, src, rng.choice(("warning", "critical")),
                           state, "告警", "alarm", raised, cleared or acked or raised, cleared,
                           "值班" if acked else "", "", acked, None, "{}"))
        if (day + timedelta(days=1)).day == 1:
            # the month's last alarm: raised at 23:50, acknowledged and cleared in the next month
            raised = to_us(midnight + timedelta(hours=23, minutes=50))
            alerts.append((f"offline-rule/late/{raised}", "offline-rule", "offline", "late", "warning", "cleared",
                           "告警", "alarm", raised, raised + 5 * 3_600_000_000, raised + 5 * 3_600_000_000, "值班", "",
                           raised + 2 * 3_600_000_000, None, "{}"))
        # ---- repair orders
        n_orders = int(rng.randint(0, 3) * busy)
        # most orders name no device (a resident's report); those that do rarely name the same one
        wanted = [(rng.choice(devices) if rng.random() < 0.3 else "", at()) for _ in range(n_orders)]
        if last_repeat is None or (day - last_repeat).days >= 25:
            last_repeat = day
            wanted.append((REPEAT_DEVICE, day_us + 10 * 3_600_000_000))
        for device, created in wanted:
            order_id += 1
            c = rng.choice(cats)
            respond, repair = c.respond_minutes * 60e6, c.repair_hours * 3600e6
            clock = created
            late = rng.random() < 0.2
            on_site = clock + int(respond * (rng.uniform(1.1, 3) if late else rng.uniform(0.1, 0.95))) \
                if rng.random() < 0.92 else None
            done = None
            if on_site is not None and rng.random() < 0.85:
                done = clock + int(repair * (rng.uniform(1.05, 2) if rng.random() < 0.15 else rng.uniform(0.05, 0.9)))
                done = max(done, on_site + 60_000_000)
            sat = rng.randint(2, 5) if done is not None and rng.random() < 0.7 else None
            reopened = 1 if done is not None and sat is None and rng.random() < 0.1 else 0
            if reopened:
                clock, on_site, done = done + 3_600_000_000, None, None
            state = ("followed_up" if sat is not None else "reopened" if reopened else "done" if done is not None
                     else "on_site" if on_site is not None else rng.choice(("new", "assigned")))
            orders.append((order_id, c.id, rng.choice(("alarm", "resident", "inspection", "staff")), device,
                           "报修", state, created, "门卫", clock, on_site, done, sat, reopened))
            steps.append((order_id, "create", "new", created, "门卫", "guard"))
            if device == REPEAT_DEVICE or rng.random() < 0.05:
                dev.append(device)
        # ---- refused cards, door alarms (nights busier), and the ordinary traffic around them
        for _ in range(int(rng.randint(0, 6) * busy)):
            hour = rng.choice((0, 1, 2, 3, 4, 22, 23) if rng.random() < 0.6 else range(24))
            ts = day_us + hour * 3_600_000_000 + rng.randrange(3_600_000_000)
            door = rng.choice(doors)
            swipes.append((ts, rng.choice(readers[door]), door, "in", "h", f"{rng.randrange(10000):04d}",
                           rng.choice(("unknown", "unknown", "revoked", "expired")), "", "", ""))
        for _ in range(resident_swipes):
            door = rng.choice(doors)
            swipes.append((at(), rng.choice(readers[door]), door, rng.choice(("in", "out")), "h",
                           f"{rng.randrange(10000):04d}", "resident", "住户", "1-1-101", "resident"))
        for _ in range(int(rng.randint(0, 2) * busy)):
            db.execute("INSERT INTO door_events (ts_us, door, state, source) VALUES (?,?,?,?)",
                       (at(), rng.choice(doors), rng.choice(("forced_open", "forced_open", "held_open")), "sim"))
        if door_events:
            db.executemany("INSERT INTO door_events (ts_us, door, state, source) VALUES (?,?,?,?)",
                           [(at(), rng.choice(doors), rng.choice(("opened", "closed")), "sim")
                            for _ in range(door_events)])
        # ---- patrol: one guard walks a round; a checkpoint now and then left out, or read late
        for route in schedules(cfg):
            wand = route.wand
            reader = sorted(route.readers)[0] if route.readers else (cfg.patrol.readers[0].id
                                                                     if cfg.patrol.readers else "pr")
            for start in rounds_of_day(route, day, tz):
                if as_of is not None and start + route.offsets[-1] + route.tolerance >= as_of:
                    continue              # not over at the report: left out of the intent and the ledger
                skipped_round = rng.random() < 0.03
                guard = "" if skipped_round else rng.choice(GUARDS)
                missed = 0
                for k, cp in enumerate(route.checkpoints):
                    if skipped_round or rng.random() < 0.05:
                        missed += 1
                        continue
                    due = start + route.offsets[k]
                    delta = timedelta(minutes=rng.uniform(-2, 2)) if rng.random() < 0.9 else \
                        timedelta(minutes=rng.uniform(4, 6))
                    ts = to_us(due + delta)
                    received = ts + (int(rng.uniform(1, 5) * 3_600_000_000) if wand else 200_000)
                    checkins.append((ts, received, reader, cp, f"tag-{cp}", guard, f"g-{guard}", "sim"))
                intent["rounds"].append((route.id, to_us(start), guard, len(route.checkpoints), missed))
    db.executemany("INSERT INTO alerts (id, rule, kind, source, severity, state, message, message_en, raised_us, "
                   "updated_us, cleared_us, acked_by, ack_note, acked_us, value, details) "
                   "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", alerts)
    db.executemany("INSERT INTO repair_orders (id, category, origin, device, what, state, created_us, created_by, "
                   "clock_us, on_site_us, done_us, satisfaction, reopened) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                   orders)
    db.executemany("INSERT INTO repair_steps (order_id, step, state, ts_us, by, role) VALUES (?,?,?,?,?,?)", steps)
    db.executemany("INSERT INTO swipes (ts_us, reader, door, direction, card_hash, card_tail, category, holder, "
                   "household, role) VALUES (?,?,?,?,?,?,?,?,?,?)", swipes)
    db.executemany("INSERT OR IGNORE INTO patrol_checkins (ts_us, received_us, reader, checkpoint, tag, guard, "
                   "guard_hash, source) VALUES (?,?,?,?,?,?,?,?)", checkins)
    _inspections(db, cfg, days, tz, rng)
    db.commit()
    db.close()
    intent["alarms"], intent["orders"], intent["swipes"], intent["checkins"] = \
        len(alerts), len(orders), len(swipes), len(checkins)
    return intent


def _inspections(db, cfg, days: list[date], tz: ZoneInfo, rng: random.Random) -> None:
    """Every plan's tasks of the periods the days touch: most done on time, some late, some not."""
    seen = set()
    for day in days:
        for plan in cfg.maintenance.inspections:
            label, s, e = period_of(plan.every, day)
            if (plan.id, label) in seen:
                continue
            seen.add((plan.id, label))
            starts = to_us(datetime.combine(s, time(0), tz))
            due = to_us(datetime.combine(e, time(0), tz))
            r = rng.random()
            done = None if r < 0.1 else due + rng.randrange(1, 5 * 86_400_000_000) if r < 0.25 \
                else due - rng.randrange(1, max(2, due - starts))
            cur = db.execute("INSERT OR IGNORE INTO inspection_tasks (plan, period, starts_us, due_us, done_us, "
                             "done_by) VALUES (?,?,?,?,?,?)", (plan.id, label, starts, due, done,
                                                               "王电工" if done else None))
            if not cur.rowcount or done is None:
                continue
            tid = cur.lastrowid
            for item in plan.items:
                db.execute("INSERT INTO inspection_results (task, item, ok, note, ts_us, by) VALUES (?,?,?,?,?,?)",
                           (tid, item.id, 0 if rng.random() < 0.1 else 1, "", done, "王电工"))


def example_site(db: Path):
    """The reference site (edge_config/site.example.yaml) with its ledger at `db`."""
    import yaml

    from gateway.config import parse_site
    site = Path(__file__).resolve().parent.parent / "edge_config" / "site.example.yaml"
    data = yaml.safe_load(site.read_text(encoding="utf-8"))
    data["storage"]["path"] = str(db)
    return data, parse_site(data, base_dir=site.parent)


def intent_by(intent: dict, start_us: int, end_us: int) -> tuple[dict, dict]:
    """Per route and per guard: (rounds, due, missed) of the intended rounds starting in [start, end)."""
    routes: dict = defaultdict(lambda: [0, 0, 0])
    guards: dict = defaultdict(lambda: [0, 0, 0])
    for route, start, guard, points, missed in intent["rounds"]:
        if start_us <= start < end_us:
            for acc in (routes[route], guards[guard]):
                acc[0] += 1
                acc[1] += points
                acc[2] += missed
    return dict(routes), dict(guards)
