"""Request planning and decoding for Modbus meters.

On a 9600 baud RS-485 line the number of requests per poll decides how many meters a bus can
carry, so the planner merges a meter's fields into the fewest reads: fields of one function
are read together when the registers between them number at most `max_gap`, and no read is
longer than the model's limit (never over 125 registers).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Iterable

from ..meter_models import MAX_REGISTERS_PER_READ, TYPES, FieldSpec, MeterModel


@dataclass(frozen=True, slots=True)
class ReadRequest:
    function: int  # 3 holding, 4 input
    address: int
    count: int
    fields: tuple[FieldSpec, ...]
    # (spec, unpack, byte offset, words) per field, computed once: decoding is on the hot path.
    _decoders: tuple = field(default=(), init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        decoders = []
        for spec in self.fields:
            words, code = TYPES[spec.type]
            unpack = struct.Struct(">" + code).unpack
            decoders.append((spec, unpack, 2 * (spec.address - self.address), words))
        object.__setattr__(self, "_decoders", tuple(decoders))

    @property
    def response_bytes_rtu(self) -> int:
        return 5 + 2 * self.count

    def decode(self, registers: list[int], values: dict[str, float], counters: dict[str, Decimal]) -> list[str]:
        """Decode this read's registers into `values`/`counters`; returns fields that were not numbers.

        A meter answers NaN (float32) for a quantity it cannot measure; such a field is left out
        rather than stored as a number nobody can add up.
        """
        buf = struct.pack(f">{self.count}H", *registers)
        skipped = []
        for spec, unpack, offset, words in self._decoders:
            wire = buf[offset:offset + 2 * words]
            raw = unpack(wire)[0] if spec.word_order == "ABCD" else spec.raw_from_bytes(wire)
            if isinstance(raw, float) and not math.isfinite(raw):
                skipped.append(spec.name)
                continue
            values[spec.name] = raw * spec.scale + spec.offset
            if spec.counter:
                counters[spec.name] = spec.exact(raw)
        return skipped


def plan_requests(fields: Iterable[FieldSpec], max_registers: int = MAX_REGISTERS_PER_READ,
                  max_gap: int = 32) -> list[ReadRequest]:
    """Group fields into the fewest reads: same function, gaps ≤ max_gap, length ≤ max_registers."""
    limit = min(max_registers, MAX_REGISTERS_PER_READ)
    by_function: dict[int, list[FieldSpec]] = {}
    for f in fields:
        by_function.setdefault(f.function, []).append(f)
    plan: list[ReadRequest] = []
    for function in sorted(by_function):
        group: list[FieldSpec] = []
        start = end = 0
        for f in sorted(by_function[function], key=lambda f: (f.address, f.end)):
            if group and f.address - end <= max_gap and max(end, f.end) - start <= limit:
                group.append(f)
                end = max(end, f.end)
                continue
            if group:
                plan.append(ReadRequest(function, start, end - start, tuple(group)))
            group, start, end = [f], f.address, f.end
        if group:
            plan.append(ReadRequest(function, start, end - start, tuple(group)))
    return plan


def plan_for_model(model: MeterModel, max_gap: int = 32) -> list[ReadRequest]:
    return plan_requests(model.fields, model.max_registers, max_gap)


def line_time_s(plan: list[ReadRequest], baudrate: int, bits_per_char: int) -> float:
    """Theoretical minimum line time for the plan on RS-485, meter answering instantly.

    Each exchange: an 8-byte request, 3.5 character times of silence, the answer (5 + 2N
    bytes), and 3.5 characters of silence again (1.75 ms each above 19200 baud); as in
    shared/domain/meters.md.
    """
    char = bits_per_char / baudrate
    gap = 3.5 * char if baudrate <= 19200 else 0.00175
    return sum((8 + r.response_bytes_rtu) * char + 2 * gap for r in plan)
