"""Search mode: multi-objective hyperparameter search with Optuna on Ray Tune, then confirmation.

A spec with `search:` instead of `grid:` samples `num_samples` configurations from `search.space`
with Ray Tune's OptunaSearch, optimising every objective at once (e.g. robust_acc up,
mia_tpr_at_1pct down). Each trial trains ONE model on half the pool (model 0 of a 2-model split, the
first seed) and scores its privacy with the loss-threshold attack on its own members vs non-members:
no shadow models, so a trial costs one training run. Every epoch reports every objective (interim
values on a held-out subset), so an ASHA scheduler can stop poor trials early on the first objective.
The Tuner is built in orchestrator.tuner, the per-trial records kept by orchestrator.progress.

The result is `search.parquet`: one row per trial with its sampled settings, final objectives and
Pareto rank. A threshold attack on one model is a screening score, not an audit: `demem confirm
EXPERIMENT_DIR --top K` (orchestrator.confirm) trains full groups (M models each) for the K best
completed points and the base config, and audits them with LiRA like any grid experiment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from demem.io import write_parquet
from demem.pareto import pareto_fronts, pareto_order
from orchestrator.columns import SEARCH_METRICS
from orchestrator.fmt import fmt_value
from orchestrator.layout import ExperimentDir, read_records
from orchestrator.spec import ExperimentSpec, short_name

PARAM = "param."  # column prefix of a sampled setting in search.parquet


def run_search(spec: ExperimentSpec, exp: ExperimentDir, tuner, *, echo=print) -> Path:
    """Run (or continue) the search with `tuner` (orchestrator.tuner); write search.parquet; print the front."""
    tuner.fit()
    path = collect_search(spec, exp)
    echo("")
    echo(search_table(spec, pd.read_parquet(path)))
    echo("")
    echo(f"results: {path}")
    echo(f"TensorBoard: tensorboard --logdir {exp.root}")
    echo(f"next: demem confirm {exp.root} --top 3   (full groups + LiRA for the 3 best points)")
    return path


def search_frame(spec: ExperimentSpec, exp: ExperimentDir) -> pd.DataFrame:
    """One row per finished search trial: status, sampled settings (`param.<path>`), objectives,
    `pareto_front` (0 = non-dominated among completed trials, -1 = not ranked) and `pareto_rank`
    (1 = best: front, then crowding distance)."""
    records = read_records(exp.search_trials)
    rows = []
    for trial_id, r in sorted(records.items(), key=lambda kv: kv[1].get("finished_at", 0)):
        row = {
            "experiment": spec.name,
            "trial_id": trial_id,
            "status": r["status"],
            "completed": r["completed"],
            "epochs_done": r["epochs_done"],
            "error": r.get("error", ""),
        }
        row.update({f"{PARAM}{p}": v for p, v in r["params"].items()})
        for k in SEARCH_METRICS:
            row[k] = np.nan if r.get(k) is None else float(r[k])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    ranked = (df["status"] == "done") & df["completed"]
    values = df.loc[ranked, spec.search.metrics].to_numpy(dtype=float)
    maximize = [mode == "max" for mode in spec.search.modes]
    df["pareto_front"] = -1
    df["pareto_rank"] = np.nan
    if ranked.any():
        idx = np.flatnonzero(ranked.to_numpy())
        front = pareto_fronts(values, maximize)
        df.loc[idx, "pareto_front"] = front
        order = pareto_order(values, maximize)
        rank = np.empty(len(order))
        rank[order] = np.arange(1, len(order) + 1)
        rank[front < 0] = np.nan
        df.loc[idx, "pareto_rank"] = rank
    return df.sort_values(["pareto_rank", "trial_id"], na_position="last").reset_index(drop=True)


def collect_search(spec: ExperimentSpec, exp: ExperimentDir) -> Path:
    return write_parquet(exp.search_results, search_frame(spec, exp))


def search_table(spec: ExperimentSpec, df: pd.DataFrame, top: int = 10) -> str:
    """The best completed trials as a text table (rank, front, settings, objectives)."""
    if df.empty:
        return "no search trial finished"
    params = [c for c in df.columns if c.startswith(PARAM)]
    metrics = spec.search.metrics
    shown = df[df["pareto_rank"].notna()].head(top)
    cols = ["rank", "front"] + [short_name(c[len(PARAM) :]) for c in params] + metrics
    lines = [
        f"search: {len(df)} trials, {int((df['status'] == 'done').sum())} done, "
        f"{int(df['completed'].sum())} ran every epoch, {int((df['status'] == 'failed').sum())} failed; "
        f"best {len(shown)} (front 0 = Pareto-optimal; screening score: loss-threshold attack on one model)"
    ]
    table = [cols]
    for _, r in shown.iterrows():
        table.append(
            [str(int(r["pareto_rank"])), str(int(r["pareto_front"]))]
            + [fmt_value(py_value(r[c]), digits=4, missing="n/a") for c in params]
            + [f"{r[m]:.4f}" for m in metrics]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def py_value(v: Any) -> Any:
    """A pandas / numpy scalar as the plain Python value a spec holds."""
    return v.item() if isinstance(v, np.generic) else v
