from test_rules_support import T0, engine, reading, sec, status

OFF = {"id": "off", "kind": "offline", "periods": 3}


def feed_all(e, t, skip=()):
    for m in e.site.meters:
        if m not in skip:
            e.handle(reading(m, t, voltage_v=220))


def test_one_dead_meter_after_periods_and_settle():
    e, rec = engine([OFF])
    for k in range(20):                      # every 30 s, A01 stops after the first poll
        t = T0 + sec(30 * k)
        feed_all(e, t, skip=("A01",) if k else ())
        e.tick(t)
    # A01 last read at T0, stale at T0+90, alert after one more period (settle) at T0+120
    a = e.book.get("off", "A01")
    assert a is not None and a.raised_at == T0 + sec(120)
    assert "1号楼楼道照明 电表无数据" in a.message
    assert [x.source for x in e.active()] == ["A01"]
    e.handle(reading("A01", T0 + sec(700), voltage_v=220))
    assert e.book.get("off", "A01") is None and rec.whats()[-1] == ("cleared", "off", "A01")


def test_stale_not_before_exactly_n_periods():
    e, rec = engine([OFF | {"settle_periods": 0, "meters": ["A01"]}])
    e.handle(reading("A01", T0, voltage_v=220))
    e.tick(T0 + sec(89.999))
    assert rec.changes == []
    e.tick(T0 + sec(90))
    assert rec.whats() == [("raised", "off", "A01")]


def test_dead_bus_is_one_alert_not_n_meter_alerts():
    e, rec = engine([OFF])
    feed_all(e, T0)
    for k in range(1, 20):
        t = T0 + sec(30 * k)
        feed_all(e, t, skip=("A01", "A02", "A03"))
        e.tick(t)
    assert [(w, s) for w, r, s in rec.whats()] == [("raised", "bus-a")]
    a = e.book.get("off", "bus-a")
    assert a.details["meters"] == ["A01", "A02", "A03"] and "总线 bus-a 故障" in a.message
    feed_all(e, T0 + sec(700), skip=("A01", "A02", "A03"))
    e.handle(reading("A02", T0 + sec(700), voltage_v=220))        # one meter answers: bus is alive
    assert e.book.get("off", "bus-a") is None
    e.tick(T0 + sec(701))
    # the others get a fresh period to answer after the bus is back (they are polled in turn) ...
    assert e.active() == []
    for k in range(24, 34):  # everything else keeps answering
        feed_all(e, T0 + sec(30 * k), skip=("A01", "A03"))
        e.tick(T0 + sec(30 * k))
    # ... and still silent after it: now they are meter alerts
    assert {x.source for x in e.active()} == {"A01", "A03"}


def test_meters_stale_one_by_one_then_bus_supersedes():
    e, rec = engine([OFF | {"settle_periods": 0}])
    feed_all(e, T0)
    feed_all(e, T0 + sec(20), skip=("A01", "A02", "A03"))
    e.handle(reading("A03", T0 + sec(40), voltage_v=220))
    feed_all(e, T0 + sec(80), skip=("A01", "A02", "A03"))
    e.tick(T0 + sec(90))          # A01, A02 stale; A03 not yet
    assert {x.source for x in e.active()} == {"A01", "A02"}
    feed_all(e, T0 + sec(125), skip=("A01", "A02", "A03"))
    e.tick(T0 + sec(130))         # A03 stale too: one bus alert, meter alerts cleared
    assert {x.source for x in e.active()} == {"bus-a"}
    cleared = [s for w, r, s in rec.whats("cleared")]
    assert sorted(cleared) == ["A01", "A02"]


def test_bus_reported_offline_raises_at_once_and_suppresses_meters():
    e, rec = engine([OFF])
    feed_all(e, T0)
    e.handle(status("bus-b", "bus", False, T0 + sec(5), "connection refused"))
    assert e.book.get("off", "bus-b").details["reason"] == "connection refused"
    for k in range(1, 20):
        e.tick(T0 + sec(30 * k))
        feed_all(e, T0 + sec(30 * k), skip=("B01", "B02", "B03"))
    assert {x.source for x in e.active()} == {"bus-b"}


def test_meter_reported_offline_by_driver():
    e, rec = engine([OFF])
    feed_all(e, T0)
    e.handle(status("A02", "meter", False, T0 + sec(10), "timeout"))
    feed_all(e, T0 + sec(30), skip=("A02",))
    e.tick(T0 + sec(30))
    assert e.book.get("off", "A02") is None            # settle: one period
    feed_all(e, T0 + sec(40), skip=("A02",))
    e.tick(T0 + sec(40))
    assert e.book.get("off", "A02").message.endswith("电表离线（自 01-15 12:00 起）")


def test_never_seen_meter_counts_from_engine_start():
    e, rec = engine([OFF | {"meters": ["A01"], "settle_periods": 0}])
    e.tick(T0)
    e.tick(T0 + sec(89))
    assert rec.changes == []
    e.tick(T0 + sec(90))
    assert rec.whats() == [("raised", "off", "A01")]
