"""Feldman-Zhang memorization, per-sample privacy risk, and analysis by memorization bin.

    mem_i = P(correct on i | i in training set) - P(correct on i | i held out)

estimated over a group's models (Feldman & Zhang 2020). Binning the pool by memorization and
looking at held-out accuracy and attack TPR per bin shows who pays for privacy: the DeMem paper
finds that DP-SGD costs accuracy mostly in the low-memorization bins, which leaked little anyway.
"""

from __future__ import annotations

import numpy as np

from demem.privacy.roc import roc_curve

BIN_WIDTH = 0.05
N_BINS = 21  # bin 0: mem <= 0; bin k: ((k-1) * 0.05, k * 0.05]; bin 20: (0.95, 1]


def memorization(correct: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """Feldman-Zhang memorization per sample.

    Args:
        correct: (M, N) bool, model m classifies sample i correctly (unaugmented query).
        keep: (M, N) bool, model m trained on sample i.

    Returns:
        (N,) float64 in [-1, 1]; NaN where a sample has no IN or no OUT model.
    """
    correct = correct.astype(np.float64)
    n_in = keep.sum(0)
    n_out = (~keep).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        p_in = (correct * keep).sum(0) / n_in
        p_out = (correct * ~keep).sum(0) / n_out
    return p_in - p_out


def mem_bin(mem: np.ndarray) -> np.ndarray:
    """Bin index in [0, 20] of each memorization value (NaN -> -1)."""
    idx = np.clip(np.ceil(np.round(mem / BIN_WIDTH, 9)), 0, N_BINS - 1)
    return np.where(np.isnan(mem), -1, idx).astype(np.int64)


def per_sample_risk(scores: np.ndarray, keep: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per-sample privacy risk: the mean membership log-likelihood ratio (LiRA score) a sample gets
    from the target models that trained on it. High means its membership is easy to tell.

    Args:
        scores: (T, N) LiRA scores of targets `targets` (indices into keep's rows).
        keep: (M, N) bool.

    Returns:
        (N,) float64; NaN for samples that are in none of the targets.
    """
    member = keep[targets]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (scores * member).sum(0) / member.sum(0)


def bin_table(
    mem: np.ndarray,
    correct: np.ndarray,
    keep: np.ndarray,
    scores: np.ndarray | None = None,
    targets: np.ndarray | None = None,
    fprs: tuple[float, ...] = (0.01, 0.001),
) -> list[dict[str, float]]:
    """Per memorization bin: sample count, held-out accuracy and attack TPR at low FPR.

    Held-out accuracy of a sample is P(correct | i out) over the group's models. For the TPR, each
    target's threshold is set on ALL its non-members for the global FPR, and the TPR is measured on
    the target's members that fall in the bin, then averaged over targets.

    Args:
        mem: (N,) memorization used for binning (possibly from another group: a reference).
        correct, keep: (M, N) of the group being analysed.
        scores: (T, N) membership scores of targets `targets`, or None to skip TPRs.
    """
    bins = mem_bin(mem)
    correct = correct.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc_out = (correct * ~keep).sum(0) / (~keep).sum(0)
    thresholds = []
    if scores is not None:
        for t, row in zip(targets, scores):
            member = keep[t]
            fpr, tpr, thr = roc_curve(row, member)
            per = []
            for level in fprs:
                ok = np.flatnonzero(fpr <= level)
                per.append(thr[ok[np.argmax(tpr[ok])]])  # the threshold tpr_at_fpr picks
            thresholds.append(per)
    rows = []
    for b in range(N_BINS):
        sel = bins == b
        row = {
            "bin": b,
            "lo": (b - 1) * BIN_WIDTH if b else -1.0,
            "hi": b * BIN_WIDTH,
            "n": int(sel.sum()),
            "heldout_acc": float(np.nanmean(acc_out[sel])) if sel.any() else float("nan"),
        }
        for j, level in enumerate(fprs):
            vals = []
            if scores is not None:
                for (t, r), thr in zip(zip(targets, scores), thresholds):
                    m = keep[t] & sel
                    if m.any():
                        vals.append(float((r[m] >= thr[j]).mean()))
            row[f"tpr_at_{_pct(level)}"] = float(np.mean(vals)) if vals else float("nan")
        rows.append(row)
    return rows


def _pct(level: float) -> str:
    return {0.01: "1pct", 0.001: "0_1pct", 0.0001: "0_01pct"}.get(level, f"{level:g}")


__all__ = ["BIN_WIDTH", "N_BINS", "bin_table", "mem_bin", "memorization", "per_sample_risk"]
