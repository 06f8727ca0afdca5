"""Tests for demem.privacy.roc: against scikit-learn, against hand-computed ROC curves, invariants."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from demem.privacy.roc import (
    FPR_LEVELS,
    attack_metrics,
    balanced_accuracy,
    mean_std,
    roc_auc,
    roc_curve,
    roc_points,
    tpr_at_fpr,
)


def random_case(seed: int, n: int, member_frac: float, ties: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    members = rng.random(n) < member_frac
    members[:2] = (True, False)  # both classes present whatever the draw
    scores = rng.normal(size=n) + 0.7 * members
    if ties:
        scores = np.round(scores * 2) / 2  # a handful of distinct values, many ties across classes
    return scores, members


CASES = [
    (seed, n, frac, ties)
    for seed in range(4)
    for n, frac in ((500, 0.5), (300, 0.1), (1000, 0.9))
    for ties in (False, True)
]


@pytest.mark.parametrize("seed,n,frac,ties", CASES)
def test_auc_and_curve_match_sklearn(seed, n, frac, ties):
    scores, members = random_case(seed, n, frac, ties)
    assert abs(roc_auc(scores, members) - skm.roc_auc_score(members, scores)) < 1e-9
    fpr, tpr, thr = roc_curve(scores, members)
    s_fpr, s_tpr, s_thr = skm.roc_curve(members, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, s_fpr, rtol=0, atol=1e-12)
    np.testing.assert_allclose(tpr, s_tpr, rtol=0, atol=1e-12)
    # sklearn's first threshold has varied between versions (max + 1, then inf); the rest are the scores.
    assert thr[0] == np.inf
    np.testing.assert_array_equal(thr[1:], s_thr[1:])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_balanced_accuracy_matches_sklearn_best_threshold():
    scores, members = random_case(7, 400, 0.3, ties=True)
    fpr, tpr, thr = roc_curve(scores, members)
    best = max(skm.balanced_accuracy_score(members, scores >= t) for t in np.unique(scores))
    assert abs(balanced_accuracy(fpr, tpr) - best) < 1e-12


# A hand-built attack: 5 members, 10 non-members.
HAND_MEMBERS = [0.95, 0.9, 0.7, 0.6, 0.3]
HAND_NONMEMBERS = [0.8, 0.5, 0.4, 0.35, 0.25, 0.2, 0.15, 0.1, 0.05, 0.0]
# Descending: .95 M, .9 M, .8 N, .7 M, .6 M, .5 N, .4 N, .35 N, .3 M, then only N.
# ROC points (FPR, TPR), thresholds from +inf down:
#   (0, 0) (0, .2) (0, .4) (.1, .4) (.1, .6) (.1, .8) (.2, .8) (.3, .8) (.4, .8) (.4, 1) (.5, 1) ... (1, 1)
# Largest TPR with FPR <= 0.1: 0.8 (threshold 0.6). With FPR <= 0.2: still 0.8. With FPR <= 0.05 (only
# zero false positives): 0.4. With FPR <= 0.4: 1.0.
# Balanced accuracy: (TPR + 1 - FPR) / 2 is largest at (.1, .8): (0.8 + 0.9) / 2 = 0.85.
# AUC: non-members below each member: .95 -> 10, .9 -> 10, .7 -> 9, .6 -> 9, .3 -> 6; 44 / 50 = 0.88.


def hand_case() -> tuple[np.ndarray, np.ndarray]:
    scores = np.array(HAND_MEMBERS + HAND_NONMEMBERS)
    members = np.array([True] * 5 + [False] * 10)
    perm = np.random.default_rng(0).permutation(scores.size)  # order must not matter
    return scores[perm], members[perm]


def test_hand_built_roc():
    scores, members = hand_case()
    fpr, tpr, _ = roc_curve(scores, members)
    assert tpr_at_fpr(fpr, tpr, 0.1) == pytest.approx(0.8, abs=1e-12)
    assert tpr_at_fpr(fpr, tpr, 0.2) == pytest.approx(0.8, abs=1e-12)
    assert tpr_at_fpr(fpr, tpr, 0.05) == pytest.approx(0.4, abs=1e-12)
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(0.4, abs=1e-12)
    assert tpr_at_fpr(fpr, tpr, 0.4) == pytest.approx(1.0, abs=1e-12)
    assert balanced_accuracy(fpr, tpr) == pytest.approx(0.85, abs=1e-12)
    assert roc_auc(scores, members) == pytest.approx(0.88, abs=1e-12)
    m = attack_metrics(scores, members)
    # 10 non-members: every FPR level below 0.1 admits only zero false positives -> 0.4.
    assert m["tpr_at_1pct"] == m["tpr_at_0_1pct"] == m["tpr_at_0_01pct"] == pytest.approx(0.4, abs=1e-12)
    assert (m["n_members"], m["n_nonmembers"]) == (5.0, 10.0)


def test_ties_count_half():
    # Pairs (member, non-member): (1, .5) win, (1, 0) win, (.5, .5) tie = 1/2, (.5, 0) win: 3.5 / 4.
    scores = np.array([1.0, 0.5, 0.5, 0.0])
    members = np.array([True, True, False, False])
    assert roc_auc(scores, members) == pytest.approx(0.875, abs=1e-12)
    fpr, tpr, thr = roc_curve(scores, members)
    assert thr.size == 4  # +inf and the three distinct scores: the tie at 0.5 is one point
    # At threshold 0.5 both tied samples are flagged together: (FPR, TPR) jumps from (0, .5) to (.5, 1).
    np.testing.assert_allclose(np.c_[fpr, tpr], [[0, 0], [0, 0.5], [0.5, 1], [1, 1]])


def test_perfect_and_reversed():
    members = np.array([True] * 50 + [False] * 200)
    scores = np.where(members, 1.0, 0.0) + np.linspace(0, 0.5, members.size)
    m = attack_metrics(scores, members)
    assert m["auc"] == 1.0 and m["balanced_acc"] == 1.0
    assert all(m[k] == 1.0 for k in ("tpr_at_1pct", "tpr_at_0_1pct", "tpr_at_0_01pct"))
    r = attack_metrics(-scores, members)
    assert r["auc"] == 0.0 and r["tpr_at_1pct"] == 0.0
    assert r["balanced_acc"] == 0.5  # the best "threshold" flags nobody (or everybody)


def test_tpr_at_fpr_rule_on_random_curves():
    """The rule restated directly: max TPR over points with FPR <= target, no interpolation."""
    scores, members = random_case(3, 2000, 0.5, ties=False)
    fpr, tpr, _ = roc_curve(scores, members)
    for target in (0.0, 0.001, 0.01, 0.0503, 0.3, 1.0):
        expected = max(t for f, t in zip(fpr, tpr) if f <= target)
        assert tpr_at_fpr(fpr, tpr, target) == expected
    m = attack_metrics(scores, members)
    assert m["tpr_at_1pct"] == tpr_at_fpr(fpr, tpr, FPR_LEVELS[0])
    with pytest.raises(ValueError):
        tpr_at_fpr(fpr, tpr, 1.5)


def test_roc_points():
    scores, members = random_case(5, 3000, 0.5, ties=False)
    fpr, tpr, _ = roc_curve(scores, members)
    n_non = int((~members).sum())
    gf, gt = roc_points(fpr, tpr, min_fpr=1e-5, n=50)
    assert gf.shape == gt.shape == (50,)
    assert gf[0] == pytest.approx(1.0 / n_non) and gf[-1] == pytest.approx(1.0)  # 1/n_non > 1e-5
    assert np.all(np.diff(gf) > 0) and np.all(np.diff(gt) >= 0)
    assert np.all((gt >= 0) & (gt <= 1))
    np.testing.assert_allclose(np.diff(np.log(gf)), np.log(gf[1] / gf[0]))  # log-spaced
    for f, t in zip(gf[::7], gt[::7]):
        assert t == tpr_at_fpr(fpr, tpr, f)
    gf2, _ = roc_points(fpr, tpr, min_fpr=0.01, n=11)
    assert gf2[0] == pytest.approx(0.01)  # min_fpr above 1/n_non: the floor is min_fpr


def test_bad_inputs():
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_auc(np.arange(4.0), np.ones(4, bool))
    with pytest.raises(ValueError, match="NaN"):
        roc_curve(np.array([0.1, np.nan, 0.3]), np.array([True, False, True]))
    with pytest.raises(ValueError, match="same length"):
        roc_curve(np.zeros(3), np.zeros(4, bool))


def test_mean_std_against_numpy():
    rng = np.random.default_rng(0)
    rows = [attack_metrics(rng.normal(size=200) + 0.5 * (m := rng.random(200) < 0.5), m) for _ in range(5)]
    for row in rows:
        row["variant"] = "online"  # non-numeric: skipped
    out = mean_std(rows)
    assert out["n_targets"] == 5.0
    for key in ("auc", "balanced_acc", "tpr_at_1pct", "n_members"):
        values = np.array([r[key] for r in rows])
        assert out[f"{key}_mean"] == pytest.approx(values.mean(), abs=1e-15)
        assert out[f"{key}_std"] == pytest.approx(values.std(ddof=1), abs=1e-15)
    assert "variant_mean" not in out
    one = mean_std(rows[:1])
    assert one["auc_std"] == 0.0 and one["auc_mean"] == rows[0]["auc"] and one["n_targets"] == 1.0
    with pytest.raises(ValueError, match="missing"):
        mean_std([{"auc": 0.5}, {"tpr": 0.1}])
    with pytest.raises(ValueError):
        mean_std([])
