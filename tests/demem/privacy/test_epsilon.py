"""Tests for demem.privacy.epsilon: the one-run epsilon lower bound (Steinke, Nasr & Jagielski 2023).

Reference mechanisms with a known epsilon: randomised response (RR). Each canary bit is a fair coin; the
mechanism reports it truthfully with probability q = e^eps / (1 + e^eps), which is exactly eps-DP in
each bit, and the auditor's guess is the report. Checks: the bound exceeds the true epsilon in at most
a beta fraction of runs (by simulation and exactly), approaches it as the canaries grow, equals an
independent scipy root at delta = 0 and the paper's Appendix D p-value at delta > 0; and the swap
canaries on demem.membership keep masks respect the replace-one epsilon of per-sample RR (2 eps).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import optimize, stats
from scipy.special import expit

from demem.membership import keep_mask
from demem.privacy.epsilon import (
    DEFAULT_FRACTIONS,
    empirical_epsilon,
    epsilon_from_counts,
    guess_counts,
    one_run_epsilon,
    pool_counts,
    sample_pairing,
    swap_canaries,
)

BETA = 0.05
REPS = 300


def allowed_exceedances(reps: int, beta: float = BETA) -> int:
    """The 99.9% quantile of Binomial(reps, beta): how many failures a valid (1 - beta) bound may show."""
    return int(stats.binom.ppf(0.999, reps, beta))


def rr_correct_counts(rng: np.random.Generator, eps: float, reps: int, m: int) -> np.ndarray:
    """(reps,) correct guesses of an auditor reading randomised response of m fair coins."""
    bits = rng.integers(0, 2, size=(reps, m))
    truthful = rng.random((reps, m)) < expit(eps)
    report = np.where(truthful, bits, 1 - bits)
    return (report == bits).sum(axis=1)


def ref_pure(r: int, v: int, beta: float) -> float:
    """Independent reference at delta = 0: brentq on the binomial tail (0 when eps = 0 is not rejected)."""
    if v == 0 or stats.binom.sf(v - 1, r, 0.5) > beta:
        return 0.0
    return optimize.brentq(lambda e: stats.binom.sf(v - 1, r, expit(e)) - beta, 0.0, 60.0, xtol=1e-13)


def ref_p_value(r: int, v: int, m: int, eps: float, delta: float) -> float:
    """Theorem 3.1's p-value, written out as in the paper's Appendix D (max over i = 1..v)."""
    q = expit(eps)
    tail = stats.binom.sf(v - 1, r, q)
    i = np.arange(1, v + 1)
    windows = stats.binom.sf(v - i - 1, r, q) - tail  # P[v - i <= B < v]
    return min(1.0, tail + 2 * m * delta * float(np.max(windows / i)))


def per_sample_rr_scores(rng: np.random.Generator, keep: np.ndarray, eps: float) -> np.ndarray:
    """Randomised response of each membership bit, plus tie-breaking noise that carries no information.

    Per sample this is eps-DP under add/remove (one bit changes) and 2 eps-DP under replace-one (two
    bits change: for a swap canary the reports (1, 0) and (0, 1) have likelihood ratio e^(2 eps))."""
    truthful = rng.random(keep.shape) < expit(eps)
    report = np.where(truthful, keep, ~keep).astype(np.float64)
    return report + 1e-3 * rng.random(keep.shape)


# ---------------------------------------------------------------------------------------------------
# 1. Never exceeds the true epsilon (more often than beta)
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("delta", [0.0, 1e-5])
@pytest.mark.parametrize("eps_true", [0.5, 1.0, 2.0, 4.0])
def test_rr_bound_exceeds_true_epsilon_at_most_beta(eps_true, delta):
    m = 1000
    rng = np.random.default_rng(int(eps_true * 100) + int(delta > 0))
    v = rr_correct_counts(rng, eps_true, REPS, m)
    bounds = np.array([one_run_epsilon(m, int(x), m=m, delta=delta, beta=BETA) for x in v])
    # Observed exceedances of 300 (28 allowed): 16 11 13 8 at delta = 0, 10 9 14 9 at delta = 1e-5.
    assert (bounds > eps_true).sum() <= allowed_exceedances(REPS)
    # Not vacuous: a typical run recovers most of eps_true (0.39 of 0.5 at m = 1000, 0.88 of 1, ...).
    assert np.median(bounds) > 0.6 * eps_true


@pytest.mark.parametrize("delta", [0.0, 1e-5])
@pytest.mark.parametrize("beta", [0.05, 0.01])
@pytest.mark.parametrize("r", [100, 1000, 10_000])
def test_exact_exceedance_probability_at_most_beta(r, beta, delta):
    """P[bound > eps_true] computed exactly: the bound is non-decreasing in v, so it exceeds eps_true
    exactly when v >= v*, and P[Binomial(r, q_true) >= v*] must be <= beta. Observed at beta = 0.05,
    delta = 0, eps 0.5 1 2 4: 0.043 0.044 0.039 0 (r = 100), 0.044 0.046 0.049 0.030 (1e3), 0.050 0.050
    0.049 0.044 (1e4)."""
    for eps_true in (0.5, 1.0, 2.0, 4.0):
        q = expit(eps_true)

        def above(v, eps_true=eps_true):
            return one_run_epsilon(r, v, m=r, delta=delta, beta=beta) > eps_true

        if not above(r):
            continue  # no outcome refutes eps_true: exceedance probability 0
        lo, hi = 0, r  # above(hi) holds; find the smallest such v
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if above(mid) else (mid, hi)
        exceed = stats.binom.sf(hi - 1, r, q)
        assert exceed <= beta
        if r >= 1000 and delta == 0:
            assert exceed > beta / 2  # and the bound is not needlessly conservative


def test_pure_coin_gives_zero_most_of_the_time():
    rng = np.random.default_rng(7)
    m = 1000
    v = rr_correct_counts(rng, 0.0, REPS, m)
    bounds = np.array([one_run_epsilon(m, int(x), beta=BETA) for x in v])
    assert (bounds > 0).sum() <= allowed_exceedances(REPS)
    assert np.median(bounds) == 0.0


@pytest.mark.parametrize("eps_true", [0.0, 1.0])
def test_bonferroni_pipeline_on_rr_exceeds_at_most_beta(eps_true):
    """guess_counts + epsilon_from_counts with confidences unrelated to correctness: the best of all
    fractions still exceeds eps_true in at most a beta fraction of runs."""
    rng = np.random.default_rng(11)
    m = 1000
    exceed = 0
    for _ in range(REPS):
        correct = rng.random(m) < expit(eps_true)
        conf = rng.random(m) + 1e-9
        counts = guess_counts([conf], [correct], DEFAULT_FRACTIONS)
        exceed += epsilon_from_counts(counts, beta=BETA, canaries=m)["epsilon"] > eps_true
    assert exceed <= allowed_exceedances(REPS)


# ---------------------------------------------------------------------------------------------------
# 2. Approaches the true epsilon as the canaries grow
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("eps_true", [0.5, 1.0, 2.0, 4.0])
def test_bound_approaches_true_epsilon(eps_true):
    """All guesses, v = the expected number of correct ones. Observed bound / eps_true at m = 100,
    1e3, 1e4, 1e5: 0.27 0.78 0.93 0.979 (eps 0.5); 0.61 0.88 0.96 0.988 (1); 0.73 0.92 0.97 0.992 (2);
    0.68 0.90 0.97 0.990 (4)."""
    q = expit(eps_true)
    bounds = [one_run_epsilon(m, round(q * m), beta=BETA) for m in (100, 1_000, 10_000, 100_000)]
    assert all(a < b for a, b in zip(bounds, bounds[1:]))
    assert all(b < eps_true for b in bounds)
    assert bounds[-1] > 0.97 * eps_true
    # A simulated run at m = 1e5 is within 5% too (the run-to-run sd of the bound is ~1%).
    v = rr_correct_counts(np.random.default_rng(3), eps_true, 1, 100_000)[0]
    assert one_run_epsilon(100_000, int(v), beta=BETA) == pytest.approx(eps_true, rel=0.05)


# ---------------------------------------------------------------------------------------------------
# 3. Against independent references
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "r, v, beta",
    [
        (10, 10, 0.05),
        (10, 9, 0.05),
        (100, 60, 0.05),
        (100, 70, 0.01),
        (1000, 731, 0.05),
        (1000, 999, 0.001),
        (5000, 2600, 0.1),
        (100_000, 73_000, 0.05),
        (100_000, 99_990, 0.05),
        (200, 100, 0.05),  # not rejected at eps = 0
        (50, 0, 0.05),
    ],
)
def test_pure_bound_matches_scipy_brentq(r, v, beta):
    got = one_run_epsilon(r, v, beta=beta)
    assert got == pytest.approx(ref_pure(r, v, beta), rel=1e-9, abs=1e-10)


def test_zero_guesses_and_degenerate_counts():
    assert one_run_epsilon(0, 0) == 0.0
    assert one_run_epsilon(5, 0, m=5, delta=1e-3) == 0.0
    # All r guesses right: P[Binomial(r, q) >= r] = q^r = beta, so q = beta^(1/r).
    q = 0.05 ** (1 / 20)
    assert one_run_epsilon(20, 20) == pytest.approx(np.log(q / (1 - q)), rel=1e-12)


@pytest.mark.parametrize(
    "r, v, m, delta",
    [
        (1000, 800, 1000, 1e-5),  # 2 m delta = 0.02: monotone p-value, root finding
        (1000, 800, 1000, 1e-3),  # 2 m delta = 2: certified line search
        (2000, 1990, 100_000, 1e-4),  # 2 m delta = 20
        (100_000, 73_000, 100_000, 1e-5),  # large r: the summed window is truncated
        (500, 400, 10**6, 1e-5),  # the delta term alone rejects nothing
    ],
)
def test_delta_bound_matches_appendix_d_p_value(r, v, m, delta):
    got = one_run_epsilon(r, v, m=m, delta=delta, beta=BETA)
    pure = one_run_epsilon(r, v, beta=BETA)
    assert 0.0 <= got <= pure
    grid = np.linspace(0.0, pure, 101)
    p = np.array([ref_p_value(r, v, m, e, delta) for e in grid])
    if p[0] > BETA:
        assert got == 0.0
        return
    assert np.all(np.diff(p) >= -1e-12)  # monotone here, so the first crossing is the root
    want = optimize.brentq(lambda e: ref_p_value(r, v, m, e, delta) - BETA, 0.0, pure, xtol=1e-13)
    assert got == pytest.approx(want, abs=1e-8)
    assert got <= want + 1e-12  # never above the exact crossing
    assert ref_p_value(r, v, m, got, delta) <= BETA + 1e-9
    assert ref_p_value(r, v, m, got + 1e-6, delta) > BETA


def test_delta_bound_decreases_with_delta_and_canaries():
    bounds = [one_run_epsilon(1000, 850, m=1000, delta=d) for d in (0.0, 1e-6, 1e-4, 1e-3, 1e-2)]
    assert all(a >= b for a, b in zip(bounds, bounds[1:]))
    assert bounds[0] > bounds[-1]
    assert one_run_epsilon(1000, 850, m=10**4, delta=1e-4) <= one_run_epsilon(1000, 850, m=1000, delta=1e-4)


# ---------------------------------------------------------------------------------------------------
# 4. Swap canaries on demem.membership keep masks
# ---------------------------------------------------------------------------------------------------


def test_sample_pairing():
    pairing = sample_pairing(11, seed=3)
    assert pairing.shape == (5, 2) and pairing.dtype == np.int64
    assert np.unique(pairing).size == 10 and pairing.min() >= 0 and pairing.max() < 11
    np.testing.assert_array_equal(pairing, sample_pairing(11, seed=3))
    assert not np.array_equal(sample_pairing(1000, 0), sample_pairing(1000, 1))
    assert sample_pairing(1).shape == (0, 2)


def test_swap_canaries_guesses():
    keep = np.array([True, False, True, True, False, False, True, False])
    scores = np.array([0.9, 0.1, 0.5, 0.2, 0.3, 0.3, 0.4, 0.4])
    pairing = np.array([[0, 1], [3, 4], [2, 5], [6, 7]])
    # pairs: (0,1) member 0 higher -> right; (3,4) member 3 lower -> wrong; (2,5) member 2 higher -> right;
    # (6,7) tie -> abstention
    conf, correct = swap_canaries(scores, keep, pairing)
    np.testing.assert_allclose(conf, [0.8, 0.1, 0.2, 0.0])
    np.testing.assert_array_equal(correct, [True, False, True, False])
    # a pair with both members (or neither) is not a canary
    conf, correct = swap_canaries(scores, keep, np.array([[0, 2], [1, 4]]))
    assert conf.size == 0 and correct.size == 0


def test_swap_coins_are_fair_and_the_partner_sees_them_negated():
    """Over keep masks of many pool seeds, the member of a canary pair is its first sample half the
    time; the complementary partner has the same canaries with every guess flipped."""
    n = 2000
    pairing = sample_pairing(n, seed=0)
    first_member = canaries = 0
    rng = np.random.default_rng(5)
    for seed in range(20):
        keep = keep_mask(2, n, seed)
        split = keep[0, pairing[:, 0]] != keep[0, pairing[:, 1]]
        canaries += int(split.sum())
        first_member += int(keep[0, pairing[split, 0]].sum())
        scores = rng.normal(size=n)
        conf0, corr0 = swap_canaries(scores, keep[0], pairing)
        conf1, corr1 = swap_canaries(scores, keep[1], pairing)
        np.testing.assert_array_equal(conf0, conf1)
        np.testing.assert_array_equal(corr0, ~corr1)
    lo, hi = stats.binom.ppf([0.0005, 0.9995], canaries, 0.5)
    assert lo <= first_member <= hi
    assert 0.45 < canaries / (20 * (n // 2)) < 0.55  # about half of the pairs are split


def test_swap_canaries_respect_replace_one_epsilon():
    """Per-sample RR at eps is eps-DP under add/remove and 2 eps under replace-one. The swap-canary
    bound must exceed 2 eps in at most a beta fraction of groups; it exceeds eps itself in most groups,
    so it must be compared with 2 x an add/remove epsilon. Observed with eps = 0.5: median 0.77, every
    group above 0.5, 7 of 200 above 1.0 (21 allowed; 2.0% of 3000 groups in a longer run)."""
    eps, reps, n, m = 0.5, 200, 2000, 4
    rng = np.random.default_rng(17)
    bounds = []
    for seed in range(reps):
        keep = keep_mask(m, n, seed)
        scores = per_sample_rr_scores(rng, keep, eps)
        result = empirical_epsilon(scores, keep, np.arange(m), beta=BETA)
        assert result["adjacency"] == "replace-one"
        bounds.append(result["epsilon"])
    bounds = np.array(bounds)
    assert (bounds > 2 * eps).sum() <= allowed_exceedances(reps)
    assert np.median(bounds) > eps


def test_swap_canaries_large_group_nearly_reaches_replace_one_epsilon():
    """One group of 8 models on 20 000 samples (4 used models, ~20 000 canaries), per-sample RR at
    eps = 1: the bound (observed 1.92, at the 50% fraction) is above eps = 1 and at most 2 eps."""
    eps, m, n = 1.0, 8, 20_000
    keep = keep_mask(m, n, 123)
    scores = per_sample_rr_scores(np.random.default_rng(0), keep, eps)
    result = empirical_epsilon(scores, keep, np.arange(m), beta=BETA)
    assert 1.85 < result["epsilon"] <= 2 * eps
    assert result["models"] == [0, 2, 4, 6]
    assert 0.45 < result["canaries"] / (4 * (n // 2)) < 0.55
    json.dumps(result)  # JSON-able


def test_membership_independent_scores_give_zero():
    reps, n, m = 200, 2000, 4
    rng = np.random.default_rng(23)
    positive = 0
    for seed in range(reps):
        keep = keep_mask(m, n, 1000 + seed)
        positive += empirical_epsilon(rng.normal(size=(m, n)), keep, np.arange(m))["epsilon"] > 0
    assert positive <= allowed_exceedances(reps)


def test_tied_scores_are_abstentions():
    keep = keep_mask(4, 1000, 0)
    result = empirical_epsilon(np.zeros((4, 1000)), keep, np.arange(4))
    assert result["epsilon"] == 0.0 and result["canaries"] > 0
    assert all(c["v"] == 0 and c["r"] >= 1 for c in result["counts"])


def test_one_model_per_complementary_pair():
    n = 1000
    keep = keep_mask(8, n, 4)
    scores = per_sample_rr_scores(np.random.default_rng(1), keep, 1.0)
    everything = empirical_epsilon(scores, keep, np.arange(8))
    assert everything["models"] == [0, 2, 4, 6]
    evens = empirical_epsilon(scores[::2], keep[::2], np.arange(0, 8, 2))
    assert evens == everything  # the partners add nothing
    order = np.array([5, 2, 7, 0, 3, 1, 6, 4])
    assert empirical_epsilon(scores[order], keep[order], order) == everything
    assert empirical_epsilon(scores[[1, 3, 5]], keep[[1, 3, 5]], np.array([1, 3, 5]))["models"] == [1, 3, 5]
    assert empirical_epsilon(scores[[3, 2, 7]], keep[[3, 2, 7]], np.array([3, 2, 7]))["models"] == [2, 7]
    twice = empirical_epsilon(scores[[0, 0]], keep[[0, 0]], np.array([0, 0]))
    assert twice["models"] == [0]
    assert twice["canaries"] == empirical_epsilon(scores[:1], keep[:1], np.array([0]))["canaries"]


# ---------------------------------------------------------------------------------------------------
# Counts, pooling
# ---------------------------------------------------------------------------------------------------


def test_guess_counts_pools_models_then_takes_the_top_fraction():
    conf_a, corr_a = np.array([0.9, 0.0, 0.5, 0.1]), np.array([True, False, False, True])
    conf_b, corr_b = np.array([0.7, 0.3, 0.2, 0.05]), np.array([True, True, False, False])
    counts = guess_counts([conf_a, conf_b], [corr_a, corr_b], (0.125, 0.25, 0.5, 1.0))
    # pooled by confidence: .9 T, .7 T, .5 F, .3 T, .2 F, .1 T, .05 F; the 0.0 is a tie (never guessed)
    assert counts == [
        {"fraction": 0.125, "r": 1, "v": 1},
        {"fraction": 0.25, "r": 2, "v": 2},
        {"fraction": 0.5, "r": 4, "v": 3},
        {"fraction": 1.0, "r": 8, "v": 4},  # r counts the full budget; the tie is a wrong guess
    ]
    assert guess_counts([], [], (0.5,)) == [{"fraction": 0.5, "r": 0, "v": 0}]


def test_counts_reproduce_and_pool_over_seeds():
    n, m = 2000, 4
    rng = np.random.default_rng(9)
    results = []
    for seed in (0, 1):
        keep = keep_mask(m, n, seed)
        results.append(empirical_epsilon(per_sample_rr_scores(rng, keep, 0.5), keep, np.arange(m)))
    for res in results:
        again = epsilon_from_counts(res["counts"], delta=res["delta"], beta=res["beta"], canaries=res["canaries"])
        assert again["epsilon"] == res["epsilon"] and again["counts"] == res["counts"]
    pooled = pool_counts([res["counts"] for res in results])
    canaries = sum(res["canaries"] for res in results)
    for p, a, b in zip(pooled, *(res["counts"] for res in results)):
        assert (p["fraction"], p["r"], p["v"]) == (a["fraction"], a["r"] + b["r"], a["v"] + b["v"])
    both = epsilon_from_counts(pooled, beta=BETA, canaries=canaries)
    level = BETA / len(DEFAULT_FRACTIONS)
    best = max(one_run_epsilon(p["r"], p["v"], beta=level) for p in pooled)
    assert both["epsilon"] == best
    assert both["canaries"] == canaries and both["adjacency"] == "replace-one"
    json.dumps(both)


def test_empirical_epsilon_with_delta():
    keep = keep_mask(4, 4000, 2)
    scores = per_sample_rr_scores(np.random.default_rng(2), keep, 1.0)
    pure = empirical_epsilon(scores, keep, np.arange(4))
    approx = empirical_epsilon(scores, keep, np.arange(4), delta=1e-5)
    assert approx["delta"] == 1e-5 and 0 < approx["epsilon"] < pure["epsilon"]
    # 2 m delta >= v for every fraction: the delta term alone exceeds beta, nothing is rejected
    assert empirical_epsilon(scores, keep, np.arange(4), delta=0.5)["epsilon"] == 0.0


# ---------------------------------------------------------------------------------------------------
# 5. Input errors
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((10, 11), {}, "v <= r"),
        ((-1, 0), {}, "r must be >= 0"),
        ((10, -1), {}, "v must be >= 0"),
        ((10.5, 3), {}, "must be an integer"),
        ((10, 3), {"beta": 0.0}, "beta"),
        ((10, 3), {"beta": 1.0}, "beta"),
        ((10, 3), {"beta": float("nan")}, "beta"),
        ((10, 3), {"delta": -0.1, "m": 10}, "delta"),
        ((10, 3), {"delta": 1.0, "m": 10}, "delta"),
        ((10, 3), {"delta": 1e-5}, "needs m"),
        ((10, 3), {"m": 5}, "r <= m"),
    ],
)
def test_one_run_epsilon_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        one_run_epsilon(*args, **kwargs)


def test_swap_canaries_errors():
    keep = np.array([True, False, True, False])
    scores = np.arange(4.0)
    with pytest.raises(ValueError, match="scores"):
        swap_canaries(scores[:, None], keep, np.array([[0, 1]]))
    with pytest.raises(ValueError, match="keep_row"):
        swap_canaries(scores, keep.astype(int), np.array([[0, 1]]))
    with pytest.raises(ValueError, match="keep_row"):
        swap_canaries(scores, keep[:3], np.array([[0, 1]]))
    with pytest.raises(ValueError, match="finite"):
        swap_canaries(np.array([0.0, np.nan, 1.0, 2.0]), keep, np.array([[0, 1]]))
    with pytest.raises(ValueError, match="disjoint"):
        swap_canaries(scores, keep, np.array([[0, 1], [1, 2]]))
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        swap_canaries(scores, keep, np.array([[0, 4]]))
    with pytest.raises(ValueError, match="pairing"):
        swap_canaries(scores, keep, np.array([0, 1]))


def test_empirical_epsilon_errors():
    keep = keep_mask(4, 100, 0)
    scores = np.zeros((4, 100))
    idx = np.arange(4)
    with pytest.raises(ValueError, match="scores must be"):
        empirical_epsilon(scores[0], keep, idx)
    with pytest.raises(ValueError, match="keep must be"):
        empirical_epsilon(scores, keep[:, :50], idx)
    with pytest.raises(ValueError, match="keep must be"):
        empirical_epsilon(scores, keep.astype(float), idx)
    with pytest.raises(ValueError, match="model_index"):
        empirical_epsilon(scores, keep, idx[:3])
    with pytest.raises(ValueError, match="model_index"):
        empirical_epsilon(scores, keep, idx.astype(float))
    with pytest.raises(ValueError, match=">= 0"):
        empirical_epsilon(scores, keep, idx - 1)
    with pytest.raises(ValueError, match="finite"):
        empirical_epsilon(np.full((4, 100), np.inf), keep, idx)
    bernoulli = np.random.default_rng(0).random((4, 100)) < 0.3
    with pytest.raises(ValueError, match="exact-half"):
        empirical_epsilon(scores, bernoulli, idx)
    with pytest.raises(ValueError, match="exact-half"):  # rows not labelled with their own model index
        empirical_epsilon(np.zeros((1, 101)), keep_mask(2, 101, 0)[1:], np.array([0]))
    for fractions in ((), (0.0,), (1.5,), (0.1, 0.1)):
        with pytest.raises(ValueError, match="fraction"):
            empirical_epsilon(scores, keep, idx, fractions=fractions)
    with pytest.raises(ValueError, match="beta"):
        empirical_epsilon(scores, keep, idx, beta=1.5)
    with pytest.raises(ValueError, match="delta"):
        empirical_epsilon(scores, keep, idx, delta=-1e-5)


def test_counts_errors():
    good = [{"fraction": 0.5, "r": 10, "v": 6}]
    with pytest.raises(ValueError, match="canaries"):
        epsilon_from_counts(good, canaries=5)
    with pytest.raises(ValueError, match="v <= r"):
        epsilon_from_counts([{"fraction": 0.5, "r": 10, "v": 11}], canaries=20)
    with pytest.raises(ValueError, match="fraction, r and v"):
        epsilon_from_counts([{"r": 10, "v": 6}], canaries=20)
    with pytest.raises(ValueError, match="at least one"):
        epsilon_from_counts([], canaries=20)
    with pytest.raises(ValueError, match="fractions"):
        pool_counts([good, [{"fraction": 0.2, "r": 10, "v": 6}]])
    with pytest.raises(ValueError, match="at least one run"):
        pool_counts([])
    with pytest.raises(ValueError, match="negative or non-finite"):
        guess_counts([np.array([-0.1])], [np.array([True])], (0.5,))
    with pytest.raises(ValueError, match="correctness"):
        guess_counts([np.array([0.1])], [], (0.5,))
    with pytest.raises(ValueError, match="bool"):
        guess_counts([np.array([0.1])], [np.array([1])], (0.5,))
