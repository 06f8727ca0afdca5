"""Seeded sample pools: the fixed set of labelled samples one group trains on and is audited on."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from demem.checks import as_int
from demem.data.files import load_splits
from demem.data.sources import DATASETS, SPLITS, DatasetInfo, dataset_info


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
        info=dataset_info(name),
        images=images.contiguous(),
        labels=labels.contiguous(),
        sample_ids=ids,
        seed=seed,
    )
