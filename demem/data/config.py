"""Which pool a group trains on (`DataConfig`, the `data` section of a run config), and the
per-dataset training defaults `demem.train.RunConfig.from_dict` fills in."""

from __future__ import annotations

from dataclasses import dataclass

from demem.data.arrays import FilesConfig, register_files
from demem.data.sources import DATASETS, SPLITS, dataset_info

__all__ = ["DATASET_DEFAULTS", "GENERIC_DEFAULTS", "DataConfig"]

# Per-dataset training defaults (epochs, batch size), following the DeMem reference code where it has
# one (CIFAR: batch 256, 100 / 130 epochs). The small grey-scale sets train on small pools, where
# batch 128 gives twice the SGD steps per epoch.
DATASET_DEFAULTS = {
    "cifar10": {"epochs": 100, "batch_size": 256},
    "cifar100": {"epochs": 130, "batch_size": 256},
    "svhn": {"epochs": 50, "batch_size": 256},
    "fashion-mnist": {"epochs": 15, "batch_size": 128},
    "mnist": {"epochs": 15, "batch_size": 128},
}
# Datasets without an entry (from files, from plugins): a middle ground between the two kinds above.
GENERIC_DEFAULTS = {"epochs": 30, "batch_size": 128}


@dataclass(frozen=True)
class DataConfig:
    """Which pool the group trains on. `root`/`download` only say where to find the data; `files`
    reads it from an npz or an image folder instead, registered under `dataset` (`demem.data.arrays`)."""

    dataset: str = "fashion-mnist"
    pool_size: int | None = None
    pool_seed: int = 0
    splits: str = "train+test"
    root: str | None = None
    download: bool = False
    files: FilesConfig | None = None

    def __post_init__(self) -> None:
        if self.files is not None:
            if self.download or self.root is not None:
                raise ValueError("data.root and data.download do not apply to data.files: files.path is the data")
            register_files(self.dataset, self.files)
        DATASETS.check(self.dataset)
        if self.splits not in SPLITS:
            raise ValueError(f"data.splits must be one of {SPLITS}, got {self.splits!r}")
        if self.pool_size is not None and self.pool_size < 4:
            raise ValueError(f"data.pool_size must be >= 4 or None (whole dataset), got {self.pool_size}")
        info = dataset_info(self.dataset)
        if self.splits == "test" and info.sizes[0] and not info.sizes[1]:
            raise ValueError(f"data.splits 'test': {self.dataset} has one split (train); use train or train+test")
        available = info.available(self.splits)
        if self.pool_size is not None and available and self.pool_size > available:
            raise ValueError(
                f"data.pool_size must be at most {available} ({self.dataset} {self.splits} has {available} samples), "
                f"got {self.pool_size}"
            )
