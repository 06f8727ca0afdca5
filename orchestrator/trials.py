"""What a trial is given: one frozen dataclass per kind of trial, built by `orchestrator.tuner` and
read by `orchestrator.trainable`, `orchestrator.callbacks` and `orchestrator.progress`.

A grid trial's `GridTrial` is the whole of its Tune config (under the key "trial"). A search trial's
config holds the settings Optuna sampled (under "params", a plain dict: Tune fills it) and the
experiment's fixed part (`SearchSetup`, under "setup"). Ray-free.

Tune's config holds each of them as plain data (`to_config`): Tune swaps any other object in a
grid for a placeholder in the driver's copy of `trial.config`, so the callbacks would see the
placeholder, not the trial. `trial_of` turns a Tune config back into the typed trial, on the driver
and in the trial alike; the run config goes dict -> RunConfig once, there.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from demem.train import RunConfig

GRID_KEY, PARAMS_KEY, SETUP_KEY = "trial", "params", "setup"


@dataclass(frozen=True)
class GridTrial:
    """One model of a group.

    Attributes:
        experiment, group_id, run_id: names (the run id is the trial key).
        label, params: the group's label and grid values (its TensorBoard run name and HParams).
        seed, model_index: which draw and which model of the group.
        run: the model's run config, validated when the spec was.
        cpus: torch threads.
        artifacts: the run directory; root: the experiment directory it must stay below (resolved).
        remote, rel: the experiment's URI and the run directory below it (object storage; else None).
        keep_models: keep the trained weights (model.pt) in the run directory (`audit.keep_models`).
    """

    experiment: str
    group_id: str
    run_id: str
    label: str
    params: dict[str, Any]
    seed: int
    model_index: int
    run: RunConfig
    cpus: int
    artifacts: str
    root: str
    remote: str | None = None
    rel: str | None = None
    keep_models: bool = False

    def to_config(self) -> dict[str, Any]:
        """Plain data for Tune's config (the run config as its dict)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)}, "run": self.run.to_dict()}

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> GridTrial:
        return cls(**{**data, "run": RunConfig.from_dict(data["run"])})


@dataclass(frozen=True)
class SearchSetup:
    """The part of every search trial that is not sampled.

    Attributes:
        base: the spec's base run config (a dict: the sampled settings are resolved into it).
        seed, n_models: the trial's seed and the group size its half of the pool comes from.
        cpus: torch threads; root: the experiment directory (resolved).
        interim_samples: held-out samples scored after each epoch but the last.
        objectives: the search's metrics (a failed trial reports them as NaN).
    """

    base: dict[str, Any]
    seed: int
    n_models: int
    cpus: int
    root: str
    interim_samples: int
    objectives: tuple[str, ...]

    def to_config(self) -> dict[str, Any]:
        return {**asdict(self), "objectives": list(self.objectives)}

    @classmethod
    def from_config(cls, data: dict[str, Any]) -> SearchSetup:
        return cls(**{**data, "objectives": tuple(data["objectives"])})


@dataclass(frozen=True)
class SearchTrial:
    """One search trial: its sampled settings {key path: value} and the fixed setup."""

    params: dict[str, Any]
    setup: SearchSetup

    @classmethod
    def of(cls, config: dict[str, Any]) -> SearchTrial:
        """The search trial behind a Tune config {"params": sampled, "setup": SearchSetup.to_config()}."""
        return cls(params=dict(config.get(PARAMS_KEY) or {}), setup=SearchSetup.from_config(config[SETUP_KEY]))


def trial_of(config: dict[str, Any]) -> GridTrial | SearchTrial:
    """The typed trial behind a Tune trial's config."""
    if isinstance(config.get(GRID_KEY), dict):
        return GridTrial.from_config(config[GRID_KEY])
    if isinstance(config.get(SETUP_KEY), dict):
        return SearchTrial.of(config)
    raise TypeError(f"not a demem trial config (keys {sorted(config)})")
