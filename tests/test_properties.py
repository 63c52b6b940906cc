"""Properties (hypothesis) where they state the maths better than examples: hypervolume, normalisation,
the preference grid, exact LoRA merges and Bone-Soup coefficients. The conftest profile keeps the example
counts small and derandomised, so the suite runs the same examples every time."""

from __future__ import annotations

import itertools
import math

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from mobench.api import Normalisation  # noqa: E402
from mobench.grid import grid_size, simplex_grid  # noqa: E402
from mobench.metrics import hypervolume, pareto_front  # noqa: E402

coord = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False).map(lambda x: round(x, 3))


def points(m: int, min_size: int = 0, max_size: int = 7):
    return st.lists(st.tuples(*[coord] * m), min_size=min_size, max_size=max_size)


def _hv2_sweep(pts, ref):
    """The 2-D hypervolume by a plain sweep (sorted by x descending, a staircase in y)."""
    inside = sorted([p for p in pts if p[0] > ref[0] and p[1] > ref[1]], key=lambda p: (-p[0], -p[1]))
    area, best_y = 0.0, ref[1]
    for x, y in inside:
        if y > best_y:
            area += (x - ref[0]) * (y - best_y)
            best_y = y
    return area


def _hv_grid(pts, ref, m):
    """Hypervolume by inclusion-exclusion over boxes (few points, any m): the measure of a union of boxes."""
    boxes = [p for p in pts if all(a > r for a, r in zip(p, ref))]
    total = 0.0
    for k in range(1, len(boxes) + 1):
        for combo in itertools.combinations(boxes, k):
            corner = [min(c[i] for c in combo) for i in range(m)]
            total += (-1) ** (k + 1) * math.prod(corner[i] - ref[i] for i in range(m))
    return total


@given(points(2, max_size=8), st.tuples(coord, coord))
def test_hypervolume_2d_is_the_staircase_area(pts, ref):
    assert hypervolume(pts, ref) == pytest.approx(_hv2_sweep(pts, ref), abs=1e-9)


@given(points(3, max_size=5), st.tuples(coord, coord, coord))
def test_hypervolume_3d_is_the_union_of_boxes(pts, ref):
    assert hypervolume(pts, ref) == pytest.approx(_hv_grid(pts, ref, 3), abs=1e-7)


@given(st.integers(2, 3).flatmap(lambda m: st.tuples(points(m, max_size=6), st.tuples(*[coord] * m), st.tuples(*[coord] * m))))
def test_hypervolume_never_falls_when_a_point_is_added(case):
    pts, ref, extra = case
    assert hypervolume(pts + [extra], ref) >= hypervolume(pts, ref) - 1e-9


@given(st.integers(2, 3).flatmap(lambda m: st.tuples(points(m, max_size=6), st.tuples(*[coord] * m), st.randoms())))
def test_hypervolume_ignores_order_and_duplicates(case):
    pts, ref, rnd = case
    shuffled = list(pts)
    rnd.shuffle(shuffled)
    assert hypervolume(shuffled, ref) == pytest.approx(hypervolume(pts, ref), abs=1e-9)
    assert hypervolume(pts + pts, ref) == pytest.approx(hypervolume(pts, ref), abs=1e-9)


@given(points(2, min_size=1, max_size=8), st.tuples(coord, coord))
def test_hypervolume_is_that_of_the_pareto_front(pts, ref):
    front = [pts[i] for i in pareto_front(pts)]
    assert hypervolume(front, ref) == pytest.approx(hypervolume(pts, ref), abs=1e-9)
    for i in pareto_front(pts):  # nobody dominates a front point
        assert not any(all(q[j] >= pts[i][j] for j in range(2)) and q != pts[i] for q in pts)


finite = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False)


@given(finite, finite, st.floats(min_value=1e-3, max_value=1e3), st.sampled_from([1, -1]))
def test_normalisation_round_trips(score, mean, std, direction):
    norm = Normalisation(mean, std)
    z = norm.apply(score, direction)
    assert mean + direction * z * std == pytest.approx(score, rel=1e-9, abs=1e-6)
    # higher z is better: in the objective's direction, a better raw score has a higher z
    better = score + direction * 1.0
    assert norm.apply(better, direction) > z
    assert norm.apply(mean, direction) == 0.0
    assert norm.apply(mean + std, direction) == pytest.approx(direction)


@given(finite, finite, st.sampled_from([1, -1]))
def test_a_zero_std_counts_as_one(score, mean, direction):
    assert Normalisation(mean, 0.0).apply(score, direction) == pytest.approx(direction * (score - mean))


@settings(max_examples=20)
@given(st.integers(2, 4), st.integers(2, 7))
def test_grid_points_lie_on_the_simplex_and_cover_it(m, n):
    grid = simplex_grid(m, n)
    weights = [p.weights for p in grid]
    assert len(weights) == grid_size(m, n) == math.comb(n + m - 2, m - 1)
    steps = n - 1
    for w in weights:
        assert len(w) == m and all(x >= 0 for x in w) and sum(w) == pytest.approx(1.0)
        assert all(abs(x * steps - round(x * steps)) < 1e-9 for x in w)  # on the lattice
    lattice = {tuple(c / steps for c in counts) for counts in itertools.product(range(n), repeat=m) if sum(counts) == steps}
    assert set(weights) == lattice and len(set(weights)) == len(weights)  # every lattice point, once
    assert weights == sorted(weights)  # w_1 ascending, then w_2, ...
    corners = {tuple(float(i == j) for i in range(m)) for j in range(m)}
    assert corners <= set(weights)


# --- exact merges: a merge at e_i is expert i, and the merged delta is linear in the coefficients ------


def _tiny_peft(ranks, seed):
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    base = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4))
    names = [f"e{i}" for i in range(len(ranks))]
    model = None
    for name, (r, alpha) in zip(names, ranks):
        cfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=["0", "2"], init_lora_weights=False)
        model = get_peft_model(base, cfg, adapter_name=name) if model is None else model
        if name not in model.peft_config:
            model.add_adapter(name, cfg)
    return model, names


adapters = st.lists(st.tuples(st.integers(1, 4), st.integers(1, 8)), min_size=2, max_size=3)


@settings(max_examples=12)
@given(adapters, st.integers(0, 2**16), st.data())
def test_a_merge_at_e_i_is_expert_i(ranks, seed, data):
    import torch

    from mobench.merging import lora_deltas, merge_lora_adapters

    model, names = _tiny_peft(ranks, seed)
    i = data.draw(st.integers(0, len(names) - 1))
    merge_lora_adapters(model, names, [float(j == i) for j in range(len(names))], name="soup")
    merged, alone = lora_deltas(model, "soup"), lora_deltas(model, names[i])
    assert set(merged) == set(alone)
    for key in alone:
        torch.testing.assert_close(merged[key], alone[key], rtol=1e-5, atol=1e-6)
    x = torch.randn(3, 6)
    with torch.no_grad():
        got = model(x)
        model.set_adapter(names[i])
        want = model(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@settings(max_examples=12)
@given(adapters, st.integers(0, 2**16), st.data())
def test_the_merged_delta_is_linear_in_the_coefficients(ranks, seed, data):
    import torch

    from mobench.merging import lora_deltas, merge_lora_adapters

    model, names = _tiny_peft(ranks, seed)
    c = data.draw(st.lists(st.floats(-2.0, 2.0, allow_nan=False), min_size=len(names), max_size=len(names)))
    merge_lora_adapters(model, names, c, name="soup")
    merged = lora_deltas(model, "soup")
    parts = [lora_deltas(model, n) for n in names]
    for key in merged:
        torch.testing.assert_close(merged[key], sum(ci * p[key] for ci, p in zip(c, parts)), rtol=1e-4, atol=1e-5)


# --- Bone Soup: B^T c = diag(k) mu ... i.e. c = diag(k) (B^T)^-1 mu, for any m, b, mu, k -----------------

simplex = st.integers(2, 4).flatmap(
    lambda m: st.lists(st.integers(0, 10), min_size=m, max_size=m).filter(lambda v: sum(v) > 0).map(lambda v: [x / sum(v) for x in v]))


@given(simplex, st.floats(0.0, 1.0), st.data())
def test_bone_soup_coefficients_solve_the_transposed_system(mu, t, data):
    import numpy as np

    from mobench.methods.mage.bonesoup import bone_soup_coefficients, mixing_matrix

    m = len(mu)
    b = 1.0 / m + (1.0 - 1.0 / m) * max(t, 0.05)  # inside (1/m, 1]
    k = data.draw(st.lists(st.floats(0.1, 3.0), min_size=m, max_size=m))
    B = np.asarray(mixing_matrix(m, b))
    assert np.allclose(B.sum(axis=1), 1.0) and np.all(np.diag(B) >= B.max(axis=1) - 1e-12)
    c = np.asarray(bone_soup_coefficients(mu, b, k))
    assert np.allclose(B.T @ c, np.asarray(k) * np.asarray(mu), atol=1e-9)  # c = (B^T)^-1 diag(k) mu
    plain = np.asarray(bone_soup_coefficients(mu, b))
    assert np.allclose(B.T @ plain, mu, atol=1e-9) and plain.sum() == pytest.approx(1.0)
    assert c.sum() == pytest.approx(float(np.dot(k, mu)))  # the rest, sum_i (1 - k_i) mu_i, stays on the reference


@given(finite, finite, st.floats(min_value=1e-3, max_value=1e3))
def test_normalisation_direction_defaults_to_plus_one(score, mean, std):
    assert Normalisation(mean, std).apply(score) == Normalisation(mean, std).apply(score, 1)
