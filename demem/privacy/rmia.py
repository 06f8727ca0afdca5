"""RMIA (Zarifzadeh, Liu, Cherubin, Shokri, "Low-Cost High-Power Membership Inference Attacks", ICML
2024) as a pure NumPy function of per-sample probabilities, with the array conventions of `mia`.

For a target model t, the signal of a sample x is Pr(x | t) = p_t(y_x | x), the target's probability of
the true label. Its likelihood relative to the reference models (the group's other models) is

    ratio(x) = Pr(x | t) / Pr(x),   Pr(x) = mean of Pr(x | r) over the references r

and x is compared pairwise with population samples z (here: Z, the target's non-members in the pool):

    LR(x, z) = ratio(x) / ratio(z),     score(x) = #{z in Z, z != x : LR(x, z) > gamma} / |Z|.

That is the RMIA authors' own convention (ML Privacy Meter's `run_rmia`: a strict `> gamma`, and the
count averaged over the whole population, of which x is never part): x never counts itself, and
every x is divided by the same |Z|. An earlier convention here (`>= gamma`, a non-member divided by
the |Z| - 1 others) tied by construction: the highest non-member of every target scored exactly 1,
as did every member above all non-members, so TPR at zero false positives was 0 for every target.

online   Pr(x) averages every reference, IN and OUT for x alike (with leave-pair-out each sample is
         IN for exactly half of them, as the paper's paired reference models give).
offline  only the references that did not train on x are averaged, p_out(x), and Pr(x) is
         approximated as ((1 + a) p_out(x) + (1 - a)) / 2, which interpolates between p_out (a = 1)
         and the average of p_out and a perfectly fitted IN model (a = 0). The same holds for z.

Defaults: gamma = 1 and a = 0.3, the values of ML Privacy Meter v2's implementation; both are
parameters. Higher scores mean more likely a member.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["RMIA_VARIANTS", "rmia_scores", "true_label_probability"]

RMIA_VARIANTS = ("online", "offline")
DEFAULT_GAMMA = 1.0
DEFAULT_OFFLINE_A = 0.3


def true_label_probability(loss: np.ndarray) -> np.ndarray:
    """p(y | x) from per-query cross-entropy losses (M, N, K) or (M, N), averaged over queries -> (M, N)."""
    loss = np.asarray(loss, dtype=np.float64)
    p = np.exp(-loss)
    return p.mean(axis=2) if p.ndim == 3 else p


def _check(prob, keep, variant, targets, exclude, gamma, a):
    if variant not in RMIA_VARIANTS:
        raise ValueError(f"rmia: unknown variant {variant!r}; known: {', '.join(RMIA_VARIANTS)}")
    prob = np.asarray(prob, dtype=np.float64)
    keep = np.asarray(keep)
    if prob.ndim != 2 or keep.shape != prob.shape:
        raise ValueError(f"rmia: prob and keep must both be (M, N), got {prob.shape} and {keep.shape}")
    if not (np.isfinite(prob).all() and (prob >= 0).all() and (prob <= 1).all()):
        raise ValueError("rmia: probabilities must be finite and in [0, 1]")
    if keep.dtype != np.bool_:
        if not np.isin(keep, (0, 1)).all():
            raise ValueError("rmia: keep must be boolean (or 0/1)")
        keep = keep.astype(bool)
    m = prob.shape[0]
    targets = np.arange(m) if targets is None else np.asarray(targets, dtype=np.int64)
    if targets.ndim != 1 or targets.size == 0 or targets.min() < 0 or targets.max() >= m:
        raise ValueError(f"rmia: targets must be model indices in [0, {m}), got {targets!r}")
    excl = np.full(targets.shape, -1) if exclude is None else np.asarray(exclude, dtype=np.int64)
    if excl.shape != targets.shape or (excl >= m).any() or (excl == targets).any():
        raise ValueError("rmia: exclude needs one model index (or -1) per target, not the target itself")
    if not gamma > 0:
        raise ValueError(f"rmia: gamma must be > 0, got {gamma}")
    if not 0 <= a <= 1:
        raise ValueError(f"rmia: a must be in [0, 1], got {a}")
    return prob, keep, targets, excl


def rmia_scores(
    prob: np.ndarray,
    keep: np.ndarray,
    *,
    variant: str = "online",
    targets: Sequence[int] | None = None,
    exclude: Sequence[int] | None = None,
    gamma: float = DEFAULT_GAMMA,
    a: float = DEFAULT_OFFLINE_A,
) -> np.ndarray:
    """RMIA scores of target models, each attacked with the group's other models as references.

    Args:
        prob: (M, N) p(y | x) of every model on every pool sample (`true_label_probability`).
        keep: (M, N) bool; keep[m, i] is True when model m trained on sample i.
        variant: "online" (IN and OUT references) or "offline" (OUT references, scaled by `a`).
        targets: indices of the target models (default: all M).
        exclude: (T,) one more model to leave out of each target's references, or -1 (as for LiRA:
            the target's complementary partner, so every sample has as many IN as OUT references).
        gamma: the pairwise likelihood-ratio threshold.
        a: the offline scaling parameter.

    Returns:
        (T, N) float64 scores in [0, 1]; row j belongs to model ``targets[j]``.

    Raises:
        ValueError: bad shapes or values, or a sample with no usable reference for some target.
    """
    prob, keep, targets, excl = _check(prob, keep, variant, targets, exclude, gamma, a)
    m, n = prob.shape
    scores = np.empty((targets.size, n))
    for j, (t, e) in enumerate(zip(targets, excl)):
        refs = np.ones(m, dtype=bool)
        refs[t] = False
        if e >= 0:
            refs[e] = False
        use = np.broadcast_to(refs[:, None], (m, n)) if variant == "online" else refs[:, None] & ~keep
        count = use.sum(axis=0)
        if (count == 0).any():
            raise ValueError(
                f"rmia: {int((count == 0).sum())} samples have no {'' if variant == 'online' else 'OUT '}reference "
                f"model for target {int(t)}; train more models in the group"
            )
        p_ref = np.where(use, prob, 0.0).sum(axis=0) / count
        if variant == "offline":
            p_ref = ((1 + a) * p_ref + (1 - a)) / 2
        # A reference average of 0 (every reference gives the true class probability 0) would make the
        # ratio undefined; the floor keeps it finite without changing any ordering that is defined.
        ratio = prob[t] / np.maximum(p_ref, np.finfo(np.float64).tiny)
        population = ~keep[t]
        if population.sum() < 2:
            raise ValueError(f"rmia: target {int(t)} has fewer than 2 non-members to compare with")
        z = np.sort(ratio[population])
        # #z with ratio(x) / ratio(z) > gamma, i.e. ratio(z) < ratio(x) / gamma.
        wins = np.searchsorted(z, ratio / gamma, side="left").astype(np.float64)
        # x is not its own population sample: a non-member x would count itself when gamma < 1.
        wins -= population & (ratio < ratio / gamma)
        scores[j] = wins / z.size
    return scores
