"""Run, resume and inspect experiments on Ray Tune.

`run_experiment` validates the spec before Ray starts, prints the plan, starts a local Ray instance
(or joins `--address` / `RAY_ADDRESS`), and runs one Tune trial per model. As soon as every model of
a (group, seed) has finished, the group is audited in a Ray task while other groups still train.
At the end, pending audits are finished and the results are collected into Parquet files.
A spec with `search:` runs `orchestrator.search.run_search` instead.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

import ray

from demem import __version__
from demem.artifacts import CHECKPOINT, CONFIG, read_metrics
from demem.io import write_json, write_text
from orchestrator.collect import collect, write_hparams
from orchestrator.group_table import group_table
from orchestrator.layout import SPEC, ExperimentDir, open_experiment, trial_records
from orchestrator.leftovers import forget_private_instance, record_private_instance, stop_leftovers
from orchestrator.lock import ExperimentLock
from orchestrator.merge import piece_spec
from orchestrator.probe import check_shared
from orchestrator.progress import GridProgress, Printer, start_progress
from orchestrator.search import run_search
from orchestrator.spec import ExperimentSpec, SpecError, load_spec, name_problem
from orchestrator.storage import TUNE, StorageError, is_uri, join_uri
from orchestrator.tuner import TrainFn, build_tuner

# Exit codes of `demem run` / `demem resume` (README, "Safety").
EXIT_OK = 0  # every trial finished and every group was audited
EXIT_BAD_INPUT = 2  # the spec, a name, a file, a record or a link was refused before any work
EXIT_TRIALS_FAILED = 3  # the experiment ran, but some trials failed after their retries, or a group's audit failed
EXIT_BUSY = 4  # another driver holds the experiment
EXIT_DISK_FULL = 5  # the results disk filled up; free space and `demem resume`
EXIT_UNFINISHED = 6  # the driver was stopped (a signal, Ctrl-C) before every trial ended; `demem resume`


class RayStartError(RuntimeError):
    """Ray could not be started or joined (nothing of the experiment was written)."""


def _env_for_local_ray() -> None:
    # Token auth is for remote clusters; on a private 127.0.0.1 instance it only gets in the way.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # keep Ray on loopback


def _env_for_tune() -> None:
    # A failed trial's traceback goes to trials.json (and `demem status`, the FAILED progress line);
    # Tune would print it again to stderr at ERROR level for every attempt.
    logging.getLogger("ray.tune").setLevel(logging.CRITICAL)
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune warns when small trials report every few seconds; that is by design here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def start_ray(address: str | None = None, echo: Printer | None = None) -> dict[str, float]:
    """Join the cluster at `address` (or RAY_ADDRESS) with Ray's own settings (its auth included),
    or start a private local instance (`address="local"`: never an existing `ray start` cluster of
    this machine), on loopback and without auth. Says which one. Returns the largest node's
    resources (Ray-style keys: CPU, GPU)."""
    _env_for_tune()
    if ray.is_initialized():
        where = "the Ray instance this process already started"
    else:
        address = address or os.environ.get("RAY_ADDRESS")
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}
        try:
            if address and address != "local":
                where = f"the cluster at {address}"
                ray.init(address=address, **kwargs)
            else:
                _env_for_local_ray()
                where = "a private local instance (127.0.0.1, no auth)"
                stop_leftovers(echo or print)  # of an earlier driver's private instance that was killed
                ray.init(address="local", **kwargs)
                record_private_instance()  # so the next driver can stop what a kill of this one leaves
                atexit.register(_stop_private_ray)
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds; the message is what matters
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RayStartError(f"could not start or join Ray ({where}): {first}") from e
    largest: dict[str, float] = {"CPU": 0.0, "GPU": 0.0}
    alive = [n for n in ray.nodes() if n.get("Alive")]
    for node in alive:
        res = node.get("Resources", {})
        for key in largest:
            largest[key] = max(largest[key], float(res.get(key, 0.0)))
    if echo is not None:
        total = ray.cluster_resources()
        echo(f"Ray: {where}; {len(alive)} node(s), {total.get('CPU', 0):g} CPUs, {total.get('GPU', 0):g} GPUs")
    return largest


def _stop_private_ray() -> None:
    # Runs before Ray's own exit handler (newest first), so the record goes only after a clean shutdown.
    ray.shutdown()
    forget_private_instance()


def run_experiment(
    spec_path: str | Path,
    *,
    name: str | None = None,
    storage: str | Path = "results",
    address: str | None = None,
    max_concurrent: int | None = None,
    echo: Printer = print,
    train: TrainFn | None = None,
    seeds: list[int] | None = None,
) -> ExperimentDir:
    """Validate, plan, train every model, audit every group, collect. Returns the experiment dir.
    `train` replaces the trial's training function (tests wrap the real one). `seeds`: run only
    these of the spec's training seeds, as the experiment `name` (default `<spec name>-s<seeds>`),
    whose spec.yaml records the subset (a piece for `demem merge`).

    Nothing is written before the spec, the name and the trial resources (against the cluster)
    have been checked; the experiment directory is then locked for this driver's lifetime."""
    if seeds is not None:
        name, text = piece_spec(spec_path, seeds, name)
        tmp = Path(tempfile.mkdtemp(prefix="demem-piece-"))
        atexit.register(shutil.rmtree, tmp, ignore_errors=True)
        spec_path = write_text(tmp / SPEC, text)
    spec = load_spec(spec_path)  # every problem is reported before Ray starts
    if name is not None and (why := name_problem(name, "--name")) is not None:
        raise SpecError([why])
    if spec.search is not None and is_uri(storage):
        raise ValueError("a search experiment needs a directory as --storage (object storage holds grid experiments)")
    exp = _new_experiment(storage, name or spec.name)
    exp.check_tree()  # a directory left there (no spec.yaml yet) must not lead outside either
    echo(spec.plan())
    largest = start_ray(address, echo)
    load_spec(spec_path, available=largest, check_data=False)  # can any node run a trial? (before any write)
    if exp.store is None:
        check_shared(exp.root.parent)  # every node must see the directory (once per run; a no-op on one node)
    exp.root.mkdir(parents=True, exist_ok=True)
    with ExperimentLock(exp.lock):
        if exp.spec.exists():  # another driver got here first
            raise FileExistsError(
                f"{exp.where} was started by another driver meanwhile; see `demem status {exp.where}`"
            )
        copy_spec(spec_path, exp)
        write_json(
            exp.meta,
            {"demem_version": __version__, "started": time.time(), "name": spec.name, "python": sys.version.split()[0]},
        )
        if exp.store is not None:
            exp.store.push()  # spec.yaml and meta.json: the bucket now holds the experiment
        progress = start_progress(spec, exp, echo)
        if spec.search is not None:
            run_search(spec, exp, build_tuner(spec, exp, max_concurrent, train), echo=echo)
            return exp
        build_tuner(spec, exp, max_concurrent, train).fit()
        finish(spec, exp, progress, echo)
    return exp


def _new_experiment(storage: str | Path, name: str) -> ExperimentDir:
    """The not yet existing experiment `name` under `storage` (a directory or an s3:// / gs:// URI)."""
    if is_uri(storage):
        exp = ExperimentDir.at(join_uri(str(storage), name))
        exp.store.check()  # bucket and credentials, before Ray starts
        taken = exp.store.exists(SPEC)
        if not taken and exp.root.exists():
            shutil.rmtree(exp.root)  # a stale mirror of an experiment the bucket no longer holds
    else:
        exp = ExperimentDir(Path(storage) / name)
        taken = exp.spec.exists()
    if taken:
        raise FileExistsError(
            f"{exp.where} already holds an experiment; continue it with `demem resume {exp.where}` "
            "or choose another --name"
        )
    return exp


def push_results(exp: ExperimentDir) -> None:
    """On object storage: everything the driver wrote (audits, tables, HParams, summary); run
    directories are pushed by their trials."""
    if exp.store is not None:
        exp.store.push(skip_top=(TUNE, "artifacts"))


def copy_spec(spec_path: str | Path, exp: ExperimentDir) -> None:
    """The exact spec file, written atomically with the umask's permissions."""
    write_text(exp.spec, Path(spec_path).read_text(encoding="utf-8"))  # validated UTF-8, bounded


def resume_experiment(
    root: str | Path,
    *,
    address: str | None = None,
    echo: Printer = print,
    train: TrainFn | None = None,
    retry_failed: bool = False,
) -> ExperimentDir:
    """Continue an interrupted experiment from its own plain records: spec.yaml, trials.json, the
    run directories (metrics.json = finished; checkpoint.pt = where a trial continues). Tune's saved
    state is not read. Finished models are not retrained, audited groups are not re-audited, and the
    Parquet files are rebuilt without duplicates. Failed trials are run again, except deterministic
    failures (a config the trial refused, a non-finite loss) unless `retry_failed`."""
    exp = open_experiment(root)
    if not exp.spec.is_file():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no spec.yaml)")
    exp.check_tree()  # before the lock file is opened: nothing in it may lead outside
    spec = load_spec(exp.spec)
    trial_records(spec, exp)  # every record checked before Ray starts
    with ExperimentLock(exp.lock):
        state = trial_records(spec, exp)
        start_ray(address, echo)
        if spec.search is not None:
            return _resume_search(spec, exp, state, echo, train, retry_failed)
        kept, again = {}, []
        for run_id, rec in state.items():
            if rec.get("status") == "failed" and (retry_failed or not rec.get("deterministic")):
                again.append(run_id)
            else:
                kept[run_id] = rec
        if again:
            write_json(exp.trials, kept)
            if exp.store is not None:
                exp.store.push(exp.trials.name)
            # a (group, seed) audited without the failed models is audited again once they finish;
            # which one is the spec's say (the record's fields were checked against it)
            trials = spec.trials_by_key
            for key in sorted({(trials[r].group_id, trials[r].seed) for r in again}):
                exp.remove(exp.audit_dir(*key))
                if exp.store is not None:
                    exp.store.delete(exp.rel(exp.audit_result(*key)))
            echo(f"running {len(again)} failed trial(s) again")
        progress = start_progress(spec, exp, echo)
        left = [
            t
            for t in spec.trials()
            if t.trial_key not in progress.state and read_metrics(exp.run_dir(t.group_id, t.trial_key)) is None
        ]
        echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
        if left:
            build_tuner(spec, exp, None, train, trials=left).fit()
        finish(spec, exp, progress, echo)
    return exp


def _resume_search(spec, exp, records, echo, train, retry_failed) -> ExperimentDir:
    """A search continues with the samples it has left; the sampler starts afresh (seeded past the
    first session's), as its saved state would have to be unpickled."""
    if retry_failed:
        records = {k: r for k, r in records.items() if r.get("status") != "failed"}
        write_json(exp.search_trials, records)
    start_progress(spec, exp, echo)
    left = spec.search.num_samples - len(records)
    echo(f"resuming {exp.root}: {progress_summary(spec, exp)}")
    if left > 0:
        tuner = build_tuner(spec, exp, None, train, search_samples=left, search_seed_offset=len(records))
        run_search(spec, exp, tuner, echo=echo)
    return exp


def failed_trials(spec: ExperimentSpec, exp: ExperimentDir) -> int:
    """How many trials of the experiment are recorded as failed."""
    state = trial_records(spec, exp)
    return sum(1 for r in state.values() if r.get("status") == "failed")


def unfinished_trials(spec: ExperimentSpec, exp: ExperimentDir) -> int:
    """How many of a grid experiment's trials have neither ended nor failed: the driver was stopped
    (Tune ends `fit` quietly on a signal) before they ran or ended. 0 for a search, whose trial count
    its scheduler decides."""
    if spec.search is not None:
        return 0
    state = trial_records(spec, exp)
    return sum(1 for t in spec.trials() if state.get(t.trial_key, {}).get("status") not in ("done", "failed"))


def disk_full_trials(spec: ExperimentSpec, exp: ExperimentDir) -> int:
    """How many of the failed trials failed because the results disk was full (ENOSPC in their error)."""
    state = trial_records(spec, exp)
    return sum(1 for r in state.values() if r.get("status") == "failed" and _says_disk_full(r.get("error") or ""))


def _says_disk_full(error: str) -> bool:
    return "No space left on device" in error or "[Errno 28]" in error


def unaudited_groups(spec: ExperimentSpec, exp: ExperimentDir) -> list[str]:
    """'label seed s' of every (group, seed) whose models are all finished, some of them done, but
    that has no audit: its audit failed (a corrupt samples.npz, say). Empty for a search."""
    if spec.search is not None:
        return []
    state = trial_records(spec, exp)
    members: dict[tuple[str, int], list[str]] = {}
    for t in spec.trials():
        members.setdefault((t.group_id, t.seed), []).append(state.get(t.trial_key, {}).get("status", "pending"))
    labels = {g.group_id: g.label for g in spec.groups()}
    return [
        f"{labels[gid]} seed {seed}"
        for (gid, seed), states in members.items()
        if "done" in states
        and all(s in ("done", "failed") for s in states)
        and not exp.audit_result(gid, seed).exists()
    ]


def finish(spec: ExperimentSpec, exp: ExperimentDir, progress: GridProgress, echo: Printer) -> None:
    """Wait for running audits, audit what is left, collect the Parquet files, print the group table."""
    progress.poll(wait=True)
    if exp.store is not None:  # what trials and audit tasks on other nodes wrote
        exp.store.pull("artifacts", skip_names=(CHECKPOINT,))
        exp.store.pull("audits")
        progress.rescan_audits()
    for run_id, trial in progress.trials.items():  # runs finished by an earlier, interrupted driver
        if run_id not in progress.state and read_metrics(exp.run_dir(trial.group_id, run_id)) is not None:
            progress.state[run_id] = {
                "status": "done",
                "error": "",
                "group_id": trial.group_id,
                "seed": trial.seed,
                "model_index": trial.model_index,
            }
    progress.save()
    for key in sorted({(t.group_id, t.seed) for t in progress.trials.values()}):
        progress.maybe_audit(key, in_process=True)
    paths = collect(spec, exp)
    write_hparams(spec, exp)
    push_results(exp)
    echo("")
    echo(group_table(exp))
    echo("")
    echo("results: " + ", ".join(str(p) for p in paths))
    echo(f"TensorBoard: tensorboard --logdir {join_uri(exp.where, TUNE) if exp.remote else exp.root}")


def progress_summary(spec: ExperimentSpec, exp: ExperimentDir) -> str:
    """'N done, N failed, N running, N pending' from the experiment's files."""
    if spec.search is not None:
        records = trial_records(spec, exp)
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
    state = trial_records(spec, exp)
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
        f"{len(spec.groups()) * len(spec.seeds)} (group, seed) audits done"
    )


def status(root: str | Path, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        exp = open_experiment(root)
    except (StorageError, FileNotFoundError) as e:
        print(f"demem status: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not exp.spec.is_file():
        print(f"demem status: {exp.root} is not an experiment directory (no spec.yaml)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        exp.check_tree()  # only reads, but says what resume would refuse (and a FIFO would hang it)
        spec = load_spec(exp.spec, check_data=False)
        summary = progress_summary(spec, exp)
        state = trial_records(spec, exp)
    except SpecError as e:
        print(f"demem status: {exp.spec}: " + "; ".join(e.problems), file=sys.stderr)
        return EXIT_BAD_INPUT
    except ValueError as e:
        print(f"demem status: {e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{spec.name}: {summary}", file=out)
    for run_id, s in sorted(state.items()):
        if s["status"] == "failed":
            last = (s.get("error") or "").strip().splitlines()
            print(f"  failed {run_id}: {last[-1] if last else ''}", file=out)
    return 0
