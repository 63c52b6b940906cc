"""The shared preference grid: points on the probability simplex, the same for every method on a task."""

from __future__ import annotations

import math
from itertools import combinations

from mobench.api import MobenchError, Preference

#: The most grid points a run may have: beyond it the grid, the store's rows and the leaderboard's
#: per-point arrays stop fitting comfortably in memory (and the run would take days).
MAX_GRID_POINTS = 20_000


def grid_size(objectives: int, points_per_edge: int) -> int:
    """C(n + m - 2, m - 1): the number of points of the simplex grid; MobenchError beyond MAX_GRID_POINTS."""
    if objectives <= 1:
        return 1
    count = math.comb(points_per_edge + objectives - 2, objectives - 1)
    if count > MAX_GRID_POINTS:
        raise MobenchError(
            f"--grid {points_per_edge} with {objectives} objectives makes {count:,} grid points, more than the "
            f"{MAX_GRID_POINTS:,} a run may have; pass a smaller --grid"
        )
    return count


def simplex_grid(objectives: int, points_per_edge: int) -> list[Preference]:
    """All points of the simplex lattice with ``points_per_edge`` points on each edge.

    For two objectives and 11 points: w_1 = 0, 0.1, ..., 1 (ascending). For m objectives the count is
    C(n + m - 2, m - 1) with n points per edge.
    """
    if objectives < 1:
        raise MobenchError("a preference grid needs at least one objective")
    if objectives == 1:
        return [Preference((1.0,))]
    if points_per_edge < 2:
        raise MobenchError(f"--grid must be at least 2 points per edge, got {points_per_edge}")
    grid_size(objectives, points_per_edge)
    steps = points_per_edge - 1
    out = []
    # Stars and bars: choose where the m-1 bars fall among steps + m - 1 slots.
    for bars in combinations(range(steps + objectives - 1), objectives - 1):
        counts, last = [], -1
        for b in bars:
            counts.append(b - last - 1)
            last = b
        counts.append(steps + objectives - 2 - last)
        out.append(tuple(c / steps for c in counts))
    # Order by w_1 ascending, then w_2, ... so that the two-objective grid reads 0, 0.1, ..., 1.
    out.sort()
    return [Preference(w) for w in out]


def parse_weights(text: str, objectives: int) -> list[Preference]:
    """Parse ``"0.2,0.8;0.5,0.5"`` into preferences, checking count, sign and sum of each point."""
    points = []
    chunks = [c for c in text.replace(" ", "").split(";") if c]
    if len(chunks) > MAX_GRID_POINTS:
        raise MobenchError(f"--weights gives {len(chunks):,} points, more than the {MAX_GRID_POINTS:,} a run may have")
    for chunk in chunks:
        shown = chunk if len(chunk) <= 60 else chunk[:57] + "..."
        try:
            values = tuple(float(x) for x in chunk.split(","))
        except ValueError:
            raise MobenchError(f"--weights point {shown!r} is not a comma-separated list of numbers") from None
        if len(values) != objectives:
            raise MobenchError(
                f"--weights point {shown!r} has {len(values)} weights but the task has {objectives} objectives"
            )
        points.append(Preference(values))
    if not points:
        raise MobenchError("--weights is empty; give points like '0.2,0.8;0.5,0.5'")
    unique = {p.key: p for p in points}
    return list(unique.values())
