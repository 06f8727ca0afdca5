"""`demem summarize` of groups trained elsewhere: external audit directories (one per group and
replicate) ranked with the seed-level statistics of our own experiments; `audit.keep_models`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from demem.commands import main as demem_main
from demem.membership import keep_mask
from orchestrator.cli import main
from orchestrator.external import audit_tables
from orchestrator.spec import load_spec

N, M, Q, K = 400, 8, 2, 10


def _logits_dir(d: Path, *, seed: int, boost: float) -> Path:
    """A mi_lira directory whose models put `boost` more logit on the true class of their members:
    leakage that grows with `boost`. Keep masks depend on the seed alone, so groups pair per seed."""
    rng = np.random.default_rng([seed, int(boost * 10)])
    labels = np.random.default_rng(seed).integers(0, K, N)
    keep = keep_mask(M, N, seed)
    d.mkdir(parents=True)
    np.save(d / "y_train.npy", labels)
    for m in range(M):
        z = rng.normal(size=(N, Q, K)).astype(np.float32)
        z[np.arange(N), :, labels] += 1.0 + boost * keep[m][:, None]
        (d / f"experiment-{m}" / "logits").mkdir(parents=True)
        np.save(d / f"experiment-{m}" / "keep.npy", keep[m])
        np.save(d / f"experiment-{m}" / "logits" / "0000000010.npy", z[:, None])
    return d


@pytest.fixture(scope="module")
def audits(tmp_path_factory):
    """Two groups ("leaky", "tight") x three replicates, each audited into its own directory."""
    base = tmp_path_factory.mktemp("ext")
    out = []
    for label, boost in (("leaky", 2.0), ("tight", 0.3)):
        for seed in (0, 1, 2):
            src = _logits_dir(base / f"{label}-{seed}", seed=seed, boost=boost)
            dest = base / "audits" / f"{label}-{seed}"
            flags = ["--label", label, "--seed", str(seed), "--attacks", "lira,loss", "--dataset", "synthetic"]
            assert demem_main(["audit", str(src), "--out", str(dest), *flags]) == 0
            out.append(dest)
    return out


def test_summarize_external_audits(audits, tmp_path, capsys):
    out = tmp_path / "summary"
    assert main(["summarize", *map(str, audits), "--out", str(out)]) == 0
    md = (out / "ranking.md").read_text()
    assert "leaky" in md and "tight" in md
    assert md.count("(n=3 seeds)") >= 4 and "(baseline)" not in md
    summary = pd.read_parquet(out / "summary.parquet").set_index("group_label")
    assert (summary["n_seeds"] == 3).all()
    assert summary.loc["leaky", "mia_auc_mean"] > summary.loc["tight", "mia_auc_mean"] + 0.1
    # equal keep masks per seed: one pool key, so the groups are compared paired per (seed, target)
    assert summary["pool_key"].nunique() == 1
    assert summary.loc["leaky", "not_separable_from"] == ""
    assert summary.loc["tight", "rank"] == 1 and summary.loc["leaky", "rank"] == 2  # less leakage, same accuracy
    assert (out / "report.html").exists()


def test_tables_of_external_audits(audits):
    t = audit_tables(audits)
    assert set(t.runs["group_label"]) == {"leaky", "tight"} and len(t.runs) == 2 * 3 * M
    assert t.runs["natural_acc"].between(0, 1).all()
    assert set(t.audits["seed"]) == {0, 1, 2} and not t.roc.empty and not t.lowfpr.empty


def test_refusals(audits, tmp_path, capsys):
    assert main(["summarize", str(audits[0]), str(audits[0]), "--out", str(tmp_path / "o")]) == 2
    assert "both group 'leaky' seed 0" in capsys.readouterr().err
    assert main(["summarize", str(audits[0]), str(audits[1])]) == 2
    assert "needs --out" in capsys.readouterr().err
    exp = tmp_path / "exp"
    exp.mkdir()
    (exp / "spec.yaml").write_text("name: x\n")
    assert main(["summarize", str(audits[0]), str(exp), "--out", str(tmp_path / "o")]) == 2
    assert "experiment directory" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_keep_weights_writes_the_models_state_dict(tmp_path):
    from demem.runner import WEIGHTS, train_run
    from demem.train import RunConfig, model_for

    run = RunConfig.from_dict(
        {
            "data": {"dataset": "fashion-mnist", "pool_size": 40},
            "train": {"arch": "small-cnn", "epochs": 1, "batch_size": 10, "augment": False},
            "method": {"name": "standard"},
            "eval": {"adversarial": None, "boundary": None, "attack": {"steps": 1}},
        }
    )
    train_run(run, tmp_path / "run", keep_checkpoint=True, keep_weights=True)
    sd = torch.load(tmp_path / "run" / WEIGHTS, weights_only=True)
    trained = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    assert sd.keys() == trained.keys() and all(torch.equal(sd[k], trained[k]) for k in sd)
    model_for(run, torch.device("cpu")).load_state_dict(sd, strict=True)


def test_plan_states_the_disk_cost(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text(
        "name: kept\naudit: {models: 4, keep_models: true, attacks: [loss]}\n"
        "base: {data: {dataset: fashion-mnist, pool_size: 40}, train: {arch: small-cnn, epochs: 1}}\n"
    )
    plan = load_spec(spec, check_data=False).plan()
    from demem.models import count_parameters
    from demem.train import RunConfig, model_for

    n = count_parameters(model_for(RunConfig.from_dict({"train": {"arch": "small-cnn"}}), torch.device("cpu")), False)
    assert f"{n * 4 * 4 / 2**20:,.1f} MiB" in plan and "model.pt" in plan
    spec.write_text(spec.read_text().replace("keep_models: true", "keep_models: 1"))
    with pytest.raises(ValueError, match="audit.keep_models: must be true or false"):
        load_spec(spec, check_data=False)


def test_trials_carry_keep_models_from_the_spec(tmp_path):
    from orchestrator.layout import ExperimentDir
    from orchestrator.trials import GridTrial, trial_of
    from orchestrator.tuner import GRID_KEY, grid_trial

    for keep in (True, False):
        spec = tmp_path / f"{keep}.yaml"
        spec.write_text(
            f"name: k{keep}\naudit: {{models: 4, keep_models: {str(keep).lower()}, attacks: [loss]}}\n"
            "base: {data: {dataset: fashion-mnist, pool_size: 40}}\n"
        )
        plan = load_spec(spec, check_data=False)
        exp = ExperimentDir(tmp_path / f"k{keep}")
        trial = plan.trials()[0]
        made = grid_trial(plan, exp, trial, next(g for g in plan.groups() if g.group_id == trial.group_id))
        assert made.keep_models is keep
        back = trial_of({GRID_KEY: made.to_config()})  # what the trainable gets from Tune's config
        assert isinstance(back, GridTrial) and back.keep_models is keep
