"""RelaxLoss (Chen, Yu & Fritz, "RelaxLoss: Defending Membership Inference Attacks without Losing
Utility", ICLR 2022), as a demem training method.

Why this defence: it is a published, widely compared membership defence that, like DeMem, changes
only the training loss, so it plugs into the same place and can be put beside DeMem and DP-SGD on
the same pools. It keeps the mean training loss near a target level alpha instead of driving it to
0. The step order follows the authors' code (DingfanChen/RelaxLoss, defense/relaxloss.py), with the
epoch counted from 0:
    even epochs:  |mean CE - alpha|                   (gradient descent above alpha, ascent below)
    odd epochs:   mean CE                             if mean CE > alpha
                  mean((1 - correct) * CE(soft) - CE) otherwise ("posterior flattening")
where `soft` keeps the model's own probability of the true class (clamped to at most `UPPER`) and
spreads the rest evenly over the other classes. Their softmax is not detached, so neither is ours.

`relaxloss` trains on the clean batch (the paper's setting); `relaxloss_at` applies the same loss to
PGD-AT's examples, so it can be compared with PGD-AT + DeMem against the PGD-AT baseline. alpha is
`method.beta` (default 1.0, the authors' CIFAR-10 setting). The per-sample losses DeMem would
penalise on top are the plain cross-entropies of the examples trained on.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from demem.evasion import pgd
from demem.methods import Method, MethodOutput

ALPHA = 1.0  # the authors' configs/CIFAR10_resnet20.yml
UPPER = 1.0  # the same file's upper confidence level


def relaxloss(logits: torch.Tensor, y: torch.Tensor, alpha: float, epoch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(RelaxLoss's scalar objective, the (B,) cross-entropies) of one batch's (B, K) logits."""
    ce = F.cross_entropy(logits, y, reduction="none")
    mean = ce.mean()
    if epoch % 2 == 0:
        return (mean - alpha).abs(), ce
    k = logits.shape[1]
    probs = logits.softmax(1)
    correct = (logits.argmax(1) == y).float()
    target = probs.gather(1, y[:, None]).squeeze(1).clamp(0.0, UPPER)
    onehot = F.one_hot(y, k).float()
    soft = onehot * target[:, None] + (1 - onehot) * ((1 - target) / (k - 1))[:, None]
    soft_ce = -(soft * F.log_softmax(logits, 1)).sum(1)
    flattening = ((1 - correct) * soft_ce - ce).mean()
    # both branches are computed and one is kept: no host sync for the comparison
    return torch.where(mean > alpha, mean, flattening), ce


def _loss(model, x, x_adv, y, cfg, *, epoch: int) -> MethodOutput:
    logits = model(x if x_adv is None else x_adv).float()
    loss, ce = relaxloss(logits, y, cfg.beta_value, epoch)
    return MethodOutput(loss, ce, logits)


def _clean(model, x, y, attack, cfg, generator=None):
    return None


def _pgd(model, x, y, attack, cfg, generator=None):
    return pgd(model, x, y, attack, generator=generator)


RELAXLOSS = Method(_clean, _loss, default_beta=ALPHA, beta_name="alpha", uses_epoch=True, undefended="standard")
RELAXLOSS_AT = Method(_pgd, _loss, default_beta=ALPHA, beta_name="alpha", uses_epoch=True, undefended="pgd_at")
