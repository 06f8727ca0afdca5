"""SVHN from the official MATLAB files (the "extra" split is not used)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from demem.data.sources import DataFileError, DatasetInfo, Source, Split, generic_fetch_hint, register_source


def _read_svhn_mat(path: Path) -> Split:
    """Read one SVHN .mat file; DataFileError naming `path` for anything else."""
    import scipy.io  # imported here: only SVHN needs scipy, and it is slow to import

    try:
        mat = scipy.io.loadmat(str(path))  # MATLAB arrays only: no code runs from the file
    except Exception as e:  # noqa: BLE001 - scipy raises many kinds for a truncated or foreign file
        raise DataFileError(f"{path}: not a readable SVHN .mat file ({type(e).__name__}: {e})") from None
    try:
        return _svhn_split(path, mat)
    except DataFileError:
        raise
    except Exception as e:  # noqa: BLE001 - e.g. a cell array where numbers belong
        raise DataFileError(f"{path}: not an SVHN .mat file ({type(e).__name__}: {e})") from None


def _svhn_split(path: Path, mat: dict) -> Split:
    if "X" not in mat or "y" not in mat:
        raise DataFileError(f"{path}: expected variables 'X' and 'y'")
    x, y = mat["X"], mat["y"]
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DataFileError(f"{path}: X must be (32, 32, 3, N) uint8, got {x.shape} {x.dtype}")
    # X is indexed [row, col, channel, sample] (MATLAB's image convention).
    images = np.ascontiguousarray(np.transpose(x, (3, 2, 0, 1)))
    labels = np.asarray(y, dtype=np.int64).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise DataFileError(f"{path}: {images.shape[0]} images but {labels.shape[0]} labels")
    # SVHN labels digit 0 as class 10.
    labels[labels == 10] = 0
    return Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels))


@register_source(
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
        fetch_hint=generic_fetch_hint("svhn"),
        sizes=(73257, 26032),
    ),
    Source(
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
