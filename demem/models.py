"""Image classifiers used by the experiments, behind one builder and a registry.

Every model returned by `build_model` takes pixel images in [0, 1] and does its own
normalisation (`Normalized`), so attacks can clip and project in pixel space without knowing the
dataset statistics.

Two design constraints shape the layers here:
- DP-SGD (Opacus) cannot use BatchNorm, because it mixes samples within a batch. With
  `norm="group"` every normalisation layer is a GroupNorm and no BatchNorm is left anywhere.
- Opacus computes per-sample gradients with hooks on each module, so every layer is its own module
  instance, used exactly once per forward pass, and nothing is modified in place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from demem.registry import Registry

__all__ = [
    "MAX_GROUPS",
    "MODELS",
    "NORM_LAYERS",
    "Normalized",
    "build_model",
    "count_parameters",
    "make_norm",
    "num_groups",
    "wide_resnet",
]


def _plugin_model(obj, name: str) -> Callable[..., nn.Module]:
    """A plugin's model factory: a callable `(*, in_channels, num_classes, norm) -> nn.Module`
    (docs/plugins.md); `demem.testing.check_model` checks what it builds."""
    if not callable(obj) or isinstance(obj, type) and not issubclass(obj, nn.Module):
        raise TypeError(f"a model entry must be a factory (in_channels, num_classes, norm) -> nn.Module, got {obj!r}")
    return obj


MODELS: Registry[Callable[..., nn.Module]] = Registry("model", group="demem.models", adapt=_plugin_model)
NORM_LAYERS = ("batch", "group")

# GroupNorm uses at most this many groups (Wu & He 2018 found 32 a robust default).
MAX_GROUPS = 32


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def _check_norm(norm: str) -> str:
    if norm not in NORM_LAYERS:
        raise ValueError(f"unknown norm {norm!r}; known: {', '.join(NORM_LAYERS)}")
    return norm


def num_groups(channels: int, max_groups: int = MAX_GROUPS) -> int:
    """The largest group count <= `max_groups` that divides `channels`.

    Every width in this module is a multiple of 16, so in practice this is 32 groups for wide
    layers and 16 for the 16-channel WideResNet stem.
    """
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    for groups in range(min(max_groups, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1  # unreachable: 1 divides everything


def make_norm(norm: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer over `channels` feature maps.

    Args:
        norm: "batch" for `nn.BatchNorm2d`, "group" for `nn.GroupNorm` with `num_groups(channels)`
            groups.
        channels: number of input channels C of the (B, C, H, W) activations.
    """
    if _check_norm(norm) == "batch":
        return nn.BatchNorm2d(channels)
    return nn.GroupNorm(num_groups(channels), channels)


def _conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    # No bias: every conv here is followed (directly or after the residual add) by a norm whose
    # shift makes a conv bias redundant.
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def _init_weights(model: nn.Module) -> nn.Module:
    """He (Kaiming) init for convs, identity affine for norms; Linear keeps PyTorch's default."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


class Normalized(nn.Module):
    """Wraps a network so it takes [0, 1] pixels: `net((x - mean) / std)`.

    Attributes:
        net: the wrapped network, which expects normalised inputs.
        mean, std: buffers of shape (1, C, 1, 1); buffers (not parameters) so they follow
            `.to(device)`, are saved in the state dict, and receive no gradient.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], net: nn.Module) -> None:
        super().__init__()
        if len(mean) != len(std) or len(mean) == 0:
            raise ValueError(f"mean and std need one value per channel; got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be > 0, got {tuple(std)}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) pixels in [0, 1]. Returns the net's output, e.g. logits (B, K)."""
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        mean, std = self.mean.flatten().tolist(), self.std.flatten().tolist()
        return f"mean={tuple(mean)}, std={tuple(std)}"


class _Head(nn.Module):
    """Global average pool + linear classifier: (B, C, H, W) -> (B, K)."""

    def __init__(self, channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


# --------------------------------------------------------------------------------------------
# Small CNN
# --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """A four-conv network for fast CPU experiments (about 0.1 M parameters).

    Two stages of [conv3x3 - norm - relu] x 2 + 2x2 max-pool (32 then 64 channels), adaptive average
    pooling to a 2x2 grid (so any input size works and a little spatial layout survives), then
    linear(256 -> 128) - relu - linear(128 -> K). No dropout, so adversarial-training gradients are
    deterministic given the inputs.
    """

    def __init__(self, in_channels: int, num_classes: int, norm: str, width: int = 32) -> None:
        super().__init__()
        w1, w2 = width, 2 * width
        self.features = nn.Sequential(
            _conv3x3(in_channels, w1), make_norm(norm, w1), nn.ReLU(),
            _conv3x3(w1, w1), make_norm(norm, w1), nn.ReLU(),
            nn.MaxPool2d(2),
            _conv3x3(w1, w2), make_norm(norm, w2), nn.ReLU(),
            _conv3x3(w2, w2), make_norm(norm, w2), nn.ReLU(),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(2),
        )  # fmt: skip
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(w2 * 4, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised images. Returns logits (B, K)."""
        return self.classifier(self.features(x))


# --------------------------------------------------------------------------------------------
# ResNet-18 (He et al. 2016) and pre-activation ResNet-18 (He et al. 2016, identity mappings)
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """Post-activation residual block: relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.norm1 = make_norm(norm, out_ch)
        self.relu1 = nn.ReLU()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.norm2 = make_norm(norm, out_ch)
        self.relu2 = nn.ReLU()
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(_conv1x1(in_ch, out_ch, stride), make_norm(norm, out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W). Returns (B, out_ch, H / stride, W / stride)."""
        out = self.relu1(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """Pre-activation residual block: conv(relu(norm(conv(relu(norm(x)))))) + shortcut.

    When the shape changes, the 1x1 projection shortcut reads the pre-activated input (as in He et
    al.'s identity-mappings code and Zagoruyko & Komodakis' WRN); otherwise the shortcut is x
    itself, untouched, which is the point of the design.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = make_norm(norm, in_ch)
        self.relu1 = nn.ReLU()
        self.conv1 = _conv3x3(in_ch, out_ch, stride)
        self.norm2 = make_norm(norm, out_ch)
        self.relu2 = nn.ReLU()
        self.dropout: nn.Module = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = _conv3x3(out_ch, out_ch)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.shortcut = _conv1x1(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, in_ch, H, W). Returns (B, out_ch, H / stride, W / stride)."""
        pre = self.relu1(self.norm1(x))
        skip = x if self.shortcut is None else self.shortcut(pre)
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu2(self.norm2(out))))
        return out + skip


def _stage(block: Callable[..., nn.Module], in_ch: int, out_ch: int, n: int, stride: int, **kw) -> nn.Sequential:
    """`n` blocks; only the first changes width and resolution."""
    blocks = [block(in_ch, out_ch, stride, **kw)]
    blocks += [block(out_ch, out_ch, 1, **kw) for _ in range(n - 1)]
    return nn.Sequential(*blocks)


# ResNet-18 on CIFAR: four stages of two blocks, widths doubling as resolution halves.
_RESNET18_BLOCKS = (2, 2, 2, 2)
_RESNET18_WIDTHS = (64, 128, 256, 512)
_RESNET18_STRIDES = (1, 2, 2, 2)


class ResNet(nn.Module):
    """ResNet with the CIFAR stem: a stride-1 3x3 conv and no max-pool, so 28-32 px inputs keep
    enough resolution for four stages (32 -> 32, 16, 8, 4).

    With `preact=True` the blocks are pre-activation blocks, the stem is a bare conv (the first
    block normalises it) and a final norm + relu precedes pooling, as in He et al.'s
    identity-mappings network; otherwise the stem is conv - norm - relu and blocks are post-act.
    """

    def __init__(self, in_channels: int, num_classes: int, norm: str, preact: bool) -> None:
        super().__init__()
        w0 = _RESNET18_WIDTHS[0]
        if preact:
            self.stem: nn.Module = _conv3x3(in_channels, w0)
        else:
            self.stem = nn.Sequential(_conv3x3(in_channels, w0), make_norm(norm, w0), nn.ReLU())
        block = PreActBlock if preact else BasicBlock
        stages, in_ch = [], w0
        for n, width, stride in zip(_RESNET18_BLOCKS, _RESNET18_WIDTHS, _RESNET18_STRIDES):
            stages.append(_stage(block, in_ch, width, n, stride, norm=norm))
            in_ch = width
        self.stages = nn.Sequential(*stages)
        # Pre-activation blocks end on a raw residual sum; it needs one last norm + relu.
        self.final: nn.Module = nn.Sequential(make_norm(norm, in_ch), nn.ReLU()) if preact else nn.Identity()
        self.head = _Head(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised images. Returns logits (B, K)."""
        return self.head(self.final(self.stages(self.stem(x))))


# --------------------------------------------------------------------------------------------
# WideResNet (Zagoruyko & Komodakis 2016)
# --------------------------------------------------------------------------------------------


class WideResNet(nn.Module):
    """WRN-depth-widen: a 16-channel 3x3 stem, three stages of pre-activation wide blocks with
    widths (16, 32, 64) x widen at strides (1, 2, 2), then norm - relu - pool - linear.
    """

    def __init__(
        self,
        depth: int,
        widen: int,
        *,
        in_channels: int,
        num_classes: int,
        norm: str,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        n = _wrn_blocks_per_stage(depth)
        if widen < 1:
            raise ValueError(f"WideResNet widen factor must be >= 1, got {widen}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"WideResNet dropout must be in [0, 1), got {dropout}")
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.stem = _conv3x3(in_channels, widths[0])
        self.stages = nn.Sequential(
            *(
                _stage(
                    PreActBlock,
                    widths[i],
                    widths[i + 1],
                    n,
                    stride,
                    norm=norm,
                    dropout=dropout,
                )
                for i, stride in enumerate((1, 2, 2))
            )
        )
        self.final = nn.Sequential(make_norm(norm, widths[-1]), nn.ReLU())
        self.head = _Head(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) normalised images. Returns logits (B, K)."""
        return self.head(self.final(self.stages(self.stem(x))))


def _wrn_blocks_per_stage(depth: int) -> int:
    """Blocks per stage n for a WRN of `depth` = 6n + 4 (the paper's convention)."""
    if depth < 10 or (depth - 4) % 6 != 0:
        raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, 34, ...), got {depth}")
    return (depth - 4) // 6


def wide_resnet(
    depth: int,
    widen: int,
    *,
    in_channels: int,
    num_classes: int,
    norm: str = "batch",
    dropout: float = 0.0,
) -> nn.Module:
    """Build an (un-normalised) WRN-`depth`-`widen`.

    Args:
        depth: total depth, 6n + 4 for n blocks per stage; anything else raises ValueError.
        widen: width multiplier k (stage widths 16k, 32k, 64k).
        in_channels, num_classes: input channels C and number of logits K.
        norm: one of `NORM_LAYERS`.
        dropout: dropout probability between the two convs of each block; 0 (default) adds none.

    Returns:
        A module mapping normalised images (B, C, H, W) to logits (B, K).
    """
    _check_norm(norm)
    net = WideResNet(
        depth,
        widen,
        in_channels=in_channels,
        num_classes=num_classes,
        norm=norm,
        dropout=dropout,
    )
    return _init_weights(net)


# --------------------------------------------------------------------------------------------
# Registry and the front door
# --------------------------------------------------------------------------------------------
# Each entry maps (in_channels, num_classes, norm) to an un-normalised net; build_model wraps it.


@MODELS.register("small-cnn")
def _small_cnn(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    return _init_weights(SmallCNN(in_channels, num_classes, norm))


@MODELS.register("resnet18")
def _resnet18(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    return _init_weights(ResNet(in_channels, num_classes, norm, preact=False))


@MODELS.register("preact-resnet18")
def _preact_resnet18(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    return _init_weights(ResNet(in_channels, num_classes, norm, preact=True))


@MODELS.register("wrn-34-10")
def _wrn_34_10(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    return wide_resnet(34, 10, in_channels=in_channels, num_classes=num_classes, norm=norm)


@MODELS.register("wrn-28-10")
def _wrn_28_10(*, in_channels: int, num_classes: int, norm: str) -> nn.Module:
    return wide_resnet(28, 10, in_channels=in_channels, num_classes=num_classes, norm=norm)


def build_model(
    arch: str,
    *,
    in_channels: int,
    num_classes: int,
    image_size: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    norm: str = "batch",
) -> nn.Module:
    """Build a registered classifier that takes [0, 1] pixels.

    Args:
        arch: a name in `MODELS` ("small-cnn", "resnet18", "preact-resnet18", "wrn-34-10",
            "wrn-28-10").
        in_channels: image channels C (1 for Fashion-MNIST, 3 for CIFAR).
        num_classes: number of logits K.
        image_size: side length of the square inputs. Every architecture ends in adaptive average
            pooling, so any size works; it is validated here so a bad dataset spec fails early.
        mean, std: per-channel dataset statistics, length C; std must be > 0.
        norm: "batch" or "group" (GroupNorm, for DP-SGD; the model then has no BatchNorm).

    Returns:
        `Normalized(mean, std, net)`: maps (B, C, H, W) pixels in [0, 1] to logits (B, K). The
        inner network is `.net`.

    Raises:
        ValueError: unknown arch or norm (listing the known ones), non-positive sizes, or
            mean/std of the wrong length.
    """
    factory = MODELS.get(arch)
    _check_norm(norm)
    for key, value in (
        ("in_channels", in_channels),
        ("num_classes", num_classes),
        ("image_size", image_size),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"{key} must be a positive int, got {value!r}")
    if len(mean) != in_channels or len(std) != in_channels:
        raise ValueError(f"mean and std need in_channels={in_channels} values each, got {len(mean)} and {len(std)}")
    net = factory(in_channels=in_channels, num_classes=num_classes, norm=norm)
    return Normalized(mean, std, net)


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable, by default) parameter elements in `model`."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
