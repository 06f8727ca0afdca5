"""The driver-side Tune callbacks. Each holds only the experiment directory, so the copy that Tune
pickles with its state and hands back on `Tuner.restore` is still valid: all bookkeeping lives in
`orchestrator.run.Progress` (grid) or `orchestrator.search.SearchProgress` (search), found (or
rebuilt from the experiment's files) per driver process."""

from __future__ import annotations

from pathlib import Path

from ray import tune


class _ExperimentCallback(tune.Callback):
    def __init__(self, root: str) -> None:
        self.root = root


class DriverCallback(_ExperimentCallback):
    def _progress(self):
        from orchestrator.run import progress_for

        return progress_for(self.root)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._progress().finished(trial.config["trial"]["run_id"], "done", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        self._progress().finished(trial.config["trial"]["run_id"], "failed", error=_error_text(trial) or "trial failed")

    def on_step_end(self, iteration, trials, **info):
        self._progress().poll()


def _error_text(trial) -> str:
    if trial.error_file and Path(trial.error_file).exists():
        return Path(trial.error_file).read_text()
    return ""


class SearchCallback(_ExperimentCallback):
    def _progress(self):
        from orchestrator.search import search_progress_for

        return search_progress_for(self.root)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._progress().finished(trial.trial_id, trial.config["params"], trial.last_result, "done")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._progress().finished(trial.trial_id, trial.config["params"], trial.last_result, "failed",
                                  error=_error_text(trial) or "trial failed")
