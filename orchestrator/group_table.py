"""The group table `demem run` prints at the end: per group, natural and robust accuracy and the
attack's AUC with seed-level intervals, then each group against its undefended baseline (paired
deltas, `orchestrator.summarize.summarize_groups`). Ray-free."""

from __future__ import annotations

import math

from demem.names import ROBUST_GAP
from demem.stats import seed_level
from orchestrator.collect import Tables, choose_attack, failed_groups, load_tables
from orchestrator.columns import NATURAL_ACC, ROBUST_ACC
from orchestrator.fmt import fmt_ci
from orchestrator.layout import ExperimentDir
from orchestrator.report import delta_text
from orchestrator.summarize import summarize_groups


def group_table(exp: ExperimentDir, attack: str | None = None) -> str:
    """Per group: natural and robust accuracy and the attack's ROC AUC, each averaged within a seed
    (over the models / audited targets) and then across seeds, with the 95% t interval across seeds
    (n = seeds; none with one seed)."""
    tables = load_tables(exp.root)  # read once, for this table and the paired lines
    runs, audits = tables.runs, tables.audits
    if runs.empty:
        return "no finished runs"
    done = runs[runs["status"] == "done"]
    failed = runs[runs["status"] == "failed"].groupby("group_id").size()
    chosen = attack or choose_attack(audits)[0]
    if not audits.empty and chosen not in set(audits["attack"]):
        chosen = sorted(set(audits["attack"]))[0]
    mine = audits[audits["attack"] == chosen] if not audits.empty else audits
    w = 22
    lines = [
        f"{'group':<40} {'seeds':>5} {'natural':>{w}} {'robust':>{w}} {'robust gap':>{w}} "
        f"{'AUC (' + chosen + ')':>{w + 8}}"
    ]
    n_max = 0
    for (gid, label), g in done.groupby(["group_id", "group_label"], sort=False):
        cells = []
        for frame, metric in (
            (g, NATURAL_ACC),
            (g, ROBUST_ACC),
            (g, ROBUST_GAP),
            (mine[mine["group_id"] == gid] if len(mine) else mine, "auc"),
        ):
            has = len(frame) and metric in frame
            ci = seed_level(frame, metric) if has else {"mean": math.nan, "lo": math.nan, "hi": math.nan}
            cells.append(fmt_ci(ci["mean"], ci["lo"], ci["hi"], digits=4))
        n = int(g["seed"].nunique())
        n_max = max(n_max, n)
        fail = f"  {int(failed[gid])} failed" if gid in failed.index else ""
        lines.append(
            f"{label[:40]:<40} {n:>5} {cells[0]:>{w}} {cells[1]:>{w}} {cells[2]:>{w}} {cells[3]:>{w + 8}}{fail}"
        )
    lines += [f"{label[:40]:<40} FAILED: {what}" for label, what in failed_groups(runs)]
    lines.append(
        "mean over the models (accuracy) or audited targets (AUC) of each seed, then across seeds; "
        + ("± = 95% t interval across seeds." if n_max >= 2 else "one seed: one training draw, no interval.")
        + " Robust gap: robust accuracy on the models' own training half minus on the held-out half."
    )
    lines += _paired_lines(tables, chosen)
    return "\n".join(lines)


def _paired_lines(tables: Tables, attack: str) -> list[str]:
    """Each group against its undefended baseline, paired per (seed, model) / (seed, target), with the
    95% t interval across seeds (`summarize_groups`)."""
    try:
        df = summarize_groups(tables, leakage="auc", attack=attack if not tables.audits.empty else None)
    except (ValueError, FileNotFoundError):
        return []
    rows = df[df["baseline_id"].notna() & ~df["is_baseline"] & df["robust_cost_mean"].notna()]
    if rows.empty:
        return []
    out = ["", "group - baseline, paired per seed and model / target (95% t interval across seeds):"]
    for _, r in rows.iterrows():
        out.append(
            f"  {r['group_label']} vs {r['baseline_label']}: robust {delta_text(r, 'robust_cost', -1)}  "
            f"natural {delta_text(r, 'natural_cost', -1)}  AUC {delta_text(r, 'leakage_reduction', -1)}"
        )
    return out
