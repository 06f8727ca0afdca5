"""Evasion attacks in pixel space: FGSM, PGD (L-inf / L2, CE or CW-margin loss), TRADES's KL attack,
AutoAttack.

Every attack is a function `attack(model, x, y, cfg, generator=None) -> x_adv` of tensors plus a
frozen `AttackConfig`. Images are pixels in [0, 1]; the model normalises internally
(`demem.models.Normalized`). Attacks run the model in eval mode (so BatchNorm statistics are neither
used from the batch nor updated) and put it back in the mode it was in.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from demem.registry import Registry

EVASION_ATTACKS: Registry[Callable[..., torch.Tensor]] = Registry("attack")
THREAT_NORMS = ("linf", "l2")
LOSSES = ("ce", "cw")
STARTS = ("uniform", "gaussian")
GAUSSIAN_START_STD = 0.001  # TRADES / MART: x + 0.001 * N(0, I), in pixel units


@dataclass(frozen=True)
class AttackConfig:
    """One attack's settings.

    Attributes:
        name: registered attack: "pgd", "fgsm" or "autoattack".
        eps: radius in the attack's norm, in pixel units of [0, 1] images (8/255 ~ 0.031 for CIFAR).
        norm: "linf" or "l2".
        steps: PGD iterations (ignored by FGSM).
        step_size: per-step move in pixel units; None means 2.5 * eps / steps (Madry et al.), which is
            the reference code's 1/255 for PGD-20 at eps 8/255.
        loss: "ce" (cross-entropy) or "cw" (Carlini-Wagner margin, max_{j != y} z_j - z_y).
        random_start: start from a random point near x (PGD) rather than from x itself.
        start: where that random point is drawn: "uniform" in the eps-ball, then clipped into the
            [0, 1] box (Madry et al. and torchattacks; PGD-AT, FGSM-RS and evaluation), or
            "gaussian", x + 0.001 * N(0, I) used as it is, neither clipped into the box nor projected
            (the TRADES and MART authors' code takes its first gradient there; the first step's
            projection brings it back). None: the training method's own choice (`Method.start`);
            "uniform" elsewhere.
        keep_best: evaluation mode: a sample that any iterate misclassified is returned at that
            iterate, so more steps can never make the model look more robust on the same start.
            Training wants the last iterate (False).
    """

    name: str = "pgd"
    eps: float = 8 / 255
    norm: str = "linf"
    steps: int = 10
    step_size: float | None = None
    loss: str = "ce"
    random_start: bool = True
    start: str | None = None
    keep_best: bool = False

    def __post_init__(self) -> None:
        EVASION_ATTACKS.check(self.name)
        if not self.eps > 0:
            raise ValueError(f"attack.eps must be > 0, got {self.eps}")
        if self.norm not in THREAT_NORMS:
            raise ValueError(f"attack.norm must be one of {THREAT_NORMS}, got {self.norm!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"attack.loss must be one of {LOSSES}, got {self.loss!r}")
        if self.steps < 1:
            raise ValueError(f"attack.steps must be >= 1, got {self.steps}")
        if self.step_size is not None and not self.step_size > 0:
            raise ValueError(f"attack.step_size must be > 0 or None, got {self.step_size}")
        if self.start is not None and self.start not in STARTS:
            raise ValueError(f"attack.start must be one of {STARTS} or null (the method's own), got {self.start!r}")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` in eval mode and restore its previous mode afterwards, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-sample loss the attacker maximises. logits: (B, K), y: (B,). Returns (B,)."""
    logits = logits.float()
    if kind == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    true = logits.gather(1, y[:, None]).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return other.amax(1) - true


def kl_divergence(logits_ref: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(logits_ref) || softmax(logits)) per sample. Shapes (B, K) -> (B,)."""
    log_p = F.log_softmax(logits_ref.float(), dim=1)
    log_q = F.log_softmax(logits.float(), dim=1)
    return (log_p.exp() * (log_p - log_q)).sum(1)


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    """L2 norm of each sample, shaped (B, 1, 1, 1) for broadcasting."""
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project perturbations onto the eps-ball of `norm`."""
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)


def project_image(x_adv: torch.Tensor, x: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project `x_adv` onto the eps-ball around `x`, then into the [0, 1] box. L-inf is written as
    min(max(x_adv, x - eps), x + eps), as the TRADES authors do, so no rounding of x + (x_adv - x)."""
    if norm == "linf":
        inside = torch.min(torch.max(x_adv, x - eps), x + eps)
    else:
        inside = x + project(x_adv - x, eps, norm)
    return inside.clamp(0, 1)


def random_init(x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None) -> torch.Tensor:
    """A random perturbation inside the eps-ball: uniform per coordinate (L-inf) or a uniform
    direction with radius uniform in [0, eps] (L2)."""
    if norm == "linf":
        u = torch.rand(x.shape, device=x.device, dtype=x.dtype, generator=generator)
        return (2 * u - 1) * eps
    d = torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)
    r = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), device=x.device, dtype=x.dtype, generator=generator)
    return d / _per_sample_norm(d) * r * eps


def initial_delta(x: torch.Tensor, cfg: AttackConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """The perturbation an attack starts from: uniform inside the eps-ball, or 0.001 N(0, I) as the
    TRADES and MART authors draw it (not projected). Where the start is clipped into the box is
    `start_point`'s business."""
    if not cfg.random_start:
        return torch.zeros_like(x)
    if (cfg.start or "uniform") == "uniform":
        return random_init(x, cfg.eps, cfg.norm, generator)
    return GAUSSIAN_START_STD * torch.randn(x.shape, device=x.device, dtype=x.dtype, generator=generator)


def start_point(x: torch.Tensor, delta: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """The first iterate x + delta: clipped into [0, 1] for a uniform start (Madry et al.,
    torchattacks), as it is for the Gaussian start (the TRADES and MART authors' loops take their
    first gradient at the unclipped x + 0.001 N(0, I); half of a Fashion-MNIST image is exactly 0, so
    clipping it changes the first step's direction for those pixels)."""
    if cfg.random_start and cfg.start == "gaussian":
        return x + delta
    return (x + delta).clamp(0, 1)


def _ascent_direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    return grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)


def ascend(
    model: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    cfg: AttackConfig,
    *,
    start: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    on_iterate: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
) -> torch.Tensor:
    """Projected gradient ascent of `loss_fn(model(x_adv))` over the eps-ball around x and the box.

    The iterate itself is kept in [0, 1] and the gradient is taken with respect to it, so the box
    never enters the differentiated graph: a clamp there has zero gradient at and beyond the bounds,
    which would freeze every saturated pixel (half of a Fashion-MNIST image is exactly 0).

    Args:
        model: maps (B, C, H, W) pixels in [0, 1] to (B, K) logits; run in eval mode.
        x: (B, C, H, W) clean images in [0, 1].
        loss_fn: (B, K) logits -> (B,) per-sample loss to maximise.
        cfg: eps, norm, steps, step size; `random_start` / `start` when `start` is None.
        start: (B, C, H, W) perturbation to start from (tests, reproductions); None draws one.
        generator: RNG for the random start.
        on_iterate: called as on_iterate(logits, x_adv) at every iterate, without grad.

    Returns:
        (B, C, H, W) detached x_adv, within eps of x in cfg.norm and in [0, 1].
    """
    x = x.detach()
    delta = initial_delta(x, cfg, generator) if start is None else start.detach()
    x_adv = start_point(x, delta, cfg)
    with eval_mode(model):
        for _ in range(cfg.steps):
            x_adv.requires_grad_(True)
            logits = model(x_adv)
            (grad,) = torch.autograd.grad(loss_fn(logits).sum(), x_adv)
            with torch.no_grad():
                if on_iterate is not None:
                    on_iterate(logits, x_adv)
                x_adv = project_image(x_adv + cfg.alpha * _ascent_direction(grad, cfg.norm), x, cfg.eps, cfg.norm)
    return x_adv.detach()


@EVASION_ATTACKS.register("pgd")
def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected gradient ascent on the attack loss (Madry et al. 2018).

    Args:
        model: maps (B, C, H, W) pixels in [0, 1] to (B, K) logits.
        x: (B, C, H, W) clean images in [0, 1].
        y: (B,) int64 labels.
        cfg: attack settings.
        generator: RNG for the random start, for reproducible attacks.
        start: optional fixed starting perturbation (see `ascend`).

    Returns:
        (B, C, H, W) adversarial images, detached, with ||x_adv - x|| <= eps in cfg.norm and values
        in [0, 1].
    """

    def loss(logits: torch.Tensor) -> torch.Tensor:
        return attack_loss(logits, y, cfg.loss)

    if not cfg.keep_best:
        return ascend(model, x, loss, cfg, start=start, generator=generator)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    best = x.detach().clone()

    def record(logits: torch.Tensor, x_cur: torch.Tensor) -> None:
        _record_fooled(logits, y, x_cur, fooled, best)

    x_adv = ascend(model, x, loss, cfg, start=start, generator=generator, on_iterate=record)
    with torch.no_grad(), eval_mode(model):
        record(model(x_adv), x_adv)
    return torch.where(fooled.view(-1, 1, 1, 1), best, x_adv)


def kl_attack(
    model: nn.Module,
    x: torch.Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
    start: torch.Tensor | None = None,
) -> torch.Tensor:
    """TRADES's inner maximisation (Zhang et al. 2019, Algorithm 1): projected sign-gradient ascent of
    KL(p(x) || p(x_adv)), label-free. Takes the same arguments as `pgd` but no labels.

    It runs in full precision whatever autocast the caller set: from x + 0.001 N(0, I) the KL and its
    gradient are far below bf16's resolution of the logits, so under bf16 the first steps' signs are
    rounding noise (measured: 10-15% less KL reached, on an H200 and with CPU bf16 autocast alike).
    """
    with torch.autocast(x.device.type, enabled=False):
        with torch.no_grad(), eval_mode(model):
            ref = model(x.detach().float()).float()
        return ascend(
            model, x.float(), lambda logits: kl_divergence(ref, logits), cfg, start=start, generator=generator
        )


def _record_fooled(
    logits: torch.Tensor, y: torch.Tensor, x_cur: torch.Tensor, fooled: torch.Tensor, best: torch.Tensor
) -> None:
    """Remember, in place, the first iterate at which each sample was misclassified."""
    newly = (logits.argmax(1) != y) & ~fooled
    best[newly] = x_cur.detach()[newly]
    fooled |= newly


@EVASION_ATTACKS.register("fgsm")
def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): one full step of size eps from x
    (L2: one step of length eps along the normalised gradient). No random start."""
    x = x.detach()
    with eval_mode(model):
        xr = x.clone().requires_grad_(True)
        loss = attack_loss(model(xr), y, cfg.loss)
        (grad,) = torch.autograd.grad(loss.sum(), xr)
    delta = project(cfg.eps * _ascent_direction(grad, cfg.norm), cfg.eps, cfg.norm)
    return (x + delta).clamp(0, 1).detach()


@EVASION_ATTACKS.register("autoattack")
def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Standard AutoAttack (Croce & Hein 2020) through torchattacks (`pip install 'demem[autoattack]'`)."""
    try:
        import torchattacks
    except ImportError as e:  # an optional extra: say exactly how to get it
        raise ImportError(
            "AutoAttack needs torchattacks: pip install 'demem[autoattack]' (or pip install torchattacks)"
        ) from e
    with eval_mode(model):
        n_classes = model(x[:1]).shape[1]
        seed = 0 if generator is None else int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        atk = torchattacks.AutoAttack(
            model,
            norm="Linf" if cfg.norm == "linf" else "L2",
            eps=cfg.eps,
            version="standard",
            n_classes=n_classes,
            seed=seed,
        )
        x_adv = atk(x.detach(), y)
    return x_adv.detach()


def run_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: AttackConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Dispatch to the attack that `cfg.name` names."""
    return EVASION_ATTACKS.get(cfg.name)(model, x, y, cfg, generator=generator)
