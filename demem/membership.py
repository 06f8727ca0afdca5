"""Keep masks: which models of a group train on which pool samples.

``keep[m, i]`` is True when model ``m`` trains on pool sample ``i`` (its position in the pool, not
its ``sample_id``). LiRA and the memorization estimate compare models that saw a sample with models
that did not, so the mask must give every sample both kinds of models in equal numbers.

Construction: models come in complementary pairs ``(2k, 2k + 1)``. Model ``2k`` trains on a
uniformly random half of the samples (``floor(N / 2)`` of them) and model ``2k + 1`` on exactly the
rest; with an odd number of models the last one gets a random half of its own. Why pairs rather than
an independent coin flip per (model, sample):

- the balance is exact on both axes: each model trains on ``floor(N / 2)`` or ``ceil(N / 2)``
  samples, and with M even every sample is IN for exactly ``M / 2`` models (``floor(M / 2)`` or
  ``ceil(M / 2)`` with M odd), so no sample lacks IN or OUT shadows;
- each target model's complement is among its shadow models. That is harmless for LiRA: per sample,
  the complement is one OUT (or IN) shadow like any other, and the Gaussians are fitted per sample.

The mask depends only on ``(seed, n_samples)``, never on ``n_models`` beyond how many rows exist:
pair ``k`` draws from its own random stream, ``numpy.random.default_rng([seed, 0x6B656570, k])``
("keep" in ASCII, so the stream differs from any other use of the same seed). Hence every trial of a
group computes its own row (`keep_row`) without talking to the others, in O(N) whatever its index,
and adding models to a group leaves the rows of existing models unchanged.
"""

from __future__ import annotations

import numpy as np

from demem.checks import as_int

__all__ = ["keep_mask", "keep_row"]

_STREAM_TAG = 0x6B656570  # "keep": separates this random stream from other uses of the same seed


def _check(n_models: int, n_samples: int, seed: int) -> tuple[int, int, int]:
    return (
        as_int("keep mask: n_models", n_models, 1),
        as_int("keep mask: n_samples", n_samples, 2),
        as_int("keep mask: seed", seed, 0),
    )


def _first_of_pair(n_samples: int, seed: int, pair: int) -> np.ndarray:
    """(N,) bool: the random half that model ``2 * pair`` trains on (its partner takes the rest)."""
    rng = np.random.default_rng([seed, _STREAM_TAG, pair])
    row = np.zeros(n_samples, dtype=bool)
    row[rng.permutation(n_samples)[: n_samples // 2]] = True
    return row


def keep_row(n_models: int, n_samples: int, seed: int, model_index: int) -> np.ndarray:
    """The training-set membership of one model, equal to ``keep_mask(...)[model_index]``.

    Args:
        n_models: M, the number of models in the group (>= 1).
        n_samples: N, the pool size (>= 2).
        seed: the pool seed (>= 0).
        model_index: which model, in ``[0, n_models)``.

    Returns:
        (N,) bool; True where the model trains on the sample.
    """
    n_models, n_samples, seed = _check(n_models, n_samples, seed)
    model_index = as_int("keep mask: model_index", model_index, 0)
    if model_index >= n_models:
        raise ValueError(f"keep mask: model_index must be in [0, {n_models}), got {model_index}")
    first = _first_of_pair(n_samples, seed, model_index // 2)
    return first if model_index % 2 == 0 else ~first


def keep_mask(n_models: int, n_samples: int, seed: int) -> np.ndarray:
    """The full keep mask of a group of models.

    Args:
        n_models: M, the number of models in the group (>= 1).
        n_samples: N, the pool size (>= 2).
        seed: the pool seed (>= 0).

    Returns:
        (M, N) bool; ``mask[m, i]`` is True when model m trains on pool sample i. Row sums are
        ``floor(N / 2)`` (even m) or ``ceil(N / 2)`` (odd m); column sums are ``M / 2`` for even M.
    """
    n_models, n_samples, seed = _check(n_models, n_samples, seed)
    mask = np.empty((n_models, n_samples), dtype=bool)
    for pair in range((n_models + 1) // 2):
        first = _first_of_pair(n_samples, seed, pair)
        mask[2 * pair] = first
        if 2 * pair + 1 < n_models:
            mask[2 * pair + 1] = ~first
    return mask
