"""What one trained model leaves on disk, written atomically, and how to read it back.

A run directory (the `--out` of `demem train`, or a trial's artifact directory) holds:
    config.json    the resolved RunConfig + provenance (package version, pool fingerprint, schema)
    checkpoint.pt  the TrainState of the last finished epoch (resumable)
    keep.npy       (N,) bool, this model's row of the group's keep mask
    samples.npz    per-sample signals on the whole pool (see demem.privacy.signals) + keep
    metrics.json   held-out accuracy, final training metrics, per-epoch history
A group directory holds one run directory per model; `demem audit` reads it with `load_group`.
"""

from __future__ import annotations

import json
import platform
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demem import __version__
from demem.io import write_json, write_npy, write_npz

SCHEMA_VERSION = 1
CONFIG, KEEP, SAMPLES, METRICS = "config.json", "keep.npy", "samples.npz", "metrics.json"


def provenance(state) -> dict[str, Any]:
    """Facts about a run that are not its config: versions, pool, device."""
    return {
        "demem_version": __version__,
        "schema_version": SCHEMA_VERSION,
        "pool_fingerprint": state.pool.fingerprint(),
        "pool_size": state.pool.n,
        "n_train": int(state.keep.sum()),
        "device": str(state.device),
        "python": platform.python_version(),
    }


def start_run(state, out: Path) -> None:
    """Write config.json and keep.npy before training starts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / CONFIG, {"run": state.run.to_dict(), **provenance(state)})
    write_npy(out / KEEP, state.keep)


def finish_run(state, out: Path, *, train_seconds: float | None = None) -> dict[str, Any]:
    """Evaluate a trained state, write samples.npz and metrics.json, return the metrics."""
    from demem.dp import per_sample_hooks_off
    from demem.evaluate import evaluate_heldout, sample_statistics

    out = Path(out)
    run = state.run
    t0 = time.perf_counter()
    with per_sample_hooks_off(state.train_model if state.dp is not None else None):
        ev = evaluate_heldout(state.model, state.pool, state.keep, run.eval, device=state.device, seed=run.seed)
        stats = sample_statistics(state.model, state.pool, device=state.device, queries=run.eval.queries)
    write_npz(out / SAMPLES, keep=state.keep, **stats)
    last = state.history[-1] if state.history else {}
    metrics = {
        **provenance(state),
        **ev,
        "train_loss": last.get("train_loss"),
        "train_acc": last.get("train_acc"),
        "epochs_done": state.epoch,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - t0,
        "seed": run.seed,
        "model_index": run.model_index,
        "history": state.history,
        "status": "done",
        "defence": run.defence,
    }
    if state.dp is not None:
        metrics.update(
            epsilon=state.dp.epsilon(),
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
        signals: name -> (M, N, K) arrays (phi, loss, entropy, mentropy, correct).
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
        for name in ("phi", "loss", "entropy", "mentropy", "correct"):
            signals.setdefault(name, []).append(z[name])
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
    return metrics if isinstance(metrics, dict) and metrics.get("status") == "done" else None


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
