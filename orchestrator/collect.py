"""Collect an experiment's run directories and audits into Parquet files (pyarrow, atomic writes).

    runs.parquet     one row per trained (or failed) model
    audits.parquet   one row per (group, seed, target model, attack)
    samples.parquet  one row per (group, seed, sample_id)
    roc.parquet      one row per (group, seed, attack, ROC point): pooled ROC over the targets, log-spaced FPR
    membins.parquet  one row per (group, seed, memorization bin): held-out accuracy, LiRA TPR at 1% / 0.1% FPR
    lowfpr.parquet   one row per (group, seed, attack, FPR level): TPR pooled over the targets (each at its
                     own FPR), its exact binomial interval within the draw, and whether the level is
                     resolvable with the targets' non-members (`demem.privacy.roc.pooled_low_fpr`)

The files are rebuilt from the experiment's directories each time, keyed by run id / group id, so
collecting twice, or after a resume, never duplicates rows. A `schema_version` column lets later code
read older results.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from demem.artifacts import METRICS as METRICS_FILE
from demem.artifacts import SCHEMA_VERSION
from demem.io import write_parquet
from demem.stats import seed_level
from orchestrator.columns import (
    FALLBACK_ATTACKS,
    FEW_SHADOWS,
    FEW_SHADOWS_ATTACK,
    HEADLINE_ATTACK,
    NATURAL_ACC,
    ROBUST_ACC,
    ROBUST_ACC_AA,
)
from orchestrator.fmt import fmt_ci
from orchestrator.layout import AUDITS, LOWFPR, MEMBINS, ROC, RUNS, SAMPLES, ExperimentDir, read_json, trial_records
from orchestrator.spec import ExperimentSpec, short_name


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v)
        else:
            out[key] = v
    return out


def runs_frame(spec: ExperimentSpec, exp: ExperimentDir) -> pd.DataFrame:
    state = trial_records(spec, exp)
    labels = {g.group_id: g.label for g in spec.groups()}
    rows = []
    for t in spec.trials():
        run_dir = exp.run_dir(t.group_id, t.trial_key)
        metrics = read_json(run_dir / METRICS_FILE) or {}
        st = state.get(t.trial_key, {})
        status = "done" if metrics.get("status") == "done" else st.get("status", "pending")
        if status == "pending":
            continue
        err = (st.get("error") or "").strip()
        rows.append(
            {
                "schema_version": SCHEMA_VERSION,
                "experiment": spec.name,
                "group_id": t.group_id,
                "group_label": labels[t.group_id],
                "run_id": t.trial_key,
                "seed": t.seed,
                "model_index": t.model_index,
                **{f"config.{k}": v for k, v in _flatten(t.run).items()},
                "defence": metrics.get("defence"),
                NATURAL_ACC: metrics.get(NATURAL_ACC),
                ROBUST_ACC: metrics.get(ROBUST_ACC),
                ROBUST_ACC_AA: metrics.get(ROBUST_ACC_AA),
                "epsilon": metrics.get("epsilon"),
                "train_loss": metrics.get("train_loss"),
                "epochs_done": metrics.get("epochs_done"),
                "wall_s": (metrics.get("train_seconds") or 0) + (metrics.get("eval_seconds") or 0) if metrics else None,
                "device": metrics.get("device"),
                "status": status,
                "error": err.splitlines()[-1] if (err and status != "done") else None,
                "node_id": st.get("node_id"),
                "host": st.get("host"),
                "gpu_ids": st.get("gpu_ids"),
                "started_at": st.get("started_at"),
                "finished_at": st.get("finished_at"),
            }
        )
    return pd.DataFrame(rows)


def audits_frame(spec: ExperimentSpec, exp: ExperimentDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = {g.group_id: g.label for g in spec.groups()}
    rows, samples = [], []
    for g in spec.groups():
        for seed in spec.seeds:
            result = read_json(exp.audit_result(g.group_id, seed))
            if result is None:
                continue
            for attack, res in result["attacks"].items():
                if "skipped" in res:
                    continue
                for row in res["per_target"]:
                    rows.append(
                        {
                            "schema_version": SCHEMA_VERSION,
                            "experiment": spec.name,
                            "group_id": g.group_id,
                            "group_label": labels[g.group_id],
                            "seed": seed,
                            "target": row["target"],
                            "attack": attack,
                            "variant": res["variant"],
                            "family": res["family"],
                            # reference models the attack used: one key for every attack (audits
                            # before it was one wrote LiRA's as n_shadows)
                            "n_shadow": res.get("n_references", res.get("n_shadows")),
                            "partial": result.get("partial", False),
                            **{
                                k: row.get(k)
                                for k in (
                                    "auc",
                                    "balanced_acc",
                                    "tpr_at_1pct",
                                    "tpr_at_0_1pct",
                                    "tpr_at_0_01pct",
                                    "balanced_acc_class_thresholds",
                                )
                            },
                        }
                    )
            if exp.audit_samples(g.group_id, seed).exists():
                table = pd.read_parquet(exp.audit_samples(g.group_id, seed))
                table.insert(0, "seed", seed)
                table.insert(0, "group_id", g.group_id)
                table.insert(0, "experiment", spec.name)
                samples.append(table)
    return pd.DataFrame(rows), (pd.concat(samples, ignore_index=True) if samples else pd.DataFrame())


def curves_frames(spec: ExperimentSpec, exp: ExperimentDir) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(roc, membins, lowfpr): the ROC points, memorization-bin table and pooled low-FPR TPRs of every
    audited (group, seed)."""
    labels = {g.group_id: g.label for g in spec.groups()}
    roc, bins, low = [], [], []
    for g in spec.groups():
        for seed in spec.seeds:
            result = read_json(exp.audit_result(g.group_id, seed))
            if result is None:
                continue
            key = {"experiment": spec.name, "group_id": g.group_id, "group_label": labels[g.group_id], "seed": seed}
            for attack, res in result["attacks"].items():
                if "roc" in res:
                    roc += [
                        {**key, "attack": attack, "fpr": f, "tpr": t}
                        for f, t in zip(res["roc"]["fpr"], res["roc"]["tpr"])
                    ]
                low += [{**key, "attack": attack, "level": level, **p} for level, p in res.get("pooled", {}).items()]
            bins += [
                {**key, "source": result.get("memorization_source"), **row}
                for row in result.get("memorization_bins", [])
            ]
    return pd.DataFrame(roc), pd.DataFrame(bins), pd.DataFrame(low)


def collect(spec: ExperimentSpec, exp: ExperimentDir) -> list[Path]:
    """Write the Parquet files of the experiment; returns their paths."""
    runs = runs_frame(spec, exp)
    audits, samples = audits_frame(spec, exp)
    roc, bins, low = curves_frames(spec, exp)
    return [
        write_parquet(exp.table(RUNS), runs),
        write_parquet(exp.table(AUDITS), audits),
        write_parquet(exp.table(SAMPLES), samples),
        write_parquet(exp.table(ROC), roc),
        write_parquet(exp.table(MEMBINS), bins),
        write_parquet(exp.table(LOWFPR), low),
    ]


def choose_attack(audits: pd.DataFrame) -> tuple[str, str]:
    """The attack whose leakage headlines the outputs, and why (one phrase): RMIA (online) where it
    ran and targets have fewer than FEW_SHADOWS reference models, else LiRA (online, fixed
    variance), else the first fallback that ran."""
    if audits.empty:
        return HEADLINE_ATTACK, "no audit ran"
    have = set(audits["attack"])
    shadows = int(audits["n_shadow"].max()) if "n_shadow" in audits else FEW_SHADOWS
    if shadows < FEW_SHADOWS and FEW_SHADOWS_ATTACK in have:
        return FEW_SHADOWS_ATTACK, (
            f"{shadows} reference models per target (< {FEW_SHADOWS}): RMIA keeps its power with few reference "
            "models, LiRA's online test does not"
        )
    for name in (HEADLINE_ATTACK, *FALLBACK_ATTACKS):
        if name in have:
            return (
                name,
                f"{shadows} reference models per target" if name == HEADLINE_ATTACK else "the LiRA variant that ran",
            )
    return sorted(have)[0], "the first attack that ran"


def group_table(exp: ExperimentDir, attack: str | None = None) -> str:
    """Per group: natural and robust accuracy and the attack's ROC AUC, each averaged within a seed
    (over the models / audited targets) and then across seeds, with the 95% t interval across seeds
    (n = seeds; none with one seed)."""
    runs = pd.read_parquet(exp.table(RUNS))
    audits = pd.read_parquet(exp.table(AUDITS))
    if runs.empty:
        return "no finished runs"
    done = runs[runs["status"] == "done"]
    failed = runs[runs["status"] == "failed"].groupby("group_id").size()
    chosen = attack or choose_attack(audits)[0]
    if not audits.empty and chosen not in set(audits["attack"]):
        chosen = sorted(set(audits["attack"]))[0]
    mine = audits[audits["attack"] == chosen] if not audits.empty else audits
    w = 22
    lines = [f"{'group':<40} {'seeds':>5} {'natural':>{w}} {'robust':>{w}} {'AUC (' + chosen + ')':>{w + 8}}"]
    n_max = 0
    for (gid, label), g in done.groupby(["group_id", "group_label"], sort=False):
        cells = []
        for frame, metric in (
            (g, NATURAL_ACC),
            (g, ROBUST_ACC),
            (mine[mine["group_id"] == gid] if len(mine) else mine, "auc"),
        ):
            ci = seed_level(frame, metric) if len(frame) else {"mean": math.nan, "lo": math.nan, "hi": math.nan}
            cells.append(fmt_ci(ci["mean"], ci["lo"], ci["hi"], digits=4))
        n = int(g["seed"].nunique())
        n_max = max(n_max, n)
        fail = f"  {int(failed[gid])} failed" if gid in failed.index else ""
        lines.append(f"{label[:40]:<40} {n:>5} {cells[0]:>{w}} {cells[1]:>{w}} {cells[2]:>{w + 8}}{fail}")
    lines += [f"{label[:40]:<40} FAILED: {what}" for label, what in failed_groups(runs)]
    lines.append(
        "mean over the models (accuracy) or audited targets (AUC) of each seed, then across seeds; "
        + ("± = 95% t interval across seeds." if n_max >= 2 else "one seed: one training draw, no interval.")
    )
    lines += _paired_lines(exp, chosen)
    return "\n".join(lines)


def _paired_lines(exp: ExperimentDir, attack: str) -> list[str]:
    """Each group against its undefended baseline, paired per (seed, model) / (seed, target), with the
    95% t interval across seeds (orchestrator.summarize)."""
    from orchestrator.report import delta_text
    from orchestrator.summarize import load_tables, summarize_groups

    try:
        tables = load_tables(exp.root)
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


def failed_groups(runs: pd.DataFrame) -> list[tuple[str, str]]:
    """(group label, what failed) for every group none of whose models finished: such a group has no
    numbers, so every output names it here rather than leaving it out."""
    out = []
    if runs.empty:
        return out
    for (_, label), g in runs.groupby(["group_id", "group_label"], sort=False):
        if (g["status"] == "done").any():
            continue
        errors = g["error"].dropna()
        last = str(errors.iloc[-1]) if len(errors) else "no error recorded"
        out.append((label, f"all {len(g)} models failed (last error: {last[:200]})"))
    return out


# HParams metric tags shared by the per-trial entries (orchestrator.callbacks) and the per-group ones.
HPARAM_METRICS = {NATURAL_ACC: "hparam/natural_acc", ROBUST_ACC: "hparam/robust_acc"}


def group_hparams(label: str, run: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """HParams columns of a group (and of each of its trials, which add seed and model): its label,
    method, dataset, DeMem lambda and threshold, and its grid values under their shorthand names."""
    out = {
        "group": label,
        "method": run["method"]["name"],
        "dataset": run["data"]["dataset"],
        "lambda": float(run["demem"]["lambda"]),
        "threshold": float(run["demem"]["risk_threshold"]),
        **{short_name(k): v for k, v in params.items()},
    }
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in out.items()}


def write_hparams(spec: ExperimentSpec, exp: ExperimentDir, attack: str | None = None) -> Path:
    """One TensorBoard HParams entry per group: its grid values against its mean natural and robust
    accuracy and the headline attack's AUC / TPR@0.1%FPR, so the HParams tab compares groups side by
    side, with the same columns as the per-trial entries under tune/."""
    from torch.utils.tensorboard import SummaryWriter

    runs = pd.read_parquet(exp.table(RUNS))
    audits = pd.read_parquet(exp.table(AUDITS))
    root = exp.tensorboard_groups
    attack = attack or choose_attack(audits)[0]
    for g in spec.groups():
        done = runs[(runs["group_id"] == g.group_id) & (runs["status"] == "done")] if not runs.empty else runs
        if done.empty:
            continue
        metrics = {
            HPARAM_METRICS[NATURAL_ACC]: float(done[NATURAL_ACC].mean()),
            HPARAM_METRICS[ROBUST_ACC]: float(done[ROBUST_ACC].mean()),
        }
        if not audits.empty:
            mine = audits[(audits["group_id"] == g.group_id) & (audits["attack"] == attack)]
            if not mine.empty:
                metrics["hparam/leakage_auc"] = float(mine["auc"].mean())
                metrics["hparam/leakage_tpr_at_0_1pct"] = float(mine["tpr_at_0_1pct"].mean())
        with SummaryWriter(log_dir=str(root / g.group_id)) as w:
            w.add_hparams(group_hparams(g.label, g.run, g.params), metrics, run_name=".")
    return root
