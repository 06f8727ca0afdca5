"""Collect an experiment's run directories and audits into Parquet files (pyarrow, atomic writes).

    runs.parquet     one row per trained (or failed) model
    audits.parquet   one row per (group, seed, target model, attack)
    samples.parquet  one row per (group, seed, sample_id)
    roc.parquet      one row per (group, seed, attack, ROC point): pooled ROC over the targets, log-spaced FPR
    membins.parquet  one row per (group, seed, memorization bin): held-out accuracy, LiRA TPR at 1% / 0.1% FPR
    lowfpr.parquet   one row per (group, seed, attack, FPR level): TPR pooled over the targets (each at its
                     own FPR), its exact binomial interval within the draw, and whether the level is
                     resolvable with the targets' non-members (`demem.privacy.roc.pooled_low_fpr`)
    epsilon.parquet  one row per (group, seed, attack): the one-run epsilon bound of that audit and its
                     per-fraction guess counts (JSON), which the summary pools over independent seeds

The files are rebuilt from the experiment's directories each time, keyed by run id / group id, so
collecting twice, or after a resume, never duplicates rows. A `schema_version` column lets later code
read older results. `load_tables` reads them back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from demem.artifacts import METRICS as METRICS_FILE
from demem.artifacts import SCHEMA_VERSION
from demem.io import write_parquet
from demem.names import GAP_ATTACK, GAPS, TRAIN_ACCURACIES
from orchestrator.columns import (
    FALLBACK_ATTACKS,
    FEW_SHADOWS,
    FEW_SHADOWS_ATTACK,
    HEADLINE_ATTACK,
    NATURAL_ACC,
    ROBUST_ACC,
    ROBUST_ACC_AA,
    SIGNAL_COSTS,
)
from orchestrator.layout import (
    AUDITS,
    EPSILON,
    LOWFPR,
    MEMBINS,
    ROC,
    RUNS,
    SAMPLES,
    SPEC,
    ExperimentDir,
    read_json,
    trial_records,
)
from orchestrator.spec import ExperimentSpec, load_spec, short_name


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested run config as runs.parquet's columns hold it (dotted keys, lists as JSON)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
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
                **{f"config.{k}": v for k, v in flatten(t.run).items()},
                "defence": metrics.get("defence"),
                NATURAL_ACC: metrics.get(NATURAL_ACC),
                ROBUST_ACC: metrics.get(ROBUST_ACC),
                ROBUST_ACC_AA: metrics.get(ROBUST_ACC_AA),
                **{key: metrics.get(key) for key in (*TRAIN_ACCURACIES, *GAPS, GAP_ATTACK)},
                **{key: metrics.get(key) for key in SIGNAL_COSTS},
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


_TARGET_METRICS = (
    "auc",
    "balanced_acc",
    "tpr_at_1pct",
    "tpr_at_0_1pct",
    "tpr_at_0_01pct",
    "balanced_acc_class_thresholds",
)


def audit_rows(result: dict[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    """audits.parquet rows of one audit.json: one per (target, attack that ran). `key` holds the
    experiment, group_id, group_label and seed the rows belong to (our experiments' and external
    groups' alike: orchestrator.external)."""
    rows = []
    for attack, res in result["attacks"].items():
        if "skipped" in res:
            continue
        for row in res["per_target"]:
            rows.append(
                {
                    "schema_version": SCHEMA_VERSION,
                    **key,
                    "target": row["target"],
                    "attack": attack,
                    "variant": res["variant"],
                    "family": res["family"],
                    "query": res.get("query", "clean"),
                    "threat_model": res.get("threat_model", "scores"),
                    # reference models the attack used: one key for every attack (audits before it
                    # was one wrote LiRA's as n_shadows)
                    "n_shadow": res.get("n_references", res.get("n_shadows")),
                    "partial": result.get("partial", False),
                    **{k: row.get(k) for k in _TARGET_METRICS},
                }
            )
    return rows


def sample_rows(path: Path, key: dict[str, Any]) -> pd.DataFrame:
    """samples.parquet of one audit with the experiment, group_id and seed of `key` in front."""
    table = pd.read_parquet(path)
    for col in ("seed", "group_id", "experiment"):
        table.insert(0, col, key[col])
    return table


def audits_frame(spec: ExperimentSpec, exp: ExperimentDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    labels = {g.group_id: g.label for g in spec.groups()}
    rows, samples = [], []
    for g in spec.groups():
        for seed in spec.seeds:
            result = read_json(exp.audit_result(g.group_id, seed))
            if result is None:
                continue
            key = {"experiment": spec.name, "group_id": g.group_id, "group_label": labels[g.group_id], "seed": seed}
            rows += audit_rows(result, key)
            if exp.audit_samples(g.group_id, seed).exists():
                samples.append(sample_rows(exp.audit_samples(g.group_id, seed), key))
    return pd.DataFrame(rows), (pd.concat(samples, ignore_index=True) if samples else pd.DataFrame())


def curve_rows(result: dict[str, Any], key: dict[str, Any]) -> tuple[list, list, list, list]:
    """(roc, membins, lowfpr, epsilon) rows of one audit.json (see `curves_frames`)."""
    roc, bins, low, eps = [], [], [], []
    pool_seed = (result.get("group") or {}).get("data", {}).get("pool_seed")
    for attack, res in result["attacks"].items():
        if "roc" in res:
            roc += [{**key, "attack": attack, "fpr": f, "tpr": t} for f, t in zip(res["roc"]["fpr"], res["roc"]["tpr"])]
        low += [{**key, "attack": attack, "level": level, **p} for level, p in res.get("pooled", {}).items()]
        if res.get("empirical_epsilon"):
            eps.append({**key, "pool_seed": pool_seed, "attack": attack, **_one_run_row(res["empirical_epsilon"])})
    bins += [{**key, "source": result.get("memorization_source"), **row} for row in result.get("memorization_bins", [])]
    return roc, bins, low, eps


def curves_frames(
    spec: ExperimentSpec, exp: ExperimentDir
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(roc, membins, lowfpr, epsilon): the ROC points, memorization-bin table, pooled low-FPR TPRs
    and one-run epsilon bounds (with their guess counts) of every audited (group, seed)."""
    labels = {g.group_id: g.label for g in spec.groups()}
    frames: tuple[list, list, list, list] = ([], [], [], [])
    for g in spec.groups():
        for seed in spec.seeds:
            result = read_json(exp.audit_result(g.group_id, seed))
            if result is None:
                continue
            key = {"experiment": spec.name, "group_id": g.group_id, "group_label": labels[g.group_id], "seed": seed}
            for acc, rows in zip(frames, curve_rows(result, key)):
                acc += rows
    return tuple(pd.DataFrame(f) for f in frames)  # type: ignore[return-value]


def _one_run_row(e: dict[str, Any]) -> dict[str, Any]:
    """An attack's one-run epsilon record as an epsilon.parquet row (its guess counts as JSON)."""
    row = {k: e[k] for k in ("model", "epsilon", "fraction", "r", "v", "canaries", "beta", "delta", "adjacency")}
    row["counts"] = json.dumps([{k: c[k] for k in ("fraction", "r", "v")} for c in e["counts"]])
    return row


def collect(spec: ExperimentSpec, exp: ExperimentDir) -> list[Path]:
    """Write the Parquet files of the experiment; returns their paths."""
    runs = runs_frame(spec, exp)
    audits, samples = audits_frame(spec, exp)
    roc, bins, low, epsilon = curves_frames(spec, exp)
    return [
        write_parquet(exp.table(RUNS), runs),
        write_parquet(exp.table(AUDITS), audits),
        write_parquet(exp.table(SAMPLES), samples),
        write_parquet(exp.table(ROC), roc),
        write_parquet(exp.table(MEMBINS), bins),
        write_parquet(exp.table(LOWFPR), low),
        write_parquet(exp.table(EPSILON), epsilon),
    ]


@dataclass(frozen=True)
class Tables:
    """The experiment's Parquet files, read back (`load_tables`)."""

    runs: pd.DataFrame
    audits: pd.DataFrame
    roc: pd.DataFrame
    membins: pd.DataFrame
    lowfpr: pd.DataFrame = field(default_factory=pd.DataFrame)
    epsilon: pd.DataFrame = field(default_factory=pd.DataFrame)


def load_tables(root: Path) -> Tables:
    """The experiment's Parquet files; collects them first when an older experiment lacks some."""
    exp = ExperimentDir(Path(root))
    if not exp.table(RUNS).exists() and not exp.spec.exists():
        raise FileNotFoundError(f"{exp.root} is not an experiment directory (no {RUNS}, no {SPEC})")
    if not all(exp.table(f).exists() for f in (RUNS, AUDITS, ROC, MEMBINS, LOWFPR)):
        collect(load_spec(exp.spec, check_data=False), exp)
    read = {f: pd.read_parquet(exp.table(f)) for f in (RUNS, AUDITS, ROC, MEMBINS, LOWFPR)}
    if len(read[AUDITS]) and "query" not in read[AUDITS]:  # collected before query kinds: all clean
        read[AUDITS] = read[AUDITS].assign(query="clean")
    # epsilon.parquet is newer than the others: tables collected before it have no empirical epsilon
    epsilon = pd.read_parquet(exp.table(EPSILON)) if exp.table(EPSILON).exists() else pd.DataFrame()
    return Tables(read[RUNS], read[AUDITS], read[ROC], read[MEMBINS], read[LOWFPR], epsilon)


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


# The HParams table's metrics, {column of runs / audits.parquet: TensorBoard tag}, shared by the
# per-trial entries (orchestrator.callbacks) and the per-group ones (write_hparams). TensorBoard takes
# a metric's value from the last scalar with its tag in the entry's own run. So the accuracies use the
# tags Tune's logger gives each trial's final-accuracy curves (`ray/tune/<key>`): a trial's entry
# needs no scalar of its own, and a group's mean is one more point in those two charts. A group's
# leakage has no curve to borrow: its scalars sort under summary/, beside the summary's figures.
HPARAM_METRICS = {
    NATURAL_ACC: f"ray/tune/{NATURAL_ACC}",
    ROBUST_ACC: f"ray/tune/{ROBUST_ACC}",
    "auc": "summary/leakage_auc",
    "tpr_at_1pct": "summary/leakage_tpr_at_1pct",
    "tpr_at_0_1pct": "summary/leakage_tpr_at_0_1pct",
}


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
    """One TensorBoard HParams entry per group, in tensorboard-groups/<group>: its grid values against
    its mean natural and robust accuracy, the headline attack's AUC, and its TPR at the lowest FPR
    level its targets' non-members resolve (`resolved_level`; none where no level is), so the HParams
    tab compares groups side by side, with the same columns as the per-trial entries under tune/.

    Each entry is a session record and one scalar per metric (`HPARAM_METRICS`), at the group's last
    epoch. It writes no experiment record: TensorBoard takes the table's columns from one such record,
    picked arbitrarily among the runs, so only the trials' (which have the seed and model) write one.
    Earlier entries are replaced, so collecting again never stacks copies."""
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    runs = pd.read_parquet(exp.table(RUNS))
    audits = pd.read_parquet(exp.table(AUDITS))
    low = pd.read_parquet(exp.table(LOWFPR)) if exp.table(LOWFPR).exists() else pd.DataFrame()
    root = exp.tensorboard_groups
    attack = attack or choose_attack(audits)[0]
    for g in spec.groups():
        done = runs[(runs["group_id"] == g.group_id) & (runs["status"] == "done")] if not runs.empty else runs
        if done.empty:
            continue
        values = {NATURAL_ACC: float(done[NATURAL_ACC].mean()), ROBUST_ACC: float(done[ROBUST_ACC].mean())}
        mine = audits[(audits["group_id"] == g.group_id) & (audits["attack"] == attack)] if len(audits) else audits
        if not mine.empty:
            values["auc"] = float(mine["auc"].mean())
            level = resolved_level(low, g.group_id, attack)
            if level is not None:
                values[level] = float(mine[level].mean())
        logdir = root / g.group_id
        for old in logdir.glob("events.out.tfevents.*"):
            old.unlink()
        _, start, end = hparams(
            group_hparams(g.label, g.run, g.params), {HPARAM_METRICS[k]: v for k, v in values.items()}
        )
        step = int(pd.to_numeric(done["epochs_done"], errors="coerce").max()) if "epochs_done" in done else 0
        with SummaryWriter(log_dir=str(logdir)) as w:
            w.file_writer.add_summary(start)
            w.file_writer.add_summary(end)
            for key, value in values.items():
                w.add_scalar(HPARAM_METRICS[key], value, global_step=step)
    return root


def resolved_level(lowfpr: pd.DataFrame, group_id: str, attack: str) -> str | None:
    """The lowest FPR level (0.1%, then 1%) at which the attack's pooled TPR resolves in every audited
    seed of the group (lowfpr.parquet's `resolvable`: each target has at least 1 / level non-members),
    as its audits.parquet column; None where neither does (the report's "below resolution") or the
    audits do not record it. A TPR at an unresolved level reads the TPR at zero false positives: a 0
    there is no measurement."""
    if lowfpr.empty:
        return None
    mine = lowfpr[(lowfpr["group_id"] == group_id) & (lowfpr["attack"] == attack)]
    for key in ("tpr_at_0_1pct", "tpr_at_1pct"):
        rows = mine[mine["level"] == key]
        if len(rows) and bool(rows["resolvable"].all()):
            return key
    return None
