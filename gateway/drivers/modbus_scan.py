"""Find the meters on a bus: probe unit ids, then name the model whose registers make sense.

Any Modbus device answers a read (with data or with an exception), so one short probe per
unit id finds who is there; only those are then read with every known model's plan, and the
model whose fields decode to plausible electrical values is named.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..config import ModbusRtuBus, ModbusTcpBus
from ..meter_models import MeterModel
from .modbus import BusDown, ExceptionReply, ModbusBus, PollError
from .modbus_plan import ReadRequest, plan_for_model

PROBE = ReadRequest(3, 0, 1, ())

# (field name test, lowest, highest): what a working public-area meter can show.
PLAUSIBLE = [
    (lambda n: n.startswith("voltage_l") and n.count("_l") == 2, 300.0, 480.0),  # line-to-line
    (lambda n: n.startswith("voltage"), 80.0, 300.0),
    (lambda n: n == "freq_hz", 45.0, 65.0),
    (lambda n: n.startswith("pf"), -1.0, 1.0),
    (lambda n: n.startswith("current"), 0.0, 2000.0),
    (lambda n: n.startswith("power") or n.endswith("_kvar") or n.endswith("_kva"), -2000.0, 2000.0),
    (lambda n: n.endswith("_kwh"), 0.0, 1e9),
]


def plausibility(values: dict[str, float], model: MeterModel) -> float:
    """Share of the model's key fields whose values are physically plausible (0..1).

    Voltage and frequency must be non-zero: a block of zeros decodes "plausibly" for any model.
    """
    judged = ok = 0
    for f in model.fields:
        for test, lo, hi in PLAUSIBLE:
            if test(f.name):
                judged += 1
                v = values.get(f.name)
                if v is not None and math.isfinite(v) and lo <= v <= hi:
                    ok += 1
                break
    if not any(values.get(n) for n in ("freq_hz", "voltage_v", "voltage_l1_v")):
        return 0.0
    return ok / judged if judged else 0.0


@dataclass
class Found:
    unit: int
    model: str | None
    score: float
    values: dict[str, float] = field(default_factory=dict)
    note: str = ""


async def scan(bus_cfg: ModbusTcpBus | ModbusRtuBus, units: range, models: dict[str, MeterModel],
               probe_timeout: float, read_timeout: float, progress=None) -> list[Found]:
    bus = ModbusBus(bus_cfg, [], lambda e: None)
    found: list[Found] = []
    try:
        for unit in units:
            if progress:
                progress(unit)
            try:
                await bus.read_registers(unit, PROBE, probe_timeout)
            except ExceptionReply:
                pass  # it answered: someone is there
            except BusDown:
                raise
            except PollError:
                continue
            found.append(await _identify(bus, unit, models, read_timeout))
    finally:
        await bus.close()
    return found


async def _identify(bus: ModbusBus, unit: int, models: dict[str, MeterModel], timeout: float) -> Found:
    best = Found(unit, None, 0.0, note="answers, but no known model decodes to plausible values")
    for model in models.values():
        values: dict[str, float] = {}
        try:
            for req in plan_for_model(model):
                req.decode(await bus.read_registers(unit, req, timeout), values, {})
        except PollError:
            continue
        score = plausibility(values, model)
        if score > best.score:
            best = Found(unit, model.id, score, values)
    if best.model and best.score < 0.8:
        best.note = f"closest model {best.model} fits only {best.score:.0%} of its fields"
        best.model = None
    return best
