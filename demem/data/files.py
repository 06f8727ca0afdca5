"""Where a dataset's files are looked for, in order, and loading its splits from the first hit."""

from __future__ import annotations

import os
from pathlib import Path

from demem.data.idx import find_idx_dir
from demem.data.sources import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    SOURCES,
    DataFileError,
    DatasetInfo,
    DatasetNotFoundError,
    Split,
    dataset_info,
)


def _env_data_dir() -> Path | None:
    value = os.environ.get("DEMEM_DATA", "").strip()
    return Path(value).expanduser() if value else None


def _cache_dir() -> Path:
    return Path.home() / ".cache" / "demem" / "data"


def _fixed_path(name: str) -> Path | None:
    source = SOURCES.get(name)
    return source.path if source is not None else None


def _searchable(name: str, directory: Path) -> bool:
    # A dataset from files may be one file (an npz) rather than a directory.
    return directory.exists() if _fixed_path(name) is not None else directory.is_dir()


def candidate_dirs(name: str, root: str | Path | None) -> list[Path]:
    """Directories to search, in priority order, without duplicates. An explicit `root` is the only
    place searched: a copy found elsewhere would silently stand in for the one the user named. A
    dataset from files (``data.files``) is read from its one path alone."""
    fixed = _fixed_path(name)
    if fixed is not None:
        return [fixed]
    if root is not None:
        base = Path(root).expanduser()
        return [base / name, base]
    bases: list[Path | None] = [_env_data_dir()]
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

    source = SOURCES[name]
    cls = getattr(torchvision.datasets, source.torchvision_class)
    target.mkdir(parents=True, exist_ok=True)
    for kwargs in source.torchvision_kwargs:
        cls(str(target), download=True, **kwargs)


def _validate(info: DatasetInfo, split: Split, split_name: str, where: Path) -> None:
    expected = (info.channels, info.image_size, info.image_size)
    if tuple(split.images.shape[1:]) != expected:
        raise DataFileError(
            f"{info.name} {split_name} split in {where}: images are {tuple(split.images.shape[1:])}, "
            f"expected (C, H, W) = {expected}"
        )
    # A one-split dataset from files has sizes (n, 0): every sample is a training sample.
    if split.n == 0:
        if split_name == "test" and info.sizes[0] > 0 and info.sizes[1] == 0:
            return
        raise DataFileError(f"{info.name} {split_name} split in {where} is empty")
    lo, hi = int(split.labels.min()), int(split.labels.max())
    if lo < 0 or hi >= info.num_classes:
        raise DataFileError(
            f"{info.name} {split_name} split in {where}: labels span [{lo}, {hi}], expected [0, {info.num_classes - 1}]"
        )


def load_splits(name: str, *, root: str | Path | None = None, download: bool = False) -> tuple[Split, Split]:
    """Load a dataset's train and test splits from the first directory that holds them.

    Args:
        name: a registered dataset name (see ``DATASETS.names()``).
        root: the only directory searched when given (``root/<name>``, then ``root``); also where
            downloads go.
        download: if no copy is found, let torchvision download one (needs network access).

    Returns:
        (train, test), each with images (N, C, H, W) uint8 and labels (N,) int64.

    Raises:
        ValueError: unknown name; DataFileError (a ValueError) naming the file, for files that are
            present but malformed.
        DatasetNotFoundError: no copy found (and ``download`` is False).
    """
    loader = DATASETS.get(name)
    info = dataset_info(name)
    tried = candidate_dirs(name, root)
    for directory in tried:
        if not _searchable(name, directory):
            continue
        found = loader(directory)
        if found is not None:
            for split, split_name in zip(found, ("train", "test")):
                _validate(info, split, split_name, directory)
            return found

    if download and SOURCES[name].torchvision_class:
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

    if _fixed_path(name) is not None:
        raise DatasetNotFoundError(
            f"dataset {name!r} not found: {SOURCES[name].layout} is not there. {info.fetch_hint}"
        )
    listing = "\n".join(f"  {d}" for d in tried)
    raise DatasetNotFoundError(
        f"dataset {name!r} not found. Looked for {SOURCES[name].layout} in:\n{listing}\n"
        f"Fetch it with: {info.fetch_hint}\n"
        "(or point --data-root / $DEMEM_DATA at an existing copy)"
    )


def _files_present(name: str, directory: Path) -> bool | None:
    """Whether `directory` holds the files `name`'s loader reads, judged from file names alone.

    The loaders return None exactly when these files are missing, so this agrees with them without
    reading (or unpickling) any data. None means "no cheap check for this dataset": ask the loader.
    """
    if _fixed_path(name) is not None:
        return directory.exists()
    if name in ("fashion-mnist", "mnist"):
        return find_idx_dir(directory, "FashionMNIST" if name == "fashion-mnist" else "MNIST") is not None
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

    Follows the same search order as `load_splits` (``root`` alone when given; else ``$DEMEM_DATA``,
    the Debian package for Fashion-MNIST, the download cache). Only file names are checked, so files
    that are present but malformed are found here and rejected later by the loader.

    Returns:
        The first candidate directory that holds the dataset's files, or None if none does.

    Raises:
        ValueError: unknown dataset name (listing the known ones).
    """
    loader = DATASETS.get(name)
    for directory in candidate_dirs(name, root):
        if not _searchable(name, directory):
            continue
        present = _files_present(name, directory)
        if present is None:  # a dataset without a cheap check: the loader itself decides
            present = loader(directory) is not None
        if present:
            return directory
    return None
