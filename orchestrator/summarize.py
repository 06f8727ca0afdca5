"""Summarise an experiment: per-group means with 95% confidence intervals, deltas against the
matching undefended baseline, Pareto ranking of the privacy-robustness trade-off, plots and a
one-file HTML report.

    demem summarize results/quickstart [--leakage tpr_at_1pct] [--attack lira_online_fixed] [--out DIR]

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

Ranking. Objectives: leakage (down), robust accuracy (up), natural accuracy (up), on group means.
Groups are sorted into Pareto fronts (non-dominated sorting), and within a front by crowding
distance (NSGA-II; larger first). A group is flagged "not separable" from another when no paired
seed-level interval of their difference excludes 0 (groups of different pools: Welch intervals of
their seed means).

This module does not import Ray.
"""

from __future__ import annotations

import base64
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
from orchestrator.collect import collect
from orchestrator.layout import AUDITS, MEMBINS, ROC, RUNS, SPEC, ExperimentDir
from orchestrator.metrics import (
    ACCURACY_METRICS,
    DEFAULT_LEAKAGE,
    FALLBACK_ATTACKS,
    HEADLINE_ATTACK,
    LEAKAGE_LABELS,
    LEAKAGE_METRICS,
    NATURAL_ACC,
    ROBUST_ACC,
    ROBUST_ACC_AA,
)
from orchestrator.spec import load_spec

OBJECTIVES = (("leakage", False), (ROBUST_ACC, True), (NATURAL_ACC, True))


# ---------------------------------------------------------------------------------------------------
# Aggregation
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Tables:
    runs: pd.DataFrame
    audits: pd.DataFrame
    roc: pd.DataFrame
    membins: pd.DataFrame


def load_tables(root: Path) -> Tables:
    """The experiment's Parquet files; collects them first when an older experiment lacks some."""
    exp = ExperimentDir(Path(root))
    if not exp.table(RUNS).exists() and not exp.spec.exists():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no {RUNS}, no {SPEC})")
    if not all(exp.table(f).exists() for f in (RUNS, AUDITS, ROC, MEMBINS)):
        collect(load_spec(exp.spec, check_data=False), exp)
    read = {f: pd.read_parquet(exp.table(f)) for f in (RUNS, AUDITS, ROC, MEMBINS)}
    return Tables(read[RUNS], read[AUDITS], read[ROC], read[MEMBINS])


def _undefended(method: str) -> str:
    m = METHODS.get(method) if method in METHODS else None
    return m.undefended if m is not None and m.undefended else method


def summarize_groups(tables: Tables, *, leakage: str = DEFAULT_LEAKAGE, attack: str | None = None) -> pd.DataFrame:
    """One row per group: config keys, aggregates with intervals, deltas vs baseline, Pareto rank."""
    if leakage not in LEAKAGE_METRICS:
        raise ValueError(f"unknown leakage metric {leakage!r}; known: {', '.join(LEAKAGE_METRICS)}")
    runs = tables.runs
    if runs.empty or not (runs["status"] == "done").any():
        raise ValueError("the experiment has no finished runs to summarise")
    done = runs[runs["status"] == "done"]
    audits = tables.audits
    attack = attack or _default_attack(audits)
    if not audits.empty and attack not in set(audits["attack"]):
        have = ", ".join(sorted(set(audits["attack"])))
        raise ValueError(f"attack {attack!r} was not run; this experiment has: {have}")
    mine = audits[audits["attack"] == attack] if not audits.empty else audits

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
        rows.append(row)
    df = pd.DataFrame(rows)
    df["leakage_metric"] = leakage
    _add_baselines(df, done, mine, leakage)
    _add_ranking(df)
    _add_separability(df, done, mine, leakage)
    return df.sort_values(["rank", "group_label"], na_position="last").reset_index(drop=True)


def _default_attack(audits: pd.DataFrame) -> str:
    if audits.empty:
        return HEADLINE_ATTACK
    have = set(audits["attack"])
    for name in (HEADLINE_ATTACK, *FALLBACK_ATTACKS):
        if name in have:
            return name
    return sorted(have)[0]


_EMPTY_AUDITS = pd.DataFrame({"seed": [], "target": [], **{m: [] for m in LEAKAGE_METRICS}})


def _put(row: dict[str, Any], name: str, ci: dict[str, float]) -> None:
    """A seed-level aggregate: mean, std across seed means, 95% interval, n = seeds, the spread of
    the models / targets inside one seed, and how many of them there were."""
    row[f"{name}_mean"], row[f"{name}_std"] = ci["mean"], ci["std"]
    row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_n"] = ci["lo"], ci["hi"], ci["n"]
    row[f"{name}_within_sd"], row[f"{name}_units"] = ci["within_sd"], ci["units"]


_MATCH = ("dataset", "arch", "undefended_method", "epochs", "pool_size")


def _add_baselines(df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, leakage: str) -> None:
    """The matching undefended baseline of each group (same dataset, arch, undefended method, epochs,
    pool; lambda 0; no DP) and the paired deltas against it: leakage_reduction = baseline - group
    (positive: less leakage), robust_cost / natural_cost = baseline - group (positive: the defence
    costs accuracy). Each is the difference per (seed, model) or (seed, target), matched on the model
    index (the same keep row), averaged within each seed, with a t interval across seeds."""
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
    pool = list(zip(df["dataset"], df["pool_size"].astype(str)))
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


def fmt_ci(mean: float, lo: float, hi: float, n: int | None = None, digits: int = 3, unit: str = "") -> str:
    """'0.612 ± 0.021 (n=3 seeds)'; no ± when there is no interval (one seed); '—' without a value."""
    if mean is None or not np.isfinite(mean):
        return "—"
    tail = f" (n={int(n)}{unit})" if n is not None else ""
    if lo is None or not np.isfinite(lo):
        return f"{mean:.{digits}f}{tail}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}{tail}"


def _ci_of(r: pd.Series, col: str) -> str:
    n = r[f"{col}_n"]
    return fmt_ci(r[f"{col}_mean"], r[f"{col}_lo"], r[f"{col}_hi"], n, unit=" seed" if n == 1 else " seeds")


def ranking_markdown(df: pd.DataFrame) -> str:
    leak = df["leakage_metric"].iloc[0]
    attack = df["attack"].iloc[0]
    has_aa = bool((df[f"{ROBUST_ACC_AA}_n"] > 0).any())
    has_eps = bool((df["epsilon_n"] > 0).any())
    head = ["rank", "front", "group", "defence", f"leakage ({LEAKAGE_LABELS[leak]}, {attack})", "robust acc (PGD)"]
    head += ["robust acc (AutoAttack)"] * has_aa + ["natural acc"] + ["epsilon (DP)"] * has_eps
    head += ["Δ leakage vs baseline", "Δ robust vs baseline", "not separable from"]
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


def power_text(df: pd.DataFrame) -> str:
    """What this experiment can detect in leakage (80% power, 5% two-sided, paired across seeds), and
    about how many seeds the closest group-vs-baseline pair would need."""
    leak = LEAKAGE_LABELS[df["leakage_metric"].iloc[0]]
    n = int(df["n_seeds"].max())
    if n < 2:
        return (
            f"Power ({leak}): one seed, so there is no across-seed spread to plan from; "
            "run at least 3 seeds for intervals and a power estimate."
        )
    deltas = df[(df["leakage_reduction_n"] >= 2) & np.isfinite(df["leakage_reduction_std"])]
    if deltas.empty:
        return f"Power ({leak}): no group has a paired leakage delta across 2 or more seeds."
    sd = float(deltas["leakage_reduction_std"].median())
    mdd = detectable_difference(sd, n)
    text = (
        f"Power ({leak}): with {n} seeds the paired design detects a leakage difference of about {mdd:.3f} "
        f"(80% power, 5% two-sided; median across-seed sd of the paired deltas {sd:.3f})."
    )
    closest = deltas.loc[deltas["leakage_reduction_mean"].abs().idxmin()]
    need = seeds_needed(closest["leakage_reduction_mean"], closest["leakage_reduction_std"])
    if need is not None:
        delta = -closest["leakage_reduction_mean"]
        pair = f"{closest['group_label']} vs its baseline (Δ {delta:+.3f})"
        text += f" The closest pair, {pair}, would need about {need} seeds."
    return text


def top_text(df: pd.DataFrame, k: int = 5) -> str:
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
    leakage: str = DEFAULT_LEAKAGE,
    attack: str | None = None,
    out: str | Path | None = None,
    echo=print,
    tensorboard: bool = True,
) -> dict[str, Path]:
    """Aggregate, rank, plot and report. Returns {name: path} of everything written."""
    if leakage not in LEAKAGE_METRICS:  # before any reading
        raise ValueError(f"unknown leakage metric {leakage!r}; known: {', '.join(LEAKAGE_METRICS)}")
    root = Path(root)
    tables = load_tables(root)
    df = summarize_groups(tables, leakage=leakage, attack=attack)
    out = Path(out) if out is not None else ExperimentDir(root).summary
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {"summary.parquet": write_parquet(out / "summary.parquet", df)}
    ranking = df[[c for c in RANKING_COLUMNS if c in df.columns]]
    paths["ranking.csv"] = write_text(out / "ranking.csv", ranking.to_csv(index=False))
    md = ranking_markdown(df)
    paths["ranking.md"] = write_text(out / "ranking.md", md + "\n")
    figures = plots.all_figures(df, tables.roc, tables.membins)
    for name, fig in figures.items():
        paths[name] = plots.save(fig, out / name)
    paths["report.html"] = write_report(out / "report.html", root, df, md, {n: paths[n] for n in figures})
    if tensorboard:
        plots.to_tensorboard(figures, ExperimentDir(root).tensorboard_summary)
    echo(top_text(df))
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
