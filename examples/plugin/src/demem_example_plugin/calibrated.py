"""The difficulty-calibrated loss attack (Watson, Guo, Cormode & Sablayrolles, "On the Importance
of Difficulty Calibration in Membership Inference Attacks", ICLR 2022) as a demem membership attack.

A sample's loss under the target says little alone: hard samples have high losses in or out. The
attack subtracts the sample's mean loss under reference models that did not train on it:
    score(t, i) = -(loss_t(i) - mean over OUT references r of loss_r(i))
(higher = more likely a member). The references are the group's other models less the target's
complementary partner (as for demem's LiRA), so it runs from the audit's 4 models.
"""

from __future__ import annotations

import numpy as np

from demem.privacy.attacks import AUDIT_MIN_MODELS, AttackRefused, AttackSetup, MembershipAttack, Scores


def calibrated_scores(loss: np.ndarray, keep: np.ndarray, targets: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """(T, N) scores from (M, N) losses and the (M, N) keep mask; partners[j] = -1: none."""
    m = loss.shape[0]
    out = np.empty((len(targets), loss.shape[1]))
    for j, (t, p) in enumerate(zip(targets, partners)):
        refs = np.ones(m, bool)
        refs[t] = False
        if p >= 0:
            refs[p] = False
        use = refs[:, None] & ~keep
        n_out = use.sum(0)
        if n_out.min() < 1:
            raise AttackRefused(f"a sample has no reference model that left it out (target model {t})")
        out[j] = -(loss[t] - (loss * use).sum(0) / n_out)
    return out


def _score(setup: AttackSetup) -> Scores:
    loss = setup.signal("loss", "first").astype(np.float64)
    scores = calibrated_scores(loss, setup.keep, setup.targets, setup.partners)
    info = {"variant": "offline_mean", "family": "calibrated", "signal": "loss", "n_references": setup.n_references}
    return Scores(scores, info)


CALIBRATED_LOSS = MembershipAttack(
    name="calibrated_loss",
    family="calibrated",
    variant="offline_mean",
    references="offline",
    min_models=AUDIT_MIN_MODELS,
    signals=("loss",),
    queries="first",
    threat_model="scores",
    score=_score,
    needs="each sample needs a reference model, besides the target and its partner, that left it out",
)
