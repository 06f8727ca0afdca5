"""RMIA against a slow reference written from the paper, on noise, and on overfit models."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from demem.artifacts import load_group
from demem.membership import keep_mask
from demem.privacy.rmia import rmia_scores, true_label_probability


def _reference(prob, keep, t, exclude, variant, gamma, a):
    """Zarifzadeh et al. 2024, one sample at a time: Pr(x) from the references (all of them online,
    the OUT ones with the a-scaling offline), ratio(x) = Pr(x | t) / Pr(x), and the score of x the share
    of population samples z (the target's non-members other than x) with ratio(x) / ratio(z) >= gamma."""
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
        zs = [j for j in range(n) if not keep[t, j] and j != i]
        out[i] = sum(ratio[i] / ratio[j] >= gamma for j in zs) / len(zs)
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
