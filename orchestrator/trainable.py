"""The Tune trainable: one trial trains one model of a group with the plain `demem` loop.

This is the only module that talks to Ray Tune's reporting API (`tune.report`), so the next change
of that API touches one file.

Checkpoints are ours, not Tune's: after every epoch the trial writes `checkpoint.pt` into its own
run directory (atomically; read back with torch's weights-only loader, so a crafted file runs no
code), and a trial that finds one there continues from it. A Tune retry after a crash and a
`demem resume` by a later driver both continue the same way, without reading Tune's pickled state.
The checkpoint is removed once the run's metrics are written.

On object storage (orchestrator.storage) the run directory is a local mirror: the trial pulls it
before it starts (a checkpoint pushed from another node), pushes the checkpoint after every epoch and
the finished run directory at the end.

Trial config of a grid trial (`train_model`, built by `orchestrator.tuner.trial_config`):
    experiment, group_id, run_id: names; run: the RunConfig dict of this model;
    artifacts: the run directory to write; root: the experiment directory (resolved), which the
    run directory must stay below; cpus: threads for torch;
    remote, rel: the experiment's URI and the run directory below it (object storage; else None).

Trial config of a search trial (`search_model`, built by `orchestrator.tuner`):
    params: {key path: sampled value}; fixed: {base, seed, n_models, cpus, root, interim_samples}.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

import ray
import torch
from ray import tune

from demem import artifacts
from demem.data import DatasetNotFoundError, Pool
from demem.device import resolve_device
from demem.evaluate import evaluate_heldout, own_membership, sample_statistics
from demem.train import CHECKPOINT, DataConfig, RunConfig, epochs, load_pool, prepare
from orchestrator.columns import FAILED, FINAL_KEYS, NATURAL_ACC, ROBUST_ACC, SEARCH_ROBUST_ACC
from orchestrator.layout import ExperimentDir
from orchestrator.spec import resolve_run  # Ray-free; resolves exactly as validation did
from orchestrator.storage import Remote

_POOL: dict[DataConfig, Pool] = {}  # the last pool this worker loaded (Tune reuses worker processes)


def _pool(run: RunConfig) -> Pool:
    if run.data not in _POOL:
        _POOL.clear()
        _POOL[run.data] = load_pool(run)
    return _POOL[run.data]


# Failures that end the same way every time they are tried (a config or dataset the trial refuses, a
# non-finite loss with a fixed seed): reported as a failed result, not raised, so Tune does not retry.
DETERMINISTIC = (ValueError, FloatingPointError, DatasetNotFoundError)


def where() -> dict[str, Any]:
    """Where this trial runs: Ray node id, host name, the GPU ids Ray assigned it, start time."""
    ctx = ray.get_runtime_context()
    gpus = ",".join(str(g) for g in ray.get_gpu_ids())
    return {"node_id": ctx.get_node_id(), "host": socket.gethostname(), "gpu_ids": gpus}


_WARNED_NO_CUDA = False


def _device() -> torch.device:
    """CUDA when torch sees it; otherwise the CPU, saying so (once per worker) when Ray assigned this
    trial a GPU that torch cannot use (a node declared with GPUs it lacks, or a CPU-only torch)."""
    global _WARNED_NO_CUDA
    gpus = ray.get_gpu_ids()
    if gpus and not torch.cuda.is_available() and not _WARNED_NO_CUDA:
        print(f"Ray assigned GPU(s) {gpus} to this trial, but torch sees no CUDA device here: training on the CPU")
        _WARNED_NO_CUDA = True
    return resolve_device("auto")


def train_model(config: dict[str, Any]) -> None:
    """Train, checkpoint every epoch, evaluate, write the run directory, report final metrics."""
    base = {"group_id": config["group_id"], "run_id": config["run_id"]}
    started = {"started_at": time.time(), **where()}  # in the final result only: not a curve
    try:
        _train_model(config, base, started)
    except DETERMINISTIC as e:
        tune.report({**base, **started, FAILED: f"{type(e).__name__}: {e}", "done": True})


def _train_model(config: dict[str, Any], base: dict[str, Any], started: dict[str, Any]) -> None:
    # One trial per `cpus` cores: more torch threads than that makes trials fight over cores.
    torch.set_num_threads(max(1, int(config.get("cpus", 1))))
    run = RunConfig.from_dict(config["run"])  # fail before touching data or a GPU
    sync = _Sync(config.get("remote"), config.get("rel"))
    out = sync.out if sync.remote else Path(config["artifacts"])
    if not sync.remote and config.get("root"):  # the driver checked; a link put there since is not followed either
        ExperimentDir(Path(config["root"])).inside(out)
    sync.pull()
    done = artifacts.read_metrics(out)
    if done is not None:  # finished before an interruption: report it again, do not retrain
        tune.report({**base, **started, **_final(done), "done": True})
        return
    state = _start(run, out)
    t0 = time.perf_counter()
    for metrics in epochs(state):
        _report_epoch(state, out, {**base, **metrics, "done": False}, sync)
    final = _finish(state, out, t0, sync)
    tune.report({**base, **started, **_final(final), "epoch": state.epoch, "done": True})


def _start(run: RunConfig, out: Path):
    """A TrainState for `run`, continued from the run directory's checkpoint when there is a
    readable one (an unreadable one is reported and training starts over); config.json written."""
    device = _device()
    state = prepare(run, device, pool=_pool(run))
    if (out / CHECKPOINT).exists():
        try:
            state.load(out)
            print(f"continuing from {out / CHECKPOINT} at epoch {state.epoch}/{run.train.epochs}")
        except ValueError as e:
            print(f"training from the start: {e}")
            state = prepare(run, device, pool=_pool(run))
    artifacts.start_run(state, out)
    return state


class _Sync:
    """A run directory's copy on object storage (`remote` is None for a plain directory: no-ops)."""

    def __init__(self, remote: str | None, rel: str | None) -> None:
        self.remote = Remote(remote) if remote else None
        self.rel = rel or ""
        self.out = self.remote.local / self.rel if self.remote else None

    def pull(self) -> None:
        if self.remote is not None:
            self.remote.pull(self.rel)

    def push(self, name: str | None = None) -> None:
        """One file of the run directory; or all but the checkpoint, metrics.json (= finished) last."""
        if self.remote is None:
            return
        if name is None:
            self.remote.push(self.rel, skip_names=(CHECKPOINT, artifacts.METRICS))
            name = artifacts.METRICS
        self.remote.push(f"{self.rel}/{name}")

    def drop(self, name: str) -> None:
        if self.remote is not None:
            self.remote.delete(f"{self.rel}/{name}")


_LOCAL = _Sync(None, None)


def _report_epoch(state, out: Path, result: dict[str, Any], sync: _Sync = _LOCAL) -> None:
    state.save(out)
    sync.push(CHECKPOINT)
    tune.report(result)


def _finish(state, out: Path, t0: float, sync: _Sync = _LOCAL) -> dict[str, Any]:
    final = artifacts.finish_run(state, out, train_seconds=time.perf_counter() - t0)
    sync.push()
    (out / CHECKPOINT).unlink(missing_ok=True)
    sync.drop(CHECKPOINT)
    return final


def _final(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in FINAL_KEYS if metrics.get(k) is not None}


def search_model(config: dict[str, Any]) -> None:
    """One search trial: train one model on half the pool with the sampled settings and score it on
    every objective after every epoch (so a scheduler can stop it early and the searcher always has
    values): natural and robust accuracy on the first `interim_samples` held-out samples, and the
    loss-threshold attack on its own members vs non-members. The last epoch is scored on every
    held-out sample, and the run directory is written like a grid trial's."""
    fixed = config["fixed"]
    torch.set_num_threads(max(1, int(fixed.get("cpus", 1))))
    run = RunConfig.from_dict(resolve_run(fixed["base"], config["params"], fixed["n_models"], seed=fixed["seed"]))
    trial_id = tune.get_context().get_trial_id()
    out = ExperimentDir(Path(fixed["root"])).search_run_dir(trial_id)
    state = _start(run, out)
    t0 = time.perf_counter()
    for metrics in epochs(state):
        if state.done:
            break  # the last epoch gets the full evaluation below
        scores = _interim_scores(state, int(fixed.get("interim_samples", 256)))
        _report_epoch(state, out, {**metrics, **scores, "trial_id": trial_id, "final": False})
    final = _finish(state, out, t0)
    stats = artifacts.read_samples(out)
    scores = {
        NATURAL_ACC: final[NATURAL_ACC],
        SEARCH_ROBUST_ACC: final[ROBUST_ACC],
        **own_membership(stats, state.keep),
    }
    tune.report({**state.history[-1], **scores, "trial_id": trial_id, "final": True})


def _interim_scores(state, limit: int) -> dict[str, float]:
    ev = evaluate_heldout(
        state.model,
        state.pool,
        state.keep,
        state.run.eval,
        device=state.device,
        seed=state.run.seed,
        limit=limit,
        autoattack=False,
    )
    stats = sample_statistics(state.model, state.pool, device=state.device, queries=1)
    return {NATURAL_ACC: ev[NATURAL_ACC], SEARCH_ROBUST_ACC: ev[ROBUST_ACC], **own_membership(stats, state.keep)}
