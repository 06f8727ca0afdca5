"""Summarise an experiment: per-group means with 95% confidence intervals, deltas against the
matching undefended baseline, Pareto ranking of the privacy-robustness trade-off, plots and a
one-file HTML report.

    demem summarize results/quickstart [--leakage auto|auc|tpr_at_1pct|...] [--attack lira_online_fixed] [--out DIR]

Reads the experiment's Parquet files (runs, audits, roc, membins, lowfpr: `collect.load_tables`,
which rebuilds them from the experiment's directories when missing) and writes, to
`<experiment>/summary/` by default:
    summary.parquet   one row per group: every aggregate, interval, delta, front and rank
    ranking.csv       the ranking, one row per group, numbers only
    ranking.md        the same as a Markdown table ("mean ± half-width (n)") to paste into a paper
    pareto.png, roc.png, membins.png, report.html
    threshold_sweep.png   only when the DeMem groups differ in their risk threshold
    forest.csv        every paired difference from its reference (orchestrator.forest)
    forest.png        the same as a forest plot, where the experiment has a comparison

Statistics (demem.stats). The training seed is the unit of replication: accuracies are averaged over
a group's models within each seed, leakage over its audited targets within each seed, and the
interval is the Student t interval of those seed means (n = seeds; with one seed there is none).
The spread of the models / targets inside one seed is kept as its own column (`*_within_sd`): targets
of one draw share shadow models and data, so it says nothing about another draw. Deltas against the
baseline are paired per (seed, model index) or (seed, target), averaged within each seed, with a t
interval across seeds; two groups are separable when such a paired interval excludes 0 on at least
one objective.

Leakage metric. By default (`auto`) the lowest FPR level (0.1%, 1%) at which every audited target
has at least 10 false positives' worth of non-members, else ROC AUC; the choice and its reason are
printed and written to ranking.md. TPRs pooled over the targets (lowfpr.parquet) are shown beside
it, "below resolution" where a target has fewer than 1 / level non-members.

Ranking. Objectives: leakage (down), robust accuracy (up), natural accuracy (up), on group means.
Groups are sorted into Pareto fronts (non-dominated sorting), and within a front by crowding
distance (NSGA-II; larger first). A group is flagged "not separable" from another when no paired
seed-level interval of their difference excludes 0 (groups of different pools: Welch intervals of
their seed means).

The text outputs (ranking.md, the printed lines, report.html) are formatted by
`orchestrator.report`; the group table `demem run` prints at the end by `orchestrator.group_table`.
`summarize_tables` does everything after reading the tables, for an experiment's and for external
audits' (`orchestrator.external`) alike. This module does not import Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from demem.io import write_parquet, write_text
from demem.methods import METHODS
from demem.names import GAPS, TRAIN_ACCURACIES
from demem.pareto import crowding_distance, pareto_fronts, pareto_order
from demem.stats import (
    excludes_zero,
    paired_seed_delta,
    seed_level,
    t_interval,
    welch_diff,
)
from orchestrator import forest, plots
from orchestrator import leakage as leaks
from orchestrator.collect import Tables, choose_attack, failed_groups, load_tables
from orchestrator.columns import (
    ACCURACY_METRICS,
    LEAKAGE_LABELS,
    LEAKAGE_METRICS,
    NATURAL_ACC,
    POOLED_LEVELS,
    ROBUST_ACC,
)
from orchestrator.layout import ExperimentDir, open_experiment
from orchestrator.report import RANKING_COLUMNS, ranking_markdown, top_text, write_report

OBJECTIVES = (("leakage", False), (ROBUST_ACC, True), (NATURAL_ACC, True))
AUTO = "auto"  # the default leakage metric: chosen by resolution (choose_leakage)


# ---------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------


def _undefended(method: str) -> str:
    m = METHODS.get(method) if method in METHODS else None
    return m.undefended if m is not None and m.undefended else method


def summarize_groups(tables: Tables, *, leakage: str = AUTO, attack: str | None = None) -> pd.DataFrame:
    """One row per group: config keys, aggregates with intervals, deltas vs baseline, Pareto rank.

    `leakage="auto"` ranks by the lowest-FPR metric this experiment resolves (`choose_leakage`);
    the column `leakage_why` says why."""
    if leakage != AUTO and leakage not in LEAKAGE_METRICS:
        raise ValueError(f"unknown leakage metric {leakage!r}; known: {AUTO}, {', '.join(LEAKAGE_METRICS)}")
    runs = tables.runs
    if runs.empty or not (runs["status"] == "done").any():
        failed = "; ".join(f"{label}: {what}" for label, what in failed_groups(runs))
        raise ValueError(
            "the experiment has no finished runs to summarise" + (f" (FAILED: {failed})" if failed else "")
        )
    done = runs[runs["status"] == "done"]
    audits = tables.audits
    if attack is None:
        attack, attack_why = choose_attack(audits)
    else:
        attack_why = "chosen with --attack"
    if not audits.empty and attack not in set(audits["attack"]):
        have = ", ".join(sorted(set(audits["attack"])))
        raise ValueError(f"attack {attack!r} was not run; this experiment has: {have}")
    mine = audits[audits["attack"] == attack] if not audits.empty else audits
    low = tables.lowfpr
    low = low[low["attack"] == attack] if not low.empty else low
    if leakage == AUTO:
        leakage, why = choose_leakage(low)
    else:
        why = "chosen with --leakage"
    done = done.assign(pool_key=_pool_keys(done))

    rows = []
    for gid, g in done.groupby("group_id", sort=False):
        first = g.iloc[0]
        method = first["config.method.name"]
        dp = bool(METHODS.get(method).dp) if method in METHODS else False
        row: dict[str, Any] = {
            "group_id": gid,
            "group_label": first["group_label"],
            "dataset": first["config.data.dataset"],
            "arch": first["config.train.arch"],
            "method": method,
            "undefended_method": _undefended(method),
            "family": method + (" + AWP" if float(first.get("config.method.awp_gamma") or 0) > 0 else ""),
            "lambda": float(first["config.demem.lambda"]),
            "threshold": float(first["config.demem.risk_threshold"]),
            "risk": first["config.demem.risk"],
            "dp": dp,
            "defence": first.get("defence") or "none",
            "noise_multiplier": first.get("config.dp.noise_multiplier"),
            "epochs": int(first["config.train.epochs"]),
            "pool_size": first["config.data.pool_size"],
            "n_seeds": int(g["seed"].nunique()),
            "pool_key": first["pool_key"],
            "setting": _setting(g),
            "pool_design": "per-seed" if (g.groupby("seed")["config.data.pool_seed"].first().nunique() > 1) else "same",
            "n_models": int(len(g)),
            "n_failed": int(((runs["group_id"] == gid) & (runs["status"] == "failed")).sum()),
            "attack": attack,
        }
        for metric in (*ACCURACY_METRICS, *TRAIN_ACCURACIES, *GAPS):
            _put(row, metric, seed_level(g, metric) if metric in g else t_interval([]) | _NO_UNITS)
        leaks = mine[mine["group_id"] == gid] if not mine.empty else _EMPTY_AUDITS
        for metric in LEAKAGE_METRICS:
            _put(row, f"mia_{metric}", seed_level(leaks, metric))
        _put(row, "leakage", seed_level(leaks, leakage))
        for key in POOLED_LEVELS:
            pooled = low[(low["group_id"] == gid) & (low["level"] == key)] if not low.empty else _EMPTY_POOLED
            _put(row, f"pooled_{key}", seed_level(pooled, "tpr"))
            row[f"pooled_{key}_resolvable"] = bool(pooled["resolvable"].all()) if len(pooled) else None
            row[f"pooled_{key}_nonmembers"] = int(pooled["n_nonmembers_min"].min()) if len(pooled) else None
            row[f"pooled_{key}_draw_lo"] = float(pooled["lo"].iloc[0]) if len(pooled) == 1 else np.nan
            row[f"pooled_{key}_draw_hi"] = float(pooled["hi"].iloc[0]) if len(pooled) == 1 else np.nan
        rows.append(row)
    df = pd.DataFrame(rows)
    df["leakage_metric"] = leakage
    df["leakage_why"] = why
    df["attack_why"] = attack_why
    _add_baselines(df, done, mine, leakage)
    _add_ranking(df)
    _add_separability(df, done, mine, leakage)
    return df.sort_values(["rank", "group_label"], na_position="last").reset_index(drop=True)


_NO_UNITS = {"within_sd": np.nan, "units": 0}
_EMPTY_AUDITS = pd.DataFrame({"seed": [], "target": [], **{m: [] for m in LEAKAGE_METRICS}})
_EMPTY_POOLED = pd.DataFrame({"seed": [], "tpr": [], "lo": [], "hi": [], "resolvable": [], "n_nonmembers_min": []})

# A per-target TPR at FPR level a is used to rank only when each target has at least this many
# non-members at that level (a * non-members false positives): with fewer, the threshold rests on
# a handful of scores and the TPR jumps with one sample (relative sd of the FPR ~ 1/sqrt(count)).
MIN_FALSE_POSITIVES = 10
_LEVEL = {"tpr_at_0_1pct": 0.001, "tpr_at_1pct": 0.01}


def choose_leakage(lowfpr: pd.DataFrame) -> tuple[str, str]:
    """The leakage metric to rank by at this experiment's scale, and why (one sentence).

    The lowest FPR level (0.1%, then 1%) at which every audited target has at least
    MIN_FALSE_POSITIVES non-members' worth of false positives; else ROC AUC, which uses every score."""
    if lowfpr.empty:
        return (
            "auc",
            "ROC AUC: the audits do not record their non-member counts, so no low-FPR level is known to resolve",
        )
    n_non = int(lowfpr["n_nonmembers_min"].min())
    for key in ("tpr_at_0_1pct", "tpr_at_1pct"):
        if _LEVEL[key] * n_non >= MIN_FALSE_POSITIVES:
            return key, (
                f"{LEAKAGE_LABELS[key]}: each target has {n_non} non-members, so that level rests on "
                f"{_LEVEL[key] * n_non:g} false positives or more (>= {MIN_FALSE_POSITIVES} needed)"
            )
    need = int(np.ceil(MIN_FALSE_POSITIVES / _LEVEL["tpr_at_1pct"]))
    return "auc", (
        f"ROC AUC: each target has only {n_non} non-members, so TPR at 1% FPR would rest on "
        f"{0.01 * n_non:g} false positives ({need} non-members per target give the {MIN_FALSE_POSITIVES} needed "
        "to rank by it); the pooled low-FPR TPRs are shown beside it"
    )


def _pool_keys(runs: pd.DataFrame) -> pd.Series:
    """Per run, the data its group shares with others: dataset, pool size and the pool seed of each
    training seed. Two groups with the same key have matched keep rows per (seed, model index)."""
    keys = {}
    for gid, g in runs.groupby("group_id", sort=False):
        seeds = g.groupby("seed")["config.data.pool_seed"].first()
        first = g.iloc[0]
        keys[gid] = f"{first['config.data.dataset']}/{first['config.data.pool_size']}/" + ",".join(
            f"{s}:{p}" for s, p in seeds.items()
        )
    return runs["group_id"].map(keys)


def _put(row: dict[str, Any], name: str, ci: dict[str, float]) -> None:
    """A seed-level aggregate: mean, std across seed means, 95% interval, n = seeds, the spread of
    the models / targets inside one seed, and how many of them there were."""
    row[f"{name}_mean"], row[f"{name}_std"] = ci["mean"], ci["std"]
    row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_n"] = ci["lo"], ci["hi"], ci["n"]
    row[f"{name}_within_sd"], row[f"{name}_units"] = ci["within_sd"], ci["units"]


_MATCH = ("undefended_method", "pool_key", "setting")

# What a defence changes, so a defended group and its baseline may differ in it: DeMem's and DP's own
# settings, the method's name (matched through its undefended method), the norm layers DP needs;
# and what differs per run or is matched through the pool key.
_DEFENCE_PREFIXES = ("config.demem.", "config.dp.")
_NOT_SETTING = {
    "config.method.name",
    "config.train.norm",
    "config.seed",
    "config.model_index",
    "config.data.pool_seed",
    "config.data.root",
    "config.data.download",
}


def _setting(g: pd.DataFrame) -> str:
    """Every other config value of a group's runs (arch, epochs, optimiser, attack, AWP, TRADES beta,
    evaluation, ...): a baseline must match its defended group in all of them."""
    cols = sorted(
        c
        for c in g.columns
        if c.startswith("config.") and c not in _NOT_SETTING and not c.startswith(_DEFENCE_PREFIXES)
    )
    undefended = _undefended(g["config.method.name"].iloc[0]) if "config.method.name" in g else None
    base = METHODS.get(undefended) if undefended in METHODS else None
    if base is not None and base.default_beta is None:  # beta is the defence's own (RelaxLoss's alpha)
        cols = [c for c in cols if c != "config.method.beta"]
    return "|".join(f"{c}={g[c].iloc[0]!r}" for c in cols)


def _add_baselines(df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, leakage: str) -> None:
    """The matching undefended baseline of each group (the same undefended method, the same pool and
    keep masks per seed, every other setting but the defence's own the same; lambda 0; no DP) and the
    paired deltas against it:
    leakage_reduction = baseline - group (positive: less leakage), robust_cost / natural_cost =
    baseline - group (positive: the defence costs accuracy). Each is the difference per (seed, model)
    or (seed, target), matched on the model index (the same keep row), averaged within each seed,
    with a t interval across seeds."""
    # groups trained elsewhere (method "external": orchestrator.external) are nobody's baseline
    is_base = (df["lambda"] == 0) & ~df["dp"] & (df["method"] == df["undefended_method"]) & (df["method"] != "external")
    df["is_baseline"] = is_base
    df["baseline_id"] = None
    df["baseline_label"] = None
    for col in ("leakage_reduction", "robust_cost", "natural_cost"):
        for suffix in ("mean", "std", "lo", "hi", "n", "within_sd"):
            df[f"{col}_{suffix}"] = np.nan
    for i, row in df.iterrows():
        cand = df[is_base]
        for key in _MATCH:
            cand = cand[cand[key] == row[key]]
        if cand.empty:
            continue
        base = cand.iloc[0]
        df.at[i, "baseline_id"], df.at[i, "baseline_label"] = base["group_id"], base["group_label"]
        if base["group_id"] == row["group_id"]:
            continue
        for col, d in _paired(runs, audits, base["group_id"], row["group_id"], leakage).items():
            for suffix in ("mean", "std", "lo", "hi", "n", "within_sd"):
                df.at[i, f"{col}_{suffix}"] = d[suffix]


def _units(frame: pd.DataFrame, gid: str, unit: str) -> pd.DataFrame:
    return frame.loc[frame["group_id"] == gid].rename(columns={unit: "unit"})


def _paired(runs: pd.DataFrame, audits: pd.DataFrame, base: str, group: str, leakage: str) -> dict[str, dict]:
    """base - group for each objective, paired per (seed, model index) (seed, audited target)."""
    out = {
        "robust_cost": paired_seed_delta(
            _units(runs, base, "model_index"), _units(runs, group, "model_index"), ROBUST_ACC
        ),
        "natural_cost": paired_seed_delta(
            _units(runs, base, "model_index"), _units(runs, group, "model_index"), NATURAL_ACC
        ),
    }
    if audits.empty:
        out["leakage_reduction"] = paired_seed_delta(
            _EMPTY_AUDITS.rename(columns={"target": "unit"}), _EMPTY_AUDITS.rename(columns={"target": "unit"}), leakage
        )
    else:
        out["leakage_reduction"] = paired_seed_delta(
            _units(audits, base, "target"), _units(audits, group, "target"), leakage
        )
    return out


def _add_ranking(df: pd.DataFrame) -> None:
    # An objective no group measured (robust accuracy of models audited from their logits alone)
    # ranks nobody: the fronts are then on the others.
    objectives = [(n, up) for n, up in OBJECTIVES if np.isfinite(df[f"{n}_mean"].to_numpy(dtype=float)).any()]
    values = df[[f"{name}_mean" for name, _ in objectives or OBJECTIVES]].to_numpy(dtype=float)
    maximize = [up for _, up in objectives or OBJECTIVES]
    front = pareto_fronts(values, maximize)
    df["front"] = np.where(front >= 0, front + 1, -1)  # 1 = the Pareto front; -1 = not ranked (NaN)
    df["crowding"] = crowding_distance(values, maximize, front)
    order = pareto_order(values, maximize)
    rank = np.empty(len(df))
    rank[order] = np.arange(1, len(df) + 1)
    df["rank"] = np.where(front >= 0, rank, np.nan)
    df["not_separable_from"] = ""
    df["separable"] = True


def _unpaired(frame: pd.DataFrame, a: str, b: str, metric: str) -> dict[str, float]:
    """Welch interval of the difference of two groups' seed means (groups without matched units)."""

    def seed_means(gid: str) -> np.ndarray:
        f = frame.loc[frame["group_id"] == gid, ["seed", metric]]
        return pd.to_numeric(f[metric], errors="coerce").groupby(f["seed"]).mean().to_numpy(dtype=float)

    return welch_diff(seed_means(a), seed_means(b))


def _add_separability(df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, leakage: str) -> None:
    """Two groups are separable when an interval of their difference across seeds excludes 0 on at
    least one objective: paired per (seed, unit) within one pool, Welch on seed means across pools.
    With one seed there is no interval, so no pair is separable."""
    ids, labels = df["group_id"].tolist(), df["group_label"].tolist()
    pool = df["pool_key"].tolist()
    close = []
    for i in range(len(df)):
        near = []
        for j in range(len(df)):
            if j == i:
                continue
            if pool[i] == pool[j]:
                deltas = list(_paired(runs, audits, ids[j], ids[i], leakage).values())
            else:  # different keep masks: nothing to pair; compare the groups' seed means
                deltas = [_unpaired(runs, ids[j], ids[i], m) for m in (ROBUST_ACC, NATURAL_ACC)]
                if not audits.empty:
                    deltas.append(_unpaired(audits, ids[j], ids[i], leakage))
            if not any(excludes_zero(d) for d in deltas):
                near.append(labels[j])
        close.append("; ".join(near))
    df["not_separable_from"] = close
    df["separable"] = [not c for c in close]


def summarize(
    root: str | Path,
    *,
    leakage: str = AUTO,
    attack: str | None = None,
    out: str | Path | None = None,
    echo=print,
    tensorboard: bool = True,
    forest_from: str | Path | None = None,
) -> dict[str, Path]:
    """Aggregate, rank, plot and report an experiment. Returns {name: path} of everything written.

    `forest_from`: an earlier summarized experiment whose attacks (per family and query kind) the forest plot takes
    (an independent repeat), instead of choosing them on half of this experiment's seeds."""
    if leakage != AUTO and leakage not in LEAKAGE_METRICS:  # before any reading
        raise ValueError(f"unknown leakage metric {leakage!r}; known: {AUTO}, {', '.join(LEAKAGE_METRICS)}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; name a directory")
    chosen = forest.chosen_from(forest_from) if forest_from is not None else None
    exp = open_experiment(root)  # an s3:// or gs:// experiment is copied here first
    exp.check_tree()  # summary/ and tensorboard-groups/ are written into it
    root = exp.root
    out = Path(out) if out is not None else ExperimentDir(root).summary
    board = ExperimentDir(root).tensorboard_summary if tensorboard else None
    tables = load_tables(root)
    paths = summarize_tables(
        tables, out, title=root.name, leakage=leakage, attack=attack, echo=echo, board=board, chosen=chosen
    )
    if exp.store is not None and out == exp.summary:
        exp.store.push(exp.summary.name)
        exp.store.push(exp.rel(exp.tensorboard_groups))
    return paths


def summarize_tables(
    tables: Tables,
    out: Path,
    *,
    title: str,
    leakage: str = AUTO,
    attack: str | None = None,
    echo=print,
    board: Path | None = None,
    chosen: dict[str, str] | None = None,
) -> dict[str, Path]:
    """Everything `summarize` writes, from the tables of an experiment or of external audits
    (orchestrator.external): ranking, plots, report.html (titled `title`), the figures in TensorBoard
    under `board` where given. `chosen`: the forest plot's attacks (`forest.forest_table`)."""
    df = summarize_groups(tables, leakage=leakage, attack=attack)
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    ranking = df[[c for c in RANKING_COLUMNS if c in df.columns]]
    paths["ranking.csv"] = write_text(out / "ranking.csv", ranking.to_csv(index=False))
    failed = failed_groups(tables.runs)
    labels = dict(zip(df["group_id"], df["group_label"]))
    every = leaks.every_attack(tables.audits, tables.lowfpr, labels)
    strongest = leaks.strongest(tables.audits, labels, metric=df["leakage_metric"].iloc[0])
    epsilons = leaks.empirical_epsilons(tables.epsilon, tables.runs, labels)
    leaks.add_worst_case(df, strongest, epsilons)
    paths["summary.parquet"] = write_parquet(out / "summary.parquet", df)
    differences = forest.forest_table(df, tables.runs, tables.audits, chosen=chosen)
    paths[forest.FILE] = write_text(out / forest.FILE, differences.to_csv(index=False))
    if not every.empty:
        paths["attacks.csv"] = write_text(out / "attacks.csv", every.to_csv(index=False))
    md_lines = [ranking_markdown(df, failed)]
    for section in (
        forest.forest_markdown(differences),
        leaks.strongest_markdown(strongest),
        leaks.every_attack_markdown(every),
        leaks.epsilon_markdown(epsilons, strongest),
    ):
        if section:
            md_lines += ["", *section]
    md = "\n".join(md_lines)
    paths["ranking.md"] = write_text(out / "ranking.md", md + "\n")
    figures = plots.all_figures(df, tables.roc, tables.membins)
    if not differences.empty:
        figures["forest.png"] = forest.forest_plot(differences)
    for name, fig in figures.items():
        paths[name] = plots.save(fig, out / name)
    paths["report.html"] = write_report(out / "report.html", Path(title), df, md, {n: paths[n] for n in figures})
    if board is not None:
        plots.to_tensorboard(figures, board)
    echo(top_text(df, failed=failed))
    echo("")
    echo(f"summary: {out}/ (ranking.md, ranking.csv, summary.parquet, {', '.join(figures)}, report.html)")
    return paths
