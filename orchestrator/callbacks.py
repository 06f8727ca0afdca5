"""The driver-side Tune callbacks.

`ExperimentCallback` holds only the experiment directory: all bookkeeping lives in the experiment's
`orchestrator.progress` object, found (or rebuilt from the experiment's files) per driver process.

`ReadableTensorBoard` is Tune's TensorBoard logger with what a researcher reads: each trial's run is
named by its group, seed and model (the directory name comes from `trial_dirname`), its curves are
the training metrics and final accuracies only (Tune's bookkeeping, `done`, `time_this_iter_s`, ...,
stays out), and its HParams entry has the grid values, seed and model as hyperparameters and the
final natural / robust accuracy as metrics.
"""

from __future__ import annotations

import re
from typing import Any

from ray import tune
from ray.tune.logger import TBXLoggerCallback
from ray.tune.result import TRAINING_ITERATION

from orchestrator.collect import HPARAM_METRICS, group_hparams
from orchestrator.columns import CURVES
from orchestrator.progress import progress_for
from orchestrator.trials import GridTrial, SearchTrial, trial_of


def trial_dirname(trial) -> str:
    """'lambda=0.4,threshold=0.5_s0_m003': the run's name in TensorBoard and its directory under tune/."""
    t = trial_of(trial.config)
    if not isinstance(t, GridTrial):
        return trial.trial_id  # a search trial: Tune's id
    label = re.sub(r"[^A-Za-z0-9_.=,+-]", "_", t.label.replace(" ", ","))[:100]
    return f"{label}_s{t.seed}_m{t.model_index:03d}"


def trial_hparams(trial) -> dict[str, Any]:
    """A grid trial's HParams columns: its group's (`collect.group_hparams`) plus seed and model."""
    t = trial_of(trial.config)
    if isinstance(t, SearchTrial):  # its sampled settings
        return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in t.params.items()}
    run = t.run.to_dict()
    return {**group_hparams(t.label, run, t.params), "seed": t.seed, "model": t.model_index}


class ReadableTensorBoard(TBXLoggerCallback):
    def log_trial_result(self, iteration: int, trial, result: dict) -> None:
        kept = {k: v for k, v in result.items() if k in CURVES}
        kept[TRAINING_ITERATION] = result[TRAINING_ITERATION]
        super().log_trial_result(iteration, trial, kept)

    def _try_log_hparams(self, trial, result: dict) -> None:
        """The trial's HParams entry, with no scalar of its own: TensorBoard reads each metric's value
        from the last scalar with its tag in this run, so the accuracies come from the trial's own
        final-accuracy curves. The metric names are the group entries' too (`collect.HPARAM_METRICS`),
        so one table holds both; a group's leakage stays empty for a trial."""
        from tensorboardX.summary import hparams

        names = dict.fromkeys(HPARAM_METRICS.values())  # hparams() reads only the names
        for summary in hparams(hparam_dict=trial_hparams(trial), metric_dict=names):
            self._trial_writer[trial].file_writer.add_summary(summary)


class ExperimentCallback(tune.Callback):
    def __init__(self, root: str) -> None:
        self.root = root

    def on_trial_complete(self, iteration, trials, trial, **info):
        progress_for(self.root).trial_complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info):
        progress_for(self.root).trial_error(trial)

    def on_step_end(self, iteration, trials, **info):
        progress_for(self.root).poll()
