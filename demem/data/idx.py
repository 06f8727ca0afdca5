"""(Fashion-)MNIST in the IDX format (gzipped or not), as torchvision and the Debian package lay it out."""

from __future__ import annotations

import gzip
import math
import zlib
from pathlib import Path

import numpy as np
import torch

from demem.data.sources import DataFileError, DatasetInfo, Source, Split, generic_fetch_hint, register_source

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
    try:
        return _read_idx_unchecked(path, magic)
    except (EOFError, OSError, zlib.error) as e:  # a truncated or corrupt gzip stream, an unreadable file
        raise DataFileError(f"{path}: truncated or corrupt ({type(e).__name__}: {e})") from None


# The largest IDX payload read (full MNIST images are 47 MB): a crafted header cannot make us allocate more.
MAX_IDX_BYTES = 1 << 31


def _read_idx_unchecked(path: Path, magic: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        got = int.from_bytes(header, "big") if len(header) == 4 else None
        if got != magic:
            raise DataFileError(f"{path}: not an IDX file of the expected kind (magic {got}, expected {magic})")
        ndim = magic & 0xFF
        dims_raw = f.read(4 * ndim)
        if len(dims_raw) != 4 * ndim:
            raise DataFileError(f"{path}: truncated IDX header")
        dims = tuple(int(d) for d in np.frombuffer(dims_raw, dtype=">u4"))
        if math.prod(dims) > MAX_IDX_BYTES:
            raise DataFileError(f"{path}: header says {dims}, more than {MAX_IDX_BYTES} bytes; not a dataset file")
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
            raise DataFileError(f"{path}: header says {dims} = {out.size} bytes of data, but the file holds {filled}")
        if f.read(1):
            raise DataFileError(f"{path}: header says {dims} = {out.size} bytes of data, but the file holds more")
    return out


def find_idx_dir(directory: Path, torchvision_folder: str) -> dict[str, Path] | None:
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
    files = find_idx_dir(directory, torchvision_folder)
    if files is None:
        return None
    splits = []
    for split in ("train", "test"):
        images = _read_idx(files[f"{split}_images"], _IDX_IMAGES_MAGIC)
        labels = _read_idx(files[f"{split}_labels"], _IDX_LABELS_MAGIC)
        if images.shape[0] != labels.shape[0]:
            raise DataFileError(
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


@register_source(
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
        sizes=(60000, 10000),
    ),
    Source(
        _IDX_LAYOUT.format(folder="FashionMNIST"),
        "FashionMNIST",
        ({"train": True}, {"train": False}),
    ),
)
def _load_fashion_mnist(directory: Path) -> tuple[Split, Split] | None:
    return _load_idx_dataset(directory, "FashionMNIST")


@register_source(
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
        fetch_hint=generic_fetch_hint("mnist"),
        sizes=(60000, 10000),
    ),
    Source(_IDX_LAYOUT.format(folder="MNIST"), "MNIST", ({"train": True}, {"train": False})),
)
def _load_mnist(directory: Path) -> tuple[Split, Split] | None:
    return _load_idx_dataset(directory, "MNIST")
