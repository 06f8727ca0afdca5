"""Membership-inference attacks as pure NumPy functions of per-sample signals.

Convention: every score is HIGHER for samples more likely to be members of the target model.

Array conventions (M models of one group, N pool samples, K augmented queries):
    signals (M, N, K) float   the statistic of model m on sample i under query k (phi for LiRA);
                              an (M, N) array means K = 1
    keep    (M, N) bool       keep[m, i] is True when model m trained on sample i
    labels  (N,) int          class of each sample

LiRA (Carlini et al. 2022, "Membership Inference Attacks From First Principles"), per target model t,
sample i and query k, with shadows = every model of the group except t (leave-one-out):
    online         mean_k [log N(x; mu_in, s_in) - log N(x; mu_out, s_out)]
    offline        mean_k log Phi((x - mu_out) / s_out)   (one-sided: above the OUT models = member)
    *_fixed        the same with s_in, s_out replaced by the median over samples of the per-sample
                   std (separately for IN and OUT and per query), which Carlini et al. recommend
                   when there are few shadow models
where x is the target's signal, (mu_in, s_in) the mean and population std (ddof=0) of the shadows
that trained on i, (mu_out, s_out) the same over the shadows that did not. Every std is floored at
`STD_FLOOR` so a constant signal cannot divide by zero.

Threshold attacks score one model's signal directly (loss, confidence, entropy, modified entropy of
Song & Mittal 2021); `class_thresholds` learns per-class thresholds on a shadow model.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy.special import log_ndtr

from demem.privacy.roc import roc_curve

__all__ = [
    "LIRA_VARIANTS",
    "STD_FLOOR",
    "THRESHOLD_ATTACKS",
    "THRESHOLD_SIGNALS",
    "apply_class_thresholds",
    "balanced_accuracy_of",
    "class_thresholds",
    "lira_scores",
    "threshold_score",
]

LIRA_VARIANTS = ("online", "online_fixed", "offline", "offline_fixed")
THRESHOLD_ATTACKS = ("loss", "confidence", "entropy", "modified_entropy")

# Floor on every fitted std, in the units of the signal (phi is O(1)-O(10)): a sample whose shadows
# all give the same signal would otherwise make the Gaussian a delta and the score infinite.
STD_FLOOR = 1e-6

# Working-set budget per (targets, N, K) float64 temporary: targets are scored in chunks this size so
# peak memory does not grow with M. About a dozen such temporaries are alive at once.
_CHUNK_BYTES = 16 * 2**20


# ---------------------------------------------------------------------------------------------------
# LiRA
# ---------------------------------------------------------------------------------------------------


class _Group(NamedTuple):
    """Moments of one group (IN or OUT) of ALL M models, per sample and query."""

    n: np.ndarray  # (N,) number of models in the group
    mean: np.ndarray  # (N, K) mean signal (0 where n == 0)
    m2: np.ndarray  # (N, K) sum of squared deviations from the mean


def _check_lira_inputs(signals, keep, variant: str, targets, min_shadows: int):
    if variant not in LIRA_VARIANTS:
        raise ValueError(f"lira: unknown variant {variant!r}; known: {', '.join(LIRA_VARIANTS)}")
    signals = np.asarray(signals)
    if signals.ndim == 2:
        signals = signals[:, :, None]
    if signals.ndim != 3 or not np.issubdtype(signals.dtype, np.floating):
        raise ValueError(
            f"lira: signals must be a float (M, N) or (M, N, K) array, got {signals.dtype} {signals.shape}"
        )
    keep = np.asarray(keep)
    if keep.shape != signals.shape[:2]:
        raise ValueError(f"lira: keep must be (M, N) = {signals.shape[:2]}, got {keep.shape}")
    if keep.dtype != np.bool_:
        if not np.isin(keep, (0, 1)).all():
            raise ValueError("lira: keep must be boolean (or 0/1)")
        keep = keep.astype(bool)
    n_models = signals.shape[0]
    if n_models < 2:
        raise ValueError(f"lira: need at least 2 models (a target and a shadow), got {n_models}")
    n_bad = int(np.size(signals) - np.count_nonzero(np.isfinite(signals)))
    if n_bad:
        raise ValueError(f"lira: signals contain {n_bad} non-finite value(s)")
    if targets is None:
        targets = np.arange(n_models)
    else:
        targets = np.asarray(targets)
        if targets.ndim != 1 or targets.size == 0 or not np.issubdtype(targets.dtype, np.integer):
            raise ValueError(f"lira: targets must be a non-empty sequence of model indices, got {targets!r}")
        targets = targets.astype(np.int64)
        if targets.min() < 0 or targets.max() >= n_models:
            raise ValueError(f"lira: targets must be in [0, {n_models}), got {targets.tolist()}")
    if int(min_shadows) < 1:
        raise ValueError(f"lira: min_shadows must be >= 1, got {min_shadows}")
    return signals, keep, targets


def _check_shadow_counts(
    keep: np.ndarray, targets: np.ndarray, need_in: bool, min_shadows: int, exclude: np.ndarray | None = None
) -> None:
    """Raise if some (target, sample) has fewer than min_shadows IN (if needed) or OUT shadows."""
    n_in_all = keep.sum(axis=0)  # (N,)
    n_out_all = keep.shape[0] - n_in_all
    k = keep[targets]  # (T, N): the target's own row leaves the group it belongs to
    n_in = n_in_all - k
    n_out = n_out_all - ~k
    if exclude is not None:
        has = (exclude >= 0)[:, None]
        e = keep[np.maximum(exclude, 0)]
        n_in = n_in - (e & has)
        n_out = n_out - (~e & has)
    short = n_out < min_shadows
    if need_in:
        short |= n_in < min_shadows
    if short.any():
        samples = np.flatnonzero(short.any(axis=0))
        kinds = "IN or OUT" if need_in else "OUT"
        counts = f"fewest IN shadows {int(n_in.min())}, fewest OUT shadows {int(n_out.min())}"
        raise ValueError(
            f"lira: {samples.size} of {keep.shape[1]} samples have fewer than {min_shadows} {kinds} shadow "
            f"models for at least one target ({counts}; first such sample index {int(samples[0])}). "
            f"Train more models in the group or lower min_shadows."
        )


def _group_moments(signals: np.ndarray, member: np.ndarray) -> _Group:
    """Mean and M2 of the signals of the models in a group, per sample and query, in float64.

    Two passes (mean first, then squared deviations) rather than E[x^2] - E[x]^2, which loses digits
    when the spread is small against the mean. Processed in blocks of samples to bound memory.
    """
    n_models, n_samples, n_queries = signals.shape
    n = member.sum(axis=0)
    mean = np.zeros((n_samples, n_queries))
    m2 = np.zeros((n_samples, n_queries))
    block = max(1, _CHUNK_BYTES // (8 * n_models * n_queries))
    for start in range(0, n_samples, block):
        sl = slice(start, min(start + block, n_samples))
        x = signals[:, sl].astype(np.float64)  # (M, b, K)
        w = member[:, sl, None]
        nb = n[sl, None]
        mb = np.divide(np.where(w, x, 0.0).sum(axis=0), nb, out=np.zeros(x.shape[1:]), where=nb > 0)
        d = np.where(w, x - mb, 0.0)
        mean[sl] = mb
        m2[sl] = np.einsum("mbk,mbk->bk", d, d)
    return _Group(n=n, mean=mean, m2=m2)


def _remove(n: np.ndarray, mean: np.ndarray, m2: np.ndarray, w: np.ndarray, x: np.ndarray):
    """Remove value x from the moments (count n, mean, sum of squared deviations M2) where w.

    The reverse of Welford's update: mean' = (n mean - x) / (n - 1), M2' = M2 - (x - mean)(x - mean').
    Exact up to rounding, which only matters if x is ~1e6 spreads away from the rest; M2' is clipped
    at 0 later, so it never goes negative. Shapes: n, w (T, N, 1); mean, m2, x (T, N, K).
    """
    n2 = n - w
    safe = np.where(n2 > 0, n2, 1.0)
    mean2 = np.where(w, (n * mean - x) / safe, mean)
    m2_2 = np.where(w, m2 - (x - mean) * (x - mean2), m2)
    return n2, mean2, m2_2


def _leave_out(
    group: _Group, own: np.ndarray, x: np.ndarray, extra: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of a group with each target's own model removed where it belongs to the group,
    and optionally one more model per target (`extra` = (membership (T, N), signals (T, N, K))).

    Args:
        group: moments over all M models.
        own: (T, N) bool, whether target t is in this group for sample i.
        x: (T, N, K) float64, the targets' own signals.

    Returns:
        (mean, std), each (T, N, K): leave-out mean and population std (floored at STD_FLOOR).
    """
    t = own.shape[0]
    n = np.broadcast_to(group.n[None, :, None].astype(np.float64), (t, *group.n.shape, 1))
    mean = np.broadcast_to(group.mean, (t, *group.mean.shape))
    m2 = np.broadcast_to(group.m2, (t, *group.m2.shape))
    n, mean, m2 = _remove(n, mean, m2, own[:, :, None], x)
    if extra is not None:
        n, mean, m2 = _remove(n, mean, m2, extra[0][:, :, None], extra[1])
    std = np.sqrt(np.maximum(m2, 0.0) / np.where(n > 0, n, 1.0))
    np.maximum(std, STD_FLOOR, out=std)
    return mean, std


def _fixed(std: np.ndarray) -> np.ndarray:
    """(T, N, K) per-sample stds -> (T, 1, K): one global std per target and query (median over N)."""
    return np.median(std, axis=1, keepdims=True)


def lira_scores(
    signals: np.ndarray,
    keep: np.ndarray,
    *,
    variant: str = "online",
    targets: Sequence[int] | None = None,
    min_shadows: int = 2,
    exclude: Sequence[int] | None = None,
) -> np.ndarray:
    """LiRA membership scores of target models, each attacked with the group's other models as shadows.

    Leave-one-out: for target t, the IN/OUT Gaussians of sample i are fitted on every model except t,
    so t's own signals and keep row never enter its fits. The moments of the IN and OUT groups are
    computed once over all M models; each target then removes its own contribution (see the module
    docstring for the score formulas). Targets are processed in chunks so memory stays bounded.

    Args:
        signals: (M, N, K) or (M, N) float; the per-sample statistic (phi) of each model.
        keep: (M, N) bool; keep[m, i] is True when model m trained on sample i.
        variant: one of `LIRA_VARIANTS`.
        targets: indices of the target models (default: all M, in order).
        min_shadows: the fewest IN and OUT shadows (OUT only, for offline variants) a sample may have
            for any target.
        exclude: (T,) one more model to leave out of each target's shadows, or -1 for none. Leaving
            out a target's complementary partner (demem.membership pairs models 2k and 2k+1) gives
            every sample exactly (M - 2) / 2 IN and OUT shadows. Without it, a sample's IN fit has one
            shadow fewer than its OUT fit exactly when the target trained on it, which with few shadows
            biases scores (AUC below 0.5 on models that learned nothing).

    Returns:
        (T, N) float64 scores; row j belongs to model ``targets[j]``; higher = more likely a member.

    Raises:
        ValueError: on a bad variant, shapes, non-finite signals, target index, or when some sample has
            fewer than `min_shadows` shadows of a needed kind (the message says how many samples and
            the smallest counts).
    """
    signals, keep, targets = _check_lira_inputs(signals, keep, variant, targets, min_shadows)
    online = variant.startswith("online")
    fixed = variant.endswith("_fixed")
    excl = None
    if exclude is not None:
        excl = np.asarray(exclude, dtype=np.int64)
        if excl.shape != targets.shape or (excl >= keep.shape[0]).any() or (excl == targets).any():
            raise ValueError("lira: exclude needs one model index (or -1) per target, not the target itself")
    _check_shadow_counts(keep, targets, need_in=online, min_shadows=int(min_shadows), exclude=excl)

    _, n_samples, n_queries = signals.shape
    out_group = _group_moments(signals, ~keep)
    in_group = _group_moments(signals, keep) if online else None
    scores = np.empty((targets.size, n_samples))
    chunk = max(1, _CHUNK_BYTES // (8 * n_samples * n_queries))
    for start in range(0, targets.size, chunk):
        t = targets[start : start + chunk]
        x = signals[t].astype(np.float64)  # (c, N, K)
        own_in = keep[t]
        extra_in = extra_out = None
        if excl is not None:
            e = excl[start : start + chunk]
            has = (e >= 0)[:, None]
            xe = signals[np.maximum(e, 0)].astype(np.float64)
            extra_in = (keep[np.maximum(e, 0)] & has, xe)
            extra_out = (~keep[np.maximum(e, 0)] & has, xe)
        mu_out, s_out = _leave_out(out_group, ~own_in, x, extra_out)
        if fixed:
            s_out = _fixed(s_out)
        z_out = (x - mu_out) / s_out
        if online:
            mu_in, s_in = _leave_out(in_group, own_in, x, extra_in)
            if fixed:
                s_in = _fixed(s_in)
            z_in = (x - mu_in) / s_in
            # log N(x; mu_in, s_in) - log N(x; mu_out, s_out); the 1/sqrt(2 pi) factors cancel.
            per_query = np.log(s_out) - np.log(s_in) + 0.5 * (z_out * z_out - z_in * z_in)
        else:
            per_query = log_ndtr(z_out)
        scores[start : start + t.size] = per_query.mean(axis=2)
    return scores


# ---------------------------------------------------------------------------------------------------
# Threshold attacks
# ---------------------------------------------------------------------------------------------------

# attack -> (signal keyword, sign): members have low loss / entropy / modified entropy and high phi.
# The signal each threshold attack reads (its keyword in `threshold_score`) and the sign that makes
# higher scores mean "member".
THRESHOLD_SIGNALS = {
    "loss": ("loss", -1.0),
    "confidence": ("phi", 1.0),
    "entropy": ("entropy", -1.0),
    "modified_entropy": ("mentropy", -1.0),
}


def threshold_score(kind: str, *, loss=None, phi=None, entropy=None, mentropy=None) -> np.ndarray:
    """Membership score of one model's own per-sample signal (no shadows).

    ``loss -> -loss``; ``confidence -> phi`` (phi = log p_y - log(1 - p_y) is monotone in p_y, so it
    ranks samples exactly as the confidence does); ``entropy -> -entropy``;
    ``modified_entropy -> -mentropy`` (Song & Mittal 2021, Mentr = -(1 - p_y) log p_y
    - sum_{j != y} p_j log(1 - p_j), lower for members). Only the signal the attack needs is required.

    Args:
        kind: one of `THRESHOLD_ATTACKS`.
        loss, phi, entropy, mentropy: (N,) or (N, K) float; a 2-D signal is averaged over its K queries.

    Returns:
        (N,) float64 scores, higher = more likely a member.
    """
    if kind not in THRESHOLD_SIGNALS:
        raise ValueError(f"threshold attack: unknown kind {kind!r}; known: {', '.join(THRESHOLD_ATTACKS)}")
    name, sign = THRESHOLD_SIGNALS[kind]
    value = {"loss": loss, "phi": phi, "entropy": entropy, "mentropy": mentropy}[name]
    if value is None:
        raise ValueError(f"threshold attack {kind!r} needs the {name}= signal")
    value = np.asarray(value, dtype=np.float64)
    if value.ndim == 2:
        value = value.mean(axis=1)
    if value.ndim != 1:
        raise ValueError(f"threshold attack {kind!r}: {name} must be (N,) or (N, K), got shape {value.shape}")
    return sign * value


def _best_threshold(scores: np.ndarray, members: np.ndarray) -> float:
    """The threshold maximising balanced accuracy of "member iff score >= threshold".

    Placed halfway between the lowest score flagged and the next lower score, so that it transfers
    to another model's scores without favouring either side; -inf when flagging everyone is best.
    Ties between equally good thresholds go to the highest (fewest flagged).
    """
    fpr, tpr, thr = roc_curve(scores, members)
    j = int(np.argmax(tpr - fpr))
    if j == thr.size - 1:
        return -np.inf
    return float(thr[j] / 2 + thr[j + 1] / 2)  # inf / 2 + s / 2 = inf at j = 0 (flag nobody)


def _check_labelled(scores, labels, num_classes: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 1 or labels.shape != scores.shape:
        raise ValueError(
            f"thresholds: scores and labels must be 1-D of the same length, got {scores.shape} and {labels.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"thresholds: labels must be integers, got {labels.dtype}")
    if num_classes is not None and labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"thresholds: labels must be in [0, {num_classes}), got [{labels.min()}, {labels.max()}]")
    return scores, labels


def class_thresholds(scores, members, labels, num_classes: int) -> np.ndarray:
    """Per-class thresholds learned on a SHADOW model (whose membership is known).

    Within each class, the threshold maximises balanced accuracy of "predict member iff
    score >= threshold" (see `_best_threshold` for where exactly it sits). A class without members or
    without non-members in the shadow's data has no such optimum and gets the global best threshold.

    Args:
        scores: (N,) the shadow model's membership scores (higher = member).
        members: (N,) bool, the shadow model's keep row.
        labels: (N,) int class labels in [0, num_classes).
        num_classes: C.

    Returns:
        (C,) float64 thresholds (may hold +-inf: flag nobody / everybody of that class).
    """
    if int(num_classes) < 1:
        raise ValueError(f"thresholds: num_classes must be >= 1, got {num_classes}")
    scores, labels = _check_labelled(scores, labels, int(num_classes))
    members = np.asarray(members, dtype=bool)
    if members.shape != scores.shape:
        raise ValueError(f"thresholds: members must have shape {scores.shape}, got {members.shape}")
    fallback = _best_threshold(scores, members)  # raises if the shadow has no members or no non-members
    out = np.full(int(num_classes), fallback)
    for c in range(int(num_classes)):
        sel = labels == c
        n_mem = int(members[sel].sum())
        if 0 < n_mem < int(sel.sum()):
            out[c] = _best_threshold(scores[sel], members[sel])
    return out


def apply_class_thresholds(scores, labels, thresholds) -> np.ndarray:
    """Predicted members: score >= the threshold of the sample's class. (N,), (N,), (C,) -> (N,) bool."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    scores, labels = _check_labelled(scores, labels, thresholds.size)
    return scores >= thresholds[labels]


def balanced_accuracy_of(pred: np.ndarray, members: np.ndarray) -> float:
    """(TPR + TNR) / 2 of boolean predictions against the truth; both classes must be present."""
    pred = np.asarray(pred, dtype=bool)
    members = np.asarray(members, dtype=bool)
    if pred.shape != members.shape:
        raise ValueError(f"balanced accuracy: pred and members differ in shape: {pred.shape} vs {members.shape}")
    n_pos = int(members.sum())
    if n_pos == 0 or n_pos == members.size:
        raise ValueError(f"balanced accuracy: need both members and non-members, got {n_pos} of {members.size}")
    tpr = np.count_nonzero(pred & members) / n_pos
    tnr = np.count_nonzero(~pred & ~members) / (members.size - n_pos)
    return float((tpr + tnr) / 2)
