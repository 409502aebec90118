from datetime import timedelta

import pytest

from gateway.rules.alerts import AlertBook
from test_rules_support import T0, Rec, sec


def book():
    rec = Rec()
    return AlertBook(rec), rec


def test_raise_dedupes_per_rule_and_source():
    b, rec = book()
    a1 = b.raise_("r", "m1", kind="threshold", severity="warning", at=T0, message="x", value=1.0)
    a2 = b.raise_("r", "m1", kind="threshold", severity="warning", at=T0 + sec(1), message="y", value=2.0)
    b.raise_("r", "m1", kind="threshold", severity="warning", at=T0 + sec(2), message="y", value=2.0)  # no change
    b.raise_("r", "m2", kind="threshold", severity="warning", at=T0, message="x")
    b.raise_("r2", "m1", kind="threshold", severity="warning", at=T0, message="x")
    assert a1 is a2 and a1.message == "y" and a1.updated_at == T0 + sec(1) and a1.raised_at == T0
    assert [w for w, *_ in rec.changes] == ["raised", "updated", "raised", "raised"]
    assert len(b.active()) == 3


def test_lifecycle_ack_then_clear_and_new_alert_after_clear():
    b, rec = book()
    a = b.raise_("r", "d", kind="door", severity="critical", at=T0, message="门被强行打开")
    assert b.ack(a.id, "王保安", "去看了", T0 + sec(30)).state == "acknowledged"
    assert a.acked_by == "王保安" and a.ack_note == "去看了"
    assert b.ack(a.id, "x", "", T0 + sec(31)) is a           # second ack: no new change
    c = b.clear("r", "d", T0 + sec(60), "closed")
    assert c.state == "cleared" and c.cleared_at == T0 + sec(60) and c.details["cleared_because"] == "closed"
    assert b.clear("r", "d", T0 + sec(61)) is None
    assert b.ack(a.id, "x", "", T0 + sec(62)) is None
    a2 = b.raise_("r", "d", kind="door", severity="critical", at=T0 + sec(70), message="again")
    assert a2.id != a.id and a2.state == "active"
    assert [w for w, *_ in rec.changes] == ["raised", "acknowledged", "cleared", "raised"]


def test_renotify_only_unacknowledged_critical():
    b, rec = book()
    crit = b.raise_("r", "a", kind="k", severity="critical", at=T0, message="m")
    b.raise_("r", "b", kind="k", severity="warning", at=T0, message="m")
    assert b.due_renotify(T0 + timedelta(minutes=14, seconds=59)) == []
    assert b.due_renotify(T0 + timedelta(minutes=15)) == [crit]          # exactly at the interval
    assert b.due_renotify(T0 + timedelta(minutes=16)) == []
    assert b.due_renotify(T0 + timedelta(minutes=30)) == [crit]
    b.ack(crit.id, "x", "", T0 + timedelta(minutes=31))
    assert b.due_renotify(T0 + timedelta(hours=5)) == []
    assert rec.whats("renotify") == [("renotify", "r", "a")] * 2


def test_latching_alert_clears_on_ack():
    b, _ = book()
    a = b.raise_("p", "north", kind="patrol", severity="warning", at=T0, message="漏点", latching=True)
    b.ack(a.id, "班长", "已核实", T0 + sec(5))
    assert a.state == "cleared" and b.active() == []


def test_bad_severity_refused():
    b, _ = book()
    with pytest.raises(ValueError):
        b.raise_("r", "s", kind="k", severity="fatal", at=T0, message="m")
