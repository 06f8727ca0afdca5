"""Batched data augmentation on whatever device the batch lives on: random crop with zero padding
and horizontal flips. One gather per batch, no per-sample Python, so it runs at GPU speed and the
data never leave the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int) -> torch.Tensor:
    """Translate each image by (dy, dx) pixels, filling with zeros.

    Equivalent to zero-padding by `pad` and cropping at offset (pad + dy, pad + dx).

    Args:
        x: (B, C, H, W) images.
        dy, dx: (B,) int64 offsets in [-pad, pad].
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (dy + pad)[:, None] + torch.arange(h, device=x.device)[None, :]  # (B, H)
    cols = (dx + pad)[:, None] + torch.arange(w, device=x.device)[None, :]  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous(memory_format=torch.contiguous_format)


def augment(x: torch.Tensor, *, crop_pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding `crop_pad`) and, if `flip`, random horizontal flip with p = 0.5.

    Args:
        x: (B, C, H, W) float images.
        generator: RNG on x's device, for reproducible epochs.

    Returns:
        (B, C, H, W) augmented images.
    """
    b = x.shape[0]
    if crop_pad > 0:
        offs = torch.randint(-crop_pad, crop_pad + 1, (2, b), device=x.device, generator=generator)
        x = shift(x, offs[0], offs[1], crop_pad)
    if flip:
        coin = torch.rand(b, device=x.device, generator=generator) < 0.5
        x = torch.where(coin[:, None, None, None], x.flip(3), x)
    return x
