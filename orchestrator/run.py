"""Run, resume and inspect experiments on Ray Tune.

`run_experiment` validates the spec before Ray starts, prints the plan, starts a local Ray instance
(or joins `--address` / `RAY_ADDRESS`), and runs one Tune trial per model. As soon as every model of
a (group, seed) has finished, the group is audited in a Ray task while other groups still train.
At the end, pending audits are finished and the results are collected into Parquet files.
A spec with `search:` runs `orchestrator.search.run_search` instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import ray

from demem import __version__
from demem.artifacts import CONFIG, read_metrics
from demem.io import write_json
from orchestrator.collect import collect, group_table, write_hparams
from orchestrator.layout import ExperimentDir, read_json
from orchestrator.progress import GridProgress, Printer, start_progress
from orchestrator.search import run_search
from orchestrator.spec import ExperimentSpec, load_spec
from orchestrator.tuner import TrainFn, build_tuner, restore_tuner


def _env_for_local_ray() -> None:
    # Token auth is for remote clusters; on 127.0.0.1 it only gets in the way. Keep Ray on loopback.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune warns when small trials checkpoint every few seconds; that is by design here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def start_ray(address: str | None = None) -> dict[str, float]:
    """Connect to `address` (or RAY_ADDRESS), or start a private local instance. Returns the
    largest node's resources (Ray-style keys: CPU, GPU)."""
    _env_for_local_ray()
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}
        if address:
            ray.init(address=address, **kwargs)
        else:
            ray.init(**kwargs)
    largest: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    for node in ray.nodes():
        if node.get("Alive"):
            res = node.get("Resources", {})
            for key in largest:
                largest[key] = max(largest[key], float(res.get(key, 0.0)))
    return largest


def run_experiment(
    spec_path: str | Path,
    *,
    name: str | None = None,
    storage: str | Path = "results",
    address: str | None = None,
    max_concurrent: int | None = None,
    echo: Printer = print,
    train: TrainFn | None = None,
) -> ExperimentDir:
    """Validate, plan, train every model, audit every group, collect. Returns the experiment dir.
    `train` replaces the trial's training function (tests wrap the real one)."""
    spec = load_spec(spec_path)  # every problem is reported before Ray starts
    exp = ExperimentDir(Path(storage) / (name or spec.name))
    if exp.tune.exists():
        raise FileExistsError(
            f"{exp.root} already holds an experiment; continue it with `demem resume {exp.root}` "
            "or choose another --name"
        )
    exp.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, exp.spec)
    write_json(
        exp.meta,
        {"demem_version": __version__, "started": time.time(), "name": spec.name, "python": sys.version.split()[0]},
    )
    echo(spec.plan())
    largest = start_ray(address)
    load_spec(exp.spec, available=largest, check_data=False)  # can any node run a trial?
    progress = start_progress(spec, exp, echo)
    if spec.search is not None:
        run_search(spec, exp, build_tuner(spec, exp, max_concurrent, train), echo=echo)
        return exp
    build_tuner(spec, exp, max_concurrent, train).fit()
    finish(spec, exp, progress, echo)
    return exp


def resume_experiment(
    root: str | Path, *, address: str | None = None, echo: Printer = print, train: TrainFn | None = None
) -> ExperimentDir:
    """Continue an interrupted experiment from Tune's saved state; finished models are not retrained,
    audited groups are not re-audited, and the Parquet files are rebuilt without duplicates."""
    exp = ExperimentDir(Path(root))
    if not exp.spec.exists():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no spec.yaml)")
    spec = load_spec(exp.spec)
    start_ray(address)
    progress = start_progress(spec, exp, echo)
    # Trials already recorded as failed stay failed; the rest are pending or were interrupted.
    tuner = restore_tuner(spec, exp, train)
    if spec.search is not None:
        echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
        run_search(spec, exp, tuner or build_tuner(spec, exp, None, train), echo=echo)
        return exp
    if tuner is not None:
        echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
    else:  # interrupted before Tune saved anything: start the grid again (finished runs are reused)
        shutil.rmtree(exp.tune, ignore_errors=True)
        tuner = build_tuner(spec, exp, None, train)
    tuner.fit()
    finish(spec, exp, progress, echo)
    return exp


def finish(spec: ExperimentSpec, exp: ExperimentDir, progress: GridProgress, echo: Printer) -> None:
    """Wait for running audits, audit what is left, collect the Parquet files, print the group table."""
    progress.poll(wait=True)
    for run_id, trial in progress.trials.items():  # runs finished by an earlier, interrupted driver
        if run_id not in progress.state and read_metrics(exp.run_dir(trial.group_id, run_id)) is not None:
            progress.state[run_id] = {
                "status": "done",
                "error": "",
                "group_id": trial.group_id,
                "seed": trial.seed,
                "model_index": trial.model_index,
            }
    write_json(exp.trials, progress.state)
    for key in sorted({(t.group_id, t.seed) for t in progress.trials.values()}):
        progress.maybe_audit(key, in_process=True)
    paths = collect(spec, exp)
    write_hparams(spec, exp)
    echo("")
    echo(group_table(exp))
    echo("")
    echo("results: " + ", ".join(str(p) for p in paths))
    echo(f"TensorBoard: tensorboard --logdir {exp.root}")


def progress_summary(spec: ExperimentSpec, exp: ExperimentDir) -> str:
    """'N done, N failed, N running, N pending' from the experiment's files."""
    if spec.search is not None:
        records = read_json(exp.search_trials, {}) or {}
        done = sum(r["status"] == "done" for r in records.values())
        early = sum(r["status"] == "done" and not r["completed"] for r in records.values())
        failed = sum(r["status"] == "failed" for r in records.values())
        started = len(list(exp.search_runs.glob("*"))) if exp.search_runs.exists() else 0
        n = spec.search.num_samples
        return (
            f"{done} done ({early} stopped early by the scheduler), {failed} failed, "
            f"{max(0, started - done - failed)} running or interrupted, "
            f"{max(0, n - started)} not started of {n} search trials"
        )
    state = read_json(exp.trials, {}) or {}
    counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
    for t in spec.trials():
        s = state.get(t.trial_key, {}).get("status")
        run_dir = exp.run_dir(t.group_id, t.trial_key)
        if s == "failed":
            counts["failed"] += 1
        elif s == "done" or read_metrics(run_dir) is not None:
            counts["done"] += 1
        elif (run_dir / CONFIG).exists():
            counts["running"] += 1
        else:
            counts["pending"] += 1
    audited = sum(1 for g in spec.groups() for s in spec.seeds if exp.audit_result(g.group_id, s).exists())
    return (
        f"{counts['done']} done, {counts['failed']} failed, {counts['running']} running or interrupted, "
        f"{counts['pending']} pending of {len(spec.trials())} trials; {audited} of "
        f"{len(spec.groups()) * len(spec.seeds)} groups audited"
    )


def status(root: str | Path, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    exp = ExperimentDir(Path(root))
    if not exp.spec.exists():
        print(f"demem status: {exp.root} is not an experiment directory (no spec.yaml)", file=sys.stderr)
        return 2
    spec = load_spec(exp.spec, check_data=False)
    print(f"{spec.name}: {progress_summary(spec, exp)}", file=out)
    state = read_json(exp.search_trials if spec.search is not None else exp.trials, {}) or {}
    for run_id, s in sorted(state.items()):
        if s["status"] == "failed":
            last = (s.get("error") or "").strip().splitlines()
            print(f"  failed {run_id}: {last[-1] if last else ''}", file=out)
    return 0
