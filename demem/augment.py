"""Batched data augmentation on whatever device the batch lives on: random crop with zero padding
and horizontal flips, done together as one gather per batch with no per-sample Python, so it runs at
GPU speed and the data never leave the device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def shift(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, flip: torch.Tensor | None = None
) -> torch.Tensor:
    """Translate each image by (dy, dx) pixels, filling with zeros, then mirror it where `flip`.

    Equivalent to zero-padding by `pad`, cropping at offset (pad + dy, pad + dx) and flipping the
    crop horizontally for the samples with flip == True.

    Args:
        x: (B, C, H, W) images.
        dy, dx: (B,) int64 offsets in [-pad, pad].
        flip: (B,) bool, or None for no flips.
    """
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad)) if pad else x
    ar_h = torch.arange(h, device=x.device)
    ar_w = torch.arange(w, device=x.device)
    rows = (dy + pad)[:, None] + ar_h[None, :]  # (B, H)
    cols = ar_w.expand(b, w)
    if flip is not None:  # mirrored output column j reads column W - 1 - j of the crop
        cols = torch.where(flip[:, None], (w - 1 - ar_w).expand(b, w), cols)
    cols = (dx + pad)[:, None] + cols  # (B, W)
    bidx = torch.arange(b, device=x.device)[:, None, None]
    out = padded.permute(0, 2, 3, 1)[bidx, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def augment(x: torch.Tensor, *, crop_pad: int, flip: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop (zero padding `crop_pad`) and, if `flip`, random horizontal flip with p = 0.5.

    Args:
        x: (B, C, H, W) float images.
        generator: RNG on x's device, for reproducible epochs.

    Returns:
        (B, C, H, W) augmented images.
    """
    b = x.shape[0]
    if crop_pad == 0 and not flip:
        return x
    offs = torch.randint(-crop_pad, crop_pad + 1, (2, b), device=x.device, generator=generator)
    coin = torch.rand(b, device=x.device, generator=generator) < 0.5 if flip else None
    return shift(x, offs[0], offs[1], crop_pad, coin)
