"""LeNet-5 (LeCun et al. 1998) as a demem architecture: two 5x5 convolutions with 6 and 16 maps,
each followed by a normalisation layer, ReLU and 2x2 max pooling, then 120-84-K fully connected.
The first convolution pads by 2, so 28x28 inputs see the paper's 32x32 geometry; an adaptive
average pool to 5x5 lets other sizes through. `norm` "group" gives GroupNorm (DP-SGD needs it)."""

from __future__ import annotations

from torch import nn

from demem.models import make_norm


def lenet5(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    """The factory demem calls (docs/plugins.md): it gets channels, classes and the norm layer kind
    and returns a network on normalised inputs; demem wraps it to take [0, 1] pixels."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 6, 5, padding=2),
        make_norm(norm, 6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5),
        make_norm(norm, 16),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.AdaptiveAvgPool2d(5),
        nn.Flatten(),
        nn.Linear(16 * 5 * 5, 120),
        nn.ReLU(),
        nn.Linear(120, 84),
        nn.ReLU(),
        nn.Linear(84, num_classes),
    )
