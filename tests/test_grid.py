import math

import pytest

from mobench.api import MobenchError, Preference
from mobench.grid import parse_weights, simplex_grid


def test_two_objective_grid_of_eleven_steps_by_tenths():
    grid = simplex_grid(2, 11)
    assert [round(p[0], 10) for p in grid] == [round(i / 10, 10) for i in range(11)]
    assert all(math.isclose(sum(p), 1.0, abs_tol=1e-12) for p in grid)


@pytest.mark.parametrize("m,n,count", [(2, 3, 3), (3, 4, 10), (3, 3, 6), (4, 3, 10), (1, 5, 1)])
def test_grid_counts_are_the_simplex_lattice(m, n, count):
    grid = simplex_grid(m, n)
    assert len(grid) == count == len({p.key for p in grid})
    for p in grid:
        assert len(p) == m and min(p) >= 0 and math.isclose(sum(p), 1.0, abs_tol=1e-9)
        # every coordinate is a multiple of 1 / (n - 1)
        assert all(abs(x * (n - 1) - round(x * (n - 1))) < 1e-9 for x in p)


def test_grid_contains_the_corners():
    keys = {p.key for p in simplex_grid(3, 4)}
    for corner in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
        assert Preference(corner).key in keys


def test_explicit_weights_parse_and_deduplicate():
    points = parse_weights("0.2,0.8; 0.5,0.5;0.2,0.8", 2)
    assert [p.weights for p in points] == [(0.2, 0.8), (0.5, 0.5)]


@pytest.mark.parametrize(
    "text,message",
    [
        ("-0.2,1.2", "negative"),
        ("0.2,0.3,0.5", "has 3 weights but the task has 2"),
        ("0.2,0.7", "sums to 0.9"),
        ("a,b", "not a comma-separated list"),
        ("", "empty"),
    ],
)
def test_bad_weights_are_one_clear_error(text, message):
    with pytest.raises(MobenchError, match=message):
        parse_weights(text, 2)


def test_sum_tolerance_is_1e_minus_6():
    parse_weights("0.3333333,0.6666667", 2)
    with pytest.raises(MobenchError):
        parse_weights("0.333,0.666", 2)
