"""The Tune trainable: one trial trains one model of a group with the plain `demem` loop.

This is the only module that talks to Ray Tune's reporting API (`tune.report`, `tune.Checkpoint`,
`tune.get_checkpoint`), so the next change of that API touches one file.

Trial config (built by `orchestrator.run`):
    experiment, group_id, run_id: names; run: the RunConfig dict of this model;
    artifacts: the run directory to write; cpus: threads for torch; _test_fail: test-only failure
    injection {"mode": "once" | "always", "at_epoch": k}.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from ray import tune

from demem import artifacts
from demem.data import Pool
from demem.train import DataConfig, RunConfig, epochs, load_pool, prepare, resolve_device

FINAL_KEYS = ("natural_acc", "robust_acc_pgd", "robust_acc_aa", "epsilon", "train_loss", "epochs_done")


_POOL: dict[DataConfig, Pool] = {}  # the last pool this worker loaded (Tune reuses worker processes)


def _pool(run: RunConfig) -> Pool:
    if run.data not in _POOL:
        _POOL.clear()
        _POOL[run.data] = load_pool(run)
    return _POOL[run.data]


class InjectedFailure(RuntimeError):
    """Raised by the test-only `_test_fail` hook."""


def _maybe_fail(config: dict[str, Any], epoch: int, out: Path) -> None:
    spec = config.get("_test_fail")
    if not spec or epoch != int(spec.get("at_epoch", 1)):
        return
    if spec.get("mode") == "always":
        raise InjectedFailure(f"injected failure (always) at epoch {epoch}")
    marker = out / ".failed-once"
    if not marker.exists():  # fail the first attempt only; the retry finds the marker
        marker.touch()
        raise InjectedFailure(f"injected failure (once) at epoch {epoch}")


def train_model(config: dict[str, Any]) -> None:
    """Train, checkpoint every epoch, evaluate, write the run directory, report final metrics."""
    # One trial per `cpus` cores: more torch threads than that makes trials fight over cores.
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    run = RunConfig.from_dict(config["run"])  # fail before touching data or a GPU
    out = Path(config["artifacts"])
    base = {"group_id": config["group_id"], "run_id": config["run_id"]}
    done = artifacts.read_metrics(out)
    if done is not None:  # finished before an interruption: report it again, do not retrain
        tune.report({**base, **_final(done), "done": True})
        return
    state = prepare(run, resolve_device("auto"), pool=_pool(run))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            state.load(d)
    artifacts.start_run(state, out)
    t0 = time.perf_counter()
    for metrics in epochs(state):
        _maybe_fail(config, state.epoch, out)
        with tempfile.TemporaryDirectory() as d:
            state.save(d)
            tune.report({**base, **metrics, "done": False}, checkpoint=tune.Checkpoint.from_directory(d))
    final = artifacts.finish_run(state, out, train_seconds=time.perf_counter() - t0)
    tune.report({**base, **_final(final), "epoch": state.epoch, "done": True})


def _final(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in FINAL_KEYS if metrics.get(k) is not None}
