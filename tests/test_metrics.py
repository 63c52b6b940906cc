import math

import pytest

from mobench.metrics import controllability, hypervolume, pareto_front


def test_hypervolume_of_a_two_d_staircase_equals_the_hand_computed_area():
    # Boxes [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1]: union area 3 + 2 + 1 = 6.
    assert hypervolume([(1, 3), (2, 2), (3, 1)], (0, 0)) == pytest.approx(6.0)


def test_hypervolume_ignores_dominated_points_and_points_beyond_the_reference():
    base = hypervolume([(1, 3), (2, 2), (3, 1)], (0, 0))
    assert hypervolume([(1, 3), (2, 2), (3, 1), (1, 1), (5, -1)], (0, 0)) == pytest.approx(base)
    assert hypervolume([(-1, 5)], (0, 0)) == 0.0
    assert hypervolume([], (0, 0)) == 0.0


def test_hypervolume_with_a_shifted_reference_and_three_objectives():
    # One point: a box. (2,3) against (-1,-1): 3 * 4 = 12. In 3-D: (1,1,1) vs (0,0,0) = 1, two boxes overlap.
    assert hypervolume([(2, 3)], (-1, -1)) == pytest.approx(12.0)
    # (2,1,1) and (1,2,1): 2 + 2 - 1 (overlap [0,1]^2 x [0,1]) = 3
    assert hypervolume([(2, 1, 1), (1, 2, 1)], (0, 0, 0)) == pytest.approx(3.0)


def test_pareto_front_is_the_non_dominated_set():
    points = [(1, 3), (2, 2), (1.5, 1.5), (3, 1), (0, 0), (3, 1)]
    assert pareto_front(points) == [0, 1, 3, 5]


def test_controllability_perfect_and_reversed():
    w = [(0, 1), (0.5, 0.5), (1, 0)]
    good = controllability(w, [(0, 2), (1, 1), (2, 0)])
    assert good["spearman"] == pytest.approx(1.0) and good["monotone"] == 1.0
    bad = controllability(w, [(2, 0), (1, 1), (0, 2)])
    assert bad["spearman"] == pytest.approx(-1.0) and bad["monotone"] == 0.0


def test_controllability_hand_example():
    # objective 1 over w_1 = 0, .5, 1: scores 0, 2, 1 -> spearman 0.5, steps up/down -> 1 of 2
    # objective 2 over w_2 = 0, .5, 1 (reverse order): scores 1, 1, 3 -> spearman 0.866..., steps 2 of 2
    w = [(0, 1), (0.5, 0.5), (1, 0)]
    s = [(0, 3), (2, 1), (1, 1)]
    c = controllability(w, s)
    assert c["spearman"] == pytest.approx((0.5 + math.sqrt(3) / 2) / 2)
    assert c["monotone"] == pytest.approx(3 / 4)


def test_controllability_three_objectives_uses_one_step_moves():
    from mobench.grid import simplex_grid

    grid = [p.weights for p in simplex_grid(3, 3)]
    c = controllability(grid, grid)  # score_i = w_i: perfectly controllable
    assert c["spearman"] == pytest.approx(1.0) and c["monotone"] == 1.0


def test_resample_counts_are_bootstrap_samples_of_n_items():
    import numpy as np

    from mobench.metrics import resample_counts

    counts = resample_counts(7, 500, np.random.default_rng(0))
    assert counts.shape == (500, 7) and (counts.sum(axis=1) == 7).all() and (counts >= 0).all()
    # every item is drawn about once per sample on average
    assert np.allclose(counts.mean(axis=0), 1.0, atol=0.15)
    again = resample_counts(7, 500, np.random.default_rng(0))
    assert (counts == again).all()


def test_percentile_interval_ignores_nan_and_is_none_like_without_values():
    from mobench.metrics import percentile_interval

    lo, hi = percentile_interval(list(range(101)) + [float("nan")], 0.9)
    assert (lo, hi) == pytest.approx((5.0, 95.0))
    assert all(math.isnan(x) for x in percentile_interval([float("nan")]))


def test_batched_hypervolume_and_spearman_equal_the_one_at_a_time_functions():
    import numpy as np

    from mobench.grid import simplex_grid
    from mobench.metrics import hypervolume_batch, spearman_batch

    rng = np.random.default_rng(1)
    for m, k in ((2, 6), (3, 4)):
        w = [p.weights for p in simplex_grid(m, k)]
        scores = rng.normal(size=(40, len(w), m))
        scores[0, :, 0] = 1.0  # a constant objective is left out of the mean
        scores[1] = 2.0  # nothing varies: NaN, as controllability gives
        ref = [-1.0] * m
        assert np.allclose(hypervolume_batch(scores, ref), [hypervolume(s, ref) for s in scores])
        expected = [controllability(w, s)["spearman"] for s in scores]
        assert np.allclose(spearman_batch(w, scores), expected, equal_nan=True)
        assert math.isnan(spearman_batch(w, scores)[1])


# --- edges that mutation testing showed unchecked ----------------------------------------------------


def test_mean_and_std_sample_population_and_undefined():
    from mobench.metrics import mean_and_std, mean_stderr

    assert mean_and_std([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0)))  # ddof 1: 14 / 2
    assert mean_and_std([1.0, 2.0, 6.0], ddof=0) == pytest.approx((3.0, math.sqrt(14.0 / 3)))
    mean, std = mean_and_std([5.0])
    assert mean == 5.0 and math.isnan(std)
    assert mean_and_std([5.0], ddof=0) == (5.0, 0.0)
    with pytest.raises(ValueError, match="^no values$"):
        mean_and_std([])
    assert mean_stderr([1.0, 2.0, 6.0]) == pytest.approx((3.0, math.sqrt(7.0) / math.sqrt(3)))
    assert math.isnan(mean_stderr([4.0])[1])


def test_hypervolume_and_front_edges():
    assert pareto_front([]) == []
    assert pareto_front([(1, 1)]) == [0]
    with pytest.raises(ValueError, match="points have 3 objectives but the reference point has 2"):
        hypervolume([(1, 2, 3)], (0, 0))
    with pytest.raises(ValueError, match="2-D"):
        hypervolume([1, 2], (0, 0))
    assert hypervolume([(0.0, 5.0), (5.0, 0.0)], (0, 0)) == 0.0  # on the reference's boundary: no volume
    assert hypervolume([(2, 2)], [0, 0]) == pytest.approx(4.0)  # an int reference point


def test_adjacent_pairs_two_and_three_objectives():
    import numpy as np

    from mobench.metrics import _adjacent_pairs

    w2 = np.array([(1.0, 0.0), (0.0, 1.0), (0.5, 0.5), (0.5, 0.5)])
    # sorted by w_1: 1, (2, 3 tied), 0; tied points are not a step
    assert _adjacent_pairs(w2, 0) == [(1, 2), (3, 0)]
    assert _adjacent_pairs(w2, 1) == [(0, 2), (3, 1)]
    w3 = np.array([(0.0, 0.0, 1.0), (0.5, 0.0, 0.5), (1.0, 0.0, 0.0), (0.0, 0.5, 0.5), (0.5, 0.5, 0.0), (0.0, 1.0, 0.0)])
    # one step raises w_i by 1/2 and lowers exactly one other weight by 1/2
    assert sorted(_adjacent_pairs(w3, 0)) == [(0, 1), (1, 2), (3, 1), (3, 4), (4, 2), (5, 4)]
    assert sorted(_adjacent_pairs(w3, 2)) == [(1, 0), (2, 1), (3, 0), (4, 1), (4, 3), (5, 3)]
    assert _adjacent_pairs(np.array([(1 / 3, 1 / 3, 1 / 3)] * 2), 0) == []


def test_resample_counts_refuses_nothing_and_allows_one():
    import numpy as np

    from mobench.metrics import resample_counts

    assert (resample_counts(1, 4, np.random.default_rng(0)) == 1).all()
    with pytest.raises(ValueError, match="^nothing to resample$"):
        resample_counts(0, 4, np.random.default_rng(0))


def test_percentile_interval_default_is_95_percent():
    from mobench.metrics import percentile_interval

    assert percentile_interval(list(range(201))) == pytest.approx((5.0, 195.0))
    assert percentile_interval([1, 2, 3], 0.0) == pytest.approx((2.0, 2.0))
    lo, hi = percentile_interval([])
    assert math.isnan(lo) and math.isnan(hi)


def test_spearman_batch_shapes_and_edges():
    import numpy as np

    from mobench.metrics import spearman_batch

    w = [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    with pytest.raises(ValueError, match="replicates, grid points, objectives"):
        spearman_batch(w, np.zeros((3, 2)))
    with pytest.raises(ValueError, match="replicates, grid points, objectives"):
        spearman_batch(w, np.zeros((2, 4, 2)))
    # two grid points: a correlation of two ranks is +-1, as controllability gives
    two = [(0.0, 1.0), (1.0, 0.0)]
    s2 = np.array([[(0.0, 1.0), (1.0, 0.0)]])
    assert spearman_batch(two, s2).tolist() == pytest.approx([controllability(two, s2[0])["spearman"]])
    # objective 0 constant in replicate 0 only: that replicate's mean is objective 1's rho alone
    s = np.array([[(1.0, 3.0), (1.0, 1.0), (1.0, 2.0)], [(0.0, 3.0), (1.0, 2.0), (2.0, 1.0)]])
    got = spearman_batch(w, s)
    assert got.tolist() == pytest.approx([controllability(w, s[0])["spearman"], controllability(w, s[1])["spearman"]])
    assert got[0] == pytest.approx(0.5) and got[1] == pytest.approx(1.0)
    # a constant weight column (one objective never varied) is left out, not a crash
    flat = [(0.5, 0.5, 0.0), (0.0, 0.5, 0.5), (0.5, 0.0, 0.5)]
    s3 = np.array([[(1.0, 2.0, 3.0), (0.0, 2.0, 4.0), (1.0, 0.0, 4.0)]])
    assert spearman_batch(flat, s3).tolist() == pytest.approx([controllability(flat, s3[0])["spearman"]], nan_ok=True)
    assert spearman_batch([(1.0, 0.0)], np.ones((2, 1, 2))).tolist() == pytest.approx([math.nan, math.nan], nan_ok=True)


def test_adjacent_steps_on_an_uneven_two_objective_grid():
    """Two objectives: consecutive weights are a step whatever their gap (0.3 then 0.7), not only the smallest gap."""
    import numpy as np

    from mobench.metrics import _adjacent_pairs

    w = np.array([(0.0, 1.0), (1.0, 0.0), (0.3, 0.7)])
    assert _adjacent_pairs(w, 0) == [(0, 2), (2, 1)]
    assert _adjacent_pairs(w, 1) == [(1, 2), (2, 0)]
    # objective 0 rises on the first step and falls on the second; objective 1 rises on both: 3 of 4 steps
    scores = [(0.0, 2.0), (1.0, 0.0), (2.0, 1.0)]
    # Spearman by hand: w_0 ranks (1, 3, 2) vs scores (1, 2, 3): 1 - 6 * 2 / 24 = 0.5; objective 1 ranks agree: 1
    assert controllability(w, scores) == pytest.approx({"spearman": 0.75, "monotone": 0.75})


def test_percentile_interval_reads_a_null_replicate_as_missing():
    """The store writes NaN as null: a replicate read back as None is ignored like NaN."""
    from mobench.metrics import percentile_interval

    assert percentile_interval([None, 1.0, 2.0, float("nan"), 3.0], 0.0) == pytest.approx((2.0, 2.0))
    lo, hi = percentile_interval([None, None])
    assert math.isnan(lo) and math.isnan(hi)


def test_spearman_batch_skips_only_what_cannot_correlate():
    import numpy as np

    from mobench.metrics import spearman_batch

    with pytest.raises(ValueError, match=r"^scores must have shape \(replicates, grid points, objectives\) matching weights$"):
        spearman_batch([(0.0, 1.0), (1.0, 0.0)], np.zeros((2, 2)))
    # objective 0 constant in every replicate: left out, and objective 1 after it still counts
    w = [(0.0, 1.0), (0.5, 0.5), (1.0, 0.0)]
    s = np.array([[(2.0, 1.0), (2.0, 3.0), (2.0, 2.0)], [(5.0, 3.0), (5.0, 2.0), (5.0, 1.0)]])
    # objective 1: w ranks (3, 2, 1); replicate 0 scores ranks (1, 3, 2): 1 - 6 * (4 + 1 + 1) / 24 = -0.5; replicate 1: 1
    assert spearman_batch(w, s).tolist() == pytest.approx([-0.5, 1.0])
    # one objective whose weight varies (not a simplex, but the function is general): its rho alone
    assert spearman_batch([(0.0,), (1.0,), (2.0,)], np.array([[(1.0,), (3.0,), (2.0,)]])).tolist() == pytest.approx([0.5])


def test_spearman_batch_leaves_out_a_constant_weight_before_varied_ones():
    import numpy as np

    from mobench.metrics import spearman_batch

    w = [(0.5, 0.0, 0.5), (0.5, 0.5, 0.0), (0.5, 0.25, 0.25)]  # w_0 never varies
    s = np.array([[(1.0, 1.0, 1.0), (2.0, 3.0, 2.0), (3.0, 2.0, 3.0)]])
    # objective 1: ranks (1, 3, 2) both: 1; objective 2: w ranks (3, 1, 2), scores (1, 2, 3): 1 - 6 * 6 / 24 = -0.5
    assert spearman_batch(w, s).tolist() == pytest.approx([0.25])
    assert controllability(w, s[0])["spearman"] == pytest.approx(0.25)


def test_metric_errors_are_exact_and_edge_grids_give_nan_without_warnings():
    import warnings

    with pytest.raises(ValueError, match=r"^points must be a 2-D array: one row per grid point, one column per objective$"):
        pareto_front([1.0, 2.0])
    with pytest.raises(ValueError, match=r"^weights and scores must have the same shape$"):
        controllability([(0.0, 1.0), (1.0, 0.0)], [(0.0, 1.0)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy/scipy warning leaks into a report
        one = controllability([(0.5, 0.5)], [(1.0, 2.0)])  # one grid point: no step, no correlation
        assert math.isnan(one["spearman"]) and math.isnan(one["monotone"])
        # w_0 constant (scores vary), s_1 constant (weights vary): neither correlates; objective 2 does
        w = [(0.5, 0.0, 0.5), (0.5, 0.5, 0.0), (0.5, 0.25, 0.25)]
        s = [(1.0, 7.0, 3.0), (3.0, 7.0, 1.0), (2.0, 7.0, 2.0)]
        assert controllability(w, s)["spearman"] == pytest.approx(1.0)  # w_2 ranks (3, 1, 2) = s_2 ranks
    # one objective (not a simplex; the function is general): its correlation alone
    assert controllability([(0.0,), (1.0,), (2.0,)], [(1.0,), (3.0,), (2.0,)])["spearman"] == pytest.approx(0.5)


def test_adjacent_pairs_order_ties_by_position_and_need_one_exact_step():
    import numpy as np

    from mobench.metrics import _adjacent_pairs

    # 40 two-objective points alternating e_2, e_1: numpy's default sort would not keep the tied points in order
    w = np.array([(float(i % 2), 1.0 - i % 2) for i in range(40)])
    assert _adjacent_pairs(w, 0) == [(38, 1)] and _adjacent_pairs(w, 1) == [(39, 0)]
    # three objectives without zero weights: the step is the smallest difference (0.2), not the smallest weight
    w3 = np.array([(0.2, 0.2, 0.6), (0.4, 0.2, 0.4), (0.6, 0.2, 0.2)])
    assert _adjacent_pairs(w3, 0) == [(0, 1), (1, 2)] and _adjacent_pairs(w3, 2) == [(1, 0), (2, 1)]
    # four objectives: raising w_0 by a step and lowering w_1 by one is a step only if nothing else moves
    w4 = np.array([(0.0, 0.25, 0.5, 0.25), (0.25, 0.0, 0.0, 0.75), (0.25, 0.0, 0.5, 0.25)])
    assert _adjacent_pairs(w4, 0) == [(0, 2)]
