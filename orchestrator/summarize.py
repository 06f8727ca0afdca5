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

Statistics. Accuracy values are per model (a group's M models, over its seeds); leakage values are
per audited target model (leave-one-out over the group's models, over seeds). The interval is the
Student t interval mean ± t_{0.975, n-1} s / sqrt(n) and its n is reported; with n = 1 there is no
interval (NaN, shown as "n=1"). Targets of one group share shadow models, so their leakage values
are not independent: the interval describes the spread over targets and is optimistic as a
statement about the group. Deltas use Welch's t interval for a difference of means.

Ranking. Objectives: leakage (down), robust accuracy (up), natural accuracy (up), on group means.
Groups are sorted into Pareto fronts (non-dominated sorting), and within a front by crowding
distance (NSGA-II; larger first). A group is flagged "not separable" from another when their
intervals overlap on all three objectives.

This module does not import Ray.
"""

from __future__ import annotations

import base64
import html
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from demem.io import write_parquet, write_text
from demem.methods import METHODS
from demem.pareto import crowding_distance, pareto_fronts, pareto_order
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
# Statistics
# ---------------------------------------------------------------------------------------------------


def ci95(values) -> dict[str, float]:
    """Mean, sample std and the 95% Student t interval of the finite values.

    Returns {"mean", "std", "lo", "hi", "half", "n"}; with n = 1 std / lo / hi / half are NaN (one
    value has no interval), with n = 0 everything but n is NaN.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    nan = float("nan")
    if n == 0:
        return {"mean": nan, "std": nan, "lo": nan, "hi": nan, "half": nan, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": nan, "lo": nan, "hi": nan, "half": nan, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "half": half, "n": n}


def welch_diff(a, b) -> dict[str, float]:
    """mean(a) - mean(b) with Welch's 95% interval. Returns {"mean", "lo", "hi", "half", "df"};
    the interval is NaN when either side has fewer than 2 values."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    nan = float("nan")
    if a.size == 0 or b.size == 0:
        return {"mean": nan, "lo": nan, "hi": nan, "half": nan, "df": nan}
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {"mean": diff, "lo": nan, "hi": nan, "half": nan, "df": nan}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": diff, "lo": diff, "hi": diff, "half": 0.0, "df": float(a.size + b.size - 2)}
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.975, df) * se)
    return {"mean": diff, "lo": diff - half, "hi": diff + half, "half": half, "df": float(df)}


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
            _put(row, metric, ci95(pd.to_numeric(g[metric], errors="coerce")))
        leaks = mine[mine["group_id"] == gid] if not mine.empty else mine
        for metric in LEAKAGE_METRICS:
            vals = pd.to_numeric(leaks[metric], errors="coerce") if not leaks.empty else []
            _put(row, f"mia_{metric}", ci95(vals))
        _put(row, "leakage", ci95(pd.to_numeric(leaks[leakage], errors="coerce") if not leaks.empty else []))
        rows.append(row)
    df = pd.DataFrame(rows)
    df["leakage_metric"] = leakage
    _add_baselines(df, done, mine, leakage)
    _add_ranking(df)
    return df.sort_values(["rank", "group_label"], na_position="last").reset_index(drop=True)


def _default_attack(audits: pd.DataFrame) -> str:
    if audits.empty:
        return HEADLINE_ATTACK
    have = set(audits["attack"])
    for name in (HEADLINE_ATTACK, *FALLBACK_ATTACKS):
        if name in have:
            return name
    return sorted(have)[0]


def _put(row: dict[str, Any], name: str, ci: dict[str, float]) -> None:
    row[f"{name}_mean"], row[f"{name}_std"] = ci["mean"], ci["std"]
    row[f"{name}_lo"], row[f"{name}_hi"], row[f"{name}_n"] = ci["lo"], ci["hi"], ci["n"]


_MATCH = ("dataset", "arch", "undefended_method", "epochs", "pool_size")


def _add_baselines(df: pd.DataFrame, runs: pd.DataFrame, audits: pd.DataFrame, leakage: str) -> None:
    """The matching undefended baseline of each group (same dataset, arch, undefended method, epochs,
    pool; lambda 0; no DP) and the deltas against it with Welch intervals:
    leakage_reduction = baseline - group (positive: less leakage), robust_cost / natural_cost =
    baseline - group (positive: the defence costs accuracy)."""
    is_base = (df["lambda"] == 0) & ~df["dp"] & (df["method"] == df["undefended_method"])
    df["is_baseline"] = is_base
    df["baseline_id"] = None
    df["baseline_label"] = None
    for col in ("leakage_reduction", "robust_cost", "natural_cost"):
        for suffix in ("mean", "lo", "hi"):
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
        pairs = {
            "leakage_reduction": (audits, leakage),
            "robust_cost": (runs, ROBUST_ACC),
            "natural_cost": (runs, NATURAL_ACC),
        }
        for col, (frame, metric) in pairs.items():
            d = welch_diff(_values(frame, base["group_id"], metric), _values(frame, row["group_id"], metric))
            df.at[i, f"{col}_mean"], df.at[i, f"{col}_lo"], df.at[i, f"{col}_hi"] = d["mean"], d["lo"], d["hi"]


def _values(frame: pd.DataFrame, gid: str, col: str) -> np.ndarray:
    if frame.empty:
        return np.array([])
    return pd.to_numeric(frame.loc[frame["group_id"] == gid, col], errors="coerce").to_numpy(dtype=float)


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
    # intervals (a point when n = 1) that overlap on every objective: the data cannot tell them apart
    lo = np.stack([df[f"{n}_lo"].fillna(df[f"{n}_mean"]).to_numpy(dtype=float) for n, _ in OBJECTIVES], axis=1)
    hi = np.stack([df[f"{n}_hi"].fillna(df[f"{n}_mean"]).to_numpy(dtype=float) for n, _ in OBJECTIVES], axis=1)
    labels = df["group_label"].tolist()
    close = []
    for i in range(len(df)):
        overlap = [labels[j] for j in range(len(df)) if j != i and np.all((lo[i] <= hi[j]) & (lo[j] <= hi[i]))]
        close.append("; ".join(overlap))
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


def fmt_ci(mean: float, lo: float, hi: float, n: int | None = None, digits: int = 3) -> str:
    """'0.612 ± 0.021 (n=8)'; 'n=1' when there is no interval; '—' when there is no value."""
    if mean is None or not np.isfinite(mean):
        return "—"
    tail = f" (n={int(n)})" if n is not None else ""
    if lo is None or not np.isfinite(lo):
        return f"{mean:.{digits}f}" + (" (n=1)" if n == 1 else tail)
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}{tail}"


def _ci_of(r: pd.Series, col: str) -> str:
    return fmt_ci(r[f"{col}_mean"], r[f"{col}_lo"], r[f"{col}_hi"], r[f"{col}_n"])


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
    lines.append(
        f"Leakage: {LEAKAGE_LABELS[leak]} of {attack}, mean ± 95% t-interval half-width over audited "
        "targets (n); accuracies over models. Δ = group − baseline (Welch 95% interval); "
        "fronts by non-dominated sorting on (leakage ↓, robust ↑, natural ↑), ties by crowding distance."
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
    flagged = df[~df["separable"]]
    if len(flagged):
        lines.append(
            f"  {len(flagged)} of {len(df)} groups are not separable from another group on every "
            "objective (overlapping 95% intervals): see ranking.md"
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
