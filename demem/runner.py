"""One owner for a run directory's lifecycle: prepare, continue from `checkpoint.pt`, write the
config, train (saving a checkpoint after every epoch), evaluate on the held-out samples, write the
finished run. `demem train`, the Tune trainable (its storage push is its `on_epoch` hook) and the
tests all call `train_run`; `demem.artifacts` only reads and writes the files.

A checkpoint that cannot be read (truncated, not a demem checkpoint, refused by torch's weights-only
reader, or written by another run config or pool) is refused, one policy everywhere: `train_run`
raises ValueError naming the file, before anything in the run directory is written, and deletes
nothing. Checkpoints are written atomically, so a crash never leaves a partial one: an unreadable file
is damage or somebody else's, which a person should look at before it is replaced. `demem train
--resume` exits 2 with the message; a trial fails with it without retrying (`demem status` shows it);
delete the file to train that model from the start.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from demem import artifacts, names
from demem.data import Pool
from demem.dp import per_sample_hooks_off
from demem.evaluate import evaluate_heldout, generalization_gap, sample_statistics
from demem.privacy.boundary import pool_boundary
from demem.privacy.signals import adversarial_signals
from demem.train import RunConfig, TrainState, epochs, prepare

CPU_ATTACK_BATCH = 64
WEIGHTS = "model.pt"  # the trained model's state dict alone, kept when asked (`keep_weights`)
EpochHook = Callable[[TrainState, dict[str, Any]], None]


def train_run(
    run: RunConfig,
    out: str | Path,
    device: torch.device | str = "cpu",
    *,
    pool: Pool | None = None,
    resume: bool = True,
    keep_checkpoint: bool = True,
    keep_weights: bool = False,
    on_start: Callable[[TrainState], None] | None = None,
    on_epoch: EpochHook | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train the model `run` describes into the run directory `out`; return its metrics.json.

    A run directory that holds a finished run is not trained again: its metrics are returned.

    Args:
        pool: the run's pool, already loaded (saves reading the dataset again).
        resume: continue from `out/checkpoint.pt` where there is one (refused if unreadable; see the
            module docstring). False trains from the start and overwrites it.
        keep_checkpoint: keep the last checkpoint (the trained weights) once the run has finished;
            experiments drop it, since their results are the per-sample signals.
        keep_weights: also write `model.pt`, the model's state dict alone (`write_weights`), so a later
            audit can compute new signals without retraining (`audit.keep_models: true`).
        on_start: called once the state is ready (continued or fresh), before the first epoch.
        on_epoch: called after every epoch with the state and the epoch's metrics, after that
            epoch's checkpoint is written (a storage push, a progress report, interim scores).
        log: where the one line saying a run continues goes.

    Raises:
        ValueError: an unreadable checkpoint, or a config or dataset `prepare` refuses.
        FloatingPointError: a non-finite training loss.
    """
    out = Path(out)
    done = artifacts.read_metrics(out)
    if done is not None:
        return done
    state = prepare(run, device, pool=pool)
    if resume and (out / artifacts.CHECKPOINT).exists():
        artifacts.read_checkpoint(state, out)
        log(f"continuing from {out / artifacts.CHECKPOINT} at epoch {state.epoch}/{run.train.epochs}")
    artifacts.start_run(state, out)
    if on_start is not None:
        on_start(state)
    t0 = time.perf_counter()
    for metrics in epochs(state):
        artifacts.write_checkpoint(state, out)
        if on_epoch is not None:
            on_epoch(state, metrics)
    train_seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    heldout, stats = evaluate_run(state)
    final = artifacts.finish_run(
        state, out, heldout, stats, train_seconds=train_seconds, eval_seconds=time.perf_counter() - t1
    )
    if keep_weights:
        write_weights(state, out)
    if not keep_checkpoint:
        (out / artifacts.CHECKPOINT).unlink(missing_ok=True)
    return final


def write_weights(state: TrainState, out: str | Path) -> Path:
    """Write the model's state dict (tensors only: `torch.load(weights_only=True)` reads it) to
    `out/model.pt` atomically; `demem.privacy.external_checkpoints` reads it back."""
    from demem.io import atomic_path

    buf = io.BytesIO()  # serialised first, so a full disk fails as OSError on the write
    torch.save({k: v.detach().cpu() for k, v in state.model.state_dict().items()}, buf)
    path = Path(out) / WEIGHTS
    with atomic_path(path) as tmp:
        tmp.write_bytes(buf.getbuffer())
    return path


def attack_batch(batch_size: int, device: torch.device) -> int:
    """The batch of the attack-heavy signal passes: CPU caches favour small ones (PGD-10 on 400
    images, one thread: 4.8 s in batches of 32, 7.1 s in batches of 500); a GPU takes `batch_size`."""
    return batch_size if device.type == "cuda" else min(batch_size, CPU_ATTACK_BATCH)


def evaluate_run(state: TrainState) -> tuple[dict[str, Any], dict[str, Any]]:
    """The accuracies (held-out half; the training half and the generalization gaps) and the per-sample
    signals on the whole pool of a trained state: clean queries, adversarial queries and boundary
    distances where `run.eval` asks for them, each one's cost recorded. DP-SGD's per-sample hooks
    are paused: evaluation is not training."""
    run, model, pool, device = state.run, state.model, state.pool, state.device
    ev = run.eval
    with per_sample_hooks_off(state.train_model if state.dp is not None else None):
        precision = run.train.precision  # the attacks' precision; every logit read is fp32
        heldout = evaluate_heldout(model, pool, state.keep, ev, device=device, seed=run.seed, precision=precision)
        stats = sample_statistics(model, pool, device=device, queries=ev.queries)
        batch = attack_batch(ev.batch_size, device)
        if ev.adversarial is not None:
            t0 = time.perf_counter()
            stats.update(
                adversarial_signals(model, pool, ev.adversarial, device=device, batch_size=batch, precision=precision)
            )
            heldout[names.ADVERSARIAL_SECONDS] = time.perf_counter() - t0
        if ev.boundary is not None:
            cfg = replace(ev.boundary, batch_size=min(ev.boundary.batch_size, batch))
            distances = pool_boundary(model, pool, cfg, eps_linf=ev.attack.eps, device=device)
            heldout[names.BOUNDARY_SECONDS] = float(distances.pop("boundary_seconds"))
            stats.update(distances)
        gaps = generalization_gap(
            model,
            pool,
            state.keep,
            stats,
            ev,
            heldout_robust=heldout[names.ROBUST_ACC],
            device=device,
            seed=run.seed,
            precision=precision,
        )
        heldout.update(gaps)
    return heldout, stats
