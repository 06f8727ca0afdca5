"""Tests for demem.privacy.mia: LiRA against a slow oracle and analytic AUCs; threshold attacks."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import balanced_accuracy_score

from demem.membership import keep_mask
from demem.privacy.mia import (
    LIRA_VARIANTS,
    STD_FLOOR,
    THRESHOLD_ATTACKS,
    apply_class_thresholds,
    balanced_accuracy_of,
    class_thresholds,
    lira_scores,
    threshold_score,
)
from demem.privacy.roc import roc_auc

ANALYTIC_AUC = stats.norm.cdf(1 / np.sqrt(2))  # P(X_in > X_out), X_in ~ N(1, 1), X_out ~ N(0, 1): ~0.7602


def pooled_auc(scores: np.ndarray, keep: np.ndarray, targets) -> float:
    """AUC of the scores of several targets pooled together (same distributions for every target)."""
    return roc_auc(scores.ravel(), keep[list(targets)].ravel())


# ---------------------------------------------------------------------------------------------------
# The slow, obvious oracle
# ---------------------------------------------------------------------------------------------------


def oracle_lira(signals: np.ndarray, keep: np.ndarray, variant: str) -> np.ndarray:
    """Per target, per sample, per query: fit on np.delete(..., t), then the textbook formulas."""
    if signals.ndim == 2:
        signals = signals[:, :, None]
    n_models, n_samples, n_queries = signals.shape
    out = np.zeros((n_models, n_samples))
    for t in range(n_models):
        shadow_x = np.delete(signals, t, axis=0)
        shadow_keep = np.delete(keep, t, axis=0)
        mu_in = np.zeros((n_samples, n_queries))
        mu_out = np.zeros((n_samples, n_queries))
        sd_in = np.zeros((n_samples, n_queries))
        sd_out = np.zeros((n_samples, n_queries))
        for i in range(n_samples):
            for k in range(n_queries):
                xin = shadow_x[shadow_keep[:, i], i, k]
                xout = shadow_x[~shadow_keep[:, i], i, k]
                if xin.size:
                    mu_in[i, k], sd_in[i, k] = np.mean(xin), max(np.std(xin), STD_FLOOR)
                mu_out[i, k], sd_out[i, k] = np.mean(xout), max(np.std(xout), STD_FLOOR)
        if variant.endswith("_fixed"):
            sd_in = np.broadcast_to(np.median(sd_in, axis=0), sd_in.shape)
            sd_out = np.broadcast_to(np.median(sd_out, axis=0), sd_out.shape)
        for i in range(n_samples):
            per_query = []
            for k in range(n_queries):
                x = signals[t, i, k]
                if variant.startswith("online"):
                    per_query.append(
                        stats.norm.logpdf(x, mu_in[i, k], sd_in[i, k])
                        - stats.norm.logpdf(x, mu_out[i, k], sd_out[i, k])
                    )
                else:
                    per_query.append(stats.norm.logcdf(x, mu_out[i, k], sd_out[i, k]))
            out[t, i] = np.mean(per_query)
    return out


def uneven_keep(rng: np.random.Generator, n_models: int, n_samples: int, lo: int) -> np.ndarray:
    """Random keep with between lo and n_models - lo IN models per sample (unequal IN/OUT sizes)."""
    keep = np.zeros((n_models, n_samples), dtype=bool)
    for i in range(n_samples):
        n_in = rng.integers(lo, n_models - lo + 1)
        keep[rng.choice(n_models, n_in, replace=False), i] = True
    return keep


@pytest.mark.parametrize("variant", LIRA_VARIANTS)
def test_matches_oracle_balanced(variant):
    rng = np.random.default_rng(1)
    n_models, n_samples = 6, 50
    keep = keep_mask(n_models, n_samples, seed=3)  # each sample IN for exactly 3 models
    offsets = rng.normal(0, 3, size=(1, n_samples, 1))
    signals = offsets + rng.normal(size=(n_models, n_samples, 2)) + 1.5 * keep[:, :, None]
    got = lira_scores(signals, keep, variant=variant)
    np.testing.assert_allclose(got, oracle_lira(signals, keep, variant), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("variant", LIRA_VARIANTS)
def test_matches_oracle_uneven_groups_float32_and_subset(variant):
    rng = np.random.default_rng(2)
    n_models, n_samples = 9, 40
    keep = uneven_keep(rng, n_models, n_samples, lo=3)
    signals = (rng.normal(5, 2, size=(n_models, n_samples, 3)) + keep[:, :, None]).astype(np.float32)
    signals[4, :7] = signals[4, 7:14]  # duplicate values must change nothing
    expected = oracle_lira(signals.astype(np.float64), keep, variant)
    targets = [7, 0, 4]
    got = lira_scores(signals, keep, variant=variant, targets=targets)
    assert got.shape == (3, n_samples) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected[targets], rtol=1e-9, atol=1e-9)


def test_two_dimensional_signals_mean_one_query():
    rng = np.random.default_rng(3)
    keep = keep_mask(8, 30, seed=0)
    signals = rng.normal(size=(8, 30))
    np.testing.assert_array_equal(lira_scores(signals, keep), lira_scores(signals[:, :, None], keep))
    np.testing.assert_allclose(lira_scores(signals, keep), oracle_lira(signals, keep, "online"), rtol=1e-9, atol=1e-9)


def test_leave_one_out_own_row_never_fitted():
    """Target t's fits must not move when t's own signals do: its score changes only through x."""
    rng = np.random.default_rng(4)
    n_models, n_samples, t = 8, 60, 2
    keep = keep_mask(n_models, n_samples, seed=1)
    signals = rng.normal(size=(n_models, n_samples, 2))
    other = signals.copy()
    # Far from anything the others produce: folded into its own fits, it would move every mean and std.
    # (Not 1e6 away: the score itself, a difference of two squared z-scores, then loses digits in any
    # implementation, the oracle included.)
    other[t] = 30.0 + 10.0 * rng.normal(size=(n_samples, 2))
    for variant in LIRA_VARIANTS:
        for sig in (signals, other):
            got = lira_scores(sig, keep, variant=variant, targets=[t])[0]
            np.testing.assert_allclose(got, oracle_lira(sig, keep, variant)[t], rtol=1e-9, atol=1e-9)
    # And t is a shadow of every other target: changing its row must change their scores.
    a = lira_scores(signals, keep, targets=[0])
    b = lira_scores(other, keep, targets=[0])
    assert not np.allclose(a, b)


def test_constant_signal_is_finite():
    keep = keep_mask(6, 10, seed=0)
    signals = np.ones((6, 10, 2))
    for variant in LIRA_VARIANTS:
        scores = lira_scores(signals, keep, variant=variant)
        assert np.isfinite(scores).all()


# ---------------------------------------------------------------------------------------------------
# Statistical behaviour on synthetic Gaussian signals
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gaussian_group():
    """M = 64 models, N = 2000 samples, each IN for exactly 32 models; IN ~ N(1, 1), OUT ~ N(0, 1)."""
    rng = np.random.default_rng(10)
    keep = keep_mask(64, 2000, seed=10)
    signals = rng.normal(size=keep.shape) + keep
    return signals, keep


@pytest.mark.parametrize("variant", LIRA_VARIANTS)
def test_analytic_auc(gaussian_group, variant):
    # Online, equal variances: the log-likelihood ratio is x - 1/2, monotone in x; offline, log Phi(x)
    # is monotone in x too. Either way the AUC is P(X_in > X_out) = Phi(1 / sqrt(2)), up to the noise
    # of fitting 31-32 shadows per group.
    signals, keep = gaussian_group
    targets = [0, 17, 40, 63]
    scores = lira_scores(signals, keep, variant=variant, targets=targets)
    assert abs(pooled_auc(scores, keep, targets) - ANALYTIC_AUC) < 0.02


def test_per_sample_calibration_beats_global_threshold():
    rng = np.random.default_rng(11)
    keep = keep_mask(32, 2000, seed=11)
    mu_out = rng.normal(0, 3, size=2000)  # sample difficulty varies a lot
    signals = mu_out + rng.normal(size=keep.shape) + 2.0 * keep
    targets = [0, 1, 2, 3]
    lira = pooled_auc(lira_scores(signals, keep, targets=targets), keep, targets)
    raw = pooled_auc(signals[targets], keep, targets)  # one global threshold on the raw signal
    assert lira - raw > 0.1, (lira, raw)


@pytest.mark.parametrize("variant", LIRA_VARIANTS)
def test_shuffled_membership_is_chance(variant):
    rng = np.random.default_rng(12)
    signals = rng.normal(size=(32, 2000, 2))  # nothing depends on membership
    keep = keep_mask(32, 2000, seed=12)
    targets = list(range(8))
    scores = lira_scores(signals, keep, variant=variant, targets=targets)
    assert abs(pooled_auc(scores, keep, targets) - 0.5) < 0.05


# ---------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------


def test_min_shadows_error():
    keep = keep_mask(8, 20, seed=0)
    keep[:, 5] = False
    keep[3, 5] = True  # sample 5 is IN for model 3 only
    signals = np.random.default_rng(0).normal(size=(8, 20))
    with pytest.raises(ValueError, match=r"1 of 20 samples have fewer than 2 IN or OUT.*fewest IN shadows 0"):
        lira_scores(signals, keep)
    with pytest.raises(ValueError, match="fewest IN shadows 1"):
        lira_scores(signals, keep, targets=[0, 1])  # model 3 is a shadow for these targets
    lira_scores(signals, keep, targets=[0], min_shadows=1)  # one IN shadow is allowed when asked
    # Offline needs OUT shadows only; sample 5 has 6-7 of them.
    assert np.isfinite(lira_scores(signals, keep, variant="offline")).all()
    keep[:, 6] = True
    with pytest.raises(ValueError, match=r"fewer than 2 OUT shadow.*fewest OUT shadows 0"):
        lira_scores(signals, keep, variant="offline_fixed")


def test_bad_arguments():
    keep = keep_mask(4, 10, seed=0)
    signals = np.zeros((4, 10))
    with pytest.raises(ValueError, match="online, online_fixed, offline, offline_fixed"):
        lira_scores(signals, keep, variant="global")
    with pytest.raises(ValueError, match="keep must be"):
        lira_scores(signals, keep[:, :9])
    with pytest.raises(ValueError, match="targets"):
        lira_scores(signals, keep, targets=[4])
    bad = signals.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        lira_scores(bad, keep)


# ---------------------------------------------------------------------------------------------------
# Threshold attacks
# ---------------------------------------------------------------------------------------------------


def test_threshold_score_signs():
    rng = np.random.default_rng(20)
    members = rng.random(1000) < 0.5
    loss = rng.exponential(1.0, 1000) * np.where(members, 0.3, 1.0)  # members: lower loss
    entropy = loss / 2
    mentropy = loss * 3
    phi = -np.log(loss)  # members: higher confidence
    signals = {"loss": loss, "phi": phi, "entropy": entropy, "mentropy": mentropy}
    for kind in THRESHOLD_ATTACKS:
        scores = threshold_score(kind, **signals)
        assert roc_auc(scores, members) > 0.7, kind
    np.testing.assert_array_equal(threshold_score("loss", loss=loss), -loss)
    np.testing.assert_array_equal(threshold_score("confidence", phi=phi), phi)
    two_queries = np.c_[loss, loss + 2]
    np.testing.assert_allclose(threshold_score("loss", loss=two_queries), -(loss + 1))
    with pytest.raises(ValueError, match="loss, confidence, entropy, modified_entropy"):
        threshold_score("gap", loss=loss)
    with pytest.raises(ValueError, match="mentropy"):
        threshold_score("modified_entropy", loss=loss)


def two_scale_data(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class 0: members around 6, non-members around 4; class 1: members around -4, non-members -6."""
    labels = rng.integers(0, 2, n)
    members = rng.random(n) < 0.5
    centre = np.where(labels == 0, 5.0, -5.0) + np.where(members, 1.0, -1.0)
    return centre + rng.normal(0, 0.5, n), members, labels


def test_class_thresholds_beat_global():
    rng = np.random.default_rng(21)
    shadow_scores, shadow_members, shadow_labels = two_scale_data(rng, 4000)
    thresholds = class_thresholds(shadow_scores, shadow_members, shadow_labels, num_classes=2)
    assert thresholds.shape == (2,)
    assert 4 < thresholds[0] < 6 and -6 < thresholds[1] < -4
    scores, members, labels = two_scale_data(rng, 4000)  # the target: fresh data
    per_class = balanced_accuracy_of(apply_class_thresholds(scores, labels, thresholds), members)
    global_thr = class_thresholds(shadow_scores, shadow_members, np.zeros(4000, int), num_classes=1)[0]
    single = balanced_accuracy_of(scores >= global_thr, members)
    assert per_class > single + 0.1, (per_class, single)
    assert per_class > 0.95


def test_class_thresholds_maximise_balanced_accuracy_and_fallback():
    rng = np.random.default_rng(22)
    scores = rng.normal(size=300)
    members = rng.random(300) < 0.4
    labels = rng.integers(0, 3, 300)
    labels[members & (labels == 2)] = 1  # class 2 has no members in the shadow
    thr = class_thresholds(scores, members, labels, num_classes=4)  # class 3 has no samples at all
    for c in (0, 1):
        sel = labels == c
        best = max(balanced_accuracy_score(members[sel], scores[sel] >= s) for s in scores[sel])
        assert balanced_accuracy_of(scores[sel] >= thr[c], members[sel]) == pytest.approx(best, abs=1e-12)
    global_thr = class_thresholds(scores, members, np.zeros(300, int), num_classes=1)[0]
    assert thr[2] == thr[3] == global_thr


def test_balanced_accuracy_of_matches_sklearn():
    rng = np.random.default_rng(23)
    members = rng.random(500) < 0.3
    pred = rng.random(500) < 0.5
    assert balanced_accuracy_of(pred, members) == pytest.approx(balanced_accuracy_score(members, pred), abs=1e-12)
    with pytest.raises(ValueError):
        balanced_accuracy_of(pred, np.ones(500, bool))


def test_excluding_the_complementary_partner_removes_the_small_group_bias():
    # Signals that carry no membership at all, pair-structured keep masks, few models: plain
    # leave-one-out gives the IN fit one shadow fewer than the OUT fit exactly for members, which
    # biases online LiRA below 0.5; leaving out the target's partner as well balances both sides.
    rng = np.random.default_rng(0)
    m, n = 8, 3000
    keep = keep_mask(m, n, seed=1)
    signals = rng.normal(size=(m, n, 2)) + rng.normal(size=(1, n, 2)) * 2  # per-sample offsets, no membership
    targets = np.arange(m)
    partners = targets ^ 1
    plain = lira_scores(signals, keep, variant="online")
    paired = lira_scores(signals, keep, variant="online", exclude=partners)
    auc_plain = np.mean([roc_auc(plain[t], keep[t]) for t in targets])
    auc_paired = np.mean([roc_auc(paired[t], keep[t]) for t in targets])
    assert auc_plain < 0.47  # the bias this option exists to remove
    assert abs(auc_paired - 0.5) < 0.015
    # And the scores equal a slow fit on the models left after removing target and partner.
    for t in (0, 5):
        rest = np.setdiff1d(np.arange(m), [t, t ^ 1])
        x, k = signals[rest], keep[rest]
        for i in (0, 17):
            ins, outs = x[k[:, i], i], x[~k[:, i], i]
            want = np.mean(
                [
                    stats.norm.logpdf(signals[t, i, q], ins[:, q].mean(), ins[:, q].std())
                    - stats.norm.logpdf(signals[t, i, q], outs[:, q].mean(), outs[:, q].std())
                    for q in range(2)
                ]
            )
            assert paired[t, i] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_own_membership_scores_a_models_own_members():
    from demem.evaluate import own_membership

    rng = np.random.default_rng(0)
    keep = np.zeros(2000, dtype=bool)
    keep[:1000] = True
    loss = rng.exponential(1.0, size=(2000, 2))
    loss[keep] *= 0.2  # members have much lower loss: the attack separates them
    sep = own_membership({"loss": loss}, keep)
    assert sep["mia_auc"] > 0.9 and sep["mia_tpr_at_1pct"] > 0.05
    same = own_membership({"loss": rng.exponential(1.0, size=(2000, 2))}, keep)
    assert abs(same["mia_auc"] - 0.5) < 0.05
    with pytest.raises(ValueError, match="unknown attack 'lira'"):
        own_membership({"loss": loss}, keep, attack="lira")
