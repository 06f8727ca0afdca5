"""The driver-side Tune callback. It holds only the experiment directory, so the copy that Tune
pickles with its state and hands back on `Tuner.restore` is still valid: all bookkeeping lives in
`orchestrator.run.Progress`, found (or rebuilt from the experiment's files) per driver process."""

from __future__ import annotations

from pathlib import Path

from ray import tune


class DriverCallback(tune.Callback):
    def __init__(self, root: str) -> None:
        self.root = root

    def _progress(self):
        from orchestrator.run import progress_for

        return progress_for(self.root)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._progress().finished(trial.config["trial"]["run_id"], "done", trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        err = ""
        if trial.error_file and Path(trial.error_file).exists():
            err = Path(trial.error_file).read_text()
        self._progress().finished(trial.config["trial"]["run_id"], "failed", error=err or "trial failed")

    def on_step_end(self, iteration, trials, **info):
        self._progress().poll()
