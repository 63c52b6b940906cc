"""Hypervolume, Pareto front and controllability over a run's grid points.

All functions take *normalised* scores where higher is better for every objective (the task's
normalisation already applied the objective's direction). pymoo minimises, so points and the
reference point are negated before they reach it.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_and_std(values: Sequence[float], ddof: int = 1) -> tuple[float, float]:
    """Mean and standard deviation (``ddof`` 1: sample, 0: population); std is nan when undefined."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n - ddof <= 0:
        return mean, float("nan")
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - ddof))


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error of the mean (sample std / sqrt(n)); nan for fewer than two values."""
    mean, std = mean_and_std(values, ddof=1)
    return mean, std / math.sqrt(len(values))


def _as_points(points: Sequence[Sequence[float]]) -> np.ndarray:
    arr = np.asarray(points, dtype=float)
    if arr.ndim != 2:
        raise ValueError("points must be a 2-D array: one row per grid point, one column per objective")
    return arr


def hypervolume(points: Sequence[Sequence[float]], reference_point: Sequence[float]) -> float:
    """Volume dominated by ``points`` and bounded below by ``reference_point`` (maximisation)."""
    from pymoo.indicators.hv import HV

    ref = np.asarray(reference_point, dtype=float)
    if len(points) == 0:
        return 0.0
    arr = _as_points(points)
    if arr.shape[1] != ref.shape[0]:
        raise ValueError(f"points have {arr.shape[1]} objectives but the reference point has {ref.shape[0]}")
    # Points that do not strictly beat the reference in every objective add no volume.
    inside = arr[np.all(arr > ref, axis=1)]
    if inside.shape[0] == 0:
        return 0.0
    return float(HV(ref_point=-ref)(-inside))


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices of the non-dominated points (maximisation), by pymoo's non-dominated sorting."""
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    if len(points) == 0:
        return []
    arr = _as_points(points)
    front = NonDominatedSorting().do(-arr, only_non_dominated_front=True)
    return sorted(int(i) for i in front)


def _adjacent_pairs(weights: np.ndarray, i: int) -> list[tuple[int, int]]:
    """Pairs (a, b) of grid points one step apart where b has more weight on objective i than a."""
    n, m = weights.shape
    if m == 2:
        order = np.argsort(weights[:, i], kind="stable")
        return [(int(a), int(b)) for a, b in zip(order[:-1], order[1:]) if weights[b, i] > weights[a, i]]
    diffs = np.abs(weights[:, None, :] - weights[None, :, :])
    positive = diffs[diffs > 1e-9]
    if positive.size == 0:
        return []
    step = positive.min()
    pairs = []
    for a in range(n):
        for b in range(n):
            d = weights[b] - weights[a]
            if abs(d[i] - step) > 1e-6:
                continue
            others = np.delete(d, i)
            if np.sum(np.abs(others + step) < 1e-6) == 1 and np.sum(np.abs(others) > 1e-6) == 1:
                pairs.append((a, b))
    return pairs


def controllability(weights: Sequence[Sequence[float]], scores: Sequence[Sequence[float]]) -> dict[str, float]:
    """Spearman correlation of w_i with objective i (mean over objectives) and the monotone share.

    ``monotone`` is the share of adjacent grid steps, over all objectives, where raising w_i does not
    lower objective i. Objectives whose weight or score is constant over the grid give no correlation
    and are left out of the mean; NaN when nothing is left.
    """
    from scipy.stats import spearmanr

    w = _as_points(weights)
    s = _as_points(scores)
    if w.shape != s.shape:
        raise ValueError("weights and scores must have the same shape")
    rhos, kept, total = [], 0, 0
    for i in range(w.shape[1]):
        if w.shape[0] >= 2 and np.ptp(w[:, i]) > 0 and np.ptp(s[:, i]) > 0:
            rho = spearmanr(w[:, i], s[:, i]).statistic
            if not math.isnan(rho):
                rhos.append(float(rho))
        for a, b in _adjacent_pairs(w, i):
            total += 1
            kept += int(s[b, i] >= s[a, i])
    return {
        "spearman": float(np.mean(rhos)) if rhos else float("nan"),
        "monotone": kept / total if total else float("nan"),
    }


# --- Bootstrap helpers -------------------------------------------------------------------------
# The leaderboard resamples prompts itself (see mobench.leaderboard): these are the pieces it needs,
# vectorised over bootstrap replicates.


def resample_counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of ``n`` items is drawn in each of ``resamples`` bootstrap samples: shape (B, n).

    A bootstrap sample of n items drawn with replacement is a multinomial(n, 1/n) count vector, so one
    numpy call draws them all; row b weights the items of replicate b.
    """
    if n < 1:
        raise ValueError("nothing to resample")
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples)


def percentile_interval(samples: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """The percentile bootstrap interval of ``samples`` (NaN replicates ignored; (nan, nan) if none is left)."""
    arr = np.asarray(samples, dtype=float)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return float("nan"), float("nan")
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(arr, [tail, 100.0 - tail])
    return float(lo), float(hi)


def hypervolume_batch(points: np.ndarray, reference_point: Sequence[float]) -> np.ndarray:
    """:func:`hypervolume` of each replicate's points: ``points`` (B, P, m) -> (B,)."""
    arr = np.asarray(points, dtype=float)
    return np.array([hypervolume(p, reference_point) for p in arr], dtype=float)


def spearman_batch(weights: Sequence[Sequence[float]], scores: np.ndarray) -> np.ndarray:
    """The Spearman term of :func:`controllability` for each replicate: ``scores`` (B, P, m) -> (B,).

    Spearman's rho is Pearson's r of the ranks (ties averaged), as scipy computes it; scipy's rankdata
    and pearsonr take an axis, so all replicates go in one call. As in :func:`controllability`, an
    objective whose weight or score is constant gives no correlation and is left out of the mean.
    """
    import warnings

    from scipy.stats import pearsonr, rankdata

    w = _as_points(weights)
    s = np.asarray(scores, dtype=float)
    if s.ndim != 3 or s.shape[1:] != w.shape:
        raise ValueError("scores must have shape (replicates, grid points, objectives) matching weights")
    rhos = np.full((s.shape[0], w.shape[1]), np.nan)
    for i in range(w.shape[1]):
        if w.shape[0] < 2 or np.ptp(w[:, i]) == 0:
            continue
        varied = np.ptp(s[:, :, i], axis=1) > 0
        if not varied.any():
            continue
        ranks_w = np.broadcast_to(rankdata(w[:, i]), (int(varied.sum()), w.shape[0]))
        ranks_s = rankdata(s[varied, :, i], axis=1)
        with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
            warnings.simplefilter("ignore")
            rhos[varied, i] = pearsonr(ranks_w, ranks_s, axis=1).statistic
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN replicates: NaN, as controllability gives
        return np.nanmean(rhos, axis=1)
