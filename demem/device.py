"""The data fast path's one owner: which device, which precision, which memory layout.

A run's precision (`train.precision`, resolved by `resolve_precision`) is "fp32" or "bf16". With
"bf16", images are laid out channels_last like the model and the training step's forward and
backward passes (and the evaluation's attacks) run under bf16 autocast; on CUDA, cuDNN also
autotunes its kernels for the fixed shapes of a run (only while `autotune` is active: nothing is
left set for the rest of the process). "auto" is bf16 where the hardware computes it natively
(CUDA with bf16 support; a CPU with AVX512-BF16 or AMX, by torch's own query, once CPU_AUTO_BF16
is on) and fp32 elsewhere.
What stays fp32 whatever the precision: the membership signals' logits (phi needs the precision),
the held-out evaluation's final logits, and TRADES's KL attack (`demem.evasion.kl_attack`).

`precision=None` in the functions below is the device's default: bf16 on CUDA, fp32 on the CPU.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

PRECISIONS = ("auto", "fp32", "bf16")
# Whether "auto" takes bf16 on a CPU with native bf16. Off until the comparison of fp32 and bf16 at the
# quickstart's recipe (accuracy and leakage against the seed-to-seed band) is in: issue 25's evidence.
# Until then "auto" is bf16 on CUDA only, as before, and `train.precision: bf16` asks for it on a CPU.
CPU_AUTO_BF16 = False


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
        device = torch.device(device)
        allowed = device.type == "cuda" or CPU_AUTO_BF16
        return "bf16" if allowed and native_bf16(device) else "fp32"
    return precision


def default_device() -> str:
    """Where a run resolves "auto" when nothing says where it will train: CUDA if present, else CPU
    (`resolve_device("auto")`'s choice)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def _fast(device: torch.device, precision: str | None) -> bool:
    if precision is None:
        return device.type == "cuda"
    return precision == "bf16"


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


def layout(x: torch.Tensor, precision: str | None = None) -> torch.Tensor:
    """(B, C, H, W) images in the model's memory layout: channels_last with bf16."""
    return x.contiguous(memory_format=torch.channels_last) if _fast(x.device, precision) else x


def to_float(images: torch.Tensor, device: torch.device, precision: str | None = None) -> torch.Tensor:
    """(B, C, H, W) uint8 images -> float pixels in [0, 1] on `device`, in the model's layout."""
    return layout(images.to(device, non_blocking=True).float().div_(255), precision)


def place_model(model: nn.Module, device: torch.device, precision: str | None = None) -> nn.Module:
    """Move `model` to `device`, channels_last with bf16 to match `layout`."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if _fast(device, precision) else model
