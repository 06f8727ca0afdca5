"""Pooled low-FPR TPR with exact binomial intervals, against a brute-force count and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from demem.privacy.roc import clopper_pearson, pooled_low_fpr


def _brute_tp(scores, members, level):
    """The most true positives among thresholds with at most floor(level * non-members) false
    positives: every threshold an attacker can set, tried one by one."""
    n_non = int((~members).sum())
    allowed = int(np.floor(level * n_non + 1e-9))
    best = 0
    for thr in np.concatenate([np.unique(scores), [np.inf]]):
        pred = scores >= thr
        if (pred & ~members).sum() <= allowed:
            best = max(best, int((pred & members).sum()))
    return best


def test_pooled_counts_match_brute_force_and_scipys_exact_interval():
    rng = np.random.default_rng(0)
    t, n = 4, 300
    members = rng.random((t, n)) < 0.5
    scores = rng.normal(size=(t, n)) + 1.5 * members
    scores[:, :20] = np.round(scores[:, :20], 1)  # some ties
    got = pooled_low_fpr(scores, members, levels=(0.01, 0.05))
    for key, level in (("tpr_at_1pct", 0.01), ("tpr_at_0.05", 0.05)):
        k = sum(_brute_tp(s, m, level) for s, m in zip(scores, members))
        n_mem = int(members.sum())
        ref = stats.binomtest(k, n_mem).proportion_ci(confidence_level=0.95, method="exact")
        assert got[key]["tp"] == k and got[key]["n_members"] == n_mem
        assert got[key]["tpr"] == pytest.approx(k / n_mem)
        assert (got[key]["lo"], got[key]["hi"]) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_levels_below_one_over_non_members_are_below_resolution():
    members = np.zeros((2, 400), dtype=bool)
    members[:, :200] = True  # 200 non-members per target
    scores = np.random.default_rng(1).normal(size=(2, 400))
    got = pooled_low_fpr(scores, members)
    assert got["tpr_at_1pct"]["resolvable"] and not got["tpr_at_0_1pct"]["resolvable"]
    assert got["tpr_at_1pct"]["n_nonmembers_min"] == 200


def test_clopper_pearson_edges():
    assert clopper_pearson(0, 10)[0] == 0.0 and clopper_pearson(10, 10)[1] == 1.0
    lo, hi = clopper_pearson(0, 10)
    assert hi == pytest.approx(1 - 0.025 ** (1 / 10))  # the closed form at k = 0
