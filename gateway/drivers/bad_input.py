"""Bad input is a logged, counted event, never a crash.

An episode of bad input from one source lasts until good input arrives: in it, each distinct
kind of problem is named once (the first of its kind, with its detail) and the rest counted.
"""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("gateway.drivers")


class BadInput:
    def __init__(self, where: str):
        self.where = where  # e.g. "card reader gate-n-in (/dev/ttyUSB1)"
        self.counts: Counter[str] = Counter()
        self._since_good = 0
        self._named: set[str] = set()  # kinds already logged in this episode

    def bad(self, kind: str, detail: str = "") -> None:
        self.counts[kind] += 1
        self._since_good += 1
        if kind not in self._named:
            self._named.add(kind)
            log.warning("%s: %s%s; more of this kind from here is counted, not logged, until good input arrives",
                        self.where, kind.replace("_", " "), f" ({detail})" if detail else "")

    def parser_errors(self, errors: Counter[str], before: dict[str, int]) -> None:
        """Count what a parser's error counter gained since `before` (a copy taken earlier)."""
        for kind, n in errors.items():
            for _ in range(n - before.get(kind, 0)):
                self.bad(kind)

    def good(self) -> None:
        if self._since_good > 1:
            log.info("%s: good input again after %d bad", self.where, self._since_good)
        self._since_good = 0
        self._named.clear()

    @property
    def total(self) -> int:
        return sum(self.counts.values())
