"""Datasets from files the user names: image arrays in an `.npz`, or image folders (``data.files``).

    data:
      dataset: my-xrays                 # the name results are labelled with
      files: {format: npz, path: /data/xrays.npz, eps: 0.0314, flip: false}

`register_files(name, files)` registers such a dataset under `name` in the one dataset registry, so
`dataset_info`, `load_splits`, `make_pool` and `locate` treat it like a built-in one. What the data
can tell (channels, image size, classes, split sizes, the train split's mean and std) is read from
the file, once per process; what it cannot (the attack radius, whether flips keep the label) comes
from the config. Nothing a user hands us runs code: no pickles, sizes checked against each header
before any data is read, and the only file written is the decoded cache of an image folder.

npz keys: ``x_train, y_train, x_test, y_test`` (two splits) or ``x, y`` (one split: every sample is a
training sample, the test split is empty). Images uint8 (N, H, W, C) or (N, C, H, W) with H == W;
labels 1-D integers in ``[0, classes)``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demem.checks import is_int, is_number
from demem.data import folders, npz
from demem.data.sources import (
    DATASETS,
    DataFileError,
    DatasetInfo,
    Source,
    Split,
    dataset_info,
    pixel_moments,
    register_source,
)
from demem.registry import NAME

FORMATS = ("npz", "folder")
LAYOUTS = ("auto", "NHWC", "NCHW")
MAX_PIXEL_BYTES = 16 << 30  # images of both splits together, as uint8
MAX_SAMPLES = 50_000_000
MAX_CHANNELS = 64
MAX_IMAGE_SIZE = 4096
_TWO = ("x_train", "y_train", "x_test", "y_test")
_ONE = ("x", "y")
_EXPECTED = "x_train, y_train, x_test, y_test (two splits) or x, y (one split)"


@dataclass(frozen=True)
class FilesConfig:
    """A dataset read from files (``data.files``); the facts the data cannot tell come from here.

    Attributes:
        format: "npz" (image arrays) or "folder" (one folder per class).
        path: the npz file, or the folder root; made absolute (against the working directory) here,
            so a config that travels to another process still names the same file.
        eps: the L-inf attack radius in [0, 1] pixel units (e.g. 8/255 = 0.0314 for natural images).
        flip: whether horizontal flips keep the label.
        crop_pad: random-crop padding in pixels; None: image_size // 8.
        image_size: folder: the square size every image is resized to (required); npz: checked if given.
        channels: folder: 1 (grey) or 3 (RGB, the default); npz: read from the file, checked if given.
        classes: labels must lie in [0, classes); None: the number of class folders, or max label + 1.
        layout: npz only: "NHWC", "NCHW", or "auto" (the axis of size 1 or 3 among axes 1 and 3).
    """

    format: str | None = None
    path: str | None = None
    eps: float | None = None
    flip: bool = False
    crop_pad: int | None = None
    image_size: int | None = None
    channels: int | None = None
    classes: int | None = None
    layout: str = "auto"

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.files.format must be one of {FORMATS}, got {self.format!r}")
        if not isinstance(self.path, str) or not self.path.strip():
            raise ValueError(f"data.files.path must be the {self.format} file's path, got {self.path!r}")
        if self.eps is None:
            raise ValueError("data.files.eps is required: the attack radius in [0, 1] pixel units (e.g. 0.0314)")
        if not is_number(self.eps, finite=True) or not 0 < self.eps < 1:
            raise ValueError(f"data.files.eps must be in (0, 1), got {self.eps!r}")
        if not isinstance(self.flip, bool):
            raise ValueError(f"data.files.flip must be true or false, got {self.flip!r}")
        for key, lo, hi in (
            ("crop_pad", 0, MAX_IMAGE_SIZE),
            ("image_size", 1, MAX_IMAGE_SIZE),
            ("channels", 1, MAX_CHANNELS),
            ("classes", 2, folders.MAX_CLASSES),
        ):
            value = getattr(self, key)
            if value is not None and (not is_int(value) or not lo <= value <= hi):
                raise ValueError(f"data.files.{key} must be an integer in [{lo}, {hi}] or null, got {value!r}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"data.files.layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.format == "folder":
            if self.image_size is None:
                raise ValueError(
                    "data.files.image_size is required for an image folder: the size images are resized to"
                )
            if self.channels not in (None, 1, 3):
                raise ValueError(
                    f"data.files.channels must be 1 (grey) or 3 (RGB) for an image folder, got {self.channels}"
                )
            if self.layout != "auto":
                raise ValueError("data.files.layout is for npz files only")
        object.__setattr__(self, "path", os.path.abspath(os.path.expanduser(self.path)))


def check_name(name: object) -> str:
    """`name` if it can label a dataset from files, else a ValueError saying what a name may be."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ValueError(
            f"data.dataset must name a dataset from files with letters, digits, '.', '_' or '-' (at most 64, "
            f"starting with a letter or digit; no path), got {name!r}"
        )
    return name


@dataclass(frozen=True)
class _Facts:
    """What registration learnt from the file, and how to read it."""

    info: DatasetInfo
    file: Path  # the npz read: the user's, or an image folder's decoded cache
    channel_axis: int  # 3 for NHWC, 1 for NCHW
    keys: tuple[str, ...]  # (x_train, y_train, x_test, y_test) members; x_test "" for one split


def _layout(path: Path, shape: tuple[int, ...], layout: str) -> int:
    """The channel axis of (N, a, b, c) images: 3 for NHWC, 1 for NCHW."""
    if len(shape) != 4:
        raise DataFileError(f"{path}: images must be (N, H, W, C) or (N, C, H, W), got shape {shape}")
    if layout != "auto":
        return 3 if layout == "NHWC" else 1
    fits = [axis for axis in (3, 1) if shape[axis] in (1, 3) and shape[4 - axis] == shape[2]]
    if len(fits) == 1:
        return fits[0]
    if not fits:
        raise DataFileError(
            f"{path}: images of shape {shape} are neither (N, H, W, C) nor (N, C, H, W) with C of 1 or 3 and "
            "H == W; set data.files.layout (NHWC or NCHW) if C is something else"
        )
    raise DataFileError(f"{path}: images of shape {shape} could be NHWC or NCHW; set data.files.layout")


def _npz_facts(name: str, files: FilesConfig, path: Path, given: Path) -> _Facts:
    extra = {"classes", "mean", "std"} if files.format == "folder" else set()
    members = npz.members(path, allowed={*_TWO, *_ONE, *extra}, max_bytes=MAX_PIXEL_BYTES + 16 * MAX_SAMPLES)
    arrays = set(members) - extra
    if arrays == set(_TWO):
        keys = _TWO
    elif arrays == set(_ONE):
        keys = ("x", "y", "", "")
    else:
        raise DataFileError(f"{path}: holds arrays {sorted(arrays)}; expected {_EXPECTED}")
    xs = [members[k] for k in keys[0::2] if k]
    ys = [members[k] for k in keys[1::2] if k]
    for x in xs:
        if x.dtype != np.uint8:
            raise DataFileError(f"{path}: images '{x.key}' must be uint8 (0..255), got {x.dtype}")
        if x.fortran:
            raise DataFileError(f"{path}: images '{x.key}' are in Fortran order; save np.ascontiguousarray(x)")
    axis = _layout(path, xs[0].shape, files.layout)
    sample = tuple(d for i, d in enumerate(xs[0].shape[1:], 1) if i != axis)
    channels = xs[0].shape[axis]
    for x, y in zip(xs, ys):
        if x.shape[1:] != xs[0].shape[1:]:
            raise DataFileError(f"{path}: '{x.key}' images are {x.shape[1:]}, '{xs[0].key}' are {xs[0].shape[1:]}")
        if y.dtype.kind not in "iu" or len(y.shape) != 1:
            raise DataFileError(f"{path}: labels '{y.key}' must be 1-D integers, got {y.shape} {y.dtype}")
        if y.shape[0] != x.shape[0]:
            raise DataFileError(f"{path}: {x.shape[0]} images in '{x.key}' but {y.shape[0]} labels in '{y.key}'")
    if sample[0] != sample[1]:
        raise DataFileError(f"{path}: images must be square (H == W), got H={sample[0]}, W={sample[1]}")
    if not 1 <= channels <= MAX_CHANNELS or sample[0] > MAX_IMAGE_SIZE:
        raise DataFileError(
            f"{path}: {channels} channels of {sample[0]} pixels; at most {MAX_CHANNELS} and {MAX_IMAGE_SIZE}"
        )
    sizes = (xs[0].shape[0], xs[1].shape[0] if len(xs) > 1 else 0)
    if sizes[0] == 0 or sum(sizes) > MAX_SAMPLES or sum(x.nbytes for x in xs) > MAX_PIXEL_BYTES:
        raise DataFileError(
            f"{path}: {sizes} samples; expected 1 to {MAX_SAMPLES} training samples and at most "
            f"{MAX_PIXEL_BYTES} bytes of images"
        )
    for key, want, got in (("image_size", files.image_size, sample[0]), ("channels", files.channels, channels)):
        if want is not None and want != got:
            raise DataFileError(f"{path}: images have {key} {got}, but data.files.{key} is {want}")

    labels = [npz.read(path, y) for y in ys]
    lo = min(int(y.min()) for y in labels if y.size)
    hi = max(int(y.max()) for y in labels if y.size)
    classes = files.classes or hi + 1
    if hi >= folders.MAX_CLASSES:  # the model gets one output per class: a stray huge label must not size it
        raise DataFileError(f"{path}: labels span [{lo}, {hi}]; at most {folders.MAX_CLASSES} classes")
    if lo < 0 or hi >= classes:
        raise DataFileError(f"{path}: labels span [{lo}, {hi}], outside [0, {classes}) (data.files.classes)")
    if classes < 2:
        raise DataFileError(f"{path}: every label is {hi}; a dataset needs at least 2 classes")
    if "mean" in members:  # an image folder's cache: the decoder computed them
        mean = tuple(float(v) for v in npz.read(path, members["mean"]))
        std = tuple(float(v) for v in npz.read(path, members["std"]))
    else:
        mean, std = pixel_moments(npz.chunks(path, xs[0]), axis)
    if min(std) <= 0:
        raise DataFileError(f"{path}: the training images are constant in some channel (std {std})")
    what = f"the {files.format} {'file' if files.format == 'npz' else 'folder'} {given}"
    info = DatasetInfo(
        name=name,
        channels=channels,
        image_size=sample[0],
        num_classes=classes,
        mean=mean,
        std=std,
        eps=float(files.eps),
        crop_pad=files.crop_pad if files.crop_pad is not None else sample[0] // 8,
        flip=files.flip,
        fetch_hint=f"Put {what} there, or point data.files.path at it.",
        sizes=sizes,
    )
    return _Facts(info, path, axis, keys)


@functools.lru_cache(maxsize=64)
def _cached_facts(name: str, files: FilesConfig, stamp: tuple) -> _Facts:
    given = Path(files.path)
    if files.format == "npz":
        return _npz_facts(name, files, given, given)
    cache = folders.decoded(given, files.image_size, files.channels or 3)
    try:
        return _npz_facts(name, files, cache, given)
    except DataFileError as e:  # our own file: damaged after it was written (a full disk, a copy)?
        raise DataFileError(f"{e} (the decoded cache of {given}; if damaged, delete it to decode again)") from None


def _facts(name: str, files: FilesConfig) -> _Facts:
    """The facts of the file as it is now: read once per process for each (file state, config)."""
    path = Path(files.path)
    want_dir = files.format == "folder"
    if not (path.is_dir() if want_dir else path.is_file()):
        kind = "folder" if want_dir else "file"
        raise DataFileError(
            f"data.files.path: {path} is not an existing {kind} (dataset {name!r}, format {files.format})"
        )
    if want_dir:
        listing = folders.list_folder(path, files.image_size, files.channels or 3)
        found = len(listing.classes)
        if found < 2 or (files.classes or found) < found:  # refused before anything is decoded or written
            raise DataFileError(f"{path}: {found} class folder(s); expected 2 to data.files.classes = {files.classes}")
        stamp: tuple = ("folder", listing.key)  # the key hashes every file's path, size and mtime
    else:
        st = path.stat()
        stamp = (st.st_size, st.st_mtime_ns, st.st_ino)
    return _cached_facts(name, files, stamp)


def _read_splits(name: str, files: FilesConfig) -> tuple[Split, Split] | None:
    path = Path(files.path)
    if not path.exists():
        return None
    facts = _facts(name, files)
    if facts.info != dataset_info(name):
        raise DataFileError(
            f"{path} changed after dataset {name!r} was registered in this process "
            f"(sizes {dataset_info(name).sizes} -> {facts.info.sizes}); build the config again"
        )
    members = npz.members(facts.file, max_bytes=MAX_PIXEL_BYTES + 16 * MAX_SAMPLES + (1 << 20))
    c, s = facts.info.channels, facts.info.image_size
    splits = []
    for x_key, y_key in (facts.keys[:2], facts.keys[2:]):
        if not x_key:
            splits.append(Split(torch.zeros((0, c, s, s), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)))
            continue
        images = npz.read(facts.file, members[x_key])
        if facts.channel_axis == 3:
            images = np.ascontiguousarray(images.transpose(0, 3, 1, 2))
        labels = npz.read(facts.file, members[y_key]).astype(np.int64)
        splits.append(Split(torch.from_numpy(images), torch.from_numpy(labels)))
    return splits[0], splits[1]


_REGISTERED: dict[str, FilesConfig] = {}


def register_files(name: str, files: FilesConfig) -> DatasetInfo:
    """Register the dataset `files` describes under `name` (once per process; again is a no-op).

    Reads the file's headers and labels, and the train images' mean and std (or an image folder,
    decoding it into its cache when it is new or changed).

    Returns:
        The dataset's `DatasetInfo`.

    Raises:
        ValueError: `name` is not a safe name, or is already taken by a built-in, a plugin, or
            another ``data.files`` in this process; DataFileError (a ValueError) naming the file for
            anything wrong with it.
    """
    check_name(name)
    if not isinstance(files, FilesConfig):
        raise ValueError(f"data.files must be a mapping of settings (format, path, eps, ...), got {files!r}")
    if name in _REGISTERED:
        if _REGISTERED[name] != files:
            raise ValueError(
                f"data.dataset {name!r} is already registered in this process from {_REGISTERED[name].path} "
                f"with other settings; give different data.files a different name"
            )
        return dataset_info(name)
    if name in DATASETS:
        raise ValueError(
            f"data.dataset {name!r} is the name of a {DATASETS.origin(name)} dataset; name a dataset from files "
            "differently"
        )
    info = _facts(name, files).info
    what = f"the {files.format} {'file' if files.format == 'npz' else 'folder'} {files.path}"
    source = Source(what, path=Path(files.path))
    register_source(info, source, origin=f"files {files.path}")(lambda _directory: _read_splits(name, files))
    _REGISTERED[name] = files
    return info


def registered_files() -> dict[str, FilesConfig]:
    """The datasets registered from files in this process, by name."""
    return dict(_REGISTERED)
