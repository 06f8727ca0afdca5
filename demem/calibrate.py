"""How long a model takes to train and evaluate on this device, measured, so a plan can state the
cost of a spec before anyone pays for it.

`calibrate(run, device)` times one epoch of the run's training loop (method, attack, DeMem, DP as
configured) and its held-out evaluation on a synthetic pool of the dataset's shape (random pixels
and labels: the cost of a step does not depend on what the pixels show, and no data need be
present). The result, seconds per training sample per epoch and per evaluated sample, is cached
in a JSON file keyed by device and by the settings that change the cost (`cost_key`), and
`estimate_seconds` turns it into the wall time of one model.

Plain PyTorch; no Ray.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from demem.data import Pool, dataset_info
from demem.device import resolve_device
from demem.io import write_json

CACHE_ENV = "DEMEM_CALIBRATION"  # overrides the cache file's path


def cache_path() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "demem" / "calibration.json")


def device_name(device: torch.device) -> str:
    """'cpu (2 threads)' or the CUDA device's name: what a calibration is valid for."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads)"


def cost_key(run: dict[str, Any]) -> str:
    """The settings of a resolved run dict that change the cost of a step: arch, norm, dataset,
    method (and its AWP), training and evaluation attack steps, DP on or off, batch size,
    augmentation and AutoAttack."""
    t, m, e = run["train"], run["method"], run["eval"]
    parts = {
        "arch": t["arch"],
        "norm": t["norm"],
        "dataset": run["data"]["dataset"],
        "method": m["name"],
        "awp": bool(m.get("awp_gamma")),
        "attack_steps": run["attack"]["steps"],
        "eval_steps": e["attack"]["steps"],
        "batch": t["batch_size"],
        "augment": t["augment"],
        "autoattack": e["autoattack"],
        "demem": run["demem"]["lambda"] > 0,
        "adversarial_steps": (e.get("adversarial") or {}).get("steps"),
        "boundary": [(e.get("boundary") or {}).get(k) for k in ("norms", "bisections", "steps")],
    }
    return json.dumps(parts, sort_keys=True)


def _synthetic_pool(dataset: str, n: int, seed: int = 0) -> Pool:
    info = dataset_info(dataset)
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, info.channels, info.image_size, info.image_size), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, info.num_classes, (n,), generator=g)
    return Pool(info=info, images=images, labels=labels, sample_ids=torch.arange(n), seed=0)


def calibrate(run_dict: dict[str, Any], device: torch.device | str = "auto", batches: int = 3) -> dict[str, float]:
    """Time one warm-up and one measured epoch of `batches` batches, and the evaluation of a finished
    run on a pool of twice as many samples (`demem.runner.evaluate_run`: accuracies on both halves,
    every per-sample signal), for the run (a resolved RunConfig dict). Returns {"train_s_per_sample",
    "eval_s_per_sample"}, the latter per pool sample."""
    from demem.runner import evaluate_run
    from demem.train import RunConfig, prepare, train_epoch

    device = resolve_device(device) if isinstance(device, str) else device
    raw = json.loads(json.dumps(run_dict))
    batch = int(raw["train"]["batch_size"])
    n = 2 * batch * batches  # two models: each trains on `batches` full batches
    raw.update(n_models=2, model_index=0, seed=0)
    raw["data"] = {**raw["data"], "pool_size": None, "root": None, "download": False}
    raw["train"] = {**raw["train"], "epochs": 2}
    run = RunConfig.from_dict(raw)
    state = prepare(run, device, pool=_synthetic_pool(run.data.dataset, n))
    train_epoch(state)  # warm-up: allocator, cuDNN autotuning, lazy initialisation
    _sync(device)
    t0 = time.perf_counter()
    train_epoch(state)
    _sync(device)
    train = (time.perf_counter() - t0) / (batch * batches)
    t0 = time.perf_counter()
    evaluate_run(state)  # both halves' accuracies and every per-sample signal, as a finished run does
    _sync(device)
    return {"train_s_per_sample": train, "eval_s_per_sample": (time.perf_counter() - t0) / state.pool.n}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load_cache(path: Path | None = None) -> dict[str, dict[str, dict[str, float]]]:
    """{device name: {cost key: timing}}; {} when absent or unreadable (a cache is only a hint)."""
    path = path or cache_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def store(device: str, key: str, timing: dict[str, float], path: Path | None = None) -> Path:
    path = path or cache_path()
    data = load_cache(path)
    data.setdefault(device, {})[key] = {**timing, "measured_at": time.time()}
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_json(path, data)


def estimate_seconds(run: dict[str, Any], timing: dict[str, float]) -> float:
    """Wall time of one model of `run` (resolved dict): its epochs over half the pool, then its
    evaluation (accuracies on both halves, every per-sample signal on the whole pool)."""
    pool = run["data"]["pool_size"] or dataset_info(run["data"]["dataset"]).available(run["data"]["splits"])
    n_train = pool // 2
    return float(run["train"]["epochs"] * n_train * timing["train_s_per_sample"] + pool * timing["eval_s_per_sample"])


def fmt_hours(seconds: float) -> str:
    """'14 min', '3.2 h', '1,250 h'."""
    if seconds < 7200:
        return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"
    hours = seconds / 3600
    return f"{hours:.1f} h" if hours < 100 else f"{hours:,.0f} h"
