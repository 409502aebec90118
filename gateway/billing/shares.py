"""Rounding to the fen so that the parts add up exactly.

`largest_remainder` splits one amount by weights. `round_table` rounds a whole allocation at once
(controlled rounding of a table): households are rows, groups are columns, and a cell is a
household's exact share of a group. Rounding every group on its own by largest remainder keeps
the columns right but lets a household's lines drift the same way (several fen off its exact
total); rounding the households' totals first and then their lines cannot always keep the
groups right. Both hold at once: every cell is its exact value rounded down or up, every row
(household total) and every column (group amount) is its exact sum rounded down or up, and the
whole adds up to the total asked for. Such a rounding always exists (the table's constraints
form a network-flow problem, whose vertices are integral: Bacharach 1966, Cox 1987 "controlled
rounding"); it is found here from the groups' own largest-remainder rounding, repaired one fen
at a time along alternating paths (the augmenting paths of that flow problem), so households
and groups that were already right are left alone. Arithmetic is exact: integers and fractions.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import ROUND_FLOOR, ROUND_HALF_UP, Decimal
from fractions import Fraction
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


def round_to_total(exact: Sequence[Fraction], total: int) -> list[int]:
    """Each value rounded down or up so that they add up to `total`, which must lie between the
    sum of the floors and the sum of the ceilings: the floors, and one more to each of the
    largest fractional parts (ties to the earlier entry)."""
    floors = [e.numerator // e.denominator for e in exact]
    left = total - sum(floors)
    order = sorted((i for i, e in enumerate(exact) if e != floors[i]), key=lambda i: (floors[i] - exact[i], i))
    if not 0 <= left <= len(order):
        raise ValueError(f"{total} is not a rounding of the sum {float(sum(exact, Fraction(0))):.4f}")
    for i in order[:left]:
        floors[i] += 1
    return floors


@dataclass
class Column:
    """One group to share: `amount` (exact, in fen) over `members` (row numbers) by `weights`;
    `target` is the rounded amount wanted for it (within a fen of `amount`). The rounding keeps
    it unless no rounding of the rows could add up with it (it then moves by a fen)."""

    amount: Fraction
    target: int
    members: Sequence[int]
    weights: Sequence[Decimal]


def round_table(rows: int, columns: Sequence[Column]) -> list[list[int]]:
    """Every column's cells in whole fen (in the order of its members) such that each cell is its
    exact share rounded down or up, each column adds up to its exact amount rounded down or up,
    each row adds up to its exact total rounded down or up, and everything adds up to the sum of
    the targets. That sum must be a rounding of the sum of the amounts."""
    return _Table(rows, columns).solve()


class _Table:
    """The cells split into a floor and a 0/1 "round up" flag; the flags are the unknowns.
    A row's or column's flags must add up to its exact fractional part's floor or ceiling."""

    def __init__(self, rows: int, columns: Sequence[Column]):
        self.floor: list[list[int]] = []
        self.rem: list[list[int]] = []            # the cell's fractional part is rem / den[g]
        self.den: list[int] = []
        self.up: list[list[bool]] = []
        self.members = [list(c.members) for c in columns]
        self.pos = [{h: k for k, h in enumerate(m)} for m in self.members]     # row -> position in the column
        self.row_cells: list[list[tuple[int, int]]] = [[] for _ in range(rows)]   # (column, position)
        self.col_lo, self.col_hi, self.count = [], [], []
        for g, c in enumerate(columns):
            if len(c.members) != len(c.weights):
                raise ValueError("one weight per member")
            scale = max((-w.as_tuple().exponent for w in c.weights), default=0)
            ws = [int(w.scaleb(scale)) for w in c.weights]
            whole = sum(ws)
            if whole <= 0 or min(ws, default=0) < 0:
                raise ValueError("weights must be non-negative and not all zero")
            # cell = amount * w / whole = (p * w) / (q * whole): exact, as an integer quotient
            p, q = c.amount.numerator, c.amount.denominator
            den = q * whole
            fl, rm = [], []
            for k, (h, w) in enumerate(zip(c.members, ws)):
                f, r = divmod(p * w, den)
                fl.append(f)
                rm.append(r)
                self.row_cells[h].append((g, k))
            self.floor.append(fl)
            self.rem.append(rm)
            self.den.append(den)
            frac_sum, fractional = sum(rm), sum(1 for r in rm if r)
            lo = frac_sum // den
            self.col_lo.append(lo)
            self.col_hi.append(lo + (frac_sum % den != 0))
            need = c.target - sum(fl)                     # cells to round up in this column
            if not lo <= need <= self.col_hi[g] or need > fractional:
                raise ValueError(f"column {g}: target {c.target} is not a rounding of {float(c.amount):.4f}")
            self.count.append(need)
            # start from the column's own largest-remainder rounding
            order = sorted((k for k in range(len(rm)) if rm[k]), key=lambda k: (-rm[k], k))
            up = [False] * len(rm)
            for k in order[:need]:
                up[k] = True
            self.up.append(up)
        # by descending fractional part: the candidates to round up first (down: reversed)
        self.by_rem = [sorted((k for k in range(len(r)) if r[k]), key=lambda k: (-r[k], k)) for r in self.rem]
        self.row_lo, self.row_hi, self.row_up = [], [], []
        for cells in self.row_cells:
            # sum of the cells' fractional parts as one exact quotient num / den
            num, den = 0, 1
            for g, k in cells:
                num, den = num * self.den[g] + self.rem[g][k] * den, den * self.den[g]
            lo = num // den
            self.row_lo.append(lo)
            self.row_hi.append(lo + (num % den != 0))
            self.row_up.append(sum(self.up[g][k] for g, k in cells))

    def solve(self) -> list[list[int]]:
        self._pair()
        for h in range(len(self.row_cells)):
            while self.row_up[h] > self.row_hi[h]:
                self._repair(h, +1)
            while self.row_up[h] < self.row_lo[h]:
                self._repair(h, -1)
        return [[f + u for f, u in zip(fl, up)] for fl, up in zip(self.floor, self.up)]

    def _pair(self) -> None:
        """A household rounded up too often hands a fen to one rounded down too often in a group
        they share: one move mends both, and nobody else's lines change."""
        short = [h for h in range(len(self.row_cells)) if self.row_up[h] < self.row_lo[h]]
        for h in range(len(self.row_cells)):
            while self.row_up[h] > self.row_hi[h]:
                short = [v for v in short if self.row_up[v] < self.row_lo[v]]
                cells = sorted(((g, k) for g, k in self.row_cells[h] if self.up[g][k]),
                               key=lambda c: Fraction(self.rem[c[0]][c[1]], self.den[c[0]]))
                swap = next(((g, k, j) for g, k in cells for v in short
                             if (j := self.pos[g].get(v)) is not None and self.rem[g][j] and not self.up[g][j]), None)
                if swap is None:
                    break
                g, k, j = swap
                self.up[g][k], self.up[g][j] = False, True
                self.row_up[h] -= 1
                self.row_up[self.members[g][j]] += 1

    def _repair(self, h: int, sign: int) -> None:
        """Move one rounded-up fen away from row h (sign +1: it has too many) or to it (-1) along
        an alternating path that keeps every other row and column within its bounds; try paths
        that keep every column's amount first."""
        path = self._path(h, sign, False) or self._path(h, sign, True)
        if path is None:
            raise AssertionError("no controlled rounding found")  # impossible: the flow problem is feasible
        for kind, a, b in path:
            if kind == "cell":
                g, k = a, b
                flip = not self.up[g][k]
                self.up[g][k] = flip
                self.row_up[self.members[g][k]] += 1 if flip else -1
            else:                                                # a column's amount moves by a fen
                self.count[a] += b

    def _path(self, start: int, sign: int, via_total: bool):
        """Breadth-first over rows and columns. With sign +1 a row node must give up a rounded-up
        cell and a column node must round up another cell (or, via the total, hand the fen to
        another column); with -1 the other way round."""
        lose = sign > 0
        parent: dict = {("row", start): None}
        queue = deque([("row", start)])
        while queue:
            node = queue.popleft()
            for nxt, edge in self._steps(node, lose, via_total):
                if nxt in parent:
                    continue
                parent[nxt] = (node, edge)
                if nxt[0] == "row" and self._takes(nxt[1], lose):
                    return self._trace(parent, nxt)
                queue.append(nxt)
        return None

    def _steps(self, node, lose: bool, via_total: bool):
        """The moves out of a node, lazily (an estate-wide column has every household)."""
        kind, x = node
        if kind == "row":
            # the row's cells that can flip the way needed, the one that costs least first
            cells = [(g, k) for g, k in self.row_cells[x] if self.rem[g][k] and self.up[g][k] == lose]
            cells.sort(key=lambda c: Fraction(self.rem[c[0]][c[1]], self.den[c[0]]) * (1 if lose else -1))
            for g, k in cells:
                yield ("col", g), ("cell", g, k)
        elif kind == "col":
            g = x
            for k in (self.by_rem[g] if lose else reversed(self.by_rem[g])):
                if self.up[g][k] != lose:
                    yield ("row", self.members[g][k]), ("cell", g, k)
            if via_total and (self.count[g] - 1 >= self.col_lo[g] if lose else self.count[g] + 1 <= self.col_hi[g]):
                yield ("total", 0), ("count", g, -1 if lose else +1)
        else:
            for g in range(len(self.count)):
                if self.count[g] + 1 <= self.col_hi[g] if lose else self.count[g] - 1 >= self.col_lo[g]:
                    yield ("col", g), ("count", g, +1 if lose else -1)

    def _takes(self, h: int, gains: bool) -> bool:
        """Whether row h can take one more rounded-up cell (gains) or give one up."""
        return self.row_up[h] + 1 <= self.row_hi[h] if gains else self.row_up[h] - 1 >= self.row_lo[h]

    @staticmethod
    def _trace(parent: dict, node) -> list:
        path = []
        while parent[node] is not None:
            node, edge = parent[node]
            path.append(edge)
        return path
