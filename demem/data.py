"""Datasets, their on-disk readers, and seeded sample pools.

A *pool* is the fixed set of labelled samples that one group of models is trained and audited on
(see DESIGN.md, "Data and membership"). By default it is the dataset's train and test splits merged,
as the DeMem reference does, and every sample carries a stable integer ``sample_id``: its index in
the merged train-then-test order of the full dataset. Ids therefore do not depend on ``splits`` or
``pool_size``, so per-sample results from different pools can be joined on them.

Where the data comes from, in order (first hit wins):

1. the explicit ``root`` argument (``root/<name>``, then ``root``);
2. ``$DEMEM_DATA`` (``$DEMEM_DATA/<name>``, then ``$DEMEM_DATA``);
3. for Fashion-MNIST only, the Debian package ``dataset-fashion-mnist``
   (``/usr/share/datasets/fashion-mnist/``), the embedded default that needs no network;
4. the download cache ``~/.cache/demem/data`` (``<cache>/<name>``, then ``<cache>``), so data
   fetched once with ``download=True`` is found again without it;
5. only with ``download=True``: torchvision downloads into ``root`` (or ``$DEMEM_DATA``, or the
   cache) and the files are read from there.

If nothing is found, `DatasetNotFoundError` names every directory tried and the command that fetches
the data.

The files are read directly with numpy (IDX for (Fashion-)MNIST, the official pickles for CIFAR,
MATLAB files for SVHN) in the layouts torchvision writes, rather than through torchvision's dataset
classes. That lets us load copies that users provide (the Debian package, a cluster's shared disk)
and small test files, which torchvision would reject because its classes check fixed md5 hashes of the
official archives. torchvision is imported only on the ``download=True`` path.

Everything stays uint8 (N, C, H, W) from disk to the pool; conversion to float, normalisation and
augmentation happen later, in batches, on the training device.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demem.checks import as_int
from demem.registry import Registry

__all__ = [
    "DATASETS",
    "SPLITS",
    "DatasetInfo",
    "DatasetNotFoundError",
    "Pool",
    "Split",
    "dataset_info",
    "load_splits",
    "locate",
    "make_pool",
]

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

    def __post_init__(self) -> None:
        if self.channels < 1 or self.image_size < 1 or self.num_classes < 2:
            raise ValueError(f"dataset info: channels, image_size >= 1 and num_classes >= 2, got {self}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"dataset info {self.name!r}: mean and std need one value per channel")
        if any(s <= 0 for s in self.std) or not 0 < self.eps < 1 or self.crop_pad < 0:
            raise ValueError(f"dataset info {self.name!r}: std > 0, 0 < eps < 1, crop_pad >= 0, got {self}")


class DatasetNotFoundError(FileNotFoundError):
    """No copy of a dataset was found; the message lists the paths tried and how to fetch it."""


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

DATASETS: Registry[Loader] = Registry("dataset")


@dataclass(frozen=True)
class _Source:
    """How to describe the expected files, and how torchvision fetches them."""

    layout: str  # human-readable description of the expected files, for error messages
    torchvision_class: str
    torchvision_kwargs: tuple[dict, ...]  # one constructor call per entry; all together fetch both splits


_INFO: dict[str, DatasetInfo] = {}
_SOURCES: dict[str, _Source] = {}


def _register(info: DatasetInfo, source: _Source) -> Callable[[Loader], Loader]:
    def deco(loader: Loader) -> Loader:
        _INFO[info.name] = info
        _SOURCES[info.name] = source
        return DATASETS.register(info.name)(loader)

    return deco


def dataset_info(name: str) -> DatasetInfo:
    """Return the `DatasetInfo` of a registered dataset; ValueError listing the known names otherwise."""
    DATASETS.check(name)
    return _INFO[name]


def _generic_fetch_hint(name: str) -> str:
    return f"demem train --dataset {name} --download --data-root DIR"


# ---------------------------------------------------------------------------------------------------
# (Fashion-)MNIST: IDX files
# ---------------------------------------------------------------------------------------------------

_IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
_IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes (optionally gzipped) into an array of its stated shape.

    Returns:
        uint8 array, (N, rows, cols) for images or (N,) for labels.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        got = int.from_bytes(header, "big") if len(header) == 4 else None
        if got != magic:
            raise ValueError(f"{path}: not an IDX file of the expected kind (magic {got}, expected {magic})")
        ndim = magic & 0xFF
        dims_raw = f.read(4 * ndim)
        if len(dims_raw) != 4 * ndim:
            raise ValueError(f"{path}: truncated IDX header")
        dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
        out = np.empty(dims, dtype=np.uint8)
        # readinto fills the array in place, so a 47 MB image file is never held twice in memory.
        view = memoryview(out.reshape(-1))
        filled = 0
        while filled < out.size:
            got_bytes = f.readinto(view[filled:])
            if not got_bytes:
                break
            filled += got_bytes
        if filled != out.size:
            raise ValueError(f"{path}: header says {dims} = {out.size} bytes of data, but the file holds {filled}")
        if f.read(1):
            raise ValueError(f"{path}: header says {dims} = {out.size} bytes of data, but the file holds more")
    return out


def _find_idx_dir(directory: Path, torchvision_folder: str) -> dict[str, Path] | None:
    # torchvision's layout first: it is unambiguous, whereas bare IDX files in a shared directory
    # could belong to either MNIST variant (they use the same file names).
    for sub in (directory / torchvision_folder / "raw", directory / "raw", directory):
        found: dict[str, Path] = {}
        for key, stem in _IDX_FILES.items():
            # Prefer the uncompressed copy (torchvision keeps both): it reads faster.
            for candidate in (sub / stem, sub / f"{stem}.gz"):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(_IDX_FILES):
            return found
    return None


def _load_idx_dataset(directory: Path, torchvision_folder: str) -> tuple[Split, Split] | None:
    files = _find_idx_dir(directory, torchvision_folder)
    if files is None:
        return None
    splits = []
    for split in ("train", "test"):
        images = _read_idx(files[f"{split}_images"], _IDX_IMAGES_MAGIC)
        labels = _read_idx(files[f"{split}_labels"], _IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"{files[f'{split}_images']} holds {images.shape[0]} images but "
                f"{files[f'{split}_labels']} holds {labels.shape[0]} labels"
            )
        splits.append(
            Split(
                images=torch.from_numpy(images).unsqueeze(1),  # (N, 28, 28) -> (N, 1, 28, 28), no copy
                labels=torch.from_numpy(labels.astype(np.int64)),
            )
        )
    return splits[0], splits[1]


_IDX_LAYOUT = (
    "train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte "
    "(each optionally .gz), directly or under raw/ or {folder}/raw/"
)


@_register(
    DatasetInfo(
        name="fashion-mnist",
        channels=1,
        image_size=28,
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        eps=0.1,
        crop_pad=2,
        flip=True,
        fetch_hint="apt-get install -y dataset-fashion-mnist "
        "(or: demem train --dataset fashion-mnist --download --data-root DIR)",
    ),
    _Source(
        _IDX_LAYOUT.format(folder="FashionMNIST"),
        "FashionMNIST",
        ({"train": True}, {"train": False}),
    ),
)
def _load_fashion_mnist(directory: Path) -> tuple[Split, Split] | None:
    return _load_idx_dataset(directory, "FashionMNIST")


@_register(
    DatasetInfo(
        name="mnist",
        channels=1,
        image_size=28,
        num_classes=10,
        mean=(0.1307,),
        std=(0.3081,),
        eps=0.3,
        crop_pad=2,
        flip=False,  # mirrored digits are not the same digits
        fetch_hint=_generic_fetch_hint("mnist"),
    ),
    _Source(_IDX_LAYOUT.format(folder="MNIST"), "MNIST", ({"train": True}, {"train": False})),
)
def _load_mnist(directory: Path) -> tuple[Split, Split] | None:
    return _load_idx_dataset(directory, "MNIST")


# ---------------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100: the official python pickles
# ---------------------------------------------------------------------------------------------------


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle.

    Returns:
        images: (N, 3, 32, 32) uint8. Each data row is 1024 R, then 1024 G, then 1024 B values, each
            plane a row-major 32x32 image, so a plain reshape gives channel-major images.
        labels: (N,) int64.
    """
    # Unpickling is how the official CIFAR files are distributed (and what torchvision does); we only
    # read them from data directories the user points us at.
    with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    keys = set(batch) if isinstance(batch, dict) else set()

    def field(key: str):
        # The originals were pickled by Python 2 and load with bytes keys; accept str keys too, for
        # copies re-pickled by Python 3.
        for k in (key.encode(), key):
            if k in keys:
                return batch[k]
        raise ValueError(
            f"{path}: not a CIFAR batch (a dict with key {key!r}); got {type(batch).__name__} "
            f"with keys {sorted(map(str, keys))}"
        )

    data = np.asarray(field("data"))
    labels = np.asarray(field(label_key), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: data must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    if data.shape[0] != labels.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(files: dict[str, list[Path]], label_key: str) -> tuple[Split, Split]:
    splits = []
    for split in ("train", "test"):
        parts = [_read_cifar_batch(p, label_key) for p in files[split]]
        images = np.ascontiguousarray(np.concatenate([im for im, _ in parts]))
        labels = np.concatenate([lab for _, lab in parts])
        splits.append(Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels)))
    return splits[0], splits[1]


@_register(
    DatasetInfo(
        name="cifar10",
        channels=3,
        image_size=32,
        num_classes=10,
        mean=(0.4914, 0.4822, 0.4465),
        std=(0.2470, 0.2435, 0.2616),
        eps=8 / 255,
        crop_pad=4,
        flip=True,
        fetch_hint=_generic_fetch_hint("cifar10"),
    ),
    _Source(
        "cifar-10-batches-py/{data_batch_1..5, test_batch}",
        "CIFAR10",
        ({"train": True},),
    ),
)
def _load_cifar10(directory: Path) -> tuple[Split, Split] | None:
    base = directory / "cifar-10-batches-py"
    files = {
        "train": [base / f"data_batch_{i}" for i in range(1, 6)],
        "test": [base / "test_batch"],
    }
    if not all(p.is_file() for ps in files.values() for p in ps):
        return None
    return _load_cifar(files, "labels")


@_register(
    DatasetInfo(
        name="cifar100",
        channels=3,
        image_size=32,
        num_classes=100,
        mean=(0.5071, 0.4865, 0.4409),
        std=(0.2673, 0.2564, 0.2762),
        eps=8 / 255,
        crop_pad=4,
        flip=True,
        fetch_hint=_generic_fetch_hint("cifar100"),
    ),
    _Source("cifar-100-python/{train, test}", "CIFAR100", ({"train": True},)),
)
def _load_cifar100(directory: Path) -> tuple[Split, Split] | None:
    base = directory / "cifar-100-python"
    files = {"train": [base / "train"], "test": [base / "test"]}
    if not all(p.is_file() for ps in files.values() for p in ps):
        return None
    return _load_cifar(files, "fine_labels")


# ---------------------------------------------------------------------------------------------------
# SVHN: MATLAB files (the "extra" split is not used)
# ---------------------------------------------------------------------------------------------------


def _read_svhn_mat(path: Path) -> Split:
    import scipy.io  # imported here: only SVHN needs scipy, and it is slow to import

    mat = scipy.io.loadmat(str(path))
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path}: expected variables 'X' and 'y'")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise ValueError(f"{path}: X must be (32, 32, 3, N) uint8, got {x.shape} {x.dtype}")
    # X is indexed [row, col, channel, sample] (MATLAB's image convention).
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    # SVHN labels digit 0 as class 10.
    labels[labels == 10] = 0
    return Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


@_register(
    DatasetInfo(
        name="svhn",
        channels=3,
        image_size=32,
        num_classes=10,
        mean=(0.4377, 0.4438, 0.4728),
        std=(0.1980, 0.2010, 0.1970),
        eps=8 / 255,
        crop_pad=4,
        flip=False,  # house numbers: mirrored digits are not the same digits
        fetch_hint=_generic_fetch_hint("svhn"),
    ),
    _Source(
        "train_32x32.mat, test_32x32.mat",
        "SVHN",
        ({"split": "train"}, {"split": "test"}),
    ),
)
def _load_svhn(directory: Path) -> tuple[Split, Split] | None:
    train, test = directory / "train_32x32.mat", directory / "test_32x32.mat"
    if not (train.is_file() and test.is_file()):
        return None
    return _read_svhn_mat(train), _read_svhn_mat(test)


# ---------------------------------------------------------------------------------------------------
# Finding and loading
# ---------------------------------------------------------------------------------------------------


def _env_data_dir() -> Path | None:
    value = os.environ.get("DEMEM_DATA", "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "demem" / "data"


def _candidate_dirs(name: str, root: str | Path | None) -> list[Path]:
    """Directories to search, in priority order, without duplicates."""
    bases: list[Path | None] = [
        Path(root).expanduser() if root is not None else None,
        _env_data_dir(),
    ]
    dirs: list[Path] = []
    for base in bases:
        if base is not None:
            dirs += [base / name, base]
    if name == "fashion-mnist":
        dirs.append(DEBIAN_FASHION_MNIST)
    cache = _cache_dir()
    dirs += [cache / name, cache]
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def _download(name: str, target: Path) -> None:
    import torchvision.datasets  # only this path needs torchvision (and a network)

    source = _SOURCES[name]
    cls = getattr(torchvision.datasets, source.torchvision_class)
    target.mkdir(parents=True, exist_ok=True)
    for kwargs in source.torchvision_kwargs:
        cls(str(target), download=True, **kwargs)


def _validate(info: DatasetInfo, split: Split, split_name: str, where: Path) -> None:
    expected = (info.channels, info.image_size, info.image_size)
    if tuple(split.images.shape[1:]) != expected:
        raise ValueError(
            f"{info.name} {split_name} split in {where}: images are {tuple(split.images.shape[1:])}, "
            f"expected (C, H, W) = {expected}"
        )
    if split.n == 0:
        raise ValueError(f"{info.name} {split_name} split in {where} is empty")
    lo, hi = int(split.labels.min()), int(split.labels.max())
    if lo < 0 or hi >= info.num_classes:
        raise ValueError(
            f"{info.name} {split_name} split in {where}: labels span [{lo}, {hi}], expected [0, {info.num_classes - 1}]"
        )


def load_splits(name: str, *, root: str | Path | None = None, download: bool = False) -> tuple[Split, Split]:
    """Load a dataset's train and test splits from the first directory that holds them.

    Args:
        name: a registered dataset name (see ``DATASETS.names()``).
        root: directory searched first (``root/<name>``, then ``root``); also where downloads go.
        download: if no copy is found, let torchvision download one (needs network access).

    Returns:
        (train, test), each with images (N, C, H, W) uint8 and labels (N,) int64.

    Raises:
        ValueError: unknown name, or files that are present but malformed.
        DatasetNotFoundError: no copy found (and ``download`` is False).
    """
    loader = DATASETS.get(name)
    info = _INFO[name]
    tried = _candidate_dirs(name, root)
    for directory in tried:
        if not directory.is_dir():
            continue
        found = loader(directory)
        if found is not None:
            for split, split_name in zip(found, ("train", "test")):
                _validate(info, split, split_name, directory)
            return found

    if download:
        if root is not None:
            target = Path(root).expanduser()
        else:
            target = _env_data_dir() or _cache_dir()
        _download(name, target)
        found = loader(target)
        if found is not None:
            for split, split_name in zip(found, ("train", "test")):
                _validate(info, split, split_name, target)
            return found
        tried.append(target)

    listing = "\n".join(f"  {d}" for d in tried)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for {_SOURCES[name].layout} in:\n{listing}\n"
        f"Fetch it with: {info.fetch_hint}\n"
        "(or point --data-root / $DEMEM_DATA at an existing copy)"
    )


def _files_present(name: str, directory: Path) -> bool | None:
    """Whether `directory` holds the files `name`'s loader reads, judged from file names alone.

    The loaders return None exactly when these files are missing, so this agrees with them without
    reading (or unpickling) any data. None means "no cheap check for this dataset": ask the loader.
    """
    if name in ("fashion-mnist", "mnist"):
        return _find_idx_dir(directory, "FashionMNIST" if name == "fashion-mnist" else "MNIST") is not None
    if name == "cifar10":
        base = directory / "cifar-10-batches-py"
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        return all((base / f).is_file() for f in names)
    if name == "cifar100":
        base = directory / "cifar-100-python"
        return (base / "train").is_file() and (base / "test").is_file()
    if name == "svhn":
        return (directory / "train_32x32.mat").is_file() and (directory / "test_32x32.mat").is_file()
    return None


def locate(name: str, root: str | Path | None = None) -> Path | None:
    """The directory `load_splits(name, root=root)` would read from, without reading or downloading.

    Follows the same search order as `load_splits` (``root``, ``$DEMEM_DATA``, the Debian package for
    Fashion-MNIST, the download cache). Only file names are checked, so files that are present but
    malformed are found here and rejected later by the loader.

    Returns:
        The first candidate directory that holds the dataset's files, or None if none does.

    Raises:
        ValueError: unknown dataset name (listing the known ones).
    """
    loader = DATASETS.get(name)
    for directory in _candidate_dirs(name, root):
        if not directory.is_dir():
            continue
        present = _files_present(name, directory)
        if present is None:  # a dataset without a cheap check: the loader itself decides
            present = loader(directory) is not None
        if present:
            return directory
    return None


# ---------------------------------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pool:
    """A fixed, seeded set of labelled samples with stable ids.

    Attributes:
        info: the dataset's `DatasetInfo`.
        images: (N, C, H, W) uint8 on the CPU.
        labels: (N,) int64.
        sample_ids: (N,) int64, strictly increasing; the index of each sample in the merged
            train-then-test order of the full dataset.
        seed: the pool seed; it chose the subset (if any) and seeds the group's keep masks.
    """

    info: DatasetInfo
    images: torch.Tensor
    labels: torch.Tensor
    sample_ids: torch.Tensor
    seed: int

    def __post_init__(self) -> None:
        n = self.labels.shape[0]
        expected = (n, self.info.channels, self.info.image_size, self.info.image_size)
        if self.images.dtype != torch.uint8 or tuple(self.images.shape) != expected:
            raise ValueError(
                f"pool images must be {expected} uint8, got {tuple(self.images.shape)} {self.images.dtype}"
            )
        for field_name, t in (("labels", self.labels), ("sample_ids", self.sample_ids)):
            if t.dtype != torch.int64 or tuple(t.shape) != (n,):
                raise ValueError(f"pool {field_name} must be ({n},) int64, got {tuple(t.shape)} {t.dtype}")
        if n > 1 and not bool((self.sample_ids[1:] > self.sample_ids[:-1]).all()):
            raise ValueError("pool sample_ids must be strictly increasing")

    @property
    def n(self) -> int:
        """Number of samples in the pool."""
        return int(self.labels.shape[0])

    def fingerprint(self) -> str:
        """Short sha256 hex of (dataset name, pool seed, sample_ids); equal pools give equal fingerprints."""
        h = hashlib.sha256()
        h.update(self.info.name.encode())
        h.update(b"\0")
        h.update(str(self.seed).encode())
        h.update(b"\0")
        # Fixed little-endian int64 bytes, so the fingerprint is the same on every platform.
        h.update(self.sample_ids.numpy().astype("<i8", copy=False).tobytes())
        return h.hexdigest()[:16]


def make_pool(
    name: str,
    *,
    pool_size: int | None = None,
    seed: int = 0,
    splits: str = "train+test",
    root: str | Path | None = None,
    download: bool = False,
) -> Pool:
    """Build a sample pool from a dataset.

    Args:
        name: a registered dataset name.
        pool_size: if given, draw this many samples uniformly without replacement (seeded by
            ``seed``) from the chosen splits; the pool is sorted by sample id. None keeps them all.
        seed: the pool seed. The same (name, splits, pool_size, seed) always gives the same pool.
        splits: ``"train+test"`` (default, merged as in the DeMem reference), ``"train"`` or ``"test"``.
        root, download: see `load_splits`.

    Returns:
        A `Pool` whose ``sample_ids`` index the merged train-then-test order of the full dataset
        (test ids start at the size of the train split), whatever ``splits`` and ``pool_size`` are.

    Raises:
        ValueError: unknown name or splits, or a pool_size < 2 or larger than the samples available.
        DatasetNotFoundError: see `load_splits`.
    """
    DATASETS.check(name)
    if splits not in SPLITS:
        raise ValueError(f"unknown splits {splits!r}; allowed: {', '.join(SPLITS)}")
    seed = as_int("pool seed", seed)
    if seed < 0:
        raise ValueError(f"pool seed must be >= 0, got {seed}")
    train, test = load_splits(name, root=root, download=download)

    if splits == "train":
        images, labels, first_id = train.images, train.labels, 0
    elif splits == "test":
        images, labels, first_id = test.images, test.labels, train.n
    else:
        images, labels, first_id = (
            torch.cat([train.images, test.images]),
            torch.cat([train.labels, test.labels]),
            0,
        )
    available = int(labels.shape[0])
    ids = torch.arange(first_id, first_id + available, dtype=torch.int64)

    if pool_size is not None:
        pool_size = as_int("pool_size", pool_size)
        if pool_size < 2 or pool_size > available:
            raise ValueError(
                f"pool_size={pool_size} is invalid: {name} ({splits}) has {available} samples available "
                "and a pool needs at least 2"
            )
        rng = np.random.default_rng(seed)
        chosen = np.sort(rng.choice(available, size=pool_size, replace=False))
        index = torch.from_numpy(chosen.astype(np.int64))
        images, labels, ids = images[index], labels[index], ids[index]

    return Pool(
        info=_INFO[name],
        images=images.contiguous(),
        labels=labels.contiguous(),
        sample_ids=ids,
        seed=seed,
    )
