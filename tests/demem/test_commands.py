"""`demem train`: outputs, --json, argument errors before any data is touched, resume."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

import demem.data.pool
import demem.train
from demem.commands import main
from demem.train import RunConfig

FAST = [
    "--pool-size",
    "300",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--train-attack-steps",
    "1",
    "--eval-attack-steps",
    "3",
]


def test_train_writes_all_outputs_and_json(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(
        [
            "train",
            "--method",
            "trades",
            "--demem-lambda",
            "0.4",
            "--demem-threshold",
            "0.5",
            "--n-models",
            "4",
            "--model-index",
            "1",
            "--out",
            str(out),
            "--json",
            *FAST,
        ]
    )
    assert rc == 0
    stdout = capsys.readouterr().out.strip().splitlines()
    last = json.loads(stdout[-1])
    assert last["status"] == "done" and last["epochs_done"] == 2 and last["n_heldout"] == 150
    assert 0 <= last["robust_acc_pgd"] <= last["natural_acc"] <= 1
    for name in ("config.json", "checkpoint.pt", "keep.npy", "samples.npz", "metrics.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    run = RunConfig.from_dict(cfg["run"])
    assert run.method.name == "trades" and run.demem.lam == 0.4 and run.model_index == 1
    assert run.attack.start == "gaussian"  # TRADES's own start, resolved and recorded
    keep = np.load(out / "keep.npy")
    with np.load(out / "samples.npz") as z:
        assert np.array_equal(z["keep"], keep) and keep.sum() == 150
        assert z["phi"].shape == (300, 2) and np.isfinite(z["phi"]).all()
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and metrics["pool_fingerprint"] == cfg["pool_fingerprint"]


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ["--method", "madry"],
            "unknown method 'madry'; known: dp_pgd_at, dp_sgd, dp_trades, fgsm_rs, mart, pgd_at, ",
        ),
        (["--demem-lambda", "-0.2"], "demem.lambda must be a finite number >= 0"),
        (["--demem-threshold", "1.0"], "demem.risk_threshold must be in [0, 1)"),
        (["--eps", "0"], "attack.eps must be > 0"),
        (["--arch", "vgg16"], "unknown model 'vgg16'; known:"),
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'; known:"),
        (["--model-index", "2"], "model_index must be in [0, n_models=2)"),
        (["--method", "mart", "--awp-gamma", "0.01"], "AWP (method.awp_gamma > 0) works with"),
    ],
)
def test_bad_arguments_fail_before_any_data_is_loaded(tmp_path, capsys, monkeypatch, args, message):
    def no_data(*a, **k):
        raise AssertionError("data loaded before the arguments were checked")

    monkeypatch.setattr(demem.data.pool, "load_splits", no_data)  # where make_pool looks it up
    monkeypatch.setattr(demem.train, "make_pool", no_data)
    assert main(["train", "--out", str(tmp_path / "x"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize(
    "out, message",
    [
        ("f/sub", "--out {t}/f/sub: {t}/f is a file, not a directory"),
        ("f/a/b", "--out {t}/f/a/b: {t}/f is a file, not a directory"),
        ("f", "--out {t}/f is a file; name a directory"),
    ],
)
def test_out_under_or_at_a_file_fails_before_any_data_is_loaded(tmp_path, capsys, monkeypatch, out, message):
    def no_data(*a, **k):
        raise AssertionError("data loaded before --out was checked")

    monkeypatch.setattr(demem.data.pool, "load_splits", no_data)
    monkeypatch.setattr(demem.train, "make_pool", no_data)
    (tmp_path / "f").write_text("a regular file\n")
    assert main(["train", "--out", str(tmp_path / out), *FAST]) == 2
    assert capsys.readouterr().err.splitlines() == [f"demem train: {message.format(t=tmp_path)}"]
    assert (tmp_path / "f").read_text() == "a regular file\n"


def test_a_crafted_cifar_batch_is_refused_in_one_line(tmp_path, capsys):
    from ..demem.test_data import RunsAShellCommand, write_cifar10

    write_cifar10(tmp_path / "c")
    batch = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_1"
    marker = tmp_path / "pwned"
    batch.write_bytes(pickle.dumps({b"data": RunsAShellCommand(marker), b"labels": [0]}, protocol=2))
    args = ["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "c"), "--out", str(tmp_path / "x")]
    assert main([*args, "--epochs", "1", "--pool-size", "24"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        f"demem train: {batch}: not a CIFAR batch file: refusing posix.system: a CIFAR batch holds only numpy "
        "arrays, lists and dicts"
    ]
    assert "Traceback" not in err and not marker.exists() and not (tmp_path / "x").exists()


def test_missing_dataset_names_the_fetch_command(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DEMEM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert (
        main(["train", "--dataset", "cifar10", "--data-root", str(tmp_path / "empty"), "--out", str(tmp_path / "x")])
        == 2
    )
    err = capsys.readouterr().err
    assert "--download" in err and str(tmp_path / "empty") in err


def test_refuses_to_overwrite_and_resumes_after_interruption(tmp_path, capsys, monkeypatch):
    straight = tmp_path / "straight"
    assert main(["train", "--out", str(straight), *FAST]) == 0
    assert main(["train", "--out", str(straight), *FAST]) == 2
    assert "--resume" in capsys.readouterr().err

    calls = {"n": 0}
    real = demem.train.train_epoch

    def interrupted(state):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the user hits Ctrl-C during epoch 2
        return real(state)

    cut = tmp_path / "cut"
    monkeypatch.setattr(demem.train, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        main(["train", "--out", str(cut), *FAST])
    monkeypatch.setattr(demem.train, "train_epoch", real)
    assert not (cut / "metrics.json").exists() and (cut / "checkpoint.pt").exists()
    assert main(["train", "--out", str(cut), "--resume", *FAST]) == 0
    assert "continuing from" in capsys.readouterr().out
    a = json.loads((straight / "metrics.json").read_text())
    b = json.loads((cut / "metrics.json").read_text())
    for key in ("natural_acc", "robust_acc_pgd", "train_loss"):
        assert a[key] == b[key], key


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "demem.commands", "train", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--demem-threshold" in out.stdout


def test_attack_start_and_awp_objective_flags():
    from demem.commands import build_parser, run_dict_from_args

    args = build_parser().parse_args(
        [
            "train",
            "--out",
            "x",
            "--method",
            "pgd_at",
            "--awp-gamma",
            "0.01",
            "--awp-objective",
            "total",
            "--train-attack-start",
            "gaussian",
        ]
    )
    run = RunConfig.from_dict(run_dict_from_args(args))
    assert run.attack.start == "gaussian" and run.method.awp_objective == "total"
    default = RunConfig.from_dict(run_dict_from_args(build_parser().parse_args(["train", "--out", "x"])))
    assert default.attack.start == "uniform" and default.method.awp_objective == "method"


def test_train_help_gives_each_methods_own_attack_start(capsys):
    """The training attack starts where each method's authors start (TRADES, MART: Gaussian); the
    help must not name one default for all."""
    from demem.commands import main as core_main

    with pytest.raises(SystemExit):
        core_main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text[text.index("--train-attack-start {uniform,gaussian} random start") :][:300]
    gaussian = start[start.index("gaussian:") :].split(";")[0]
    assert "trades" in gaussian and "mart" in gaussian and "pgd_at" not in gaussian
    assert "[uniform]" not in start


def test_robust_signal_flags():
    from demem.commands import build_parser, run_dict_from_args

    def run_of(*flags: str) -> RunConfig:
        return RunConfig.from_dict(run_dict_from_args(build_parser().parse_args(["train", "--out", "x", *flags])))

    default = run_of()
    assert default.eval.adversarial.steps == 10 and default.eval.boundary.norms == ("linf", "l2")
    run = run_of("--adversarial-steps", "3", "--boundary-norms", "l2", "--eps", "0.2")
    assert run.eval.adversarial.steps == 3 and run.eval.adversarial.eps == 0.2  # the threat model's eps
    assert run.eval.boundary.norms == ("l2",) and run.eval.boundary.linf_max is None
    off = run_of("--no-adversarial", "--no-boundary")
    assert off.eval.adversarial is None and off.eval.boundary is None
    with pytest.raises(ValueError, match="boundary.norms must be a subset"):
        run_of("--boundary-norms", "l1")
