"""Auditing models trained elsewhere: logits in the LiRA authors' layout and in our npz layout, and
state dicts, checked against the audit of the same models' run directories and against a plain numpy
port of the authors' scoring (tensorflow/privacy research/mi_lira_2021/score.py)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from demem.artifacts import load_group, read_json_file
from demem.augment import shift
from demem.commands import main
from demem.device import layout, to_float
from demem.evasion import eval_mode
from demem.privacy.attacks import MIA, AttackRefused
from demem.privacy.audit import AuditConfig, attack_setup, run_audit
from demem.privacy.external import ExternalError, read_mi_lira, read_npz_models
from demem.privacy.external_checkpoints import read_checkpoints
from demem.privacy.signals import query_plan
from demem.train import RunConfig, load_pool, model_for

EPOCH = "0000000100.npy"


def _models(group_dir: Path):
    """(run config, model with its checkpoint's weights) of each run directory, by model_index."""
    out = []
    for cfg in sorted(group_dir.rglob("config.json")):
        run = RunConfig.from_dict(read_json_file(cfg)["run"])
        model = model_for(run, torch.device("cpu"))
        sd = torch.load(cfg.parent / "checkpoint.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(sd["model"])
        out.append((run, model, cfg.parent))
    return sorted(out, key=lambda r: r[0].model_index)


def pool_logits(model, pool, queries: int) -> np.ndarray:
    """(N, Q, K) float32 logits over the query views `pool_signals` uses (one batch: N <= 1000)."""
    plan = query_plan(pool.info, queries)
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in plan)
    x = to_float(pool.images, torch.device("cpu"), model)
    b = x.shape[0]
    views = []
    with eval_mode(model), torch.no_grad():
        for dy, dx, flip in plan:
            v = x
            if (dy, dx, flip) != (0, 0, False):
                v = shift(x, torch.full((b,), dy), torch.full((b,), dx), pad, torch.full((b,), flip))
            views.append(model(layout(v, model)).float().numpy())
    return np.stack(views, axis=1)


def score_py(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """A straight numpy port of score.py's load_one on (N, 1, Q, K) logits: (N, Q)."""
    predictions = logits - np.max(logits, axis=3, keepdims=True)
    predictions = np.array(np.exp(predictions.astype(np.float64)), dtype=np.float64)
    predictions = predictions / np.sum(predictions, axis=3, keepdims=True)
    count = predictions.shape[0]
    y_true = predictions[np.arange(count), :, :, labels[:count]]
    predictions[np.arange(count), :, :, labels[:count]] = 0
    y_wrong = np.sum(predictions, axis=3)
    return np.log(y_true.mean(1) + 1e-45) - np.log(y_wrong.mean(1) + 1e-45)


@pytest.fixture(scope="module")
def exported(overfit_group, tmp_path_factory):
    """The overfit group's logits written in the mi_lira layout and in the npz layout."""
    models = _models(overfit_group)
    pool = load_pool(models[0][0])
    q = models[0][0].eval.queries
    base = tmp_path_factory.mktemp("external")
    lira, plain = base / "mi_lira", base / "npz"
    plain.mkdir()
    labels = pool.labels.numpy().astype(np.int64)
    (lira).mkdir()
    np.save(lira / "y_train.npy", labels)
    logits = {}
    for run, model, d in models:
        z = pool_logits(model, pool, q)
        logits[run.model_index] = z
        keep = np.load(d / "keep.npy")
        exp = lira / f"experiment-{run.model_index:02d}"
        (exp / "logits").mkdir(parents=True)
        np.save(exp / "keep.npy", keep)
        np.save(exp / "logits" / EPOCH, z[:, None])
        np.save(exp / "logits" / "0000000050.npy", z[:, None] * 0.5)  # an earlier epoch, not the one read
        np.savez(
            plain / f"m{run.model_index:02d}.npz",
            sample_id=np.arange(pool.n),
            label=labels,
            logits=z,
            keep=keep,
            model_index=np.int64(run.model_index),
        )
    return {"lira": lira, "npz": plain, "logits": logits, "labels": labels, "pool": pool}


def _scores(group, name):
    setup = attack_setup(group, AuditConfig())
    try:
        return MIA.get(name).score(setup).scores
    except AttackRefused:
        return None


def test_mi_lira_equals_score_py_and_run_directories(exported, overfit_group, tmp_path, capsys):
    out = tmp_path / "audit"
    assert main(["audit", str(exported["lira"]), "--out", str(out), "--label", "overfit", "--seed", "0"]) == 0
    assert "epoch 100" in capsys.readouterr().out
    group = read_mi_lira(exported["lira"])
    assert group.run["external"]["epoch"] == 100
    # (a) phi is score.py's statistic, and LiRA on score.py's numbers is LiRA on ours
    ref = np.stack([score_py(exported["logits"][m][:, None], exported["labels"]) for m in range(group.n_models)])
    phi_err = float(np.abs(group.signals["phi"] - ref).max() / np.abs(ref).max())
    assert phi_err < 1e-6
    on_ref = replace(group, signals={**group.signals, "phi": ref})
    lira, lira_ref = _scores(group, "lira_online"), _scores(on_ref, "lira_online")
    lira_err = float(np.abs(lira - lira_ref).max() / np.abs(lira_ref).max())
    assert lira_err < 1e-5
    # (b) every attack's scores and per-target metrics equal the audit of the run directories
    runs = load_group(overfit_group)
    worst = 0.0
    for name in MIA.registered():
        a, b = _scores(group, name), _scores(runs, name)
        assert (a is None) == (b is None), name
        if a is not None:
            worst = max(worst, float(np.abs(a - b).max() / max(1.0, np.abs(b).max())))
    assert worst < 1e-6
    external = read_json_file(out / "audit.json")
    own, _ = run_audit(runs, AuditConfig())
    metric_err = 0.0
    for name, res in own["attacks"].items():
        assert ("skipped" in res) == ("skipped" in external["attacks"][name])
        for r1, r2 in zip(res.get("per_target", []), external["attacks"][name].get("per_target", [])):
            metric_err = max(metric_err, max(abs(r1[k] - r2[k]) for k in ("auc", "tpr_at_1pct", "balanced_acc")))
    assert metric_err < 1e-6
    # the accuracy section: natural accuracy on each model's non-members, as the runs recorded it
    accs = [m["natural_acc"] for m in external["external"]["models"]]
    assert np.allclose(accs, [m["natural_acc"] for m in runs.metrics])
    assert external["external"]["label"] == "overfit" and external["external"]["format"] == "mi-lira"
    print(
        f"\nmi_lira equality: phi vs score.py max rel err {phi_err:.2e}; lira_online vs LiRA on score.py's phi "
        f"{lira_err:.2e}; every attack's scores vs run directories {worst:.2e}; per-target metrics {metric_err:.2e}; "
        f"lira_online AUC {own['attacks']['lira_online']['mean']['auc_mean']:.4f} (runs) vs "
        f"{external['attacks']['lira_online']['mean']['auc_mean']:.4f} (mi_lira)"
    )


def test_npz_layout_audits_like_mi_lira(exported, tmp_path):
    a, b = read_mi_lira(exported["lira"]), read_npz_models(exported["npz"])
    for key in a.signals:
        assert np.array_equal(a.signals[key], b.signals[key]), key
    assert np.array_equal(a.keep, b.keep) and np.array_equal(a.model_index, b.model_index)
    ra, _ = run_audit(a, AuditConfig())
    rb, _ = run_audit(b, AuditConfig())
    assert json.dumps(ra["attacks"], sort_keys=True) == json.dumps(rb["attacks"], sort_keys=True)
    assert main(["audit", str(exported["npz"]), "--out", str(tmp_path / "o")]) == 0
    assert read_json_file(tmp_path / "o" / "audit.json")["external"]["format"] == "npz"


def test_earlier_epoch_and_experiment_subset(exported):
    early = read_mi_lira(exported["lira"], epoch=50)
    assert early.run["external"]["epoch"] == 50
    some = read_mi_lira(exported["lira"], experiments=["experiment-00", "experiment-01"])
    assert some.n_models == 2


CHECKPOINT_FLAGS = ["--dataset", "fashion-mnist", "--pool-size", "200", "--pool-seed", "3", "--arch", "small-cnn"]
CHECKPOINT_FLAGS += ["--norm", "group", "--eval-attack-steps", "1", "--no-adversarial", "--no-boundary"]


@pytest.fixture(scope="module")
def state_dicts(overfit_group, tmp_path_factory):
    """The overfit group's weights as keep.npy + models/<i>.pt."""
    d = tmp_path_factory.mktemp("checkpoints")
    (d / "models").mkdir()
    models = _models(overfit_group)
    np.save(d / "keep.npy", np.stack([np.load(r / "keep.npy") for _, _, r in models]))
    for run, model, _ in models:
        torch.save(model.state_dict(), d / "models" / f"{run.model_index}.pt")
    return d


def test_checkpoints_give_the_runs_signals(state_dicts, overfit_group, tmp_path):
    runs = load_group(overfit_group)
    out = tmp_path / "audit"
    assert main(["audit", str(state_dicts), "--out", str(out), "--device", "cpu", *CHECKPOINT_FLAGS]) == 0
    result = read_json_file(out / "audit.json")
    assert result["external"]["format"] == "checkpoints"
    models = result["external"]["models"]
    for key in ("natural_acc", "robust_acc_pgd", "train_natural_acc", "robust_gap"):
        assert np.allclose([m[key] for m in models], [m[key] for m in runs.metrics]), key
    from_dirs = read_checkpoints(overfit_group, seed=0)  # our run directories: their configs say everything
    for key in runs.signals:
        assert np.allclose(from_dirs.signals[key], runs.signals[key], rtol=1e-5, atol=1e-5), key
    assert from_dirs.pool_fingerprint == runs.pool_fingerprint
    # and through the command line, as the README shows it: the same audit as the run directories'
    assert main(["audit", str(overfit_group), "--format", "checkpoints", "--seed", "0", "--out", str(out)]) == 0
    again, own = read_json_file(out / "audit.json"), run_audit(runs, AuditConfig())[0]
    for name in ("lira_online", "rmia_online", "loss"):
        assert again["attacks"][name]["mean"]["auc_mean"] == pytest.approx(
            own["attacks"][name]["mean"]["auc_mean"], abs=1e-4
        )


def test_state_dict_of_another_architecture_is_refused(state_dicts, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(state_dicts, bad)
    torch.save({"fc.weight": torch.zeros(3, 3)}, bad / "models" / "4.pt")
    out = tmp_path / "out"
    assert main(["audit", str(bad), "--out", str(out), *CHECKPOINT_FLAGS]) == 2
    err = capsys.readouterr().err
    assert (
        "4.pt" in err
        and "does not fit small-cnn" in err
        and "missing keys" in err
        and "unexpected keys fc.weight" in err
    )
    assert not out.exists()
    with pytest.raises(ExternalError, match="mis-shaped"):
        sd = torch.load(state_dicts / "models" / "0.pt", weights_only=True)
        key = next(iter(sd))
        sd[key] = torch.zeros(1)
        torch.save(sd, bad / "models" / "4.pt")
        read_checkpoints(
            bad,
            run_dict={
                "data": {"dataset": "fashion-mnist", "pool_size": 200, "pool_seed": 3},
                "train": {"arch": "small-cnn", "norm": "group"},
            },
        )


# ---------------------------------------------------------------------------------------------------
# Hostile inputs: each refused with a clear message before any work, exit 2, nothing written
# ---------------------------------------------------------------------------------------------------


def _lira_dir(d: Path, m: int = 6, n: int = 20, q: int = 2, k: int = 3) -> Path:
    from demem.membership import keep_mask

    rng = np.random.default_rng(0)
    keep = keep_mask(m, n, 0)
    d.mkdir(parents=True)
    np.save(d / "y_train.npy", rng.integers(0, k, n))
    for j in range(m):
        (d / f"exp{j}" / "logits").mkdir(parents=True)
        np.save(d / f"exp{j}" / "keep.npy", keep[j])
        np.save(d / f"exp{j}" / "logits" / EPOCH, rng.normal(size=(n, 1, q, k)).astype(np.float32))
    return d


class _Boom:
    def __reduce__(self):  # what a crafted pickle does: call something on load
        return (Path.touch, (Path(_Boom.marker),))


def _pickled(d: Path) -> None:
    np.save(d / "exp0" / "keep.npy", np.array([{"a": 1}] * 20, dtype=object), allow_pickle=True)


def _truncated(d: Path) -> None:
    p = d / "exp1" / "logits" / EPOCH
    p.write_bytes(p.read_bytes()[:-7])


def _absurd(d: Path) -> None:
    with open(d / "y_train.npy", "wb") as f:  # a valid file of 3,000,001 labels: over the cap
        np.lib.format.write_array(f, np.zeros(3_000_001, dtype=np.int8))


def _symlink(d: Path) -> None:
    outside = d.parent / "elsewhere"
    shutil.copytree(d / "exp2", outside)
    shutil.rmtree(d / "exp2")
    (d / "exp2").symlink_to(outside)


HOSTILE = {
    "logits without the singleton axis": (
        lambda d: np.save(d / "exp0" / "logits" / EPOCH, np.zeros((20, 2, 3), np.float32)),
        [],
        "logits must have shape (20, 1, *, *)",
    ),
    "keep of another N": (
        lambda d: np.save(d / "exp1" / "keep.npy", np.ones(19, bool)),
        [],
        "keep must have shape (20,)",
    ),
    "non-bool keep": (lambda d: np.save(d / "exp1" / "keep.npy", np.ones(20, np.int64)), [], "keep must be bool"),
    "object array": (_pickled, [], "Python objects"),
    "truncated logits": (_truncated, [], "truncated or crafted"),
    "absurd size": (_absurd, [], "more than the 2000000 accepted"),
    "experiment that is a path": (lambda d: None, ["--models", "exp0,../exp1"], "not a single plain path component"),
    "symlink out of DIR": (_symlink, [], "leads outside"),
    "labels beyond the classes": (
        lambda d: np.save(d / "y_train.npy", np.full(20, 7)),
        [],
        "labels must lie in [0, 3)",
    ),
    "shapes that differ": (
        lambda d: np.save(d / "exp3" / "logits" / EPOCH, np.zeros((20, 1, 3, 3), np.float32)),
        [],
        "differ in shape",
    ),
    "non-finite logits": (
        lambda d: np.save(d / "exp3" / "logits" / EPOCH, np.full((20, 1, 2, 3), np.nan, np.float32)),
        [],
        "NaN or infinite",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_mi_lira_inputs(case, tmp_path, capsys):
    spoil, flags, message = HOSTILE[case]
    d = _lira_dir(tmp_path / "in")
    assert main(["audit", str(d), "--out", str(tmp_path / "out"), "--format", "mi-lira"]) == 0  # sound as made
    shutil.rmtree(tmp_path / "out")
    capsys.readouterr()
    spoil(d)
    assert main(["audit", str(d), "--out", str(tmp_path / "out"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("demem audit: ") and message in err, err
    assert not (tmp_path / "out").exists()


def test_hostile_npz_and_state_dicts(state_dicts, tmp_path, capsys):
    d = tmp_path / "npz"
    d.mkdir()
    np.savez(
        d / "a.npz", sample_id=np.arange(4), label=np.zeros(4, int), logits=np.zeros((4, 3)), keep=np.ones(4, bool)
    )
    np.savez(
        d / "b.npz",
        sample_id=np.array([{}] * 4, dtype=object),
        label=np.zeros(4, int),
        logits=np.zeros((4, 3)),
        keep=np.ones(4, bool),
    )
    assert main(["audit", str(d), "--out", str(tmp_path / "out")]) == 2
    assert "Python objects" in capsys.readouterr().err
    (d / "b.npz").write_bytes(b"PK\x03\x04 not really a zip")
    assert main(["audit", str(d), "--out", str(tmp_path / "out")]) == 2
    assert "b.npz" in capsys.readouterr().err
    (d / "b.npz").unlink()
    np.savez(
        d / "b.npz", sample_id=np.arange(1, 5), label=np.zeros(4, int), logits=np.zeros((4, 3)), keep=np.ones(4, bool)
    )
    assert main(["audit", str(d), "--out", str(tmp_path / "out")]) == 2
    assert "sample_id / label differ" in capsys.readouterr().err
    # a crafted pickle in a .pt runs nothing: torch's weights-only reader refuses it
    bad = tmp_path / "pt"
    shutil.copytree(state_dicts, bad)
    _Boom.marker = str(tmp_path / "ran")
    torch.save({"conv.weight": _Boom()}, bad / "models" / "2.pt")
    assert main(["audit", str(bad), "--out", str(tmp_path / "out"), *CHECKPOINT_FLAGS]) == 2
    assert "2.pt: not a readable state dict" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists() and not (tmp_path / "out").exists()
    np.save(bad / "keep.npy", np.ones((12, 150), bool))
    assert main(["audit", str(bad), "--out", str(tmp_path / "out"), *CHECKPOINT_FLAGS]) == 2
    assert "the keep rows have 150 columns but the pool (fashion-mnist) has 200" in capsys.readouterr().err


def test_the_readmes_external_audit_commands_run_as_written(exported, state_dicts, tmp_path, monkeypatch):
    """README.md "Auditing models trained elsewhere": each command, on files in the layouts it names."""
    import shlex

    from orchestrator.cli import main as demem
    from tests.helpers import readme_blocks

    monkeypatch.chdir(tmp_path)
    (tmp_path / "exp").mkdir()
    shutil.copytree(exported["lira"], tmp_path / "exp" / "cifar10")
    shutil.copytree(exported["npz"], tmp_path / "my_models")
    shutil.copytree(state_dicts, tmp_path / "ckpts")
    (block,) = readme_blocks("### Auditing models trained elsewhere", "bash")
    commands = [c.split("#")[0].strip() for c in block.replace("\\\n", " ").splitlines()]
    commands = [c for c in commands if c.startswith("demem ")]
    assert [c.split()[1] for c in commands] == ["audit", "audit", "audit", "summarize"]
    for command in commands:
        assert demem(shlex.split(command)[1:]) == 0, command
    for out in ("audits/cifar10-s0", "audits/mine", "audits/ckpts"):
        assert (tmp_path / out / "audit.json").is_file()
    assert "(n=1 seed" in (tmp_path / "summary-external" / "ranking.md").read_text()
