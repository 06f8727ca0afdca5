"""Tests for demem.membership: exact balance, determinism, and keep_row == keep_mask row."""

from __future__ import annotations

import numpy as np
import pytest

from demem.membership import keep_mask, keep_row

SHAPES = [
    (2, 10),
    (4, 100),
    (8, 1001),
    (16, 7),
    (3, 10),
    (5, 9),
    (1, 2),
    (1, 11),
    (64, 2000),
]


@pytest.mark.parametrize("n_models,n_samples", SHAPES)
def test_balance(n_models, n_samples):
    mask = keep_mask(n_models, n_samples, seed=123)
    assert mask.shape == (n_models, n_samples) and mask.dtype == np.bool_
    rows = mask.sum(axis=1)
    assert set(rows.tolist()) <= {n_samples // 2, (n_samples + 1) // 2}
    cols = mask.sum(axis=0)
    if n_models % 2 == 0:
        assert (cols == n_models // 2).all()
    else:
        assert set(cols.tolist()) <= {n_models // 2, n_models // 2 + 1}
        # The only unpaired model decides the extra IN: its half gets the ceil.
        assert ((cols == n_models // 2 + 1) == mask[-1]).all()


@pytest.mark.parametrize("n_models,n_samples", SHAPES)
def test_pairs_are_complements(n_models, n_samples):
    mask = keep_mask(n_models, n_samples, seed=7)
    for k in range(n_models // 2):
        assert (mask[2 * k] ^ mask[2 * k + 1]).all()


def test_deterministic_and_seed_dependent():
    a = keep_mask(8, 500, seed=0)
    assert np.array_equal(a, keep_mask(8, 500, seed=0))
    assert not np.array_equal(a, keep_mask(8, 500, seed=1))
    # Different pairs draw different halves.
    assert not np.array_equal(a[0], a[2])


def test_prefix_stable_in_n_models():
    # Adding models to a group must not change the rows of the existing ones.
    big = keep_mask(9, 300, seed=4)
    for m in range(1, 9):
        assert np.array_equal(keep_mask(m, 300, seed=4), big[:m])


@pytest.mark.parametrize("n_models,n_samples", [(4, 101), (5, 20), (1, 3)])
def test_keep_row_matches_mask(n_models, n_samples):
    mask = keep_mask(n_models, n_samples, seed=99)
    for m in range(n_models):
        row = keep_row(n_models, n_samples, 99, m)
        assert row.shape == (n_samples,) and row.dtype == np.bool_
        assert np.array_equal(row, mask[m])


def test_halves_look_uniform():
    # Over many pairs each sample lands in the first half about half the time.
    mask = keep_mask(400, 50, seed=2)
    frac = mask[0::2].mean(axis=0)
    assert np.all(np.abs(frac - 0.5) < 0.15)


@pytest.mark.parametrize(
    "args,match",
    [
        ((0, 10, 0), "n_models must be >= 1"),
        ((2, 1, 0), "n_samples must be >= 2"),
        ((2, 10, -1), "seed must be >= 0"),
        ((2.0, 10, 0), "n_models must be an integer"),
        ((2, "10", 0), "n_samples must be an integer"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        keep_mask(*args)
    with pytest.raises(ValueError, match=match):
        keep_row(*args, 0)


@pytest.mark.parametrize("index", [-1, 4, 1.0])
def test_bad_model_index(index):
    with pytest.raises(ValueError, match="model_index"):
        keep_row(4, 10, 0, index)
