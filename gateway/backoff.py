"""Exponential back-off, shared by everything that retries: the MQTT link, the InfluxDB drainer,
the webhook, bus reconnects (Modbus, DL/T 645), serial lines (card readers, patrol wands), the
lighting read-back, and a silent meter's polls.

The n-th wait after n failures in a row is `first_s · 2^(n-1)`, capped at `max_s`. With a
`jitter` source each wait is scaled by a uniform factor in [0.5, 1]: boxes that lost the same
server at the same moment then do not come back in step. A success resets the count.
"""

from __future__ import annotations

import random

# 2^64 times any first wait exceeds any cap this gateway allows (an hour); without the bound a
# day of failures would make 2^n too large for a float.
_MAX_DOUBLINGS = 64


def backoff_delay(failures: int, first_s: float, max_s: float) -> float:
    """The wait after `failures` (>= 1) failures in a row, without jitter."""
    return min(max_s, first_s * 2.0 ** min(max(failures, 1) - 1, _MAX_DOUBLINGS))


class Backoff:
    """The back-off of one thing that retries: `failed()` counts a failure and gives the wait
    before the next try, `reset()` after a success starts again from `first_s`."""

    def __init__(self, first_s: float, max_s: float, jitter: random.Random | None = None):
        self.first_s = first_s
        self.max_s = max_s
        self.jitter = jitter
        self.failures = 0

    def delay(self, failures: int) -> float:
        """The wait after `failures` failures in a row (a fresh jitter draw each call)."""
        d = backoff_delay(failures, self.first_s, self.max_s)
        return d * self.jitter.uniform(0.5, 1.0) if self.jitter is not None else d

    def failed(self) -> float:
        self.failures += 1
        return self.delay(self.failures)

    def reset(self) -> None:
        self.failures = 0
