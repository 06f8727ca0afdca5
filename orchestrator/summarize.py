"""Summarise an experiment: per-group means with 95% confidence intervals, deltas against the
matching undefended baseline, Pareto ranking of the privacy-robustness trade-off, plots and a
one-file HTML report.

    demem summarize results/quickstart [--leakage auto|auc|tpr_at_1pct|...] [--attack lira_online_fixed] [--out DIR]

Reads the experiment's Parquet files (runs, audits, roc, membins; rebuilt from the experiment's
directories when missing) and writes, to `<experiment>/summary/` by default:
    summary.parquet   one row per group: every aggregate, interval, delta, front and rank
    ranking.csv       the ranking, one row per group, numbers only
    ranking.md        the same as a Markdown table ("mean ± half-width (n)") to paste into a paper
    pareto.png, roc.png, membins.png, threshold_sweep.png, report.html

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

This module does not import Ray.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from demem.io import write_parquet, write_text
from demem.methods import METHODS
from demem.pareto import crowding_distance, pareto_fronts, pareto_order
from demem.stats import (
    detectable_difference,
    excludes_zero,
    paired_seed_delta,
    seed_level,
    seeds_needed,
    welch_diff,
)
from orchestrator import plots
from orchestrator.collect import choose_attack, collect, failed_groups
from orchestrator.fmt import fmt_ci, seeds_unit
from orchestrator.layout import AUDITS, LOWFPR, MEMBINS, ROC, RUNS, SPEC, ExperimentDir
from orchestrator.metrics import (
    ACCURACY_METRICS,
    LEAKAGE_LABELS,
    LEAKAGE_METRICS,
    NATURAL_ACC,
    ROBUST_ACC,
    ROBUST_ACC_AA,
)
from orchestrator.spec import load_spec

OBJECTIVES = (("leakage", False), (ROBUST_ACC, True), (NATURAL_ACC, True))
AUTO = "auto"  # the default leakage metric: chosen by resolution (choose_leakage)


# ---------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    runs: pd.DataFrame
    audits: pd.DataFrame
    roc: pd.DataFrame
    membins: pd.DataFrame
    lowfpr: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def load_tables(root: Path) -> Tables:
    """The experiment's Parquet files; collects them first when an older experiment lacks some."""
    exp = ExperimentDir(Path(root))
    if not exp.table(RUNS).exists() and not exp.spec.exists():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no {RUNS}, no {SPEC})")
    if not all(exp.table(f).exists() for f in (RUNS, AUDITS, ROC, MEMBINS, LOWFPR)):
        collect(load_spec(exp.spec, check_data=False), exp)
    read = {f: pd.read_parquet(exp.table(f)) for f in (RUNS, AUDITS, ROC, MEMBINS, LOWFPR)}
    return Tables(read[RUNS], read[AUDITS], read[ROC], read[MEMBINS], read[LOWFPR])


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
            "pool_design": "per-seed" if (g.groupby("seed")["config.data.pool_seed"].first().nunique() > 1) else "same",
            "n_models": int(len(g)),
            "n_failed": int(((runs["group_id"] == gid) & (runs["status"] == "failed")).sum()),
            "attack": attack,
        }
        for metric in ACCURACY_METRICS:
            _put(row, metric, seed_level(g, metric))
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


_EMPTY_AUDITS = pd.DataFrame({"seed": [], "target": [], **{m: [] for m in LEAKAGE_METRICS}})
_EMPTY_POOLED = pd.DataFrame({"seed": [], "tpr": [], "lo": [], "hi": [], "resolvable": [], "n_nonmembers_min": []})

POOLED_LEVELS = ("tpr_at_1pct", "tpr_at_0_1pct")
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


_MATCH = ("dataset", "arch", "undefended_method", "epochs", "pool_key")


def _add_baselines(df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, leakage: str) -> None:
    """The matching undefended baseline of each group (same dataset, arch, undefended method, epochs,
    pool and keep masks per seed; lambda 0; no DP) and the paired deltas against it:
    leakage_reduction = baseline - group (positive: less leakage), robust_cost / natural_cost =
    baseline - group (positive: the defence costs accuracy). Each is the difference per (seed, model)
    or (seed, target), matched on the model index (the same keep row), averaged within each seed,
    with a t interval across seeds."""
    is_base = (df["lambda"] == 0) & ~df["dp"] & (df["method"] == df["undefended_method"])
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
    values = df[[f"{name}_mean" for name, _ in OBJECTIVES]].to_numpy(dtype=float)
    maximize = [up for _, up in OBJECTIVES]
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


# ---------------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------------

RANKING_COLUMNS = [
    "rank",
    "front",
    "crowding",
    "group_label",
    "defence",
    "method",
    "lambda",
    "threshold",
    "leakage_mean",
    "leakage_lo",
    "leakage_hi",
    "leakage_n",
    *(f"{ROBUST_ACC}_{s}" for s in ("mean", "lo", "hi", "n")),
    *(f"{NATURAL_ACC}_{s}" for s in ("mean", "lo", "hi", "n")),
    "mia_auc_mean",
    "epsilon_mean",
    "leakage_reduction_mean",
    "leakage_reduction_lo",
    "leakage_reduction_hi",
    "robust_cost_mean",
    "robust_cost_lo",
    "robust_cost_hi",
    "natural_cost_mean",
    "natural_cost_lo",
    "natural_cost_hi",
    "baseline_label",
    "not_separable_from",
    "group_id",
]


def _ci_of(r: pd.Series, col: str) -> str:
    n = r[f"{col}_n"]
    return fmt_ci(r[f"{col}_mean"], r[f"{col}_lo"], r[f"{col}_hi"], n, unit=seeds_unit(n))


def _pooled_of(r: pd.Series, key: str) -> str:
    """A pooled low-FPR TPR: 'below resolution' when a target has fewer than 1 / level non-members;
    across seeds as mean ± t half-width; with one seed the exact binomial interval of that draw,
    labelled as such."""
    if r[f"pooled_{key}_resolvable"] is None or r[f"pooled_{key}_n"] == 0:
        return "—"
    if not r[f"pooled_{key}_resolvable"]:
        return f"below resolution ({int(r[f'pooled_{key}_nonmembers'])} non-members)"
    if r[f"pooled_{key}_n"] == 1 and np.isfinite(r[f"pooled_{key}_draw_lo"]):
        lo, hi = r[f"pooled_{key}_draw_lo"], r[f"pooled_{key}_draw_hi"]
        return f"{r[f'pooled_{key}_mean']:.3f} [{lo:.3f}, {hi:.3f}] (one draw, exact binomial)"
    return _ci_of(r, f"pooled_{key}")


def failures_text(df: pd.DataFrame, failed: list[tuple[str, str]]) -> list[str]:
    """Lines naming every failed model and every group that has no finished model at all."""
    lines = []
    partial = df[df["n_failed"] > 0]
    for _, r in partial.iterrows():
        lines.append(
            f"FAILED: {r['group_label']}: {int(r['n_failed'])} model(s) failed after their retries; its numbers "
            f"use the {int(r['n_models'])} that finished."
        )
    lines += [f"FAILED: {label}: {what}; not ranked." for label, what in failed]
    return lines


def ranking_markdown(df: pd.DataFrame, failed: list[tuple[str, str]] = ()) -> str:
    leak = df["leakage_metric"].iloc[0]
    attack = df["attack"].iloc[0]
    has_aa = bool((df[f"{ROBUST_ACC_AA}_n"] > 0).any())
    has_eps = bool((df["epsilon_n"] > 0).any())
    head = ["rank", "front", "group", "defence", f"leakage ({LEAKAGE_LABELS[leak]}, {attack})", "robust acc (PGD)"]
    head += ["robust acc (AutoAttack)"] * has_aa + ["natural acc"] + ["epsilon (DP)"] * has_eps
    head += ["Δ leakage vs baseline", "Δ robust vs baseline"]
    head += [f"pooled {LEAKAGE_LABELS[k]}" for k in POOLED_LEVELS] + ["not separable from"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for _, r in df.iterrows():
        cells = [
            "—" if not np.isfinite(r["rank"]) else str(int(r["rank"])),
            str(int(r["front"])),
            r["group_label"] + (" (baseline)" if r["is_baseline"] else ""),
            r["defence"],
            _ci_of(r, "leakage"),
            _ci_of(r, ROBUST_ACC),
            *([_ci_of(r, ROBUST_ACC_AA)] if has_aa else []),
            _ci_of(r, NATURAL_ACC),
            *([_ci_of(r, "epsilon")] if has_eps else []),
            _delta(r, "leakage_reduction", -1),
            _delta(r, "robust_cost", -1),
            *(_pooled_of(r, k) for k in POOLED_LEVELS),
            r["not_separable_from"] or "—",
        ]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines.append("")
    n_seeds = int(df["n_seeds"].max())
    lines.append(
        f"Design: {n_seeds} training seed(s), the unit of replication. Each value is averaged within a seed "
        f"(leakage: {LEAKAGE_LABELS[leak]} of {attack} over the audited targets; accuracies over the models), "
        "then mean ± 95% t-interval half-width across seeds (n = seeds). Δ = group − baseline, paired: the "
        "difference per (seed, model) or (seed, target) with matched keep rows, averaged within each seed, "
        '95% t interval across seeds. "Not separable": no paired interval excludes 0 on any objective. '
        "Fronts by non-dominated sorting on (leakage ↓, robust ↑, natural ↑), ties by crowding distance."
    )
    pools = set(df["pool_design"])
    lines.append("")
    lines.append(
        "Pools: "
        + (
            "each seed drew its own pool and keep masks (seeds.pool: per-seed), so a replicate repeats the data split."
            if pools == {"per-seed"}
            else "every seed used the same pool and keep masks (seeds.pool: same): the seeds replicate training "
            "(init, batch order, attack noise), not the data split."
            if pools == {"same"}
            else "mixed designs (some groups per-seed, some same)."
        )
        + " Pooled TPRs: each target thresholded at its own FPR, true positives pooled over the targets of a "
        "seed, then mean ± t across seeds (one seed: the exact binomial interval of that draw); a level below "
        "1 / (a target's non-members) is below resolution."
    )
    failures = failures_text(df, failed)
    if failures:
        lines.append("")
        lines += failures
    lines.append("")
    lines.append(f"Leakage metric: {df['leakage_why'].iloc[0]}. Attack: {attack} ({df['attack_why'].iloc[0]}).")
    lines.append("")
    lines.append(power_text(df))
    if n_seeds < 2:
        lines.append(
            "With one seed there is no group-level interval: the numbers are one training draw, and no pair of "
            "groups is claimed separable. Run more seeds (`seeds:` in the spec) for intervals."
        )
    return "\n".join(lines)


def _delta(r: pd.Series, col: str, sign: int) -> str:
    """A delta column as group - baseline (the stored value is baseline - group)."""
    mean = r[f"{col}_mean"]
    if not np.isfinite(mean):
        return "—"
    lo, hi = r[f"{col}_lo"], r[f"{col}_hi"]
    if not np.isfinite(lo):
        return f"{sign * mean:+.3f}"
    return f"{sign * mean:+.3f} [{min(sign * lo, sign * hi):+.3f}, {max(sign * lo, sign * hi):+.3f}]"


def power_text(df: pd.DataFrame, n_planned: int | None = None) -> str:
    """What an experiment can detect in leakage (80% power, 5% two-sided, paired across seeds), and
    about how many seeds the closest group-vs-baseline pair would need. `df` is a summary
    (`summarize_groups`); `n_planned`: the seeds of a planned experiment (default: those of `df`)."""
    leak = LEAKAGE_LABELS[df["leakage_metric"].iloc[0]]
    n_had = int(df["n_seeds"].max())
    if n_had < 2:
        return (
            f"Power ({leak}): one seed, so there is no across-seed spread to plan from; "
            "run at least 3 seeds for intervals and a power estimate."
        )
    deltas = df[(df["leakage_reduction_n"] >= 2) & np.isfinite(df["leakage_reduction_std"])]
    if deltas.empty:
        return f"Power ({leak}): no group has a paired leakage delta across 2 or more seeds."
    n = n_had if n_planned is None else n_planned
    sd = float(deltas["leakage_reduction_std"].median())
    mdd = detectable_difference(sd, n)
    spread = f"median across-seed sd of the paired deltas {sd:.3f}"
    if n_planned is not None:
        spread += f", from {n_had} seeds of that experiment"
    text = (
        f"Power ({leak}): with {n} seeds the paired design detects a leakage difference of about {mdd:.3f} "
        f"(80% power, 5% two-sided; {spread})."
        if n >= 2
        else f"Power ({leak}): {n} seed gives no interval; the spread to plan from is {sd:.3f} ({spread})."
    )
    closest = deltas.loc[deltas["leakage_reduction_mean"].abs().idxmin()]
    need = seeds_needed(closest["leakage_reduction_mean"], closest["leakage_reduction_std"])
    if need is not None:
        delta = -closest["leakage_reduction_mean"]
        pair = f"{closest['group_label']} vs its baseline (Δ {delta:+.3f})"
        text += f" The closest pair, {pair}, would need about {need} seeds."
    return text


def planned_power(previous: str | Path, n_seeds: int) -> str:
    """`power_text` for a planned experiment of `n_seeds` seeds, from the summary of a previous one
    (`<previous>/summary/summary.parquet`, written by `demem summarize`)."""
    path = ExperimentDir(Path(previous)).summary / "summary.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no summary; run `demem summarize {previous}` first")
    return power_text(pd.read_parquet(path), n_planned=n_seeds)


def top_text(df: pd.DataFrame, k: int = 5, failed: list[tuple[str, str]] = ()) -> str:
    leak = df["leakage_metric"].iloc[0]
    lines = [
        f"ranking ({LEAKAGE_LABELS[leak]} of {df['attack'].iloc[0]} down, robust up, natural up); "
        f"top {min(k, len(df))}:"
    ]
    width = max(len(s) for s in df["group_label"].head(k)) + 11
    lines.append(f"  {'#':>2} {'front':>5}  {'group':<{width}} {'leakage':>22} {'robust':>22} {'natural':>22}")
    for _, r in df.head(k).iterrows():
        label = r["group_label"] + (" (baseline)" if r["is_baseline"] else "")
        rank = "—" if not np.isfinite(r["rank"]) else str(int(r["rank"]))
        cells = " ".join(f"{_ci_of(r, col):>22}" for col in ("leakage", ROBUST_ACC, NATURAL_ACC))
        lines.append(f"  {rank:>2} {int(r['front']):>5}  {label:<{width}} {cells}")
    lines += [f"  {line}" for line in failures_text(df, failed)]
    lines.append(f"  leakage metric: {df['leakage_why'].iloc[0]}")
    lines.append(f"  attack: {df['attack'].iloc[0]} ({df['attack_why'].iloc[0]})")
    lines.append("  " + power_text(df))
    flagged = df[~df["separable"]]
    if len(flagged):
        lines.append(
            f"  {len(flagged)} of {len(df)} groups are not separable from another group (no paired "
            "seed-level interval excludes 0 on any objective): see ranking.md"
        )
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------------


def summarize(
    root: str | Path,
    *,
    leakage: str = AUTO,
    attack: str | None = None,
    out: str | Path | None = None,
    echo=print,
    tensorboard: bool = True,
) -> dict[str, Path]:
    """Aggregate, rank, plot and report. Returns {name: path} of everything written."""
    if leakage != AUTO and leakage not in LEAKAGE_METRICS:  # before any reading
        raise ValueError(f"unknown leakage metric {leakage!r}; known: {AUTO}, {', '.join(LEAKAGE_METRICS)}")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; name a directory")
    root = Path(root)
    tables = load_tables(root)
    df = summarize_groups(tables, leakage=leakage, attack=attack)
    out = Path(out) if out is not None else ExperimentDir(root).summary
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"summary.parquet": write_parquet(out / "summary.parquet", df)}
    ranking = df[[c for c in RANKING_COLUMNS if c in df.columns]]
    paths["ranking.csv"] = write_text(out / "ranking.csv", ranking.to_csv(index=False))
    failed = failed_groups(tables.runs)
    md = ranking_markdown(df, failed)
    paths["ranking.md"] = write_text(out / "ranking.md", md + "\n")
    figures = plots.all_figures(df, tables.roc, tables.membins)
    for name, fig in figures.items():
        paths[name] = plots.save(fig, out / name)
    paths["report.html"] = write_report(out / "report.html", root, df, md, {n: paths[n] for n in figures})
    if tensorboard:
        plots.to_tensorboard(figures, ExperimentDir(root).tensorboard_summary)
    echo(top_text(df, failed=failed))
    echo("")
    echo(f"summary: {out}/ (ranking.md, ranking.csv, summary.parquet, {', '.join(figures)}, report.html)")
    return paths


def write_report(path: Path, root: Path, df: pd.DataFrame, markdown: str, images: dict[str, Path]) -> Path:
    """One self-contained HTML page: the ranking table and every plot, embedded as base64 PNG."""
    leak = df["leakage_metric"].iloc[0]
    table = _markdown_to_html(markdown)
    figs = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(_CAPTIONS.get(name, name))}'
        "</figcaption></figure>"
        for name, p in images.items()
    )
    n_models = int(df["n_models"].sum())
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>demem report: {html.escape(root.name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} th, td {{ border: 1px solid #ccc; padding: 4px 8px; }}
th {{ background: #f3f3f3; }} figure {{ margin: 2em 0; }} img {{ max-width: 100%; }}
figcaption {{ color: #555; font-size: 0.9em; }} .meta {{ color: #555; }}
</style></head><body>
<h1>Privacy-robustness trade-off: {html.escape(root.name)}</h1>
<p class="meta">{len(df)} groups, {n_models} trained models; leakage = {html.escape(LEAKAGE_LABELS[leak])} of
{html.escape(str(df["attack"].iloc[0]))}; written {time.strftime("%Y-%m-%d %H:%M", time.localtime())} by demem
summarize.</p>
<h2>Ranking</h2>
{table}
<h2>Plots</h2>
{figs}
</body></html>
"""
    return write_text(path, page)


_CAPTIONS = {
    "pareto.png": "Robust accuracy against leakage, one point per group with 95% intervals; the staircase joins "
    "the groups no other group beats on both axes. Up and to the left is better.",
    "roc.png": "LiRA ROC curves (pooled over targets), log-log; the dashed line is chance.",
    "membins.png": "Who pays for privacy: held-out accuracy and attack TPR per memorization bin.",
    "threshold_sweep.png": "Leakage and robust accuracy against the DeMem risk threshold, one line per lambda.",
}


def _markdown_to_html(md: str) -> str:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    note = [ln for ln in md.splitlines() if ln and not ln.startswith("|")]
    rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    head, body = rows[0], rows[2:]
    out = ["<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>"]
    out += ["<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body]
    out.append("</tbody></table>")
    out += [f'<p class="meta">{html.escape(n)}</p>' for n in note]
    return "\n".join(out)
