"""Evaluation of a trained model: accuracy (natural, PGD, AutoAttack) on its held-out pool samples,
and the per-sample statistics of the whole pool that the privacy audit needs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from demem import config as cfglib
from demem.data import DatasetInfo, Pool
from demem.device import autocast, autotune, to_float
from demem.evasion import AttackConfig, eval_mode, run_attack
from demem.names import (
    GAP_ATTACK,
    N_AUTOATTACK,
    N_HELDOUT,
    N_TRAIN_EVAL,
    NATURAL_ACC,
    NATURAL_GAP,
    ROBUST_ACC,
    ROBUST_ACC_AA,
    ROBUST_GAP,
    TRAIN_NATURAL_ACC,
    TRAIN_ROBUST_ACC,
)
from demem.privacy.boundary import BoundaryConfig, radius_caps
from demem.privacy.signals import chunks, pool_signals


@dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation: natural accuracy, PGD robust accuracy, optional AutoAttack.

    `attack` None means PGD-20 at the training eps with step 2.5 * eps / 20 (the reference's 1/255 at
    8/255), keeping each sample's first successful iterate. AutoAttack is slow: it runs on the first
    `autoattack_samples` held-out samples. `queries` is K, the augmented views per sample whose
    membership signals are recorded for the privacy audit (identity, flip, shifts).

    The robust membership signals, on every pool sample (`demem.privacy.signals.adversarial_signals`,
    `demem.privacy.boundary`): `adversarial` is the PGD that crafts each sample's adversarial query
    against the model itself (by default PGD-10 at the evaluation attack's eps and norm, cross-entropy,
    a uniform start drawn from the sample's id, last iterate); `boundary` the bisection that finds each
    sample's distance to the decision boundary. `RunConfig.from_dict` fills both in when the keys are
    absent; null switches one off (its attacks are then refused in the audit, and a spec that asks
    for them is refused before anything trains).
    """

    attack: AttackConfig | None = None
    autoattack: bool = False
    autoattack_samples: int = 1000
    batch_size: int = 500
    queries: int = 2
    adversarial: AttackConfig | None = None
    boundary: BoundaryConfig | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.autoattack_samples < 1 or self.queries < 1:
            raise ValueError("eval.batch_size, eval.autoattack_samples and eval.queries must be >= 1")


def robust_signals(
    raw_eval: dict[str, Any], attack: dict[str, Any], info: DatasetInfo
) -> tuple[AttackConfig | None, BoundaryConfig | None]:
    """`eval.adversarial` and `eval.boundary` of a run, resolved: absent keys get the defaults (PGD-10
    at the evaluation attack's eps and norm; the boundary caps from the dataset's radius), null stays
    off. `attack` is the evaluation attack's resolved dict."""
    adversarial = raw_eval.get("adversarial", {})
    if adversarial is not None:
        threat = {k: attack[k] for k in ("eps", "norm") if k in attack}
        adv = {"steps": 10, "start": "uniform", "keep_best": False, **threat, **adversarial}
        adversarial = cfglib.build(AttackConfig, adv, "eval.adversarial.")
    boundary = raw_eval.get("boundary", {})
    if boundary is not None:
        boundary = cfglib.build(BoundaryConfig, boundary, "eval.boundary.")
        eps_linf = float(attack["eps"]) if attack.get("norm", "linf") == "linf" else info.eps
        caps = radius_caps(boundary, eps_linf=eps_linf, n_pixels=info.channels * info.image_size**2)
        boundary = replace(boundary, **{f"{norm}_max": cap for norm, cap in caps.items()})
    return adversarial, boundary


def accuracy(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    device: torch.device,
    batch_size: int = 500,
    attack: AttackConfig | None = None,
    generator: torch.Generator | None = None,
    precision: str | None = None,
) -> float:
    """Top-1 accuracy on (N, C, H, W) uint8 images, optionally under `attack`. Returns a fraction.

    The attack runs at `precision` (None: "auto" for the device); the final logits are fp32."""
    correct = 0
    with eval_mode(model), autotune(device):
        for sl in chunks(images.shape[0], batch_size):
            x = to_float(images[sl], device, model)
            y = labels[sl].to(device)
            if attack is not None:
                with autocast(device, precision):
                    x = run_attack(model, x, y, attack, generator=generator)
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                correct += int((model(x).argmax(1) == y).sum())
    return correct / max(images.shape[0], 1)


def evaluate_heldout(
    model: nn.Module,
    pool: Pool,
    keep: np.ndarray,
    cfg: EvalConfig,
    *,
    device: torch.device,
    seed: int = 0,
    limit: int | None = None,
    autoattack: bool = True,
    precision: str | None = None,
) -> dict[str, float | int | None]:
    """Natural and robust accuracy on the samples this model did not train on (keep == 0).

    The attack RNG is seeded from `seed` alone, so the numbers do not depend on what ran before.
    `limit` evaluates only the first `limit` held-out samples (an interim estimate, e.g. per epoch
    of a search trial); `autoattack=False` skips AutoAttack even where `cfg` asks for it. The attacks
    run at `precision` (the run's `train.precision`), the final logits in fp32.
    """
    idx = torch.from_numpy(np.flatnonzero(~keep)[:limit])
    x, y = pool.images[idx], pool.labels[idx]
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    out: dict[str, float | int | None] = {
        N_HELDOUT: int(idx.numel()),
        NATURAL_ACC: accuracy(model, x, y, device=device, batch_size=cfg.batch_size, precision=precision),
        ROBUST_ACC: accuracy(
            model, x, y, device=device, batch_size=cfg.batch_size, attack=cfg.attack, generator=gen, precision=precision
        ),
        ROBUST_ACC_AA: None,
    }
    if cfg.autoattack and autoattack:
        n = min(cfg.autoattack_samples, x.shape[0])
        aa = AttackConfig(name="autoattack", eps=cfg.attack.eps, norm=cfg.attack.norm)
        out[ROBUST_ACC_AA] = accuracy(
            model, x[:n], y[:n], device=device, batch_size=cfg.batch_size, attack=aa, generator=gen, precision=precision
        )
        out[N_AUTOATTACK] = n
    return out


def generalization_gap(
    model: nn.Module,
    pool: Pool,
    keep: np.ndarray,
    stats: dict[str, np.ndarray],
    cfg: EvalConfig,
    *,
    heldout_robust: float,
    device: torch.device,
    seed: int = 0,
    precision: str | None = None,
) -> dict[str, float | int | str]:
    """Natural and robust accuracy on the model's own training half, and each minus the same on its
    held-out half: the generalization gaps that adversarial training overfits (Rice et al. 2020) and
    membership attacks exploit. Each gap compares one procedure on both halves:

    - natural: the clean queries' correctness (`stats["correct"]`, the identity view);
    - robust: the adversarial queries' correctness where they were recorded (`stats["adv_correct"]`,
      `cfg.adversarial`: free, the pass already ran on every sample); else PGD on the training half as
      `evaluate_heldout` runs it on the held-out half (its attack, its RNG seeded from `seed`),
      against that evaluation's `heldout_robust`.
    """
    keep = np.asarray(keep, dtype=bool)
    correct = np.asarray(stats["correct"])[:, 0]
    out: dict[str, float | int | str] = {
        N_TRAIN_EVAL: int(keep.sum()),
        TRAIN_NATURAL_ACC: float(correct[keep].mean()),
        NATURAL_GAP: float(correct[keep].mean() - correct[~keep].mean()),
    }
    if "adv_correct" in stats:
        adv = np.asarray(stats["adv_correct"])[:, 0]
        train, heldout = float(adv[keep].mean()), float(adv[~keep].mean())
        a = cfg.adversarial
        how = f"adversarial queries (PGD-{a.steps}, eps {a.eps:g} {a.norm}, last iterate) on both halves"
    else:
        idx = torch.from_numpy(np.flatnonzero(keep))
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        x, y = pool.images[idx], pool.labels[idx]
        train = accuracy(
            model, x, y, device=device, batch_size=cfg.batch_size, attack=cfg.attack, generator=gen, precision=precision
        )
        heldout = heldout_robust
        how = f"the evaluation attack (PGD-{cfg.attack.steps}) on both halves"
    out[TRAIN_ROBUST_ACC] = train
    out[ROBUST_GAP] = train - heldout
    out[GAP_ATTACK] = how
    return out


def sample_statistics(
    model: nn.Module, pool: Pool, *, device: torch.device, queries: int = 1, batch_size: int = 1000
) -> dict[str, np.ndarray]:
    """Per-sample membership signals of the model on the WHOLE pool, in pool order.

    Returns:
        sample_id (N,), label (N,), and phi / loss / entropy / mentropy / correct as (N, K) arrays
        over K = `queries` augmented views (see `demem.privacy.signals`).
    """
    return pool_signals(model, pool, device=device, queries=queries, batch_size=batch_size)


def own_membership(stats: dict[str, np.ndarray], keep: np.ndarray, attack: str = "loss") -> dict[str, float]:
    """How well a threshold attack tells this model's own members (keep) from its non-members, from
    the model's per-sample statistics (`sample_statistics`). The cheap privacy score of a search
    trial: one model, no shadows; LiRA on a full group (`demem confirm`) is the real audit.

    Returns:
        {"mia_auc", "mia_tpr_at_1pct", "mia_tpr_at_0_1pct", "mia_balanced_acc"}.
    """
    from demem.privacy.mia import THRESHOLD_SIGNALS, threshold_score
    from demem.privacy.roc import attack_metrics

    if attack not in THRESHOLD_SIGNALS:
        raise ValueError(f"own_membership: unknown attack {attack!r}; known: {', '.join(THRESHOLD_SIGNALS)}")
    name = THRESHOLD_SIGNALS[attack][0]
    scores = threshold_score(attack, **{name: stats[name]})
    m = attack_metrics(scores, np.asarray(keep, dtype=bool))
    return {f"mia_{k}": m[k] for k in ("auc", "tpr_at_1pct", "tpr_at_0_1pct", "balanced_acc")}
