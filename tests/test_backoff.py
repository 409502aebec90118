"""The shared back-off (gateway/backoff.py): doubling from the first wait, the cap, jitter
bounds, and a reset after success."""

from __future__ import annotations

import random

from hypothesis import given, strategies as st

from gateway.backoff import Backoff, backoff_delay

firsts = st.floats(0.01, 10.0, allow_nan=False)
caps = st.floats(1.0, 3600.0, allow_nan=False)
counts = st.integers(1, 10_000)


@given(firsts, caps, counts)
def test_a_wait_is_positive_and_never_above_the_cap(first, cap, n):
    assert 0 < backoff_delay(n, first, cap) <= cap


@given(firsts, caps, st.integers(1, 60))
def test_each_wait_doubles_the_last_until_the_cap(first, cap, n):
    assert backoff_delay(n + 1, first, cap) == min(cap, 2 * backoff_delay(n, first, cap))


@given(firsts, caps)
def test_the_first_wait_is_first_s_unless_the_cap_is_lower(first, cap):
    assert backoff_delay(1, first, cap) == min(first, cap)


@given(firsts, caps, counts, st.integers(0, 2**32 - 1))
def test_jitter_scales_a_wait_into_its_upper_half(first, cap, n, seed):
    b = Backoff(first, cap, jitter=random.Random(seed))
    plain = backoff_delay(n, first, cap)
    assert 0.5 * plain <= b.delay(n) <= plain


@given(firsts, caps, st.lists(st.booleans(), max_size=50))
def test_failures_count_up_and_a_success_starts_again(first, cap, outcomes):
    b = Backoff(first, cap)
    run = 0
    for ok in outcomes:
        if ok:
            b.reset()
            run = 0
        else:
            run += 1
            assert b.failed() == backoff_delay(run, first, cap)
        assert b.failures == run


@given(st.integers(1, 200), st.floats(1.0, 3600.0, allow_nan=False), st.floats(0.05, 3600.0, allow_nan=False))
def test_the_loops_keep_the_waits_they_had(n, cap, period):
    """Each retrying loop's wait before it used the helper (before jitter), from its old code."""
    doubled = 0.0
    for _ in range(n):
        doubled = min(cap, doubled * 2 or 0.5)     # bus reconnects, serial lines (first 0.5 s)
    assert Backoff(0.5, cap).delay(n) == doubled
    webhook = 0.0
    for _ in range(n):
        webhook = min(cap, webhook * 2 or 1.0)
    assert Backoff(1.0, cap).delay(n) == webhook
    assert backoff_delay(n, 1.0, cap) == min(cap, 0.5 * 2 ** min(n, 20))            # InfluxDB drainer
    assert backoff_delay(n, 0.5, cap) == min(cap, 0.5 * 2 ** max(0, n - 1))         # MQTT (backoff_min_s 0.5)
    assert backoff_delay(n, 2.0, cap) == min(cap, 2.0 ** min(n, 12))                # lighting read-back
    failures = n + 1                                                                # a silent meter's polls
    assert backoff_delay(failures - 1, period, cap) == min(cap, period * 2 ** (failures - 2))


def test_a_seeded_jitter_repeats():
    a, b = Backoff(0.5, 60.0, jitter=random.Random(7)), Backoff(0.5, 60.0, jitter=random.Random(7))
    assert [a.failed() for _ in range(10)] == [b.failed() for _ in range(10)]
