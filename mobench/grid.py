"""The shared preference grid: points on the probability simplex, the same for every method on a task."""

from __future__ import annotations

from itertools import combinations

from mobench.api import MobenchError, Preference


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
    for chunk in [c for c in text.replace(" ", "").split(";") if c]:
        try:
            values = tuple(float(x) for x in chunk.split(","))
        except ValueError:
            raise MobenchError(f"--weights point {chunk!r} is not a comma-separated list of numbers") from None
        if len(values) != objectives:
            raise MobenchError(
                f"--weights point {chunk!r} has {len(values)} weights but the task has {objectives} objectives"
            )
        points.append(Preference(values))
    if not points:
        raise MobenchError("--weights is empty; give points like '0.2,0.8;0.5,0.5'")
    unique = {p.key: p for p in points}
    return list(unique.values())
