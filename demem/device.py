"""The data fast path's one owner: which device, which precision, which memory layout.

On CUDA, images are converted from uint8 on the device, laid out channels_last like the model, the
forward and backward passes run under bf16 autocast, and cuDNN autotunes its kernels for the fixed
shapes of a run (only while `fast_path` is active: nothing is left set for the rest of the process).
On the CPU each of these is a no-op: CPU bf16 would be slower and less exact. `CPU_FAST_PATH = True`
runs the CUDA path's precision and layout (bf16 autocast, channels_last) on the CPU, where both
exist: that is how the tests check, without a GPU, that the fast path does not change results
beyond noise.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

CPU_FAST_PATH = False  # tests: bf16 autocast and channels_last on the CPU too


def _fast(device: torch.device) -> bool:
    return device.type == "cuda" or (CPU_FAST_PATH and device.type == "cpu")


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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (and on the CPU with CPU_FAST_PATH); nothing elsewhere."""
    if _fast(device):
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
def fast_path(device: torch.device) -> Iterator[None]:
    """`autotune` and `autocast` together, for blocks of forward passes (evaluation, signals)."""
    with autotune(device), autocast(device):
        yield


def layout(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images in the model's memory layout: channels_last on CUDA."""
    return x.contiguous(memory_format=torch.channels_last) if _fast(x.device) else x


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """(B, C, H, W) uint8 images -> float pixels in [0, 1] on `device`, in the model's layout."""
    return layout(images.to(device, non_blocking=True).float().div_(255))


def place_model(model: nn.Module, device: torch.device) -> nn.Module:
    """Move `model` to `device`, channels_last on CUDA to match `layout`."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if _fast(device) else model
