"""Search mode: multi-objective hyperparameter search with Optuna on Ray Tune, then confirmation.

A spec with `search:` instead of `grid:` samples `num_samples` configurations from `search.space`
with Ray Tune's OptunaSearch, optimising every objective at once (e.g. robust_acc up,
mia_tpr_at_1pct down). Each trial trains ONE model on half the pool (model 0 of a 2-model split, the
first seed) and scores its privacy with the loss-threshold attack on its own members vs non-members:
no shadow models, so a trial costs one training run. Every epoch reports every objective (interim
values on a held-out subset), so an ASHA scheduler can stop poor trials early on the first objective.

The result is `search.parquet`: one row per trial with its sampled settings, final objectives and
Pareto rank. A threshold attack on one model is a screening score, not an audit: `demem confirm
EXPERIMENT_DIR --top K` trains full groups (M models each) for the K best completed points and the
base config, and audits them with LiRA like any grid experiment.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from demem.io import write_json, write_parquet, write_text
from demem.pareto import pareto_fronts, pareto_order
from orchestrator.layout import ExperimentDir, read_json
from orchestrator.spec import METRICS, ExperimentSpec, load_spec, resolve_run, short_name, trial_resources

SEARCH_TRIALS = "search_trials.json"
SEARCH_RESULTS = "search.parquet"
# Held-out samples scored after each epoch but the last (the last epoch is scored on all of them).
INTERIM_SAMPLES = 256
SEARCH_N_MODELS = 2  # a search trial trains model 0 of a 2-model split: members are half the pool


def _domain(dist: dict[str, list]):
    from ray import tune

    ((kind, args),) = dist.items()
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.choice(list(args))


def max_epochs(spec: ExperimentSpec) -> int:
    """The most epochs any sampled configuration trains (ASHA's max_t)."""
    choices = spec.search["space"].get("train.epochs", {}).get("choice")
    if choices:
        return max(int(c) for c in choices)
    return int(resolve_run(spec.base, {}, SEARCH_N_MODELS)["train"]["epochs"])


def _search_trainable(config: dict[str, Any]) -> None:
    from orchestrator.trainable import search_model

    search_model(config)


def search_tuner(spec: ExperimentSpec, exp: ExperimentDir, max_concurrent: int | None):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from orchestrator.callbacks import SearchCallback

    s = spec.search
    metrics = [o["metric"] for o in s["objectives"]]
    modes = [o["mode"] for o in s["objectives"]]
    single = len(metrics) == 1
    searcher = OptunaSearch(metric=metrics[0] if single else metrics, mode=modes[0] if single else modes,
                            seed=spec.seeds[0])
    scheduler = None
    if s["scheduler"] == "asha":
        epochs = max_epochs(spec)
        scheduler = ASHAScheduler(metric=metrics[0], mode=modes[0], time_attr="training_iteration", max_t=epochs,
                                  grace_period=max(1, epochs // 4), reduction_factor=2)
    fixed = {"base": spec.base, "seed": spec.seeds[0], "n_models": SEARCH_N_MODELS, "cpus": spec.resources["cpu"],
             "root": str(exp.root.resolve()), "interim_samples": INTERIM_SAMPLES}
    space = {"params": {path: _domain(dist) for path, dist in s["space"].items()}, "fixed": fixed}
    trainable = tune.with_resources(_search_trainable, trial_resources(spec))
    return tune.Tuner(
        trainable,
        param_space=space,
        tune_config=tune.TuneConfig(search_alg=searcher, scheduler=scheduler, num_samples=s["num_samples"],
                                    max_concurrent_trials=max_concurrent or spec.max_concurrent, reuse_actors=True),
        run_config=tune.RunConfig(
            name="tune", storage_path=str(exp.root.resolve()),
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[SearchCallback(str(exp.root.resolve()))], verbose=0,
        ),
    )


class SearchProgress:
    """Driver-side record of finished search trials (search_trials.json) and one line per trial."""

    def __init__(self, spec: ExperimentSpec, exp: ExperimentDir, echo=print) -> None:
        self.spec, self.exp, self.echo = spec, exp, echo
        self.records: dict[str, dict[str, Any]] = read_json(exp.root / SEARCH_TRIALS, {}) or {}
        self.t0 = time.time()
        self.epochs = max_epochs(spec)

    def finished(self, trial_id: str, params: dict[str, Any], result: dict[str, Any] | None, status: str,
                 error: str = "") -> None:
        result = dict(result or {})
        record = {"status": status, "error": error[-2000:], "params": params, "finished_at": time.time(),
                  "epochs_done": int(result.get("epoch", 0) or 0),
                  "completed": bool(result.get("final", False)),  # Tune's own "done" is True when stopped
                  **{k: result.get(k) for k in METRICS}}  # every objective a search can name
        self.records[trial_id] = record
        write_json(self.exp.root / SEARCH_TRIALS, self.records)
        n, total = len(self.records), self.spec.search["num_samples"]
        what = ", ".join(f"{short_name(p)}={_fmt(v)}" for p, v in params.items())
        if status == "failed":
            last = error.strip().splitlines()[-1] if error.strip() else "error"
            self.echo(f"[{n}/{total} search trials] {what}: FAILED: {last}")
            return
        scores = "  ".join(f"{o['metric']} {_fmt(result.get(o['metric']))}" for o in self.spec.search["objectives"])
        stopped = "" if record["completed"] else f"  (stopped early at epoch {record['epochs_done']}/{self.epochs})"
        self.echo(f"[{n}/{total} search trials] {what}: {scores}{stopped}")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return "n/a" if v is None else str(v)


_PROGRESS: dict[str, SearchProgress] = {}


def search_progress_for(root: str | Path, echo=print) -> SearchProgress:
    key = str(Path(root).resolve())
    if key not in _PROGRESS:
        exp = ExperimentDir(Path(key))
        _PROGRESS[key] = SearchProgress(load_spec(exp.spec, check_data=False), exp, echo)
    return _PROGRESS[key]


def run_search(spec: ExperimentSpec, exp: ExperimentDir, *, max_concurrent: int | None = None,
               echo=print, restore: bool = False) -> Path:
    """Run (or, with restore=True, continue) the search; write search.parquet; print the front."""
    from ray import tune

    _PROGRESS[str(exp.root.resolve())] = SearchProgress(spec, exp, echo)
    if restore and tune.Tuner.can_restore(str(exp.tune.resolve())):
        tuner = tune.Tuner.restore(str(exp.tune.resolve()),
                                   trainable=tune.with_resources(_search_trainable, trial_resources(spec)),
                                   resume_unfinished=True, resume_errored=True)
    else:
        tuner = search_tuner(spec, exp, max_concurrent)
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
    records = read_json(exp.root / SEARCH_TRIALS, {}) or {}
    rows = []
    for trial_id, r in sorted(records.items(), key=lambda kv: kv[1].get("finished_at", 0)):
        row = {"experiment": spec.name, "trial_id": trial_id, "status": r["status"], "completed": r["completed"],
               "epochs_done": r["epochs_done"], "error": r.get("error", "")}
        row.update({f"param.{p}": v for p, v in r["params"].items()})
        for k in METRICS:
            row[k] = np.nan if r.get(k) is None else float(r[k])
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    objectives = spec.search["objectives"]
    ranked = (df["status"] == "done") & df["completed"]
    values = df.loc[ranked, [o["metric"] for o in objectives]].to_numpy(dtype=float)
    maximize = [o["mode"] == "max" for o in objectives]
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
    return write_parquet(exp.root / SEARCH_RESULTS, search_frame(spec, exp))


def search_table(spec: ExperimentSpec, df: pd.DataFrame, top: int = 10) -> str:
    """The best completed trials as a text table (rank, front, settings, objectives)."""
    if df.empty:
        return "no search trial finished"
    params = [c for c in df.columns if c.startswith("param.")]
    metrics = [o["metric"] for o in spec.search["objectives"]]
    shown = df[df["pareto_rank"].notna()].head(top)
    cols = ["rank", "front"] + [short_name(c[len("param."):]) for c in params] + metrics
    lines = [f"search: {len(df)} trials, {int((df['status'] == 'done').sum())} done, "
             f"{int(df['completed'].sum())} ran every epoch, {int((df['status'] == 'failed').sum())} failed; "
             f"best {len(shown)} (front 0 = Pareto-optimal; screening score: loss-threshold attack on one model)"]
    table = [cols]
    for _, r in shown.iterrows():
        table.append([str(int(r["pareto_rank"])), str(int(r["pareto_front"]))]
                     + [_fmt(_py(r[c])) for c in params] + [f"{r[m]:.4f}" for m in metrics])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines += ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in table]
    return "\n".join(lines)


def _py(v: Any) -> Any:
    """A pandas / numpy scalar as the plain Python value a spec holds."""
    return v.item() if isinstance(v, np.generic) else v


def confirm_spec(exp: ExperimentDir, top: int, *, name: str | None = None, baseline: bool = True) -> dict:
    """The grid-like spec that confirms the `top` best completed search points (plus the base
    config as the reference group, unless baseline=False) with full groups and the spec's audit."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    spec = load_spec(exp.spec, check_data=False)
    if spec.search is None:
        raise ValueError(f"{exp.root} is a grid experiment, not a search; there is nothing to confirm")
    path = exp.root / SEARCH_RESULTS
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; finish the search first (demem resume {exp.root})")
    df = pd.read_parquet(path)
    best = df[df["pareto_rank"].notna()].sort_values("pareto_rank").head(top)
    if best.empty:
        raise ValueError(f"{exp.root}: no search trial ran every epoch; nothing to confirm")
    params = [c for c in df.columns if c.startswith("param.")]
    points = [{c[len("param."):]: _py(r[c]) for c in params} for _, r in best.iterrows()]
    if baseline and {} not in points:
        points.insert(0, {})
    raw = copy.deepcopy(spec.raw)
    raw.pop("search", None)
    raw.pop("grid", None)
    raw["points"] = points
    raw["name"] = name or f"{spec.name}-confirm"
    return raw


def confirm(root: str | Path, top: int, *, name: str | None = None, baseline: bool = True,
            address: str | None = None, max_concurrent: int | None = None, echo=print) -> ExperimentDir:
    """Run the confirmation experiment next to the search (results/<name>-confirm by default)."""
    from orchestrator.run import run_experiment

    exp = ExperimentDir(Path(root))
    raw = confirm_spec(exp, top, name=name, baseline=baseline)
    spec_path = exp.root / "confirm.yaml"
    write_text(spec_path, yaml.safe_dump(raw, sort_keys=False))
    echo(f"confirming {len(raw['points'])} points of {exp.root} (spec: {spec_path})")
    return run_experiment(spec_path, name=raw["name"], storage=exp.root.parent, address=address,
                          max_concurrent=max_concurrent, echo=echo)
