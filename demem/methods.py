"""Training objectives per batch: standard, PGD-AT, TRADES, MART, FGSM-RS, optionally with AWP, and
with the DeMem penalty on top of any of them.

A method is two functions of tensors plus configs:
    generate(model, x, y, attack, cfg, generator) -> x_adv or None   (the examples it trains on)
    loss(model, x, x_adv, y, cfg) -> MethodOutput                     (scalar loss + per-sample CE)
The split lets Adversarial Weight Perturbation (AWP) reuse a method's loss to perturb the weights
between generating the examples and taking the step. Plugins register more through the entry-point
group ``demem.methods`` (the contract: docs/plugins.md; the check: `demem.testing.check_method`).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from demem.evasion import STARTS, AttackConfig, kl_attack, kl_divergence, pgd
from demem.penalty import DeMemConfig
from demem.penalty import penalty as demem_penalty
from demem.registry import Registry


class MethodOutput(NamedTuple):
    loss: torch.Tensor  # () the method's own objective L_method
    per_sample: torch.Tensor  # (B,) CE on the examples the method attacks with (clean for standard)
    logits: torch.Tensor  # (B, K) the logits behind per_sample, for training accuracy


@dataclass(frozen=True)
class Method:
    """A training method (the contract plugins meet too: docs/plugins.md).

    Attributes:
        generate: (model, x, y, attack, cfg, generator) -> the (B, C, H, W) examples it trains on, in
            [0, 1] and within the attack's ball, or None (it trains on the clean batch).
        loss: (model, x, x_adv, y, cfg[, epoch]) -> MethodOutput; `per_sample` is what DeMem penalises.
        default_beta: the default of the method's one weight `method.beta` (TRADES and MART: their
            robustness weight); None: the method has none.
        beta_name: what `method.beta` is called in the method's paper, for messages and docs.
        supports_awp: AWP may perturb the weights along its loss.
        dp: trained with DP-SGD through Opacus (demem.dp): its loss must give per-sample gradients.
        undefended: the method it defends, whose groups are its baseline (DP methods: the method they
            privatise; a defence on top of PGD-AT: "pgd_at"); None: it is its own baseline.
        start: its authors' attack start: "uniform" in the eps-ball or "gaussian" (0.001 N(0, I)).
        uses_epoch: `loss` takes the 0-based epoch as keyword `epoch` (methods that alternate).
    """

    generate: Callable[..., torch.Tensor | None]
    loss: Callable[..., MethodOutput]
    default_beta: float | None = None
    supports_awp: bool = False
    dp: bool = False
    undefended: str | None = None
    start: str = "uniform"
    beta_name: str = "beta"
    uses_epoch: bool = False


def _plugin_method(obj, name: str) -> Method:
    """A plugin's method: a `Method` (docs/plugins.md; `demem.testing.check_method` checks it)."""
    if not isinstance(obj, Method):
        raise TypeError(f"a method entry must be a demem.methods.Method, got {type(obj).__name__}")
    if obj.start not in STARTS:
        raise ValueError(f"Method.start must be one of {STARTS}, got {obj.start!r}")
    return obj


METHODS: Registry[Method] = Registry("method", group="demem.methods", adapt=_plugin_method)
AWP_OBJECTIVES = ("method", "total")


@dataclass(frozen=True)
class MethodConfig:
    """Training-method settings.

    Attributes:
        name: one of METHODS (standard, pgd_at, trades, mart, fgsm_rs, and the DP-SGD versions
            dp_sgd, dp_pgd_at, dp_trades, which need the `dp` settings).
        beta: the method's one weight: the robustness weight of TRADES (default 6) and MART (default
            5), or a plugin method's declared parameter (`Method.beta_name`); None takes the default.
        awp_gamma: AWP weight-perturbation size relative to each layer's weight norm (Wu et al. 2020;
            0.01 for PGD-AT, 0.005 for TRADES in the reference); 0 disables AWP.
        awp_warmup: epochs trained without AWP before it starts.
        awp_objective: what the weight perturbation ascends: "method" (the method's own loss, as the
            AWP and DeMem reference code do; the DeMem penalty then only enters the descent step) or
            "total" (method loss + DeMem penalty).
    """

    name: str = "pgd_at"
    beta: float | None = None
    awp_gamma: float = 0.0
    awp_warmup: int = 0
    awp_objective: str = "method"

    def __post_init__(self) -> None:
        method = METHODS.get(self.name)
        if self.beta is not None:
            if method.default_beta is None:
                users = ", ".join(n for n in METHODS if METHODS.get(n).default_beta is not None)
                raise ValueError(f"method.beta is not used by {self.name!r}; only by {users}")
            if not self.beta >= 0:
                raise ValueError(f"method.beta must be >= 0, got {self.beta}")
        if not self.awp_gamma >= 0:
            raise ValueError(f"method.awp_gamma must be >= 0, got {self.awp_gamma}")
        if self.awp_gamma > 0 and not method.supports_awp:
            allowed = [n for n in METHODS if METHODS.get(n).supports_awp]
            raise ValueError(f"AWP (method.awp_gamma > 0) works with {allowed}, not {self.name!r}")
        if self.awp_warmup < 0:
            raise ValueError(f"method.awp_warmup must be >= 0, got {self.awp_warmup}")
        if self.awp_objective not in AWP_OBJECTIVES:
            raise ValueError(f"method.awp_objective must be one of {AWP_OBJECTIVES}, got {self.awp_objective!r}")

    @property
    def beta_value(self) -> float:
        if self.beta is not None:
            return self.beta
        return METHODS.get(self.name).default_beta or 0.0

    @property
    def dp(self) -> bool:
        return METHODS.get(self.name).dp


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="none")


# --- standard -------------------------------------------------------------------------------------


def _no_attack(model, x, y, attack, cfg, generator=None):
    return None


def _clean_loss(model, x, x_adv, y, cfg) -> MethodOutput:
    logits = model(x).float()
    ce = _ce(logits, y)
    return MethodOutput(ce.mean(), ce, logits)


METHODS.register("standard")(Method(_no_attack, _clean_loss))


# --- PGD-AT (Madry et al. 2018) and FGSM-RS (Wong et al. 2020) -------------------------------------


def _pgd_examples(model, x, y, attack: AttackConfig, cfg, generator=None):
    return pgd(model, x, y, attack, generator=generator)


def _fgsm_rs_examples(model, x, y, attack: AttackConfig, cfg, generator=None):
    # Fast AT is one PGD step from a uniform random start with step 1.25 * eps.
    fast = AttackConfig(
        eps=attack.eps,
        norm=attack.norm,
        steps=1,
        step_size=1.25 * attack.eps,
        loss="ce",
        random_start=True,
        start=attack.start,
    )
    return pgd(model, x, y, fast, generator=generator)


def _adv_ce_loss(model, x, x_adv, y, cfg) -> MethodOutput:
    logits = model(x_adv).float()
    ce = _ce(logits, y)
    return MethodOutput(ce.mean(), ce, logits)


METHODS.register("pgd_at")(Method(_pgd_examples, _adv_ce_loss, supports_awp=True))
METHODS.register("fgsm_rs")(Method(_fgsm_rs_examples, _adv_ce_loss))


# --- TRADES (Zhang et al. 2019) -----------------------------------------------------------------


def _trades_examples(model, x, y, attack: AttackConfig, cfg, generator=None):
    """Maximise KL(p(x) || p(x')) over the eps-ball (TRADES's inner problem; labels unused)."""
    return kl_attack(model, x, attack, generator=generator)


def _trades_loss(model, x, x_adv, y, cfg) -> MethodOutput:
    # CE(clean) + beta * KL(p_clean || p_adv), batch-mean, as in the authors' implementation.
    logits_clean = model(x).float()
    logits_adv = model(x_adv).float()
    loss = F.cross_entropy(logits_clean, y) + cfg.beta_value * kl_divergence(logits_clean, logits_adv).mean()
    return MethodOutput(loss, _ce(logits_adv, y), logits_adv)


METHODS.register("trades")(
    Method(_trades_examples, _trades_loss, default_beta=6.0, supports_awp=True, start="gaussian")
)


# --- MART (Wang et al. 2020) ---------------------------------------------------------------------


def _mart_loss(model, x, x_adv, y, cfg) -> MethodOutput:
    logits_clean = model(x).float()
    logits_adv = model(x_adv).float()
    adv_probs = F.softmax(logits_adv, dim=1)
    # Boosted CE: CE plus a margin term on the most likely wrong class.
    top2 = adv_probs.topk(2, dim=1).indices
    wrong = torch.where(top2[:, 0] == y, top2[:, 1], top2[:, 0])
    ce_adv = _ce(logits_adv, y)
    bce = ce_adv + F.nll_loss(torch.log(1.0001 - adv_probs + 1e-12), wrong, reduction="none")
    # KL weighted by how unsure the model is of the true class on the clean input.
    clean_probs = F.softmax(logits_clean, dim=1)
    true_prob = clean_probs.gather(1, y[:, None]).squeeze(1)
    kl = (clean_probs * (torch.log(clean_probs + 1e-12) - torch.log(adv_probs + 1e-12))).sum(1)
    loss = bce.mean() + cfg.beta_value * (kl * (1.0000001 - true_prob)).mean()
    return MethodOutput(loss, ce_adv, logits_adv)


METHODS.register("mart")(Method(_pgd_examples, _mart_loss, default_beta=5.0, start="gaussian"))


# --- DP-SGD versions (Opacus does the clipping and noise; see demem.dp) -------------------------

METHODS.register("dp_sgd")(Method(_no_attack, _clean_loss, dp=True, undefended="standard"))
METHODS.register("dp_pgd_at")(Method(_pgd_examples, _adv_ce_loss, dp=True, undefended="pgd_at"))
# TRADES's two forward passes (clean, adversarial) are fine for Opacus's hooks: per-sample gradients
# of both passes are summed per sample before clipping.
METHODS.register("dp_trades")(
    Method(_trades_examples, _trades_loss, default_beta=6.0, dp=True, undefended="trades", start="gaussian")
)


# --- the full objective -------------------------------------------------------------------------


class Objective(NamedTuple):
    total: torch.Tensor  # () L_method + DeMem penalty
    method_loss: torch.Tensor  # () L_method
    penalty: torch.Tensor  # () lambda * (1/(B-1)) sum_H (l_i - mean l)^2
    per_sample: torch.Tensor  # (B,)
    logits: torch.Tensor  # (B, K)
    high_risk: torch.Tensor  # (B,) bool, the set H


def generate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    method: MethodConfig,
    attack: AttackConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor | None:
    """The examples `method` trains on, (B, C, H, W), or None for standard training. An attack
    whose `start` is None starts where the method's authors start (`Method.start`)."""
    entry = METHODS.get(method.name)
    if attack.start is None:
        attack = replace(attack, start=entry.start)
    return entry.generate(model, x, y, attack, method, generator=generator)


def objective(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor | None,
    *,
    method: MethodConfig,
    demem: DeMemConfig,
    memorization: torch.Tensor | None = None,
    epoch: int = 0,
) -> Objective:
    """L = L_method + DeMem penalty for one batch, with the model in whatever mode the caller set.

    Args:
        x: (B, C, H, W) clean images in [0, 1]; y: (B,) labels; x_adv: output of `generate`.
        memorization: (B,) risk scores of the batch when demem.risk == 'memorization'.
        epoch: the 0-based epoch of the step, for methods with `uses_epoch`.
    """
    entry = METHODS.get(method.name)
    if entry.uses_epoch:
        out = entry.loss(model, x, x_adv, y, method, epoch=epoch)
    else:
        out = entry.loss(model, x, x_adv, y, method)
    if demem.active:
        pen, mask = demem_penalty(out.per_sample, demem, memorization)
    else:
        pen = out.loss.new_zeros(())
        mask = torch.zeros_like(y, dtype=torch.bool)
    return Objective(out.loss + pen, out.loss, pen, out.per_sample, out.logits, mask)


def awp_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    x_adv: torch.Tensor | None,
    *,
    method: MethodConfig,
    demem: DeMemConfig,
    memorization: torch.Tensor | None = None,
    epoch: int = 0,
) -> torch.Tensor:
    """The scalar AWP's weight perturbation ascends: the method's own loss (the AWP and DeMem
    reference code), or that plus the DeMem penalty when `method.awp_objective` is "total"."""
    if method.awp_objective == "method":
        demem = DeMemConfig()  # inactive: `total` is then the method's loss alone
    return objective(model, x, y, x_adv, method=method, demem=demem, memorization=memorization, epoch=epoch).total


class AWP:
    """Adversarial Weight Perturbation (Wu et al. 2020).

    Before each step, a proxy copy of the model takes one gradient-ascent step on `awp_loss`;
    the difference, rescaled per layer to gamma * ||w||, is added to the model's weights for the
    step and removed after it. Only multi-dimensional weights (conv, linear) are perturbed.
    """

    def __init__(self, model: nn.Module, gamma: float, proxy_lr: float = 0.01) -> None:
        self.gamma = gamma
        self.proxy = copy.deepcopy(model)
        self.proxy_opt = torch.optim.SGD(self.proxy.parameters(), lr=proxy_lr)

    def _perturbed(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        pairs = []
        for (name, p), q in zip(model.named_parameters(), self.proxy.parameters()):
            if p.dim() > 1 and "weight" in name:
                pairs.append((p, q))
        return pairs

    def perturb(self, model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> list[torch.Tensor]:
        """Add the perturbation to `model` in place and return it (for `restore`)."""
        self.proxy.load_state_dict(model.state_dict())
        self.proxy.train(model.training)
        self.proxy_opt.zero_grad(set_to_none=True)
        (-loss_fn(self.proxy)).backward()
        self.proxy_opt.step()
        deltas = []
        with torch.no_grad():
            for p, q in self._perturbed(model):
                diff = q - p
                d = self.gamma * p.norm() * diff / (diff.norm() + 1e-20)
                p.add_(d)
                deltas.append(d)
        return deltas

    def restore(self, model: nn.Module, deltas: list[torch.Tensor]) -> None:
        with torch.no_grad():
            for (p, _), d in zip(self._perturbed(model), deltas):
                p.sub_(d)
