"""The second study (search_spaces/study2_*.yaml, docs/results.md) shrunk to seconds and run end to
end on the session's Ray, then analysed by docs/study2.py, so neither the specs nor the analysis can
rot; and the repeat is run A with other seeds, nothing else."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from .conftest import ROOT

SPECS = ROOT / "search_spaces"
RUN_A, RUN_B, RUN_C = (SPECS / f"study2_{n}.yaml" for n in ("fashion", "defences", "fashion_repeat"))


def _analysis():
    spec = importlib.util.spec_from_file_location("study2_analysis", ROOT / "docs" / "study2.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_repeat_is_run_a_with_disjoint_seeds():
    a, c = yaml.safe_load(RUN_A.read_text()), yaml.safe_load(RUN_C.read_text())
    assert set(a["seeds"]["train"]).isdisjoint(c["seeds"]["train"]) and len(c["seeds"]["train"]) == 5
    assert a["seeds"]["pool"] == c["seeds"]["pool"] == "per-seed"  # other seeds draw other pools
    for raw in (a, c):
        raw.pop("name"), raw["seeds"].pop("train")
    assert a == c
    b = yaml.safe_load(RUN_B.read_text())  # run B shares run A's pools: the same seeds, pool and models
    assert b["seeds"] == yaml.safe_load(RUN_A.read_text())["seeds"] and b["audit"] == a["audit"]
    assert b["base"]["data"] == a["base"]["data"] and b["base"]["train"] == a["base"]["train"]


def _shrink(path, tmp_path, points=None):
    """Every point (or `points` of them) on a 64-sample pool (one batch per epoch), 1 epoch where the
    point does not set its own, PGD-1 everywhere, 2 seeds x 4 models and the attacks 4 models allow
    (LiRA needs 6; the full specs run it). The points keep their labels, which the analysis reads."""
    raw = yaml.safe_load(path.read_text())
    raw["base"]["data"]["pool_size"] = 64
    raw["base"]["train"]["epochs"] = 1
    raw["base"]["eval"].update(
        attack={"steps": 1}, adversarial={"steps": 1}, boundary={"norms": ["linf"], "bisections": 1, "steps": 1}
    )
    if points is not None:
        raw["points"] = [p for p in raw["points"] if p in points]
    raw["seeds"]["train"] = raw["seeds"]["train"][:2]
    raw["audit"]["models"] = 4
    raw["audit"]["attacks"] = ["rmia", "loss", "rmia_online_adv", "loss_adv", "boundary_linf"]
    out = tmp_path / path.name
    out.write_text(yaml.safe_dump(raw, sort_keys=False))
    return out


def test_the_shrunken_study_runs_and_every_question_is_analysed(ray_session, tmp_path):
    from orchestrator.layout import ExperimentDir
    from orchestrator.merge import merge_experiments
    from orchestrator.run import run_experiment
    from orchestrator.spec import load_spec
    from orchestrator.summarize import summarize

    for path, groups in ((RUN_A, 11), (RUN_B, 9), (RUN_C, 11)):
        spec = load_spec(path, check_data=False)
        assert len(spec.groups()) == groups and len(spec.seeds) == 5 and spec.audit.models == 8
    b_points = yaml.safe_load(RUN_B.read_text())["points"]
    keep = [p for p in b_points if p.get("dp.noise_multiplier") != 0.5 and p.get("method.beta") != 0.7]
    # run A in two pieces, one seed each (`demem run --seeds`), merged into one experiment, as the
    # full study is run a session at a time
    spec_a, results = _shrink(RUN_A, tmp_path), tmp_path / "results"
    parts = [run_experiment(spec_a, storage=results, echo=lambda _: None, seeds=[s]) for s in (0, 1)]
    for s, part in zip((0, 1), parts):
        raw = yaml.safe_load(part.spec.read_text())
        assert part.root.name == f"study2-fashion-s{s}" and raw["seeds"]["train"] == [s]
    ids = [set(pd.read_parquet(p.table("runs.parquet"))["group_id"]) for p in parts]
    assert ids[0] == ids[1] and len(ids[0]) == 11  # the same groups: a group id does not hold the seed
    exp_a = ExperimentDir(merge_experiments([p.root for p in parts], "study2-fashion", results, echo=lambda _: None))
    exp_b = run_experiment(_shrink(RUN_B, tmp_path, keep), storage=results, echo=lambda _: None)
    # run C: run A's tables under seeds 5 and 6, standing in for a repeat without training it again
    root_c = results / "repeat"
    shutil.copytree(exp_a.root, root_c)
    for name in ("runs", "audits"):
        frame = pd.read_parquet(root_c / f"{name}.parquet")
        frame.assign(seed=frame["seed"] + 5).to_parquet(root_c / f"{name}.parquet")
    paths = summarize(exp_a.root, echo=lambda _: None, tensorboard=False)
    assert paths["forest.png"].stat().st_size > 0  # the page's figure

    study = _analysis()
    text = study.report(exp_a.root, exp_b.root, root_c)
    for title in ("Every group", "Question 1", "Question 2", "Question 3", "Question 4", "Question 5", "Question 6"):
        assert f"### {title}" in text
    a = study.Study(exp_a.root)
    expected = {study.STD10, study.PGD10, study.TRADES10, study.STD, study.PGD, study.TRADES, study.TAU}
    expected |= {study.dm(lam) for lam in study.LAMBDAS} | {study.TRADES_DM}
    assert set(a.ids) == expected  # the analysis names exactly run A's groups
    b = study.Study(exp_a.root, exp_b.root)
    assert b.has(study.AWP, study.AWP_DM, study.TRADES_AWP, study.dp(1.0), study.relax(1.0))
    # run B's PGD-AT is run A's group (the same config): joined, its second copy set aside
    assert len(b.runs[b.runs["group_id"] == a.ids[study.PGD]]) == len(a.runs[a.runs["group_id"] == a.ids[study.PGD]])
    assert "models were trained in two runs" in b.reproduced()
    beyond = text.split("| defence − PGD-AT + DeMem λ=0.6 |")[1].split("\n\n")[0]  # paired with the curve's end
    assert "| DP-PGD-AT σ=1 |" in beyond and "| PGD-AT + RelaxLoss α=1 |" in beyond
    both = study.Study(exp_a.root, root_c)
    assert both.seeds(study.TAU) == [0, 1, 5, 6]  # question 3 on both runs' seeds
    d = study._acc(a, study.PGD, study.STD, "robust_acc_pgd")
    assert d["n"] == 2 and d["lo"] <= d["mean"] <= d["hi"]
    q6 = text.split("### Question 6")[1]
    assert (
        q6.count("| yes |") + q6.count("| sign only |") + q6.count("| no |") + q6.count("| n/a |") == 8 * 5
    )  # 8 comparisons x (robust, natural, chosen, own strongest, reference strongest)


def _write_tables(root, runs: list[dict], audits: list[dict]) -> None:
    """An experiment directory of just the tables docs/study2.py reads."""
    pd.DataFrame(runs).to_parquet(root / "runs.parquet")
    pd.DataFrame(audits).to_parquet(root / "audits.parquet")
    for name in ("roc", "membins", "lowfpr"):
        pd.DataFrame({"group_id": pd.Series(dtype=str)}).to_parquet(root / f"{name}.parquet")


def test_equal_leakage_is_the_curve_interpolated_per_seed(tmp_path):
    """docs/study2.py's robust accuracy kept at equal leakage against a hand interpolation: per seed,
    the curve's (AUC reduction, robust cost) points with the origin, read at the point's reduction."""
    from scipy import stats as st

    study = _analysis()
    curve = [study.dm(lam) for lam in study.LAMBDAS]
    # per seed: (AUC reduction, robust cost) of each curve point and of the tau = 0.5 point
    red = {curve[0]: (0.01, 0.012, 0.008), curve[1]: (0.02, 0.024, 0.018), curve[2]: (0.03, 0.033, 0.029)}
    cost = {curve[0]: (0.01, 0.02, 0.01), curve[1]: (0.03, 0.04, 0.02), curve[2]: (0.06, 0.07, 0.05)}
    red[study.TAU], cost[study.TAU] = (0.025, 0.02, 0.04), (0.03, 0.02, 0.05)  # seed 2: past the curve's end
    red[study.PGD], cost[study.PGD] = (0.0,) * 3, (0.0,) * 3
    runs, audits = [], []
    for label in red:
        for seed in range(3):
            for m in range(4):
                common = {"group_id": label, "group_label": label, "seed": seed}
                runs.append({**common, "model_index": m, "status": "done", "robust_acc_pgd": 0.5 - cost[label][seed]})
                audits.append({**common, "target": m, "attack": "rmia_online", "auc": 0.6 - red[label][seed]})
    _write_tables(tmp_path, [{**r, "natural_acc": 0.7} for r in runs], audits)
    got = study.Study(tmp_path).equal_leakage(study.TAU, curve, study.PGD, "rmia_online")
    gains = []
    for seed in range(2):  # seed 2's reduction 0.04 is beyond the curve's 0.029: left out
        xs = [0.0, *(red[k][seed] for k in curve)]
        ys = [0.0, *(cost[k][seed] for k in curve)]
        x = red[study.TAU][seed]
        i = next(j for j in range(1, len(xs)) if xs[j] >= x)
        interpolated = ys[i - 1] + (ys[i] - ys[i - 1]) * (x - xs[i - 1]) / (xs[i] - xs[i - 1])
        gains.append(interpolated - cost[study.TAU][seed])
    half = st.t.ppf(0.975, 1) * np.std(gains, ddof=1) / np.sqrt(2)
    assert got["n"] == 2 and got["outside"] == 1
    assert (got["mean"], got["lo"], got["hi"]) == pytest.approx(
        (np.mean(gains), np.mean(gains) - half, np.mean(gains) + half)
    )
    # by hand: seed 0 reads 0.045 halfway between 0.02 and 0.03; seed 1 reads 0.02 + 0.02 * 8 / 12
    assert gains == pytest.approx([0.045 - 0.03, 0.02 + 0.02 * 8 / 12 - 0.02])


def test_each_groups_strongest_attack_is_chosen_on_the_selection_seeds(tmp_path):
    """docs/study2.py's strongest attack per group and the difference between two groups each under
    its own: a hand loop over (seed, target). On the selection seeds (0, 2, 4) PGD-AT's strongest is
    the adversarial query and standard training's the clean one; on seed 1 the order is reversed,
    which the choice must not see."""
    from scipy import stats as st

    study = _analysis()
    level = {  # (label, attack) -> AUC on selection seeds, on report seeds
        (study.STD, "rmia_online"): (0.70, 0.60),
        (study.STD, "rmia_online_adv"): (0.55, 0.75),
        (study.PGD, "rmia_online"): (0.66, 0.80),
        (study.PGD, "rmia_online_adv"): (0.78, 0.62),
    }
    rng = np.random.default_rng(3)
    runs, audits = [], []
    for label in (study.STD, study.PGD):
        for seed in range(4):
            for m in range(4):
                common = {"group_id": label, "group_label": label, "seed": seed}
                runs.append({**common, "model_index": m, "status": "done", "robust_acc_pgd": 0.3, "natural_acc": 0.7})
                for attack in ("rmia_online", "rmia_online_adv"):
                    auc = level[label, attack][seed not in study.SELECT] + rng.normal(0, 0.01)
                    audits.append({**common, "target": m, "attack": attack, "auc": auc})
    _write_tables(tmp_path, runs, audits)
    frame = pd.DataFrame(audits)
    s = study.Study(tmp_path)
    assert (s.strongest(study.STD), s.strongest(study.PGD)) == ("rmia_online", "rmia_online_adv")
    got = s.leak_between(study.PGD, study.STD, "rmia_online_adv", "rmia_online", [1, 3])
    means = []
    for seed in (1, 3):
        g = frame[(frame.group_id == study.PGD) & (frame.attack == "rmia_online_adv") & (frame.seed == seed)]
        r = frame[(frame.group_id == study.STD) & (frame.attack == "rmia_online") & (frame.seed == seed)]
        means.append(np.mean(g.sort_values("target")["auc"].to_numpy() - r.sort_values("target")["auc"].to_numpy()))
    half = st.t.ppf(0.975, 1) * np.std(means, ddof=1) / np.sqrt(2)
    assert got["n"] == 2
    assert (got["mean"], got["lo"], got["hi"]) == pytest.approx(
        (np.mean(means), np.mean(means) - half, np.mean(means) + half)
    )


def test_question_4s_figure_draws_each_defences_paired_differences(tmp_path):
    """docs/study2.py's trade-off points (defence − PGD-AT: Δ AUC per (seed, target), Δ robust per
    (seed, model), averaged within each seed, a t interval across seeds) against a hand loop, and the
    figure draws exactly those points."""
    from scipy import stats as st

    study = _analysis()
    labels = [study.PGD, *(study.dm(lam) for lam in study.LAMBDAS), study.dp(1.0), study.relax(0.7)]
    rng = np.random.default_rng(5)
    runs, audits = [], []
    for k, label in enumerate(labels):
        for seed in range(3):
            for m in range(4):
                common = {"group_id": label, "group_label": label, "seed": seed}
                robust, auc = 0.55 - 0.02 * k + rng.normal(0, 0.01), 0.8 - 0.03 * k + rng.normal(0, 0.01)
                runs.append(
                    {**common, "model_index": m, "status": "done", "robust_acc_pgd": robust, "natural_acc": 0.7}
                )
                audits.append({**common, "target": m, "attack": "rmia_online_adv", "auc": auc})
    _write_tables(tmp_path, runs, audits)
    got = study.tradeoff(study.Study(tmp_path), "rmia_online_adv").set_index("label")
    assert list(got.index) == labels[1:]  # DeMem's curve in λ order, then the other defences
    r, a = pd.DataFrame(runs), pd.DataFrame(audits)
    for label in labels[1:]:
        for what, frame, col, unit in (("robust", r, "robust_acc_pgd", "model_index"), ("auc", a, "auc", "target")):
            means = []
            for seed in range(3):
                g = frame[(frame.group_id == label) & (frame.seed == seed)].sort_values(unit)[col].to_numpy()
                ref = frame[(frame.group_id == study.PGD) & (frame.seed == seed)].sort_values(unit)[col].to_numpy()
                means.append(100 * np.mean(g - ref))
            half = st.t.ppf(0.975, 2) * np.std(means, ddof=1) / np.sqrt(3)
            row = got.loc[label]
            assert (row[f"{what}_mean"], row[f"{what}_lo"], row[f"{what}_hi"]) == pytest.approx(
                (np.mean(means), np.mean(means) - half, np.mean(means) + half)
            )
    fig = study.tradeoff_figure(got.reset_index(), "rmia_online_adv")
    for ax in fig.axes:  # one error-bar point per defence in each panel
        drawn = sorted(
            (float(x), float(y))
            for line in ax.get_lines()
            if line.get_linestyle() == "None" and line.get_marker() in ("o", "^", "D")
            for x, y in zip(line.get_xdata(), line.get_ydata())
        )
        want = sorted(zip(got["auc_mean"], got["robust_mean"]))
        assert np.allclose(drawn, want)


def test_the_tables_go_into_the_page_block_and_nowhere_else(tmp_path):
    study = _analysis()
    page = tmp_path / "results.md"
    page.write_text(f"# Results\nanswers\n{study.BEGIN}\nold tables\n{study.END}\nwhat differs\n")
    study.splice(page, "| new |\n")
    assert page.read_text() == f"# Results\nanswers\n{study.BEGIN}\n| new |\n{study.END}\nwhat differs\n"
    page.write_text("# Results without a block\n")
    with pytest.raises(SystemExit, match="no .* block"):
        study.splice(page, "| new |\n")
    assert page.read_text() == "# Results without a block\n"
