"""The summarizer: intervals against scipy, baselines and deltas, Pareto ranking and every output
file, on a small experiment whose Parquet files the test writes itself."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from demem.stats import t_interval as ci95
from demem.stats import welch_diff
from orchestrator import plots
from orchestrator.collect import load_tables
from orchestrator.fmt import fmt_ci
from orchestrator.group_table import group_table
from orchestrator.report import power_text
from orchestrator.summarize import summarize, summarize_groups

# --- statistics --------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 3, 8, 30])
def test_ci95_matches_scipy(n):
    x = np.random.default_rng(n).normal(0.6, 0.05, size=n)
    ci = ci95(x)
    lo, hi = stats.t.interval(0.95, n - 1, loc=x.mean(), scale=stats.sem(x))
    assert ci["n"] == n and ci["mean"] == pytest.approx(x.mean())
    assert ci["lo"] == pytest.approx(lo, rel=1e-12) and ci["hi"] == pytest.approx(hi, rel=1e-12)
    assert ci["std"] == pytest.approx(x.std(ddof=1))


def test_ci95_textbook_value_and_small_n():
    # n = 2, values 0 and 2: mean 1, s = sqrt(2), t_{0.975, 1} = 12.706: half-width 12.706
    ci = ci95([0.0, 2.0])
    assert ci["half"] == pytest.approx(12.7062, rel=1e-4)
    one = ci95([0.7, np.nan])  # NaN values are dropped: one value, no interval
    assert one["n"] == 1 and one["mean"] == 0.7 and math.isnan(one["lo"]) and math.isnan(one["std"])
    assert fmt_ci(one["mean"], one["lo"], one["hi"], one["n"]) == "0.700 (n=1)"
    assert ci95([])["n"] == 0 and math.isnan(ci95([])["mean"])


def test_welch_matches_scipy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0.5, 0.1, 8), rng.normal(0.4, 0.03, 12)
    d = welch_diff(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["mean"] == pytest.approx(a.mean() - b.mean())
    assert d["lo"] == pytest.approx(ref.low) and d["hi"] == pytest.approx(ref.high)
    assert math.isnan(welch_diff([1.0], b)["lo"]) and welch_diff([1.0], b)["mean"] == pytest.approx(1 - b.mean())


# --- a fixture experiment ---------------------------------------------------------------------

# group -> (method, lambda, threshold, natural, robust, leakage tpr@1%, auc)
GROUPS = {
    "base": ("pgd_at", 0.0, 0.0, 0.70, 0.45, 0.10, 0.62),
    "dm_a": ("pgd_at", 0.4, 0.0, 0.69, 0.44, 0.05, 0.56),  # less leakage, a little less robust
    "dm_b": ("pgd_at", 0.4, 0.5, 0.72, 0.48, 0.03, 0.53),  # dominates everything
    "dm_c": ("pgd_at", 0.8, 0.5, 0.60, 0.35, 0.04, 0.54),
    "dp": ("dp_pgd_at", 0.0, 0.0, 0.50, 0.30, 0.02, 0.51),
}
M = 6
SEEDS = (0, 1, 2)  # three training draws: the unit of replication


def _label(gid):
    method, lam, thr = GROUPS[gid][:3]
    return f"method={method} lambda={lam:g} threshold={thr:g}"


@pytest.fixture(scope="module")
def experiment(tmp_path_factory) -> Path:
    return _write_experiment(tmp_path_factory.mktemp("exp"), SEEDS)


def _write_experiment(root: Path, seeds: tuple[int, ...]) -> Path:
    """The fixture experiment's Parquet files under `root`, with `seeds` as its training draws."""
    rng = np.random.default_rng(0)
    runs, audits, roc, bins, low = [], [], [], [], []
    draw = {seed: rng.normal(0, 0.004, size=3) for seed in seeds}  # what a seed moves in every group
    for (gid, (method, lam, thr, nat, rob, tpr, auc)), seed in itertools.product(GROUPS.items(), seeds):
        dp = method.startswith("dp_")
        d_nat, d_rob, d_tpr = draw[seed]
        for m in range(M):
            runs.append(
                {
                    "group_id": gid,
                    "group_label": _label(gid),
                    "run_id": f"{gid}-s{seed}-{m}",
                    "seed": seed,
                    "model_index": m,
                    "status": "done",
                    "config.method.name": method,
                    "config.data.dataset": "fashion-mnist",
                    "config.train.arch": "small-cnn",
                    "config.demem.lambda": lam,
                    "config.demem.risk_threshold": thr,
                    "config.demem.risk": "loss_deviation",
                    "config.dp.noise_multiplier": 1.0 if dp else None,
                    "config.train.epochs": 3,
                    "config.data.pool_size": 400,
                    "config.data.pool_seed": 0,
                    "defence": "dp" if dp else ("demem" if lam > 0 else "none"),
                    "natural_acc": nat + d_nat + rng.normal(0, 0.005),
                    "robust_acc_pgd": rob + d_rob + rng.normal(0, 0.005),
                    "robust_acc_aa": None,
                    "epsilon": 3.0 + rng.normal(0, 0.01) if dp else None,
                }
            )
            for attack in ("lira_online_fixed", "loss"):
                audits.append(
                    {
                        "group_id": gid,
                        "group_label": _label(gid),
                        "seed": seed,
                        "target": m,
                        "attack": attack,
                        "auc": auc + rng.normal(0, 0.003),
                        "tpr_at_1pct": tpr + d_tpr + rng.normal(0, 0.003),
                        "tpr_at_0_1pct": tpr / 3,
                        "tpr_at_0_01pct": tpr / 10,
                        "balanced_acc": auc - 0.02,
                    }
                )
        for attack in ("lira_online_fixed", "loss"):  # 2000 non-members per target: 1% FPR resolves
            for level, n_non in (("tpr_at_1pct", 2000), ("tpr_at_0_1pct", 2000)):
                t = tpr + d_tpr if level == "tpr_at_1pct" else tpr / 3
                low.append(
                    {
                        "group_id": gid,
                        "seed": seed,
                        "attack": attack,
                        "level": level,
                        "tpr": t,
                        "lo": t - 0.01,
                        "hi": t + 0.01,
                        "tp": 0,
                        "n_members": M * 2000,
                        "n_nonmembers_min": n_non,
                        "resolvable": True,
                    }
                )
        fpr = np.geomspace(1e-3, 1, 50)
        roc += [
            {
                "group_id": gid,
                "seed": seed,
                "attack": "lira_online_fixed",
                "fpr": f,
                "tpr": min(1.0, f ** (1 - auc + 0.4)),
            }
            for f in fpr
        ]
        for b, (lo, hi) in enumerate([(-1.0, 0.0), (0.0, 0.05), (0.2, 0.25), (0.45, 0.5)]):
            bins.append(
                {
                    "group_id": gid,
                    "seed": seed,
                    "bin": b,
                    "lo": lo,
                    "hi": hi,
                    "n": 0 if b == 1 else 50,
                    "heldout_acc": nat - 0.3 * hi,
                    "tpr_at_1pct": tpr * (1 + 4 * hi),
                    "tpr_at_0_1pct": tpr,
                }
            )
    runs.append(
        {
            **runs[0],
            "run_id": "base-failed",
            "model_index": M,
            "status": "failed",
            "natural_acc": None,
            "robust_acc_pgd": None,
        }
    )
    for name, rows in (("runs", runs), ("audits", audits), ("roc", roc), ("membins", bins), ("lowfpr", low)):
        pd.DataFrame(rows).to_parquet(root / f"{name}.parquet")
    return root


def test_a_baseline_matches_every_setting_but_the_defence(experiment):
    """PGD-AT + AWP with and without DeMem beside plain PGD-AT: the AWP DeMem group is compared with
    AWP at lambda 0 (not with plain PGD-AT, whose config differs in awp_gamma), and AWP at lambda 0
    is a baseline of its own."""
    tables = load_tables(experiment)
    runs = tables.runs.assign(**{"config.method.awp_gamma": 0.0})
    audits = tables.audits
    extra_runs, extra_audits = [], []
    for gid, new in (("base", "awp"), ("dm_a", "awp_dm")):
        r = runs[runs["group_id"] == gid].assign(group_id=new, **{"config.method.awp_gamma": 0.01})
        extra_runs.append(r.assign(robust_acc_pgd=r["robust_acc_pgd"] + 0.1))  # AWP: more robust
        extra_audits.append(audits[audits["group_id"] == gid].assign(group_id=new))
    low = tables.lowfpr
    extra_low = [low[low["group_id"] == g].assign(group_id=n) for g, n in (("base", "awp"), ("dm_a", "awp_dm"))]
    tables = dataclasses.replace(
        tables,
        runs=pd.concat([runs, *extra_runs], ignore_index=True),
        audits=pd.concat([audits, *extra_audits], ignore_index=True),
        lowfpr=pd.concat([low, *extra_low], ignore_index=True),
    )
    df = summarize_groups(tables).set_index("group_id")
    assert df.loc["awp", "is_baseline"] and df.loc["awp", "baseline_id"] == "awp"
    assert df.loc["awp_dm", "baseline_id"] == "awp" and df.loc["dm_a", "baseline_id"] == "base"
    # paired against AWP, the robust cost is DeMem's alone (~0.01), not AWP's gain (-0.09 against PGD-AT)
    assert df.loc["awp_dm", "robust_cost_mean"] == pytest.approx(df.loc["dm_a", "robust_cost_mean"], abs=1e-9)
    assert df.loc["dp", "baseline_id"] == "base"  # DP's own settings and method name are the defence
    # the plots colour and group by family, so AWP is not drawn as plain PGD-AT
    assert df.loc["awp_dm", "family"] == "pgd_at + AWP" and df.loc["dm_a", "family"] == "pgd_at"
    fig = plots.pareto_plot(df.reset_index())
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "pgd_at + AWP (undefended)" in labels and "pgd_at (undefended)" in labels


def test_groups_baselines_and_deltas(experiment):
    df = summarize_groups(load_tables(experiment)).set_index("group_id")
    assert df.loc["base", "is_baseline"] and not df.loc["dm_a", "is_baseline"] and not df.loc["dp", "is_baseline"]
    # every group, the DP one included, is compared with undefended PGD-AT
    assert (df["baseline_id"] == "base").all()
    assert df.loc["base", "n_models"] == M * len(SEEDS) and df.loc["base", "n_failed"] == 1
    # n counts seeds (the replicates), not the targets of all draws; those are `units`
    assert df.loc["base", "leakage_n"] == len(SEEDS) and df.loc["base", "leakage_metric"] == "tpr_at_1pct"
    assert df.loc["base", "leakage_units"] == M * len(SEEDS) and df.loc["base", "n_seeds"] == len(SEEDS)
    assert 0 < df.loc["base", "leakage_within_sd"] < 0.01  # the targets' spread inside one draw, its own column
    assert df.loc["dm_a", "leakage_reduction_n"] == len(SEEDS)
    # leakage reduction = baseline - group: positive for DeMem; robust cost positive for the DP group
    assert df.loc["dm_a", "leakage_reduction_mean"] == pytest.approx(0.05, abs=0.01)
    assert df.loc["dm_a", "leakage_reduction_lo"] > 0
    assert df.loc["dp", "robust_cost_mean"] == pytest.approx(0.15, abs=0.01)
    assert df.loc["dp", "epsilon_mean"] == pytest.approx(3.0, abs=0.02)
    assert math.isnan(df.loc["base", "leakage_reduction_mean"])


def test_ranking_and_separability(experiment):
    df = summarize_groups(load_tables(experiment))
    assert df.iloc[0]["group_id"] == "dm_b" and df.iloc[0]["front"] == 1  # the dominating group is first
    fronts = df.set_index("group_id")["front"]
    assert fronts["base"] > 1 and fronts["dm_a"] > 1  # both dominated by dm_b
    assert fronts["dp"] == 1 and fronts["dm_c"] > 1  # dp leaks least; dm_c is dominated by dm_b
    assert df["separable"].all()  # the fixture's groups are far apart
    by_auc = summarize_groups(load_tables(experiment), leakage="auc").set_index("group_id")
    assert by_auc.loc["dm_b", "leakage_mean"] == pytest.approx(0.53, abs=0.01)


def test_overlapping_groups_are_flagged(tmp_path, experiment):
    for name in ("runs", "audits", "roc", "membins", "lowfpr"):
        df = pd.read_parquet(experiment / f"{name}.parquet")
        twin = df[df["group_id"] == "dm_c"].copy()
        twin["group_id"] = "dm_c2"
        if "group_label" in twin:
            twin["group_label"] = "twin of dm_c"
        pd.concat([df, twin]).to_parquet(tmp_path / f"{name}.parquet")
    df = summarize_groups(load_tables(tmp_path)).set_index("group_id")
    assert df.loc["dm_c", "not_separable_from"] == "twin of dm_c" and not df.loc["dm_c2", "separable"]


def test_summarize_writes_every_output(experiment, tmp_path):
    lines: list[str] = []
    paths = summarize(experiment, out=tmp_path / "out", echo=lines.append, tensorboard=False)
    expected = {
        "summary.parquet",
        "ranking.csv",
        "ranking.md",
        "attacks.csv",
        "pareto.png",
        "roc.png",
        "membins.png",
        "threshold_sweep.png",
        "forest.csv",
        "forest.png",
        "report.html",
    }
    assert set(paths) == expected and all(p.exists() and p.stat().st_size > 0 for p in paths.values())
    for name in ("pareto.png", "roc.png", "membins.png", "threshold_sweep.png"):
        img = mpimg.imread(paths[name])
        assert img.ndim == 3 and 500 <= img.shape[1] <= 2000 and 400 <= img.shape[0] <= 1200
        assert img[..., :3].std() > 0.05  # not a blank canvas
    ranking = pd.read_csv(paths["ranking.csv"])
    assert ranking.iloc[0]["group_id"] == "dm_b" and ranking.iloc[0]["rank"] == 1
    md = paths["ranking.md"].read_text()
    assert md.startswith("| rank | front | group") and "(baseline)" in md and "± " in md
    assert "epsilon (DP)" in md and "AutoAttack" not in md  # the fixture has a DP group and no AutoAttack
    dp_row = next(line for line in md.splitlines() if "dp_pgd_at" in line)
    assert re.search(r"\| (2\.99|3\.00)\d ± 0\.0\d\d \(n=3 seeds\) \|", dp_row)  # epsilon ~3, 3 seeds
    assert "Design: 3 training seed(s)" in md and "paired" in md
    html = paths["report.html"].read_text()
    assert html.count("data:image/png;base64,") == 5 and "<table>" in html and "dm_b" not in html.split("<table>")[0]
    top = lines[0].splitlines()
    assert top[0].startswith("ranking (TPR at 1% FPR") and "method=pgd_at lambda=0.4 threshold=0.5" in top[2]


def test_bad_input_is_refused_before_work(experiment, tmp_path):
    with pytest.raises(ValueError, match="unknown leakage metric 'tpr'"):
        summarize(experiment, leakage="tpr", out=tmp_path)
    assert not any(tmp_path.iterdir())
    with pytest.raises(FileNotFoundError, match="not an experiment directory"):
        summarize(tmp_path / "nothing")
    with pytest.raises(ValueError, match="attack 'lira_offline' was not run"):
        summarize(experiment, attack="lira_offline", out=tmp_path)


def test_figures_go_to_tensorboard_once(experiment, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for _ in range(2):  # summarising again replaces the images rather than stacking copies
        summarize(experiment, out=tmp_path, echo=lambda _: None)
    logdir = experiment / "tensorboard-groups" / "summary"
    events = list(logdir.glob("events.out.tfevents.*"))
    assert len(events) == 1
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert sorted(acc.Tags()["images"]) == [
        "summary/forest",
        "summary/membins",
        "summary/pareto",
        "summary/roc",
        "summary/threshold_sweep",
    ]


def test_plots_touch_no_global_matplotlib_state():
    """The summary draws with matplotlib's object-oriented API: importing and plotting never imports
    pyplot or picks a backend for the rest of the process."""
    import subprocess
    import sys

    code = (
        "import sys, pandas as pd; from orchestrator import plots, summarize; "
        "fig = plots.threshold_sweep_plot(pd.DataFrame({'leakage_metric': ['auc'], 'attack': ['loss'], "
        "'method': ['pgd_at'], 'lambda': [0.0], 'dp': [False], 'threshold': [0.0], 'is_baseline': [True], "
        "'leakage_mean': [0.5], 'leakage_lo': [0.4], 'leakage_hi': [0.6], 'robust_acc_pgd_mean': [0.3], "
        "'robust_acc_pgd_lo': [0.2], 'robust_acc_pgd_hi': [0.4]})); "
        "assert plots._rgb(fig).shape[2] == 3; "
        "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def test_power_is_stated_from_the_across_seed_spread(experiment):
    from demem.stats import detectable_difference

    df = summarize_groups(load_tables(experiment))
    sd = df.loc[df["leakage_reduction_n"] >= 2, "leakage_reduction_std"].median()
    text = power_text(df)
    assert f"with {len(SEEDS)} seeds" in text and f"about {detectable_difference(sd, len(SEEDS)):.3f}" in text
    assert "would need about" in text
    one_seed = df.assign(n_seeds=1)
    assert "one seed" in power_text(one_seed)


@pytest.mark.parametrize("seeds", [(0, 1), (0, 1, 2), tuple(range(6))])
def test_summarize_states_power_at_every_number_of_seeds(tmp_path, seeds):
    """2 seeds (1 degree of freedom) need a non-centrality where scipy's nct returns NaN: the summary
    still runs and ranking.md states the detectable difference."""
    from demem.stats import detectable_difference

    lines: list[str] = []
    paths = summarize(_write_experiment(tmp_path, seeds), out=tmp_path / "out", echo=lines.append, tensorboard=False)
    df = pd.read_parquet(paths["summary.parquet"])
    sd = df.loc[df["leakage_reduction_n"] >= 2, "leakage_reduction_std"].median()
    mdd = detectable_difference(sd, len(seeds))
    assert np.isfinite(mdd) and mdd > 0
    stated = f"with {len(seeds)} seeds the paired design detects a leakage difference of about {mdd:.3f}"
    power = next(line for line in paths["ranking.md"].read_text().splitlines() if line.startswith("Power ("))
    assert stated in power and stated in lines[0]


def test_power_that_cannot_be_stated_is_said_so(experiment):
    df = summarize_groups(load_tables(experiment)).assign(leakage_reduction_std=0.0)  # no spread across seeds
    text = power_text(df)
    assert "detectable leakage difference cannot be stated" in text and "nan" not in text


def test_validate_plans_power_from_a_previous_experiment(experiment, tmp_path, capsys):
    """`demem validate spec --power-from EXP`: the difference the spec's seeds could detect, from the
    across-seed spread of an earlier, summarized experiment."""
    import yaml

    from demem.stats import detectable_difference
    from orchestrator.cli import main

    (tmp_path / "prev").mkdir()
    prev = _variant(experiment, tmp_path / "prev", lambda name, df: df)
    spec = tmp_path / "next.yaml"
    raw = {"name": "next", "base": {"data": {"pool_size": 64}}, "seeds": list(range(6)), "audit": {"models": 8}}
    spec.write_text(yaml.safe_dump(raw))
    assert main(["validate", str(spec), "--no-data-check", "--power-from", str(prev)]) == 2
    assert "no summary; run `demem summarize" in capsys.readouterr().err
    summarize(prev, echo=lambda _: None, tensorboard=False)
    assert main(["validate", str(spec), "--no-data-check", "--power-from", str(prev)]) == 0
    out = capsys.readouterr().out
    df = pd.read_parquet(prev / "summary" / "summary.parquet")
    sd = df.loc[df["leakage_reduction_n"] >= 2, "leakage_reduction_std"].median()
    assert (
        f"with 6 seeds the paired design detects a leakage difference of about {detectable_difference(sd, 6):.3f}"
        in out
    )
    assert f"from {len(SEEDS)} seeds of that experiment" in out
    # and for robust accuracy, with the seeds a 2-point difference needs
    from demem.stats import seeds_needed

    sd_r = df.loc[df["robust_cost_n"] >= 2, "robust_cost_std"].median()
    assert f"with 6 seeds the paired design detects about {100 * detectable_difference(sd_r, 6):.1f} points" in out
    assert f"a 2-point difference needs about {seeds_needed(0.02, sd_r)} seeds" in out


# --- resolution of low-FPR leakage and pool designs ------------------------------------------


def _lowfpr(n_non: int, levels=("tpr_at_1pct", "tpr_at_0_1pct")) -> pd.DataFrame:
    return pd.DataFrame(
        [{"group_id": "g", "seed": 0, "attack": "a", "level": k, "n_nonmembers_min": n_non} for k in levels]
    )


@pytest.mark.parametrize(
    "n_non, metric",
    [(200, "auc"), (999, "auc"), (1000, "tpr_at_1pct"), (9999, "tpr_at_1pct"), (10_000, "tpr_at_0_1pct")],
)
def test_default_leakage_is_the_lowest_fpr_the_scale_resolves(n_non, metric):
    from orchestrator.summarize import MIN_FALSE_POSITIVES, choose_leakage

    chosen, why = choose_leakage(_lowfpr(n_non))
    assert chosen == metric
    # the reason names the count it rests on: level x non-members false positives
    level = {"auc": 0.01, "tpr_at_1pct": 0.01, "tpr_at_0_1pct": 0.001}[metric]
    assert f"{n_non} non-members" in why and f"{level * n_non:g} false positives" in why
    assert (metric == "auc") == (level * n_non < MIN_FALSE_POSITIVES)
    assert choose_leakage(pd.DataFrame())[0] == "auc"


def _variant(experiment: Path, tmp_path: Path, edit) -> Path:
    for name in ("runs", "audits", "roc", "membins", "lowfpr"):
        df = edit(name, pd.read_parquet(experiment / f"{name}.parquet"))
        df.to_parquet(tmp_path / f"{name}.parquet")
    return tmp_path


def test_small_audits_rank_by_auc_and_mark_low_fpr_below_resolution(experiment, tmp_path):
    def edit(name, df):
        if name == "lowfpr":  # 500 non-members per target: 1% is 5 false positives, 0.1% is none
            df["n_nonmembers_min"] = 500
            df["resolvable"] = df["level"] == "tpr_at_1pct"
        return df

    root = _variant(experiment, tmp_path, edit)
    lines: list[str] = []
    paths = summarize(root, out=tmp_path / "out", echo=lines.append, tensorboard=False)
    df = pd.read_parquet(paths["summary.parquet"]).set_index("group_id")
    assert (df["leakage_metric"] == "auc").all()
    assert df.loc["dm_b", "leakage_mean"] == pytest.approx(0.53, abs=0.01)
    md = paths["ranking.md"].read_text()
    assert "Leakage metric: ROC AUC: each target has only 500 non-members" in md
    assert "leakage metric: ROC AUC" in lines[0]
    base = next(line for line in md.splitlines() if "(baseline)" in line)
    assert "below resolution (500 non-members)" in base  # 0.1% of 500 is below one false positive
    # the pooled TPR at 1% across the 3 seeds: mean ± t half-width, n = seeds
    pooled = pd.read_parquet(root / "lowfpr.parquet")
    pooled = pooled[(pooled["group_id"] == "base") & (pooled["level"] == "tpr_at_1pct")]
    pooled = pooled[pooled["attack"] == "lira_online_fixed"]["tpr"]
    lo, hi = stats.t.interval(0.95, 2, loc=pooled.mean(), scale=stats.sem(pooled))
    assert f"{pooled.mean():.3f} ± {(hi - lo) / 2:.3f} (n=3 seeds)" in base
    assert "every seed used the same pool and keep masks" in md


def test_groups_on_other_pools_are_not_paired(experiment, tmp_path):
    """A group whose seeds drew other pools (seeds.pool: per-seed) has no matched keep rows: it gets
    no paired delta against a baseline of the shared pool, and is compared by Welch on seed means."""

    def edit(name, df):
        twin = df[df["group_id"] == "dm_c"].copy()
        twin["group_id"] = "dm_c_fresh"
        if "group_label" in twin:
            twin["group_label"] = "dm_c on fresh pools"
        if "config.data.pool_seed" in twin:
            twin["config.data.pool_seed"] = twin["seed"] + 100
        return pd.concat([df, twin])

    df = summarize_groups(load_tables(_variant(experiment, tmp_path, edit))).set_index("group_id")
    assert df.loc["dm_c", "baseline_id"] == "base" and np.isfinite(df.loc["dm_c", "leakage_reduction_mean"])
    assert df.loc["dm_c_fresh", "baseline_id"] is None and np.isnan(df.loc["dm_c_fresh", "leakage_reduction_mean"])
    assert df.loc["dm_c_fresh", "pool_design"] == "per-seed" and df.loc["dm_c", "pool_design"] == "same"
    # identical numbers on other pools: Welch on the seed means cannot tell them apart
    assert df.loc["dm_c", "not_separable_from"] == "dm_c on fresh pools"


def test_group_table_gives_seed_level_intervals(experiment, tmp_path):
    from orchestrator.layout import ExperimentDir

    text = group_table(ExperimentDir(experiment))
    runs = pd.read_parquet(experiment / "runs.parquet")
    done = runs[(runs["group_id"] == "dm_a") & (runs["status"] == "done")]
    per_seed = done.groupby("seed")["robust_acc_pgd"].mean()  # models averaged within each seed first
    lo, hi = stats.t.interval(0.95, 2, loc=per_seed.mean(), scale=stats.sem(per_seed))
    row = next(line for line in text.splitlines() if line.startswith(_label("dm_a")[:40]))
    assert f"{per_seed.mean():.4f} ± {(hi - lo) / 2:.4f}" in row and " 3 " in row
    assert "± = 95% t interval across seeds" in text
    # ...and each group's paired difference from its baseline, as the summary computes it
    r = summarize_groups(load_tables(experiment), leakage="auc").set_index("group_id").loc["dm_a"]
    paired = f"robust {-r['robust_cost_mean']:+.3f} [{-r['robust_cost_hi']:+.3f}, {-r['robust_cost_lo']:+.3f}]"
    line = next(x for x in text.splitlines() if x.strip().startswith(f"{_label('dm_a')} vs {_label('base')}"))
    assert paired in line and "AUC " in line
    # with one seed there is no interval, and the table says so
    one = _variant(experiment, tmp_path, lambda name, df: df[df["seed"] == 0] if "seed" in df else df)
    single = group_table(ExperimentDir(one))
    assert "one seed: one training draw, no interval" in single and "±" not in single


@pytest.mark.parametrize(
    "attacks, shadows, expected",
    [
        (("lira_online_fixed", "rmia_online", "loss"), 3, "rmia_online"),
        (("lira_online_fixed", "rmia_online", "loss"), 15, "rmia_online"),
        (("lira_online_fixed", "rmia_online", "loss"), 16, "lira_online_fixed"),
        (("lira_online_fixed", "loss"), 3, "lira_online_fixed"),
        (("lira_offline", "loss"), 63, "lira_offline"),
        (("loss",), 63, "loss"),
    ],
)
def test_the_headline_attack_follows_the_number_of_reference_models(attacks, shadows, expected):
    from orchestrator.collect import choose_attack

    audits = pd.DataFrame({"attack": list(attacks), "n_shadow": shadows})
    chosen, why = choose_attack(audits)
    assert chosen == expected
    if expected == "rmia_online":
        assert f"{shadows} reference models per target" in why


# --- what a reader of the outputs sees --------------------------------------------------------


def test_the_roc_caption_names_the_attack_drawn(experiment, tmp_path):
    """The report's ROC caption names the summary's attack (the one `roc_plot` draws), not LiRA."""
    paths = summarize(experiment, attack="loss", out=tmp_path, echo=lambda _: None, tensorboard=False)
    html = paths["report.html"].read_text()
    assert "<figcaption>loss ROC curves (pooled over targets)" in html and "LiRA ROC" not in html
    paths = summarize(experiment, out=tmp_path, echo=lambda _: None, tensorboard=False)
    assert "<figcaption>lira_online_fixed ROC curves" in paths["report.html"].read_text()


def test_no_threshold_sweep_without_a_threshold_to_sweep(experiment, tmp_path):
    """Every DeMem group at one risk threshold: no threshold-sweep figure (it would be one point per
    lambda), and neither the report nor the printed paths list one."""

    def edit(name, df):
        if name == "runs":
            df.loc[df["config.demem.lambda"] > 0, "config.demem.risk_threshold"] = 0.5
        return df

    root = _variant(experiment, tmp_path, edit)
    lines: list[str] = []
    paths = summarize(root, out=tmp_path / "out", echo=lines.append, tensorboard=False)
    assert "threshold_sweep.png" not in paths and not (tmp_path / "out" / "threshold_sweep.png").exists()
    html = paths["report.html"].read_text()
    assert html.count("data:image/png;base64,") == 4 and "threshold" not in html.split("<h2>Plots</h2>")[1]
    assert lines[-1].endswith(
        "/ (ranking.md, ranking.csv, summary.parquet, pareto.png, roc.png, membins.png, forest.png, report.html)"
    )
    df, tables = pd.read_parquet(paths["summary.parquet"]), load_tables(root)
    assert not plots.sweeps_threshold(df)
    assert set(plots.all_figures(df, tables.roc, tables.membins)) == {"pareto.png", "roc.png", "membins.png"}


def _hparams_experiment(tmp_path: Path, resolvable: list[dict[str, bool]]):
    """tiny.yaml's two groups with one seed of collected tables: 4 finished models and 4 audited
    targets each (TPR at 0.1% FPR 0, as an unresolved level reads), and lowfpr rows whose
    `resolvable` is, per group, {level: resolved}."""
    from orchestrator.layout import ExperimentDir
    from orchestrator.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[2] / "search_spaces" / "tiny.yaml", check_data=False)
    ids = [g.group_id for g in spec.groups()]
    runs, audits, low = [], [], []
    for gid, levels in zip(ids, resolvable):
        for m in range(4):
            runs.append({"group_id": gid, "seed": 0, "model_index": m, "status": "done", "epochs_done": 1})
            runs[-1].update(natural_acc=0.7, robust_acc_pgd=0.4)
            audits.append({"group_id": gid, "seed": 0, "target": m, "attack": "rmia_online", "n_shadow": 2})
            audits[-1].update(auc=0.6, tpr_at_1pct=0.05, tpr_at_0_1pct=0.0)
        low += [
            {"group_id": gid, "seed": 0, "attack": "rmia_online", "level": k, "resolvable": ok}
            for k, ok in levels.items()
        ]
    for name, rows in (("runs", runs), ("audits", audits), ("lowfpr", low)):
        pd.DataFrame(rows).to_parquet(tmp_path / f"{name}.parquet")
    return spec, ExperimentDir(tmp_path), ids


def test_tensorboard_group_entries_log_no_unresolved_tpr(tmp_path):
    """A group whose targets have too few non-members for TPR at 0.1% FPR (the report's "below
    resolution") logs no such TPR: the lowest resolved level instead (1%), or none."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from orchestrator.collect import HPARAM_METRICS, write_hparams

    levels = [
        {"tpr_at_1pct": True, "tpr_at_0_1pct": False},  # 1% resolved, 0.1% not
        {"tpr_at_1pct": False, "tpr_at_0_1pct": False},  # neither
    ]
    spec, exp, ids = _hparams_experiment(tmp_path, levels)
    for _ in range(2):  # writing again replaces the entries
        write_hparams(spec, exp)
    tags, files = {}, {}
    for gid in ids:
        acc = EventAccumulator(str(exp.tensorboard_groups / gid))
        acc.Reload()
        tags[gid] = set(acc.Tags()["scalars"])
        assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
        files[gid] = len(list((exp.tensorboard_groups / gid).glob("events.out.tfevents.*")))
    assert not any("tpr_at_0_1pct" in t for t in tags[ids[0]] | tags[ids[1]])
    always = {HPARAM_METRICS["natural_acc"], HPARAM_METRICS["robust_acc_pgd"], HPARAM_METRICS["auc"]}
    assert tags[ids[0]] == always | {HPARAM_METRICS["tpr_at_1pct"]}
    assert tags[ids[1]] == always
    assert files == dict.fromkeys(ids, 1)
