"""The driver-side Tune callback. It holds only the experiment directory, so the copy that Tune
pickles with its state and hands back on `Tuner.restore` is still valid: all bookkeeping lives in
the experiment's `orchestrator.progress` object, found (or rebuilt from the experiment's files) per
driver process."""

from __future__ import annotations

from ray import tune

from orchestrator.progress import progress_for


class ExperimentCallback(tune.Callback):
    def __init__(self, root: str) -> None:
        self.root = root

    def on_trial_complete(self, iteration, trials, trial, **info):
        progress_for(self.root).trial_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        progress_for(self.root).trial_error(trial)

    def on_step_end(self, iteration, trials, **info):
        progress_for(self.root).poll()


# The names earlier versions pickled into Tune's state: an experiment they interrupted still resumes.
DriverCallback = SearchCallback = ExperimentCallback
