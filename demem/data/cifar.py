"""CIFAR-10 and CIFAR-100 from the official python batch files."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from demem.data.sources import DataFileError, DatasetInfo, Source, Split, generic_fetch_hint, register_source

# The only globals a CIFAR batch file needs: numpy's array reconstruction and the bytes helper that
# protocol-2 pickles use. Anything else (os.system, builtins.eval, ...) is refused before it is called,
# so a crafted file in a data directory cannot run code.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing {module}.{name}: a CIFAR batch holds only numpy arrays, lists and dicts"
            )
        return super().find_class(module, name)


def _read_cifar_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR pickle.

    Returns:
        images: (N, 3, 32, 32) uint8. Each data row is 1024 R, then 1024 G, then 1024 B values, each
            plane a row-major 32x32 image, so a plain reshape gives channel-major images.
        labels: (N,) int64.

    Raises:
        DataFileError: naming `path`, for anything that is not a CIFAR batch (a crafted pickle included).
    """
    try:
        return _read_cifar_batch_unchecked(path, label_key)
    except DataFileError:
        raise
    except OSError as e:
        raise DataFileError(f"{path}: cannot read it ({type(e).__name__}: {e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - a foreign pickle can fail in many ways; none may escape as a traceback
        raise DataFileError(f"{path}: not a CIFAR batch file ({type(e).__name__}: {e})") from None


def _read_cifar_batch_unchecked(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    # The official files are pickles; they are read with an unpickler that admits only the plain
    # containers and numpy arrays the format uses (`_CifarUnpickler`).
    with open(path, "rb") as f:
        try:
            batch = _CifarUnpickler(f, encoding="bytes").load()
        except pickle.UnpicklingError as e:
            raise DataFileError(f"{path}: not a CIFAR batch file: {e}") from None
    keys = set(batch) if isinstance(batch, dict) else set()

    def field(key: str):
        # The originals were pickled by Python 2 and load with bytes keys; accept str keys too, for
        # copies re-pickled by Python 3.
        for k in (key.encode(), key):
            if k in keys:
                return batch[k]
        raise DataFileError(
            f"{path}: not a CIFAR batch (a dict with key {key!r}); got {type(batch).__name__} "
            f"with keys {sorted(str(k)[:40] for k in keys)[:20]}"
        )

    data = np.asarray(field("data"))
    labels = np.asarray(field(label_key), dtype=np.int64).reshape(-1)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataFileError(f"{path}: data must be (N, 3072) uint8, got {data.shape} {data.dtype}")
    if data.shape[0] != labels.shape[0]:
        raise DataFileError(f"{path}: {data.shape[0]} images but {labels.shape[0]} labels")
    return data.reshape(-1, 3, 32, 32), labels


def _load_cifar(files: dict[str, list[Path]], label_key: str) -> tuple[Split, Split]:
    splits = []
    for split in ("train", "test"):
        parts = [_read_cifar_batch(p, label_key) for p in files[split]]
        images = np.ascontiguousarray(np.concatenate([im for im, _ in parts]))
        labels = np.concatenate([lab for _, lab in parts])
        splits.append(Split(images=torch.from_numpy(images), labels=torch.from_numpy(labels)))
    return splits[0], splits[1]


@register_source(
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
        fetch_hint=generic_fetch_hint("cifar10"),
        sizes=(50000, 10000),
    ),
    Source(
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


@register_source(
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
        fetch_hint=generic_fetch_hint("cifar100"),
        sizes=(50000, 10000),
    ),
    Source("cifar-100-python/{train, test}", "CIFAR100", ({"train": True},)),
)
def _load_cifar100(directory: Path) -> tuple[Split, Split] | None:
    base = directory / "cifar-100-python"
    files = {"train": [base / "train"], "test": [base / "test"]}
    if not all(p.is_file() for ps in files.values() for p in ps):
        return None
    return _load_cifar(files, "fine_labels")
