"""Image folders (one folder per class), decoded once into a cached uint8 array.

    root/<class>/*.png                          one split (every image is a training sample)
    root/train/<class>/*.png, root/test/<class>/...   two splits, with the same classes

Classes are the sorted folder names (label = index). Each image is decoded with Pillow, converted to
grey ("L") or RGB, resized (bilinear) to a square `image_size` and stored, with the labels, as an npz
in ``$DEMEM_FOLDER_CACHE`` (default ``~/.cache/demem/folders``) under a sha256 of the root, every
file's relative path, size and mtime, and the decode settings; a later load with an unchanged folder
reads that file and decodes nothing. The cache file is the only thing written, and only once every
file has decoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from demem.data.sources import DataFileError, pixel_moments
from demem.io import write_npz

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
MAX_FILES = 2_000_000
MAX_IMAGE_PIXELS = 1 << 26  # 64 megapixels per source image: larger ones are refused before decoding
MAX_DECODED_BYTES = 16 << 30  # the cached array: files * channels * image_size**2
MAX_CLASSES = 100_000
PROGRESS_EVERY = 1000  # files decoded between progress lines on stderr
_SHOWN = 10  # bad files named in one error
_CACHE_VERSION = 1  # part of the cache key: bump when the decoding changes


def cache_dir() -> Path:
    value = os.environ.get("DEMEM_FOLDER_CACHE", "").strip()
    return Path(value).expanduser() if value else Path.home() / ".cache" / "demem" / "folders"


@dataclass(frozen=True)
class Listing:
    """The image files of a folder dataset, by split, with their labels.

    Attributes:
        root: the resolved root folder.
        classes: class folder names, sorted; a label is an index into them.
        files: per split ("train", "test"), (relative path, label) pairs; "test" is empty for a one-split folder.
        key: sha256 hex of the root, each file's relative path, size and mtime, and the decode settings.
    """

    root: Path
    classes: tuple[str, ...]
    files: dict[str, list[tuple[str, int]]]
    key: str


def _inside(root: Path, p: Path) -> Path:
    """`p` resolved; DataFileError when it (a symlink) leads outside `root`."""
    target = p.resolve()
    if target != root and root not in target.parents:
        raise DataFileError(f"{p}: a link to {target}, outside the dataset folder {root}; refused")
    return target


def _visible(d: Path) -> list[Path]:
    return sorted(p for p in d.iterdir() if not p.name.startswith("."))


def _list_split(root: Path, split_dir: Path, bad: list[str]) -> dict[str, list[Path]]:
    """Class name -> image files (sorted) of one split folder; problems appended to `bad`."""
    classes: dict[str, list[Path]] = {}
    for entry in _visible(split_dir):
        target = _inside(root, entry)
        if not target.is_dir():
            bad.append(f"{entry} (not in a class folder)")
            continue
        images: list[Path] = []
        before = len(bad)
        for f in _visible(entry):
            real = _inside(root, f)
            if not real.is_file():
                bad.append(f"{f} (a folder inside a class folder)")
            elif f.suffix.lower() not in IMAGE_SUFFIXES:
                bad.append(f"{f} (not an image file: expected {', '.join(IMAGE_SUFFIXES)})")
            else:
                images.append(f)
        if not images and len(bad) == before:
            raise DataFileError(f"{entry}: class folder holds no images")
        classes[entry.name] = images
    if not classes and not bad:
        raise DataFileError(f"{split_dir}: no class folders (expected {split_dir}/<class>/<image>)")
    return classes


def _report(what: str, bad: list[str]) -> None:
    if bad:
        shown = "\n  ".join(bad[:_SHOWN])
        more = f"\n  ... and {len(bad) - _SHOWN} more" if len(bad) > _SHOWN else ""
        raise DataFileError(f"{what}: {len(bad)} file(s) that are not usable images:\n  {shown}{more}")


def list_folder(root: str | Path, image_size: int, channels: int) -> Listing:
    """Walk a dataset folder, checking its layout, without decoding anything.

    Raises:
        DataFileError: naming the folder or the files at fault: non-image files, empty class folders,
            links leaving the folder, test classes that differ from the train classes, too many files.
    """
    given = Path(root)
    if not given.is_dir():
        raise DataFileError(f"{given}: not a folder")
    root = given.resolve()
    top = {p.name for p in _visible(root)}
    bad: list[str] = []
    if top & {"train", "test"}:
        if top != {"train", "test"} or not all(_inside(root, root / s).is_dir() for s in top):
            raise DataFileError(
                f"{root}: holds {sorted(top)[:10]}; a folder dataset is either train/<class>/... and "
                "test/<class>/... (two splits) or <class>/... folders only (one split)"
            )
        by_split = {s: _list_split(root, root / s, bad) for s in ("train", "test")}
        _report(str(root), bad)
        if set(by_split["train"]) != set(by_split["test"]):
            only_train = sorted(set(by_split["train"]) - set(by_split["test"]))[:_SHOWN]
            only_test = sorted(set(by_split["test"]) - set(by_split["train"]))[:_SHOWN]
            raise DataFileError(
                f"{root}: the test classes must be the train classes; only in train: {only_train}, "
                f"only in test: {only_test}"
            )
    else:
        by_split = {"train": _list_split(root, root, bad), "test": {}}
        _report(str(root), bad)
    classes = tuple(sorted(by_split["train"]))
    if len(classes) > MAX_CLASSES:
        raise DataFileError(f"{root}: {len(classes)} class folders, more than {MAX_CLASSES}")
    n = sum(len(v) for split in by_split.values() for v in split.values())
    if n > MAX_FILES:
        raise DataFileError(f"{root}: {n} images, more than the {MAX_FILES} accepted")
    if n * channels * image_size**2 > MAX_DECODED_BYTES:
        raise DataFileError(
            f"{root}: {n} images at {channels}x{image_size}x{image_size} are more than {MAX_DECODED_BYTES} bytes"
        )
    h = hashlib.sha256(json.dumps([_CACHE_VERSION, str(root), image_size, channels]).encode())
    files: dict[str, list[tuple[str, int]]] = {}
    for split, by_class in by_split.items():
        files[split] = []
        for label, name in enumerate(classes):
            for f in by_class.get(name, []):
                st = f.stat()
                rel = f.relative_to(root).as_posix()
                h.update(json.dumps([rel, st.st_size, st.st_mtime_ns]).encode())
                files[split].append((rel, label))
    return Listing(root, classes, files, h.hexdigest())


def decode_image(path: Path, image_size: int, channels: int) -> np.ndarray:
    """One image file as (channels, image_size, image_size) uint8: Pillow's convert, then a bilinear resize.

    Raises:
        ValueError: an image larger than MAX_IMAGE_PIXELS (checked from the header, before decoding).
        Anything Pillow raises for a file it cannot decode.
    """
    from PIL import Image

    with Image.open(path) as im:  # lazy: reads the header only
        if im.size[0] * im.size[1] > MAX_IMAGE_PIXELS:
            raise ValueError(f"{im.size[0]}x{im.size[1]} pixels, more than {MAX_IMAGE_PIXELS}")
        out = im.convert("L" if channels == 1 else "RGB").resize((image_size, image_size), Image.Resampling.BILINEAR)
    array = np.asarray(out, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _decode_all(listing: Listing, image_size: int, channels: int) -> dict[str, np.ndarray]:
    total = sum(len(v) for v in listing.files.values())
    bad: list[str] = []
    arrays: dict[str, np.ndarray] = {}
    done = 0
    for split, files in listing.files.items():
        images = np.zeros((len(files), channels, image_size, image_size), dtype=np.uint8)
        for i, (rel, _) in enumerate(files):
            try:
                images[i] = decode_image(listing.root / rel, image_size, channels)
            except Exception as e:  # noqa: BLE001 - a foreign or crafted file fails in many ways; each is reported
                bad.append(f"{listing.root / rel} (cannot be decoded: {type(e).__name__}: {e})")
            done += 1
            if done % PROGRESS_EVERY == 0:
                print(f"decoding {listing.root}: {done}/{total} images", file=sys.stderr, flush=True)
        arrays[f"x_{split}"] = images
        arrays[f"y_{split}"] = np.array([label for _, label in files], dtype=np.int64)
    _report(str(listing.root), bad)
    return arrays


def decoded(root: str | Path, image_size: int, channels: int) -> Path:
    """The cached npz of a folder dataset, decoding the folder first when it has changed (or is new).

    The npz holds ``x_train``, ``x_test`` (N, C, H, W) uint8, ``y_train``, ``y_test`` (N,) int64,
    ``classes`` (the class names), and ``mean``, ``std`` (per channel, of the train images in [0, 1]).
    """
    listing = list_folder(root, image_size, channels)
    path = cache_dir() / f"{listing.key}.npz"
    if path.is_file():
        return path
    arrays = _decode_all(listing, image_size, channels)
    mean, std = pixel_moments([arrays["x_train"]], channel_axis=1)
    arrays["mean"], arrays["std"] = np.array(mean), np.array(std)
    arrays["classes"] = np.array(listing.classes, dtype=str)
    return write_npz(path, **arrays)
