"""What a dataset is (DatasetInfo), what a split holds (Split), and the registry of dataset
readers with how torchvision fetches each."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demem.registry import BUILTIN, Registry

SPLITS = ("train+test", "train", "test")

# Debian's dataset-fashion-mnist package installs the four official IDX files here.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset that models, attacks and augmentation need.

    Attributes:
        name: registry name, e.g. ``"cifar10"``.
        channels: C of the (N, C, H, W) images.
        image_size: H == W in pixels.
        num_classes: labels lie in ``[0, num_classes)``.
        mean: per-channel mean of the training split, pixel values scaled to [0, 1]; used as a fixed
            normalisation constant inside the model, so attacks still work in [0, 1] pixel space.
        std: per-channel standard deviation, same convention as ``mean``.
        eps: the usual L-inf attack radius for this dataset in [0, 1] pixel units.
        crop_pad: zero padding (pixels per side) for random-crop augmentation.
        flip: whether horizontal flips preserve labels (not for digits).
        fetch_hint: the shell command a user runs to get the data.
        sizes: (train, test) samples of the published dataset: an upper bound on a pool, checked
            before any data is read (a local copy may hold fewer; the loader checks those).
    """

    name: str
    channels: int
    image_size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    eps: float
    crop_pad: int
    flip: bool
    fetch_hint: str
    sizes: tuple[int, int] = (0, 0)

    def available(self, splits: str) -> int:
        """Samples of the published `splits` ("train", "test" or "train+test")."""
        train, test = self.sizes
        return {"train": train, "test": test}.get(splits, train + test)

    def __post_init__(self) -> None:
        if self.channels < 1 or self.image_size < 1 or self.num_classes < 2:
            raise ValueError(f"dataset info: channels, image_size >= 1 and num_classes >= 2, got {self}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"dataset info {self.name!r}: mean and std need one value per channel")
        if any(s <= 0 for s in self.std) or not 0 < self.eps < 1 or self.crop_pad < 0:
            raise ValueError(f"dataset info {self.name!r}: std > 0, 0 < eps < 1, crop_pad >= 0, got {self}")


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a dataset was found; the message lists the paths tried and how to fetch it."""


class DataFileError(ValueError):
    """A dataset file that is there but is not what its reader expects (truncated, foreign, crafted).
    The message names the file. A ValueError, so every command's refusal path reports it in one line."""


@dataclass(frozen=True)
class Split:
    """One split of a dataset as loaded from disk.

    Attributes:
        images: (N, C, H, W) uint8, contiguous.
        labels: (N,) int64.
    """

    images: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"split images must be (N, C, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        if self.labels.dtype != torch.int64 or self.labels.dim() != 1:
            raise ValueError(f"split labels must be (N,) int64, got {tuple(self.labels.shape)} {self.labels.dtype}")
        if self.images.shape[0] != self.labels.shape[0]:
            raise ValueError(f"split has {self.images.shape[0]} images but {self.labels.shape[0]} labels")
        if not self.images.is_contiguous():
            raise ValueError("split images must be contiguous")

    @property
    def n(self) -> int:
        return int(self.labels.shape[0])


# A loader looks for its dataset's files in one directory and returns (train, test), or None when the
# files are not there. Bad files that are there raise ValueError instead: silently falling through to
# another copy would hide a corrupt one.
Loader = Callable[[Path], tuple[Split, Split] | None]


@dataclass(frozen=True)
class DatasetEntry:
    """What a dataset plugin registers (entry-point group ``demem.datasets``; docs/plugins.md).

    Attributes:
        info: the dataset's facts; `info.name` must be the entry point's name.
        loader: reads the dataset from one directory (the search order of `demem.data.load_splits`:
            `data.root`, then $DEMEM_DATA, then the download cache): (train, test) Splits of
            (N, C, H, W) uint8 images and (N,) int64 labels, or None when its files are not there.
        layout: the files it expects, for the not-found message.
    """

    info: DatasetInfo
    loader: Loader
    layout: str


def _plugin_dataset(obj, name: str) -> Loader:
    if not isinstance(obj, DatasetEntry):
        raise TypeError(f"a dataset entry must be a demem.data.DatasetEntry, got {type(obj).__name__}")
    if not isinstance(obj.info, DatasetInfo) or obj.info.name != name or not callable(obj.loader):
        raise ValueError(f"DatasetEntry.info must be a DatasetInfo named {name!r} and loader a callable")
    _record(obj.info, Source(obj.layout))
    return obj.loader


DATASETS: Registry[Loader] = Registry("dataset", group="demem.datasets", adapt=_plugin_dataset)


@dataclass(frozen=True)
class Source:
    """How to describe the expected files, and how torchvision fetches them.

    A dataset read from files the user names (`demem.data.arrays`) has a `path` instead: the one place
    it is read from (the search directories and ``--data-root`` do not apply), and nothing fetches it.
    """

    layout: str  # human-readable description of the expected files, for error messages
    torchvision_class: str = ""  # "": nothing to download
    torchvision_kwargs: tuple[dict, ...] = ()  # one constructor call per entry; all together fetch both splits
    path: Path | None = None


_INFO: dict[str, DatasetInfo] = {}
SOURCES: dict[str, Source] = {}


def _record(info: DatasetInfo, source: Source) -> None:
    """The facts and files of a registered dataset (a built-in, a plugin's or one from files)."""
    _INFO[info.name] = info
    SOURCES[info.name] = source


def register_source(info: DatasetInfo, source: Source, origin: str = BUILTIN) -> Callable[[Loader], Loader]:
    """Register a dataset's loader with its facts and files; `origin` as in `Registry.register`."""

    def deco(loader: Loader) -> Loader:
        DATASETS.register(info.name, origin=origin)(loader)  # first: a taken name leaves the facts as they were
        _record(info, source)
        return loader

    return deco


def dataset_info(name: str) -> DatasetInfo:
    """Return the `DatasetInfo` of a registered dataset; ValueError listing the known names otherwise."""
    DATASETS.check(name)
    return _INFO[name]


def generic_fetch_hint(name: str) -> str:
    return f"demem train --dataset {name} --download --data-root DIR"


def pixel_moments(batches: Iterable[np.ndarray], channel_axis: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) standard deviation of uint8 images, scaled to [0, 1].

    Args:
        batches: uint8 arrays of images (N, ...), all with the same channel count at `channel_axis`.
        channel_axis: 1 for (N, C, H, W), 3 for (N, H, W, C).

    Counting each of the 256 values per channel keeps the sums exact and the memory to one batch,
    however many images there are.
    """
    counts: np.ndarray | None = None
    for batch in batches:
        moved = np.moveaxis(batch, channel_axis, 0)
        if counts is None:
            counts = np.zeros((moved.shape[0], 256), dtype=np.int64)
        for c in range(moved.shape[0]):
            counts[c] += np.bincount(moved[c].reshape(-1), minlength=256)
    if counts is None or counts.sum() == 0:
        raise ValueError("pixel_moments: no pixels")
    values = np.arange(256, dtype=np.float64) / 255
    n = counts.sum(axis=1)
    mean = (counts * values).sum(axis=1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(axis=1) / n
    return tuple(float(m) for m in mean), tuple(float(s) for s in np.sqrt(var))
