"""The example plugin (examples/plugin, installed by `make setup`) end to end: its spec, shrunk, goes
through `demem validate`, `demem run` and `demem summarize` with the plugin's defence (RelaxLoss on
PGD-AT's examples) beside PGD-AT, PGD-AT + DeMem and DP-SGD, on the plugin's architecture and with
its attack in the audit; the defence is paired with its PGD-AT baseline like DeMem is."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from demem.methods import METHODS

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "examples" / "plugin" / "spec.yaml"

pytestmark = pytest.mark.skipif(
    "relaxloss_at" not in METHODS, reason="the example plugin is not installed (make setup installs it)"
)


def test_the_plugin_spec_runs_beside_pgd_at_demem_and_dp_sgd(ray_session, tmp_path, capsys):
    from orchestrator.cli import main

    raw = yaml.safe_load(SPEC.read_text())
    assert {p["method"] for p in raw["points"]} >= {"relaxloss_at", "pgd_at", "dp_sgd"}
    assert {"lambda": 0.4, "method": "pgd_at"} in raw["points"]
    raw["base"]["data"]["pool_size"] = 64
    raw["base"]["train"]["epochs"] = 2  # RelaxLoss alternates by epoch: both kinds run
    raw["base"]["eval"]["attack"]["steps"] = 1
    raw["base"]["eval"]["adversarial"]["steps"] = 1
    raw["seeds"]["train"] = [0, 1]
    for point in raw["points"]:
        if point["method"] == "relaxloss_at":
            point["method.beta"] = 5.0  # above a 2-epoch model's loss, so RelaxLoss differs from PGD-AT
    spec = tmp_path / "plugin.yaml"
    spec.write_text(yaml.safe_dump(raw, sort_keys=False))

    assert main(["validate", str(spec), "--no-data-check"]) == 0
    out = capsys.readouterr().out
    for name in ("train.arch lenet5", "method.name relaxloss_at", "audit.attacks calibrated_loss"):
        line = next(line for line in out.splitlines() if name in line)
        assert "plugin demem-example-plugin 0.1.0" in line
    assert "built-in" in next(line for line in out.splitlines() if "method.name pgd_at" in line)

    assert main(["run", str(spec), "--storage", str(tmp_path / "results")]) == 0
    exp = tmp_path / "results" / raw["name"]
    assert main(["summarize", str(exp)]) == 0
    runs = pd.read_parquet(exp / "runs.parquet")
    assert (runs["status"] == "done").all() and len(runs) == 5 * 2 * 4
    assert set(runs["config.train.arch"]) == {"lenet5"}
    audits = pd.read_parquet(exp / "audits.parquet")
    assert {"calibrated_loss", "rmia_online", "loss_adv"} <= set(audits["attack"])
    summary = pd.read_parquet(exp / "summary" / "summary.parquet")
    relax = summary[summary["method"] == "relaxloss_at"].iloc[0]
    base = summary[(summary["method"] == "pgd_at") & (summary["lambda"] == 0)].iloc[0]
    # paired with the PGD-AT baseline, as DeMem is: a delta with an interval across the 2 seeds
    assert relax["baseline_label"] == base["group_label"] and not relax["is_baseline"]
    assert relax["defence"] == "relaxloss_at" and base["defence"] == "none"
    assert (
        relax["robust_cost_n"] == 2 and relax["robust_cost_lo"] <= relax["robust_cost_mean"] <= relax["robust_cost_hi"]
    )
    assert relax["leakage_reduction_n"] == 2
    md = (exp / "summary" / "ranking.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| ") and "| method=relaxloss_at" in line)
    assert row.count("(n=2 seeds)") >= 3
    # method.beta reaches the plugin as RelaxLoss's alpha: above the loss, its even epochs ascend
    relax_runs = runs[runs["config.method.name"] == "relaxloss_at"]
    pgd_runs = runs[(runs["config.method.name"] == "pgd_at") & (runs["config.demem.lambda"] == 0)]
    assert set(relax_runs["config.method.beta"]) == {5.0}
    assert not relax_runs["train_loss"].reset_index(drop=True).equals(pgd_runs["train_loss"].reset_index(drop=True))
