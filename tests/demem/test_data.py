"""Tests for demem.data: real Fashion-MNIST from the Debian package, and small files written in the
exact on-disk formats of the other datasets (no network)."""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch

from demem import data
from demem.data import (
    DATASETS,
    DataFileError,
    DatasetNotFoundError,
    Pool,
    dataset_info,
    load_splits,
    make_pool,
)

from ..helpers import FASHION_DIR, needs_fashion

pytestmark = pytest.mark.usefixtures("isolated_data_env")


# ---------------------------------------------------------------------------------------------------
# Writers for the on-disk formats (independent of the readers under test)
# ---------------------------------------------------------------------------------------------------


def _rng_images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


def write_idx(path: Path, array: np.ndarray, *, compress: bool = True) -> None:
    magic = 0x0800 | array.ndim  # unsigned-byte data, ndim dimensions
    payload = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if compress:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)


def write_mnist(directory: Path, n_train: int = 20, n_test: int = 10, *, compress: bool = True) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _rng_images(n_train, (28, 28), 1),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": _rng_images(n_test, (28, 28), 2),
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        write_idx(directory / stem, arr, compress=compress)
    return arrays


def _cifar_rows(images_hwc: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) the slow, obvious way: 1024 R, 1024 G, 1024 B, each row-major."""
    n = images_hwc.shape[0]
    rows = np.zeros((n, 3072), dtype=np.uint8)
    for k in range(n):
        for c in range(3):
            for h in range(32):
                for w in range(32):
                    rows[k, c * 1024 + h * 32 + w] = images_hwc[k, h, w, c]
    return rows


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: Path, n_per_batch: int = 4, n_test: int = 10) -> tuple[np.ndarray, ...]:
    """Write cifar-10-batches-py/ with 5 x n_per_batch train and n_test test images.

    Returns (train_hwc, train_labels, test_hwc, test_labels)."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    n_train = 5 * n_per_batch
    train = _rng_images(n_train, (32, 32, 3), 3)
    test = _rng_images(n_test, (32, 32, 3), 4)
    train_labels = [int(v) for v in (np.arange(n_train) * 7) % 10]
    test_labels = [int(v) for v in (np.arange(n_test) + 5) % 10]
    for b in range(5):
        sl = slice(b * n_per_batch, (b + 1) * n_per_batch)
        _pickle(
            base / f"data_batch_{b + 1}",
            {
                b"batch_label": f"training batch {b + 1} of 5".encode(),
                b"labels": train_labels[sl],
                b"data": _cifar_rows(train[sl]),
                b"filenames": [b"x.png"] * n_per_batch,
            },
        )
    _pickle(
        base / "test_batch",
        {
            b"batch_label": b"testing batch 1 of 1",
            b"labels": test_labels,
            b"data": _cifar_rows(test),
        },
    )
    return train, np.array(train_labels), test, np.array(test_labels)


def write_cifar100(root: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, ...]:
    base = root / "cifar-100-python"
    base.mkdir(parents=True)
    train = _rng_images(n_train, (32, 32, 3), 5)
    test = _rng_images(n_test, (32, 32, 3), 6)
    train_fine = (np.arange(n_train) * 13) % 100
    test_fine = (np.arange(n_test) * 31 + 99) % 100
    for name, imgs, fine in (("train", train, train_fine), ("test", test, test_fine)):
        _pickle(
            base / name,
            {
                b"filenames": [b"x.png"] * len(fine),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) // 5 for v in fine],
                b"data": _cifar_rows(imgs),
            },
        )
    return train, train_fine, test, test_fine


def write_svhn(root: Path, n_train: int = 20, n_test: int = 10) -> tuple[np.ndarray, ...]:
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for name, n, seed in (("train", n_train, 7), ("test", n_test, 8)):
        hwc = _rng_images(n, (32, 32, 3), seed)  # (N, H, W, C)
        digits = np.arange(n) % 10
        y = np.where(digits == 0, 10, digits).astype(np.uint8).reshape(n, 1)  # SVHN writes 0 as 10
        scipy.io.savemat(root / f"{name}_32x32.mat", {"X": np.transpose(hwc, (1, 2, 3, 0)), "y": y})
        out += [hwc, digits]
    return tuple(out)


# ---------------------------------------------------------------------------------------------------
# Registry and info
# ---------------------------------------------------------------------------------------------------


def test_registry_names_and_info():
    assert DATASETS.names() == sorted(["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"])
    assert dataset_info("cifar10").eps == pytest.approx(8 / 255)
    assert dataset_info("mnist").eps == pytest.approx(0.3)
    assert dataset_info("fashion-mnist").eps == pytest.approx(0.1)
    assert dataset_info("svhn").flip is False and dataset_info("mnist").flip is False
    assert dataset_info("cifar100").num_classes == 100
    assert dataset_info("fashion-mnist").crop_pad == 2 and dataset_info("svhn").crop_pad == 4
    assert "dataset-fashion-mnist" in dataset_info("fashion-mnist").fetch_hint
    for name in DATASETS.names():
        info = dataset_info(name)
        assert len(info.mean) == len(info.std) == info.channels


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError, match="cifar10.*fashion-mnist.*mnist"):
        dataset_info("imagenet")
    with pytest.raises(ValueError, match="known: cifar10"):
        make_pool("imagenet")
    with pytest.raises(ValueError, match="known"):
        load_splits("imagenet")


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST from the Debian package (parsed once per module)
# ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_full() -> Pool:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian package dataset-fashion-mnist is not installed")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("DEMEM_DATA", raising=False)
        return make_pool("fashion-mnist")


@needs_fashion
def test_fashion_full_pool(fashion_full):
    pool = fashion_full
    assert pool.n == 70000
    assert pool.images.dtype == torch.uint8 and pool.images.shape == (70000, 1, 28, 28)
    assert pool.images.is_contiguous() and pool.images.device.type == "cpu"
    assert pool.labels.dtype == torch.int64 and int(pool.labels.min()) == 0 and int(pool.labels.max()) == 9
    assert torch.equal(pool.sample_ids, torch.arange(70000))
    assert torch.bincount(pool.labels).tolist() == [7000] * 10
    assert pool.info.name == "fashion-mnist" and pool.seed == 0
    # Known first training label of Fashion-MNIST (ankle boot).
    assert int(pool.labels[0]) == 9


@needs_fashion
def test_fashion_subsample(fashion_full):
    a = make_pool("fashion-mnist", pool_size=500, seed=3)
    b = make_pool("fashion-mnist", pool_size=500, seed=3)
    c = make_pool("fashion-mnist", pool_size=500, seed=4)
    assert a.n == 500 and torch.equal(a.sample_ids, b.sample_ids) and torch.equal(a.images, b.images)
    assert a.fingerprint() == b.fingerprint()
    assert not torch.equal(a.sample_ids, c.sample_ids) and a.fingerprint() != c.fingerprint()
    assert bool((a.sample_ids[1:] > a.sample_ids[:-1]).all())
    # Each pooled sample is exactly the full-dataset sample with that id.
    assert torch.equal(a.images, fashion_full.images[a.sample_ids])
    assert torch.equal(a.labels, fashion_full.labels[a.sample_ids])
    # The subset draws from both splits.
    assert int(a.sample_ids.min()) < 60000 <= int(a.sample_ids.max())


@needs_fashion
def test_fashion_test_split_ids(fashion_full):
    test = make_pool("fashion-mnist", splits="test")
    assert test.n == 10000
    assert torch.equal(test.sample_ids, torch.arange(60000, 70000))
    assert torch.equal(test.images, fashion_full.images[60000:])
    sub = make_pool("fashion-mnist", splits="test", pool_size=100, seed=1)
    assert int(sub.sample_ids.min()) >= 60000
    assert torch.equal(sub.images, fashion_full.images[sub.sample_ids])


# ---------------------------------------------------------------------------------------------------
# Small files in the other formats
# ---------------------------------------------------------------------------------------------------


def test_mnist_gz_roundtrip(tmp_path):
    arrays = write_mnist(tmp_path)
    train, test = load_splits("mnist", root=tmp_path)
    assert train.images.shape == (20, 1, 28, 28) and test.images.shape == (
        10,
        1,
        28,
        28,
    )
    assert train.images.dtype == torch.uint8 and train.labels.dtype == torch.int64
    assert np.array_equal(train.images[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.images[:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])
    assert train.labels.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    assert test.labels.tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_mnist_torchvision_layout_uncompressed(tmp_path):
    arrays = write_mnist(tmp_path / "MNIST" / "raw", compress=False)
    pool = make_pool("mnist", root=tmp_path)
    assert pool.n == 30 and torch.equal(pool.sample_ids, torch.arange(30))
    assert np.array_equal(pool.images[20:, 0].numpy(), arrays["t10k-images-idx3-ubyte"])


def test_mnist_bad_magic_and_size(tmp_path):
    write_mnist(tmp_path)
    # Swap in a labels file where an images file belongs: wrong magic.
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    bad.write_bytes((tmp_path / "train-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(ValueError, match="magic 2049, expected 2051"):
        load_splits("mnist", root=tmp_path)
    # A header promising more bytes than the file holds.
    with gzip.open(bad, "wb") as f:
        f.write(struct.pack(">IIII", 2051, 20, 28, 28) + bytes(100))
    with pytest.raises(ValueError, match="file holds 100"):
        load_splits("mnist", root=tmp_path)


def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(9, dtype=np.uint8))
    with pytest.raises(ValueError, match="10 images but .* 9 labels"):
        load_splits("mnist", root=tmp_path)


def test_cifar10_roundtrip_channel_major(tmp_path):
    train_hwc, train_labels, test_hwc, test_labels = write_cifar10(tmp_path)
    train, test = load_splits("cifar10", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (
        10,
        3,
        32,
        32,
    )
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert np.array_equal(train.images.numpy(), np.transpose(train_hwc, (0, 3, 1, 2)))
    assert np.array_equal(test.images.numpy(), np.transpose(test_hwc, (0, 3, 1, 2)))
    assert train.labels.tolist() == train_labels.tolist()
    assert test.labels.tolist() == test_labels.tolist()
    # Spot check against the raw row: green channel, row 5, column 7 of training image 13.
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_4", "rb") as f:
        row = pickle.load(f, encoding="bytes")[b"data"][1]  # image 13 = batch 4, position 1
    assert int(train.images[13, 1, 5, 7]) == int(row[1024 + 5 * 32 + 7])


def test_cifar10_pool_ids(tmp_path):
    write_cifar10(tmp_path)
    full = make_pool("cifar10", root=tmp_path)
    test = make_pool("cifar10", root=tmp_path, splits="test")
    train = make_pool("cifar10", root=tmp_path, splits="train")
    assert torch.equal(test.sample_ids, torch.arange(20, 30))
    assert torch.equal(train.sample_ids, torch.arange(20))
    assert torch.equal(full.images[20:], test.images) and torch.equal(full.images[:20], train.images)
    sub = make_pool("cifar10", root=tmp_path, pool_size=7, seed=11)
    assert sub.n == 7 and torch.equal(sub.images, full.images[sub.sample_ids])
    assert torch.equal(sub.labels, full.labels[sub.sample_ids])


def test_cifar100_roundtrip(tmp_path):
    train_hwc, train_fine, test_hwc, test_fine = write_cifar100(tmp_path)
    train, test = load_splits("cifar100", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32)
    assert np.array_equal(train.images.numpy(), np.transpose(train_hwc, (0, 3, 1, 2)))
    assert np.array_equal(test.images.numpy(), np.transpose(test_hwc, (0, 3, 1, 2)))
    assert train.labels.tolist() == train_fine.tolist() and test.labels.tolist() == test_fine.tolist()
    assert int(test.labels.max()) == 99


def test_svhn_roundtrip_and_label_10(tmp_path):
    train_hwc, train_digits, test_hwc, test_digits = write_svhn(tmp_path)
    train, test = load_splits("svhn", root=tmp_path)
    assert train.images.shape == (20, 3, 32, 32) and test.images.shape == (
        10,
        3,
        32,
        32,
    )
    assert train.images.dtype == torch.uint8 and train.images.is_contiguous()
    assert np.array_equal(train.images.numpy(), np.transpose(train_hwc, (0, 3, 1, 2)))
    assert np.array_equal(test.images.numpy(), np.transpose(test_hwc, (0, 3, 1, 2)))
    assert train.labels.tolist() == train_digits.tolist()  # 10 mapped back to 0
    assert test.labels.tolist() == test_digits.tolist()
    assert int(train.labels.max()) == 9 and (train.labels == 0).sum() == 2


# ---------------------------------------------------------------------------------------------------
# Finding the data
# ---------------------------------------------------------------------------------------------------


def test_missing_dataset_error(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetNotFoundError) as err:
        load_splits("cifar10", root=empty)
    message = str(err.value)
    assert str(empty) in message and str(empty / "cifar10") in message
    assert "--download" in message and "cifar-10-batches-py" in message
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="--download"):
        make_pool("svhn", root=empty)


def test_demem_data_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "mnist")  # $DEMEM_DATA/<name>
    write_cifar10(tmp_path)  # $DEMEM_DATA itself
    monkeypatch.setenv("DEMEM_DATA", str(tmp_path))
    assert make_pool("mnist").n == 30
    assert make_pool("cifar10").n == 30
    with pytest.raises(DatasetNotFoundError) as err:
        load_splits("svhn")
    assert str(tmp_path / "svhn") in str(err.value)


def test_explicit_root_wins_over_env(tmp_path, monkeypatch):
    write_mnist(tmp_path / "a", n_train=20)
    write_mnist(tmp_path / "b", n_train=12)
    monkeypatch.setenv("DEMEM_DATA", str(tmp_path / "b"))
    assert make_pool("mnist", root=tmp_path / "a").n == 30
    assert make_pool("mnist").n == 22


def test_download_cache_is_searched(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    write_svhn(tmp_path / ".cache" / "demem" / "data")
    assert make_pool("svhn").n == 30


def test_bad_pool_arguments(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="pool_size=31 .* 30 samples"):
        make_pool("cifar10", root=tmp_path, pool_size=31)
    with pytest.raises(ValueError, match="pool_size=11 .* 10 samples"):
        make_pool("cifar10", root=tmp_path, pool_size=11, splits="test")
    with pytest.raises(ValueError, match="pool_size=1 .* 30 samples"):
        make_pool("cifar10", root=tmp_path, pool_size=1)
    with pytest.raises(ValueError, match="allowed: train\\+test, train, test"):
        make_pool("cifar10", root=tmp_path, splits="val")
    assert make_pool("cifar10", root=tmp_path, pool_size=30, seed=5).n == 30


def test_pool_fingerprint_depends_on_name_seed_ids(tmp_path):
    write_cifar10(tmp_path)
    a = make_pool("cifar10", root=tmp_path, seed=0)
    b = make_pool("cifar10", root=tmp_path, seed=1)
    assert torch.equal(a.sample_ids, b.sample_ids) and a.fingerprint() != b.fingerprint()
    assert len(a.fingerprint()) == 16 and int(a.fingerprint(), 16) >= 0


def test_debian_path_constant():
    # The embedded default the quickstart relies on.
    assert data.DEBIAN_FASHION_MNIST == FASHION_DIR


def test_cifar_not_a_batch(tmp_path):
    write_cifar10(tmp_path)
    _pickle(tmp_path / "cifar-10-batches-py" / "test_batch", [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a CIFAR batch"):
        load_splits("cifar10", root=tmp_path)


def test_pool_seed_validation(tmp_path):
    write_cifar10(tmp_path)
    with pytest.raises(ValueError, match="pool seed must be >= 0"):
        make_pool("cifar10", root=tmp_path, seed=-1)
    with pytest.raises(ValueError, match="pool_size must be an integer"):
        make_pool("cifar10", root=tmp_path, pool_size=2.5)
    assert make_pool("cifar10", root=tmp_path, seed=np.int64(3), pool_size=np.int64(4)).seed == 3


# ---------------------------------------------------------------------------------------------------
# locate: where load_splits would read from, without reading
# ---------------------------------------------------------------------------------------------------


_WRITERS = {"mnist": write_mnist, "cifar10": write_cifar10, "cifar100": write_cifar100, "svhn": write_svhn}


@pytest.mark.parametrize("name", sorted(_WRITERS))
def test_locate_follows_the_search_order(name, tmp_path, monkeypatch):
    root, env, home = tmp_path / "root", tmp_path / "env", tmp_path / "home"
    for d in (root, env, home):
        d.mkdir()
    monkeypatch.setenv("HOME", str(home))
    assert data.locate(name) is None
    _WRITERS[name](home / ".cache" / "demem" / "data" / name)  # the download cache, lowest priority
    assert data.locate(name) == home / ".cache" / "demem" / "data" / name
    # an explicit root is the only place looked: no other copy silently stands in for it
    assert data.locate(name, root) is None
    with pytest.raises(DatasetNotFoundError, match=str(root)):
        load_splits(name, root=root)
    _WRITERS[name](env)  # $DEMEM_DATA itself
    monkeypatch.setenv("DEMEM_DATA", str(env))
    assert data.locate(name) == env
    _WRITERS[name](root / name)  # root/<name>
    found = data.locate(name, root)
    assert found == root / name
    # ...and it is the copy load_splits reads: the loader finds files there.
    assert DATASETS.get(name)(found) is not None
    assert load_splits(name, root=root)[0].n == load_splits(name, root=found)[0].n


def test_locate_agrees_with_loaders_on_partial_copies(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    assert data.locate("cifar10", tmp_path) is None
    with pytest.raises(DatasetNotFoundError):
        load_splits("cifar10", root=tmp_path)
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "t10k-labels-idx1-ubyte.gz").unlink()
    assert data.locate("mnist", tmp_path / "m") is None


def test_locate_does_not_read_the_files(tmp_path):
    # File names are all locate looks at: a corrupt copy is located, and the loader rejects it later.
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (base / f).write_bytes(b"not a pickle")
    assert data.locate("cifar10", tmp_path) == tmp_path
    with pytest.raises(DataFileError, match="data_batch_1: not a CIFAR batch file"):
        load_splits("cifar10", root=tmp_path)


def test_locate_fashion_default_and_unknown_name(tmp_path):
    every = set(DATASETS.names())
    assert all(data.files._files_present(n, tmp_path) is False for n in every)  # every dataset has a cheap check
    if (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        assert data.locate("fashion-mnist") == FASHION_DIR
        assert data.locate("fashion-mnist", tmp_path) is None  # an explicit root: only there
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'; known: cifar10"):
        data.locate("imagenet")


class RunsAShellCommand:
    """Unpickling this would call os.system: what a hostile batch file in a data directory does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_runs_nothing(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "pwned"
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(base / f, "wb") as fh:
            pickle.dump({b"data": RunsAShellCommand(marker), b"labels": [0]}, fh, protocol=2)
    with pytest.raises(DataFileError, match=r"data_batch_1: not a CIFAR batch file: refusing posix\.system"):
        load_splits("cifar10", root=tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize(
    "content, why",
    [
        (pickle.dumps({b"data": "x", b"labels": [0]}, protocol=2)[:-3], r"\(EOFError|\(UnpicklingError|: pickle"),
        (b"", r"\(EOFError"),
        (b"GIF89a not a pickle", r"not a CIFAR batch file"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10**30]}, protocol=2), r"\(OverflowError"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [{}]}, protocol=2), r"\(TypeError"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0, 1]}, protocol=2), "1 images but 2"),
    ],
    ids=["truncated", "empty", "foreign", "label-overflow", "label-type", "count"],
)
def test_a_malformed_cifar_batch_is_a_data_file_error_naming_it(content, why, tmp_path):
    # Whatever goes wrong inside one batch, the error is a DataFileError (a ValueError, so every
    # command's refusal path prints it in one line) that names the file; never a raw pickle error.
    write_cifar10(tmp_path)
    bad = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    bad.write_bytes(content)
    with pytest.raises(DataFileError, match=why) as err:
        load_splits("cifar10", root=tmp_path)
    assert isinstance(err.value, ValueError) and str(err.value).startswith(f"{bad}: ")


def test_malformed_idx_and_svhn_files_are_data_file_errors(tmp_path):
    write_mnist(tmp_path / "m")
    (tmp_path / "m" / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01"))
    with pytest.raises(DataFileError, match="train-labels-idx1-ubyte.gz: truncated IDX header"):
        load_splits("mnist", root=tmp_path / "m")
    write_svhn(tmp_path / "s")
    scipy.io.savemat(str(tmp_path / "s" / "test_32x32.mat"), {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": [["a"]]})
    with pytest.raises(DataFileError, match="test_32x32.mat: "):
        load_splits("svhn", root=tmp_path / "s")
