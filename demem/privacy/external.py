"""Groups of models trained elsewhere, read into the same in-memory `GroupData` that
`demem.artifacts.load_group` builds from our run directories, so `run_audit` applies unchanged.

Two layouts of per-model logits on the pool (checkpoints: `demem.privacy.external_checkpoints`):

    mi-lira   the LiRA authors' code (tensorflow/privacy research/mi_lira_2021):
              DIR/y_train.npy                     (N,) int labels
              DIR/<experiment>/keep.npy           (N,) bool, the model's training half
              DIR/<experiment>/logits/<epoch>.npy (N, 1, Q, K) float logits over Q augmented queries
    npz       one DIR/<name>.npz per model: sample_id (N,) int, label (N,) int, logits (N, Q, K) or
              (N, K) float, keep (N,) bool; optionally model_index () int and adv_logits (N, K) float
              (logits on an adversarial query, which give the adv_* signals)

Every signal is `demem.privacy.signals.logit_signals` of the logits, the function our own runs use,
so a file of the logits our models output audits exactly like their run directories. The authors'
score.py statistic, log p_y - log(sum of the other p) per query, is our phi.

Nothing read runs code or is trusted: arrays are read without pickles after their `.npy` headers
were checked (dtype, shape, and that the file holds exactly the bytes the header promises), every
size is bounded (models, samples, queries, classes, cells), files must lie inside DIR once symbolic
links are followed, and every file is checked before any signal is computed. Each refusal is an
`ExternalError` (a ValueError) naming the file.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demem.artifacts import GroupData
from demem.data import npz
from demem.names import N_HELDOUT, NATURAL_ACC, NATURAL_GAP, TRAIN_NATURAL_ACC
from demem.privacy.signals import ADVERSARIAL, SIGNALS, chunks, logit_signals

FORMATS = ("mi-lira", "npz", "checkpoints")
# Bounds on what an external group may claim: far above any published LiRA setup (256 models x 50,000
# CIFAR samples x 18 queries = 2.3e8 cells), low enough that a crafted header cannot exhaust memory.
MAX_MODELS = 4096
MAX_SAMPLES = 2_000_000
MAX_QUERIES = 64
MAX_CLASSES = 1000
MAX_CELLS = 1 << 28  # models x samples x queries: 1 GiB per float32 signal
_FLOAT = "f"
_INT = "iu"
_EPOCH_FILE = re.compile(r"\d{1,12}\.npy")
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


class ExternalError(ValueError):
    """External-group files that cannot be audited (the message names the file and what is wrong)."""


def component(name: str, what: str) -> str:
    """`name` when it is one plain path component (letters, digits, ., _, -; not . or ..)."""
    if not isinstance(name, str) or not _COMPONENT.fullmatch(name) or name in (".", ".."):
        raise ExternalError(f"{what} {name!r} is not a single plain path component (letters, digits, '.', '_', '-')")
    return name


def inside(root: Path, path: Path, *, directory: bool = False) -> Path:
    """`path` once it is known to stay below `root` with every symbolic link followed, and to be a
    regular file (or a directory)."""
    real, base = path.resolve(), root.resolve()
    if real != base and base not in real.parents:
        raise ExternalError(f"{path} leads outside {root} (to {real}); refused")
    if directory and not real.is_dir():
        raise ExternalError(f"{path}: not a directory")
    if not directory and not real.is_file():
        raise ExternalError(f"{path}: missing or not a regular file")
    return real


def npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) from a `.npy` header, once the file is known to hold exactly that much data."""
    try:
        with open(path, "rb") as f:
            shape, _, dtype = npz.read_header(f)
            offset, size = f.tell(), path.stat().st_size
    except (OSError, ValueError, EOFError) as e:
        raise ExternalError(f"{path}: not a readable .npy array ({type(e).__name__}: {e})") from None
    if dtype.hasobject:
        raise ExternalError(f"{path}: holds Python objects (dtype {dtype}), which only a pickle can carry; refused")
    if offset + math.prod(shape) * dtype.itemsize != size:
        raise ExternalError(
            f"{path}: its header says {shape} {dtype} = {math.prod(shape) * dtype.itemsize} bytes of data, but the "
            f"file holds {size - offset} (truncated or crafted)"
        )
    return shape, dtype


def read_npy(path: Path) -> np.ndarray:
    """The array of a `.npy` file whose header `npy_header` checked, read without pickles."""
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ExternalError(f"{path}: cannot be read ({type(e).__name__}: {e})") from None


def check_array(path: Path | str, shape: tuple[int, ...], dtype: np.dtype, kinds: str, want: tuple, what: str) -> None:
    """Refuse an array whose dtype kind is not in `kinds` or whose shape is not `want` (None: any)."""
    names = {"b": "bool", "i": "int", "u": "unsigned int", "f": "float"}
    if dtype.kind not in kinds:
        raise ExternalError(f"{path}: {what} must be {' or '.join(names[k] for k in kinds)}, got dtype {dtype}")
    if len(shape) != len(want) or any(w is not None and s != w for s, w in zip(shape, want)):
        shown = ", ".join("*" if w is None else str(w) for w in want) + ("," if len(want) == 1 else "")
        raise ExternalError(f"{path}: {what} must have shape ({shown}), got {shape}")


def check_sizes(where: Path, m: int, n: int, q: int, k: int) -> None:
    """The group's dimensions against the module's bounds (before anything is read)."""
    for value, cap, what in (
        (m, MAX_MODELS, "models"),
        (n, MAX_SAMPLES, "samples"),
        (q, MAX_QUERIES, "queries"),
        (k, MAX_CLASSES, "classes"),
    ):
        if value > cap:
            raise ExternalError(f"{where}: {value} {what}, more than the {cap} accepted")
    if m * n * q > MAX_CELLS:
        raise ExternalError(f"{where}: {m} models x {n} samples x {q} queries exceed the {MAX_CELLS} cells accepted")
    if k < 2 or n < 1 or q < 1:
        raise ExternalError(f"{where}: needs >= 2 classes, >= 1 sample and >= 1 query, got {k}, {n}, {q}")


def check_labels(path: Path, labels: np.ndarray, k: int) -> np.ndarray:
    if labels.size and (labels.min() < 0 or labels.max() >= k):
        raise ExternalError(
            f"{path}: labels must lie in [0, {k}) for {k}-class logits, got [{labels.min()}, {labels.max()}]"
        )
    return labels.astype(np.int64)


def signals_of_logits(logits: np.ndarray, labels: np.ndarray, where: Path) -> dict[str, np.ndarray]:
    """The membership signals (SIGNALS) of logits (N, Q, K) as (N, Q) arrays (float32; bool for
    correct), exactly as `demem.privacy.signals.pool_signals` records a model's."""
    if not np.isfinite(logits).all():
        raise ExternalError(f"{where}: logits hold NaN or infinite values")
    n, q, k = logits.shape
    out = {name: np.empty((n, q), dtype=bool if name == "correct" else np.float32) for name in SIGNALS}
    y = torch.from_numpy(np.repeat(labels, q))
    native = logits.dtype.newbyteorder("=")  # torch reads native byte order only
    flat = torch.from_numpy(np.ascontiguousarray(logits, dtype=native).reshape(n * q, k))
    rows = max(1, (1 << 24) // (k * k))  # logit_signals holds a (rows, K, K) tensor
    for sl in chunks(n * q, rows):
        for name, value in logit_signals(flat[sl], y[sl]).items():
            out[name].reshape(-1)[sl] = value.numpy()
    return out


def fingerprint(*arrays: np.ndarray) -> str:
    """Short sha256 hex of arrays (little-endian int64, bools packed): equal inputs, equal prints."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.packbits(a, axis=None) if a.dtype == bool else np.asarray(a).astype("<i8", copy=False)
        h.update(a.tobytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


def keep_fingerprint(keep: np.ndarray) -> str:
    """The fingerprint of a keep matrix (M, N): two groups with equal prints have matched rows."""
    return fingerprint(np.asarray(keep, dtype=bool))


def external_run(fmt: str, source: Path, keep: np.ndarray, *, seed: int, dataset: str | None, **info) -> dict:
    """The run dict of an external group: what the audit records as its "group" (the format, source and
    reader's choices; the pool as dataset / size / keep-mask fingerprint in place of a pool seed)."""
    return {
        "external": {"format": fmt, "source": str(source), **info},
        "data": {
            "dataset": dataset or "external",
            "pool_size": int(keep.shape[1]),
            "pool_seed": keep_fingerprint(keep),
        },
        "n_models": int(keep.shape[0]),
        "seed": int(seed),
        "model_index": 0,
    }


def logit_metrics(correct: np.ndarray, keep: np.ndarray, model_index: int, seed: int) -> dict[str, Any]:
    """A model's natural accuracy on its non-members and members (first query) and the gap."""
    held = float(correct[~keep, 0].mean()) if (~keep).any() else float("nan")  # the audit refuses such a group
    train = float(correct[keep, 0].mean()) if keep.any() else float("nan")
    return {
        N_HELDOUT: int((~keep).sum()),
        NATURAL_ACC: held,
        TRAIN_NATURAL_ACC: train,
        NATURAL_GAP: train - held,
        "model_index": int(model_index),
        "seed": int(seed),
    }


def _group(dirs, index, keep, labels, ids, signals, run) -> GroupData:
    keep = np.asarray(keep, dtype=bool)
    stacked = {k: np.stack(v) for k, v in signals.items()}
    metrics = [logit_metrics(stacked["correct"][j], keep[j], index[j], run["seed"]) for j in range(len(dirs))]
    return GroupData(
        dirs=list(dirs),
        model_index=np.asarray(index, dtype=np.int64),
        signals=stacked,
        keep=keep,
        labels=labels,
        sample_ids=ids,
        run=run,
        pool_fingerprint=fingerprint(labels, ids),
        metrics=metrics,
    )


# ---------------------------------------------------------------------------------------------------
# The LiRA authors' layout
# ---------------------------------------------------------------------------------------------------


def _experiments(root: Path, names: list[str] | None) -> list[Path]:
    if names is not None:
        return [inside(root, root / component(n, "experiment"), directory=True) for n in names]
    found = []
    for p in sorted(root.iterdir(), key=lambda p: p.name):
        if p.name.startswith(".") or not p.is_dir():
            continue
        if (p / "keep.npy").exists() or (p / "logits").exists():
            found.append(inside(root, p, directory=True))
    return found


def _epochs(exp: Path, root: Path) -> dict[int, Path]:
    logits = inside(root, exp / "logits", directory=True)
    return {int(f.name[:-4]): f for f in logits.iterdir() if _EPOCH_FILE.fullmatch(f.name)}


def read_mi_lira(
    directory: str | Path,
    *,
    epoch: int | None = None,
    experiments: list[str] | None = None,
    seed: int = 0,
    dataset: str | None = None,
) -> GroupData:
    """The models of a directory in the LiRA authors' layout (see the module docstring).

    Args:
        epoch: the logits file to read; None: the largest epoch every experiment has.
        experiments: subdirectory names to read (default: every one holding keep.npy or logits/, in
            sorted order; model_index is the position).
        seed: the replicate this directory is (recorded; the audit's "seed").
        dataset: the dataset's name, for the summary (default "external").

    Raises:
        ExternalError: naming the file, before any logits are read, for any problem.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ExternalError(f"{root}: not a directory")
    y_path = inside(root, root / "y_train.npy")
    y_shape, y_dtype = npy_header(y_path)
    check_array(y_path, y_shape, y_dtype, _INT, (None,), "y_train")
    n = y_shape[0]
    exps = _experiments(root, experiments)
    if not exps:
        raise ExternalError(f"{root}: no experiment directories (subdirectories with keep.npy and logits/)")
    check_sizes(root, len(exps), n, 1, 2)
    epochs = {e: _epochs(e, root) for e in exps}
    common = set.intersection(*(set(v) for v in epochs.values()))
    if epoch is None:
        if not common:
            raise ExternalError(f"{root}: no logits/<epoch>.npy epoch is present in every experiment")
        epoch = max(common)
    files, shapes = [], set()
    for e in exps:
        if epoch not in epochs[e]:
            raise ExternalError(f"{e}/logits: no logits for epoch {epoch} (has {sorted(epochs[e])[:10]})")
        keep_path = inside(root, e / "keep.npy")
        shape, dtype = npy_header(keep_path)
        check_array(keep_path, shape, dtype, "b", (n,), "keep")
        path = inside(root, epochs[e][epoch])
        shape, dtype = npy_header(path)
        check_array(path, shape, dtype, _FLOAT, (n, 1, None, None), "logits")
        files.append((keep_path, path))
        shapes.add(shape)
    if len(shapes) > 1:
        raise ExternalError(f"{root}: the experiments' logits differ in shape: {sorted(shapes)}")
    _, _, q, k = shapes.pop()
    check_sizes(root, len(exps), n, q, k)
    labels = check_labels(y_path, read_npy(y_path), k)
    keeps, signals = [], {}
    for keep_path, path in files:
        keeps.append(read_npy(keep_path))
        for name, value in signals_of_logits(read_npy(path)[:, 0], labels, path).items():
            signals.setdefault(name, []).append(value)
    run = external_run(
        "mi-lira", root, np.stack(keeps), seed=seed, dataset=dataset, epoch=int(epoch), models=[e.name for e in exps]
    )
    return _group(exps, np.arange(len(exps)), keeps, labels, np.arange(n, dtype=np.int64), signals, run)


# ---------------------------------------------------------------------------------------------------
# Our plain layout: one .npz per model
# ---------------------------------------------------------------------------------------------------

NPZ_KEYS = {"sample_id", "label", "logits", "keep", "model_index", "adv_logits"}


def _npz_members(path: Path) -> dict[str, npz.Member]:
    try:
        found = npz.members(path, NPZ_KEYS, max_bytes=MAX_CELLS * 8)
    except ValueError as e:
        raise ExternalError(str(e)) from None
    missing = sorted({"sample_id", "label", "logits", "keep"} - set(found))
    if missing:
        raise ExternalError(f"{path}: lacks {', '.join(missing)} (an npz model holds {', '.join(sorted(NPZ_KEYS))})")
    logits = found["logits"]
    n = logits.shape[0] if logits.shape else 0
    check_array(path, logits.shape, logits.dtype, _FLOAT, (n, None, None)[: max(2, len(logits.shape))], "logits")
    for key, kinds, want in (
        ("sample_id", _INT, (n,)),
        ("label", _INT, (n,)),
        ("keep", "b", (n,)),
        ("model_index", _INT, ()),
        ("adv_logits", _FLOAT, (n, logits.shape[-1])),
    ):
        if key in found:
            check_array(path, found[key].shape, found[key].dtype, kinds, want, key)
    return found


def _nqk(shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(N, Q, K) of a logits shape (N, Q, K) or (N, K)."""
    return shape if len(shape) == 3 else (shape[0], 1, shape[1])


def _read(path: Path, member: npz.Member) -> np.ndarray:
    try:
        return npz.read(path, member)
    except ValueError as e:
        raise ExternalError(str(e)) from None


def read_npz_models(directory: str | Path, *, seed: int = 0, dataset: str | None = None) -> GroupData:
    """The models of a directory of per-model `.npz` files (see the module docstring), sorted by
    model_index where every file has one, else by file name.

    Raises:
        ExternalError: naming the file, before any logits are read, when a file is not such an
            archive, the models disagree on the samples (ids, labels, order) or the shapes, or a
            model index repeats.
    """
    root = Path(directory)
    if not root.is_dir():
        raise ExternalError(f"{root}: not a directory")
    files = [inside(root, p) for p in sorted(root.glob("*.npz"), key=lambda p: p.name)]
    if not files:
        raise ExternalError(f"{root}: no .npz model files")
    if len(files) > MAX_MODELS:
        raise ExternalError(f"{root}: {len(files)} models, more than the {MAX_MODELS} accepted")
    heads = [_npz_members(p) for p in files]
    dims = {
        (h["logits"].shape if len(h["logits"].shape) == 3 else (*h["logits"].shape[:1], 1, h["logits"].shape[1]))
        for h in heads
    }
    if len(dims) > 1:
        raise ExternalError(f"{root}: the models' logits differ in shape: {sorted(dims)}")
    n, q, k = dims.pop()
    check_sizes(root, len(files), n, q, k)
    adv = {("adv_logits" in h) for h in heads}
    if len(adv) > 1:
        raise ExternalError(f"{root}: some models have adv_logits and some do not; give them for every model or none")
    ids = labels = None
    index, keeps, signals = [], [], {}
    for j, (path, h) in enumerate(zip(files, heads)):
        sid, lab = _read(path, h["sample_id"]).astype(np.int64), _read(path, h["label"]).astype(np.int64)
        if ids is None:
            if len(np.unique(sid)) != n:
                raise ExternalError(f"{path}: sample_id repeats a sample")
            ids, labels = sid, check_labels(path, lab, k)
        elif not (np.array_equal(ids, sid) and np.array_equal(labels, lab)):
            raise ExternalError(
                f"{path}: sample_id / label differ from {files[0]} (every model lists the same samples in the "
                "same order)"
            )
        index.append(int(_read(path, h["model_index"])) if "model_index" in h else j)
        keeps.append(_read(path, h["keep"]))
    if len(set(index)) != len(index):
        raise ExternalError(f"{root}: a model_index appears twice: {sorted(index)}")
    order = np.argsort(index, kind="stable") if all("model_index" in h for h in heads) else np.arange(len(files))
    for j in order:
        path, h = files[j], heads[j]
        logits = _read(path, h["logits"])
        for name, value in signals_of_logits(logits.reshape(n, q, k), labels, path).items():
            signals.setdefault(name, []).append(value)
        if "adv_logits" in h:
            for name, value in signals_of_logits(_read(path, h["adv_logits"])[:, None], labels, path).items():
                signals.setdefault(ADVERSARIAL + name, []).append(value)
    keeps = [keeps[j] for j in order]
    run = external_run("npz", root, np.stack(keeps), seed=seed, dataset=dataset, models=[files[j].name for j in order])
    return _group([files[j] for j in order], [index[j] for j in order], keeps, labels, ids, signals, run)


def detect_format(directory: Path) -> str:
    """The layout of an audit's input directory: the LiRA authors' (y_train.npy), a keep matrix with
    state dicts (keep.npy + models/), per-model .npz files, else our run directories ("runs")."""
    if (directory / "y_train.npy").exists():
        return "mi-lira"
    if (directory / "keep.npy").exists() and (directory / "models").is_dir():
        return "checkpoints"
    if any(directory.glob("*.npz")) and not any(directory.rglob("config.json")):
        return "npz"
    return "runs"


def external_record(group: GroupData, *, label: str, seed: int) -> dict[str, Any]:
    """What audit.json records about an external group, for `demem summarize` to group it: format,
    label, seed (the replicate), source, the keep masks' fingerprint and each model's accuracies."""
    ext = group.run.get("external", {})
    return {
        **ext,
        "label": label,
        "seed": int(seed),
        "dataset": group.run["data"]["dataset"],
        "arch": (group.run.get("train") or {}).get("arch", "external"),
        "keep_fingerprint": keep_fingerprint(group.keep),
        "models": [{"model_index": int(i), **m} for i, m in zip(group.model_index, group.metrics)],
    }
