"""`demem audit` on a real group of overfit models, and its refusals."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from demem.artifacts import GroupError, load_group
from demem.commands import main
from demem.penalty import load_risk_table
from demem.privacy.audit import AuditConfig, parse_attacks, run_audit

from ...helpers import OVERFIT, train_group


@pytest.fixture(scope="module")
def audited(overfit_group, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit")
    assert main(["audit", str(overfit_group), "--out", str(out)]) == 0
    return out, json.loads((out / "audit.json").read_text())


def test_lira_finds_members_of_overfit_models(audited, capsys):
    _, result = audited
    online = result["attacks"]["lira_online"]["mean"]
    assert online["n_targets"] == 12
    assert online["auc_mean"] > 0.7
    assert online["tpr_at_1pct_mean"] > 0.05  # far above the 1% of a blind guess
    for name in (
        "lira_online_fixed",
        "lira_offline",
        "lira_offline_fixed",
        "rmia_online",
        "rmia_offline",
        "loss",
        "confidence",
    ):
        assert result["attacks"][name]["mean"]["auc_mean"] > 0.6, name
    assert result["attacks"]["loss"]["mean"]["balanced_acc_class_thresholds_mean"] > 0.55
    roc = result["attacks"]["lira_online"]["roc"]
    assert len(roc["fpr"]) == len(roc["tpr"]) and min(roc["fpr"]) > 0
    assert result["accuracy"]["natural_acc"]["n"] == 12


def test_shuffled_membership_gives_chance(overfit_group):
    group = load_group(overfit_group)
    # Balanced labels that do not match what the models saw. Each sample gets its own random half of
    # the models (not our complementary-pair mask: relabelling with the same pair structure keeps
    # each target's true complement on the opposite side and so leaks a little real membership).
    rng = np.random.default_rng(12345)
    n = group.keep.shape[1]
    wrong = np.zeros_like(group.keep)
    for i in range(n):
        wrong[rng.permutation(12)[:6], i] = True
    shuffled = dataclasses.replace(group, keep=wrong)
    result, _ = run_audit(shuffled, AuditConfig(attacks=("lira_online", "lira_online_fixed", "loss")))
    for name, res in result["attacks"].items():
        assert abs(res["mean"]["auc_mean"] - 0.5) < 0.05, name


def test_per_sample_table_feeds_demem(audited, overfit_group):
    out, result = audited
    table = pd.read_parquet(out / "samples.parquet")
    assert len(table) == 200 and table["sample_id"].is_unique
    assert {"memorization", "risk", "phi_in_mean", "phi_out_mean", "heldout_acc"} <= set(table.columns)
    assert table["memorization"].between(-1, 1).all()
    # Overfit models: samples are classified better when trained on.
    assert table["memorization"].mean() > 0.05
    assert (table["phi_in_mean"] > table["phi_out_mean"]).mean() > 0.8
    ids, mem = load_risk_table(out / "samples.parquet")
    assert len(ids) == 200
    bins = result["memorization_bins"]
    assert len(bins) == 21 and sum(b["n"] for b in bins) == 200
    # Highly memorised samples are exactly the ones the models get wrong when they did not see them.
    low = [b for b in bins if b["bin"] <= 2 and b["n"] >= 5]
    high = [b for b in bins if b["bin"] >= 10 and b["n"] >= 5]
    assert low and high
    assert max(b["heldout_acc"] for b in high) < min(b["heldout_acc"] for b in low)


def test_audit_json_last_line(overfit_group, tmp_path, capsys):
    assert (
        main(
            [
                "audit",
                str(overfit_group),
                "--out",
                str(tmp_path),
                "--attacks",
                "lira_online,loss",
                "--targets",
                "3",
                "--json",
            ]
        )
        == 0
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(last) == {"lira_online", "loss"} and last["loss"]["n_targets"] == 3


def test_parse_attacks():
    assert parse_attacks("lira,loss") == (
        "lira_online",
        "lira_online_fixed",
        "lira_offline",
        "lira_offline_fixed",
        "loss",
    )
    assert parse_attacks("rmia,loss,rmia_online") == ("rmia_online", "rmia_offline", "loss")
    with pytest.raises(ValueError, match="unknown attack"):
        AuditConfig(attacks=parse_attacks("lira,gap"))


def test_refuses_mixed_groups_and_missing_models(overfit_group, tmp_path, capsys):
    mixed = tmp_path / "mixed"
    shutil.copytree(overfit_group, mixed)
    cfg_path = mixed / "model-03" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["run"]["train"]["lr"] = 0.1
    cfg_path.write_text(json.dumps(cfg))
    assert main(["audit", str(mixed)]) == 2
    assert "not from the same group: they differ in train.lr" in capsys.readouterr().err

    partial = tmp_path / "partial"
    shutil.copytree(overfit_group, partial)
    shutil.rmtree(partial / "model-05")
    assert main(["audit", str(partial)]) == 2
    assert "model_index [5]" in capsys.readouterr().err
    (partial / "model-04" / "samples.npz").unlink()
    assert main(["audit", str(partial), "--allow-partial"]) == 2
    assert "have not finished" in capsys.readouterr().err

    with pytest.raises(GroupError, match="no model directories"):
        load_group(tmp_path / "nothing-here")


def test_refuses_groups_too_small_for_lira(tmp_path, capsys):
    tiny = {**OVERFIT, "train": {**OVERFIT["train"], "epochs": 1}}
    train_group(tmp_path / "g", 2, **tiny)
    assert main(["audit", str(tmp_path / "g")]) == 2
    assert ">= 2 IN and >= 2 OUT" in capsys.readouterr().err


def test_memorization_by_construction():
    from demem.privacy.memorization import mem_bin, memorization

    keep = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], dtype=bool)
    correct = np.array([[1, 1], [0, 1], [1, 0], [0, 0]], dtype=bool)
    # sample 0: in models 0, 2 (both correct), out 1, 3 (both wrong) -> 1.0
    # sample 1: in models 1, 3 (1 of 2 correct), out 0, 2 (1 of 2) -> 0.0
    np.testing.assert_allclose(memorization(correct, keep), [1.0, 0.0])
    assert mem_bin(np.array([-0.3, 0.0, 0.01, 0.05, 0.051, 0.95, 1.0])).tolist() == [0, 0, 1, 1, 2, 19, 20]


def test_audit_table_drives_a_memorization_risk_run(audited, tmp_path, capsys):
    out, _ = audited
    assert (
        main(
            [
                "train",
                "--pool-size",
                "200",
                "--pool-seed",
                "3",
                "--method",
                "standard",
                "--epochs",
                "1",
                "--batch-size",
                "20",
                "--demem-lambda",
                "0.5",
                "--demem-risk",
                "memorization",
                "--demem-risk-file",
                str(out / "samples.parquet"),
                "--demem-threshold",
                "0.5",
                "--eval-attack-steps",
                "1",
                "--out",
                str(tmp_path / "run"),
                "--json",
            ]
        )
        == 0
    )
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["status"] == "done"
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    assert 0.4 < history[0]["high_risk_frac"] < 0.6 and history[0]["penalty"] > 0


def _first_models(group, m: int):
    """The group's first m models (complementary pairs 2k, 2k+1 stay together)."""
    return dataclasses.replace(
        group,
        dirs=group.dirs[:m],
        model_index=group.model_index[:m],
        signals={k: v[:m] for k, v in group.signals.items()},
        keep=group.keep[:m],
        metrics=group.metrics[:m],
    )


def test_lira_refuses_groups_that_cannot_estimate_a_variance(overfit_group):
    """With 4 models, target and partner left out, each sample has 1 IN and 1 OUT shadow: every
    per-sample std is 0, so the 'fixed' variance (their median) would be the 1e-6 floor and the
    online-fixed scores ~1e13. Every LiRA variant is refused there, naming the group size that works;
    RMIA and the threshold attacks still run. At 6 models LiRA's fixed variance is a real estimate."""
    from demem.privacy.mia import STD_FLOOR, lira_scores

    group = load_group(overfit_group)
    attacks = ("lira_online_fixed", "lira_offline_fixed", "lira_online", "rmia_online", "loss")
    result, _ = run_audit(_first_models(group, 4), AuditConfig(attacks=attacks))
    for name in attacks[:3]:
        assert "LiRA needs a group of at least 6 models" in result["attacks"][name]["skipped"], name
    assert result["attacks"]["rmia_online"]["n_references"] == 2 and "skipped" not in result["attacks"]["loss"]
    # what the refusal prevents, from first principles: one shadow a side has no spread
    four = _first_models(group, 4)
    degenerate = lira_scores(
        four.signals["phi"], four.keep, variant="online_fixed", min_shadows=1, exclude=[1, 0, 3, 2]
    )
    assert np.abs(degenerate).max() > 1 / STD_FLOOR
    six = _first_models(group, 6)
    result, _ = run_audit(six, AuditConfig(attacks=("lira_online_fixed", "lira_offline_fixed")))
    for name in ("lira_online_fixed", "lira_offline_fixed"):
        assert "skipped" not in result["attacks"][name] and result["attacks"][name]["n_references"] == 4
    scores = lira_scores(six.signals["phi"], six.keep, variant="online_fixed", exclude=[1, 0, 3, 2, 5, 4])
    assert np.abs(scores).max() < 1e4
