"""Conformance checks for what a plugin registers, and what the built-ins pass too.

A plugin author calls these in their own tests, after installing their package (so its entry points
are registered), e.g. ``assert_method("relaxloss")``; each raises `ConformanceError` (an
AssertionError, so pytest shows it as a failure) naming what does not hold, and returns the checks
that do not apply to the entry with why (a method without an attack has no boundary check). The
contracts they check are docs/plugins.md.

    check_method(name)     the examples (shape, [0, 1], inside the ball, detached, deterministic under
                           a seed, a pixel at 0 or 1 with an inward gradient moves: no clamp inside
                           the differentiated graph), the loss (scalar, per-sample (B,) losses with
                           gradients, deterministic), DeMem at lambda 0 equals the method alone and at
                           lambda > 0 adds lambda * var(per-sample) (tau 0), AWP leaves the weights as
                           they were, DP methods give per-sample gradients that average to the batch's
    check_model(name)      logits (B, K) for 1 and 3 channels at 28 and 32 pixels, gradients reach every
                           parameter, the same weights from the same seed, no BatchNorm with norm
                           "group" and a model Opacus accepts
    check_dataset(name, d) None from an empty directory; Splits of the stated shape and label range
    check_attack(name)     (targets, N) finite scores, deterministic, finds the members of a synthetic
                           group where they differ, and never reads the target's own keep row
"""

from __future__ import annotations

import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["ConformanceError", "check_attack", "check_dataset", "check_method", "check_model", "synthetic_group"]


class ConformanceError(AssertionError):
    """An entry does not meet its kind's contract (docs/plugins.md)."""


def _require(ok: bool, what: str, entry: str) -> None:
    if not ok:
        raise ConformanceError(f"{entry}: {what}")


# ---------------------------------------------------------------------------------------------------
# Methods
# ---------------------------------------------------------------------------------------------------

_B, _C, _S, _K = 8, 1, 8, 3  # batch, channels, side, classes of the checks' tiny problem


def _tiny_model(seed: int) -> nn.Module:
    from demem.models import Normalized

    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(_C, 4, 3, padding=1),
        nn.GroupNorm(2, 4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * _S * _S, _K),
    )
    return Normalized((0.5,), (0.25,), net)


def _edge_model() -> nn.Module:
    """Linear logits in which raising pixel 0 and lowering pixel 1 lowers class 0's logit: for label
    0 the loss grows inward from a pixel at 0 (pixel 0) and from a pixel at 1 (pixel 1)."""
    lin = nn.Linear(_C * _S * _S, _K, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        lin.weight[0, 0], lin.weight[0, 1] = -5.0, 5.0
    return nn.Sequential(nn.Flatten(), lin)


def _grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


def check_method(name: str, *, seed: int = 0) -> list[str]:
    """Check the registered method `name` against the method contract; returns the checks that do not
    apply to it, each with why. Raises ConformanceError naming the first that fails."""
    from demem.evasion import AttackConfig
    from demem.methods import AWP, METHODS, MethodConfig, awp_loss, generate, objective
    from demem.penalty import DeMemConfig

    entry, where = METHODS.get(name), f"method {name!r}"
    cfg = MethodConfig(name=name)
    attack = AttackConfig(eps=0.1, steps=3, step_size=0.05, start=entry.start)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(_B, _C, _S, _S, generator=gen)
    y = torch.randint(0, _K, (_B,), generator=gen)
    model = _tiny_model(seed)
    skipped: list[str] = []

    def examples(m: nn.Module, labels: torch.Tensor, inputs: torch.Tensor = x) -> torch.Tensor | None:
        m.eval()
        return generate(m, inputs, labels, method=cfg, attack=attack, generator=torch.Generator().manual_seed(seed))

    x_adv = examples(model, y)
    if x_adv is None:
        skipped.append("examples: the method trains on the clean batch (generate returns None)")
    else:
        _require(x_adv.shape == x.shape and x_adv.dtype == x.dtype, f"examples are {tuple(x_adv.shape)}", where)
        _require(not x_adv.requires_grad, "examples must be detached (no graph back into the attack)", where)
        _require(bool(((x_adv >= 0) & (x_adv <= 1)).all()), "examples leave the [0, 1] box", where)
        _require(float((x_adv - x).abs().max()) <= attack.eps + 1e-6, "examples leave the eps-ball", where)
        _require(torch.equal(x_adv, examples(model, y)), "examples differ between two runs from one seed", where)
        skipped += _check_edges(entry, examples, where)

    def total(lam: float, epoch: int = 0):
        model.train()
        model.zero_grad(set_to_none=True)
        obj = objective(model, x, y, x_adv, method=cfg, demem=DeMemConfig(lam=lam), epoch=epoch)
        obj.total.backward()
        return obj, _grads(model)

    for epoch in (0, 1) if entry.uses_epoch else (0,):
        obj, g0 = total(0.0, epoch)
        _require(
            obj.method_loss.dim() == 0 and bool(torch.isfinite(obj.method_loss)), "loss must be a finite scalar", where
        )
        _require(
            tuple(obj.per_sample.shape) == (_B,),
            f"per_sample must be ({_B},), got {tuple(obj.per_sample.shape)}",
            where,
        )
        _require(tuple(obj.logits.shape) == (_B, _K), f"logits must be ({_B}, {_K})", where)
        _require(bool(torch.isfinite(obj.per_sample).all()), "per_sample losses must be finite", where)
        _require(obj.per_sample.requires_grad, "per_sample must carry gradients (DeMem penalises it)", where)
        _require(any(bool(g.abs().sum() > 0) for g in g0), "the loss gives the parameters no gradient", where)
        again, _ = total(0.0, epoch)
        _require(torch.equal(obj.method_loss, again.method_loss), "the loss differs between two equal calls", where)
        # DeMem at lambda 0 is the method alone: the loss and its gradient, the loss called directly
        model.zero_grad(set_to_none=True)
        kw = {"epoch": epoch} if entry.uses_epoch else {}
        alone = entry.loss(model, x, x_adv, y, cfg, **kw)
        alone.loss.backward()
        _require(torch.equal(obj.total, alone.loss), "DeMem at lambda 0 changes the method's loss", where)
        _require(
            all(torch.equal(a, b) for a, b in zip(g0, _grads(model))), "DeMem at lambda 0 changes the gradient", where
        )
        # lambda > 0 and tau 0: the penalty is lambda * the unbiased variance of the per-sample losses
        pen, g1 = total(0.5, epoch)
        want = 0.5 * torch.var(pen.per_sample.detach().float())
        _require(
            bool(torch.isclose(pen.penalty.detach(), want, rtol=1e-5, atol=1e-7)), "penalty != lambda var(l)", where
        )
        _require(any(not torch.allclose(a, b) for a, b in zip(g0, g1)), "the DeMem penalty has no gradient", where)

    if entry.supports_awp:
        before = [p.detach().clone() for p in model.parameters()]
        awp = AWP(model, gamma=0.01)
        deltas = awp.perturb(model, lambda m: awp_loss(m, x, y, x_adv, method=cfg, demem=DeMemConfig()))
        _require(any(bool(d.abs().sum() > 0) for d in deltas), "AWP found no weight perturbation", where)
        awp.restore(model, deltas)
        ok = all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, model.parameters()))
        _require(ok, "AWP's restore does not give back the weights", where)
    else:
        skipped.append("AWP: supports_awp is False")
    if entry.dp:
        _check_per_sample_gradients(entry, cfg, x, y, x_adv, seed, where)
    else:
        skipped.append("DP: the method is not a DP method (Method.dp is False)")
    return skipped


def _check_edges(entry, examples, where: str) -> list[str]:
    """A pixel at 0 (at 1) whose loss grows inward must move inward: an attack that clamps inside the
    differentiated graph leaves it stuck wherever its random start fell outside the box."""
    edge = _edge_model()
    x = torch.full((16, _C, _S, _S), 0.5)
    flat = x.view(16, -1)
    flat[:, 0], flat[:, 1] = 0.0, 1.0
    y0, y1 = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    a0, a1 = examples(edge, y0, x), examples(edge, y1, x)
    if torch.equal(a0, a1):  # KL attacks (TRADES): the gradient at the start is not inward by construction
        return ["edge pixels: the attack does not use the labels, so no inward loss gradient can be set up"]
    moved = a0.reshape(16, -1)
    _require(
        bool((moved[:, 0] > 0).all()), "a pixel at 0 with an inward gradient did not move (clamp in the graph?)", where
    )
    _require(
        bool((moved[:, 1] < 1).all()), "a pixel at 1 with an inward gradient did not move (clamp in the graph?)", where
    )
    return []


def _check_per_sample_gradients(entry, cfg, x, y, x_adv, seed: int, where: str) -> None:
    """Opacus's per-sample gradients of the method's loss average to the batch gradient."""
    from opacus import GradSampleModule

    from demem.methods import objective
    from demem.penalty import DeMemConfig

    model = GradSampleModule(_tiny_model(seed), loss_reduction="mean")
    model.train()
    obj = objective(model, x, y, x_adv, method=cfg, demem=DeMemConfig())
    obj.total.backward()
    for p in model.parameters():
        gs = getattr(p, "grad_sample", None)
        _require(gs is not None and gs.shape[0] == _B, "DP: no per-sample gradient for a parameter", where)
        _require(torch.allclose(gs.mean(0), p.grad, atol=1e-5, rtol=1e-4), "DP: per-sample gradients != batch's", where)


# ---------------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------------


def check_model(name: str, *, shapes: tuple[tuple[int, int], ...] = ((1, 28), (3, 32)), seed: int = 0) -> list[str]:
    """Check the registered architecture `name` (built through `demem.models.build_model`)."""
    from opacus.validators import ModuleValidator

    from demem.models import NORM_LAYERS, build_model

    where = f"model {name!r}"
    for channels, side in shapes:
        for norm in NORM_LAYERS:

            def build() -> nn.Module:
                torch.manual_seed(seed)
                return build_model(
                    name, in_channels=channels, num_classes=10, image_size=side, mean=(0.5,) * channels,
                    std=(0.25,) * channels, norm=norm,
                )  # fmt: skip

            model, twin = build(), build()
            same = all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), twin.state_dict().values()))
            _require(same, "two builds from one seed differ", where)
            x = torch.rand(2, channels, side, side)
            model.train()
            out = model(x)
            _require(
                tuple(out.shape) == (2, 10), f"logits are {tuple(out.shape)} for (2, {channels}, {side}, {side})", where
            )
            _require(bool(torch.isfinite(out).all()), "logits are not finite", where)
            out.sum().backward()
            dead = [
                n
                for n, p in model.named_parameters()
                if p.requires_grad and (p.grad is None or not torch.isfinite(p.grad).all())
            ]
            _require(not dead, f"no finite gradient reaches {dead[:3]}", where)
            twin.load_state_dict(model.state_dict(), strict=True)
            if norm == "group":
                bn = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
                _require(not bn, f"norm 'group' still has BatchNorm layers {bn[:3]} (DP-SGD needs none)", where)
                errors = ModuleValidator.validate(model, strict=False)
                _require(not errors, f"Opacus refuses it with norm 'group': {errors[:2]}", where)
    return []


# ---------------------------------------------------------------------------------------------------
# Datasets
# ---------------------------------------------------------------------------------------------------


def check_dataset(name: str, directory: str | Path) -> list[str]:
    """Check the registered dataset reader `name` on the files in `directory`."""
    from demem.data import DATASETS, dataset_info

    where = f"dataset {name!r}"
    loader, info = DATASETS.get(name), dataset_info(name)
    with tempfile.TemporaryDirectory() as empty:
        _require(loader(Path(empty)) is None, "the reader must return None for a directory without its files", where)
    found = loader(Path(directory))
    _require(found is not None, f"the reader found nothing in {directory}", where)
    again = loader(Path(directory))
    for split, twin, label in zip(found, again, ("train", "test")):
        shape = (info.channels, info.image_size, info.image_size)
        _require(tuple(split.images.shape[1:]) == shape, f"{label} images are not (N, {shape})", where)
        if split.n:
            lo, hi = int(split.labels.min()), int(split.labels.max())
            _require(0 <= lo and hi < info.num_classes, f"{label} labels span [{lo}, {hi}]", where)
        _require(
            torch.equal(split.images, twin.images) and torch.equal(split.labels, twin.labels), "reads differ", where
        )
    _require(found[0].n > 0, "the train split is empty", where)
    for split, size in zip(found, info.sizes):
        _require(not size or split.n <= size, f"a split holds more than info.sizes says ({size})", where)
    return []


# ---------------------------------------------------------------------------------------------------
# Membership attacks
# ---------------------------------------------------------------------------------------------------

_INFORMATIVE = ("phi", "loss", "adv_phi", "adv_loss", "boundary_linf", "boundary_l2")


def synthetic_group(m: int, n: int = 60, k: int = 2, seed: int = 0, robust: bool = True, scale: float = 0.5):
    """A `GroupData` of `m` models on complementary pairs of halves, whose members have lower losses
    (`scale` times a non-member's, in distribution; on clean and adversarial queries) and lie farther
    from the decision boundary; `robust=False` leaves out the robust signals, as models trained with
    eval.adversarial and eval.boundary off do."""
    from demem.artifacts import GroupData
    from demem.train import RunConfig

    rng = np.random.default_rng(seed)
    keep = np.zeros((m, n), bool)
    for p in range(m // 2):
        keep[2 * p, rng.permutation(n)[: n // 2]] = True
        keep[2 * p + 1] = ~keep[2 * p]
    loss = rng.exponential(1.0, size=(m, n, k)) * np.where(keep[..., None], scale, 1.0)
    p = np.exp(-loss)
    signals = {
        "phi": np.log(p) - np.log1p(-np.minimum(p, 1 - 1e-9)),
        "loss": loss,
        "entropy": rng.random((m, n, k)),
        "mentropy": rng.random((m, n, k)),
        "correct": (rng.random((m, n, k)) < 0.8).astype(np.float32),
    }
    if robust:
        adv_loss = rng.exponential(2.0, size=(m, n, 1)) * np.where(keep[..., None], scale + 0.1, 1.0)
        adv_p = np.exp(-adv_loss)
        signals.update(
            adv_loss=adv_loss,
            adv_phi=np.log(adv_p) - np.log1p(-np.minimum(adv_p, 1 - 1e-9)),
            adv_entropy=rng.random((m, n, 1)),
            adv_mentropy=rng.random((m, n, 1)),
            adv_correct=rng.random((m, n, 1)) < 0.5,
        )
        for norm, cap in (("linf", 0.4), ("l2", 5.6)):
            d = np.minimum(rng.exponential(cap / 4, size=(m, n, 1)) * np.where(keep[..., None], 0.75 / scale, 1.0), cap)
            signals[f"boundary_{norm}"] = d
            signals[f"boundary_{norm}_censored"] = d >= cap
    run = RunConfig.from_dict({"data": {"dataset": "fashion-mnist", "pool_size": n}}).to_dict()
    return GroupData(
        dirs=[Path(f"m{i}") for i in range(m)],
        model_index=np.arange(m),
        signals=signals,
        keep=keep,
        labels=rng.integers(0, 10, n),
        sample_ids=np.arange(n),
        run=run,
        pool_fingerprint="synthetic",
        metrics=[{"natural_acc": 0.5} for _ in range(m)],
    )


def check_attack(name: str, *, seed: int = 0) -> list[str]:
    """Check the registered membership attack `name` on synthetic groups."""
    from demem.privacy.attacks import MIA
    from demem.privacy.audit import AuditConfig, attack_setup
    from demem.privacy.roc import attack_metrics

    attack, where = MIA.get(name), f"membership attack {name!r}"
    m = max(attack.min_models, 8) + max(attack.min_models, 8) % 2
    group = synthetic_group(m, n=200, seed=seed, scale=0.1)
    missing = [s for s in attack.signals if s not in group.signals]
    _require(not missing, f"reads signals no demem group records: {missing}", where)
    cfg = AuditConfig(attacks=(name,))
    setup = attack_setup(group, cfg)
    scored = attack.score(setup)
    t, n = len(setup.targets), group.keep.shape[1]
    _require(scored.scores.shape == (t, n), f"scores are {scored.scores.shape}, want (targets, N) = {(t, n)}", where)
    _require(bool(np.isfinite(scored.scores).all()), "scores are not finite", where)
    _require(
        np.array_equal(scored.scores, attack.score(attack_setup(group, cfg)).scores), "scores differ on a rerun", where
    )
    skipped = []
    if set(attack.signals) & set(_INFORMATIVE):
        auc = np.mean([attack_metrics(s, group.keep[j])["auc"] for j, s in zip(setup.targets, scored.scores)])
        _require(auc > 0.6, f"finds no members where they differ (mean AUC {auc:.3f} on a synthetic group)", where)
    else:
        skipped.append("power: the synthetic group's members differ only in phi, loss and the robust signals")
    null = synthetic_group(m, n=200, seed=seed + 2, scale=1.0)  # members and non-members alike
    null_scores = attack.score(attack_setup(null, cfg)).scores
    auc = np.mean([attack_metrics(s, null.keep[j])["auc"] for j, s in zip(setup.targets, null_scores)])
    _require(abs(auc - 0.5) < 0.1, f"finds 'members' where none differ (mean AUC {auc:.3f})", where)
    if attack.population != "none":
        skipped.append("own keep row: it reads the target's non-members as its population, as its threat model grants")
        return skipped
    # The target's own keep row is the answer: re-drawing it (with its partner's) must not move its scores.
    rng = np.random.default_rng(seed + 1)
    keep = group.keep.copy()
    keep[0] = rng.permutation(keep[0])
    keep[1] = ~keep[0]
    shuffled = replace(group, keep=keep)
    moved = attack.score(attack_setup(shuffled, cfg)).scores[0]
    _require(np.allclose(moved, scored.scores[0], equal_nan=True), "a target's scores read its own keep row", where)
    return skipped
