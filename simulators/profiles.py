"""Realistic electrical values per circuit kind, following the day in the site's local time.

Everything is a pure function of (seed, time): noise comes from hashing the seed with the
time step instead of from a stateful random generator, so the same meter shows the same values
at the same instant however often (or rarely) it is read.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.config import CIRCUITS

STEP_S = 10.0  # power is constant over each 10 s step (about one lift trip)
NOMINAL_V = 220.0
SQRT3 = math.sqrt(3.0)

_MASK = (1 << 64) - 1


def noise(*keys: int) -> float:
    """A reproducible value in [-1, 1) for the integer `keys` (splitmix64 over them)."""
    x = 0x9E3779B97F4A7C15
    for k in keys:
        x = (x ^ (k & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        x = (x ^ (x >> 31)) * 0x94D049BB133111EB & _MASK
        x ^= x >> 29
    return (x >> 11) / float(1 << 52) - 1.0


def _bump(hour: float, center: float, width: float) -> float:
    """A daily peak around `center` (hours), wrapping over midnight."""
    d = (hour - center + 12.0) % 24.0 - 12.0
    return math.exp(-0.5 * (d / width) ** 2)


def sun_hours(day_of_year: int, latitude: float, longitude: float, utc_offset_h: float) -> tuple[float, float]:
    """(sunrise, sunset) in local clock hours; ignores the equation of time (±15 min)."""
    decl = math.radians(-23.44 * math.cos(2 * math.pi * (day_of_year + 10) / 365.0))
    cos_h = -math.tan(math.radians(latitude)) * math.tan(decl)
    half_day = math.degrees(math.acos(max(-1.0, min(1.0, cos_h)))) / 15.0
    noon = 12.0 - (longitude - 15.0 * utc_offset_h) / 15.0
    return noon - half_day, noon + half_day


# circuit -> (rated kW range, pf range); rated is the circuit's typical full draw.
_RATINGS: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "stairwell_lighting": ((0.3, 0.8), (0.90, 0.97)),
    "street_lighting": ((1.5, 4.0), (0.92, 0.98)),
    "lift": ((8.0, 15.0), (0.85, 0.90)),
    "pump": ((7.5, 22.0), (0.86, 0.91)),
    "gate": ((0.1, 0.3), (0.88, 0.95)),
    "main_supply": ((120.0, 145.0), (0.92, 0.97)),
    "other": ((0.5, 2.0), (0.88, 0.96)),
}


@dataclass(frozen=True, slots=True)
class Profile:
    """One meter's circuit: its size and habits, drawn once from the seed."""

    circuit: str
    phases: int
    seed: int
    rated_kw: float
    standby_kw: float
    pf: float
    voltage_v: float  # this meter's phase voltage at no load (feeder drop differs per building)
    shares: tuple[float, float, float]  # how the load splits over L1, L2, L3
    tz: ZoneInfo
    latitude: float
    longitude: float

    @classmethod
    def for_circuit(cls, circuit: str, seed: int, *, phases: int = 1, tz: str = "Asia/Shanghai",
                    latitude: float = 44.15, longitude: float = 125.83) -> Profile:
        if circuit not in CIRCUITS:
            raise ValueError(f"unknown circuit '{circuit}' (one of: {', '.join(CIRCUITS)})")
        rng = random.Random(seed)
        (lo, hi), (pf_lo, pf_hi) = _RATINGS[circuit]
        raw = [1.0 + rng.uniform(-0.06, 0.06) for _ in range(3)]
        return cls(
            circuit=circuit, phases=phases, seed=seed,
            rated_kw=rng.uniform(lo, hi),
            standby_kw=rng.uniform(0.3, 0.6) if circuit == "lift" else 0.0,
            pf=rng.uniform(pf_lo, pf_hi),
            voltage_v=NOMINAL_V * (1.0 + rng.uniform(-0.02, 0.03)),
            shares=tuple(r / sum(raw) for r in raw) if phases == 3 else (1.0, 0.0, 0.0),  # type: ignore[arg-type]
            tz=ZoneInfo(tz), latitude=latitude, longitude=longitude,
        )

    def _local(self, t: float) -> tuple[float, datetime]:
        local = datetime.fromtimestamp(t, self.tz)
        return local.hour + local.minute / 60.0 + local.second / 3600.0, local

    def is_dark(self, t: float) -> bool:
        """Street-light contactor state: on 15 min after sunset until 15 min before sunrise."""
        hour, local = self._local(t)
        offset = local.utcoffset()
        rise, set_ = sun_hours(local.timetuple().tm_yday, self.latitude, self.longitude,
                               offset.total_seconds() / 3600.0 if offset else 0.0)
        return hour >= set_ + 0.25 or hour < rise - 0.25

    def power_kw(self, t: float, *, lights_on_daytime: bool = False) -> float:
        """Total active power at unix time `t`; constant within each STEP_S step."""
        step = math.floor(t / STEP_S)
        t = step * STEP_S
        hour, _ = self._local(t)
        n = noise(self.seed, 1, step)
        r = self.rated_kw
        c = self.circuit
        if c == "street_lighting":
            on = lights_on_daytime or self.is_dark(t)
            return r * (1.0 + 0.02 * n) if on else 0.0
        if c == "stairwell_lighting":
            # motion-sensor lamps: a little by day, most in the evening, a morning blip
            shape = 0.08 + 0.9 * _bump(hour, 20.0, 1.8) + 0.15 * _bump(hour, 6.5, 0.7)
            return r * shape * (1.0 + 0.15 * n)
        if c == "lift":
            p_run = (0.02 + 0.35 * _bump(hour, 7.8, 0.8) + 0.30 * _bump(hour, 18.5, 1.2)
                     + 0.10 * _bump(hour, 12.0, 1.5) + 0.05 * _bump(hour, 15.0, 3.0))
            if (noise(self.seed, 2, step) + 1.0) / 2.0 < p_run:
                return self.standby_kw + r * (0.7 + 0.3 * n)
            return self.standby_kw * (1.0 + 0.05 * n)
        if c == "pump":
            shape = 0.55 + 0.30 * _bump(hour, 7.5, 1.5) + 0.30 * _bump(hour, 19.5, 2.0) \
                + 0.10 * _bump(hour, 13.0, 3.0)
            return r * min(shape, 1.0) * (1.0 + 0.03 * n)
        if c == "gate":
            return r * (1.0 + 0.05 * n)
        if c == "main_supply":
            # the whole estate: base load, morning and evening peaks (cooking, lifts, lights)
            shape = 0.5 + 0.25 * _bump(hour, 8.0, 1.5) + 0.45 * _bump(hour, 20.0, 2.5)
            return r * min(shape, 1.0) * (1.0 + 0.03 * n)
        return r * (0.7 + 0.3 * _bump(hour, 14.0, 4.0)) * (1.0 + 0.1 * n)

    def electrical(self, t: float, power_kw: float) -> dict[str, float]:
        """Every instantaneous quantity a meter may show, for total power `power_kw` at `t`."""
        step = math.floor(t / STEP_S)
        hour, _ = self._local(t)
        s = self.seed
        # the evening peak pulls the supply voltage down a little
        v0 = self.voltage_v * (1.0 - 0.02 * _bump(hour, 20.0, 2.0))
        pf = min(0.99, max(0.85, self.pf + 0.01 * noise(s, 3, step)))
        out = {
            "freq_hz": 50.0 + 0.03 * noise(s, 4, step),
            "pf": pf,
            "power_kw": power_kw,
            "apparent_kva": power_kw / pf,
            "reactive_kvar": power_kw * math.tan(math.acos(pf)),
        }
        if self.phases == 1:
            v = v0 + 0.8 * noise(s, 5, step)
            out.update(voltage_v=v, current_a=power_kw * 1000.0 / (v * pf))
            return out
        volts, amps = [], []
        for i in range(3):
            v = v0 * (1.0 + 0.004 * noise(s, 10 + i, step)) + 0.5 * noise(s, 20 + i, step)
            p = power_kw * self.shares[i]
            pf_i = min(0.99, max(0.85, pf + 0.005 * noise(s, 30 + i, step)))
            volts.append(v)
            amps.append(p * 1000.0 / (v * pf_i))
            n = i + 1
            out[f"voltage_l{n}_v"] = v
            out[f"current_l{n}_a"] = amps[-1]
            out[f"power_l{n}_kw"] = p
            out[f"pf_l{n}"] = pf_i
        for a, b in ((0, 1), (1, 2), (2, 0)):
            out[f"voltage_l{a + 1}_l{b + 1}_v"] = SQRT3 * (volts[a] + volts[b]) / 2.0
        out["voltage_v"] = sum(volts) / 3.0
        out["current_a"] = sum(amps) / 3.0
        return out
