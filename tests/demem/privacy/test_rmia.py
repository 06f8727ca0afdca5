"""RMIA against a slow reference written from the paper and its authors' code (ML Privacy Meter's
`run_rmia`: strict `> gamma`, the count averaged over the population), on noise, on overfit models,
and on the ties an earlier convention made by construction."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from demem.artifacts import load_group
from demem.membership import keep_mask
from demem.privacy.rmia import rmia_scores, true_label_probability


def _reference(prob, keep, t, exclude, variant, gamma, a):
    """Zarifzadeh et al. 2024, one sample at a time: Pr(x) from the references (all of them online,
    the OUT ones with the a-scaling offline), ratio(x) = Pr(x | t) / Pr(x), and the score of x the
    number of population samples z (the target's non-members other than x) with
    ratio(x) / ratio(z) > gamma, over the population's size |Z| (the authors' `np.average(ratios >
    gamma)` over a population x is not part of)."""
    m, n = prob.shape
    refs = [r for r in range(m) if r not in (t, exclude)]

    def pr(i):
        if variant == "online":
            return sum(prob[r, i] for r in refs) / len(refs)
        outs = [prob[r, i] for r in refs if not keep[r, i]]
        return ((1 + a) * (sum(outs) / len(outs)) + (1 - a)) / 2

    ratio = [prob[t, i] / pr(i) for i in range(n)]
    out = np.empty(n)
    for i in range(n):
        population = [j for j in range(n) if not keep[t, j]]
        out[i] = sum(ratio[i] / ratio[j] > gamma for j in population if j != i) / len(population)
    return out


@pytest.mark.parametrize("variant", ["online", "offline"])
@pytest.mark.parametrize("gamma,a", [(1.0, 0.3), (2.0, 0.0), (0.5, 1.0)])
def test_matches_the_papers_definition(variant, gamma, a):
    rng = np.random.default_rng(0)
    m, n = 6, 60
    keep = keep_mask(m, n, seed=1)
    prob = np.clip(rng.beta(2, 2, size=(m, n)) + 0.3 * keep, 0.01, 1.0)
    partners = np.array([1, 0, 3, 2, 5, 4])
    got = rmia_scores(prob, keep, variant=variant, exclude=partners, gamma=gamma, a=a)
    for t in range(m):
        want = _reference(prob, keep, t, partners[t], variant, gamma, a)
        np.testing.assert_allclose(got[t], want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("variant", ["online", "offline"])
def test_pure_noise_gives_chance(variant):
    rng = np.random.default_rng(3)
    m, n = 8, 2000
    keep = keep_mask(m, n, seed=2)
    prob = rng.uniform(0.05, 1.0, size=(m, n))  # the same distribution for members and non-members
    scores = rmia_scores(prob, keep, variant=variant, exclude=[1, 0, 3, 2, 5, 4, 7, 6])
    aucs = [roc_auc_score(keep[t], scores[t]) for t in range(m)]
    assert abs(np.mean(aucs) - 0.5) < 0.02 and max(abs(x - 0.5) for x in aucs) < 0.05


def test_finds_members_of_overfit_models(overfit_group):
    group = load_group(overfit_group)
    prob = true_label_probability(group.signals["loss"])
    keep = group.keep
    partners = np.arange(group.n_models) ^ 1
    for variant, floor in (("online", 0.75), ("offline", 0.7)):
        scores = rmia_scores(prob, keep, variant=variant, exclude=partners)
        auc = np.mean([roc_auc_score(keep[t], scores[t]) for t in range(group.n_models)])
        assert auc > floor, (variant, auc)


def test_true_label_probability_averages_queries():
    loss = np.log(np.array([[[2.0, 4.0]]]))  # p = 0.5 and 0.25
    assert true_label_probability(loss).tolist() == [[0.375]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"variant": "both"}, "unknown variant"),
        ({"gamma": 0.0}, "gamma"),
        ({"a": 1.5}, "a must be"),
        ({"targets": [9]}, "targets"),
        ({"exclude": [0, 0, 0, 0]}, "exclude"),
    ],
)
def test_bad_arguments(kwargs, match):
    keep = keep_mask(4, 20, seed=0)
    with pytest.raises(ValueError, match=match):
        rmia_scores(np.full((4, 20), 0.5), keep, **kwargs)
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        rmia_scores(np.full((4, 20), 1.5), keep)


def test_top_scores_do_not_tie_by_construction():
    """Members whose ratio beats every non-member's must score above every non-member, so TPR at the
    lowest resolvable FPR (0 false positives) is their share, not 0 by construction. With the old
    convention (>= gamma, a non-member divided by |Z| - 1) the highest non-member scored exactly 1
    too, and tied with them."""
    from demem.privacy.roc import roc_curve

    rng = np.random.default_rng(5)
    m, n = 4, 400
    keep = keep_mask(m, n, seed=3)
    prob = np.clip(rng.beta(2, 2, size=(m, n)) + 0.25 * keep, 0.01, 1.0)
    partners = np.array([1, 0, 3, 2])
    scores = rmia_scores(prob, keep, exclude=partners)
    for t in range(m):
        members, others = scores[t][keep[t]], scores[t][~keep[t]]
        assert others.max() < 1.0 and np.isclose(others.max(), (others.size - 1) / others.size)
        above = int((members > others.max()).sum())
        assert above > 0  # this construction has members beyond every non-member
        fpr, tpr = roc_curve(scores[t], keep[t])[:2]
        assert tpr[fpr == 0].max() == pytest.approx(above / members.size)
