"""Datasets from files (data.files): npz image arrays and image folders, against independent
references (the arrays written, numpy's own statistics, Pillow's own decode and resize), and the
refusals of hostile files, each naming the file and writing nothing."""

from __future__ import annotations

import io
import itertools
import os
import re
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from demem import config as cfglib
from demem.data import (
    DATASETS,
    DataFileError,
    DatasetNotFoundError,
    FilesConfig,
    dataset_info,
    load_splits,
    locate,
    make_pool,
    register_files,
)
from demem.data import folders as folderlib
from demem.train import GENERIC_DEFAULTS, DataConfig, RunConfig
from tests.helpers import readme_blocks

_names = itertools.count()


@pytest.fixture
def name(monkeypatch, tmp_path) -> str:
    """A dataset name no other test has registered in this process; a fresh $HOME (the folder cache)."""
    (tmp_path / "home").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DEMEM_FOLDER_CACHE", raising=False)
    return f"files-test-{next(_names)}"


def _tree(root: Path) -> dict[str, int]:
    """Every file under `root` with its mtime: what a refusal must leave as it was."""
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file() or p.is_symlink()}


def _images(rng, n: int, c: int = 3, s: int = 8) -> np.ndarray:
    return rng.integers(0, 256, (n, c, s, s), dtype=np.uint8)


def _files(path, **kw) -> dict:
    return {"format": "npz", "path": str(path), "eps": 0.03, **kw}


def _two_split(rng, n_train=40, n_test=24, c=3, s=8, classes=5):
    return (_images(rng, n_train, c, s), rng.integers(0, classes, n_train), _images(rng, n_test, c, s),
            rng.integers(0, classes, n_test))  # fmt: skip


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("channels", [1, 3])
def test_npz_two_splits_read_as_written(tmp_path, name, layout, channels):
    rng = np.random.default_rng(channels)
    xtr, ytr, xte, yte = _two_split(rng, c=channels)
    to_file = (lambda x: x.transpose(0, 2, 3, 1)) if layout == "NHWC" else (lambda x: x)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=to_file(xtr), y_train=ytr.astype(np.uint8), x_test=to_file(xte), y_test=yte.astype(np.int32))

    DataConfig(dataset=name, files=FilesConfig(**_files(path)))
    train, test = load_splits(name)
    assert np.array_equal(train.images.numpy(), xtr) and np.array_equal(test.images.numpy(), xte)
    assert np.array_equal(train.labels.numpy(), ytr) and np.array_equal(test.labels.numpy(), yte)
    assert train.images.is_contiguous()

    info = dataset_info(name)
    assert (info.channels, info.image_size, info.sizes) == (channels, 8, (40, 24))
    assert info.num_classes == max(ytr.max(), yte.max()) + 1
    scaled = xtr.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, scaled.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(info.std, scaled.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    assert (info.eps, info.flip, info.crop_pad) == (0.03, False, 1)  # crop_pad: image_size // 8
    assert locate(name) == path


def test_npz_one_split_pool_and_splits(tmp_path, name):
    rng = np.random.default_rng(1)
    x, y = _images(rng, 30), rng.integers(0, 3, 30)
    path = tmp_path / "one.npz"
    np.savez(path, x=x.transpose(0, 2, 3, 1), y=y)
    files = _files(path, classes=4, flip=True, crop_pad=3)

    data = cfglib.build(DataConfig, {"dataset": name, "files": files})
    info = dataset_info(name)
    assert info.sizes == (30, 0) and info.num_classes == 4 and info.flip and info.crop_pad == 3
    train, test = load_splits(name)
    assert np.array_equal(train.images.numpy(), x) and test.n == 0
    pool = make_pool(name, seed=0, splits=data.splits)
    assert pool.n == 30 and pool.sample_ids.tolist() == list(range(30))
    assert np.array_equal(pool.labels.numpy(), y)
    sub = make_pool(name, pool_size=10, seed=2, splits="train")
    assert np.array_equal(sub.images.numpy(), x[sub.sample_ids.numpy()])

    with pytest.raises(ValueError, match="data.splits 'test'.*one split"):
        DataConfig(dataset=name, files=FilesConfig(**files), splits="test")
    with pytest.raises(ValueError, match="data.pool_size must be at most 30"):
        DataConfig(dataset=name, files=FilesConfig(**files), pool_size=31)


def test_run_config_builds_round_trips_and_takes_generic_defaults(tmp_path, name, monkeypatch):
    rng = np.random.default_rng(2)
    xtr, ytr, xte, yte = _two_split(rng, s=16)
    np.savez(tmp_path / "d.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    monkeypatch.chdir(tmp_path)  # a relative path is made absolute, so it means the same in a worker
    raw = {"data": {"dataset": name, "pool_size": 50, "files": {"format": "npz", "path": "d.npz", "eps": 0.05}}}

    run = RunConfig.from_dict(raw)
    assert run.data.files.path == str(tmp_path / "d.npz")
    assert (run.train.epochs, run.train.batch_size) == (GENERIC_DEFAULTS["epochs"], GENERIC_DEFAULTS["batch_size"])
    assert run.attack.eps == 0.05 and run.eval.attack.eps == 0.05
    again = RunConfig.from_dict(run.to_dict())  # registration again: a no-op for the same files
    assert again == run and again.to_dict() == run.to_dict()
    assert cfglib.build(DataConfig, cfglib.to_dict(run.data)) == run.data
    assert "files" in cfglib.json_schema(RunConfig)["properties"]["data"]["properties"]
    assert make_pool(name, pool_size=50, seed=0).n == 50


def test_registration_once_per_name(tmp_path, name):
    rng = np.random.default_rng(3)
    x, y = _images(rng, 12), rng.integers(0, 2, 12)
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", x=x, y=y)
    files = FilesConfig(**_files(tmp_path / "a.npz"))
    info = register_files(name, files)
    assert register_files(name, FilesConfig(**_files(tmp_path / "a.npz"))) == info
    assert DATASETS.origin(name).startswith("files ")
    with pytest.raises(ValueError, match="already registered in this process"):
        register_files(name, FilesConfig(**_files(tmp_path / "b.npz")))
    with pytest.raises(ValueError, match="already registered in this process"):
        register_files(name, FilesConfig(**_files(tmp_path / "a.npz", eps=0.1)))
    before = _tree(tmp_path)
    with pytest.raises(ValueError, match="fashion-mnist.*built-in"):
        DataConfig(dataset="fashion-mnist", files=files)
    assert dataset_info("fashion-mnist").num_classes == 10
    for bad in ("a/b", "../x", ".hidden", "", "x" * 65, "a b"):
        with pytest.raises(ValueError, match="data.dataset must name"):
            register_files(bad, files)
    with pytest.raises(ValueError, match="data.root and data.download"):
        DataConfig(dataset=f"{name}-r", files=files, root=str(tmp_path))
    assert _tree(tmp_path) == before


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"eps": None}, "data.files.eps is required"),
        ({"eps": 0.0}, r"data.files.eps must be in \(0, 1\)"),
        ({"eps": 1.5}, r"data.files.eps must be in \(0, 1\)"),
        ({"format": "csv"}, "data.files.format must be one of"),
        ({"path": ""}, "data.files.path must be"),
        ({"layout": "NWHC"}, "data.files.layout must be one of"),
        ({"classes": 1}, r"data.files.classes must be an integer in \[2,"),
        ({"image_size": 0}, "data.files.image_size must be"),
        ({"crop_pad": -1}, "data.files.crop_pad must be"),
        ({"flip": "yes"}, "data.files.flip must be true or false"),
        ({"format": "folder"}, "data.files.image_size is required"),
        ({"format": "folder", "image_size": 8, "channels": 2}, "data.files.channels must be 1"),
    ],
)
def test_files_config_ranges(files, message):
    with pytest.raises(ValueError, match=message):
        FilesConfig(**{"format": "npz", "path": "/x.npz", "eps": 0.03, **files})


def _pickled_open(marker: Path) -> np.ndarray:
    class Opens:  # unpickling it would create `marker`: proof that no code ran
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Opens()
    return arr


def _npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def _write_zip(path: Path, members: dict[str, bytes]) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        for key, data in members.items():
            zf.writestr(key, data)


def _claims_more(path: Path) -> None:
    """An npz whose x header says 1000 images, with the bytes of 10."""
    real = _npy(_u8(10, 3, 8, 8))
    forged = real.replace(b"(10, 3, 8, 8)", b"(1000, 3, 8, 8)")[: len(real)]  # stays one header length
    assert forged != real
    _write_zip(path, {"x.npy": forged, "y.npy": _npy(np.zeros(10, dtype=np.int64))})


def _truncate(path: Path, keep) -> None:
    path.write_bytes(path.read_bytes()[: keep(path.stat().st_size)])


def _u8(*shape: int) -> np.ndarray:
    return np.random.default_rng(shape).integers(0, 256, shape, dtype=np.uint8)


X, Y = _u8(10, 3, 8, 8), np.arange(10) % 3  # 10 good images and labels, for the hostile files below
# kind -> (writes the hostile file at p, a regex its error must match)
HOSTILE = {
    "pickle": (lambda p: np.savez(p, x=X, y=_pickled_open(p.parent / "PWNED")), "Python objects.*pickle"),
    "object-images": (lambda p: np.savez(p, x=np.array([None] * 10, dtype=object), y=Y), "Python objects"),
    "truncated": (lambda p: (np.savez_compressed(p, x=X, y=Y), _truncate(p, lambda n: n - 40)), "not a readable"),
    "half": (lambda p: (np.savez(p, x=X, y=Y), _truncate(p, lambda n: n // 2)), "not a readable .npz"),
    "claims-more": (_claims_more, r"member 'x.npy'.*header says \(1000, 3, 8, 8\).*truncated or crafted"),
    "not-zip": (lambda p: p.write_bytes(b"this is not an archive\n" * 50), "not a readable .npz"),
    "plain-npy": (lambda p: p.write_bytes(_npy(X)), "not a readable .npz"),
    "foreign-member": (
        lambda p: _write_zip(p, {"x.npy": _npy(X), "y.npy": _npy(Y), "run.sh": b"rm -rf /"}),
        r"members \['run.sh'\] are not .npy",
    ),
    "float-images": (lambda p: np.savez(p, x=X / 255, y=Y), "images 'x' must be uint8"),
    "float-labels": (lambda p: np.savez(p, x=X, y=Y * 1.0), "labels 'y' must be 1-D integers"),
    "2d-labels": (lambda p: np.savez(p, x=X, y=Y.reshape(5, 2)), "labels 'y' must be 1-D integers"),
    "negative-label": (lambda p: np.savez(p, x=X, y=np.r_[Y[:-1], -1]), r"labels span \[-1, "),
    "n-mismatch": (lambda p: np.savez(p, x=X, y=Y[:9]), "10 images in 'x' but 9 labels"),
    "test-n-mismatch": (lambda p: np.savez(p, x_train=X, y_train=Y, x_test=X, y_test=Y[:3]), "in 'x_test' but 3"),
    "not-square": (lambda p: np.savez(p, x=_u8(10, 8, 9, 3), y=Y), r"neither .* H == W"),
    "not-square-nchw": (lambda p: np.savez(p, x=_u8(10, 3, 8, 9), y=Y), r"neither .* H == W"),
    "ambiguous": (lambda p: np.savez(p, x=_u8(10, 3, 3, 3), y=Y), "could be NHWC or NCHW; set data.files.layout"),
    "unknown-key": (lambda p: np.savez(p, x=X, y=Y, z=Y), r"unknown arrays \['z'\]; allowed: x, x_test"),
    "missing-key": (lambda p: np.savez(p, x_train=X, y_train=Y), r"\['x_train', 'y_train'\]; expected x_train, "),
    "test-shape": (lambda p: np.savez(p, x_train=X, y_train=Y, x_test=_u8(10, 3, 6, 6), y_test=Y), "'x_test' ima"),
    "one-class": (lambda p: np.savez(p, x=X, y=Y * 0), "at least 2 classes"),
    "huge-label": (lambda p: np.savez(p, x=X, y=np.r_[Y[:-1], 10**9]), r"\[0, 1000000000\]; at most 100000 classes"),
}


@pytest.mark.parametrize("kind", list(HOSTILE))
def test_npz_hostile_files_refused_naming_the_file(tmp_path, name, kind):
    path = tmp_path / "data" / "bad.npz"
    path.parent.mkdir()
    write, message = HOSTILE[kind]
    write(path)
    before = _tree(tmp_path)
    raw = {"data": {"dataset": name, "files": _files(path)}}
    with pytest.raises(DataFileError, match=re.escape(str(path))) as err:
        RunConfig.from_dict(raw)
    assert re.search(message, str(err.value)), str(err.value)
    assert name not in DATASETS
    assert _tree(tmp_path) == before  # nothing written (and the pickle's payload never ran)
    assert not (tmp_path / "data" / "PWNED").exists()


def test_npz_labels_outside_given_classes_and_checked_facts(tmp_path, name):
    rng = np.random.default_rng(5)
    path = tmp_path / "d.npz"
    np.savez(path, x=_images(rng, 10), y=np.arange(10) % 6)
    for files, message in (
        ({"classes": 5}, r"labels span \[0, 5\], outside \[0, 5\)"),
        ({"image_size": 16}, "image_size 8, but data.files.image_size is 16"),
        ({"channels": 1}, "channels 3, but data.files.channels is 1"),
        ({"layout": "NHWC"}, "images must be square"),  # (10, 3, 8, 8) read as NHWC: H=3, W=8
    ):
        with pytest.raises(DataFileError, match=re.escape(str(path)) + ".*" + message):
            register_files(name, FilesConfig(**_files(path, **files)))
    assert register_files(name, FilesConfig(**_files(path, layout="NCHW"))).num_classes == 6


def test_npz_missing_and_changed_files(tmp_path, name):
    rng = np.random.default_rng(6)
    path = tmp_path / "d.npz"
    with pytest.raises(DataFileError, match=f"data.files.path: {re.escape(str(path))} is not an existing file"):
        DataConfig(dataset=name, files=FilesConfig(**_files(path)))
    np.savez(path, x=_images(rng, 10), y=np.arange(10) % 2)
    DataConfig(dataset=name, files=FilesConfig(**_files(path)))
    os.rename(path, tmp_path / "gone.npz")
    assert locate(name) is None
    with pytest.raises(DatasetNotFoundError, match=re.escape(str(path))):
        load_splits(name)
    np.savez(path, x=_images(rng, 12), y=np.arange(12) % 2)  # back, but other data
    with pytest.raises(DataFileError, match="changed after dataset .* was registered"):
        load_splits(name)


def _write_image(path: Path, rng, size: tuple[int, int], mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(path)


def _folder(root: Path, rng, classes=("cat", "dog", "emu"), per_class=3) -> None:
    for i, cls in enumerate(classes):
        for j in range(per_class):
            suffix = (".png", ".jpg", ".bmp")[(i + j) % 3]
            _write_image(root / cls / f"img{j}{suffix}", rng, (9 + 3 * j, 7 + 2 * i), "L" if j == 1 else "RGB")


def _reference(root: Path, size: int, channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's own decode + convert + bilinear resize of every image, in class-then-name order."""
    images, labels = [], []
    for label, cls in enumerate(sorted(p.name for p in root.iterdir())):
        for f in sorted(p for p in (root / cls).iterdir() if not p.name.startswith(".")):
            im = Image.open(f).convert("L" if channels == 1 else "RGB").resize((size, size), Image.BILINEAR)
            a = np.asarray(im)
            images.append(a[None] if channels == 1 else a.transpose(2, 0, 1))
            labels.append(label)
    return np.stack(images), np.array(labels)


def _folder_files(root: Path, **kw) -> dict:
    return {"format": "folder", "path": str(root), "eps": 0.03, "image_size": 8, **kw}


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_one_split_equals_pillow_and_is_decoded_once(tmp_path, name, channels, monkeypatch):
    root = tmp_path / "pets"
    _folder(root, np.random.default_rng(7))
    (root / "cat" / ".DS_Store").write_bytes(b"\0junk")  # hidden: ignored
    cache = tmp_path / "cache"
    monkeypatch.setenv("DEMEM_FOLDER_CACHE", str(cache))
    files = _folder_files(root, channels=channels, flip=True)

    RunConfig.from_dict({"data": {"dataset": name, "files": files}})
    x_ref, y_ref = _reference(root, 8, channels)
    train, test = load_splits(name)
    assert np.array_equal(train.images.numpy(), x_ref) and np.array_equal(train.labels.numpy(), y_ref)
    assert test.n == 0
    info = dataset_info(name)
    assert (info.channels, info.image_size, info.num_classes, info.sizes) == (channels, 8, 3, (9, 0))
    scaled = x_ref.astype(np.float64) / 255
    np.testing.assert_allclose(info.mean, scaled.mean(axis=(0, 2, 3)), rtol=0, atol=1e-12)
    np.testing.assert_allclose(info.std, scaled.std(axis=(0, 2, 3)), rtol=0, atol=1e-12)

    with pytest.raises(DataFileError, match="pets: 3 class folder.*classes = 2"):  # refused before decoding
        register_files(f"{name}-c", FilesConfig(**{**files, "classes": 2}))
    (written,) = cache.iterdir()
    stamp = written.stat().st_mtime_ns
    with np.load(written, allow_pickle=False) as z:
        assert z["classes"].tolist() == ["cat", "dog", "emu"]

    def no_decoding(*args):
        raise AssertionError("decoded again")

    monkeypatch.setattr(folderlib, "decode_image", no_decoding)
    register_files(f"{name}-again", FilesConfig(**files))  # a fresh registration reads the cache
    train2, _ = load_splits(f"{name}-again")
    assert np.array_equal(train2.images.numpy(), x_ref)
    assert [p.stat().st_mtime_ns for p in cache.iterdir()] == [stamp]


def test_folder_two_splits_progress_and_changed_file(tmp_path, name, monkeypatch, capsys):
    rng = np.random.default_rng(8)
    root = tmp_path / "ds"
    _folder(root / "train", rng, per_class=3)
    _folder(root / "test", rng, per_class=2)
    monkeypatch.setattr(folderlib, "PROGRESS_EVERY", 4)
    register_files(name, FilesConfig(**_folder_files(root)))
    err = capsys.readouterr().err
    assert re.search(r"decoding .*ds: 4/15 images", err) and "12/15" in err
    train, test = load_splits(name)
    for split, got in (("train", train), ("test", test)):
        x_ref, y_ref = _reference(root / split, 8, 3)
        assert np.array_equal(got.images.numpy(), x_ref) and np.array_equal(got.labels.numpy(), y_ref)
    assert dataset_info(name).sizes == (9, 6)
    assert len(list((tmp_path / "home" / ".cache" / "demem" / "folders").iterdir())) == 1
    _write_image(root / "test" / "emu" / "img9.png", rng, (5, 5))  # one more test image
    with pytest.raises(DataFileError, match="changed after dataset"):
        load_splits(name)


def _png(path: Path, size: int = 8) -> None:
    _write_image(path, np.random.default_rng(size), (size, size))


# kind -> (breaks a good folder `r` (with `o` a folder outside it), a regex its error must match)
BAD_FOLDERS = {
    "text-file": (lambda r, o: (r / "dog" / "notes.txt").write_text("hi"), r"ds/dog/notes.txt \(not an image file"),
    "corrupt-png": (
        lambda r, o: (r / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(200))),
        r"ds/dog/broken.png \(cannot be decoded",
    ),
    "truncated-png": (
        lambda r, o: (r / "emu" / "cut.png").write_bytes((r / "cat" / "img0.png").read_bytes()[:60]),
        r"ds/emu/cut.png \(cannot be decoded",
    ),
    "many-bad": (
        lambda r, o: [(r / "cat" / f"n{i:02d}.txt").write_text("x") for i in range(12)],
        r"12 file\(s\) that are not usable images.*n09.txt.*\.\.\. and 2 more",
    ),
    "loose-file": (lambda r, o: _png(r / "stray.png"), r"ds/stray.png \(not in a class folder"),
    "empty-class": (lambda r, o: (r / "yak").mkdir(), "ds/yak: class folder holds no images"),
    "link-out": (
        lambda r, o: (_png(o / "secret.png"), (r / "cat" / "link.png").symlink_to(o / "secret.png")),
        "ds/cat/link.png: a link to .* outside the dataset folder",
    ),
    "class-link-out": (
        lambda r, o: (_png(o / "owl" / "a.png"), (r / "owl").symlink_to(o / "owl")),
        "ds/owl: a link to .* outside the dataset folder",
    ),
    "huge-image": (lambda r, o: _png(r / "emu" / "big.png", 300), r"big.png \(cannot be decoded: ValueError: 300x300"),
    "train-without-test": (lambda r, o: _folder(r / "train", np.random.default_rng(0)), "either train/<class>/"),
    "one-class": (lambda r, o: [shutil.rmtree(r / c) for c in ("cat", "dog")], "ds: 1 class folder"),
}


@pytest.mark.parametrize("kind", list(BAD_FOLDERS))
def test_folder_problems_refused_naming_the_files(tmp_path, name, kind, monkeypatch):
    monkeypatch.setattr(folderlib, "MAX_IMAGE_PIXELS", 200 * 200)
    root = tmp_path / "ds"
    _folder(root, np.random.default_rng(9))
    breaks, message = BAD_FOLDERS[kind]
    breaks(root, tmp_path / "elsewhere")
    before = _tree(tmp_path)
    with pytest.raises(DataFileError) as err:
        RunConfig.from_dict({"data": {"dataset": name, "files": _folder_files(root)}})
    assert re.search(message, str(err.value), re.S), str(err.value)
    assert name not in DATASETS
    assert _tree(tmp_path) == before  # no cache written on refusal


def test_folder_test_classes_must_be_train_classes(tmp_path, name):
    rng = np.random.default_rng(10)
    root = tmp_path / "ds"
    _folder(root / "train", rng, classes=("a", "b", "c"))
    _folder(root / "test", rng, classes=("a", "b", "d"))
    before = _tree(tmp_path)
    with pytest.raises(DataFileError, match=r"test classes must be the train classes; only in train: \['c'\], "
                                            r"only in test: \['d'\]"):  # fmt: skip
        register_files(name, FilesConfig(**_folder_files(root)))
    assert _tree(tmp_path) == before


# The example of the README's "Datasets from files", as written there.
README_SPEC = readme_blocks("### Datasets from files", "yaml")[0]


def test_readme_example_validates(tmp_path):
    from orchestrator.spec import load_spec
    from orchestrator.spec.schema import spec_json_schema

    rng = np.random.default_rng(12)
    x_train, y_train = rng.integers(0, 256, (160, 28, 28, 1), dtype=np.uint8), rng.integers(0, 2, 160)
    x_test, y_test = rng.integers(0, 256, (40, 28, 28, 1), dtype=np.uint8), rng.integers(0, 2, 40)
    np.savez(tmp_path / "xrays.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    spec_file = tmp_path / "xrays.yaml"
    spec_file.write_text(README_SPEC.replace("/data", str(tmp_path)).replace("my-xrays", "my-xrays-readme"))
    plan = load_spec(spec_file)  # reads the data as the trials will
    assert [g.run["data"]["files"]["path"] for g in plan.groups()] == [str(tmp_path / "xrays.npz")] * 2
    run = RunConfig.from_dict(yaml.safe_load(spec_file.read_text())["base"])
    assert dataset_info("my-xrays-readme").sizes == (160, 40) and run.attack.eps == 0.0314
    assert "files" in spec_json_schema()["properties"]["base"]["anyOf"][0]["properties"]["data"]["properties"]


def test_one_epoch_end_to_end(tmp_path, name):
    from demem.runner import train_run

    rng = np.random.default_rng(13)
    path = tmp_path / "tiny.npz"
    np.savez(path, x=rng.integers(0, 256, (64, 12, 12, 3), dtype=np.uint8), y=rng.integers(0, 3, 64))
    run = RunConfig.from_dict(
        {
            "data": {"dataset": name, "files": _files(path, flip=True)},
            "train": {"epochs": 1, "batch_size": 16},
            "method": {"name": "pgd_at"},
            "attack": {"steps": 1},
            "eval": {"attack": {"steps": 1}, "adversarial": None, "boundary": None},
        }
    )
    start = time.perf_counter()
    metrics = train_run(run, tmp_path / "run", "cpu", log=lambda _: None)
    assert time.perf_counter() - start < 60
    assert (tmp_path / "run" / "metrics.json").is_file() and metrics
