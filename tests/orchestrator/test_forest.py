"""The forest plot's paired differences (orchestrator.forest) against a plain loop with scipy's t
quantile: which comparisons are made, how each family's attack per query kind is chosen without
peeking, and what `demem summarize` writes for it."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from orchestrator import forest
from orchestrator.collect import Tables, load_tables
from orchestrator.summarize import summarize, summarize_groups

# group -> (method, lambda, epochs, trades beta, robust, natural)
GROUPS = {
    "std": ("standard", 0.0, 10, None, 0.05, 0.70),
    "pgd": ("pgd_at", 0.0, 10, None, 0.45, 0.62),
    "pgd_dm": ("pgd_at", 0.4, 10, None, 0.40, 0.58),
    "trades": ("trades", 0.0, 10, 6.0, 0.44, 0.60),
    "std_long": ("standard", 0.0, 30, None, 0.04, 0.72),  # another setting: no partner for pgd / trades
}
SEEDS = (0, 1, 2, 3)
M = 4
# attack -> (family, query, leakage on the selection seeds 0 and 2, on the report seeds 1 and 3) for
# every group but pgd_dm, which leaks 0.03 less under each
ATTACKS = {
    "lira_online_fixed": ("lira", "clean", 0.60, 0.66),  # the strongest clean LiRA on the selection half only
    "lira_offline_fixed": ("lira", "clean", 0.57, 0.70),
    "lira_online_fixed_adv": ("lira", "adversarial", 0.63, 0.61),
    "loss": ("threshold", "clean", 0.55, 0.55),
    "loss_adv": ("threshold", "adversarial", 0.52, 0.52),
}
CHOSEN = {
    ("lira", "clean"): "lira_online_fixed",
    ("lira", "adversarial"): "lira_online_fixed_adv",
    ("threshold", "clean"): "loss",
    ("threshold", "adversarial"): "loss_adv",
}


def _tables() -> Tables:
    rng = np.random.default_rng(7)
    runs, audits = [], []
    draws = {seed: rng.normal(0, 0.02) for seed in SEEDS}  # what a draw moves, in every group alike
    for (gid, (method, lam, epochs, beta, rob, nat)), seed in itertools.product(GROUPS.items(), SEEDS):
        shift = draws[seed]
        for m in range(M):
            runs.append(
                {
                    "group_id": gid,
                    "group_label": gid,
                    "run_id": f"{gid}-{seed}-{m}",
                    "seed": seed,
                    "model_index": m,
                    "status": "done",
                    "config.method.name": method,
                    "config.method.beta": beta,
                    "config.attack.start": "gaussian" if method == "trades" else "uniform",  # TRADES's own
                    "config.data.dataset": "fashion-mnist",
                    "config.train.arch": "small-cnn",
                    "config.train.epochs": epochs,
                    "config.demem.lambda": lam,
                    "config.demem.risk_threshold": 0.0,
                    "config.demem.risk": "loss_deviation",
                    "config.data.pool_size": 400,
                    "config.data.pool_seed": seed,
                    "defence": "demem" if lam else "none",
                    "natural_acc": nat + shift + rng.normal(0, 0.02),
                    "robust_acc_pgd": rob + shift + rng.normal(0, 0.02),
                }
            )
            for attack, (family, query, sel, rep) in ATTACKS.items():
                level = (sel if seed % 2 == 0 else rep) - (0.03 if gid == "pgd_dm" else 0.0)
                audits.append(
                    {
                        "group_id": gid,
                        "group_label": gid,
                        "seed": seed,
                        "target": m,
                        "attack": attack,
                        "family": family,
                        "query": query,
                        "auc": level + shift + rng.normal(0, 0.003),
                        "tpr_at_1pct": 0.02,
                        "tpr_at_0_1pct": 0.002,
                        "tpr_at_0_01pct": 0.0,
                        "balanced_acc": level,
                    }
                )
    return Tables(pd.DataFrame(runs), pd.DataFrame(audits), pd.DataFrame(), pd.DataFrame())


def _loop(frame: pd.DataFrame, gid: str, ref: str, value: str, unit: str, seeds) -> tuple[float, float, float]:
    """group - reference in points: per seed the mean over matched units, then a t interval."""
    means = []
    for seed in seeds:
        g = frame[(frame["group_id"] == gid) & (frame["seed"] == seed)].set_index(unit)[value]
        r = frame[(frame["group_id"] == ref) & (frame["seed"] == seed)].set_index(unit)[value]
        means.append(100 * float(np.mean([g[u] - r[u] for u in g.index])))
    means = np.array(means)
    half = stats.t.ppf(0.975, len(means) - 1) * means.std(ddof=1) / np.sqrt(len(means))
    return means.mean(), means.mean() - half, means.mean() + half


@pytest.fixture(scope="module")
def tables() -> Tables:
    return _tables()


def test_comparisons_pair_defences_with_baselines_and_methods_with_standard(tables):
    df = summarize_groups(tables, leakage="auc", attack="loss")
    pairs = set(forest.comparisons(df))
    # TRADES's beta and its attack's start are its own: it still pairs with standard training; the
    # 30-epoch standard group differs in a shared setting, so it is nobody's reference
    assert pairs == {("defence", "pgd_dm", "pgd"), ("training", "pgd", "std"), ("training", "trades", "std")}


def _choice(leak: pd.DataFrame) -> dict[tuple[str, str], str]:
    return dict(zip(zip(leak["family"], leak["query"]), leak["attack"]))


def test_family_attacks_are_chosen_per_query_kind_on_half_the_seeds_and_reported_on_the_other(tables):
    df = summarize_groups(tables, leakage="auc", attack="loss")
    table = forest.forest_table(df, tables.runs, tables.audits)
    leak = table[table["objective"].str.startswith("leakage")]
    # on seeds 0 and 2 lira_online_fixed is the stronger clean LiRA; on 1 and 3 lira_offline_fixed
    # would be; the adversarial member of each family has its own panel row, weaker or not
    assert _choice(leak) == CHOSEN
    assert set(leak["objective"]) == {
        "leakage: lira, clean query",
        "leakage: lira, adversarial query",
        "leakage: threshold, clean query",
        "leakage: threshold, adversarial query",
    }
    assert (leak["n"] == 2).all() and leak["chosen"].str.contains("selected on seeds 0, 2").all()
    for _, r in table.iterrows():
        if r["objective"].startswith("leakage"):
            a = tables.audits[tables.audits["attack"] == r["attack"]]
            expect = _loop(a, r["group_id"], r["reference_id"], "auc", "target", (1, 3))
        else:
            col = {"robust": "robust_acc_pgd", "natural": "natural_acc"}[r["objective"]]
            expect = _loop(tables.runs, r["group_id"], r["reference_id"], col, "model_index", SEEDS)
            assert r["n"] == len(SEEDS)
        assert (r["mean"], r["lo"], r["hi"]) == pytest.approx(expect, abs=1e-9)
    dm = leak[leak["group_id"] == "pgd_dm"].set_index(["family", "query"])
    assert (
        dm.loc[("lira", "clean"), "mean"] == pytest.approx(-3.0, abs=1.5) and dm.loc[("lira", "clean"), "excludes_zero"]
    )
    pgd_vs_std = table[(table["group_id"] == "pgd") & (table["objective"] == "robust")].iloc[0]
    assert pgd_vs_std["kind"] == "training" and pgd_vs_std["mean"] == pytest.approx(40, abs=3)


def test_a_repeat_takes_the_earlier_choice_and_reports_every_seed(tables):
    df = summarize_groups(tables, leakage="auc", attack="loss")
    chosen = ["lira_offline_fixed", "loss_adv", "rmia_online"]  # rmia did not run here
    table = forest.forest_table(df, tables.runs, tables.audits, chosen=chosen)
    leak = table[table["objective"].str.startswith("leakage")]
    # each attack's family and query kind are this experiment's audits' own
    assert _choice(leak) == {("lira", "clean"): "lira_offline_fixed", ("threshold", "adversarial"): "loss_adv"}
    assert (leak["n"] == len(SEEDS)).all()
    r = leak[(leak["group_id"] == "pgd_dm") & (leak["family"] == "lira")].iloc[0]
    a = tables.audits[tables.audits["attack"] == "lira_offline_fixed"]
    assert (r["mean"], r["lo"], r["hi"]) == pytest.approx(_loop(a, "pgd_dm", "pgd", "auc", "target", SEEDS))


def test_audits_without_query_kinds_are_read_as_clean(tables, tmp_path):
    """Tables from before query kinds: every attack a clean one, one attack per family."""
    _write(tmp_path, tables.runs, tables.audits.drop(columns="query"))
    old = load_tables(tmp_path)
    df = summarize_groups(old, leakage="auc", attack="loss")
    leak = forest.forest_table(df, old.runs, old.audits)
    leak = leak[leak["objective"].str.startswith("leakage")]
    # on the selection seeds lira_online_fixed_adv (0.63) is now the strongest LiRA
    assert _choice(leak) == {("lira", "clean"): "lira_online_fixed_adv", ("threshold", "clean"): "loss"}


def _write(root: Path, runs: pd.DataFrame, audits: pd.DataFrame) -> None:
    """An experiment's tables: these runs and audits, no curves."""
    for name, frame in (("runs", runs), ("audits", audits)):
        frame.to_parquet(root / f"{name}.parquet")
    for name in ("roc", "membins", "lowfpr"):
        pd.DataFrame({"group_id": pd.Series(dtype=str)}).to_parquet(root / f"{name}.parquet")


def test_summarize_writes_the_forest_and_a_repeat_reads_it(tables, tmp_path):
    root = tmp_path / "exp"
    root.mkdir()
    _write(root, tables.runs, tables.audits)
    paths = summarize(root, leakage="auc", attack="loss", echo=lambda _: None, tensorboard=False)
    img = mpimg.imread(paths["forest.png"])
    assert img.ndim == 3 and img[..., :3].std() > 0.05
    md = paths["ranking.md"].read_text()
    assert "### Paired differences (forest plot)" in md and "| pgd_dm − pgd |" in md and "| trades − std |" in md
    assert "forest.png" in paths["report.html"].read_text()
    assert forest.chosen_from(root) == sorted(CHOSEN.values())
    assert "Δ ROC AUC, lira_online_fixed_adv (lira, adversarial)" in md
    with pytest.raises(FileNotFoundError, match="no forest table"):
        forest.chosen_from(tmp_path / "nowhere")
    for name, text in (("wrong", "a,b\n1,2\n"), ("huge", "x" * (forest.MAX_BYTES + 1))):
        (tmp_path / name / "summary").mkdir(parents=True)
        (tmp_path / name / "summary" / forest.FILE).write_text(text)
        with pytest.raises(ValueError, match="not a forest table"):
            forest.chosen_from(tmp_path / name)
    again = summarize(root, leakage="auc", attack="loss", echo=lambda _: None, tensorboard=False, forest_from=root)
    repeat = pd.read_csv(again[forest.FILE])
    assert (repeat.loc[repeat["objective"].str.startswith("leakage"), "n"] == len(SEEDS)).all()
    assert Path(again["forest.png"]).stat().st_size > 0
