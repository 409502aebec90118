"""A simulated meter: values from a circuit profile, registers laid out by a meter model.

The register image is built with the model's own FieldSpec (`raw_for` + `encode_raw`), so a
simulated meter honours every type, scale and word order a model file can describe, and
`values()` returns exactly what a correct decoder makes of those registers.
"""

from __future__ import annotations

import math
import random
import time
from typing import Callable

from gateway.meter_models import HOLDING, INPUT, MAX_REGISTERS_PER_READ, FieldSpec, MeterModel

from .profiles import STEP_S, Profile

ILLEGAL_FUNCTION, ILLEGAL_ADDRESS, ILLEGAL_VALUE = 1, 2, 3

# Beyond this many power steps an advance of the clock is integrated with coarser samples,
# so jumping a fake clock by a month stays cheap (the counters stay monotonic either way).
_MAX_STEPS = 2000


class SimMeter:
    """One meter on a simulated line. Fault attributes may be changed at any time."""

    def __init__(self, model: MeterModel, unit: int, circuit: str, seed: int,
                 clock: Callable[[], float] = time.time, tz: str = "Asia/Shanghai", *,
                 latitude: float = 44.15, longitude: float = 125.83):
        self.model = model
        self.unit = unit
        self.circuit = circuit
        self.seed = seed
        self.clock = clock
        self.profile = Profile.for_circuit(circuit, seed, phases=model.phases, tz=tz,
                                           latitude=latitude, longitude=longitude)
        # faults
        self.dead = False
        self.delay_s = 0.0
        self.exception: int | None = None
        self.corrupt_crc = False
        self.lights_on_daytime = False
        # Whether the circuit is energised at a time (its contactor, simulators/relays.py): the
        # lighting circuits the gateway switches. None: the profile's own habits.
        self.feed: Callable[[float], bool] | None = None

        rng = random.Random(f"energy:{seed}")
        self._import_kwh = rng.uniform(1_000.0, 50_000.0)
        self._export_kwh = round(rng.uniform(0.0, 3.0), 2)  # public loads never export
        self._t = clock()
        self._functions = {f.function for f in model.fields}
        self._snap_key: tuple[float, bool] | None = None
        self._snap: dict[str, tuple[float, list[int]]] = {}

    # ---- energy ---------------------------------------------------------------------------

    def _power(self, t: float) -> float:
        if self.feed is not None:
            if not self.feed(t):
                return 0.0
            if self.circuit == "street_lighting":   # energised: lit, whatever the sun
                return self.profile.power_kw(t, lights_on_daytime=True)
        return self.profile.power_kw(t, lights_on_daytime=self.lights_on_daytime)

    def _advance(self, now: float) -> None:
        """Integrate power from the last instant seen to `now` (a clock going back adds nothing)."""
        t = self._t
        if now <= t:
            return
        kws = 0.0  # kW·s
        if (now - t) / STEP_S <= _MAX_STEPS:
            while t < now:
                end = min((math.floor(t / STEP_S) + 1) * STEP_S, now)
                kws += self._power(t) * (end - t)
                t = end
        else:
            dt = (now - t) / _MAX_STEPS
            kws = sum(self._power(t + (i + 0.5) * dt) for i in range(_MAX_STEPS)) * dt
        self._import_kwh += kws / 3600.0
        self._t = now

    # ---- what the meter shows ---------------------------------------------------------------

    def _engineering(self, now: float) -> dict[str, float]:
        self._advance(now)
        v = self.profile.electrical(now, self._power(now))
        v["energy_kwh"] = self._import_kwh
        v["export_energy_kwh"] = self._export_kwh
        v["total_energy_kwh"] = self._import_kwh + self._export_kwh
        if self.model.phases == 3:
            for i, share in enumerate(self.profile.shares, start=1):
                v[f"energy_l{i}_kwh"] = self._import_kwh * share
        return v

    def _value_for(self, f: FieldSpec, eng: dict[str, float]) -> float:
        if f.name in eng:
            return eng[f.name]
        if f.counter:  # a counter the profile does not know: export-like or import-like
            return self._export_kwh if "export" in f.name else self._import_kwh
        return 0.0

    def _snapshot(self) -> dict[str, tuple[float, list[int]]]:
        """field name -> (shown value, register words), computed once per clock reading."""
        now = self.clock()
        key = (now, self.lights_on_daytime, self.feed(now) if self.feed is not None else None)
        if key != self._snap_key:
            eng = self._engineering(now)
            snap = {}
            for f in self.model.fields:
                words = f.encode_raw(f.raw_for(self._value_for(f, eng)))
                wire = b"".join(w.to_bytes(2, "big") for w in words)
                snap[f.name] = (f.value(f.raw_from_bytes(wire)), words)
            self._snap, self._snap_key = snap, key
        return self._snap

    def values(self) -> dict[str, float]:
        """Current engineering values of every model field, as a correct decoder reads them."""
        return {name: shown for name, (shown, _) in self._snapshot().items()}

    def registers(self, function: int, address: int, count: int) -> list[int] | int:
        """Register words for a read, or a Modbus exception code."""
        if self.exception is not None:
            return self.exception
        if function not in (HOLDING, INPUT):
            return ILLEGAL_FUNCTION
        if not 1 <= count <= MAX_REGISTERS_PER_READ:
            return ILLEGAL_VALUE
        if function not in self._functions or address + count > 0x10000:
            return ILLEGAL_ADDRESS
        out = [0] * count
        end = address + count
        snap = self._snapshot()
        for f in self.model.fields:
            if f.function != function or f.end <= address or f.address >= end:
                continue
            for i, word in enumerate(snap[f.name][1]):
                if address <= f.address + i < end:
                    out[f.address + i - address] = word
        return out
