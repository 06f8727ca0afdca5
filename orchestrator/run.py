"""Run, resume and inspect experiments on Ray Tune.

`run_experiment` validates the spec before Ray starts, prints the plan, starts a local Ray instance
(or joins `--address` / `RAY_ADDRESS`), and runs one Tune trial per model. As soon as every model of
a (group, seed) has finished, the group is audited in a Ray task while other groups still train.
At the end, pending audits are finished and the results are collected into Parquet files.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from demem import __version__
from demem.artifacts import read_metrics
from demem.io import write_json
from orchestrator.layout import ExperimentDir, read_json
from orchestrator.spec import ExperimentSpec, Trial, load_spec, trial_resources

Printer = Callable[[str], None]


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
    import ray

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


def trial_config(spec: ExperimentSpec, exp: ExperimentDir, trial: Trial) -> dict[str, Any]:
    cfg = {
        "experiment": spec.name, "group_id": trial.group_id, "run_id": trial.trial_key, "seed": trial.seed,
        "model_index": trial.model_index, "run": trial.run, "cpus": spec.resources["cpu"],
        "artifacts": str(exp.run_dir(trial.group_id, trial.trial_key).resolve()),
    }
    for entry in spec.raw.get("_test_fail") or []:  # test-only failure injection, matched per model
        if entry["model_index"] == trial.model_index and entry.get("group_id", trial.group_id) == trial.group_id:
            cfg["_test_fail"] = {"mode": entry["mode"], "at_epoch": entry.get("at_epoch", 1)}
    return cfg


def _trainable(config: dict[str, Any]) -> None:
    from orchestrator.trainable import train_model

    train_model(config["trial"])


def _audit_task(exp_root: str, group_id: str, seed: int, audit: dict[str, Any], partial: bool) -> dict[str, Any]:
    """Audit one (group, seed); runs in a Ray task or in-process."""
    from demem.artifacts import load_group
    from demem.privacy.audit import AuditConfig, run_audit, write_audit

    exp = ExperimentDir(Path(exp_root))
    group = load_group(exp.artifacts / group_id, seed=seed, allow_partial=partial)
    cfg = AuditConfig(attacks=tuple(audit["attacks"]), targets=audit.get("targets"), queries=audit.get("queries"))
    result, per_sample = run_audit(group, cfg)
    result["partial"] = partial
    write_audit(exp.audit_dir(group_id, seed), result, per_sample)
    return {"group_id": group_id, "seed": seed}


class Progress:
    """Driver-side bookkeeping of one experiment: trial states, audits, one line per finished trial."""

    def __init__(self, spec: ExperimentSpec, exp: ExperimentDir, echo: Printer) -> None:
        self.spec, self.exp, self.echo = spec, exp, echo
        self.trials = {t.trial_key: t for t in spec.trials()}
        self.labels = {g.group_id: g.label for g in spec.groups()}
        self.state: dict[str, dict[str, Any]] = read_json(exp.trials, {}) or {}
        self.t0 = time.time()
        self.pending: dict[tuple[str, int], Any] = {}
        self.audited: set[tuple[str, int]] = {k for k in self._keys() if (exp.audit_dir(*k) / "audit.json").exists()}

    def _keys(self) -> set[tuple[str, int]]:
        return {(t.group_id, t.seed) for t in self.trials.values()}

    def _members(self, key: tuple[str, int]) -> list[str]:
        return [k for k, t in self.trials.items() if (t.group_id, t.seed) == key]

    def finished(self, run_id: str, status: str, result: dict[str, Any] | None = None, error: str = "") -> None:
        t = self.trials[run_id]
        self.state[run_id] = {"status": status, "error": error[-2000:], "group_id": t.group_id, "seed": t.seed,
                              "model_index": t.model_index, "finished_at": time.time()}
        write_json(self.exp.trials, self.state)
        done = sum(1 for s in self.state.values() if s["status"] in ("done", "failed"))
        if status == "done" and result:
            what = (f"natural {result.get('natural_acc', float('nan')):.3f}  "
                    f"robust {result.get('robust_acc_pgd', float('nan')):.3f}")
        else:
            what = f"FAILED: {error.strip().splitlines()[-1] if error.strip() else 'error'}"
        self.echo(f"[{done}/{len(self.trials)} trials, {len(self.audited)} groups audited, ETA {self._eta(done)}] "
                  f"{self.labels[t.group_id]} seed {t.seed} model {t.model_index}: {what}")
        self.maybe_audit((t.group_id, t.seed))

    def _eta(self, done: int) -> str:
        if done == 0:
            return "?"
        left = (time.time() - self.t0) / done * (len(self.trials) - done)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def maybe_audit(self, key: tuple[str, int], in_process: bool = False) -> None:
        if key in self.audited or key in self.pending:
            return
        states = [self.state.get(r, {}).get("status") for r in self._members(key)]
        if not all(s in ("done", "failed") for s in states) or "done" not in states:
            return
        partial = "failed" in states
        if in_process:
            try:
                _audit_task(str(self.exp.root), key[0], key[1], self.spec.audit, partial)
                self.audited.add(key)
            except ValueError as e:
                self.echo(f"audit of {self.labels[key[0]]} seed {key[1]} failed: {e}")
            return
        import ray

        task = ray.remote(num_cpus=0)(_audit_task)  # short numpy work; never waits behind training trials
        self.pending[key] = task.remote(str(self.exp.root.resolve()), key[0], key[1], self.spec.audit, partial)

    def poll(self, wait: bool = False) -> None:
        import ray

        for key, ref in list(self.pending.items()):
            ready, _ = ray.wait([ref], timeout=None if wait else 0)
            if not ready:
                continue
            del self.pending[key]
            try:
                ray.get(ref)
                self.audited.add(key)
                self.echo(f"audited {self.labels[key[0]]} seed {key[1]} ({len(self.audited)} groups audited)")
            except Exception as e:  # noqa: BLE001 - report and carry on; finish() retries in-process
                self.echo(f"audit of {self.labels[key[0]]} seed {key[1]} failed: {e}")


_PROGRESS: dict[str, Progress] = {}


def progress_for(root: str | Path, echo: Printer = print) -> Progress:
    """The driver's Progress of an experiment, rebuilt from its files when this process has none."""
    key = str(Path(root).resolve())
    if key not in _PROGRESS:
        exp = ExperimentDir(Path(key))
        _PROGRESS[key] = Progress(load_spec(exp.spec, check_data=False), exp, echo)
    return _PROGRESS[key]


def _tuner(spec: ExperimentSpec, exp: ExperimentDir, max_concurrent: int | None):
    from ray import tune

    from orchestrator.callbacks import DriverCallback

    trainable = tune.with_resources(_trainable, trial_resources(spec))
    space = {"trial": tune.grid_search([trial_config(spec, exp, t) for t in spec.trials()])}
    return tune.Tuner(
        trainable,
        param_space=space,
        # Reusing worker processes saves the torch import and dataset parse of every trial; trials
        # keep no state between them (each builds its own model, optimizer and generators).
        tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent or spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(exp.root.resolve()),
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[DriverCallback(str(exp.root.resolve()))], verbose=0,
        ),
    )


def run_experiment(spec_path: str | Path, *, name: str | None = None, storage: str | Path = "results",
                   address: str | None = None, max_concurrent: int | None = None,
                   echo: Printer = print) -> ExperimentDir:
    """Validate, plan, train every model, audit every group, collect. Returns the experiment dir."""
    spec = load_spec(spec_path)  # every problem is reported before Ray starts
    exp = ExperimentDir(Path(storage) / (name or spec.name))
    if exp.tune.exists():
        raise FileExistsError(f"{exp.root} already holds an experiment; continue it with `demem resume {exp.root}` "
                              "or choose another --name")
    exp.root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(spec_path, exp.spec)
    write_json(exp.meta, {"demem_version": __version__, "started": time.time(), "name": spec.name,
                          "python": sys.version.split()[0]})
    echo(spec.plan())
    largest = start_ray(address)
    load_spec(exp.spec, available=largest, check_data=False)  # can any node run a trial?
    if spec.search is not None:
        from orchestrator.search import run_search

        run_search(spec, exp, max_concurrent=max_concurrent, echo=echo)
        return exp
    progress = _PROGRESS[str(exp.root.resolve())] = Progress(spec, exp, echo)
    _tuner(spec, exp, max_concurrent).fit()
    finish(spec, exp, progress, echo)
    return exp


def resume_experiment(root: str | Path, *, address: str | None = None, echo: Printer = print) -> ExperimentDir:
    """Continue an interrupted experiment from Tune's saved state; finished models are not retrained,
    audited groups are not re-audited, and the Parquet files are rebuilt without duplicates."""
    from ray import tune

    exp = ExperimentDir(Path(root))
    if not exp.spec.exists():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no spec.yaml)")
    spec = load_spec(exp.spec)
    start_ray(address)
    if spec.search is not None:
        from orchestrator.search import run_search

        echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
        run_search(spec, exp, echo=echo, restore=True)
        return exp
    progress = _PROGRESS[str(exp.root.resolve())] = Progress(spec, exp, echo)
    # Trials already recorded as failed stay failed; the rest are pending or were interrupted.
    if tune.Tuner.can_restore(str(exp.tune.resolve())):
        from orchestrator.run import _trainable as trainable  # the same callable as the original run

        tuner = tune.Tuner.restore(str(exp.tune.resolve()),
                                   trainable=tune.with_resources(trainable, trial_resources(spec)),
                                   resume_unfinished=True, resume_errored=True)
        echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
        tuner.fit()
    else:  # interrupted before Tune saved anything: start the grid again (finished runs are reused)
        shutil.rmtree(exp.tune, ignore_errors=True)
        _tuner(spec, exp, None).fit()
    finish(spec, exp, progress, echo)
    return exp


def finish(spec: ExperimentSpec, exp: ExperimentDir, progress: Progress, echo: Printer) -> None:
    """Wait for running audits, audit what is left, collect the Parquet files, print the group table."""
    from orchestrator.collect import collect, group_table, write_hparams

    progress.poll(wait=True)
    for run_id, trial in progress.trials.items():  # runs finished by an earlier, interrupted driver
        if run_id not in progress.state and read_metrics(exp.run_dir(trial.group_id, run_id)) is not None:
            progress.state[run_id] = {"status": "done", "error": "", "group_id": trial.group_id, "seed": trial.seed,
                                      "model_index": trial.model_index}
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
        from orchestrator.search import SEARCH_TRIALS

        records = read_json(exp.root / SEARCH_TRIALS, {}) or {}
        done = sum(r["status"] == "done" for r in records.values())
        early = sum(r["status"] == "done" and not r["completed"] for r in records.values())
        failed = sum(r["status"] == "failed" for r in records.values())
        started = len(list((exp.root / "search").glob("*"))) if (exp.root / "search").exists() else 0
        return (f"{done} done ({early} stopped early by the scheduler), {failed} failed, "
                f"{max(0, started - done - failed)} running or interrupted, "
                f"{max(0, spec.search['num_samples'] - started)} not started of {spec.search['num_samples']} "
                "search trials")
    state = read_json(exp.trials, {}) or {}
    counts = {"done": 0, "failed": 0, "running": 0, "pending": 0}
    for t in spec.trials():
        s = state.get(t.trial_key, {}).get("status")
        run_dir = exp.run_dir(t.group_id, t.trial_key)
        if s == "failed":
            counts["failed"] += 1
        elif s == "done" or read_metrics(run_dir) is not None:
            counts["done"] += 1
        elif (run_dir / "config.json").exists():
            counts["running"] += 1
        else:
            counts["pending"] += 1
    audited = sum(1 for g in spec.groups() for s in spec.seeds
                  if (exp.audit_dir(g.group_id, s) / "audit.json").exists())
    return (f"{counts['done']} done, {counts['failed']} failed, {counts['running']} running or interrupted, "
            f"{counts['pending']} pending of {len(spec.trials())} trials; {audited} of "
            f"{len(spec.groups()) * len(spec.seeds)} groups audited")


def status(root: str | Path, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    exp = ExperimentDir(Path(root))
    if not exp.spec.exists():
        print(f"demem status: {exp.root} is not an experiment directory (no spec.yaml)", file=sys.stderr)
        return 2
    spec = load_spec(exp.spec, check_data=False)
    print(f"{spec.name}: {progress_summary(spec, exp)}", file=out)
    state = read_json(exp.trials, {}) or {}
    if spec.search is not None:
        from orchestrator.search import SEARCH_TRIALS

        state = read_json(exp.root / SEARCH_TRIALS, {}) or {}
    for run_id, s in sorted(state.items()):
        if s["status"] == "failed":
            last = (s.get("error") or "").strip().splitlines()
            print(f"  failed {run_id}: {last[-1] if last else ''}", file=out)
    return 0



