"""Metrics of a membership-inference attack: ROC curve, AUC, balanced accuracy, TPR at low FPR.

Convention: a HIGHER score means "more likely a member"; ``members`` is the ground truth (True for
samples the target model trained on). Everything is plain NumPy on 1-D arrays.

How TPR at a fixed FPR is read off the curve (one rule, used by `tpr_at_fpr` and `roc_points`): the
largest TPR among the ROC points whose FPR is at most the target. Each ROC point is a threshold an
attacker could actually set, so the figure is achievable; nothing is interpolated between points, so
with few non-members it is conservative (with 1,000 non-members, "TPR at 0.01% FPR" is the TPR at
zero false positives). This is how Carlini et al. (2022) report low-FPR results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats

from demem.checks import is_number

__all__ = [
    "FPR_LEVELS",
    "attack_metrics",
    "balanced_accuracy",
    "mean_std",
    "pooled_low_fpr",
    "roc_auc",
    "roc_curve",
    "roc_points",
    "tpr_at_fpr",
]

FPR_LEVELS = (0.01, 0.001, 0.0001)
_FPR_KEYS = ("tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct")  # one per FPR_LEVELS entry

# FPRs are ratios k / n_nonmembers; this slack keeps e.g. 1/100 from failing "<= 0.01" through
# rounding. It is far below 1 / n for any realistic number of non-members (n < 1e10).
_FPR_SLACK = 1e-12


def _check_scores(scores, members) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64)
    members = np.asarray(members)
    if scores.ndim != 1 or members.shape != scores.shape:
        raise ValueError(
            f"metrics: scores and members must be 1-D of the same length, got shapes {scores.shape} and {members.shape}"
        )
    if members.dtype != np.bool_:
        if not np.isin(members, (0, 1)).all():
            raise ValueError("metrics: members must be boolean (or 0/1)")
        members = members.astype(bool)
    if np.isnan(scores).any():
        raise ValueError(f"metrics: scores contain {int(np.isnan(scores).sum())} NaN value(s)")
    n_pos = int(members.sum())
    if n_pos == 0 or n_pos == members.size:
        raise ValueError(f"metrics: need both members and non-members, got {n_pos} members of {members.size} samples")
    return scores, members


def roc_curve(scores, members) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC curve of "predict member iff score >= threshold", one point per distinct score.

    Same points as ``sklearn.metrics.roc_curve(members, scores, drop_intermediate=False)``.

    Args:
        scores: (N,) float, higher = more likely a member; no NaN.
        members: (N,) bool ground truth; both classes must be present.

    Returns:
        ``(fpr, tpr, thresholds)``, each (P,) with P = (number of distinct scores) + 1. The first
        point is (0, 0) at threshold +inf, the last is (1, 1) at the smallest score; FPR and TPR are
        non-decreasing and thresholds strictly decreasing. Tied scores form a single point.

    Raises:
        ValueError: on a shape mismatch, NaN scores, or a missing class.
    """
    scores, members = _check_scores(scores, members)
    order = np.argsort(-scores, kind="stable")
    s = scores[order]
    y = members[order]
    tp = np.cumsum(y)
    fp = np.cumsum(~y)
    # The last index of each run of equal scores: a threshold there admits the whole run at once.
    # (Compare neighbours rather than np.diff, which turns a run of +-inf into NaN.)
    last = np.append(np.flatnonzero(s[1:] != s[:-1]), s.size - 1)
    fpr = np.concatenate(([0.0], fp[last] / fp[-1]))
    tpr = np.concatenate(([0.0], tp[last] / tp[-1]))
    thresholds = np.concatenate(([np.inf], s[last]))
    return fpr, tpr, thresholds


def roc_auc(scores, members) -> float:
    """Area under the ROC curve: P(member score > non-member score), ties counting 1/2.

    Args:
        scores: (N,) float, higher = more likely a member.
        members: (N,) bool ground truth; both classes must be present.
    """
    fpr, tpr, _ = roc_curve(scores, members)
    # Trapezoids: a tie between members and non-members is a diagonal segment, worth half a pair.
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0)


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """For each target FPR: the largest TPR among points with FPR <= target (the module's rule)."""
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.ndim != 1 or fpr.shape != tpr.shape or fpr.size == 0:
        raise ValueError(f"metrics: fpr and tpr must be 1-D, non-empty, equal length; got {fpr.shape}, {tpr.shape}")
    order = np.argsort(fpr, kind="stable")
    best = np.maximum.accumulate(tpr[order])  # best TPR among points with FPR <= fpr[order][j]
    idx = np.searchsorted(fpr[order], np.asarray(targets, dtype=np.float64) + _FPR_SLACK, side="right") - 1
    # A target below every point's FPR admits no threshold but "flag nobody", whose TPR is 0.
    return np.where(idx >= 0, best[np.maximum(idx, 0)], 0.0)


def tpr_at_fpr(fpr, tpr, target: float) -> float:
    """TPR at a target FPR: the largest TPR among the ROC points with FPR <= target.

    Each point is a threshold an attacker can set, so the value is achievable and, with no
    interpolation between points, conservative (Carlini et al. 2022 report this way). Example: with
    10 non-members, ``target=0.05`` admits only points with zero false positives. FPRs within 1e-12
    above the target count as equal to it (floating-point rounding of k / n).

    Args:
        fpr: (P,) false-positive rates of the ROC points (e.g. from `roc_curve`).
        tpr: (P,) true-positive rates of the same points.
        target: the FPR budget, in [0, 1].

    Returns:
        The TPR, in [0, 1]; 0.0 if no point has FPR <= target.
    """
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"metrics: target FPR must be in [0, 1], got {target}")
    return float(_tpr_at(fpr, tpr, np.array([target]))[0])


def balanced_accuracy(fpr, tpr) -> float:
    """Best balanced accuracy over the ROC points: max of (TPR + 1 - FPR) / 2.

    Args:
        fpr: (P,) false-positive rates; tpr: (P,) true-positive rates of the same points.
    """
    fpr = np.asarray(fpr, dtype=np.float64)
    tpr = np.asarray(tpr, dtype=np.float64)
    if fpr.shape != tpr.shape or fpr.size == 0:
        raise ValueError(f"metrics: fpr and tpr must be non-empty and of equal shape; got {fpr.shape}, {tpr.shape}")
    return float(np.max((tpr + 1.0 - fpr) / 2.0))


def roc_points(fpr, tpr, min_fpr: float = 1e-5, n: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """The ROC curve resampled on a log-spaced FPR grid, for log-log plots.

    The grid runs from ``floor`` to 1 in ``n`` geometrically spaced points, where ``floor`` is the
    larger of ``min_fpr`` and the smallest non-zero FPR on the curve. That smallest FPR is
    ``1 / n_nonmembers`` unless the highest-scoring non-members tie (then a multiple of it); below it
    the curve holds no information, since the only threshold there is the zero-false-positive one.
    TPR at each grid point follows the rule of `tpr_at_fpr` (largest TPR with FPR <= grid point).

    Args:
        fpr: (P,) false-positive rates; tpr: (P,) true-positive rates of the same points.
        min_fpr: the lowest FPR to plot, in (0, 1].
        n: number of grid points (>= 2).

    Returns:
        ``(grid_fpr, grid_tpr)``, each (n,); grid_fpr increasing from ``floor`` to 1.0, grid_tpr
        non-decreasing, in [0, 1].
    """
    if not 0.0 < min_fpr <= 1.0:
        raise ValueError(f"metrics: min_fpr must be in (0, 1], got {min_fpr}")
    if n < 2:
        raise ValueError(f"metrics: n must be >= 2, got {n}")
    fpr = np.asarray(fpr, dtype=np.float64)
    positive = fpr[fpr > 0]
    floor = max(min_fpr, float(positive.min()) if positive.size else 1.0)
    grid = np.geomspace(floor, 1.0, n)
    return grid, _tpr_at(fpr, tpr, grid)


def attack_metrics(scores, members) -> dict[str, float]:
    """The headline numbers of one attack on one target model.

    Args:
        scores: (N,) float, higher = more likely a member; members: (N,) bool ground truth.

    Returns:
        ``{"auc", "balanced_acc", "tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct", "n_members",
        "n_nonmembers"}``, all floats. The TPRs use `tpr_at_fpr`'s rule at `FPR_LEVELS`; note that a
        level below ``1 / n_nonmembers`` reads the TPR at zero false positives.
    """
    scores, members = _check_scores(scores, members)
    fpr, tpr, _ = roc_curve(scores, members)
    out = {
        "auc": float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1])) / 2.0),
        "balanced_acc": balanced_accuracy(fpr, tpr),
    }
    for key, value in zip(_FPR_KEYS, _tpr_at(fpr, tpr, np.array(FPR_LEVELS))):
        out[key] = float(value)
    out["n_members"] = float(members.sum())
    out["n_nonmembers"] = float((~members).sum())
    return out


def mean_std(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Mean and sample standard deviation of each numeric key over several targets.

    Args:
        rows: one dict per target (e.g. from `attack_metrics`), all with the same numeric keys.
            Non-numeric values (strings, booleans) are skipped.

    Returns:
        ``{k + "_mean", k + "_std"}`` for every numeric key k, plus ``"n_targets"``. The std uses
        ddof=1 (the targets are a sample). Note: with a single row the sample std is undefined and
        is reported as 0.0; ``n_targets == 1`` tells the reader there is no spread to speak of.
        NaN values propagate.

    Raises:
        ValueError: if rows is empty or a numeric key is missing from (or non-numeric in) some row.
    """
    if len(rows) == 0:
        raise ValueError("metrics: mean_std needs at least one row")
    keys = [k for k, v in rows[0].items() if is_number(v)]
    out: dict[str, float] = {}
    for key in keys:
        bad = [i for i, row in enumerate(rows) if key not in row or not is_number(row[key])]
        if bad:
            raise ValueError(f"metrics: key {key!r} is missing or non-numeric in row(s) {bad}")
        values = np.array([float(row[key]) for row in rows])
        out[f"{key}_mean"] = float(values.mean())
        out[f"{key}_std"] = float(values.std(ddof=1)) if values.size > 1 else 0.0
    extra = sorted({k for row in rows[1:] for k, v in row.items() if is_number(v)} - set(keys))
    if extra:
        raise ValueError(f"metrics: numeric key(s) {extra} are missing from row 0")
    out["n_targets"] = float(len(rows))
    return out


def clopper_pearson(k: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Exact binomial interval for k successes in n trials (Clopper & Pearson 1934)."""
    if n <= 0:
        return float("nan"), float("nan")
    alpha = 1 - confidence
    lo = 0.0 if k == 0 else float(stats.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(stats.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def pooled_low_fpr(scores, members, levels: Sequence[float] = FPR_LEVELS) -> dict[str, dict[str, float]]:
    """TPR at low FPR pooled over target models, with an exact binomial interval.

    Each target is thresholded at its own FPR level (`tpr_at_fpr`'s rule, on its own non-members);
    its true positives are counted, and the counts are pooled: TPR = sum TP / sum members. A level
    below 1 / (a target's non-members) cannot be resolved (it reads the TPR at zero false positives):
    such a level is marked `resolvable: False`. The Clopper-Pearson interval treats the pooled
    members as independent trials: it is an interval within one training draw (the targets share
    shadow models and data), not a statement about the group across draws.

    Args:
        scores, members: (T, N) per target model.

    Returns:
        {key: {"tpr", "lo", "hi", "tp", "n_members", "n_nonmembers_min", "resolvable"}} with the keys
        of `attack_metrics` ("tpr_at_1pct", ...) for the levels given.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    members = np.atleast_2d(np.asarray(members, dtype=bool))
    if scores.shape != members.shape:
        raise ValueError(f"metrics: scores {scores.shape} and members {members.shape} differ")
    levels = np.asarray(levels, dtype=np.float64)
    tp = np.zeros(len(levels))
    for s, m in zip(scores, members):
        fpr, tpr, _ = roc_curve(s, m)
        tp += np.rint(_tpr_at(fpr, tpr, levels) * m.sum())
    n = int(members.sum())
    n_non = int((~members).sum(axis=1).min())
    keys = dict(zip(FPR_LEVELS, _FPR_KEYS))
    out = {}
    for level, k in zip(levels, tp.astype(int)):
        lo, hi = clopper_pearson(int(k), n)
        key = keys.get(float(level), f"tpr_at_{level:g}")
        out[key] = {
            "tpr": k / n if n else float("nan"),
            "lo": lo,
            "hi": hi,
            "tp": int(k),
            "n_members": n,
            "n_nonmembers_min": n_non,
            "resolvable": bool(level * n_non >= 1 - _FPR_SLACK),
        }
    return out
