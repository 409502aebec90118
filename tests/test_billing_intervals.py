"""Interval consumption from counters: every adjustment flagged, totals exact, order-independent."""

from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.intervals import MeterLimits, Replaced, meter_intervals
from gateway.billing.tariffs import SLOT_US

TZ = ZoneInfo("Asia/Shanghai")
START = datetime(2026, 10, 1, tzinfo=TZ)
END = datetime(2026, 11, 1, tzinfo=TZ)
S_US = int(START.timestamp()) * 1_000_000
E_US = int(END.timestamp()) * 1_000_000
MIN = 60_000_000
D = Decimal


def limits(kw=10.0, wrap=None, gap_min=20):
    return MeterLimits(kw, D(wrap) if wrap is not None else None, D("0.01"), gap_min * MIN)


def us(day, hour=0, minute=0):
    return int(datetime(2026, 10, day, hour, minute, tzinfo=TZ).timestamp()) * 1_000_000


def kinds(iv):
    """The adjustments, without the month-boundary notes of a short test series."""
    return [n.kind for n in iv.notes if n.kind != "partial"]


def series(step_min=15, per_step="0.25", start=D("1000.00"), t0=S_US, t1=E_US):
    out, c, t = [], start, t0
    while t <= t1:
        out.append((t, c))
        c += D(per_step)
        t += step_min * MIN
    return out


def test_steady_meter_fills_every_slot_exactly():
    pts = series()
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert len(iv.kwh) == 31 * 96
    assert all(k == D("0.25") for k in iv.kwh)
    assert iv.total == pts[-1][1] - pts[0][1]
    assert iv.notes == [] and iv.estimated == set()
    assert iv.first_counter == D("1000.00") and iv.last_counter == pts[-1][1]


def test_readings_off_the_slot_grid_are_split_by_time():
    # one reading every 10 minutes starting at 00:05: the step 00:05-00:15 straddles nothing,
    # 00:15 ... every other step straddles a slot boundary and is shared by time
    pts = series(step_min=10, per_step="1.00", t0=S_US - 5 * MIN, t1=E_US + 10 * MIN)
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert iv.kwh[0] == D("1.5")            # 00:00-00:15: half of (23:55-00:05) + all of (00:05-00:15)
    assert iv.first_counter == D("1000.50")
    assert iv.total == iv.last_counter - iv.first_counter


def test_gap_is_interpolated_and_flagged():
    pts = [p for p in series(step_min=1, per_step="0.01", t1=us(3)) if not us(2, 1) < p[0] < us(2, 4)]
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert kinds(iv).count("gap") == 1
    gap = next(n for n in iv.notes if n.kind == "gap")
    assert gap.kwh == D("1.80") and iv.estimated_kwh == D("1.80")   # 3 h at 0.6 kWh/h
    assert len(iv.estimated) == 12                                   # 12 quarter hours
    assert iv.total == pts[-1][1] - pts[0][1]


def test_rollover_at_the_counter_maximum():
    pts = [(us(5, 0), D("99990.00")), (us(5, 0, 15), D("99999.50")), (us(5, 0, 30), D("4.50"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(kw=40, wrap="100000"), TZ)
    assert kinds(iv) == ["rollover"]
    assert iv.total == D("14.50")


def test_drop_without_counter_maximum_is_not_negative_consumption():
    pts = [(us(5, 0), D("500.00")), (us(5, 0, 15), D("501.00")), (us(5, 0, 30), D("2.00")),
           (us(5, 0, 45), D("502.00"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert kinds(iv).count("rejected_low") == 1
    assert iv.total == D("2.00")


def test_recorded_replacement_bridges_the_counters():
    at = us(15, 10)
    pts = [(us(15, 9, 45), D("8000.00")), (us(15, 10, 15), D("0.40")), (us(15, 10, 30), D("0.90"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ, [Replaced(at, D("8000.30"), D("0.00"))])
    assert kinds(iv).count("replacement") == 1
    assert iv.total == D("0.30") + D("0.90")
    assert "rejected_low" not in kinds(iv) and "restarted" not in kinds(iv)


def test_unrecorded_replacement_restarts_with_a_flag():
    pts = [(us(15, 9, 45), D("8000.00")), (us(15, 10, 15), D("0.40")), (us(15, 10, 30), D("0.90")),
           (us(15, 10, 45), D("1.20")), (us(15, 11), D("1.50"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert kinds(iv) == ["restarted"]
    note = iv.notes[0]
    assert note.kwh is None and "gateway meters replace" in note.detail
    assert iv.total == D("1.10")            # from the first agreeing reading on


def test_impossible_spike_is_rejected():
    pts = series(step_min=1, per_step="0.01", t0=us(20), t1=us(20, 1))
    pts[30] = (pts[30][0], pts[30][1] + 5000)
    iv = meter_intervals("M", pts, S_US, E_US, limits(kw=4), TZ)
    assert kinds(iv).count("rejected_spike") == 1
    assert iv.total == pts[-1][1] - pts[0][1]


def test_jitter_within_resolution_is_ignored_and_counted():
    pts = [(us(3), D("10.00")), (us(3, 0, 15), D("10.50")), (us(3, 0, 30), D("10.49")), (us(3, 0, 45), D("11.00"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(), TZ)
    assert kinds(iv) == ["ignored_jitter"]
    assert iv.total == D("1.00")


def test_no_readings_and_partial_month_are_flagged():
    assert kinds(meter_intervals("M", [], S_US, E_US, limits(), TZ)) == ["no_data"]
    iv = meter_intervals("M", series(t0=us(10), t1=us(20)), S_US, E_US, limits(), TZ)
    assert [n.kind for n in iv.notes] == ["partial", "partial"]
    assert iv.first_counter is None and iv.last_counter is None


def test_boundary_readings_outside_the_month_are_interpolated():
    pts = [(S_US - 30 * MIN, D("100.00")), (S_US + 30 * MIN, D("101.00")),
           (E_US - 30 * MIN, D("200.00")), (E_US + 30 * MIN, D("201.00"))]
    iv = meter_intervals("M", pts, S_US, E_US, limits(kw=100, gap_min=24 * 60 * 40), TZ)
    assert iv.first_counter == D("100.50") and iv.last_counter == D("200.50")
    assert iv.total == D("100.00")


@st.composite
def meter_history(draw):
    """Readings inside the month with random spacing and use, some rollovers and replacements."""
    n = draw(st.integers(2, 120))
    t = S_US + draw(st.integers(0, 86_400)) * 1_000_000
    c = D(draw(st.integers(0, 99_000_00))) / 100
    wrap = D("100000")
    pts, reps, expected = [(t, c)], [], D(0)
    for _ in range(n):
        dt = draw(st.integers(1, 6 * 3600)) * 1_000_000
        if t + dt >= E_US:
            break
        use = D(draw(st.integers(0, 10 * dt // 36_000_000_000))) / 100   # plausible at 10 kW
        if draw(st.integers(0, 20)) == 0:                  # a recorded replacement inside the step
            at = t + dt // 2
            old = c + use / 2
            new = D(draw(st.integers(0, 5000))) / 100
            reps.append(Replaced(at, old, new))
            expected += (old - c) + (use - use / 2)
            c = new + (use - use / 2)
        else:
            expected += use
            c = c + use
            if c >= wrap:
                c -= wrap
        t += dt
        pts.append((t, c))
    return pts, reps, expected


@settings(max_examples=150, deadline=None)
@given(meter_history(), st.randoms(use_true_random=False))
def test_month_equals_counter_difference_plus_rollovers_and_replacements(history, rnd):
    pts, reps, expected = history
    lim = MeterLimits(10.0, D("100000"), D("0.01"), 24 * 3600 * 1_000_000)
    iv = meter_intervals("M", pts, S_US, E_US, lim, TZ, reps)
    assert iv.total == expected
    shuffled = list(pts)
    rnd.shuffle(shuffled)
    again = meter_intervals("M", shuffled, S_US, E_US, lim, TZ, list(reversed(reps)))
    assert again.kwh == iv.kwh and [n.kind for n in again.notes] == [n.kind for n in iv.notes]


def test_slots_are_quarter_hours_of_local_time():
    assert SLOT_US == 15 * MIN
    assert datetime.fromtimestamp(S_US / 1e6, timezone.utc).astimezone(TZ).hour == 0
    assert (E_US - S_US) // SLOT_US == 2976
