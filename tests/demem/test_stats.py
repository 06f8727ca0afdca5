"""demem.stats: intervals across seeds, paired deltas, checked against scipy, hand computations and
simulated experiments with a known true effect."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from demem.stats import excludes_zero, paired_seed_delta, seed_level, t_interval, welch_diff


@pytest.mark.parametrize("n", [2, 3, 8, 30])
def test_t_interval_matches_scipy(n):
    v = np.random.default_rng(n).normal(0.5, 0.1, size=n)
    ci = t_interval(v)
    lo, hi = st.t.interval(0.95, n - 1, loc=v.mean(), scale=st.sem(v))
    assert (ci["lo"], ci["hi"], ci["n"]) == (pytest.approx(lo), pytest.approx(hi), n)


def test_t_interval_small_n():
    two = t_interval([0.0, 1.0])
    assert two["half"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), rel=1e-4)
    one = t_interval([0.7, float("nan")])
    assert one["n"] == 1 and math.isnan(one["lo"]) and one["mean"] == 0.7
    assert t_interval([])["n"] == 0


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.6, 0.05, 8), rng.normal(0.55, 0.1, 11)
    ci = welch_diff(a, b)
    ref = st.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert (ci["lo"], ci["hi"]) == (pytest.approx(ref.low), pytest.approx(ref.high))


def test_seed_level_by_hand():
    frame = pd.DataFrame({"seed": [0, 0, 0, 1, 1], "v": [1.0, 2.0, 3.0, 4.0, 6.0]})
    ci = seed_level(frame, "v")
    # seed means 2 and 5: n = 2 seeds, not 5 values
    assert ci["n"] == 2 and ci["units"] == 5 and ci["mean"] == 3.5
    assert ci["std"] == pytest.approx(math.sqrt(4.5))
    assert ci["half"] == pytest.approx(st.t.ppf(0.975, 1) * math.sqrt(4.5) / math.sqrt(2))
    assert ci["within_sd"] == pytest.approx(math.sqrt((1.0 + 2.0) / 2))  # within-seed variances 1 and 2
    assert seed_level(frame[frame.seed == 0], "v")["n"] == 1  # one seed: no group-level interval


def test_paired_delta_by_hand():
    base = pd.DataFrame({"seed": [0, 0, 1, 1, 1], "unit": [0, 1, 0, 1, 2], "v": [0.6, 0.7, 0.5, 0.6, 0.9]})
    group = pd.DataFrame({"seed": [0, 0, 1, 1], "unit": [0, 1, 0, 1], "v": [0.5, 0.5, 0.45, 0.65]})
    ci = paired_seed_delta(base, group, "v")
    # pairs (base - group): seed 0: 0.1, 0.2 -> 0.15; seed 1: 0.05, -0.05 -> 0.0 (unit 2 unmatched)
    assert ci["pairs"] == 4 and ci["n"] == 2
    assert ci["mean"] == pytest.approx(0.075)
    assert ci["std"] == pytest.approx(math.sqrt(2 * 0.075**2))
    assert ci["within_sd"] == pytest.approx(math.sqrt((0.005 + 0.005) / 2))


def _simulated(rng, effect, seeds=4, units=8):
    """One experiment: a baseline and a defended group on the same seeds and units. The seed moves
    both groups (shared draw) and also the defence's effect (sd 0.02, as the DeMem effect moved with
    the seed in the quickstart); the units of a seed add noise of sd 0.01."""
    rows_b, rows_g = [], []
    for s in range(seeds):
        shared = rng.normal(0, 0.03)
        effect_s = effect + rng.normal(0, 0.02)
        for u in range(units):
            base = 0.55 + shared + rng.normal(0, 0.01)
            rows_b.append({"seed": s, "unit": u, "v": base})
            rows_g.append({"seed": s, "unit": u, "v": base - effect_s + rng.normal(0, 0.01)})
    return pd.DataFrame(rows_b), pd.DataFrame(rows_g)


def test_intervals_across_seeds_cover_a_zero_effect_and_within_draw_ones_do_not():
    rng = np.random.default_rng(7)
    covered = naive_covered = 0
    for _ in range(200):
        b, g = _simulated(rng, effect=0.0)
        covered += not excludes_zero(paired_seed_delta(b, g, "v"))
        one = b[b.seed == 0].merge(g[g.seed == 0], on=["seed", "unit"])
        naive_covered += not excludes_zero(t_interval(one["v_x"] - one["v_y"]))  # one draw's units
    assert 0.90 <= covered / 200 <= 0.99, covered
    assert naive_covered / 200 < 0.75, naive_covered  # a within-draw interval is not a group claim


def test_a_real_effect_is_detected():
    rng = np.random.default_rng(8)
    hits = sum(excludes_zero(paired_seed_delta(*_simulated(rng, effect=0.06, seeds=5), "v")) for _ in range(200))
    assert hits / 200 > 0.9, hits


def test_power_matches_simulated_paired_t_tests():
    # The analytic power (non-central t) against 4000 simulated experiments of paired differences.
    from demem.stats import detectable_difference, paired_power, seeds_needed

    sd, n = 0.02, 5
    delta = detectable_difference(sd, n)
    assert paired_power(delta, sd, n) == pytest.approx(0.8, abs=1e-6)
    rng = np.random.default_rng(11)
    d = rng.normal(delta, sd, size=(4000, n))
    p = st.ttest_1samp(d, 0.0, axis=1).pvalue
    assert (p < 0.05).mean() == pytest.approx(0.8, abs=0.025)
    need = seeds_needed(0.01, sd)
    assert paired_power(0.01, sd, need) >= 0.8 > paired_power(0.01, sd, need - 1)
    assert seeds_needed(0.01, float("nan")) is None and math.isnan(detectable_difference(sd, 1))


# --- power at every number of seeds -----------------------------------------------------------
# scipy's non-central t returns NaN above a non-centrality of about 7.5 (at every df), which is where
# 2 seeds reach 80% power; the power is integrated over the sample sd instead and checked here.


@pytest.mark.parametrize("df", range(3, 21))
def test_power_equals_scipy_nct_where_nct_is_finite(df):
    from demem.stats import t_test_power

    crit = st.t.ppf(0.975, df)
    for ncp in (0.0, 0.3, 1.0, 2.0, 3.5, 5.0, 7.0):
        ref = st.nct.sf(crit, df, ncp) + st.nct.cdf(-crit, df, ncp)
        assert np.isfinite(ref)
        assert t_test_power(ncp, df) == pytest.approx(ref, abs=1e-10)
        assert t_test_power(-ncp, df) == pytest.approx(ref, abs=1e-10)  # two-sided: the sign is irrelevant


@pytest.mark.parametrize("n", [2, 3])
@pytest.mark.parametrize("ncp", [0.0, 2.0, 8.0, 16.0, 30.0])
def test_power_at_one_and_two_df_matches_simulated_t_tests(n, ncp):
    # 200k simulated experiments of n paired differences, tested with scipy's t test
    from demem.stats import paired_power

    sd, draws = 0.02, 200_000
    delta = ncp * sd / math.sqrt(n)
    d = np.random.default_rng(100 * n + int(ncp)).normal(delta, sd, size=(draws, n))
    hit = (st.ttest_1samp(d, 0.0, axis=1).pvalue < 0.05).mean()
    power = paired_power(delta, sd, n)
    se = math.sqrt(power * (1 - power) / draws)
    assert abs(hit - power) <= 3 * se + 1e-9, (hit, power, se)
    if ncp == 0.0:
        assert power == pytest.approx(0.05, abs=1e-10)  # no effect: the power is the test's size


def test_detectable_difference_with_two_seeds():
    from demem.stats import detectable_difference, paired_power, seeds_needed

    sd = 0.0017
    mdd = detectable_difference(sd, 2)
    assert np.isfinite(mdd) and mdd > 0
    assert paired_power(mdd, sd, 2) == pytest.approx(0.8, abs=1e-8)
    assert mdd > detectable_difference(sd, 3) > detectable_difference(sd, 6)  # more seeds detect less
    assert seeds_needed(mdd * 1.01, sd) == 2 and seeds_needed(mdd * 0.99, sd) == 3


def test_power_that_cannot_be_stated_is_nan():
    from demem.stats import detectable_difference, paired_power

    for sd, n in ((0.0, 5), (float("nan"), 5), (-1.0, 5), (0.02, 1), (float("inf"), 5)):
        assert math.isnan(paired_power(0.01, sd, n)) and math.isnan(detectable_difference(sd, n))
    assert math.isnan(paired_power(float("nan"), 0.02, 5))
    assert math.isnan(detectable_difference(0.02, 5, power=1.0))  # never reached
    assert math.isnan(detectable_difference(0.02, 5, power=0.01))  # below the test's size
