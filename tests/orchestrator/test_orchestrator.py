"""End to end on local Ray: a tiny experiment, failure injection and retries, interruption + resume."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pandas as pd
import pytest
import yaml

from .conftest import ROOT, TINY
from .conftest import tiny_spec as _spec


def test_tiny_experiment_writes_parquet_and_tensorboard(tiny_experiment):
    exp, lines = tiny_experiment
    runs = pd.read_parquet(exp.root / "runs.parquet")
    audits = pd.read_parquet(exp.root / "audits.parquet")
    samples = pd.read_parquet(exp.root / "samples.parquet")
    assert len(runs) == 8 and runs["run_id"].is_unique and (runs["status"] == "done").all()
    assert runs["group_id"].nunique() == 2 and sorted(runs["model_index"].unique()) == [0, 1, 2, 3]
    assert runs["natural_acc"].between(0, 1).all() and runs["robust_acc_pgd"].between(0, 1).all()
    assert runs["natural_acc"].mean() > 0.1  # above chance after one short epoch
    assert set(runs["config.demem.lambda"]) == {0.0, 0.4}
    # 2 groups x 4 targets x 3 attacks, one on adversarial queries
    assert len(audits) == 24 and set(audits["attack"]) == {"rmia_online", "loss", "loss_adv"}
    assert set(audits.loc[audits["attack"] == "loss_adv", "query"]) == {"adversarial"}
    assert set(audits.loc[audits["attack"] == "loss_adv", "threat_model"]) == {"white-box gradients"}
    # both halves' accuracies and their gaps, and what the adversarial queries cost
    assert runs["train_natural_acc"].between(0, 1).all() and runs["train_robust_acc"].between(0, 1).all()
    assert runs["robust_gap"].between(-1, 1).all() and runs["natural_gap"].between(-1, 1).all()
    assert runs["gap_attack"].str.startswith("adversarial queries (PGD-1,").all()
    assert (runs["adversarial_seconds"] > 0).all() and runs["boundary_seconds"].isna().all()  # boundary: null
    epsilon = pd.read_parquet(exp.root / "epsilon.parquet")
    assert len(epsilon) == 2 * 3 and (epsilon["model"] == 0).all() and (epsilon["epsilon"] >= 0).all()
    # reference models per target: M - 2 (target and partner left out) for RMIA, the one model that
    # learns per-class thresholds for the loss attack
    assert (audits.loc[audits["attack"] == "rmia_online", "n_shadow"] == 4 - 2).all()
    assert (audits.loc[audits["attack"] == "loss", "n_shadow"] == 1).all()
    assert audits["auc"].between(0, 1).all()
    assert len(samples) == 2 * 512 and samples.groupby("group_id")["sample_id"].nunique().eq(512).all()
    assert list(exp.tune.rglob("events.out.tfevents*")), "no TensorBoard event files"
    assert len(list((exp.root / "tensorboard-groups").rglob("events.out.tfevents*"))) >= 2  # HParams per group
    assert (exp.root / "spec.yaml").exists() and (exp.root / "meta.json").exists()
    text = "\n".join(lines)
    assert "[8/8 trials" in text and "natural" in text and "TensorBoard: tensorboard --logdir" in text
    # the progress lines count (group, seed) audits, the unit an audit covers: 2 groups x 1 seed here
    assert re.search(r"\[\d/8 trials, [0-2] of 2 \(group, seed\) audits done, ETA ", text)
    assert re.search(r"^audited .+ seed 0 \([12] of 2 \(group, seed\) audits done\)$", text, re.MULTILINE)


def test_status_and_idempotent_collect(tiny_experiment, capsys):
    from orchestrator.cli import main
    from orchestrator.collect import collect
    from orchestrator.spec import load_spec

    exp, _ = tiny_experiment
    assert main(["status", str(exp.root)]) == 0
    out = capsys.readouterr().out
    assert "8 done, 0 failed" in out and "; 2 of 2 (group, seed) audits done" in out
    before = pd.read_parquet(exp.root / "runs.parquet")
    collect(load_spec(exp.spec, check_data=False), exp)
    after = pd.read_parquet(exp.root / "runs.parquet")
    pd.testing.assert_frame_equal(before, after)
    # the pooled low-FPR TPRs of every audit, as audit.json has them
    low = pd.read_parquet(exp.root / "lowfpr.parquet")
    for (gid, seed), rows in low.groupby(["group_id", "seed"]):
        audit = json.loads(exp.audit_result(gid, seed).read_text())
        want = {(a, k): p["tpr"] for a, r in audit["attacks"].items() for k, p in r.get("pooled", {}).items()}
        assert dict(zip(zip(rows["attack"], rows["level"]), rows["tpr"])) == want and want


def test_failures_are_retried_or_recorded(ray_session, tmp_path):
    from orchestrator.run import run_experiment

    from .trial_hooks import failing

    spec = _spec(tmp_path, grid={"demem.lambda": [0.0]}, failure={"max_retries": 1})
    lines: list[str] = []
    exp = run_experiment(
        spec,
        storage=tmp_path / "results",
        echo=lines.append,
        train=functools.partial(failing, fail={1: "once", 2: "always"}),
    )
    runs = pd.read_parquet(exp.root / "runs.parquet").set_index("model_index")
    assert runs.loc[1, "status"] == "done"  # failed once, retried from its checkpoint, then finished
    assert (exp.run_dir(runs.loc[1, "group_id"], runs.loc[1, "run_id"]) / ".failed-once").exists()
    assert runs.loc[2, "status"] == "failed" and "injected failure (always)" in runs.loc[2, "error"]
    assert (runs.loc[[0, 3], "status"] == "done").all()
    assert any("FAILED" in line for line in lines)


# The driver under test: run the tiny spec, training only the runs in argv[3]; the others wait at
# a gate (tests/orchestrator/trial_hooks.py) until the driver is killed.
_GATED_DRIVER = """
import functools, sys
from orchestrator.run import run_experiment
from tests.orchestrator.trial_hooks import gated
run_experiment(sys.argv[1], storage=sys.argv[2],
               train=functools.partial(gated, allow=sys.argv[3].split(","), gate=sys.argv[4]))
"""


def test_interrupted_experiment_resumes_to_the_same_rows(tiny_experiment, tmp_path):
    from orchestrator.spec import load_spec

    storage = tmp_path / "results"
    # A private Ray for the driver under test: its own temp dir, and no address of the session's Ray.
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="dm-ray-")  # short: Ray's socket paths must stay under 107 bytes
    env.update(RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT))
    # Kill at a known point: the first two models have finished and some other trial reached its gate
    # (the gated trials never start training, so nothing else changes before the kill).
    allow = [t.trial_key for t in load_spec(TINY, check_data=False).trials()[:2]]
    gate = tmp_path / "gate"
    gate.mkdir()
    cmd = [sys.executable, "-c", _GATED_DRIVER, str(TINY), str(storage), ",".join(allow), str(gate)]
    log = open(tmp_path / "driver.log", "w")  # noqa: SIM115 - closed below
    driver = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    exp_root = storage / "tiny"
    deadline = time.time() + 600  # a safety net against a hang, not the kill point
    try:
        while True:  # no timing involved: wait for the state, then kill
            finished = list((exp_root / "artifacts").rglob("metrics.json")) if exp_root.exists() else []
            if len(finished) == len(allow) and any(gate.iterdir()):
                break
            if driver.poll() is not None:
                pytest.fail(
                    "the driver ended before it reached the gate: " + (tmp_path / "driver.log").read_text()[-2000:]
                )
            if time.time() > deadline:
                pytest.fail("the allowed models did not finish in time")
            time.sleep(0.2)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
        log.close()
    done = sorted(p.parent.name for p in (exp_root / "artifacts").rglob("metrics.json"))
    assert len(done) < 8
    assert done == sorted(allow)

    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "resume", str(exp_root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # a new private instance, whatever the killed driver left running
    assert "Ray: a private local instance (127.0.0.1, no auth)" in out.stdout
    resumed = pd.read_parquet(exp_root / "runs.parquet").sort_values("run_id").reset_index(drop=True)
    reference = pd.read_parquet(tiny_experiment[0].root / "runs.parquet").sort_values("run_id").reset_index(drop=True)
    assert resumed["run_id"].tolist() == reference["run_id"].tolist()
    for col in ("natural_acc", "robust_acc_pgd", "train_loss", "train_robust_acc", "robust_gap"):
        assert resumed[col].tolist() == reference[col].tolist(), col
    audits = pd.read_parquet(exp_root / "audits.parquet")
    assert len(audits) == 24 and not audits.duplicated(["group_id", "seed", "target", "attack"]).any()
    shutil.rmtree(ray_tmp, ignore_errors=True)


TINY_SEARCH = ROOT / "search_spaces" / "tiny_search.yaml"


def test_search_then_confirm(ray_session, tmp_path):
    """Optuna multi-objective search with ASHA: every trial is recorded with its objectives and a
    Pareto rank; `confirm` trains full groups for the best points plus the base and LiRA-audits them."""
    from orchestrator.confirm import confirm
    from orchestrator.run import run_experiment

    lines: list[str] = []
    exp = run_experiment(TINY_SEARCH, storage=tmp_path, echo=lines.append)
    df = pd.read_parquet(exp.root / "search.parquet")
    assert len(df) == 4 and set(df["status"]) == {"done"}
    assert {"param.demem.lambda", "param.demem.risk_threshold", "robust_acc", "mia_tpr_at_1pct"} <= set(df.columns)
    assert df["param.demem.lambda"].between(0, 1).all() and set(df["param.demem.risk_threshold"]) <= {0.0, 0.5}
    assert len(set(df["param.demem.lambda"])) == 4  # Optuna sampled, not repeated a point
    done = df[df["completed"]]
    assert len(done) >= 1 and (done["epochs_done"] == 2).all()
    assert done["robust_acc"].between(0, 1).all() and done["mia_auc"].between(0, 1).all()
    # the Pareto rank is consistent with the objectives: no ranked trial dominates a front-0 trial
    front0 = done[done["pareto_front"] == 0]
    assert len(front0) >= 1 and done["pareto_rank"].min() == 1
    for _, a in done.iterrows():
        for _, b in front0.iterrows():
            assert not (
                a["robust_acc"] >= b["robust_acc"]
                and a["mia_tpr_at_1pct"] <= b["mia_tpr_at_1pct"]
                and (a["robust_acc"] > b["robust_acc"] or a["mia_tpr_at_1pct"] < b["mia_tpr_at_1pct"])
            )
    assert sum("search trials]" in line for line in lines) == 4
    assert any("demem confirm" in line for line in lines)
    # each trial left a run directory with its per-sample statistics
    assert len(list((exp.root / "search").glob("*/samples.npz"))) >= len(done)

    out = confirm(exp.root, 1, echo=lines.append)
    spec = yaml.safe_load((out.root / "spec.yaml").read_text())
    best = done.sort_values("pareto_rank").iloc[0]
    assert spec["points"] == [
        {},
        {
            "demem.lambda": float(best["param.demem.lambda"]),
            "demem.risk_threshold": float(best["param.demem.risk_threshold"]),
        },
    ]
    runs = pd.read_parquet(out.root / "runs.parquet")
    audits = pd.read_parquet(out.root / "audits.parquet")
    assert len(runs) == 2 * 4 and runs["group_id"].nunique() == 2
    assert set(audits["attack"]) == {"rmia_online", "loss"}
    # the confirmation is an ordinary experiment: it summarises, with the base as the baseline
    from orchestrator.summarize import summarize

    summary = pd.read_parquet(summarize(out.root, echo=lines.append, tensorboard=False)["summary.parquet"])
    assert len(summary) == 2 and summary["is_baseline"].sum() == 1
    assert summary.loc[summary["is_baseline"], "group_label"].item() == "base"


def test_confirm_refuses_a_grid_experiment(tiny_experiment):
    from orchestrator.confirm import confirm_spec

    exp, _ = tiny_experiment
    with pytest.raises(ValueError, match="grid experiment, not a search"):
        confirm_spec(exp, 2)


def test_summarize_reads_a_real_experiment(tiny_experiment, tmp_path):
    """The summarizer on what `collect` really writes (the tiny experiment: PGD-AT at lambda 0 and 0.4)."""
    from orchestrator.summarize import summarize

    exp, _ = tiny_experiment
    lines: list[str] = []
    paths = summarize(exp.root, out=tmp_path, echo=lines.append, tensorboard=False)
    df = pd.read_parquet(paths["summary.parquet"]).set_index("lambda")
    assert len(df) == 2 and df.loc[0.0, "is_baseline"] and not df.loc[0.4, "is_baseline"]
    assert df.loc[0.4, "baseline_id"] == df.loc[0.0, "group_id"]
    # n counts training seeds (one here: no group-level interval, and no pair claimed separable); the
    # 4 models / audited targets of the draw are its units
    assert (df["n_seeds"] == 1).all() and (df["natural_acc_n"] == 1).all() and (df["leakage_n"] == 1).all()
    assert (df["natural_acc_units"] == 4).all() and (df["leakage_units"] == 4).all()
    assert df["natural_acc_lo"].isna().all() and not df["separable"].any()
    assert "With one seed there is no group-level interval" in (tmp_path / "ranking.md").read_text()
    assert (df["attack"] == "rmia_online").all()  # the headline with 2 reference models
    # the worst case: one seed, so the strongest attack is chosen on targets 0 and 2 and reported on 1 and 3
    md = (tmp_path / "ranking.md").read_text()
    assert "### The strongest attack, chosen without peeking" in md and "### Every attack" in md
    assert "selected on targets 0, 2, reported on targets 1, 3 (one draw)" in md
    assert df["strongest_attack"].isin(["rmia_online", "loss", "loss_adv"]).all()
    assert "### Empirical epsilon" in md and (df["empirical_epsilon"] >= 0).all()
    assert "robust gap (train − held-out)" in md
    every = pd.read_csv(paths["attacks.csv"])
    assert len(every) == 6 and set(every["query"]) == {"clean", "adversarial"}
    assert "<h3>Every attack</h3>" in paths["report.html"].read_text()
    assert df["natural_acc_mean"].between(0, 1).all() and np.isfinite(df.loc[0.4, "robust_cost_mean"])
    assert paths["roc.png"].stat().st_size > 10_000 and "report.html" in paths
    # 4 models on a 512-sample pool: 256 non-members per target, too few to rank by TPR at 1% FPR
    assert lines[0].startswith("ranking (ROC AUC of rmia_online")
    assert "Leakage metric: ROC AUC: each target has only 256 non-members" in (tmp_path / "ranking.md").read_text()


def _hparams_tab(logdir):
    """What TensorBoard's HParams tab shows for `logdir`, from its own plugin's handlers (those the
    web page calls): (hparam columns, metric columns, {session run: (hparams, {metric tag: value})})."""
    from tensorboard import context
    from tensorboard.backend.event_processing import data_provider, plugin_event_multiplexer
    from tensorboard.plugins import base_plugin
    from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

    mux = plugin_event_multiplexer.EventMultiplexer()
    mux.AddRunsFromDirectory(str(logdir))
    mux.Reload()
    provider = data_provider.MultiplexerDataProvider(mux, str(logdir))
    backend = backend_context.Context(base_plugin.TBContext(data_provider=provider, logdir=str(logdir)))
    ctx = context.RequestContext()
    experiment = get_experiment.Handler(ctx, backend, "", api_pb2.GetExperimentRequest()).run()
    request = api_pb2.ListSessionGroupsRequest(
        start_index=0, slice_size=1000, allowed_statuses=[api_pb2.STATUS_SUCCESS, api_pb2.STATUS_UNKNOWN]
    )
    table = {}
    for group in list_session_groups.Handler(ctx, backend, "", request).run().session_groups:
        hparams = {k: v.string_value or v.number_value for k, v in group.hparams.items()}
        for session in group.sessions:
            table[session.name] = (hparams, {m.name.tag: m.value for m in session.metric_values})
    return [h.name for h in experiment.hparam_infos], [m.name.tag for m in experiment.metric_infos], table


def test_tensorboard_is_readable(tiny_experiment):
    """Runs named by group, seed and model; curves are training metrics and accuracies only (no
    Tune bookkeeping); the HParams entry has the grid value, seed and model, and the accuracies."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    from orchestrator.collect import HPARAM_METRICS

    exp, _ = tiny_experiment
    (session,) = list(exp.tune.glob("run-*"))
    runs = sorted(p.name for p in session.iterdir() if p.is_dir())
    assert runs == sorted(f"lambda={lam}_s0_m{m:03d}" for lam in ("0", "0.4") for m in range(4))
    acc = EventAccumulator(str(session / "lambda=0.4_s0_m002"))
    acc.Reload()
    assert all(t.startswith("ray/tune/") for t in acc.Tags()["scalars"])  # no hparam/* scalars of its own
    tags = {t.removeprefix("ray/tune/") for t in acc.Tags()["scalars"]}
    assert {"train_loss", "train_acc", "natural_acc", "robust_acc_pgd"} <= tags
    assert not tags & {"done", "time_this_iter_s", "should_checkpoint", "iterations_since_restore", "epoch"}
    content = acc.PluginTagToContent("hparams")
    info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    hp = {k: (v.string_value or v.number_value) for k, v in info.hparams.items()}
    assert hp == {
        "group": "lambda=0.4",
        "method": "pgd_at",
        "dataset": "fashion-mnist",
        "lambda": 0.4,
        "threshold": 0.0,
        "seed": 0,
        "model": 2,
    }
    exp_info = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in exp_info.metric_infos] == list(HPARAM_METRICS.values())
    # the per-group entries: the same columns and metric names, so one table holds both, and no
    # experiment record of their own (TensorBoard takes one record, picked arbitrarily; the trials'
    # has seed and model)
    groups = [d for d in (exp.root / "tensorboard-groups").iterdir() if d.name != "summary"]
    assert len(groups) == 2
    for group_dir in groups:
        group = EventAccumulator(str(group_dir))
        group.Reload()
        g_content = group.PluginTagToContent("hparams")
        assert "_hparams_/experiment" not in g_content
        g_info = plugin_data_pb2.HParamsPluginData.FromString(g_content["_hparams_/session_start_info"])
        assert set(g_info.session_start_info.hparams) == set(hp) - {"seed", "model"}
        assert set(group.Tags()["scalars"]) <= set(HPARAM_METRICS.values())


def test_tensorboard_hparams_tab_reads_the_curves(tiny_experiment):
    """TensorBoard's HParams tab, as its plugin computes it: a trial's metrics are the last points of
    its own final-accuracy curves (it writes no hparam/* scalars); a group's are its means, its
    headline attack's AUC and TPR at the lowest resolved FPR level, one scalar each, no more."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from orchestrator.collect import HPARAM_METRICS

    exp, _ = tiny_experiment
    natural, robust = HPARAM_METRICS["natural_acc"], HPARAM_METRICS["robust_acc_pgd"]
    hp_columns, metric_columns, table = _hparams_tab(exp.root)
    assert {"group", "lambda", "seed", "model"} <= set(hp_columns)
    assert metric_columns == list(HPARAM_METRICS.values())
    trials = {name: row for name, row in table.items() if name.startswith("tune/")}
    groups = {name: row for name, row in table.items() if name.startswith("tensorboard-groups/")}
    assert len(trials) == 8 and len(groups) == 2 and len(table) == 10
    for name, (_, values) in trials.items():
        curves = EventAccumulator(str(exp.root / name))
        curves.Reload()
        assert values == {tag: curves.Scalars(tag)[-1].value for tag in (natural, robust)}
    runs = pd.read_parquet(exp.root / "runs.parquet")
    audits = pd.read_parquet(exp.root / "audits.parquet")
    for name, (hparams, values) in groups.items():
        gid = name.split("/", 1)[1]
        assert "seed" not in hparams and hparams["lambda"] in (0.0, 0.4)
        # 256 non-members per target: TPR at 1% FPR resolves, at 0.1% it does not (none logged)
        assert set(values) == {natural, robust, HPARAM_METRICS["auc"], HPARAM_METRICS["tpr_at_1pct"]}
        assert values[natural] == pytest.approx(runs.loc[runs["group_id"] == gid, "natural_acc"].mean(), abs=1e-6)
        rmia = audits[(audits["group_id"] == gid) & (audits["attack"] == "rmia_online")]
        assert values[HPARAM_METRICS["auc"]] == pytest.approx(rmia["auc"].mean(), abs=1e-6)
        scalars = EventAccumulator(str(exp.root / name))
        scalars.Reload()
        assert set(scalars.Tags()["scalars"]) == set(values)  # one scalar per metric, nothing else


def test_a_demem_trial_logs_every_curve_the_readme_lists(tiny_experiment):
    """The README's TensorBoard paragraph names the curves; they are `columns.CURVES`, and a DeMem
    trial's events hold every one that applies to it (epsilon is DP's, robust_acc_aa AutoAttack's)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from demem.names import EPSILON, ROBUST_ACC_AA
    from orchestrator.columns import CURVES

    readme = (ROOT / "README.md").read_text()
    paragraph = readme[readme.index("**TensorBoard.**") :].split("\n\n")[0]
    listed = paragraph[paragraph.index("with these curves") : paragraph.index("The HParams tab")]
    named = re.findall(r"`([a-z_]+)`", listed)
    assert tuple(named) == CURVES
    exp, _ = tiny_experiment
    (session,) = list(exp.tune.glob("run-*"))
    acc = EventAccumulator(str(session / "lambda=0.4_s0_m001"))
    acc.Reload()
    tags = {t.removeprefix("ray/tune/") for t in acc.Tags()["scalars"]}
    assert set(CURVES) - {EPSILON, ROBUST_ACC_AA} <= tags
    high_risk = [e.value for e in acc.Scalars("ray/tune/high_risk_frac")]
    assert high_risk and all(0 <= v <= 1 for v in high_risk)
