"""The one place that builds a Ray Tune `Tuner` for an experiment.

Tune's saved state (its pickled tuner and searcher) is never restored: a resume builds a new Tuner
over what is left, from the experiment's own plain records (orchestrator.run.resume_experiment), so
resuming a results directory someone else could write runs none of their code.

Grid: one trial per model (`spec.trials()`), each running `train` (orchestrator.trainable.train_model
by default) on its `GridTrial` (orchestrator.trials). Search: Optuna samples `search.space` (ASHA
optionally stops trials early), each trial running `search_model` on its `SearchTrial`. Tests pass
their own `train` to wrap the real one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray import tune
from ray.tune.schedulers import ASHAScheduler
from ray.tune.search.optuna import OptunaSearch

from demem.train import RunConfig
from orchestrator.callbacks import ExperimentCallback, ReadableTensorBoard, trial_dirname
from orchestrator.layout import ExperimentDir
from orchestrator.spec import ExperimentSpec, Group, Trial, trial_resources
from orchestrator.spec.space import SEARCH_N_MODELS
from orchestrator.storage import TUNE
from orchestrator.trainable import search_model, train_model
from orchestrator.trials import GRID_KEY, PARAMS_KEY, SETUP_KEY, GridTrial, SearchSetup

TrainFn = Callable[[dict[str, Any]], None]
# Held-out samples scored after each epoch but the last (the last epoch is scored on all of them).
INTERIM_SAMPLES = 256


def _grid_trainable(train: Callable[[GridTrial], None]) -> TrainFn:
    def _trainable(config: dict[str, Any]) -> None:  # the name Tune gives the trainable
        train(GridTrial.from_config(config[GRID_KEY]))

    return _trainable


def _search_trainable(train: TrainFn) -> TrainFn:
    def _search_trainable(config: dict[str, Any]) -> None:
        train(config)

    return _search_trainable


def _trainable(spec: ExperimentSpec, train: TrainFn | None):
    if spec.search is not None:
        fn = _search_trainable(train or search_model)
    else:
        fn = _grid_trainable(train or train_model)
    return tune.with_resources(fn, trial_resources(spec))


def grid_trial(spec: ExperimentSpec, exp: ExperimentDir, trial: Trial, group: Group) -> GridTrial:
    """What a grid trial of `group` gets (see orchestrator.trainable.train_model); its label and grid
    values name its TensorBoard run and HParams columns (orchestrator.callbacks)."""
    return GridTrial(
        experiment=spec.name,
        group_id=trial.group_id,
        run_id=trial.trial_key,
        label=group.label,
        params=group.params,
        seed=trial.seed,
        model_index=trial.model_index,
        run=RunConfig.from_dict(trial.run),
        cpus=spec.resources.cpu,
        artifacts=str(exp.inside(exp.run_dir(trial.group_id, trial.trial_key)).resolve()),
        root=str(exp.root.resolve()),
        remote=exp.remote,
        rel=exp.rel(exp.run_dir(trial.group_id, trial.trial_key)),
        keep_models=spec.audit.keep_models,
    )


def _domain(dist: dict[str, list]):
    ((kind, args),) = dist.items()
    if kind == "uniform":
        return tune.uniform(*args)
    if kind == "loguniform":
        return tune.loguniform(*args)
    return tune.choice(list(args))


def _search_config(
    spec: ExperimentSpec, exp: ExperimentDir, max_concurrent: int | None, samples: int | None, seed_offset: int
):
    s = spec.search
    metrics, modes = s.metrics, s.modes
    single = len(metrics) == 1
    searcher = OptunaSearch(
        metric=metrics[0] if single else metrics, mode=modes[0] if single else modes, seed=spec.seeds[0] + seed_offset
    )
    scheduler = None
    if s.scheduler == "asha":
        epochs = s.max_epochs(spec.base)
        scheduler = ASHAScheduler(
            metric=metrics[0],
            mode=modes[0],
            time_attr="training_iteration",
            max_t=epochs,
            grace_period=max(1, epochs // 4),
            reduction_factor=2,
        )
    setup = SearchSetup(
        base=spec.base,
        seed=spec.seeds[0],
        n_models=SEARCH_N_MODELS,
        cpus=spec.resources.cpu,
        root=str(exp.root.resolve()),
        interim_samples=INTERIM_SAMPLES,
        objectives=tuple(metrics),
    )
    space = {PARAMS_KEY: {path: _domain(dist) for path, dist in s.space.items()}, SETUP_KEY: setup.to_config()}
    config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=s.num_samples if samples is None else samples,
        max_concurrent_trials=max_concurrent or spec.max_concurrent,
        reuse_actors=True,
    )
    return space, config


def build_tuner(
    spec: ExperimentSpec,
    exp: ExperimentDir,
    max_concurrent: int | None = None,
    train: TrainFn | None = None,
    *,
    trials: list[Trial] | None = None,
    search_samples: int | None = None,
    search_seed_offset: int = 0,
) -> tune.Tuner:
    """A new Tuner for one driver session of the experiment (Tune storage: exp.tune/run-<k>).

    Args:
        trials: the grid trials to run (default: all of them; a resume passes those not finished).
        search_samples: how many search trials to run (default: search.num_samples).
        search_seed_offset: added to the sampler's seed, so a resumed search draws new points.
    """
    if spec.search is not None:
        space, config = _search_config(spec, exp, max_concurrent, search_samples, search_seed_offset)
    else:
        chosen = spec.trials() if trials is None else trials
        groups = {g.group_id: g for g in spec.groups()}
        space = {GRID_KEY: tune.grid_search([grid_trial(spec, exp, t, groups[t.group_id]).to_config() for t in chosen])}
        # Reusing worker processes saves the torch import and dataset parse of every trial; trials
        # keep no state between them (each builds its own model, optimizer and generators).
        config = tune.TuneConfig(
            max_concurrent_trials=max_concurrent or spec.max_concurrent,
            reuse_actors=True,
            trial_dirname_creator=trial_dirname,
            trial_name_creator=trial_dirname,
        )
    if exp.store is not None:  # Tune writes its logs to the bucket itself, through the same filesystem
        filesystem, path = exp.store.filesystem()
        storage = {"storage_path": f"{path}/{TUNE}", "storage_filesystem": filesystem}
    else:
        storage = {"storage_path": str(exp.tune.resolve())}
    return tune.Tuner(
        _trainable(spec, train),
        param_space=space,
        tune_config=config,
        run_config=tune.RunConfig(
            name=exp.next_tune_session(),
            **storage,
            failure_config=tune.FailureConfig(max_failures=spec.max_retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            callbacks=[ExperimentCallback(str(exp.root.resolve())), ReadableTensorBoard()],
            verbose=0,
        ),
    )
