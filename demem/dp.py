"""Differentially private training through Opacus: DP-SGD, DP + PGD-AT, DP + TRADES.

`make_private` hands the model, the SGD optimizer and a loader over training-set *indices* to
Opacus's `PrivacyEngine`. Opacus then owns everything that privacy depends on: Poisson sampling of
each batch (its `DPDataLoader`), per-sample gradients (`GradSampleModule` hooks), clipping and noise
(`DPOptimizer`), and the accountant. We only turn the sampled indices into images already resident
on the device, so DP keeps the fast data path.

Notes on what the guarantee covers:
- Adversarial examples are computed from each sample alone, so DP + PGD-AT / TRADES clip and noise
  per-sample gradients of per-sample losses, and the accounting holds as for DP-SGD.
- The DeMem penalty couples the samples of a batch through the batch mean of the losses, so with
  DeMem on, a sample also moves other rows' gradients; per-row clipping then bounds each row, not
  each sample's total influence. Such runs are labelled `dp+demem` and their epsilon is the
  accountant's figure for the DP part alone.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

ACCOUNTANTS = ("prv", "rdp", "gdp")


@dataclass(frozen=True)
class DPConfig:
    """DP-SGD settings (used by the dp_* methods).

    Attributes:
        noise_multiplier: Gaussian noise std relative to max_grad_norm. Give this or target_epsilon.
        target_epsilon: spend at most this epsilon over the run; Opacus picks the noise.
        max_grad_norm: per-sample gradient clipping norm C.
        delta: None means 1 / N_train rounded down to a power of ten.
        accountant: Opacus accountant: "prv" (Opacus's default), "rdp" or "gdp".
    """

    noise_multiplier: float | None = None
    target_epsilon: float | None = None
    max_grad_norm: float = 1.0
    delta: float | None = None
    accountant: str = "prv"

    def __post_init__(self) -> None:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("dp: give dp.noise_multiplier or dp.target_epsilon, not both")
        if self.noise_multiplier is not None and not self.noise_multiplier >= 0:
            raise ValueError(f"dp.noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ValueError(f"dp.target_epsilon must be > 0, got {self.target_epsilon}")
        if not self.max_grad_norm > 0:
            raise ValueError(f"dp.max_grad_norm must be > 0, got {self.max_grad_norm}")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError(f"dp.delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"dp.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")

    @property
    def given(self) -> bool:
        return self.noise_multiplier is not None or self.target_epsilon is not None


def default_delta(n_train: int) -> float:
    """1 / N_train rounded down to a power of ten (e.g. 2,000 samples -> 1e-4)."""
    return 10.0 ** math.floor(math.log10(1.0 / n_train))


def check_compatible(model: nn.Module) -> None:
    """Raise ValueError when Opacus cannot compute per-sample gradients for `model`."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        lines = "; ".join(str(e) for e in errors[:5])
        raise ValueError(
            f"this model cannot be trained with DP-SGD: {lines}. BatchNorm mixes the samples of a "
            "batch; use train.norm 'group' (GroupNorm)"
        )


@dataclass
class DPRuntime:
    """What a DP run carries besides the model: Opacus's engine and loader, plus our noise RNG."""

    engine: Any  # opacus.PrivacyEngine
    loader: torch.utils.data.DataLoader  # Poisson-sampling DPDataLoader over indices
    sample_generator: torch.Generator  # CPU RNG of the Poisson sampler
    noise_generator: torch.Generator  # RNG of the Gaussian noise, on the model's device
    noise_multiplier: float
    delta: float
    sample_rate: float

    def epsilon(self) -> float:
        """Epsilon spent so far at `delta` (0 before the first step)."""
        if not self.engine.accountant.history:
            return 0.0
        return float(self.engine.accountant.get_epsilon(delta=self.delta))

    def state_dict(self) -> dict[str, Any]:
        return {
            "accountant": self.engine.accountant.state_dict(),
            "sample_generator": self.sample_generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        self.engine.accountant.load_state_dict(sd["accountant"])
        self.sample_generator.set_state(sd["sample_generator"].cpu())
        self.noise_generator.set_state(sd["noise_generator"].cpu())


@contextlib.contextmanager
def per_sample_hooks_off(module: nn.Module | None):
    """Pause Opacus's per-sample-gradient hooks (if `module` is its wrapper) while the wrapped network
    is used for something else: attacks and evaluation backpropagate to the input, not to a step."""
    if module is None or not hasattr(module, "disable_hooks"):
        yield
        return
    module.disable_hooks()
    try:
        yield
    finally:
        module.enable_hooks()


def fp32_grad_samples(module: nn.Module) -> None:
    """Per-sample gradients of `module`'s parameters in the parameters' own dtype (fp32), in place,
    before the DP optimizer clips them. Under bf16 autocast Opacus records them in bf16 and takes
    the clipping norms in bf16: a norm rounded down by up to 2^-9 lets a clipped gradient exceed
    max_grad_norm, and the accountant's sensitivity with it. Cast here, every clipped gradient's
    norm is at most max_grad_norm (to fp32 rounding); its value still comes from the bf16 passes."""
    for p in module.parameters():
        gs = getattr(p, "grad_sample", None)
        if isinstance(gs, torch.Tensor) and gs.dtype != p.dtype:
            p.grad_sample = gs.to(p.dtype)
        elif isinstance(gs, list):
            p.grad_sample = [g.to(p.dtype) for g in gs]


@contextlib.contextmanager
def quiet_hook_warnings():
    """While the block runs, hide torch's note that Opacus's full backward hooks fire although the
    images need no gradient: expected in every DP step. Other warnings, and other code, are untouched."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        yield


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    n_train: int,
    batch_size: int,
    epochs: int,
    cfg: DPConfig,
    seed: int,
    device: torch.device,
) -> tuple[nn.Module, torch.optim.Optimizer, DPRuntime]:
    """Wrap model and optimizer for DP-SGD with Poisson sampling of rate batch_size / n_train.

    Returns:
        (GradSampleModule to train through, DPOptimizer, DPRuntime). Use the original `model`, not
        the wrapper, for attacks and evaluation: forward passes through the wrapper record
        activations for per-sample gradients.
    """
    from opacus import PrivacyEngine
    from opacus.accountants.utils import get_noise_multiplier
    from torch.utils.data import DataLoader, TensorDataset

    check_compatible(model)
    delta = cfg.delta if cfg.delta is not None else default_delta(n_train)
    sample_gen = torch.Generator().manual_seed(seed)
    noise_gen = torch.Generator(device=device)
    noise_gen.manual_seed(seed + 1)
    index_loader = DataLoader(TensorDataset(torch.arange(n_train)), batch_size=batch_size, generator=sample_gen)
    sample_rate = 1 / len(index_loader)  # what Opacus's DPDataLoader uses
    sigma = cfg.noise_multiplier
    if sigma is None:
        sigma = get_noise_multiplier(
            target_epsilon=cfg.target_epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            epochs=epochs,
            accountant=cfg.accountant,
        )
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off; we seed the generators on purpose for reproducibility.
        warnings.simplefilter("ignore", UserWarning)
        engine = PrivacyEngine(accountant=cfg.accountant)
        gsm, dp_opt, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=index_loader,
            noise_multiplier=sigma,
            max_grad_norm=cfg.max_grad_norm,
            poisson_sampling=True,
            noise_generator=noise_gen,
        )
    return (
        gsm,
        dp_opt,
        DPRuntime(
            engine=engine,
            loader=loader,
            sample_generator=sample_gen,
            noise_generator=noise_gen,
            noise_multiplier=float(sigma),
            delta=delta,
            sample_rate=sample_rate,
        ),
    )
