"""A run's points read back from their line-protocol text (gateway/billing/points.py): the series
a point belongs to, its fields and time, and the zero point that overwrites it."""

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.billing.points import (PRIORITY_ALLOCATION, PRIORITY_INTERVAL, measurement_of, outbox_row, series_key,
                                    split_line, state_row, zero_row)
from gateway.sinks.lineprotocol import Unwritable, line, series

# Names and values as a site file may give them: anything but what line() refuses.
text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), min_size=1,
               max_size=12)
value = st.one_of(st.decimals(allow_nan=False, allow_infinity=False, places=4, min_value=-10**9, max_value=10**9),
                  st.integers(-10**12, 10**12), st.booleans(), text,
                  st.floats(allow_nan=False, allow_infinity=False, width=64))


def written(measurement, tags, fields, ts):
    try:
        return line(measurement, tags, fields, ts)
    except Unwritable:
        return None


@settings(max_examples=400, deadline=None)
@given(measurement=text, tags=st.dictionaries(text, text, max_size=4),
       fields=st.dictionaries(text.filter(lambda k: not k.startswith(("\t", "\0"))), value, min_size=1, max_size=5),
       ts=st.integers(0, 2**53))
def test_a_line_is_read_back_as_written(measurement, tags, fields, ts):
    text_line = written(measurement, tags, fields, ts)
    if text_line is None:
        return
    key, got, at = split_line(text_line)
    assert key == series(measurement, tuple(tags.items())) == series_key(text_line)
    assert measurement_of(text_line) == measurement
    assert at == ts
    assert len(got) == len(fields)
    # the zero point: same series and time, every number 0, every flag false, text left alone
    z = zero_row(text_line)
    kinds = [type(v) for v in fields.values()]
    if all(k is str for k in kinds):
        assert z is None
        return
    _, _, z_ts, z_line, _ = z
    z_key, z_fields, z_at = split_line(z_line)
    assert (z_key, z_at, z_ts) == (key, ts, ts)
    values = [v for _, v in z_fields]
    assert len(values) == sum(k is not str for k in kinds)
    assert set(values) <= {"0", "0i", "false"}


def test_the_points_of_a_month():
    interval = line("energy_interval", {"site": "w", "meter": "B01 stair,1", "building": "B01", "circuit": "lift",
                                        "group": "lift-B01"},
                    {"kwh": Decimal("0.2500"), "estimated": True, "period": 'pe"ak, x'}, 1790000000000)
    row = outbox_row(interval)
    assert row == ("energy_interval", PRIORITY_INTERVAL, 1790000000000, interval, None)
    assert zero_row(interval)[3] == ("energy_interval,building=B01,circuit=lift,group=lift-B01,"
                                     "meter=B01\\ stair\\,1,site=w kwh=0,estimated=false 1790000000000")
    household = line("allocation", {"site": "w", "month": "2026-10", "level": "household", "household": "B01-1-101"},
                     {"amount": Decimal("3.50"), "area_m2": Decimal("56.90"), "households": 3}, 1790000000000)
    assert zero_row(household)[3].endswith(" amount=0,area_m2=0,households=0i 1790000000000")
    assert outbox_row(household)[:2] == ("allocation", PRIORITY_ALLOCATION)
    state = state_row("w", "2026-10", 1790000000000, 7, "approved")
    assert state[3] == 'allocation_run,month=2026-10,site=w run=7i,approved=true,state="approved" 1790000000000'
