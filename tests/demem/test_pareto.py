"""Pareto ranking: hand-made points, ties, duplicates, NaN, and random points against brute force."""

import numpy as np
import pytest

from demem.pareto import crowding_distance, dominates, pareto_fronts, pareto_order


def brute_fronts(v: np.ndarray, maximize) -> np.ndarray:
    """Peel fronts by checking every pair with `dominates`, one front at a time."""
    left = [i for i in range(len(v)) if not np.isnan(v[i]).any()]
    out = np.full(len(v), -1)
    level = 0
    while left:
        front = [i for i in left if not any(dominates(v[j], v[i], maximize) for j in left if j != i)]
        out[front] = level
        left = [i for i in left if i not in front]
        level += 1
    return out


def test_dominance_on_hand_made_points():
    # objectives: robust acc (max), leakage (min)
    pts = np.array(
        [
            [0.6, 0.2],  # front 0
            [0.5, 0.1],  # front 0 (less robust, less leaky)
            [0.5, 0.3],  # dominated by both above -> front 1
            [0.4, 0.4],
        ]
    )  # dominated by all -> front 2
    assert pareto_fronts(pts, [True, False]).tolist() == [0, 0, 1, 2]
    assert dominates([0.6, 0.2], [0.5, 0.3], [True, False])
    assert not dominates([0.6, 0.2], [0.5, 0.1], [True, False])


def test_ties_duplicates_single_point_and_nan():
    maximize = [True, True]
    # an exact duplicate shares the front; equal on one objective and better on the other dominates
    pts = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.5], [np.nan, 2.0]])
    front = pareto_fronts(pts, maximize)
    assert front.tolist() == [0, 0, 1, -1]
    assert pareto_order(pts, maximize)[-1] == 3  # NaN rows come last
    assert pareto_fronts(np.array([[0.3, 0.7]]), maximize).tolist() == [0]
    assert crowding_distance(np.array([[0.3, 0.7]]), maximize).tolist() == [np.inf]
    assert pareto_fronts(np.full((2, 2), np.nan), maximize).tolist() == [-1, -1]


def test_crowding_prefers_extremes_and_spread():
    # one front on (max, max): a line from (0, 1) to (1, 0); the middle points are crowded unequally
    pts = np.array([[0.0, 1.0], [0.1, 0.9], [0.5, 0.5], [1.0, 0.0]])
    crowd = crowding_distance(pts, [True, True])
    assert np.isinf(crowd[0]) and np.isinf(crowd[3])
    # point 2's neighbours are 0.1 and 1.0 apart -> (0.9 + 0.9); point 1's are 0.0 and 0.5 -> (0.5 + 0.5)
    assert crowd[2] == pytest.approx(1.8) and crowd[1] == pytest.approx(1.0)
    order = pareto_order(pts, [True, True])
    assert order.tolist() == [0, 3, 2, 1]


@pytest.mark.parametrize("seed", range(5))
def test_random_points_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    pts = rng.integers(0, 5, size=(40, 3)).astype(float)  # small integers: many ties and duplicates
    pts[rng.random(40) < 0.1, 1] = np.nan
    maximize = [True, False, True]
    front = pareto_fronts(pts, maximize)
    np.testing.assert_array_equal(front, brute_fronts(pts, maximize))
    order = pareto_order(pts, maximize)
    assert sorted(order.tolist()) == list(range(40))
    ranked = front[order]
    ranked = np.where(ranked < 0, 10**9, ranked)
    assert np.all(np.diff(ranked) >= 0)  # fronts never interleave in the order


def test_shape_errors():
    with pytest.raises(ValueError, match="2 objectives but 1 directions"):
        pareto_fronts(np.zeros((3, 2)), [True])
