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

A dataset from files the user names (``data.files``: an ``.npz`` of image arrays, or an image folder;
see `demem.data.arrays`) is read from that one path instead, never searched for or downloaded.

If nothing is found, `DatasetNotFoundError` names every directory tried and the command that fetches
the data. A file that is found but malformed (or crafted) is a `DataFileError` (a ValueError) naming it.

The files are read directly with numpy (IDX for (Fashion-)MNIST, the official pickles for CIFAR,
MATLAB files for SVHN) in the layouts torchvision writes, rather than through torchvision's dataset
classes. That lets us load copies that users provide (the Debian package, a cluster's shared disk)
and small test files, which torchvision would reject because its classes check fixed md5 hashes of the
official archives. torchvision is imported only on the ``download=True`` path.

Everything stays uint8 (N, C, H, W) from disk to the pool; conversion to float, normalisation and
augmentation happen later, in batches, on the training device.
"""

from __future__ import annotations

# The readers register their datasets on import.
from demem.data import cifar, idx, svhn  # noqa: F401
from demem.data.arrays import FilesConfig, register_files, registered_files
from demem.data.files import candidate_dirs, load_splits, locate
from demem.data.pool import Pool, make_pool
from demem.data.sources import (
    DATASETS,
    DEBIAN_FASHION_MNIST,
    SPLITS,
    DataFileError,
    DatasetEntry,
    DatasetInfo,
    DatasetNotFoundError,
    Split,
    dataset_info,
)

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST",
    "SPLITS",
    "DataFileError",
    "DatasetEntry",
    "DatasetInfo",
    "DatasetNotFoundError",
    "FilesConfig",
    "Pool",
    "Split",
    "candidate_dirs",
    "dataset_info",
    "load_splits",
    "locate",
    "make_pool",
    "register_files",
    "registered_files",
]
