"""The human-readable outputs of a summary: `ranking.md` (the table, its design footnote, failures,
the leakage metric and attack chosen and why, power), the lines `demem summarize` prints, and the
one-file `report.html`. Everything here formats a summary DataFrame (`summarize.summarize_groups`);
nothing is computed from the experiment's files but the power plan of `planned_power`.

This module does not import Ray.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path

import numpy as np
import pandas as pd

from demem.io import write_text
from demem.names import NATURAL_GAP, ROBUST_GAP
from demem.stats import detectable_difference, seeds_needed
from orchestrator.columns import LEAKAGE_LABELS, NATURAL_ACC, POOLED_LEVELS, ROBUST_ACC, ROBUST_ACC_AA
from orchestrator.fmt import fmt_ci, seeds_unit
from orchestrator.layout import ExperimentDir

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
    *(f"{ROBUST_GAP}_{s}" for s in ("mean", "lo", "hi", "n")),
    *(f"{NATURAL_GAP}_{s}" for s in ("mean", "lo", "hi", "n")),
    "strongest_attack",
    *(f"strongest_{s}" for s in ("mean", "lo", "hi", "n")),
    "empirical_epsilon",
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
    has_gap = bool((df[f"{ROBUST_GAP}_n"] > 0).any()) if f"{ROBUST_GAP}_n" in df else False
    head += ["robust acc (AutoAttack)"] * has_aa + ["natural acc"] + ["robust gap (train − held-out)"] * has_gap
    head += ["epsilon (DP)"] * has_eps
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
            *([_ci_of(r, ROBUST_GAP)] if has_gap else []),
            *([_ci_of(r, "epsilon")] if has_eps else []),
            delta_text(r, "leakage_reduction", -1),
            delta_text(r, "robust_cost", -1),
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


def delta_text(r: pd.Series, col: str, sign: int) -> str:
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
    if n < 2:
        text = f"Power ({leak}): {n} seed gives no interval; the spread to plan from is {sd:.3f} ({spread})."
    elif not np.isfinite(mdd):
        # e.g. paired deltas identical in every seed (sd 0): a t test has no spread to scale by
        text = f"Power ({leak}): with {n} seeds the detectable leakage difference cannot be stated ({spread})."
    else:
        text = (
            f"Power ({leak}): with {n} seeds the paired design detects a leakage difference of about {mdd:.3f} "
            f"(80% power, 5% two-sided; {spread})."
        )
    closest = deltas.loc[deltas["leakage_reduction_mean"].abs().idxmin()]
    need = seeds_needed(closest["leakage_reduction_mean"], closest["leakage_reduction_std"])
    if need is not None:
        delta = -closest["leakage_reduction_mean"]
        pair = f"{closest['group_label']} vs its baseline (Δ {delta:+.3f})"
        text += f" The closest pair, {pair}, would need about {need} seeds."
    return text + _robust_power(df, n)


ROBUST_TARGET = 0.02  # the robust-accuracy difference the power line sizes seeds for (2 points)


def _robust_power(df: pd.DataFrame, n: int) -> str:
    """The same for robust accuracy, from the paired robust-cost deltas; with the seeds a
    ROBUST_TARGET difference would need."""
    if "robust_cost_std" not in df:
        return ""
    costs = df[(df["robust_cost_n"] >= 2) & np.isfinite(df["robust_cost_std"]) & (df["robust_cost_std"] > 0)]
    if costs.empty:
        return ""
    sd = float(costs["robust_cost_std"].median())
    mdd = detectable_difference(sd, n)
    need = seeds_needed(ROBUST_TARGET, sd)
    text = f" Robust accuracy: median across-seed sd of the paired deltas {100 * sd:.2f} points"
    if np.isfinite(mdd):
        text += f"; with {n} seeds the paired design detects about {100 * mdd:.1f} points"
    if need is not None:
        text += f"; a {100 * ROBUST_TARGET:g}-point difference needs about {need} seeds"
    return text + "."


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


def write_report(path: Path, root: Path, df: pd.DataFrame, markdown: str, images: dict[str, Path]) -> Path:
    """One self-contained HTML page: the ranking table and every plot, embedded as base64 PNG."""
    leak = df["leakage_metric"].iloc[0]
    table = _markdown_to_html(markdown)
    figs = "\n".join(
        f'<figure><img alt="{html.escape(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(_caption(name, df))}'
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


def _caption(name: str, df: pd.DataFrame) -> str:
    """The caption of a figure of the summary `df`; the ROC caption names the attack drawn (the
    summary's, `plots.roc_plot`)."""
    captions = {
        "pareto.png": "Robust accuracy against leakage, one point per group with 95% intervals; the staircase "
        "joins the groups no other group beats on both axes. Up and to the left is better.",
        "roc.png": f"{df['attack'].iloc[0]} ROC curves (pooled over targets), log-log; the dashed line is chance.",
        "membins.png": "Who pays for privacy: held-out accuracy and attack TPR per memorization bin.",
        "threshold_sweep.png": "Leakage and robust accuracy against the DeMem risk threshold, one line per lambda.",
        "forest.png": "Every paired difference from its reference (group − reference, points), with its 95% t "
        "interval across seeds; filled where the interval excludes 0; one panel per attack family, a marker per "
        "query kind (clean, adversarial, boundary distance).",
    }
    return captions.get(name, name)


def _markdown_to_html(md: str) -> str:
    """ranking.md as HTML: each block of table lines a table, each "###" line a heading, every other
    line a note."""
    out: list[str] = []
    block: list[str] = []

    def flush() -> None:
        if not block:
            return
        rows = [[c.strip() for c in ln.strip("|").split("|")] for ln in block]
        head, body = rows[0], rows[2:]
        out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr></thead><tbody>")
        out.extend("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body)
        out.append("</tbody></table>")
        block.clear()

    for ln in md.splitlines():
        if ln.startswith("|"):
            block.append(ln)
            continue
        flush()
        if ln.startswith("### "):
            out.append(f"<h3>{html.escape(ln[4:])}</h3>")
        elif ln:
            out.append(f'<p class="meta">{html.escape(ln)}</p>')
    flush()
    return "\n".join(out)
