"""Driver-side bookkeeping of a running experiment: which trials finished or failed (trials.json /
search_trials.json), one line per finished trial, and (grid) the audit of each (group, seed) as soon
as its models are done.

There is one `Progress` per experiment and driver process, found with `progress_for(root)`: the Tune
callbacks hold only the experiment directory (Tune pickles them into its own state, which demem
never reads back) and look their progress up here, rebuilt from the experiment's files when this
process has none.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ray

from demem.io import write_json
from orchestrator.audit_task import audit_group
from orchestrator.columns import FAILED, NATURAL_ACC, ROBUST_ACC, SEARCH_METRICS, WHERE_KEYS
from orchestrator.fmt import fmt_value
from orchestrator.layout import ExperimentDir, read_records, trial_records
from orchestrator.spec import ExperimentSpec, load_spec, short_name
from orchestrator.trials import SearchTrial, trial_of

Printer = Callable[[str], None]


def error_text(trial) -> str:
    """The error file Tune wrote for a failed trial, or ''."""
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text()
    return ""


def task_error(e: BaseException) -> str:
    """One line for a failed Ray task: its own exception's message, not Ray's wrapping stack trace."""
    cause = getattr(e, "cause", None)  # ray.exceptions.RayTaskError carries what the task raised
    if isinstance(cause, BaseException):
        e = cause
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0][:500] if lines else type(e).__name__


class GridProgress:
    """Trial states, audits, one line per finished trial of a grid experiment."""

    def __init__(self, spec: ExperimentSpec, exp: ExperimentDir, echo: Printer) -> None:
        self.spec, self.exp, self.echo = spec, exp, echo
        self.trials = {t.trial_key: t for t in spec.trials()}
        self.labels = {g.group_id: g.label for g in spec.groups()}
        self.state: dict[str, dict[str, Any]] = trial_records(spec, exp)
        self.t0 = time.time()
        self.pending: dict[tuple[str, int], Any] = {}
        self.audited: set[tuple[str, int]] = set()
        self.rescan_audits()

    # --- Tune callback hooks -----------------------------------------------------------------------
    def trial_complete(self, trial) -> None:
        run_id, result = trial_of(trial.config).run_id, trial.last_result or {}
        if result.get(FAILED):  # a deterministic failure the trial reported instead of raising
            self.finished(run_id, "failed", error=str(result[FAILED]), deterministic=True)
        else:
            self.finished(run_id, "done", result)

    def trial_error(self, trial) -> None:
        self.finished(trial_of(trial.config).run_id, "failed", error=error_text(trial) or "trial failed")

    # --- bookkeeping -------------------------------------------------------------------------------
    def _keys(self) -> set[tuple[str, int]]:
        return {(t.group_id, t.seed) for t in self.trials.values()}

    def _members(self, key: tuple[str, int]) -> list[str]:
        return [k for k, t in self.trials.items() if (t.group_id, t.seed) == key]

    def finished(
        self,
        run_id: str,
        status: str,
        result: dict[str, Any] | None = None,
        error: str = "",
        deterministic: bool = False,
    ) -> None:
        t = self.trials[run_id]
        self.state[run_id] = {
            "status": status,
            "deterministic": deterministic,
            "error": error[-2000:],
            "group_id": t.group_id,
            "seed": t.seed,
            "model_index": t.model_index,
            "finished_at": time.time(),
            **{k: (result or {}).get(k) for k in WHERE_KEYS},
        }
        self.save()
        done = sum(1 for k, s in self.state.items() if k in self.trials and s["status"] in ("done", "failed"))
        if status == "done" and result:
            what = (
                f"natural {result.get(NATURAL_ACC, float('nan')):.3f}  "
                f"robust {result.get(ROBUST_ACC, float('nan')):.3f}"
            )
        else:
            what = f"FAILED: {error.strip().splitlines()[-1] if error.strip() else 'error'}"
        self.echo(
            f"[{done}/{len(self.trials)} trials, {self._audits_done()}, ETA {self._eta(done)}] "
            f"{self.labels[t.group_id]} seed {t.seed} model {t.model_index}: {what}"
        )
        self.maybe_audit((t.group_id, t.seed))

    def rescan_audits(self) -> None:
        """Count as audited every (group, seed) whose audit.json is there (written by this driver,
        an earlier one, or, on object storage, pulled from the bucket)."""
        self.audited |= {k for k in self._keys() if self.exp.audit_result(*k).exists()}

    def save(self) -> None:
        """trials.json, written atomically (and pushed, on object storage)."""
        write_json(self.exp.trials, self.state)
        if self.exp.store is not None:
            self.exp.store.push(self.exp.trials.name)

    def _audits_done(self) -> str:
        """'3 of 12 (group, seed) audits done': an audit covers one seed of one group."""
        return f"{len(self.audited)} of {len(self._keys())} (group, seed) audits done"

    def _eta(self, done: int) -> str:
        if done == 0:
            return "?"
        left = (time.time() - self.t0) / done * (len(self.trials) - done)
        return f"{int(left // 60)}m{int(left % 60):02d}s"

    def maybe_audit(self, key: tuple[str, int], in_process: bool = False) -> None:
        if key in self.audited or key in self.pending:
            return
        states = [self.state.get(r, {}).get("status") for r in self._members(key)]
        if not all(s in ("done", "failed") for s in states) or "done" not in states:
            return
        partial = "failed" in states
        if in_process:
            try:
                audit_group(str(self.exp.root), key[0], key[1], self.spec.audit, partial, self.exp.remote)
                self.audited.add(key)
            except ValueError as e:
                self.echo(f"audit of {self.labels[key[0]]} seed {key[1]} failed: {e}")
            return
        task = ray.remote(num_cpus=0)(audit_group)  # short numpy work; never waits behind training trials
        self.pending[key] = task.remote(
            str(self.exp.root.resolve()), key[0], key[1], self.spec.audit, partial, self.exp.remote
        )

    def poll(self, wait: bool = False) -> None:
        for key, ref in list(self.pending.items()):
            ready, _ = ray.wait([ref], timeout=None if wait else 0)
            if not ready:
                continue
            del self.pending[key]
            try:
                ray.get(ref)
                self.audited.add(key)
                self.echo(f"audited {self.labels[key[0]]} seed {key[1]} ({self._audits_done()})")
            except Exception as e:  # noqa: BLE001 - report and carry on; finish() retries in-process
                self.echo(f"audit of {self.labels[key[0]]} seed {key[1]} failed: {task_error(e)}")


class SearchProgress:
    """Record of finished search trials (search_trials.json) and one line per trial."""

    def __init__(self, spec: ExperimentSpec, exp: ExperimentDir, echo: Printer) -> None:
        self.spec, self.exp, self.echo = spec, exp, echo
        self.records: dict[str, dict[str, Any]] = read_records(exp.search_trials)
        self.t0 = time.time()
        self.epochs = spec.search.max_epochs(spec.base)

    def trial_complete(self, trial) -> None:
        result, params = trial.last_result or {}, SearchTrial.of(trial.config).params
        if result.get(FAILED):
            self.finished(trial.trial_id, params, result, "failed", error=str(result[FAILED]))
            return
        self.finished(trial.trial_id, params, result, "done")

    def trial_error(self, trial) -> None:
        self.finished(
            trial.trial_id,
            SearchTrial.of(trial.config).params,
            trial.last_result,
            "failed",
            error=error_text(trial) or "trial failed",
        )

    def poll(self, wait: bool = False) -> None:
        """Nothing runs beside a search's trials."""

    def finished(
        self, trial_id: str, params: dict[str, Any], result: dict[str, Any] | None, status: str, error: str = ""
    ) -> None:
        result = dict(result or {})
        record = {
            "status": status,
            "error": error[-2000:],
            "params": params,
            "finished_at": time.time(),
            "epochs_done": int(result.get("epoch", 0) or 0),
            "completed": bool(result.get("final", False)),  # Tune's own "done" is True when stopped
            **{k: (None if status == "failed" else result.get(k)) for k in SEARCH_METRICS},
        }  # every objective a search can name (a failed trial reports them as NaN: none recorded)
        self.records[trial_id] = record
        write_json(self.exp.search_trials, self.records)
        n, total = len(self.records), self.spec.search.num_samples
        what = ", ".join(f"{short_name(p)}={fmt_value(v, digits=4, missing='n/a')}" for p, v in params.items())
        if status == "failed":
            last = error.strip().splitlines()[-1] if error.strip() else "error"
            self.echo(f"[{n}/{total} search trials] {what}: FAILED: {last}")
            return
        scores = "  ".join(f"{m} {fmt_value(result.get(m), digits=4, missing='n/a')}" for m in self.spec.search.metrics)
        stopped = "" if record["completed"] else f"  (stopped early at epoch {record['epochs_done']}/{self.epochs})"
        self.echo(f"[{n}/{total} search trials] {what}: {scores}{stopped}")


Progress = GridProgress | SearchProgress
_PROGRESS: dict[str, Progress] = {}


def start_progress(spec: ExperimentSpec, exp: ExperimentDir, echo: Printer = print) -> Progress:
    """A fresh Progress for this driver's run of the experiment (grid or search, from the spec)."""
    kind = SearchProgress if spec.search is not None else GridProgress
    progress = _PROGRESS[str(exp.root.resolve())] = kind(spec, exp, echo)
    return progress


def progress_for(root: str | Path, echo: Printer = print) -> Progress:
    """The driver's Progress of an experiment, rebuilt from its files when this process has none."""
    key = str(Path(root).resolve())
    if key not in _PROGRESS:
        exp = ExperimentDir(Path(key))
        start_progress(load_spec(exp.spec, check_data=False), exp, echo)
    return _PROGRESS[key]
