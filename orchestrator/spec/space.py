"""The `search` section: a multi-objective search instead of a grid (see orchestrator.search).

search:
  algorithm: optuna
  num_samples: 20               # sampled configs; each trains ONE model
  objectives: [{robust_acc: max}, {mia_tpr_at_1pct: min}]      # metric: max | min, from METRICS
  space:                        # key path -> exactly one of uniform / loguniform / choice
    demem.lambda: {uniform: [0, 1]}
    train.lr: {loguniform: [0.01, 0.2]}
    method: {choice: [pgd_at, trades]}
  scheduler: asha               # or null
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from demem.checks import is_int, is_number
from demem.config import describe, scalar_kinds
from orchestrator.columns import SEARCH_METRICS as METRICS
from orchestrator.fmt import fmt_value
from orchestrator.spec.grid import claim_path
from orchestrator.spec.keys import resolve_run, run_hint
from orchestrator.spec.problems import unknown_keys

MODES = ("max", "min")
ALGORITHMS = ("optuna",)
SCHEDULERS = ("asha",)
DISTRIBUTIONS = ("uniform", "loguniform", "choice")
SEARCH_N_MODELS = 2  # a search trial trains model 0 of a 2-model split: members are half the pool


@dataclass(frozen=True)
class Objective:
    """One search objective: a metric of METRICS and "max" or "min"."""

    metric: str
    mode: str


@dataclass(frozen=True)
class SearchSpec:
    """`search`, checked. `space`: expanded key path -> {"uniform" | "loguniform" | "choice": [...]}."""

    num_samples: int
    objectives: tuple[Objective, ...]
    space: dict[str, dict[str, list]] = field(default_factory=dict)
    algorithm: str = "optuna"
    scheduler: str | None = None

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objectives]

    def max_epochs(self, base: dict) -> int:
        """The most epochs any sampled configuration trains (ASHA's max_t)."""
        choices = self.space.get("train.epochs", {}).get("choice")
        if choices:
            return max(int(c) for c in choices)
        return int(resolve_run(base, {}, SEARCH_N_MODELS)["train"]["epochs"])


def check_search(
    search: Any, has_grid: bool, base: dict, n_models: int, base_reported: bool, problems: list[str]
) -> SearchSpec | None:
    if search is None:
        return None
    if not isinstance(search, dict):
        problems.append("search: must be a mapping or null")
        return None
    if has_grid:
        problems.append("search: cannot be combined with grid; give one of them")
    unknown_keys("search", search, tuple(sorted(SearchSpec.__dataclass_fields__)), problems)

    algorithm = search.get("algorithm", "optuna")
    if algorithm not in ALGORITHMS:
        problems.append(f"search.algorithm: must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    num_samples = search.get("num_samples")
    if not (is_int(num_samples) and num_samples >= 1):
        problems.append("search.num_samples: must be an integer >= 1")
    objectives = check_objectives(search.get("objectives"), problems)
    scheduler = search.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        problems.append(f"search.scheduler: must be {' or '.join(SCHEDULERS)} or null, got {scheduler!r}")
    out = SearchSpec(algorithm=algorithm, num_samples=num_samples, objectives=objectives, scheduler=scheduler)

    space = search.get("space")
    if not (isinstance(space, dict) and space):
        problems.append("search.space: must be a non-empty mapping of key paths to distributions")
        return out
    given_as: dict[str, str] = {}
    for key, dist in space.items():
        where = f"search.space.{key}"
        path = claim_path(
            "search.space", key, given_as, problems, seed_problem="seeds are not searched; list them in seeds"
        )
        if path is None:
            continue
        values = check_distribution(where, path, dist, problems)
        if values is None:
            continue
        out.space[path] = {dist_kind: list(args) for dist_kind, args in dist.items()}
        if base_reported:
            continue  # the base is already reported broken; its errors would repeat here
        for value in values:
            try:
                resolve_run(base, {path: value}, n_models)
            except ValueError as e:
                problems.append(f"{where}: {fmt_value(value)}: {e}")
    return out


def check_objectives(objectives: Any, problems: list[str]) -> tuple[Objective, ...]:
    out: list[Objective] = []
    example = "[{robust_acc: max}, {mia_tpr_at_1pct: min}]"
    if not (isinstance(objectives, list) and objectives):
        problems.append(f"search.objectives: must be a non-empty list like {example}")
        return ()
    for i, item in enumerate(objectives):
        where = f"search.objectives[{i}]"
        if not (isinstance(item, dict) and len(item) == 1):
            problems.append(f"{where}: must be one mapping metric: max | min, like {{robust_acc: max}}")
            continue
        ((metric, mode),) = item.items()
        if metric not in METRICS:
            problems.append(f"{where}: unknown metric {metric!r}; known: {', '.join(METRICS)}")
        elif mode not in MODES:
            problems.append(f"{where}.{metric}: must be max or min, got {mode!r}")
        elif any(o.metric == metric for o in out):
            problems.append(f"search.objectives: {metric} is listed twice")
        else:
            out.append(Objective(metric=metric, mode=mode))
    return tuple(out)


def check_distribution(where: str, path: str, dist: Any, problems: list[str]) -> list | None:
    """Check one search dimension; return the values to test against the run config, or None."""
    if not (isinstance(dist, dict) and len(dist) == 1 and next(iter(dist)) in DISTRIBUTIONS):
        problems.append(f"{where}: must have exactly one of {', '.join(DISTRIBUTIONS)}")
        return None
    ((kind, args),) = dist.items()
    if kind == "choice":
        if not (isinstance(args, list) and args):
            problems.append(f"{where}.choice: must be a non-empty list")
            return None
        return args
    low_ok = "0 < low < high" if kind == "loguniform" else "low < high"
    if not (
        isinstance(args, list)
        and len(args) == 2
        and all(is_number(a, finite=True) for a in args)
        and args[0] < args[1]
        and (kind == "uniform" or args[0] > 0)
    ):
        problems.append(f"{where}.{kind}: must be [low, high] with {low_ok}")
        return None
    kinds = scalar_kinds(run_hint(path)[0]) or ()
    if float not in kinds:
        problems.append(
            f"{where}: {kind} samples real numbers, but {path} takes "
            f"{' or '.join(describe(k) for k in kinds) or 'other values'}; use choice"
        )
        return None
    return list(args)
