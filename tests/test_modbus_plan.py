"""The request planner: fewest reads, never over the limits, every field covered once."""

import struct

import pytest
from hypothesis import given, strategies as st

from gateway.drivers.modbus_plan import line_time_s, plan_for_model, plan_requests
from gateway.meter_models import SHIPPED_MODELS_DIR, FieldSpec, load_models

MODELS, _ = load_models([SHIPPED_MODELS_DIR])


def f(name, address, type_="float32", function=3):
    return FieldSpec(name, address, function, type_, "ABCD", 1.0, 0.0, "", False)


@pytest.mark.parametrize("model", ["chint-ddsu666", "chint-dtsu666"])
def test_chint_meters_need_two_requests(model):
    plan = plan_for_model(MODELS[model])
    assert len(plan) == 2
    assert {x.name for r in plan for x in r.fields} == {x.name for x in MODELS[model].fields}


def test_gap_and_limit_and_function_split():
    fields = [f("a", 0), f("b", 10), f("c", 100), f("d", 0, function=4)]
    plan = plan_requests(fields, max_registers=125, max_gap=8)
    assert [(r.function, r.address, r.count) for r in plan] == [(3, 0, 12), (3, 100, 2), (4, 0, 2)]
    plan = plan_requests(fields, max_registers=125, max_gap=100)
    assert [(r.function, r.address, r.count) for r in plan] == [(3, 0, 102), (4, 0, 2)]
    plan = plan_requests(fields, max_registers=50, max_gap=100)
    assert [(r.address, r.count) for r in plan if r.function == 3] == [(0, 12), (100, 2)]


fields_strategy = st.lists(
    st.builds(lambda a, t, fn: f(f"f{a}_{t}_{fn}", a, t, fn), st.integers(0, 600),
              st.sampled_from(["uint16", "float32", "uint64"]), st.sampled_from([3, 4])),
    min_size=1, max_size=40, unique_by=lambda x: x.name)


@given(fields_strategy, st.integers(4, 125), st.integers(0, 64))
def test_plan_covers_each_field_within_limits(fields, limit, gap):
    plan = plan_requests(fields, max_registers=limit, max_gap=gap)
    planned = [x.name for r in plan for x in r.fields]
    assert sorted(planned) == sorted(x.name for x in fields)
    for r in plan:
        assert 1 <= r.count <= min(limit, 125)
        for x in r.fields:
            assert x.function == r.function and r.address <= x.address and x.end <= r.address + r.count


def test_decode_reads_each_field_from_its_offset():
    fields = [f("voltage_v", 0x2000), f("freq_hz", 0x200E), f("n", 0x2010, "uint16")]
    (req,) = plan_requests(fields)
    regs = [0] * req.count
    regs[0:2] = struct.unpack(">2H", struct.pack(">f", 229.5))
    regs[14:16] = struct.unpack(">2H", struct.pack(">f", 50.0))
    regs[16] = 7
    values, counters = {}, {}
    assert req.decode(regs, values, counters) == []
    assert values == {"voltage_v": 229.5, "freq_hz": 50.0, "n": 7}


def test_nan_field_is_left_out():
    (req,) = plan_requests([f("pf", 0)])
    values = {}
    assert req.decode(list(struct.unpack(">2H", struct.pack(">f", float("nan")))), values, {}) == ["pf"]
    assert values == {}


def test_line_time_matches_the_domain_table():
    # shared/domain/meters.md: 9600 8N1, one read of 2 registers 25 ms, of 60 registers 146 ms.
    assert line_time_s(plan_requests([f("a", 0)]), 9600, 10) == pytest.approx(0.025, abs=0.0005)
    assert line_time_s(plan_requests([f("a", 0), f("b", 58)], max_gap=60), 9600, 10) == pytest.approx(0.146, abs=0.001)
    assert line_time_s(plan_requests([f("a", 0)]), 2400, 11) == pytest.approx(0.110, abs=0.001)
