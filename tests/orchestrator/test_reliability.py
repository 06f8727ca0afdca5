"""Reliability and safety of the driver and the command line: broken or hostile files and arguments
are refused with a message (no traceback) before any work, names cannot escape --storage, one
driver per experiment, failures are visible and end in a documented exit code, a full disk ends
cleanly and `demem resume` then finishes without repair, and resume never unpickles anything."""

from __future__ import annotations

import functools
import json
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from orchestrator.cli import _drive, main
from orchestrator.layout import ExperimentDir
from orchestrator.run import EXIT_BUSY, EXIT_DISK_FULL, EXIT_TRIALS_FAILED, EXIT_UNFINISHED

from .conftest import ROOT, TINY, tiny_spec

MARKER = Path("/tmp/demem-hostile-ran")


class _RunsAShellCommand:
    """Unpickling this runs a shell command: what a crafted checkpoint or state file would do."""

    def __reduce__(self):
        return (os.system, (f"touch {MARKER}",))


@pytest.fixture
def no_marker():
    MARKER.unlink(missing_ok=True)
    yield
    assert not MARKER.exists(), "a crafted file ran code"


def _refused(capsys, argv: list[str], fragment: str, code: int = 2) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == code, err
    assert fragment in err, err
    assert "Traceback" not in err
    return err


# --- `demem train` / `demem audit` -------------------------------------------------------------

TRAIN = ["train", "--pool-size", "64", "--epochs", "1", "--n-models", "2"]


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--device", "bogus"], "unknown device 'bogus'"),
        (["--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["--lr", "inf"], "train.lr must be a finite number, got inf"),
        (["--lr", "nan"], "train.lr must be a finite number, got nan"),
        (["--weight-decay", "nan"], "train.weight_decay must be a finite number, got nan"),
        (["--eps=-inf"], "attack.eps must be a finite number"),
        (["--demem-lambda", "inf"], "demem.lambda must be a finite number"),
        (["--epochs", "100000000"], "train.epochs must be in [1, 10000]"),
        (["--pool-size", "100000000"], "data.pool_size must be at most 70000"),
        (["--model-index", "5"], "model_index must be in [0, n_models=2)"),
        (["--data-root", "/nonexistent/demem"], "/nonexistent/demem"),
    ],
)
def test_train_refuses_bad_arguments(extra, fragment, tmp_path, capsys):
    err = _refused(capsys, [*TRAIN, "--out", str(tmp_path / "out"), *extra], fragment)
    if "--data-root" in extra:  # only the named root was looked in: no other copy stands in for it
        assert "/usr/share/datasets" not in err
    assert not (tmp_path / "out").exists()


def test_train_refuses_an_out_that_is_a_file(tmp_path, capsys):
    f = tmp_path / "f"
    f.write_text("x")
    _refused(capsys, [*TRAIN, "--out", str(f)], "is a file; name a directory")


def test_truncated_dataset_files_are_named(tmp_path, capsys):
    from ..helpers import FASHION_DIR, needs_fashion  # noqa: F401

    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST is not installed")
    for f in FASHION_DIR.glob("*.gz"):
        (tmp_path / f.name).write_bytes(f.read_bytes()[:3000])
    _refused(capsys, [*TRAIN, "--out", str(tmp_path / "o"), "--data-root", str(tmp_path)], "truncated or corrupt")


def test_idx_header_cannot_make_us_allocate(tmp_path):
    import gzip

    from demem.data.idx import _read_idx

    header = (2051).to_bytes(4, "big") + b"".join((60000).to_bytes(4, "big") for _ in range(3))  # 216 TB
    with gzip.open(tmp_path / "x.gz", "wb") as f:
        f.write(header)
    with pytest.raises(ValueError, match="more than 2147483648 bytes"):
        _read_idx(tmp_path / "x.gz", 2051)


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    """One finished `demem train` directory (1 epoch, 64 samples) and its group of two."""
    root = tmp_path_factory.mktemp("group")
    for m in (0, 1):
        rc = main([*TRAIN, "--model-index", str(m), "--out", str(root / f"m{m}"), "--seed", "0"])
        assert rc == 0
    return root


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_resume_from_a_truncated_or_crafted_checkpoint_is_refused(trained_dir, tmp_path, capsys, no_marker):
    out = _copy(trained_dir / "m0", tmp_path / "m0")
    (out / "metrics.json").unlink()
    good = torch.load(out / "checkpoint.pt", weights_only=True)
    (out / "checkpoint.pt").write_bytes((trained_dir / "m0" / "checkpoint.pt").read_bytes()[:500])
    _refused(capsys, [*TRAIN, "--out", str(out), "--resume"], "not a readable demem checkpoint")
    torch.save({"evil": _RunsAShellCommand()}, out / "checkpoint.pt")  # a pickle that runs a command
    _refused(capsys, [*TRAIN, "--out", str(out), "--resume"], "not a readable demem checkpoint")
    torch.save({**good, "format": 2}, out / "checkpoint.pt")
    _refused(capsys, [*TRAIN, "--out", str(out), "--resume"], "not a demem checkpoint")


def test_audit_names_corrupt_files(trained_dir, tmp_path, capsys, no_marker):
    group = _copy(trained_dir, tmp_path / "g")
    samples = group / "m1" / "samples.npz"
    samples.write_bytes(samples.read_bytes()[:200])
    _refused(capsys, ["audit", str(group), "--attacks", "loss"], f"{samples}: truncated or corrupt")
    np.savez(samples, keep=np.array([_RunsAShellCommand()], dtype=object))  # pickled object arrays
    _refused(capsys, ["audit", str(group), "--attacks", "loss"], f"{samples}: truncated or corrupt")
    (group / "m0" / "config.json").write_text('{"run": ')
    _refused(capsys, ["audit", str(group), "--attacks", "loss"], f"{group / 'm0' / 'config.json'}: corrupt")
    f = tmp_path / "file"
    f.write_text("x")
    _refused(capsys, ["audit", str(trained_dir), "--attacks", "loss", "--out", str(f)], "is a file")


# --- the experiment commands, without Ray ------------------------------------------------------


def _experiment(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "tiny"
    root.mkdir(parents=True)
    shutil.copyfile(TINY, root / "spec.yaml")
    return root


@pytest.mark.parametrize("command", ["status", "resume"])
@pytest.mark.parametrize(
    "name, content, fragment",
    [
        ("trials.json", b'{"a": ', "trials.json: corrupt JSON"),
        ("trials.json", b"\xff\xfe", "trials.json: corrupt (not UTF-8"),
        ("trials.json", b"[1, 2]", "trials.json: corrupt (not a mapping of trial records)"),
        ("trials.json", b'{"x": 1}', "trials.json: corrupt (not a mapping of trial records)"),
        ("spec.yaml", b"\x00\x01", "a binary file"),
        ("spec.yaml", b"name: [", "YAML syntax error"),
        ("spec.yaml", b"a: &a [*a]", "YAML aliases are not allowed"),
    ],
)
def test_status_and_resume_report_corrupt_records(command, name, content, fragment, tmp_path, capsys):
    root = _experiment(tmp_path)
    (root / name).write_bytes(content)
    _refused(capsys, [command, str(root)], fragment)


@pytest.mark.parametrize("command", ["status", "resume", "summarize"])
def test_commands_on_a_directory_that_is_no_experiment(command, tmp_path, capsys):
    _refused(capsys, [command, str(tmp_path)], "is not an experiment directory")


def test_summarize_refuses_an_out_that_is_a_file(tmp_path, capsys):
    root = _experiment(tmp_path)
    f = tmp_path / "f"
    f.write_text("x")
    _refused(capsys, ["summarize", str(root), "--out", str(f)], "is a file; name a directory")


@pytest.mark.parametrize("name", ["../../escaped", "..", ".", "a/b", "/tmp/abs", ".hidden", "-x", "x" * 101])
def test_run_name_must_be_one_path_component(name, tmp_path, capsys):
    storage = tmp_path / "deep" / "results"
    _refused(capsys, ["run", str(TINY), "--storage", str(storage), f"--name={name}"], "--name: must be one path")
    assert not (tmp_path / "deep").exists() and not (tmp_path / "escaped").exists()


def test_a_second_driver_is_refused_with_the_holder(tmp_path, capsys):
    from orchestrator.layout import ExperimentDir
    from orchestrator.lock import ExperimentLock

    root = _experiment(tmp_path)
    with ExperimentLock(ExperimentDir(root).lock):
        err = _refused(capsys, ["resume", str(root)], "is in use by another driver", code=EXIT_BUSY)
        assert f"pid {os.getpid()}" in err
    # released (as it is when a driver dies, however it dies): the next driver takes it
    with ExperimentLock(ExperimentDir(root).lock):
        pass


def test_the_lock_of_a_killed_driver_is_not_stale(tmp_path):
    from orchestrator.layout import ExperimentDir
    from orchestrator.lock import ExperimentLock

    root = _experiment(tmp_path)
    code = (
        "import os, sys; from orchestrator.lock import ExperimentLock; "
        f"ExperimentLock({str(ExperimentDir(root).lock)!r}).acquire(); os.kill(os.getpid(), 9)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=False)
    with ExperimentLock(ExperimentDir(root).lock):  # the kernel released it with the process
        pass


def test_resume_reads_no_pickle(tmp_path, capsys, no_marker, monkeypatch):
    """A results directory whose Tune state was replaced by a crafted pickle resumes without running
    it: resume builds a new Tuner from trials.json and the run directories, never Tuner.restore."""
    import orchestrator.run as run

    root = _experiment(tmp_path)
    state = root / "tune" / "run-1"
    state.mkdir(parents=True)
    for name in ("tuner.pkl", "experiment_state-2026.json", "trainable.pkl"):
        (state / name).write_bytes(pickle.dumps(_RunsAShellCommand()))
    seen = []
    monkeypatch.setattr(run, "start_ray", lambda *a, **k: seen.append("ray") or {"CPU": 2.0, "GPU": 0.0})
    monkeypatch.setattr(run, "build_tuner", lambda *a, **k: seen.append(k.get("trials")) or _NoTuner())
    monkeypatch.setattr(run, "finish", lambda *a, **k: seen.append("finish"))
    assert main(["resume", str(root)]) == EXIT_UNFINISHED, capsys.readouterr().err  # nothing trained
    assert len(seen[1]) == 8 and seen[-1] == "finish"  # every trial of the spec, from our own records
    assert not MARKER.exists()


def test_a_driver_stopped_before_every_trial_ended_says_so_and_exits_6(tmp_path, capsys, monkeypatch):
    """Tune ends `fit` quietly when the driver gets SIGINT; the driver then collects what finished.
    Its exit code must not say the experiment is done (a script would take the tables for the
    whole experiment's), and the message names the trials left and `demem resume`."""
    import orchestrator.run as run
    from orchestrator.spec import load_spec

    root = _experiment(tmp_path)
    spec = load_spec(root / "spec.yaml", check_data=False)
    trials = spec.trials()
    ended = {  # three trials ended before the stop, one of them failed for good (resume retries no such)
        t.trial_key: {
            "status": s,
            "error": "",
            "deterministic": s == "failed",
            "group_id": t.group_id,
            "seed": t.seed,
            "model_index": t.model_index,
        }
        for t, s in zip(trials[:3], ("done", "done", "failed"))
    }
    (root / "trials.json").write_text(json.dumps(ended))
    monkeypatch.setattr(run, "start_ray", lambda *a, **k: {"CPU": 2.0, "GPU": 0.0})
    monkeypatch.setattr(run, "build_tuner", lambda *a, **k: _NoTuner())  # stopped before the rest ran
    monkeypatch.setattr(run, "finish", lambda *a, **k: None)
    assert main(["resume", str(root)]) == EXIT_UNFINISHED
    err = capsys.readouterr().err
    assert f"{len(trials) - 3} of {len(trials)} trials did not finish" in err and f"demem resume {root}" in err
    assert run.unfinished_trials(spec, ExperimentDir(root)) == len(trials) - 3
    first = ended[trials[0].trial_key]
    everything = {
        t.trial_key: {**first, "group_id": t.group_id, "seed": t.seed, "model_index": t.model_index} for t in trials
    }
    (root / "trials.json").write_text(json.dumps(everything))
    assert run.unfinished_trials(spec, ExperimentDir(root)) == 0
    # every trial ended: the exit code is the audit's (none ran here, finish being stubbed), not 6
    assert main(["resume", str(root)]) == EXIT_TRIALS_FAILED
    assert "did not finish" not in capsys.readouterr().err


class _NoTuner:
    def fit(self):
        return None


# --- with Ray: resources, failures, full disk --------------------------------------------------


def test_resources_beyond_the_cluster_are_refused_before_any_write(ray_session, tmp_path, capsys):
    spec = tiny_spec(tmp_path, resources={"cpu": 64, "gpu": 0})
    storage = tmp_path / "results"
    _refused(capsys, ["run", str(spec), "--storage", str(storage)], "a trial needs 64 CPU but the largest node has")
    assert not storage.exists()


def test_failed_groups_are_reported_everywhere_and_not_retried(ray_session, tmp_path):
    from orchestrator.run import run_experiment
    from orchestrator.summarize import summarize

    from .trial_hooks import refusing

    spec = tiny_spec(tmp_path, failure={"max_retries": 2})
    lines: list[str] = []
    code = _drive(
        "run",
        str(spec),
        lambda: run_experiment(
            spec, storage=tmp_path / "results", echo=lines.append, train=functools.partial(refusing, lam=0.4)
        ),
    )
    assert code == EXIT_TRIALS_FAILED
    root = tmp_path / "results" / "tiny"
    records = json.loads((root / "trials.json").read_text())
    failed = [r for r in records.values() if r["status"] == "failed"]
    assert len(failed) == 4 and all(r["deterministic"] for r in failed)
    assert all("injected deterministic failure" in r["error"] for r in failed)
    attempts = [len(list(d.glob(".attempt-*"))) for d in (root / "artifacts").glob("*/*")]
    assert sorted(attempts) == [1] * 8  # no retry of a deterministic failure, max_retries 2 or not
    table = "\n".join(lines)
    assert "lambda=0.4" in table and "FAILED: all 4 models failed" in table
    out: list[str] = []
    paths = summarize(root, echo=out.append, tensorboard=False)
    assert "FAILED: lambda=0.4: all 4 models failed" in paths["ranking.md"].read_text()
    assert "FAILED: lambda=0.4" in paths["report.html"].read_text() and "FAILED: lambda=0.4" in out[0]


def test_a_trial_with_an_unreadable_checkpoint_fails_once_naming_it(ray_session, tmp_path):
    """The runner's one policy (demem.runner), through a Tune trial: the same refusal as `demem train
    --resume`, as a deterministic failure (not retried), and the file left as it was."""
    from orchestrator.run import run_experiment

    from .trial_hooks import damaging

    spec = tiny_spec(tmp_path, grid={"demem.lambda": [0.4]}, failure={"max_retries": 2})
    train = functools.partial(damaging, models=[1], content="not a checkpoint")
    lines: list[str] = []
    code = _drive(
        "run", str(spec), lambda: run_experiment(spec, storage=tmp_path / "results", echo=lines.append, train=train)
    )
    assert code == EXIT_TRIALS_FAILED
    root = tmp_path / "results" / "tiny"
    records = json.loads((root / "trials.json").read_text())
    assert sorted(r["status"] for r in records.values()) == ["done", "done", "done", "failed"]
    (failed,) = [r for r in records.values() if r["status"] == "failed"]
    assert failed["deterministic"]
    assert "checkpoint.pt" in failed["error"] and "not a readable demem checkpoint" in failed["error"]
    (run_dir,) = [d for d in (root / "artifacts").glob("*/*") if (d / "checkpoint.pt").exists()]
    assert (run_dir / "checkpoint.pt").read_text() == "not a checkpoint"  # kept for a person to look at
    assert len(list(run_dir.glob(".attempt-*"))) == 1  # not retried
    assert not (run_dir / "metrics.json").exists() and not (run_dir / "config.json").exists()
    assert any("FAILED: ValueError" in line and "checkpoint.pt" in line for line in lines)


def test_a_full_disk_ends_cleanly_and_resume_finishes(ray_session, tmp_path, capsys, monkeypatch):
    import errno

    import orchestrator.run as run

    real = run.collect

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", "runs.parquet")

    monkeypatch.setattr(run, "collect", full)
    storage = tmp_path / "results"
    rc = main(["run", str(TINY), "--storage", str(storage)])
    err = capsys.readouterr().err
    assert rc == EXIT_DISK_FULL and "the disk holding the results is full" in err and "Traceback" not in err
    monkeypatch.setattr(run, "collect", real)
    assert main(["resume", str(storage / "tiny")]) == 0, capsys.readouterr().err
    runs = pd.read_parquet(storage / "tiny" / "runs.parquet")
    assert len(runs) == 8 and (runs["status"] == "done").all()


@pytest.mark.slow
def test_a_real_full_filesystem_then_resume(tmp_path):
    """Storage on an 8 MB tmpfs (root only) nearly filled by another file: the run ends with a
    message and exit code 5 (whether the driver or only trials hit the full disk); once that file is
    deleted, `demem resume` finishes the experiment without any manual repair."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], check=False).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        filler = mnt / "filler"
        filler.write_bytes(b"\0" * (8 * 2**20 - 600 * 2**10))  # leaves ~600 KB: less than one checkpoint
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        ray_tmp = tempfile.mkdtemp(prefix="dm-ray-")  # short: Ray's socket paths must stay under 107 bytes
        env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
        cli = [sys.executable, "-m", "orchestrator.cli"]
        storage = mnt / "results"
        first = subprocess.run(
            [*cli, "run", str(TINY), "--storage", str(storage)], env=env, capture_output=True, text=True, timeout=900
        )
        assert first.returncode == EXIT_DISK_FULL, first.stderr[-3000:]
        assert "demem run:" in first.stderr and "Traceback" not in first.stderr, first.stderr[-3000:]
        filler.unlink()
        second = subprocess.run(
            [*cli, "resume", str(storage / "tiny")], env=env, capture_output=True, text=True, timeout=900
        )
        assert second.returncode == 0, second.stderr[-3000:]
        runs = pd.read_parquet(storage / "tiny" / "runs.parquet")
        assert len(runs) == 8 and (runs["status"] == "done").all()
        assert len(pd.read_parquet(storage / "tiny" / "audits.parquet")) == 24  # 2 groups x 4 targets x 3 attacks
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_spec_is_copied_with_the_umask(tmp_path):
    from orchestrator.layout import ExperimentDir
    from orchestrator.run import copy_spec

    old = os.umask(0o022)
    try:
        root = tmp_path / "e"
        root.mkdir()
        copy_spec(TINY, ExperimentDir(root))
        assert (root / "spec.yaml").stat().st_mode & 0o777 == 0o644
        assert yaml.safe_load((root / "spec.yaml").read_text()) == yaml.safe_load(TINY.read_text())
    finally:
        os.umask(old)


def test_resume_runs_failed_trials_again_and_reaudits(ray_session, tmp_path):
    """A trial that crashed (not deterministically) is run again by `demem resume`, and its
    (group, seed), audited without it, is audited again with every model."""
    from orchestrator.run import resume_experiment, run_experiment

    from .trial_hooks import failing

    spec = tiny_spec(
        tmp_path, grid={"demem.lambda": [0.0]}, failure={"max_retries": 0}, audit={"models": 6, "attacks": ["loss"]}
    )
    exp = run_experiment(
        spec, storage=tmp_path / "results", echo=lambda _: None, train=functools.partial(failing, fail={2: "always"})
    )
    (gid,) = {p.name for p in exp.artifacts.iterdir()}
    assert json.loads(exp.audit_result(gid, 0).read_text())["partial"] is True
    lines: list[str] = []
    resume_experiment(exp.root, echo=lines.append)
    assert any("running 1 failed trial(s) again" in line for line in lines)
    runs = pd.read_parquet(exp.root / "runs.parquet")
    assert (runs["status"] == "done").all() and len(runs) == 6
    audit = json.loads(exp.audit_result(gid, 0).read_text())
    assert audit["partial"] is False and audit["n_models"] == 6


@pytest.mark.parametrize("address", [None, "10.0.0.5:6379"])
def test_auth_is_off_only_for_the_private_local_instance(address, monkeypatch):
    """No address: a new private instance (`address="local"`, never an existing `ray start` cluster)
    with auth off on loopback. An address: joined with Ray's own settings. Either way, said."""
    import ray

    import orchestrator.run as run

    for key in ("RAY_AUTH_MODE", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append((kw["address"], os.environ.get("RAY_AUTH_MODE"))))
    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 8.0, "GPU": 1.0}}])
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 8.0, "GPU": 1.0})
    said: list[str] = []
    assert run.start_ray(address, said.append) == {"CPU": 8.0, "GPU": 1.0}
    if address is None:
        assert calls == [("local", "disabled")] and "a private local instance (127.0.0.1, no auth)" in said[0]
    else:
        assert calls == [(address, None)] and f"the cluster at {address}" in said[0]
    assert "1 node(s), 8 CPUs, 1 GPUs" in said[0]


def test_ray_that_cannot_start_is_a_message(tmp_path, capsys, monkeypatch):
    import ray

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)

    def refuse(**kw):
        raise OSError("AF_UNIX path length cannot exceed 107 bytes: /very/long/path")

    monkeypatch.setattr(ray, "init", refuse)
    storage = tmp_path / "results"
    err = _refused(capsys, ["run", str(TINY), "--storage", str(storage)], "could not start or join Ray")
    assert "AF_UNIX path length" in err and not storage.exists()


def test_an_audit_task_lost_with_its_node_is_run_again_once(ray_session, tiny_experiment, tmp_path, monkeypatch):
    """An audit task whose worker dies (its node removed) fails its ref; the driver says so and
    audits that (group, seed) once more, in-process, when the experiment finishes. (Ray's default
    scheduler keeps these zero-CPU tasks on the driver's node, so a lost worker node rarely holds one.)"""
    import ray

    import orchestrator.progress as progress_mod
    from orchestrator.layout import ExperimentDir
    from orchestrator.progress import GridProgress
    from orchestrator.run import finish
    from orchestrator.spec import load_spec

    exp = ExperimentDir(tmp_path / "tiny")
    shutil.copytree(tiny_experiment[0].root, exp.root)
    spec = load_spec(exp.spec, check_data=False)
    key = (spec.groups()[0].group_id, 0)
    before = json.loads(exp.audit_result(*key).read_text())
    shutil.rmtree(exp.audit_dir(*key))
    lines: list[str] = []
    progress = GridProgress(spec, exp, lines.append)
    assert key not in progress.audited

    @ray.remote(max_retries=0)
    def dies_with_its_node():
        os._exit(1)

    progress.pending[key] = dies_with_its_node.remote()
    calls = []
    real = progress_mod.audit_group
    monkeypatch.setattr(progress_mod, "audit_group", lambda *a, **k: calls.append(a[1:3]) or real(*a, **k))
    finish(spec, exp, progress, lines.append)
    assert calls == [key]  # run again exactly once, and no other group re-audited
    assert sum("audit of" in line and "failed" in line for line in lines) == 1
    after = json.loads(exp.audit_result(*key).read_text())
    assert after["n_models"] == before["n_models"] and after["partial"] is False
    audits = pd.read_parquet(exp.table("audits.parquet"))
    assert audits.groupby(["group_id", "seed", "attack"]).size().nunique() == 1  # no group short or doubled
