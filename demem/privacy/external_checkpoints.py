"""Groups of trained weights (state dicts) read into a `GroupData`: demem computes the signals itself,
with the procedure our own runs use (`demem.runner.evaluate_run`: clean queries, adversarial queries
and boundary distances as the eval config asks, held-out natural and robust accuracy on each model's
non-members, the generalization gaps), then the audit runs unchanged.

Two layouts:

    DIR/keep.npy (M, N) bool and DIR/models/<model_index>.pt (or the files named in `models`, one per
        keep row), the state dicts of a registered architecture (built-in or plugin), with the data
        section of a run config saying which pool the keep matrix's columns are (dataset, pool size and
        seed, splits, root): a model trained by anyone on our pool.
    DIR holding our run directories (config.json + keep.npy + model.pt, as `audit.keep_models: true`
        keeps them, or the last checkpoint.pt of `demem train`): a group trained by demem earlier,
        audited with new signals without retraining. Their configs say everything.

Weights are read with `torch.load(weights_only=True)` (tensors and plain containers: a crafted pickle
runs no code), after a size check; a state dict that does not fit the architecture (missing,
unexpected or mis-shaped keys) is refused naming the file and the first such keys. Every file is
checked before any signal is computed.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from demem.artifacts import CHECKPOINT, CONFIG, KEEP, GroupData, group_key, read_json_file
from demem.privacy.external import (
    MAX_MODELS,
    ExternalError,
    check_array,
    check_sizes,
    component,
    external_run,
    inside,
    npy_header,
    read_npy,
)
from demem.runner import WEIGHTS

_SIGNAL_KEYS_NOT = {"sample_id", "label"}
_SHOWN = 5  # keys named in a mismatch message


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else ""


def load_weights(path: Path, model: torch.nn.Module, arch: str) -> dict[str, torch.Tensor]:
    """The state dict in `path` (a bare state dict, or our checkpoint's "model"), checked against
    `model`'s keys and shapes. Raises ExternalError naming the file."""
    expected = model.state_dict()
    budget = 3 * sum(t.numel() * t.element_size() for t in expected.values()) + (16 << 20)  # + optimizer state
    size = path.stat().st_size
    if size > budget:
        raise ExternalError(f"{path}: {size} bytes, far more than a {arch} state dict ({budget} accepted)")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, not a torch file, or refused by weights_only
        raise ExternalError(f"{path}: not a readable state dict ({type(e).__name__}: {_first_line(e)})") from None
    if isinstance(sd, dict) and sd.get("format") == 1 and isinstance(sd.get("model"), dict):
        sd = sd["model"]  # a demem checkpoint.pt
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise ExternalError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shaped = [
        f"{k} {tuple(sd[k].shape)} (the model's {tuple(v.shape)})"
        for k, v in expected.items()
        if k in sd and sd[k].shape != v.shape
    ]
    if missing or unexpected or shaped:
        parts = [
            f"{what} {', '.join(keys[:_SHOWN])}" + (f" (+{len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else "")
            for what, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped", shaped))
            if keys
        ]
        raise ExternalError(f"{path}: the state dict does not fit {arch}: {'; '.join(parts)}")
    return sd


def _from_keep_matrix(root: Path, run_dict: dict[str, Any], models: list[str] | None, seed: int):
    """(runs, weight files, keep rows, dirs) of the keep.npy + models/ layout."""
    from demem.train import RunConfig

    keep_path = inside(root, root / KEEP)
    shape, dtype = npy_header(keep_path)
    check_array(keep_path, shape, dtype, "b", (None, None), "keep")
    m, n = shape
    check_sizes(root, m, n, 1, 2)
    names = [component(x, "model file") for x in models] if models is not None else [f"{i}.pt" for i in range(m)]
    if len(names) != m:
        raise ExternalError(f"{keep_path}: {m} keep rows but {len(names)} model files given")
    models_dir = inside(root, root / "models", directory=True)
    files = [inside(root, models_dir / name) for name in names]
    runs = [RunConfig.from_dict({**run_dict, "n_models": m, "model_index": i, "seed": seed}) for i in range(m)]
    keep = read_npy(keep_path)
    return runs, files, list(keep), files


def _from_run_dirs(root: Path, seed: int | None):
    """(runs, weight files, keep rows, dirs) of a directory of our run directories."""
    from demem.membership import keep_row
    from demem.train import RunConfig

    found = []
    for cfg_path in sorted(root.rglob(CONFIG)):
        d = inside(root, cfg_path.parent, directory=True)
        cfg = read_json_file(inside(root, cfg_path))
        if not isinstance(cfg, dict) or "run" not in cfg or (seed is not None and cfg["run"].get("seed") != seed):
            continue
        found.append((d, cfg))
    if not found:
        raise ExternalError(
            f"{root}: no keep.npy + models/, and no demem run directories"
            + (f" of seed {seed}" if seed is not None else "")
        )
    if len(found) > MAX_MODELS:
        raise ExternalError(f"{root}: {len(found)} models, more than the {MAX_MODELS} accepted")
    seeds = sorted({c["run"].get("seed") for _, c in found})
    if len(seeds) > 1:
        raise ExternalError(f"{root}: models from several seeds {seeds}; pick one with --seed")
    ref_key = group_key(found[0][1]["run"])
    runs, files, keeps, dirs = [], [], [], []
    for d, cfg in sorted(found, key=lambda r: r[1]["run"].get("model_index", 0)):
        if group_key(cfg["run"]) != ref_key:
            raise ExternalError(f"{d} and {found[0][0]} are not from the same group (their configs differ)")
        run = RunConfig.from_dict(cfg["run"])
        weights = d / WEIGHTS if (d / WEIGHTS).exists() else d / CHECKPOINT
        if not weights.exists():
            raise ExternalError(f"{d}: no {WEIGHTS} or {CHECKPOINT} (train with audit.keep_models: true to keep them)")
        keep_path = inside(root, d / KEEP)
        shape, dtype = npy_header(keep_path)
        check_array(keep_path, shape, dtype, "b", (None,), "keep")
        keep = read_npy(keep_path)
        if not np.array_equal(keep, keep_row(run.n_models, len(keep), run.data.pool_seed, run.model_index)):
            raise ExternalError(f"{keep_path}: not the group's keep row for model_index {run.model_index}")
        runs.append(run)
        files.append(inside(root, weights))
        keeps.append(keep)
        dirs.append(d)
    idx = [r.model_index for r in runs]
    if len(set(idx)) != len(idx):
        raise ExternalError(f"{root}: a model_index appears twice: {sorted(idx)}")
    return runs, files, keeps, dirs


def read_checkpoints(
    directory: str | Path,
    *,
    run_dict: dict[str, Any] | None = None,
    models: list[str] | None = None,
    seed: int | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] = lambda _: None,
) -> GroupData:
    """Compute every model's signals from its weights; see the module docstring for the layouts.

    Args:
        run_dict: for keep.npy + models/: the run config's keys (data.*, train.arch, train.norm,
            eval.*) as `demem train` flags give them; the rest get RunConfig's defaults.
        models: for keep.npy + models/: the state-dict files under models/, one per keep row.
        seed: the replicate; for run directories, only that seed's models.

    Raises:
        ExternalError (a ValueError): naming the file, before any signal is computed.
        ValueError: a run config RunConfig refuses; DatasetNotFoundError: the pool's data are absent.
    """
    from demem.models import MODELS
    from demem.runner import evaluate_run
    from demem.train import load_pool, model_for

    root = Path(directory)
    if not root.is_dir():
        raise ExternalError(f"{root}: not a directory")
    device = torch.device(device) if isinstance(device, str) else device
    matrix = (root / KEEP).exists()
    if matrix:
        if run_dict is None or "arch" not in (run_dict.get("train") or {}):
            raise ExternalError(f"{root}: keep.npy + models/ need the architecture (--arch) and the pool's data flags")
        runs, files, keeps, dirs = _from_keep_matrix(root, run_dict, models, 0 if seed is None else seed)
    else:
        if models is not None or run_dict:
            raise ExternalError(
                f"{root}: holds run directories, whose configs give the architecture and data; "
                "drop the --arch / data flags"
            )
        runs, files, keeps, dirs = _from_run_dirs(root, seed)
    arch = runs[0].train.arch
    if arch not in MODELS:
        raise ExternalError(f"unknown architecture {arch!r}; known: {', '.join(MODELS.names())}")
    pool = load_pool(runs[0])
    if pool.n != len(keeps[0]):
        raise ExternalError(
            f"{root}: the keep rows have {len(keeps[0])} columns but the pool ({runs[0].data.dataset}) "
            f"has {pool.n} samples"
        )
    for path, run in zip(files, runs):  # every file checked before any work
        load_weights(path, model_for(run, torch.device("cpu")), arch)
    signals: dict[str, list[np.ndarray]] = {}
    metrics = []
    for j, (path, run) in enumerate(zip(files, runs)):
        model = model_for(run, device)
        model.load_state_dict(load_weights(path, model, arch), strict=True)
        log(f"  signals of model {run.model_index} ({path.name}) ...")
        keep = np.asarray(keeps[j], dtype=bool)
        state = SimpleNamespace(run=run, model=model, pool=pool, device=device, keep=keep, dp=None, train_model=model)
        heldout, stats = evaluate_run(state)
        for name in sorted(set(stats) - _SIGNAL_KEYS_NOT):
            value = stats[name]
            signals.setdefault(name, []).append(value[:, None] if value.ndim == 1 else value)
        metrics.append({**json.loads(json.dumps(heldout)), "model_index": run.model_index, "seed": run.seed})
    keep = np.stack([np.asarray(k, dtype=bool) for k in keeps])
    if matrix:
        ext = external_run("checkpoints", root, keep, seed=runs[0].seed, dataset=runs[0].data.dataset)
        run = {**runs[0].to_dict(), "external": ext["external"]}
    else:
        run = {**runs[0].to_dict(), "external": {"format": "checkpoints", "source": str(root)}}
    return GroupData(
        dirs=list(dirs),
        model_index=np.array([r.model_index for r in runs]),
        signals={k: np.stack(v) for k, v in signals.items()},
        keep=keep,
        labels=pool.labels.numpy().astype(np.int64),
        sample_ids=pool.sample_ids.numpy().astype(np.int64),
        run=run,
        pool_fingerprint=pool.fingerprint(),
        metrics=metrics,
    )
