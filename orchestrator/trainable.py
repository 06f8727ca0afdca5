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

A grid trial is given a `GridTrial`, a search trial a `SearchTrial` (orchestrator.trials); the run
directory's lifecycle is `demem.runner.train_run`, with this module's reporting (and the storage push)
as its per-epoch hook. A checkpoint that cannot be read fails the trial with the file's name, without
a retry (the one policy of `demem.runner`).
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
from demem.artifacts import CHECKPOINT
from demem.data import DatasetNotFoundError, Pool
from demem.device import resolve_device
from demem.evaluate import evaluate_heldout, own_membership, sample_statistics
from demem.names import EPOCHS_DONE
from demem.runner import train_run
from demem.train import DataConfig, RunConfig, load_pool
from orchestrator.columns import FAILED, FINAL_KEYS, NATURAL_ACC, ROBUST_ACC, SEARCH_ROBUST_ACC
from orchestrator.layout import ExperimentDir
from orchestrator.spec import resolve_run  # Ray-free; resolves exactly as validation did
from orchestrator.storage import Remote
from orchestrator.trials import GridTrial, SearchTrial

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


def train_model(trial: GridTrial) -> None:
    """Train, checkpoint every epoch, evaluate, write the run directory, report final metrics."""
    base = {"group_id": trial.group_id, "run_id": trial.run_id}
    started = {"started_at": time.time(), **where()}  # in the final result only: not a curve
    try:
        _train_model(trial, base, started)
    except DETERMINISTIC as e:
        tune.report({**base, **started, FAILED: f"{type(e).__name__}: {e}", "done": True})


def _train_model(trial: GridTrial, base: dict[str, Any], started: dict[str, Any]) -> None:
    # One trial per `cpus` cores: more torch threads than that makes trials fight over cores.
    torch.set_num_threads(max(1, int(trial.cpus)))
    sync = _Sync(trial.remote, trial.rel)
    out = sync.out if sync.remote else Path(trial.artifacts)
    if not sync.remote and trial.root:  # the driver checked; a link put there since is not followed either
        ExperimentDir(Path(trial.root)).inside(out)
    sync.pull()

    def epoch_done(state, metrics: dict[str, Any]) -> None:
        sync.push(CHECKPOINT)
        tune.report({**base, **metrics, "done": False})

    final = train_run(
        trial.run,
        out,
        _device(),
        pool=_pool(trial.run),
        keep_checkpoint=False,
        keep_weights=trial.keep_models,
        on_epoch=epoch_done,
        log=print,
    )
    sync.push()
    sync.drop(CHECKPOINT)
    tune.report({**base, **started, **_final(final), "epoch": final[EPOCHS_DONE], "done": True})


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


def _final(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: metrics[k] for k in FINAL_KEYS if metrics.get(k) is not None}


def search_model(config: dict[str, Any]) -> None:
    """One search trial: train one model on half the pool with the sampled settings and score it on
    every objective after every epoch (so a scheduler can stop it early and the searcher always has
    values): natural and robust accuracy on the first `interim_samples` held-out samples, and the
    loss-threshold attack on its own members vs non-members. The last epoch is scored on every
    held-out sample, and the run directory is written like a grid trial's.

    A sampled setting the run config refuses (or a non-finite loss) is a deterministic failure: it is
    reported, with NaN objectives (what the searcher records as a failed point), not raised, since
    Tune would retry it in vain."""
    trial = SearchTrial.of(config)
    trial_id = tune.get_context().get_trial_id()
    try:
        _search_model(trial, trial_id)
    except DETERMINISTIC as e:
        nan = {m: float("nan") for m in trial.setup.objectives}
        tune.report({**nan, FAILED: f"{type(e).__name__}: {e}", "trial_id": trial_id, "final": True})


def _search_model(trial: SearchTrial, trial_id: str) -> None:
    setup = trial.setup
    torch.set_num_threads(max(1, int(setup.cpus)))
    run = RunConfig.from_dict(resolve_run(setup.base, trial.params, setup.n_models, seed=setup.seed))
    out = ExperimentDir(Path(setup.root)).search_run_dir(trial_id)

    def epoch_done(state, metrics: dict[str, Any]) -> None:
        if not state.done:  # the last epoch gets the full evaluation below
            scores = _interim_scores(state, setup.interim_samples)
            tune.report({**metrics, **scores, "trial_id": trial_id, "final": False})

    final = train_run(run, out, _device(), pool=_pool(run), keep_checkpoint=False, on_epoch=epoch_done, log=print)
    stats = artifacts.read_samples(out)
    scores = {
        NATURAL_ACC: final[NATURAL_ACC],
        SEARCH_ROBUST_ACC: final[ROBUST_ACC],
        **own_membership(stats, stats["keep"].astype(bool)),
    }
    tune.report({**final["history"][-1], **scores, "trial_id": trial_id, "final": True})


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
        precision=state.run.train.precision,
    )
    stats = sample_statistics(state.model, state.pool, device=state.device, queries=1)
    return {NATURAL_ACC: ev[NATURAL_ACC], SEARCH_ROBUST_ACC: ev[ROBUST_ACC], **own_membership(stats, state.keep)}
