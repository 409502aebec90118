from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from gateway.rules.base import RouteInfo
from test_rules_support import checkin, engine, sec, site, status

TZ = ZoneInfo("Asia/Shanghai")
NORTH = {"id": "pn", "kind": "patrol", "routes": ["north"], "readers": ["pr-1"]}
WANDY = {"id": "pw", "kind": "patrol", "routes": ["wandy"], "readers": ["wand-1"], "settle_s": 30}


def L(h, m, s=0, day=15):
    return datetime(2025, 1, day, h, m, s, tzinfo=TZ)


def run(e, start, end, step=1):
    t = start
    while t <= end:
        e.tick(t)
        t += sec(step)


def issues(e, rule, source):
    a = e.book.get(rule, source)
    return sorted((i["what"], i.get("checkpoint", "")) for i in a.details["issues"]) if a else []


def test_schedule_in_site_time_crosses_midnight():
    e, _ = engine([NORTH])
    starts = e.by_id["pn"].starts_on("north", L(0, 0).date())
    assert [s.strftime("%H:%M") for s in starts] == ["06:00", "10:00", "14:00", "18:00", "20:00", "22:00",
                                                      "00:00", "02:00", "04:00"]
    assert starts[6] == L(0, 0, day=16)


def test_online_round_on_time_including_edges():
    e, rec = engine([NORTH])
    e.tick(L(21, 50))
    e.handle(checkin("pr-1", "CP01", L(22, 0)))
    e.handle(checkin("pr-1", "CP02", L(22, 4, 30)))
    e.handle(checkin("pr-1", "CP03", L(22, 11)))      # exactly +T: on time
    e.handle(checkin("pr-1", "CP04", L(22, 9)))       # exactly -T: on time, but recorded before CP03
    run(e, L(21, 50), L(22, 30), 10)
    assert issues(e, "pn", "north@2025-01-15T22:00") == [("out_of_order", "CP03")]


def test_perfect_round_raises_nothing():
    e, rec = engine([NORTH])
    e.tick(L(21, 50))
    for k, m in enumerate((0, 4, 8, 12)):
        e.handle(checkin("pr-1", f"CP0{k + 1}", L(22, m, 20)))
    run(e, L(21, 50), L(23, 0), 10)
    assert rec.changes == []


def test_late_early_missed_then_late_read_and_out_of_order():
    e, rec = engine([NORTH])
    e.tick(L(21, 59))
    e.handle(checkin("pr-1", "CP01", L(22, 0)))
    e.handle(checkin("pr-1", "CP02", L(22, 7, 1)))    # +3 min 1 s: late
    e.tick(L(22, 9))
    e.handle(checkin("pr-1", "CP04", L(22, 8, 59)))   # -3 min 1 s: early
    e.tick(L(22, 11))                                 # CP03 deadline exactly: not yet missed
    src = "north@2025-01-15T22:00"
    assert issues(e, "pn", src) == [("early", "CP04"), ("late", "CP02")]
    e.tick(L(22, 11, 1))
    assert issues(e, "pn", src) == [("early", "CP04"), ("late", "CP02"), ("missed", "CP03")]
    a = e.book.get("pn", src)
    assert a.message == "北环线 22:00 巡更：迟到 2号巡更点（+3 分钟）；漏点 3号巡更点；早到 4号巡更点（-3 分钟）"
    e.handle(checkin("pr-1", "CP03", L(22, 11, 30)))  # read after all: late, and out of order
    assert issues(e, "pn", src) == [("early", "CP04"), ("late", "CP02"), ("late", "CP03"),
                                    ("out_of_order", "CP03")]
    assert [w for w, *_ in rec.whats()] == ["raised", "updated", "updated", "updated"]
    e.ack(a.id, "班长", "已问过", L(22, 30))
    assert e.book.get("pn", src) is None               # latching: the ack closes it


def test_not_started_is_one_issue_not_one_per_checkpoint():
    e, rec = engine([NORTH])
    run(e, L(21, 59), L(22, 3), 60)
    assert rec.changes == []
    e.tick(L(22, 3, 1))
    run(e, L(22, 3, 1), L(22, 40), 10)
    assert issues(e, "pn", "north@2025-01-15T22:00") == [("not_started", "")]
    assert e.book.get("pn", "north@2025-01-15T22:00").message == "北环线 22:00 巡更：未开始"
    assert len(e.active()) == 1


def test_silent_reader_while_others_report_is_reader_alert():
    e, rec = engine([NORTH])
    run(e, L(21, 59), L(22, 5), 10)
    e.handle(checkin("pr-2", "CP15", L(22, 5)))       # another route's reader is alive
    run(e, L(22, 5), L(22, 20), 10)
    assert e.book.get("pn", "north@2025-01-15T22:00") is None
    a = e.book.get("pn", "pr-1")
    assert a is not None and a.details["what"] == "reader_silent" and "疑似离线" in a.message


def test_reader_reported_offline_suppresses_round_issues():
    e, rec = engine([NORTH])
    e.tick(L(21, 0))
    e.handle(status("pr-1", "reader", False, L(21, 30), "no heartbeat"))
    run(e, L(21, 30), L(23, 0), 30)
    assert [a.source for a in e.active()] == ["pr-1"]
    assert e.book.get("pn", "pr-1").message == "巡更机 pr-1 离线（no heartbeat）"
    e.handle(status("pr-1", "reader", True, L(23, 0)))
    assert e.active() == []


def test_round_at_midnight_local_is_a_utc_afternoon():
    e, rec = engine([NORTH])
    e.tick(L(23, 50))
    e.handle(checkin("pr-1", "CP01", L(23, 59, 30)))  # belongs to the 00:00 round of the 16th
    e.handle(checkin("pr-1", "CP02", L(0, 4, day=16)))
    e.handle(checkin("pr-1", "CP03", L(0, 8, day=16)))
    e.handle(checkin("pr-1", "CP04", L(0, 16, day=16)))   # +4: late
    run(e, L(23, 50), L(0, 30, day=16), 10)
    assert L(0, 0, day=16).astimezone(ZoneInfo("UTC")).hour == 16
    assert issues(e, "pn", "north@2025-01-16T00:00") == [("late", "CP04")]
    assert e.book.get("pn", "north@2025-01-15T22:00") is None


def test_wand_route_is_judged_only_after_a_download_by_recorded_times():
    e, rec = engine([WANDY])
    run(e, L(19, 59), L(23, 29), 30)
    assert rec.changes == []                          # no verdict without a download
    got = L(23, 30)
    e.handle(checkin("wand-1", "CP11", L(20, 1), received=got, source="wand"))
    e.handle(checkin("wand-1", "CP13", L(20, 9), received=got, source="wand"))   # CP12 skipped
    run(e, L(23, 30), L(23, 30, 29), 1)
    assert rec.changes == []                          # settle: the batch may still be streaming in
    e.tick(L(23, 30, 30))
    assert issues(e, "pw", "wandy@2025-01-15T20:00") == [("missed", "CP12")]
    assert issues(e, "pw", "wandy@2025-01-15T22:00") == [("not_started", "")]
    assert e.book.get("pw", "wandy@2025-01-15T20:00").raised_at == L(23, 30, 30)
    n = len(rec.changes)
    run(e, L(23, 31), L(0, 30, day=16), 60)           # the 00:00 round waits for the next download
    assert len(rec.changes) == n


def test_wand_download_during_a_round_does_not_judge_it():
    e, rec = engine([WANDY])
    e.tick(L(19, 59))
    e.handle(checkin("wand-1", "CP11", L(20, 0), received=L(20, 5), source="wand"))
    run(e, L(20, 5), L(20, 40), 10)
    assert rec.changes == []                          # the 20:00 round ends 20:13: download was inside it
    e.handle(checkin("wand-1", "CP12", L(20, 5), received=L(21, 0), source="wand"))
    e.handle(checkin("wand-1", "CP13", L(20, 10), received=L(21, 0), source="wand"))
    e.tick(L(21, 0, 30))
    assert rec.changes == []                          # complete and on time: no alert


def test_wand_not_downloaded_is_a_reader_alert_not_missed_points():
    e, rec = engine([WANDY | {"wand_wait_hours": 2}])
    run(e, L(19, 59), L(22, 13), 60)
    assert rec.changes == []
    e.tick(L(22, 13, 1))                              # 20:00 round ended 20:13 + 2 h
    a = e.book.get("pw", "wand-1")
    assert a.details["what"] == "not_downloaded" and "未下载" in a.message
    assert len(e.active()) == 1
    e.handle(checkin("wand-1", "CP11", L(20, 1), received=L(22, 30), source="wand"))
    e.tick(L(22, 31))
    assert e.book.get("pw", "wand-1") is None
    assert issues(e, "pw", "wandy@2025-01-15T20:00") == [("missed", "CP12"), ("missed", "CP13")]


def test_acknowledged_round_is_not_raised_again_for_the_same_issues():
    e, rec = engine([NORTH])
    e.tick(L(21, 59))
    e.handle(checkin("pr-1", "CP01", L(22, 0)))
    run(e, L(22, 0), L(22, 7, 10), 10)                # CP02 missed at 22:07:01
    a = e.book.get("pn", "north@2025-01-15T22:00")
    e.ack(a.id, "班长", "知道了", L(22, 7, 20))
    e.handle(checkin("pr-1", "CP03", L(22, 8, 0)))
    run(e, L(22, 7, 20), L(22, 14, 50), 10)
    assert [w for w, *_ in rec.whats()] == ["raised", "acknowledged", "cleared"]   # latched, said, done
    run(e, L(22, 15), L(22, 16), 10)                  # a new issue: CP04 missed, a new alert with both
    assert [w for w, *_ in rec.whats()] == ["raised", "acknowledged", "cleared", "raised"]
    assert issues(e, "pn", "north@2025-01-15T22:00") == [("missed", "CP02"), ("missed", "CP04")]


def test_round_under_way_when_the_engine_starts_judges_only_what_it_saw():
    e, rec = engine([NORTH])
    run(e, L(22, 6, 20), L(22, 8, 0))                 # first tick mid-round (a restart, a replay's start)
    e.handle(checkin("pr-1", "CP03", L(22, 8, 10)))
    run(e, L(22, 8, 10), L(22, 30), 5)
    assert issues(e, "pn", "north@2025-01-15T22:00") == [("missed", "CP04")]   # CP01, CP02: unknown
    run(e, L(23, 59), L(0, 20, day=16), 10)           # the next rounds are judged whole
    assert issues(e, "pn", "north@2025-01-16T00:00") == [("not_started", "")]


# ---- wand downloads: which rounds they judge ------------------------------------------------
# A short wand route: 3 checkpoints, 1-minute legs, 1-minute tolerance, a round every 20 min
# from 13:31 (so a round ends 3 min after it starts).
SHORT = {"id": "ps", "kind": "patrol", "routes": ["short"], "readers": ["wand-1"], "settle_s": 30}


def short_site():
    s = site()
    s.routes["short"] = RouteInfo("short", "短线", ("CP11", "CP12", "CP13"), (1.0, 1.0), 1.0,
                                  (("13:31", "16:00", 20),))
    return s


def download(e, got, *reads):
    for cp, ts in reads:
        e.handle(checkin("wand-1", cp, ts, received=got, source="wand"))


def raised(rec):
    return sorted(s for w, _, s in rec.whats("raised"))


def test_wand_rounds_that_ended_before_the_first_tick_are_judged_by_the_download():
    """The gateway starts at 14:21; the wand holds the 13:31 round (complete) and the 13:51 round
    (CP13 skipped), nothing after: the 14:11 round, over before the start, was not walked."""
    e, rec = engine([SHORT], short_site())
    run(e, L(14, 21), L(14, 24), 60)
    download(e, L(14, 25), ("CP11", L(13, 31, 10)), ("CP12", L(13, 32, 5)), ("CP13", L(13, 33)),
             ("CP11", L(13, 51, 20)), ("CP12", L(13, 52, 10)))
    run(e, L(14, 25), L(14, 26), 1)
    assert raised(rec) == ["short@2025-01-15T13:51", "short@2025-01-15T14:11"]
    assert issues(e, "ps", "short@2025-01-15T13:51") == [("missed", "CP13")]
    assert issues(e, "ps", "short@2025-01-15T14:11") == [("not_started", "")]
    n = len(rec.changes)
    run(e, L(14, 26), L(15, 0), 60)                   # 14:31 ended after the download: the next one judges it
    assert len(rec.changes) == n
    # the same reads again (a driver that lost its memory of them, after a restart): nothing new
    download(e, L(15, 0, 30), ("CP11", L(13, 31, 10)), ("CP12", L(13, 32, 5)), ("CP13", L(13, 33)),
             ("CP11", L(13, 51, 20)), ("CP12", L(13, 52, 10)))
    run(e, L(15, 0, 30), L(15, 1, 30), 1)
    assert raised(rec) == ["short@2025-01-15T13:51", "short@2025-01-15T14:11",
                           "short@2025-01-15T14:31", "short@2025-01-15T14:51"]   # ended since: not walked
    assert len(rec.changes) == n + 2


def test_wand_download_does_not_report_rounds_older_than_the_look_back():
    """Running since 13:00 of the 15th, the wand first downloaded at 15:35 of the 16th (default
    look-back 24 h): the rounds of the 15th that ended before 15:35 are not reported, not even
    the 13:31 one, which has a read (and would be missing two points)."""
    e, rec = engine([SHORT], short_site())
    run(e, L(13, 0), L(15, 35, day=16), 60)
    rec.clear()                                       # the wand-not-downloaded alarm (12 h) is not looked at here
    download(e, L(15, 35, 30, day=16), ("CP11", L(13, 31, 10)),
             ("CP11", L(13, 31, 10, day=16)), ("CP12", L(13, 32, 5, day=16)), ("CP13", L(13, 33, day=16)))
    run(e, L(15, 35, 30, day=16), L(15, 36, 30, day=16), 1)
    got = raised(rec)
    assert got == ["short@2025-01-15T15:51"] + [f"short@2025-01-16T{t}" for t in
                                                ("13:51", "14:11", "14:31", "14:51", "15:11", "15:31")]
    assert all(issues(e, "ps", s) == [("not_started", "")] for s in got)
    assert e.book.get("ps", "wand-1") is None         # the download cleared the alarm


def test_downloading_a_read_older_than_the_wait_raises_no_stale_wand_alarm():
    """wand_wait_hours is 12: a download whose read is 13.5 h old is contact with the wand; before,
    the read's round counted as 'not downloaded for 12 h' until the download was judged 30 s
    later, so the alarm was raised and cleared (both sent to the WeCom group)."""
    e, rec = engine([WANDY])
    run(e, L(19, 59), L(20, 29), 60)
    download(e, L(20, 30), ("CP11", L(7, 1)))
    run(e, L(20, 30), L(21, 30), 1)
    assert [c[:3] for c in rec.changes if c[2] == "wand-1"] == []      # never raised, so never cleared
    assert issues(e, "pw", "wandy@2025-01-15T06:00") == [("late", "CP11"), ("missed", "CP12"),
                                                        ("missed", "CP13")]
