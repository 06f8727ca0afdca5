"""What one trained model leaves on disk, written atomically, and how to read it back: the on-disk
format only (the lifecycle that writes it is `demem.runner`).

A run directory (the `--out` of `demem train`, or a trial's artifact directory) holds:
    config.json    the resolved RunConfig + provenance (package version, pool fingerprint, schema)
    checkpoint.pt  the TrainState of the last finished epoch (resumable)
    keep.npy       (N,) bool, this model's row of the group's keep mask
    samples.npz    per-sample signals on the whole pool (see demem.privacy.signals) + keep
    metrics.json   held-out accuracy, final training metrics, per-epoch history
A group directory holds one run directory per model; `demem audit` reads it with `load_group`.
"""

from __future__ import annotations

import io
import json
import platform
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from demem import __version__, names
from demem.device import native_bf16
from demem.io import atomic_path, write_json, write_npy, write_npz

SCHEMA_VERSION = 1
CONFIG, KEEP, SAMPLES, METRICS = "config.json", "keep.npy", "samples.npz", "metrics.json"
CHECKPOINT = "checkpoint.pt"


def provenance(state) -> dict[str, Any]:
    """Facts about a run that are not its config: versions, pool, device."""
    return {
        "demem_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "pool_fingerprint": state.pool.fingerprint(),
        "pool_size": state.pool.n,
        "n_train": int(state.keep.sum()),
        "device": str(state.device),
        "precision": state.run.train.precision,  # as resolved: "fp32" or "bf16"
        "native_bf16": native_bf16(state.device),
        "python": platform.python_version(),
    }


def start_run(state, out: Path) -> None:
    """Write config.json and keep.npy before training starts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, {"run": state.run.to_dict(), **provenance(state)})
    write_npy(out / KEEP, state.keep)


def write_checkpoint(state, out: str | Path) -> Path:
    """Write the state's `checkpoint.pt` into `out` atomically (temp file + rename)."""
    path = Path(out) / CHECKPOINT
    buf = io.BytesIO()  # serialised in memory first: a full disk then fails as OSError(ENOSPC) on
    torch.save(state.state_dict(), buf)  # the write, not as an opaque error of torch's zip writer
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())
    return path


def read_checkpoint(state, out: str | Path) -> None:
    """Continue `state` from `checkpoint.pt` in `out`. The file is read with `weights_only=True`
    (tensors and plain containers only: a crafted file runs no code).

    Raises:
        ValueError: naming the file, when it is truncated, not a checkpoint, refused by the
            restricted reader, or written by another run or pool. The state may then be partly
            overwritten: build a fresh one with `demem.train.prepare`.
    """
    path = Path(out) / CHECKPOINT
    try:
        sd = torch.load(path, map_location=state.device, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or refused by weights_only
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ValueError(f"{path}: not a readable demem checkpoint ({type(e).__name__}: {first})") from None
    if not isinstance(sd, dict) or sd.get("format") != 1:
        raise ValueError(f"{path}: not a demem checkpoint (no format 1 record)")
    try:
        state.load_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: the checkpoint does not fit this run ({type(e).__name__}: {e})") from None


def finish_run(
    state,
    out: Path,
    heldout: dict[str, Any],
    stats: dict[str, np.ndarray],
    *,
    train_seconds: float | None = None,
    eval_seconds: float | None = None,
) -> dict[str, Any]:
    """Write a trained state's samples.npz (`stats`, the per-sample signals) and metrics.json
    (`heldout`, the held-out accuracies, plus the training record); return the metrics."""
    out = Path(out)
    run = state.run
    write_npz(out / SAMPLES, keep=state.keep, **stats)
    last = state.history[-1] if state.history else {}
    metrics = {
        **provenance(state),
        **heldout,
        names.TRAIN_LOSS: last.get(names.TRAIN_LOSS),
        names.TRAIN_ACC: last.get(names.TRAIN_ACC),
        names.EPOCHS_DONE: state.epoch,
        names.TRAIN_SECONDS: train_seconds,
        names.EVAL_SECONDS: eval_seconds,
        "seed": run.seed,
        "model_index": run.model_index,
        "history": state.history,
        names.STATUS: names.DONE,
        "defence": run.defence,
    }
    if state.dp is not None:
        metrics.update(
            {names.EPSILON: state.dp.epsilon()},
            delta=state.dp.delta,
            noise_multiplier=state.dp.noise_multiplier,
            max_grad_norm=run.dp.max_grad_norm,
            sample_rate=state.dp.sample_rate,
            accountant=run.dp.accountant,
        )
    write_json(out / METRICS, metrics)
    return metrics


@dataclass(frozen=True)
class GroupData:
    """The per-sample statistics of a group's models, stacked.

    Attributes:
        dirs: run directory of each model, sorted by model_index.
        model_index: (M,) model indices.
        signals: name -> (M, N, K) arrays: phi, loss, entropy, mentropy, correct over the K clean
            queries, and what else the models recorded (adv_* and boundary_* as (M, N, 1)).
        keep: (M, N) bool.
        labels: (N,) int64; sample_ids: (N,) int64.
        run: the first model's run config dict (the group's config, up to seed/model_index).
        metrics: each model's metrics.json.
    """

    dirs: list[Path]
    model_index: np.ndarray
    signals: dict[str, np.ndarray]
    keep: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray
    run: dict[str, Any]
    pool_fingerprint: str
    metrics: list[dict[str, Any]]

    @property
    def n_models(self) -> int:
        return len(self.dirs)


# What samples.npz holds besides the per-sample signals.
_NOT_SIGNALS = {"keep", "label", "sample_id"}


# Keys that differ between the models of one group by construction, or say only where data live:
# what does NOT identify a group. The one list; the orchestrator's group ids leave out the same keys.
PER_MODEL_KEYS = (("seed",), ("model_index",), ("data", "root"), ("data", "download"))


def group_key(run: dict[str, Any]) -> dict[str, Any]:
    """The run config without the keys in which a group's models may differ (a copy)."""
    out = json.loads(json.dumps(run))
    for path in PER_MODEL_KEYS:
        d = out
        for k in path[:-1]:
            d = d.get(k, {})
        d.pop(path[-1], None)
    return out


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted(set(a) | set(b))
        return [d for k in keys for d in _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")]
    return [] if a == b else [prefix.rstrip(".")]


class GroupError(ValueError):
    """The directory does not hold one consistent, complete group."""


def load_group(directory: str | Path, *, seed: int | None = None, allow_partial: bool = False) -> GroupData:
    """Read every run directory under `directory` and check they form one group.

    Raises GroupError when: no run is found; a run has not finished (no samples.npz); configs
    differ beyond seed/model_index; pools differ; models of several seeds are mixed (pick one with
    `seed`); a model index appears twice; models are missing (unless `allow_partial`); or a keep row
    does not match the group's keep mask.
    """
    from demem.membership import keep_row

    directory = Path(directory)
    configs = sorted(directory.rglob(CONFIG))
    if not configs:
        raise GroupError(f"{directory}: no model directories (no {CONFIG} found below it)")
    runs = []
    for cfg_path in configs:
        cfg = read_json_file(cfg_path)
        if "run" not in cfg:
            continue  # some other config.json
        if seed is not None and cfg["run"]["seed"] != seed:
            continue
        runs.append((cfg_path.parent, cfg))
    if not runs:
        raise GroupError(f"{directory}: no demem runs" + (f" with seed {seed}" if seed is not None else ""))
    unfinished = [str(d) for d, _ in runs if not (d / SAMPLES).exists()]
    if unfinished:
        raise GroupError(f"{len(unfinished)} model(s) have not finished (no {SAMPLES}): {', '.join(unfinished[:5])}")
    seeds = sorted({c["run"]["seed"] for _, c in runs})
    if len(seeds) > 1:
        raise GroupError(f"{directory}: models from several seeds {seeds}; audit one at a time with --seed")
    ref_dir, ref = runs[0]
    ref_key = group_key(ref["run"])
    for d, c in runs[1:]:
        diff = _diff_keys(ref_key, group_key(c["run"]))
        if diff:
            raise GroupError(f"{d} and {ref_dir} are not from the same group: they differ in {', '.join(diff)}")
        if c["pool_fingerprint"] != ref["pool_fingerprint"]:
            raise GroupError(f"{d} and {ref_dir} were trained on different pools")
    runs.sort(key=lambda r: r[1]["run"]["model_index"])
    idx = [c["run"]["model_index"] for _, c in runs]
    dup = sorted({i for i in idx if idx.count(i) > 1})
    if dup:
        raise GroupError(f"model_index {dup} appear(s) more than once under {directory}")
    n_models = ref["run"]["n_models"]
    missing = sorted(set(range(n_models)) - set(idx))
    if missing and not allow_partial:
        raise GroupError(
            f"the group has n_models={n_models} but {len(missing)} are missing "
            f"(model_index {missing[:10]}); finish them or pass --allow-partial"
        )
    signals: dict[str, list[np.ndarray]] = {}
    keeps, labels, ids = [], None, None
    pool_seed = ref["run"]["data"]["pool_seed"]
    for d, c in runs:
        z = read_samples(d)
        keep = z["keep"].astype(bool)
        if labels is None:
            labels, ids = z["label"], z["sample_id"]
        elif not np.array_equal(ids, z["sample_id"]):
            raise GroupError(f"{d}: sample ids differ from {ref_dir}")
        recorded = sorted(set(z) - _NOT_SIGNALS)
        if signals and recorded != sorted(signals):
            raise GroupError(f"{d}: records the signals {recorded}, {ref_dir} {sorted(signals)}")
        for name in recorded:
            value = z[name]
            signals.setdefault(name, []).append(value[:, None] if value.ndim == 1 else value)
        if not np.array_equal(keep, keep_row(n_models, len(keep), pool_seed, c["run"]["model_index"])):
            raise GroupError(
                f"{d}: keep row does not match the group's keep mask for model_index {c['run']['model_index']}"
            )
        keeps.append(keep)
    metrics = [read_json_file(d / METRICS) if (d / METRICS).exists() else {} for d, _ in runs]
    return GroupData(
        dirs=[d for d, _ in runs],
        model_index=np.array(idx),
        keep=np.stack(keeps),
        signals={k: np.stack(v) for k, v in signals.items()},
        labels=np.asarray(labels),
        sample_ids=np.asarray(ids),
        run=ref["run"],
        pool_fingerprint=ref["pool_fingerprint"],
        metrics=metrics,
    )


def read_json_file(path: str | Path) -> Any:
    """A JSON file of a run directory. Raises GroupError naming the file when it is not UTF-8 JSON."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GroupError(f"{path}: corrupt (not JSON: {e}); retrain that model or restore the file") from None


def read_metrics(out: str | Path) -> dict[str, Any] | None:
    """The metrics of a finished run directory, or None if it has not finished (or its metrics.json
    is unreadable: a run that did not finish writing is trained again)."""
    path = Path(out) / METRICS
    if not path.exists():
        return None
    try:
        metrics = read_json_file(path)
    except GroupError:
        return None
    return metrics if isinstance(metrics, dict) and metrics.get(names.STATUS) == names.DONE else None


def read_samples(out: str | Path) -> dict[str, np.ndarray]:
    """The per-sample statistics (samples.npz) of a finished run directory, as arrays (numpy's
    loader without pickles: a crafted file runs no code). Raises GroupError naming the file when
    it is truncated or not an npz archive."""
    path = Path(out) / SAMPLES
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise GroupError(f"{path}: truncated or corrupt ({type(e).__name__}: {e}); retrain that model") from None
