"""Train one model of a group: the run config, the training state, and the epoch loop.

    run = RunConfig.from_dict({...})      # every check happens here, before any data is loaded
    state = prepare(run, device)          # pool, keep row, model, optimizer, resident data
    for metrics in epochs(state):         # yields after each epoch; the caller reports/checkpoints
        ...

The lifecycle of a run directory around this loop (resume, checkpoints, evaluation, the files
written) is `demem.runner.train_run`.

The training data live on the device as uint8 and are augmented there in batches. On CUDA the
forward/backward passes (attacks included) run under bf16 autocast with channels_last; on the CPU
both are no-ops. The LR schedule is a pure function of the epoch, so the epoch counter is the
scheduler's whole state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from demem import __version__, names
from demem import config as cfglib
from demem.augment import augment
from demem.data import Pool, dataset_info, make_pool
from demem.data.config import DATASET_DEFAULTS, GENERIC_DEFAULTS, DataConfig
from demem.device import (
    PRECISIONS,
    autocast,
    autotune,
    default_device,
    layout,
    place_model,
    resolve_precision,
    to_float,
)
from demem.dp import (
    DPConfig,
    DPRuntime,
    fp32_grad_samples,
    make_private,
    per_sample_hooks_off,
    quiet_hook_warnings,
)
from demem.evaluate import EvalConfig, robust_signals
from demem.evasion import AttackConfig
from demem.membership import keep_row
from demem.methods import AWP, METHODS, MethodConfig, awp_loss, generate, objective
from demem.models import MODELS, NORM_LAYERS, build_model
from demem.penalty import DeMemConfig, load_risk_table, scores_for
from demem.privacy.signals import query_plan

SCHEDULES = ("step", "cosine", "constant")
# Bounds that catch a typo (an extra zero or ten) before it becomes a job that never ends.
MAX_EPOCHS = 10_000
MAX_BATCH = 1 << 20


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings (SGD with momentum and weight decay, as the reference).

    Attributes:
        epochs, batch_size: None takes the dataset's default (DATASET_DEFAULTS).
        lr_milestones: for schedule "step", fractions of `epochs` at which the LR is multiplied by
            `lr_decay` (reference: x0.1 at epoch 75 of 100).
        augment: random crop (+ flip where the dataset allows) during training.
        precision: "fp32", "bf16" (autocast, and channels_last where it is faster, in the training step and the
            evaluation's attacks; the membership signals stay fp32) or "auto" (bf16 where the device
            computes it natively: `demem.device.resolve_precision`). A resolved run config holds
            "fp32" or "bf16", so runs of either precision are never one group.
    """

    arch: str = "small-cnn"
    norm: str = "batch"
    epochs: int | None = None
    batch_size: int | None = None
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    lr_milestones: tuple[float, ...] = (0.75,)
    lr_decay: float = 0.1
    augment: bool = True
    precision: str = "auto"

    def __post_init__(self) -> None:
        MODELS.check(self.arch)
        if self.precision not in PRECISIONS:
            raise ValueError(f"train.precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.norm not in NORM_LAYERS:
            raise ValueError(f"train.norm must be one of {NORM_LAYERS}, got {self.norm!r}")
        if self.epochs is not None and not 1 <= self.epochs <= MAX_EPOCHS:
            raise ValueError(f"train.epochs must be in [1, {MAX_EPOCHS}], got {self.epochs}")
        if self.batch_size is not None and not 1 <= self.batch_size <= MAX_BATCH:
            raise ValueError(f"train.batch_size must be in [1, {MAX_BATCH}], got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not 0 <= self.momentum < 1 or self.weight_decay < 0:
            raise ValueError("train.momentum must be in [0, 1) and train.weight_decay >= 0")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if any(not 0 < m < 1 for m in self.lr_milestones) or not 0 < self.lr_decay <= 1:
            raise ValueError("train.lr_milestones must be fractions in (0, 1) and train.lr_decay in (0, 1]")


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines one trained model. Build it with `RunConfig.from_dict`.

    The group is every field but `seed` and `model_index`. The keep row of model `model_index` is
    derived from (n_models, pool, pool_seed) alone, so the models of a group agree on it without
    talking to each other; `seed` drives initialisation, batch order, augmentation and attacks.
    """

    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    attack: AttackConfig | None = None
    eval: EvalConfig = field(default_factory=EvalConfig)
    demem: DeMemConfig = field(default_factory=DeMemConfig)
    dp: DPConfig = field(default_factory=DPConfig)
    n_models: int = 2
    model_index: int = 0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {self.n_models}")
        if not 0 <= self.model_index < self.n_models:
            raise ValueError(f"model_index must be in [0, n_models={self.n_models}), got {self.model_index}")
        if not self.method.dp and self.train.batch_size is not None and self.train.batch_size < 2:
            # (DP batches are Poisson-sampled, so there the size is only an expectation.)
            raise ValueError(f"train.batch_size must be >= 2, got {self.train.batch_size}")
        dp_methods = [n for n in METHODS if METHODS.get(n).dp]
        if self.method.dp and not self.dp.given:
            raise ValueError(f"method {self.method.name!r} needs dp.noise_multiplier or dp.target_epsilon")
        if self.dp.given and not self.method.dp:
            raise ValueError(
                f"dp settings are given but method {self.method.name!r} is not a DP method; use one of {dp_methods}"
            )

    @property
    def defence(self) -> str:
        """Which privacy defences the run uses: none, demem, dp or dp+demem, or a defence method's name
        (a method with an undefended baseline other than itself, e.g. a plugin's relaxloss_at), +demem."""
        entry = METHODS.get(self.method.name)
        own = not entry.dp and entry.undefended not in (None, self.method.name)
        parts = [p for p, on in (("dp", entry.dp), (self.method.name, own), ("demem", self.demem.active)) if on]
        return "+".join(parts) or "none"

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, device: torch.device | str | None = None) -> RunConfig:
        """Validate `data` and fill dataset-dependent defaults (epochs, attack eps, step sizes), and
        resolve `train.precision` "auto" for `device` (default: CUDA if present, else the CPU)."""
        raw = data or {}
        wrong = cfglib.type_problems(cls, raw)  # 2.5 epochs, lr inf, weight_decay nan, "1e-2"
        if wrong:
            raise ValueError("; ".join(wrong))
        run = cfglib.build(cls, raw)  # unknown keys and bad values fail here
        info = dataset_info(run.data.dataset)
        defaults = DATASET_DEFAULTS.get(info.name, GENERIC_DEFAULTS)
        train = replace(
            run.train,
            epochs=run.train.epochs or defaults["epochs"],
            batch_size=run.train.batch_size or defaults["batch_size"],
            precision=resolve_precision(run.train.precision, device or default_device()),
        )
        if run.method.dp and train.norm == "batch":
            # DP-SGD needs per-sample gradients, which BatchNorm does not have: use GroupNorm.
            if (raw.get("train") or {}).get("norm") == "batch":
                raise ValueError(
                    "train.norm 'batch' cannot be trained with DP-SGD (BatchNorm mixes the samples "
                    "of a batch); use 'group'"
                )
            train = replace(train, norm="group")
        atk = {"eps": info.eps, "steps": 3, **(raw.get("attack") or {})}
        atk.setdefault("step_size", 1.25 * atk["eps"] / atk["steps"])  # the reference training attack
        atk.setdefault("start", METHODS.get(run.method.name).start)  # where the method's authors start
        query_plan(info, run.eval.queries)  # fail now if the dataset has fewer views than asked
        ev = {
            "eps": atk["eps"],
            "steps": 20,
            "keep_best": True,
            "start": "uniform",
            **((raw.get("eval") or {}).get("attack") or {}),
        }
        adversarial, boundary = robust_signals(raw.get("eval") or {}, ev, info)
        # lambda = 0 is the undefended method whatever the threshold or risk say: store it one way,
        # so that grid points that differ only there are one group, trained once.
        demem = run.demem if run.demem.active else DeMemConfig()
        return replace(
            run,
            train=train,
            demem=demem,
            attack=cfglib.build(AttackConfig, atk, "attack."),
            eval=replace(
                run.eval,
                attack=cfglib.build(AttackConfig, ev, "eval.attack."),
                adversarial=adversarial,
                boundary=boundary,
            ),
        )

    def to_dict(self) -> dict[str, Any]:
        return cfglib.to_dict(self)

    @property
    def model_seed(self) -> int:
        """Seed of this model: distinct for every (seed, model_index)."""
        return int(np.random.SeedSequence([self.seed, self.model_index]).generate_state(1)[0])


def lr_at(train: TrainConfig, epoch: int) -> float:
    """Learning rate of (0-based) `epoch`."""
    if train.schedule == "constant":
        return train.lr
    if train.schedule == "cosine":
        return 0.5 * train.lr * (1 + math.cos(math.pi * epoch / train.epochs))
    passed = sum(epoch >= round(m * train.epochs) for m in train.lr_milestones)
    return train.lr * train.lr_decay**passed


def model_for(run: RunConfig, device: torch.device) -> nn.Module:
    """The architecture of `run`, initialised from the model seed, on `device`."""
    info = dataset_info(run.data.dataset)
    # Initialise on the CPU from the model seed without touching any global RNG stream.
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(run.model_seed)
        model = build_model(
            run.train.arch,
            in_channels=info.channels,
            num_classes=info.num_classes,
            image_size=info.image_size,
            mean=info.mean,
            std=info.std,
            norm=run.train.norm,
        )
    return place_model(model, device, run.train.precision)


def load_pool(run: RunConfig) -> Pool:
    d = run.data
    return make_pool(
        d.dataset, pool_size=d.pool_size, seed=d.pool_seed, splits=d.splits, root=d.root, download=d.download
    )


@dataclass
class TrainState:
    """Everything one training run holds; `state_dict` / `load_state_dict` make it resumable
    (`demem.artifacts.write_checkpoint` / `read_checkpoint` put it on disk)."""

    run: RunConfig
    device: torch.device
    pool: Pool
    keep: np.ndarray  # (N,) bool, this model's row of the group's keep mask
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    train_x: torch.Tensor  # (n, C, H, W) uint8 on device
    train_y: torch.Tensor  # (n,) int64 on device
    train_mem: torch.Tensor | None  # (n,) float memorization scores, for risk="memorization"
    train_model: nn.Module | None = None  # what the loss is computed through (Opacus's wrapper under DP)
    dp: DPRuntime | None = None
    awp: AWP | None = None
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.epoch >= self.run.train.epochs

    def state_dict(self) -> dict[str, Any]:
        return {
            "format": 1,
            "demem_version": __version__,
            "run": self.run.to_dict(),
            "pool_fingerprint": self.pool.fingerprint(),
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "generator": self.generator.get_state(),
            "history": self.history,
            "dp": self.dp.state_dict() if self.dp is not None else None,
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if sd.get("run") != self.run.to_dict():
            raise ValueError("checkpoint was written by a different run config; refusing to resume from it")
        if sd.get("pool_fingerprint") != self.pool.fingerprint():
            raise ValueError("checkpoint was written for a different pool; refusing to resume from it")
        self.model.load_state_dict(sd["model"])
        self.optimizer.load_state_dict(sd["optimizer"])
        self.generator.set_state(sd["generator"])
        self.epoch = int(sd["epoch"])
        self.history = list(sd["history"])
        if self.dp is not None:
            self.dp.load_state_dict(sd["dp"])


def prepare(run: RunConfig, device: torch.device | str = "cpu", pool: Pool | None = None) -> TrainState:
    """Load the pool, pick this model's training half, build model and optimizer.

    Args:
        run: a config from `RunConfig.from_dict`.
        device: where to train; the data are copied there once.
        pool: an already loaded pool of the same config (saves re-reading the dataset).
    """
    device = torch.device(device) if isinstance(device, str) else device
    pool = pool if pool is not None else load_pool(run)
    keep = keep_row(run.n_models, pool.n, run.data.pool_seed, run.model_index)
    idx = torch.from_numpy(np.flatnonzero(keep))
    mem = None
    if run.demem.risk == "memorization":
        table = load_risk_table(run.demem.risk_file)
        scores = scores_for(pool.sample_ids.numpy()[keep], table, run.demem.risk_file)
        mem = torch.from_numpy(scores).to(device)
    model = model_for(run, device)
    opt = torch.optim.SGD(
        model.parameters(), lr=lr_at(run.train, 0), momentum=run.train.momentum, weight_decay=run.train.weight_decay
    )
    gen = torch.Generator(device=device)
    gen.manual_seed(run.model_seed)
    awp = AWP(model, run.method.awp_gamma) if run.method.awp_gamma > 0 else None
    train_model, dp = model, None
    if run.method.dp:
        train_model, opt, dp = make_private(
            model,
            opt,
            n_train=int(idx.numel()),
            batch_size=run.train.batch_size,
            epochs=run.train.epochs,
            cfg=run.dp,
            seed=run.model_seed,
            device=device,
        )
    return TrainState(
        run=run,
        device=device,
        pool=pool,
        keep=keep,
        model=model,
        optimizer=opt,
        generator=gen,
        train_x=pool.images[idx].to(device),
        train_y=pool.labels[idx].to(device),
        train_mem=mem,
        train_model=train_model,
        dp=dp,
        awp=awp,
    )


def _batches(n: int, batch_size: int, perm: torch.Tensor) -> Iterator[torch.Tensor]:
    # A last batch of one sample would break BatchNorm and has no variance: fold it away.
    stop = n - 1 if n % batch_size == 1 else n
    for start in range(0, stop, batch_size):
        yield perm[start : min(start + batch_size, stop)]


def train_epoch(state: TrainState) -> dict[str, float]:
    """Run one epoch and return its metrics. Raises FloatingPointError on a non-finite loss."""
    run, device = state.run, state.device
    lr = lr_at(run.train, state.epoch)
    for g in state.optimizer.param_groups:
        g["lr"] = lr
    n = state.train_x.shape[0]
    if state.dp is not None:  # Poisson-sampled batches, drawn by Opacus
        batches = [i.to(device) for (i,) in state.dp.loader]
    else:
        batches = list(_batches(n, run.train.batch_size, torch.randperm(n, device=device, generator=state.generator)))
    # Per-batch sums stay on the device: no host sync inside the loop.
    sums = torch.zeros(len(batches), 5, device=device, dtype=torch.float64)
    use_awp = state.awp is not None and state.epoch >= run.method.awp_warmup
    t0 = time.perf_counter()
    with autotune(device), quiet_hook_warnings():  # both restored after the epoch
        for b, idx in enumerate(batches):
            if idx.numel() == 0:  # a Poisson batch can be empty: Opacus still takes a noise-only step
                _empty_dp_step(state)
                continue
            _train_step(state, idx, use_awp, sums[b])
    state.epoch += 1
    totals = sums.cpu()
    bad = ~torch.isfinite(totals[:, 0])
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        raise FloatingPointError(
            f"non-finite training loss at epoch {state.epoch} batch {first + 1}/{len(batches)} "
            f"(method {run.method.name}, lr {lr:g}); lower the learning rate or demem.lambda"
        )
    seconds = time.perf_counter() - t0
    used = max(sum(len(i) for i in batches), 1)
    s = totals.sum(0) / used
    metrics = {
        names.EPOCH: state.epoch,
        names.TRAIN_LOSS: float(s[0]),
        names.METHOD_LOSS: float(s[1]),
        names.PENALTY: float(s[2]),
        names.TRAIN_ACC: float(s[3]),
        names.HIGH_RISK_FRAC: float(s[4]),
        names.LR: lr,
        names.SECONDS: seconds,
        names.SAMPLES_PER_S: used / seconds,
    }
    if state.dp is not None:
        metrics[names.EPSILON] = state.dp.epsilon()
    state.history.append(metrics)
    return metrics


def _train_step(state: TrainState, idx: torch.Tensor, use_awp: bool, sums: torch.Tensor) -> None:
    """One optimisation step on the training samples `idx`; adds the batch's loss terms, correct
    count and |H|, each times the batch size, into `sums` (5,) without a host sync."""
    run, device = state.run, state.device
    model, train_model = state.model, state.train_model or state.model
    precision = run.train.precision
    x = to_float(state.train_x[idx], device, model)
    if run.train.augment:
        x = augment(x, crop_pad=state.pool.info.crop_pad, flip=state.pool.info.flip, generator=state.generator)
        x = layout(x, model)
    y = state.train_y[idx]
    mem = state.train_mem[idx] if state.train_mem is not None else None
    with autocast(device, precision):
        with per_sample_hooks_off(state.train_model if state.dp is not None else None):
            x_adv = generate(model, x, y, method=run.method, attack=run.attack, generator=state.generator)
        train_model.train()
        deltas = None
        if use_awp:
            deltas = state.awp.perturb(
                model,
                lambda m: awp_loss(
                    m, x, y, x_adv, method=run.method, demem=run.demem, memorization=mem, epoch=state.epoch
                ),
            )
        obj = objective(
            train_model, x, y, x_adv, method=run.method, demem=run.demem, memorization=mem, epoch=state.epoch
        )
    state.optimizer.zero_grad(set_to_none=True)
    obj.total.backward()
    if state.dp is not None:
        fp32_grad_samples(train_model)  # the clipping bound holds exactly at any precision
    state.optimizer.step()
    if deltas is not None:
        state.awp.restore(model, deltas)
    with torch.no_grad():
        k = y.shape[0]
        sums[0] = obj.total.detach() * k
        sums[1] = obj.method_loss.detach() * k
        sums[2] = obj.penalty.detach() * k
        sums[3] = (obj.logits.argmax(1) == y).sum()
        sums[4] = obj.high_risk.sum()


def _empty_dp_step(state: TrainState) -> None:
    """Step on an empty Poisson batch: zero per-sample gradients, so the update is pure noise, and
    the accountant counts the step as it must."""
    state.optimizer.zero_grad(set_to_none=True)
    for p in state.model.parameters():
        if p.requires_grad:
            p.grad_sample = torch.zeros((0, *p.shape), device=p.device, dtype=p.dtype)
    state.optimizer.step()


def epochs(state: TrainState) -> Iterator[dict[str, float]]:
    """Train the remaining epochs, yielding each epoch's metrics once it is done."""
    while not state.done:
        yield train_epoch(state)
