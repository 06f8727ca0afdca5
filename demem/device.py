"""The data fast path's one owner: which device, which precision, which memory layout.

A run's precision (`train.precision`, resolved by `resolve_precision`) is "fp32" or "bf16". With
"bf16", the training step's forward and backward passes (and the evaluation's attacks) run under
bf16 autocast, and the model is laid out channels_last (except a GroupNorm model on the CPU:
`wants_channels_last`), the images following the model's layout; on CUDA, cuDNN also
autotunes its kernels for the fixed shapes of a run (only while `autotune` is active: nothing is
left set for the rest of the process). "auto" is bf16 where the hardware computes it natively
(CUDA with bf16 support; a CPU with AVX512-BF16 or AMX tiles, by torch's own query) and fp32
elsewhere (a CPU without them would emulate bf16, slower than fp32).
What stays fp32 whatever the precision: the membership signals' logits (phi needs the precision),
the held-out evaluation's final logits, TRADES's KL attack (`demem.evasion.kl_attack`), and the
per-sample gradients DP-SGD clips (`demem.dp.fp32_grad_samples`).

`precision=None` in the functions below is "auto" resolved for the tensor's device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")


def native_bf16(device: torch.device | str) -> bool:
    """Whether `device` computes bf16 natively: CUDA's `is_bf16_supported`; on the CPU, torch's
    capability queries for AVX512-BF16 or AMX tiles (CPUs without either emulate bf16, slower
    than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        queries = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        return any(bool(getattr(torch.cpu, q, lambda: False)()) for q in queries)
    return False


def resolve_precision(precision: str, device: torch.device | str) -> str:
    """ "fp32" or "bf16": `precision` itself, or for "auto" bf16 where `device` has native bf16."""
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return precision


def default_device() -> str:
    """Where a run resolves "auto" when nothing says where it will train: CUDA if present, else CPU
    (`resolve_device("auto")`'s choice)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fast(device: torch.device, precision: str | None) -> bool:
    return resolve_precision(precision or "auto", device) == "bf16"


def resolve_device(name: str = "auto") -> torch.device:
    """ "auto" is CUDA when present, else the CPU; a CUDA device asked for where none exists is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but CUDA is not available here")
    return dev


def autocast(device: torch.device, precision: str | None = None) -> contextlib.AbstractContextManager:
    """bf16 autocast where the precision is bf16; nothing for fp32."""
    if _fast(device, precision):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def autotune(device: torch.device) -> Iterator[None]:
    """cuDNN autotuning on CUDA while the block runs (fixed input shapes: let cuDNN pick its fastest
    kernels), restored on exit; nothing on the CPU."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def fast_path(device: torch.device, precision: str | None = None) -> Iterator[None]:
    """`autotune` and `autocast` together, for blocks of forward passes (the evaluation's attacks)."""
    with autotune(device), autocast(device, precision):
        yield


def wants_channels_last(model: nn.Module, device: torch.device, precision: str | None = None) -> bool:
    """Whether `model` trains channels_last on `device`: with bf16, except a model with GroupNorm on
    the CPU, whose channels_last kernels there are slower than fp32 (a PGD-AT epoch of the small CNN
    with GroupNorm on a 2-core EPYC: bf16 1.4-2.2x fp32's samples/s in the default layout, 0.3-0.5x
    channels_last; `benchmarks/bench_train.py --table --norm group`). Measured on the CPU only, so
    CUDA keeps channels_last for every model."""
    if not _fast(device, precision):
        return False
    return device.type != "cpu" or not any(isinstance(m, nn.GroupNorm) for m in model.modules())


def is_channels_last(model: nn.Module) -> bool:
    """Whether `model`'s convolutions are laid out channels_last (`place_model` chose it)."""
    cl = torch.channels_last
    return any(p.dim() == 4 and p.is_contiguous(memory_format=cl) and not p.is_contiguous() for p in model.parameters())


def layout(x: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """(B, C, H, W) images in `model`'s memory layout (channels_last where `place_model` chose it)."""
    return x.contiguous(memory_format=torch.channels_last) if is_channels_last(model) else x


def to_float(images: torch.Tensor, device: torch.device, model: nn.Module) -> torch.Tensor:
    """(B, C, H, W) uint8 images -> float pixels in [0, 1] on `device`, in `model`'s layout."""
    return layout(images.to(device, non_blocking=True).float().div_(255), model)


def place_model(model: nn.Module, device: torch.device, precision: str | None = None) -> nn.Module:
    """Move `model` to `device`, channels_last where `wants_channels_last` says so; the inputs follow
    the model (`layout`, `to_float`)."""
    model = model.to(device)
    if wants_channels_last(model, device, precision):
        return model.to(memory_format=torch.channels_last)
    return model
