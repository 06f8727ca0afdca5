"""The study (search_spaces/study_fashion.yaml, docs/results.md) shrunk to seconds and run end to end
on the session's Ray, then analysed by docs/study.py, so neither the spec nor the analysis can rot."""

from __future__ import annotations

import importlib.util

import yaml

from .conftest import ROOT

STUDY = ROOT / "search_spaces" / "study_fashion.yaml"


def _analysis():
    spec = importlib.util.spec_from_file_location("study_analysis", ROOT / "docs" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_shrunken_study_runs_and_every_claim_is_analysed(ray_session, tmp_path):
    from orchestrator.run import run_experiment
    from orchestrator.spec import load_spec

    raw = yaml.safe_load(STUDY.read_text())
    full = load_spec(STUDY, check_data=False)
    assert len(full.groups()) == len(raw["points"]) == 12 and len(full.seeds) >= 3 and raw["audit"]["models"] >= 16
    # every point, 1 epoch on a 64-sample pool, PGD-1 evaluation, 2 seeds x 6 models
    raw["base"]["data"]["pool_size"] = 64
    raw["base"]["train"]["epochs"] = 1
    raw["base"]["eval"]["attack"]["steps"] = 1
    raw["base"]["eval"].update(adversarial=None, boundary=None)  # the study's attacks read neither
    raw["seeds"]["train"] = [0, 1]
    raw["audit"]["models"] = 6  # the fewest LiRA accepts
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    exp = run_experiment(path, storage=tmp_path / "results", echo=lambda _: None)

    study = _analysis()
    text = study.report(exp.root)
    for title in (
        "Claim 1",
        "Claim 2: DP-SGD",
        "Claim 3",
        "Threshold",
        "Threshold at equal",
        "Claim 2 by memorization",
    ):
        assert f"### {title}" in text
    s = study.Study(exp.root)
    keys = [study.STANDARD, study.PGD_AT, study.TRADES, study.AWP, study.DP]
    keys += [study.demem(study.PGD_AT, lam) for lam in (0.2, 0.4, 0.6)]
    keys += [study.demem(study.TRADES, 0.4), study.demem(study.AWP, 0.4)]
    keys += [study.demem(study.PGD_AT, 0.4, tau) for tau in (0.5, 0.9)]
    assert sorted(keys) == sorted(s.ids)  # the analysis names exactly the spec's groups
    assert s.n_seeds == 2
    # a paired difference has an interval across the 2 seeds (or n/a where a metric is undefined)
    d = s.acc(study.PGD_AT, study.STANDARD, "robust_acc_pgd")
    assert d["n"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
    rows = [
        line
        for line in text.splitlines()
        if line.startswith("| ") and not line.startswith(("| group", "| mem", "| point"))
    ]
    assert len(rows) == 12 + 3 + 1 + 5 + 4 + 2 + 4  # every group, contrast, threshold point, memorization bin
    assert all("n/a" not in line and "nan" not in line for line in rows[:12])  # every group has its levels
