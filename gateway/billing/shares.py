"""Rounding to the fen so that the parts add up exactly: the largest-remainder method."""

from __future__ import annotations

from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Sequence

from .model import FEN


def to_fen(yuan: Decimal) -> int:
    """Yuan to whole fen, half up (the way a bill is rounded)."""
    return int((yuan / FEN).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def largest_remainder(total_fen: int, weights: Sequence[Decimal]) -> list[int]:
    """Split `total_fen` in proportion to `weights` (non-negative, not all zero) into whole fen
    that add up to it exactly: everyone gets the floor of their quota, and the fen left over go
    one each to the largest remainders (ties to the earlier entry, so the result is stable)."""
    if total_fen < 0:
        return [-x for x in largest_remainder(-total_fen, weights)]
    whole = sum(weights, Decimal(0))
    if whole <= 0 or any(w < 0 for w in weights):
        raise ValueError("weights must be non-negative and not all zero")
    quotas = [Decimal(total_fen) * w / whole for w in weights]
    floors = [int(q.to_integral_value(rounding=ROUND_FLOOR)) for q in quotas]
    left = total_fen - sum(floors)
    order = sorted(range(len(weights)), key=lambda i: (-(quotas[i] - floors[i]), i))
    for i in order[:left]:
        floors[i] += 1
    return floors
