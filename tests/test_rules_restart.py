"""The rules engine across a restart: what the ledger knows goes back into a fresh engine
(gateway/rules/restore.py): open alerts, counter and consumption baselines, patrol rounds in
progress, meter replacements (recorded before or after the drop).

A "previous run" is an engine whose alert changes, readings and checkins are written to a real
ledger (as the runtime does); the "restarted" engine is a fresh one restored from that ledger.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import aiomqtt
import pytest

from gateway.clock import to_us
from gateway.config import load_site, parse_site
from gateway.events import AlertChange
from gateway.replay import replay
from gateway.rules import Engine
from gateway.rules.restore import restore
from gateway.runtime import Gateway
from gateway.ledger import Ledger, Replacement
from simulators.site import SiteSimulation
from test_rules_support import Rec, T0, checkin, reading, sec, site

TZ = ZoneInfo("Asia/Shanghai")
VOLT = {"id": "volt", "kind": "threshold", "field": "voltage_v", "above": 235, "hysteresis": 2, "meters": ["A01"]}
CTR = {"id": "ctr", "kind": "counter", "severity": "critical", "max_power_kw_by_circuit": {"stairwell_lighting": 4}}
NORTH = {"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["pr-1"]}


def L(h, m, s=0, day=15):
    return datetime(2025, 1, day, h, m, s, tzinfo=TZ)


class Run:
    """An engine whose alert changes go to the ledger (like the runtime's), and are recorded."""

    def __init__(self, ledger: Ledger, rules, s=None):
        self.ledger = ledger
        self.rec = Rec()
        self.engine = Engine(s or site(), rules, on_change=self._changed)

    def _changed(self, alert, what):
        self.rec(alert, what)
        self.ledger.add(AlertChange(alert.snapshot(), what))

    def feed(self, *events):
        for e in events:
            self.engine.handle(e)
            self.ledger.add(e)
        self.ledger.flush()

    def tick(self, start, end, step=1.0):
        t = start
        while t <= end:
            self.engine.tick(t)
            t += sec(step)
        self.ledger.flush()

    def restore(self, now):
        out = restore(self.engine, self.ledger, now)
        self.ledger.flush()
        return out


@pytest.fixture
def ledger(tmp_path):
    db = Ledger(tmp_path / "gw.db")
    yield db
    db.close()


def open_rows(ledger):
    return [(r["rule"], r["source"], r["state"]) for r in ledger.alert_rows()]


def v(meter, ts, volts):
    return reading(meter, ts, voltage_v=volts)


def kwh(meter, ts, value):
    return reading(meter, ts, counters={"energy_kwh": value}, energy_kwh=float(value))


# ---- open alerts -----------------------------------------------------------------------------

def test_open_alert_is_taken_back_not_raised_again_and_clears_when_the_condition_goes(ledger):
    before = Run(ledger, [VOLT])
    before.feed(v("A01", T0, 240.0))
    (first,) = before.engine.active()
    after = Run(ledger, [VOLT])
    out = after.restore(T0 + sec(60))
    assert out.alerts == 1 and out.cleared == 0
    after.feed(v("A01", T0 + sec(70), 240.0), v("A01", T0 + sec(100), 234.0))   # still bad, then in the band
    assert after.rec.changes == []                                   # no second alert for volt/A01
    assert [a.id for a in after.engine.active()] == [first.id]
    after.feed(v("A01", T0 + sec(130), 232.0))                       # back inside by the hysteresis
    assert after.rec.whats() == [("cleared", "volt", "A01")]
    assert after.rec.changes[0][3].id == first.id
    assert open_rows(ledger) == []                                   # the ledger's row is the one cleared


def test_acknowledged_alert_stays_acknowledged_and_renotify_keeps_its_rhythm(ledger):
    rule = VOLT | {"severity": "critical", "meters": ["A01", "A02"]}
    before = Run(ledger, [rule])
    before.feed(v("A01", T0, 240.0), v("A02", T0, 241.0))
    a01 = before.engine.book.get("volt", "A01")
    before.engine.ack(a01.id, "电工", "在修", T0 + sec(100))
    before.tick(T0 + sec(100), T0 + sec(1000), 100)                  # A02 announced again at T0+900
    assert before.rec.whats("renotify") == [("renotify", "volt", "A02")]
    ledger.flush()
    after = Run(ledger, [rule])
    out = after.restore(T0 + sec(1000))
    assert (out.alerts, out.acknowledged) == (2, 1)
    assert after.engine.book.get("volt", "A01").state == "acknowledged"
    after.tick(T0 + sec(1000), T0 + sec(1790), 10)
    assert after.rec.changes == []                                   # next one is due at T0+1800, not at once
    after.tick(T0 + sec(1800), T0 + sec(1800))
    assert after.rec.whats() == [("renotify", "volt", "A02")]        # the acknowledged one is never announced
    assert after.engine.ack(a01.id, "电工", "", T0 + sec(1900)).state == "acknowledged"


def test_alert_of_a_removed_rule_is_cleared_with_the_reason(ledger):
    before = Run(ledger, [VOLT, CTR])
    before.feed(v("A01", T0, 240.0), kwh("A02", T0, "100"), kwh("A02", T0 + sec(30), "90"))
    assert {a.rule for a in before.engine.active()} == {"volt", "ctr"}
    after = Run(ledger, [CTR])                                       # volt is no longer in the site file
    out = after.restore(T0 + sec(60))
    assert (out.alerts, out.cleared) == (1, 1)
    assert after.rec.whats() == [("cleared", "volt", "A01")]
    assert after.rec.changes[0][3].details["cleared_because"] == "rule removed from the site file"
    assert open_rows(ledger) == [("ctr", "A02", "active")]


def test_duplicate_open_alerts_left_by_an_old_restart_keep_the_newest(ledger):
    Run(ledger, [VOLT]).feed(v("A01", T0, 240.0))
    Run(ledger, [VOLT]).feed(v("A01", T0 + sec(600), 241.0))        # a restart without restore: a 2nd one
    assert len(open_rows(ledger)) == 2
    after = Run(ledger, [VOLT])
    after.restore(T0 + sec(700))
    assert after.rec.whats() == [("cleared", "volt", "A01"), ("updated", "volt", "A01")]
    assert "duplicate of" in after.rec.changes[0][3].details["cleared_because"]
    assert open_rows(ledger) == [("volt", "A01", "active")]
    assert after.engine.active()[0].raised_at == T0 + sec(600)


def test_bus_alert_taken_back_waits_for_a_reading_not_for_a_new_period(ledger):
    rule = {"id": "off", "kind": "offline", "periods": 2, "settle_periods": 1}
    before = Run(ledger, [rule])
    before.feed(*[v(m, T0, 220.0) for m in ("A01", "A02", "A03", "B01", "B02", "B03")])
    before.tick(T0, T0 + sec(200), 10)
    before.feed(*[v(m, T0 + sec(200), 220.0) for m in ("B01", "B02", "B03")])
    assert [(a.rule, a.source) for a in before.engine.active()] == [("off", "bus-a")]
    after = Run(ledger, [rule])
    after.restore(T0 + sec(300))
    after.feed(*[v(m, T0 + sec(300 + i), 220.0) for i, m in enumerate(("B01", "B02", "B03"))])
    after.tick(T0 + sec(300), T0 + sec(350), 5)                     # no reading of bus-a yet
    assert after.rec.changes == []                                   # neither cleared nor raised again
    after.feed(v("A02", T0 + sec(351), 220.0))
    assert after.rec.whats() == [("cleared", "off", "bus-a")]


def test_unreadable_alert_rows_are_skipped_or_taken_back_without_details(ledger, caplog):
    before = Run(ledger, [VOLT | {"meters": ["A01", "A02"]}])
    before.feed(v("A01", T0, 240.0), v("A02", T0, 240.0))
    ledger._db.execute("UPDATE alerts SET details = '{broken' WHERE source = 'A01'")
    ledger._db.execute("UPDATE alerts SET severity = 'loud' WHERE source = 'A02'")
    after = Run(ledger, [VOLT | {"meters": ["A01", "A02"]}])
    with caplog.at_level(logging.WARNING, logger="gateway.rules.restore"):
        out = after.restore(T0 + sec(60))
    assert (out.alerts, out.skipped, out.failed) == (1, 1, [])
    assert [a.source for a in after.engine.active()] == ["A01"]
    after.feed(v("A01", T0 + sec(70), 230.0))
    assert after.rec.whats() == [("cleared", "volt", "A01")]
    text = "\n".join(r.message for r in caplog.records)
    assert "details are not a JSON object" in text and "unknown severity 'loud'" in text


# ---- counters --------------------------------------------------------------------------------

def counter_ledger(ledger, end_s=600, start="1000.00"):
    run = Run(ledger, [CTR])
    value = Decimal(start)
    for t in range(0, end_s + 1, 30):
        run.feed(kwh("A01", T0 + sec(t), str(value)))
        value += Decimal("0.01")
    return value - Decimal("0.01")


def test_counter_restored_judges_the_first_reading_after_the_restart(ledger):
    last = counter_ledger(ledger)                                    # 1000.20 at T0+600
    after = Run(ledger, [CTR])
    assert after.restore(T0 + sec(700)).counters == 1
    after.feed(kwh("A01", T0 + sec(720), str(last + Decimal("0.05"))))   # normal: nothing
    assert after.rec.changes == []
    after2 = Run(ledger, [CTR])
    after2.restore(T0 + sec(700))
    after2.feed(kwh("A01", T0 + sec(720), "990.00"))                 # backwards across the restart
    a = after2.engine.book.get("ctr", "A01")
    assert a is not None and a.details["what"] == "backwards" and a.details["before"] == float(last)


def test_counter_backwards_alert_across_a_restart_keeps_the_accepted_value(ledger):
    counter_ledger(ledger)
    before = Run(ledger, [CTR])
    before.restore(T0 + sec(610))
    before.feed(kwh("A01", T0 + sec(630), "900.00"))
    assert before.rec.whats() == [("raised", "ctr", "A01")]
    after = Run(ledger, [CTR])
    after.restore(T0 + sec(700))
    after.feed(kwh("A01", T0 + sec(720), "900.10"), kwh("A01", T0 + sec(750), "950.00"))
    assert after.rec.changes == []                                   # still below 1000.20: the alert stays
    after.feed(kwh("A01", T0 + sec(780), "1000.20"))
    assert after.rec.whats() == [("cleared", "ctr", "A01")]
    assert after.rec.changes[0][3].details["cleared_because"] == "counter back at its previous value"


# ---- meter replacements ----------------------------------------------------------------------

def test_replacement_recorded_before_the_new_meter_is_read_prevents_the_alert():
    e = Engine(site(), [CTR], on_change=(rec := Rec()))
    e.handle(kwh("A01", T0, "5000.00"))
    e.note_replacement("A01", T0 + sec(60), now=T0 + sec(40))        # written in advance
    e.handle(kwh("A01", T0 + sec(45), "5000.01"))                    # the old meter, still judged
    e.handle(kwh("A01", T0 + sec(90), "0.50"))                       # the new meter
    e.handle(kwh("A01", T0 + sec(120), "0.52"))
    assert rec.changes == []
    e.handle(kwh("A01", T0 + sec(150), "0.10"))                      # its counter is the baseline now
    a = e.book.get("ctr", "A01")
    assert a.details["what"] == "backwards" and a.details["before"] == 0.52


def test_replacement_recorded_after_the_drop_clears_the_alert_and_restarts_the_baseline():
    e = Engine(site(), [CTR], on_change=(rec := Rec()))
    e.handle(kwh("A01", T0, "5000.00"))
    e.handle(kwh("A01", T0 + sec(90), "0.50"))
    e.handle(kwh("A01", T0 + sec(120), "0.60"))
    assert rec.whats() == [("raised", "ctr", "A01")]
    e.note_replacement("A01", T0 + sec(60), now=T0 + sec(130))
    assert rec.whats() == [("raised", "ctr", "A01"), ("cleared", "ctr", "A01")]
    assert rec.changes[-1][3].details["cleared_because"] == "meter replacement recorded"
    assert rec.changes[-1][3].cleared_at == T0 + sec(130)
    e.handle(kwh("A01", T0 + sec(150), "0.61"))
    assert len(rec.changes) == 2
    e.handle(kwh("A01", T0 + sec(180), "0.30"))                      # below the new meter's 0.61
    assert e.book.get("ctr", "A01").details["before"] == 0.61


def test_a_replacement_older_than_the_accepted_reading_explains_nothing():
    e = Engine(site(), [CTR], on_change=Rec())
    e.handle(kwh("A01", T0, "5000.00"))
    e.handle(kwh("A01", T0 + sec(30), "4000.00"))
    e.note_replacement("A01", T0 - sec(86400))                       # last month's swap
    assert e.book.get("ctr", "A01") is not None


def test_replacement_in_the_ledger_clears_a_restored_alert_and_warns_of_a_coming_one(ledger):
    counter_ledger(ledger, end_s=60)                                 # 1000.00 .. 1000.02
    before = Run(ledger, [CTR])
    before.restore(T0 + sec(70))
    before.feed(kwh("A01", T0 + sec(90), "3.00"))                    # A01 swapped, not recorded yet
    before.feed(kwh("A02", T0 + sec(90), "700.00"))
    ledger.record_replacement(Replacement("A01", T0 + sec(75), Decimal("1000.02"), Decimal("2.9"),
                                          recorded=T0 + sec(100)))
    ledger.record_replacement(Replacement("A02", T0 + sec(300), Decimal("700.1"), Decimal("0"),
                                          recorded=T0 + sec(100)))  # A02 will be swapped at T0+300
    after = Run(ledger, [CTR])
    out = after.restore(T0 + sec(200))
    assert out.replacements == 2 and out.last_replacement_id == 2
    assert after.rec.whats() == [("cleared", "ctr", "A01")]
    after.feed(kwh("A01", T0 + sec(210), "3.01"), kwh("A02", T0 + sec(210), "700.05"),
               kwh("A02", T0 + sec(330), "0.02"))                    # the announced swap
    assert after.engine.active() == []


def gateway_cfg(tmp_path):
    data = {"site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15,
                     "longitude": 125.83},
            "storage": {"path": str(tmp_path / "gw.db")},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1"}],
            "meters": [{"id": f"B0{u}-stair", "bus": "b", "unit": u, "model": "chint-ddsu666",
                        "circuit": "stairwell_lighting"} for u in (1, 2)],
            "rules": [{"id": "counter", "kind": "counter", "max_power_kw": 4}]}
    return parse_site(data, base_dir=tmp_path)


def test_running_gateway_applies_replacements_written_to_the_ledger(tmp_path):
    gw = Gateway(gateway_cfg(tmp_path))
    gw.ledger = Ledger(gw.cfg.storage_path)
    try:
        gw._alerting()
        changes = gw.hub.subscribe(AlertChange, name="test")
        gw.restore_rules(T0)
        gw.rules.handle(kwh("B01-stair", T0 + sec(10), "500.0"))
        gw.rules.handle(kwh("B01-stair", T0 + sec(40), "0.5"))
        assert [c.what for c in changes.take_all()] == ["raised"]
        gw._apply_replacements()                                     # nothing recorded yet
        gw.ledger.record_replacement(Replacement("B01-stair", T0 + sec(30), Decimal("500.0"), Decimal("0.4"),
                                                 recorded=T0 + sec(50)))
        gw._apply_replacements()
        gw._apply_replacements()                                     # once only
        got = changes.take_all()
        assert [(c.what, c.alert.details.get("cleared_because")) for c in got] == \
            [("cleared", "meter replacement recorded")]
    finally:
        gw.ledger.close()


def test_gateway_restore_clears_alerts_of_removed_rules_through_the_hub(tmp_path):
    cfg = gateway_cfg(tmp_path)
    db = Ledger(cfg.storage_path)
    old = Run(db, [{"id": "gone", "kind": "threshold", "field": "voltage_v", "above": 1}])
    old.feed(v("A01", T0, 220.0))
    db.close()
    gw = Gateway(cfg)
    gw.ledger = Ledger(cfg.storage_path)
    try:
        gw._alerting()
        changes = gw.hub.subscribe(AlertChange, name="test")
        gw.restore_rules(T0 + sec(60))
        (c,) = changes.take_all()
        assert (c.what, c.alert.rule, c.alert.details["cleared_because"]) == \
            ("cleared", "gone", "rule removed from the site file")
    finally:
        gw.ledger.close()


# ---- consumption -----------------------------------------------------------------------------

NIGHT = {"id": "night", "kind": "consumption", "period": "night", "factor": 1.5, "baseline_days": 14,
         "min_days": 7, "meters": ["A01", "A02"]}
DAY = {"id": "day", "kind": "consumption", "period": "day", "factor": 1.5, "baseline_days": 14, "min_days": 7,
       "min_excess_kwh": 1, "meters": ["A01"]}
BAD = datetime(2025, 1, 16).toordinal()


def consumption_readings(start, end, step_min=20, offset_min=7):
    """A01 and A02 every step_min (at hh:07, hh:27 ...: window edges fall between readings); the
    night load is 0.5 kW (a little more each night), 1.2 kW on the night starting 2025-01-16."""
    out, value = [], {"A01": 1000.0, "A02": 5000.0}
    t = start + timedelta(minutes=offset_min)
    while t < end:
        local = t.astimezone(TZ)
        night = local.hour >= 23 or local.hour < 5
        day = (local - timedelta(hours=5)).date().toordinal()
        for m in ("A01", "A02"):
            kw = (1.2 if day == BAD else 0.5 + 0.01 * (day % 7)) if night else 0.3
            value[m] += kw * step_min / 60
            out.append(kwh(m, t, f"{value[m]:.3f}"))
        t += timedelta(minutes=step_min)
    return out


def changes_of(rec):
    return [(w, r, s, a.value, json.dumps(a.details, sort_keys=True)) for w, r, s, a in rec.changes]


@pytest.mark.parametrize("restart", [L(12, 0, day=16), L(1, 0, day=17)], ids=["before-the-night", "mid-night"])
def test_consumption_baseline_warmed_from_the_ledger_raises_what_the_live_engine_raised(ledger, restart):
    events = consumption_readings(L(12, 0, day=1), L(12, 0, day=18))
    live = Engine(site(), [NIGHT, DAY], on_change=(live_rec := Rec()))
    for e in events:
        live.handle(e)
    assert [(w, s) for w, r, s, a in live_rec.changes if r == "night" and w == "raised"] == [("raised", "A01"),
                                                                                             ("raised", "A02")]
    for e in events:
        if e.ts < restart:
            ledger.add(e)
    ledger.flush()
    after = Run(ledger, [NIGHT, DAY])
    out = after.restore(restart)
    assert out.windows >= 2 * 14
    for e in events:
        if e.ts >= restart:
            after.engine.handle(e)
    live_after = Rec()
    live_after.changes = [c for c in live_rec.changes if c[3].updated_at >= restart]
    assert any(w == "raised" and r == "night" for w, r, s, a in live_after.changes)
    assert changes_of(after.rec) == changes_of(live_after)          # same windows, values, medians, days
    cold = Engine(site(), [NIGHT, DAY], on_change=(cold_rec := Rec()))   # without the ledger: nothing to judge by
    for e in events:
        if e.ts >= restart:
            cold.handle(e)
    assert cold_rec.changes == []


def test_consumption_warm_up_skips_unreadable_rows_with_a_warning(ledger, caplog):
    events = consumption_readings(L(12, 0, day=1), L(12, 0, day=16))
    for e in events:
        ledger.add(e)
    ledger.flush()
    edge = to_us(L(23, 0, day=10))
    # rows as schema 8 wrote them (counters as JSON text): a damaged one and one with a bad value
    ledger._db.execute("INSERT INTO field_sets (names) VALUES ('') ON CONFLICT DO NOTHING")
    legacy = ("INSERT INTO reading_log (meter, ts_us, field_set, vals, counters) SELECT "
              "(SELECT id FROM meters WHERE name = ?), ?, (SELECT id FROM field_sets WHERE names = ''), x'', ?")
    ledger._db.execute(legacy, ("A01", edge - 1, "{not json"))
    ledger._db.execute(legacy, ("A01", edge + 1, '{"energy_kwh":"lots"}'))
    after = Run(ledger, [NIGHT, CTR])
    with caplog.at_level(logging.WARNING, logger="gateway.rules.restore"):
        out = after.restore(L(12, 0, day=16))
    assert out.failed == [] and out.skipped == 2 and out.counters == 2
    assert out.windows == 2 * 15 - 1                                 # A01's night of the 10th is not judged
    assert any("not valid JSON" in r.message for r in caplog.records)
    assert any("unreadable counter 'lots'" in r.message for r in caplog.records)


# ---- patrol ------------------------------------------------------------------------------------

def patrol_ledger(ledger, alive_from, alive_to, checkins=()):
    """The previous run: A01 read every 30 s from alive_from to alive_to, and the given reads."""
    t = alive_from
    while t <= alive_to:
        ledger.add(v("A01", t, 220.0))
        t += sec(30)
    for c in checkins:
        ledger.add(c)
    ledger.flush()


def issues(e, rule, source):
    a = e.book.get(rule, source)
    return sorted((i["what"], i.get("checkpoint", "")) for i in a.details["issues"]) if a else []


def test_patrol_restart_mid_round_takes_the_ledger_reads_back(ledger):
    patrol_ledger(ledger, L(21, 0), L(22, 6), [checkin("pr-1", "CP01", L(22, 0, 30))])   # CP02 not read
    after = Run(ledger, [NORTH])
    out = after.restore(L(22, 6, 20))
    assert out.checkins == 1 and out.observing_since < L(22, 0)
    after.tick(L(22, 6, 20), L(22, 8, 0))
    after.feed(checkin("pr-1", "CP03", L(22, 8, 10)))
    after.tick(L(22, 8, 10), L(22, 12, 0))
    after.feed(checkin("pr-1", "CP04", L(22, 12, 0)))
    after.tick(L(22, 12, 0), L(22, 30, 0), 5)
    assert issues(after.engine, "pn", "north@2025-01-15T22:00") == [("missed", "CP02")]   # not CP01
    assert after.rec.whats() == [("raised", "pn", "north@2025-01-15T22:00")]


def test_patrol_checkpoints_due_before_observing_since_are_unknown_not_missed(ledger, caplog):
    patrol_ledger(ledger, L(20, 0), L(21, 0))                        # the gateway was off 21:00 - 22:06
    after = Run(ledger, [NORTH])
    with caplog.at_level(logging.INFO, logger="gateway.rules.patrol"):
        out = after.restore(L(22, 6, 20))
        assert out.observing_since == L(22, 6, 20) == after.engine.observing_since
        after.tick(L(22, 6, 20), L(22, 8, 0))
        after.feed(checkin("pr-1", "CP03", L(22, 8, 10)))             # CP04 is never read
        after.tick(L(22, 8, 10), L(22, 30, 0), 5)
    assert issues(after.engine, "pn", "north@2025-01-15T22:00") == [("missed", "CP04")]
    unknown = [r.message for r in caplog.records if "due before the gateway was watching" in r.message]
    assert len(unknown) == 1 and "CP01, CP02" in unknown[0]


def test_patrol_round_acknowledged_before_the_restart_is_not_raised_again(ledger):
    before = Run(ledger, [NORTH])
    before.tick(L(21, 50), L(21, 59, 50), 10)
    before.feed(checkin("pr-1", "CP01", L(22, 0, 0)))
    before.tick(L(22, 0), L(22, 7, 30), 10)                          # CP02 missed at 22:07:01
    a = before.engine.book.get("pn", "north@2025-01-15T22:00")
    before.engine.ack(a.id, "班长", "知道了", L(22, 7, 40))
    before.tick(L(22, 7, 40), L(22, 8, 0), 10)
    assert [w for w, *_ in before.rec.whats()] == ["raised", "acknowledged", "cleared"]   # not raised again
    patrol_ledger(ledger, L(21, 50), L(22, 8))
    after = Run(ledger, [NORTH])
    after.restore(L(22, 8, 30))
    after.feed(checkin("pr-1", "CP03", L(22, 8, 40)))
    after.tick(L(22, 8, 30), L(22, 14, 0), 10)
    assert after.rec.changes == []                                   # the acknowledged missed CP02: said
    after.tick(L(22, 14, 0), L(22, 16, 0), 10)                       # CP04 missed at 22:15:01: new
    assert after.rec.whats() == [("raised", "pn", "north@2025-01-15T22:00")]
    assert issues(after.engine, "pn", "north@2025-01-15T22:00") == [("missed", "CP02"), ("missed", "CP04")]


def test_patrol_open_round_alert_taken_back_keeps_its_issues(ledger):
    before = Run(ledger, [NORTH])
    before.tick(L(21, 50), L(21, 59, 50), 10)
    before.feed(checkin("pr-1", "CP01", L(22, 0, 0)))
    before.tick(L(22, 0), L(22, 7, 30), 10)
    patrol_ledger(ledger, L(21, 50), L(22, 8))
    after = Run(ledger, [NORTH])
    after.restore(L(22, 8, 30))
    after.feed(checkin("pr-1", "CP02", L(22, 9, 0)))                 # read late after all
    assert issues(after.engine, "pn", "north@2025-01-15T22:00") == [("late", "CP02")]
    assert [w for w, *_ in after.rec.whats()] == ["updated"]          # the same alert, not a new one


# ---- the gateway stopped and started again (real runtime, simulated meters, real broker) -------

async def test_gateway_restarted_takes_its_alerts_back(tmp_path, mqtt_broker):  # noqa: F811
    broker = mqtt_broker()
    data = {"site": {"id": "wanhu", "name": "万户新居", "timezone": "Asia/Shanghai", "latitude": 44.15,
                     "longitude": 125.83},
            "storage": {"path": str(tmp_path / "gw.db"), "commit_interval_s": 0.2},
            "buses": [{"id": "b", "type": "modbus_tcp", "host": "127.0.0.1", "timeout_s": 0.2}],
            "meters": [{"id": f"B0{u}-stair", "name": f"{u}号楼楼道照明", "bus": "b", "unit": u,
                        "model": "chint-ddsu666", "poll_s": 1, "circuit": "stairwell_lighting"} for u in (1, 2)],
            "mqtt": {"host": "127.0.0.1", "port": broker.port},
            "rules": [{"id": "voltage-test", "kind": "threshold", "field": "voltage_v", "above": 200,
                       "meters": ["B01-stair"]},                        # ~220 V: always raised
                      {"id": "old-test", "kind": "threshold", "field": "voltage_v", "above": 200,
                       "meters": ["B02-stair"]},
                      {"id": "counter", "kind": "counter", "max_power_kw": 4}]}

    async def run_once(cfg, until):
        gw = Gateway(cfg)
        changes = gw.hub.subscribe(AlertChange, name="test")
        task = asyncio.create_task(gw.run(status_every_s=None, grace_s=1))
        seen: list[AlertChange] = []
        async with asyncio.timeout(20):
            while not until(gw, seen):
                await asyncio.sleep(0.05)
                seen.extend(changes.take_all())
        gw.stop()
        await asyncio.wait_for(task, 15)
        return gw, seen + changes.take_all()

    async with SiteSimulation(parse_site(data, base_dir=tmp_path)) as sim:
        patched = sim.patched_config().model_dump(mode="json")
        first, seen1 = await run_once(parse_site(patched, base_dir=tmp_path),
                                      lambda gw, seen: {c.alert.rule for c in seen if c.what == "raised"}
                                      == {"voltage-test", "old-test"})
        (raised,) = [c.alert for c in seen1 if c.what == "raised" and c.alert.rule == "voltage-test"]
        patched["rules"] = [r for r in patched["rules"] if r["id"] != "old-test"]   # removed from the site file
        second, seen2 = await run_once(parse_site(patched, base_dir=tmp_path),
                                       lambda gw, seen: gw.rules is not None and gw.rules.handled >= 8)
    # voltage-test is not raised again; the restored alert itself may be updated when a reading is
    # higher than its value (the threshold rule's "worse" update: it depends on the simulator's noise)
    assert [(c.what, c.alert.rule, c.alert.details.get("cleared_because")) for c in seen2 if c.what != "updated"] == \
        [("cleared", "old-test", "rule removed from the site file")]
    assert all(c.alert.id == raised.id for c in seen2 if c.what == "updated")
    # revisions go on from the ledger's history: head office orders a restarted box's messages
    old_changes = [c.alert.revision for c in seen1 if c.alert.rule == "old-test"]
    assert old_changes == list(range(1, len(old_changes) + 1))
    (cleared,) = [c.alert for c in seen2 if c.what == "cleared"]
    assert cleared.revision == len(old_changes) + 1
    assert second.restored.alerts == 1 and second.restored.cleared == 1 and second.restored.counters == 2
    db = sqlite3.connect(tmp_path / "gw.db")
    assert sorted(db.execute("SELECT rule, state, id = ? FROM alerts", (raised.id,)).fetchall()) == \
        [("old-test", "cleared", 0), ("voltage-test", "active", 1)]
    async with aiomqtt.Client("127.0.0.1", broker.port) as c:         # a newcomer sees only what is open
        await c.subscribe("wanhu/alerts/#", qos=1)
        retained = []
        try:
            async with asyncio.timeout(1.0):
                async for m in c.messages:
                    retained.append(str(m.topic))
        except TimeoutError:
            pass
    assert retained == ["wanhu/alerts/voltage-test/B01-stair"]


# ---- replay: a recording that starts in the middle of a round --------------------------------

async def test_replay_starting_mid_round_reports_nothing_due_before_its_start(tmp_path):
    """patrol_night cut at 22:06: the 22:00 rounds were under way. Before this existed, the reads
    before the cut were reported missed (CP01, CP02 of north 22:00, CP15, CP16 of south 22:00)."""
    here = Path(__file__).resolve().parent / "scenarios"
    cut = datetime(2026, 11, 23, 22, 6, tzinfo=TZ).timestamp()
    lines = (here / "patrol_night.jsonl").read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    kept = [json.dumps(dict(header, t=cut))] + [x for x in lines[1:] if json.loads(x)["t"] >= cut]
    recording = tmp_path / "from-22-06.jsonl"
    recording.write_text("\n".join(kept) + "\n", encoding="utf-8")
    changes = await replay(load_site(here / "site.yaml"), recording, tail_s=30)
    got = {(c.alert.rule, c.alert.source): sorted((i["what"], i.get("checkpoint", ""))
                                                  for i in c.alert.details["issues"])
           for c in changes if c.what == "raised"}
    assert got == {("patrol-north", "north@2026-11-23T22:00"): [("missed", "CP07")],
                   ("patrol-south", "south@2026-11-24T00:00"): [("out_of_order", "CP19")],
                   ("patrol-perimeter", "perimeter@2026-11-24T02:00"): [("missed", "CP36")]}


def test_wand_round_alert_taken_back_is_not_judged_again_by_the_next_download(ledger):
    wandy = {"id": "pw", "kind": "patrol", "routes": ["wandy"], "readers": ["wand-1"], "settle_s": 30}
    before = Run(ledger, [wandy])
    before.tick(L(19, 59), L(20, 0), 60)
    got = L(21, 0)
    before.feed(checkin("wand-1", "CP11", L(20, 1), received=got, source="wand"),
                checkin("wand-1", "CP13", L(20, 9), received=got, source="wand"))     # CP12 skipped
    before.tick(L(21, 0, 30), L(21, 0, 30))
    assert issues(before.engine, "pw", "wandy@2025-01-15T20:00") == [("missed", "CP12")]
    after = Run(ledger, [wandy])
    after.restore(L(23, 0) + timedelta(days=1))                      # the download's reads are long gone
    after.feed(checkin("wand-1", "CP11", L(22, 1, day=16), received=L(23, 30, day=16), source="wand"))
    after.tick(L(23, 31, day=16), L(23, 31, day=16))
    assert issues(after.engine, "pw", "wandy@2025-01-15T20:00") == [("missed", "CP12")]   # as it was


def test_wand_rounds_that_ended_while_the_gateway_was_down_are_judged_at_the_next_download(ledger):
    """The wand was last downloaded at 20:30 (the 20:00 round, CP13 missed: raised, acknowledged);
    the gateway was down from 20:32 to 14:00 the next day (17.5 h). The next download (the wand's
    whole memory) judges every round since that download by the wand's times: 22:00 was not
    walked, 00:00 complete, 02:00 missed two points, 04:00, 06:00 and 10:00 not walked. The 20:00
    round is not judged again (its acknowledged alert is older than the 12 h the ledger's alerts
    are read back), nor is anything when the same reads come again after another restart (the
    driver remembers them only while it runs)."""
    wandy = {"id": "pw", "kind": "patrol", "routes": ["wandy"], "readers": ["wand-1"], "settle_s": 30}

    def reads(got):
        return [checkin("wand-1", cp, ts, received=got, source="wand") for cp, ts in (
            ("CP11", L(20, 0, 30)), ("CP12", L(20, 5, 10)),
            ("CP11", L(0, 1, day=16)), ("CP12", L(0, 5, 40, day=16)), ("CP13", L(0, 9, 50, day=16)),
            ("CP11", L(2, 0, 20, day=16)))]

    before = Run(ledger, [wandy])
    before.tick(L(19, 59), L(20, 0), 60)
    before.feed(*reads(L(20, 30))[:2])
    before.tick(L(20, 30), L(20, 31))
    a = before.engine.book.get("pw", "wandy@2025-01-15T20:00")
    assert issues(before.engine, "pw", a.source) == [("missed", "CP13")]
    before.engine.ack(a.id, "班长", "问过了", L(20, 32))
    before.tick(L(20, 32), L(20, 32))
    assert before.engine.active() == [] and open_rows(ledger) == []
    after = Run(ledger, [wandy])
    after.restore(L(14, 0, day=16))
    after.tick(L(14, 0, day=16), L(14, 4, day=16), 60)
    after.feed(*reads(L(14, 5, day=16)))
    after.tick(L(14, 5, day=16), L(14, 5, 30, day=16))
    got = {s: issues(after.engine, "pw", s) for _, _, s in after.rec.whats("raised")}
    assert got == {"wandy@2025-01-15T22:00": [("not_started", "")],
                   "wandy@2025-01-16T02:00": [("missed", "CP12"), ("missed", "CP13")],
                   "wandy@2025-01-16T04:00": [("not_started", "")],
                   "wandy@2025-01-16T06:00": [("not_started", "")],
                   "wandy@2025-01-16T10:00": [("not_started", "")]}
    assert len(after.rec.changes) == 5
    again = Run(ledger, [wandy])
    again.restore(L(14, 10, day=16))
    again.rec.clear()
    again.feed(*reads(L(14, 11, day=16)))                             # a driver restarted: all of them again
    again.tick(L(14, 11, day=16), L(14, 12, day=16))
    assert again.rec.changes == []
    assert len(again.engine.active()) == 5
