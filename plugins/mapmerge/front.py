"""The model-free half of MAP and merge-lite: quadratic surrogates, the surrogate's Pareto front, and routing.

Everything here works on plain arrays: ``X`` holds coefficient vectors (one row per configuration) and
``F`` their fitness per objective (higher is better), so it is tested without a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement
from typing import Sequence

import numpy as np

from mobench.api import MobenchError


def n_quadratic_params(d: int) -> int:
    """Parameters of a full quadratic in ``d`` variables: squares and cross terms, linear terms, a constant."""
    return (d + 1) * (d + 2) // 2


def quadratic_features(X: np.ndarray) -> np.ndarray:
    """Rows ``[x_i x_j for i <= j] + [x_i] + [1]`` of ``X`` (n, d), the design matrix of MAP's quadratic model."""
    X = np.atleast_2d(np.asarray(X, dtype=float))
    pairs = list(combinations_with_replacement(range(X.shape[1]), 2))
    second = np.stack([X[:, i] * X[:, j] for i, j in pairs], axis=1) if pairs else np.empty((len(X), 0))
    return np.hstack([second, X, np.ones((len(X), 1))])


@dataclass(frozen=True)
class QuadraticSurrogate:
    """One quadratic per objective over the coefficient vector: ``F ~ quadratic_features(X) @ params``."""

    params: np.ndarray  # (n_quadratic_params(d), m)

    @classmethod
    def fit(cls, X: np.ndarray, F: np.ndarray) -> "QuadraticSurrogate":
        """Least squares per objective (numpy's lstsq: the minimum-norm solution when under-determined)."""
        A, F = quadratic_features(X), np.asarray(F, dtype=float)
        if F.ndim != 2 or len(F) != len(A):
            raise MobenchError(f"need one fitness row per configuration, got {F.shape} for {len(A)} configurations")
        params, *_ = np.linalg.lstsq(A, F, rcond=None)
        return cls(params)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predicted fitness (n, m) of the coefficient vectors ``X`` (n, d)."""
        return quadratic_features(X) @ self.params

    def r2(self, X: np.ndarray, F: np.ndarray) -> list[float]:
        """Per objective, the coefficient of determination on ``(X, F)`` (1.0 for a constant objective fitted exactly)."""
        F = np.asarray(F, dtype=float)
        resid = ((self.predict(X) - F) ** 2).sum(0)
        total = ((F - F.mean(0)) ** 2).sum(0)
        return [float(1.0 - r / t) if t > 0 else float(r == 0) for r, t in zip(resid, total)]


def search_front(surrogate: QuadraticSurrogate, d: int, low: float, high: float, population: int, generations: int,
                 seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The surrogate's Pareto front over the box ``[low, high]^d``: pymoo's NSGA-II (2 objectives) or NSGA-III.

    Returns the non-dominated decision vectors and their predicted fitness (higher is better).
    """
    from pymoo.algorithms.moo.nsga2 import NSGA2
    from pymoo.algorithms.moo.nsga3 import NSGA3
    from pymoo.core.problem import Problem
    from pymoo.optimize import minimize
    from pymoo.util.ref_dirs import get_reference_directions

    m = surrogate.params.shape[1]

    class SurrogateProblem(Problem):
        def __init__(self):
            super().__init__(n_var=d, n_obj=m, xl=np.full(d, low), xu=np.full(d, high))

        def _evaluate(self, x, out, *args, **kwargs):
            out["F"] = -surrogate.predict(x)  # pymoo minimises

    if m == 2:
        algorithm = NSGA2(pop_size=population)
    else:
        partitions = 1
        while len(get_reference_directions("das-dennis", m, n_partitions=partitions + 1)) <= population:
            partitions += 1
        algorithm = NSGA3(ref_dirs=get_reference_directions("das-dennis", m, n_partitions=partitions), pop_size=population)
    result = minimize(SurrogateProblem(), algorithm, ("n_gen", int(generations)), seed=int(seed), verbose=False)
    X = np.atleast_2d(result.X)
    F = -np.atleast_2d(result.F)
    keep = non_dominated(F)
    return X[keep], F[keep]


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the rows of ``F`` (higher is better) that no other row dominates, duplicates kept once, in order."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    F = np.asarray(F, dtype=float)
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    _, first = np.unique(F, axis=0, return_index=True)
    unique = np.sort(first)
    front = NonDominatedSorting().do(-F[unique], only_non_dominated_front=True)
    return np.sort(unique[front])


def normalised(F: np.ndarray) -> np.ndarray:
    """Each column scaled to [0, 1] over the rows (a constant column becomes 0)."""
    F = np.asarray(F, dtype=float)
    low, span = F.min(0), F.max(0) - F.min(0)
    return np.where(span > 0, (F - low) / np.where(span > 0, span, 1.0), 0.0)


def best_for(weights: Sequence[float], F: np.ndarray) -> int:
    """The row maximising ``sum_i w_i f_i`` with each f normalised to [0, 1] over ``F`` (first row on a tie)."""
    return int(np.argmax(normalised(F) @ np.asarray(weights, dtype=float)))


def spread(F: np.ndarray, k: int) -> list[int]:
    """Up to ``k`` distinct rows of ``F`` that are best for ``k`` evenly spread preferences (corners first)."""
    from pymoo.util.ref_dirs import get_reference_directions

    m = F.shape[1]
    if k < 1 or len(F) == 0:
        return []
    partitions = 1
    while len(get_reference_directions("das-dennis", m, n_partitions=partitions + 1)) <= k:
        partitions += 1
    dirs = get_reference_directions("das-dennis", m, n_partitions=partitions)
    order = np.argsort(-dirs.max(1), kind="stable")  # corners first, then mixtures
    out: list[int] = []
    for w in dirs[order]:
        j = best_for(w, F)
        if j not in out:
            out.append(j)
        if len(out) == k:
            break
    return out


def anchors(F: np.ndarray) -> np.ndarray:
    """Each row's preference anchor: its normalised fitness divided by its sum (uniform for an all-zero row)."""
    N = normalised(F)
    total = N.sum(1, keepdims=True)
    return np.where(total > 0, N / np.where(total > 0, total, 1.0), 1.0 / F.shape[1])


def route(weights: Sequence[float], F: np.ndarray, interpolate: bool) -> list[tuple[int, float]]:
    """Library entries and blend weights for a preference: ``[(row, weight), ...]``, weights summing to 1.

    Without interpolation: the one entry :func:`best_for` picks. With it: the two entries whose anchors
    (:func:`anchors`) lie nearest to ``w``, blended linearly. With two objectives the anchors are ordered
    along the front (f_1 up, f_2 down), so the two entries are the ones bracketing w_1 and the blend is
    continuous and monotone in w_1; beyond the outermost anchors the outermost entry is taken alone.
    With more objectives the two nearest anchors are weighted by inverse distance.
    """
    w = np.asarray(weights, dtype=float)
    if not interpolate or len(F) == 1:
        return [(best_for(w, F), 1.0)]
    A = anchors(F)
    if F.shape[1] == 2:
        order = np.argsort(A[:, 0], kind="stable")
        position = A[order, 0]
        if w[0] <= position[0]:
            return [(int(order[0]), 1.0)]
        if w[0] >= position[-1]:
            return [(int(order[-1]), 1.0)]
        j = int(np.searchsorted(position, w[0], side="right")) - 1
        lam = (w[0] - position[j]) / (position[j + 1] - position[j])
        return [(int(order[j]), float(1.0 - lam)), (int(order[j + 1]), float(lam))]
    distance = np.linalg.norm(A - w, axis=1)
    a, b = (int(i) for i in np.argsort(distance, kind="stable")[:2])
    if distance[a] == 0:
        return [(a, 1.0)]
    inverse = np.array([1.0 / distance[a], 1.0 / distance[b]])
    share = inverse / inverse.sum()
    return [(a, float(share[0])), (b, float(share[1]))]


def latin_hypercube(n: int, d: int, low: float, high: float, seed: int) -> np.ndarray:
    """``n`` Latin-hypercube points in ``[low, high]^d`` (scipy.stats.qmc), seeded."""
    from scipy.stats import qmc

    if n < 1:
        return np.zeros((0, d))
    return qmc.scale(qmc.LatinHypercube(d=d, seed=int(seed)).random(n), [low] * d, [high] * d)
