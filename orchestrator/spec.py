"""Experiment specs: a YAML file -> a validated `ExperimentSpec` -> groups -> one trial per model.

A spec names one experiment: a base run config, a grid of variations (or a search space), the
seeds, how many models each group trains for the privacy audit, and what each trial may use.

    spec = load_spec("search_spaces/quickstart.yaml")    # SpecError listing EVERY problem, or a spec
    print(spec.plan())
    for trial in spec.trials():                          # group x seed x model_index, fixed order
        RunConfig.from_dict(trial.run)                    # always valid: validation resolved them all

The format (every key but `name` and `audit.models` may be left out):

    name: quickstart                 # experiment name: [A-Za-z0-9_.-]+ (results/<name>/...)
    base:                            # one run config: the keys of demem.train.RunConfig.from_dict,
      data: {dataset: fashion-mnist, pool_size: 1000, pool_seed: 0}   # but NOT n_models, model_index
      train: {arch: small-cnn, epochs: 3}                             # or seed (the spec sets those)
      method: {name: pgd_at}
      demem: {lambda: 0.0, risk_threshold: 0.0}
    grid:                            # dotted key paths into base -> non-empty list of values;
      method: [pgd_at, trades]       # the groups are the cartesian product (last key varies fastest)
      demem.lambda: [0.0, 0.4]
      demem.risk_threshold: [0.0, 0.5]
    seeds: [0]                       # default [0]; `seed: [...]` in grid means the same
    audit:
      models: 8                      # M models per group (RunConfig.n_models); a trial trains one of them
      targets: null                  # attack the first `targets` models as targets; null = every model
      attacks: [lira, loss]          # names for demem.privacy.audit.parse_attacks; default: all
      queries: null                  # LiRA queries to use (<= eval.queries); null = all recorded
    resources: {cpu: 1, gpu: 0}      # per trial; gpu may be a fraction (0.25) to pack small models
    max_concurrent: null             # at most this many trials at once; null = as many as fit
    failure: {max_retries: 1}        # retries of a failed trial (default 1)
    points: null                     # explicit groups instead of a grid: [{lambda: 0.4}, {}] ({} = base)
    search: null                     # a search instead of a grid (never both):
    #  algorithm: optuna
    #  num_samples: 20               # sampled configs; each trains ONE model (see orchestrator.search)
    #  objectives: [{robust_acc: max}, {mia_tpr_at_1pct: min}]      # metric: max | min, from METRICS
    #  space:                        # key path -> exactly one of uniform / loguniform / choice
    #    demem.lambda: {uniform: [0, 1]}
    #    train.lr: {loguniform: [0.01, 0.2]}
    #    method: {choice: [pgd_at, trades]}
    #  scheduler: asha               # or null

Top-level keys starting with "_" are reserved for tools and tests (e.g. failure injection): they are
kept in `ExperimentSpec.raw` and not validated.

Key paths are the keys of RunConfig.to_dict() joined with dots ("demem.lambda", "eval.attack.steps").
Shorthands: method -> method.name, dataset -> data.dataset, arch -> train.arch, epochs -> train.epochs,
lambda -> demem.lambda, threshold -> demem.risk_threshold. Paths are stored expanded; labels use the
shorthand names.

A *group* is one grid point resolved through `RunConfig.from_dict` (DESIGN.md): its id is a hash of
the resolved config minus what only names a model (seed, model_index) or where the data lie
(data.root, data.download), plus M. The same config always gets the same id, so results and caches
are keyed by content, never by a label. Trials of different seeds share their group's id; a group's
audit takes the M models of one seed.

This module never imports Ray: `demem validate` runs it, and it has to be fast.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from demem import data as datalib
from demem.config import dataclass_in, external_fields
from demem.privacy.audit import LIRA_ATTACKS, MIA_ATTACKS, parse_attacks
from demem.train import RunConfig

__all__ = [
    "ALGORITHMS",
    "METRICS",
    "SHORTHANDS",
    "short_name",
    "trial_resources",
    "ExperimentSpec",
    "Group",
    "SpecError",
    "Trial",
    "group_id",
    "load_spec",
    "resolve_run",
    "validate",
]

TOP_KEYS = ("audit", "base", "failure", "grid", "max_concurrent", "name", "points", "resources", "search", "seeds")
AUDIT_KEYS = ("attacks", "models", "queries", "targets")
RESOURCE_KEYS = ("cpu", "gpu")
FAILURE_KEYS = ("max_retries",)
SEARCH_KEYS = ("algorithm", "num_samples", "objectives", "scheduler", "space")

SHORTHANDS = {
    "method": "method.name",
    "dataset": "data.dataset",
    "arch": "train.arch",
    "epochs": "train.epochs",
    "lambda": "demem.lambda",
    "threshold": "demem.risk_threshold",
}
_SHORT_NAME = {path: short for short, path in SHORTHANDS.items()}


def short_name(path: str) -> str:
    """The shorthand of an expanded key path where it has one ("demem.lambda" -> "lambda")."""
    return _SHORT_NAME.get(path, path)

METRICS = ("natural_acc", "robust_acc", "mia_auc", "mia_tpr_at_1pct", "mia_tpr_at_0_1pct")
MODES = ("max", "min")
ALGORITHMS = ("optuna",)
SCHEDULERS = ("asha",)
DISTRIBUTIONS = ("uniform", "loguniform", "choice")

# Set per trial by the spec, never by the user's run config.
_PER_TRIAL = {
    "n_models": "set by audit.models",
    "model_index": "every trial sets its own",
    "seed": "set by seeds",
}
# Where the data lie, not what they are: left out of the group id.
_LOCATION_KEYS = ("root", "download")

_NAME_RE = re.compile(r"[A-Za-z0-9_.-]+")

# Models a group needs for the audit, from the balanced keep mask (each sample in floor(M/2) or more
# models and out of as many): run_audit wants every sample in >= 2 and out of >= 2 models (M >= 4);
# LiRA attacks target t with the other M - 1 models, so a sample has floor(M/2) - 1 shadows of one
# kind; the fixed-variance variants need 1 (M >= 4), the per-sample-variance ones 2 (M >= 6).
MIN_MODELS_AUDIT = 4
MIN_MODELS_LIRA = 4
MIN_MODELS_LIRA_PER_SAMPLE_VARIANCE = 6


class SpecError(ValueError):
    """A spec that cannot run. `problems` holds every problem found, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Group:
    """One point of the grid: M models trained the same way on balanced halves of one pool.

    Attributes:
        group_id: 12 hex chars of the sha256 of the resolved config (see `group_id`).
        label: "method=trades lambda=0.4 threshold=0.5" (grid keys only, shorthand names); "base"
            without a grid.
        params: expanded grid key path -> value of this point.
        run: the resolved RunConfig dict with n_models = M, seed = 0 and model_index = 0.
        aliases: labels of other grid points that resolve to this same run (e.g. lambda=0 with
            another threshold: the undefended method either way); they are trained once.
    """

    group_id: str
    label: str
    params: dict
    run: dict
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Trial:
    """One model to train. `trial_key` is also its run id."""

    trial_key: str
    group_id: str
    seed: int
    model_index: int
    run: dict  # the full RunConfig dict of this model


@dataclass(frozen=True)
class ExperimentSpec:
    """A validated spec; build it with `load_spec` or `validate`.

    Attributes:
        name: the experiment name.
        base: the base run config as given (without n_models / model_index / seed).
        grid: expanded key path -> list of values (the `seed` grid key is moved to `seeds`).
        seeds: training seeds; every group trains its M models once per seed.
        audit: {"models": M, "targets": int | None, "attacks": tuple of expanded attack names,
            "queries": int | None}.
        resources: per trial, {"cpu": float, "gpu": float}.
        max_concurrent: None = as many trials as the cluster fits.
        max_retries: retries of a failed trial.
        points: None, or explicit groups instead of a grid: a list of {expanded key path: value}.
        search: None, or {"algorithm", "num_samples", "objectives": [{"metric", "mode"}, ...],
            "space": {expanded key path: {"uniform" | "loguniform" | "choice": [...]}},
            "scheduler": "asha" | None}. With a search, `groups()` / `trials()` describe the base
            point only.
        raw: the spec as loaded.
    """

    name: str
    base: dict
    grid: dict[str, list]
    seeds: tuple[int, ...]
    audit: dict
    resources: dict
    max_concurrent: int | None
    max_retries: int
    search: dict | None
    raw: dict
    points: list[dict] | None = None

    @functools.cached_property
    def _groups(self) -> tuple[Group, ...]:
        # Expanding resolves every grid point through RunConfig; do it once per spec.
        groups, problems = _expand(self.base, self.grid, self.audit["models"], self.points)
        if problems:  # only possible for a spec built by hand, not through validate()
            raise SpecError(problems)
        return tuple(groups)

    def groups(self) -> list[Group]:
        """The grid points, in grid order (the last grid key varies fastest)."""
        return list(self._groups)

    def trials(self) -> list[Trial]:
        """Every model to train: groups x seeds x model_index 0..M-1, in that order."""
        return list(self._trials)

    @functools.cached_property
    def _trials(self) -> tuple[Trial, ...]:
        out = []
        for group in self.groups():
            for seed in self.seeds:
                for m in range(self.audit["models"]):
                    run = copy.deepcopy(group.run)
                    run["seed"], run["model_index"] = seed, m
                    out.append(Trial(trial_key=f"{group.group_id}-s{seed}-m{m:03d}", group_id=group.group_id,
                                     seed=seed, model_index=m, run=run))
        return tuple(out)

    def plan(self) -> str:
        """A human-readable summary: groups, trials, training epochs, per-trial resources, audit."""
        groups, m, seeds = self.groups(), self.audit["models"], self.seeds
        n_trials = len(groups) * len(seeds) * m
        lines = [f"experiment {self.name}: {_count(len(groups), 'group')} x {_count(len(seeds), 'seed')} "
                 f"x {m} models = {n_trials} trials"]
        width = max(len(g.label) for g in groups)
        lines += [f"  {g.label:<{width}}  {g.group_id}" + (f"  (also {'; '.join(g.aliases)}: the same run)"
                                                             if g.aliases else "") for g in groups]
        epochs = [g.run["train"]["epochs"] for g in groups]
        per_group = len(seeds) * m
        total = sum(epochs) * per_group
        how = (f"{n_trials} trials x {_count(epochs[0], 'epoch')}" if len(set(epochs)) == 1
               else f"{per_group} trials per group x {'/'.join(str(e) for e in epochs)} epochs")
        lines.append(f"training: {total} epochs in all ({how})")
        cpu, gpu = self.resources["cpu"], self.resources["gpu"]
        at_once = "as many as fit" if self.max_concurrent is None else f"at most {self.max_concurrent}"
        lines.append(f"per trial: {_num(cpu)} CPU, {_num(gpu)} GPU; {at_once} at once; "
                     f"max_retries: {self.max_retries}")
        targets = "every model" if self.audit["targets"] is None else f"the first {self.audit['targets']} models"
        queries = "all recorded" if self.audit["queries"] is None else str(self.audit["queries"])
        lines.append(f"audit per group and seed: {m} models, targets: {targets}, queries: {queries}, "
                     f"attacks: {', '.join(self.audit['attacks'])}")
        if self.search is not None:
            s = self.search
            objectives = ", ".join(f"{o['metric']} ({o['mode']})" for o in s["objectives"])
            lines = [f"experiment {self.name}: search with {s['algorithm']}, {s['num_samples']} trials over "
                     f"{', '.join(short_name(p) for p in s['space'])}",
                     f"  each trial trains one model on half the pool (seed {seeds[0]}) and is scored on "
                     f"{objectives}", "  privacy score: loss-threshold attack on the model's own members vs "
                     "non-members; confirm the best points with `demem confirm`",
                     f"  base: {groups[0].group_id}; scheduler: {s['scheduler'] or 'none'}",
                     f"training: at most {s['num_samples'] * epochs[0]} epochs "
                     f"({s['num_samples']} trials x {_count(epochs[0], 'epoch')} of the base)",
                     lines[-2], f"confirmation audit per group: {m} models, attacks: "
                     f"{', '.join(self.audit['attacks'])}"]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------------


def load_spec(path: str | Path, *, check_data: bool = True,
              available: dict[str, float] | None = None) -> ExperimentSpec:
    """Read a YAML spec (yaml.safe_load) and validate it; see `validate`.

    Raises:
        SpecError: an unreadable file, a YAML syntax error (naming file and line), or every problem
            `validate` finds.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpecError([f"{path}: cannot read the spec: {e.strerror or e}"]) from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e)
        raise SpecError([f"{where}: YAML syntax error: {problem}"]) from None
    if raw is None:
        raise SpecError([f"{path}: the spec is empty"])
    return validate(raw, check_data=check_data, available=available)


def validate(raw: dict, *, check_data: bool = True, available: dict[str, float] | None = None) -> ExperimentSpec:
    """Check a loaded spec and return it as an `ExperimentSpec`.

    Args:
        raw: the spec as loaded from YAML.
        check_data: also require every group's dataset to be present locally (or data.download).
        available: the resources of the largest node, Ray-style ({"CPU": 2, "GPU": 0}); when given, a
            trial must fit on it.

    Raises:
        SpecError: listing every problem found, one per line, each prefixed with its key path.
    """
    if not isinstance(raw, dict):
        raise SpecError([f"spec: must be a mapping of settings, got {type(raw).__name__}"])
    problems: list[str] = []
    problems += [f"{k}: unknown key; allowed: {', '.join(TOP_KEYS)}" for k in raw
                 if k not in TOP_KEYS and not (isinstance(k, str) and k.startswith("_"))]

    name = _check_name(raw.get("name"), problems)
    base = _check_base(raw.get("base"), problems)
    grid, grid_seeds = _check_grid(raw.get("grid"), problems)
    points = _check_points(raw.get("points"), problems)
    seeds = _check_seeds(raw.get("seeds"), grid_seeds, problems)
    audit = _check_audit(raw.get("audit"), "audit" in raw, problems)
    resources = _check_resources(raw.get("resources"), available, problems)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and not (_is_int(max_concurrent) and max_concurrent >= 1):
        problems.append("max_concurrent: must be an integer >= 1 or null")
    max_retries = _check_failure(raw.get("failure"), problems)

    models = audit["models"] if audit["models"] is not None else MIN_MODELS_AUDIT  # to resolve the configs
    groups, group_problems = _expand(base, grid, models, points)
    problems += group_problems
    raw_grid = raw.get("grid")
    has_grid = isinstance(raw_grid, dict) and any(k != "seed" for k in raw_grid)
    if has_grid and points is not None:
        problems.append("points: cannot be combined with grid; give one of them")
    if points is not None and raw.get("search") is not None:
        problems.append("search: cannot be combined with points; give one of them")
    search = _check_search(raw.get("search"), has_grid, base, models, bool(group_problems), problems)
    _check_queries(audit["queries"], groups, problems)
    if check_data:
        _check_data(groups, search, base, problems)

    if problems:
        raise SpecError(list(dict.fromkeys(problems)))  # without repeats, in the order found
    return ExperimentSpec(name=name, base=base, grid=grid, seeds=seeds, audit=audit, resources=resources,
                          max_concurrent=max_concurrent, max_retries=max_retries, search=search,
                          raw=copy.deepcopy(raw), points=points)


# ---------------------------------------------------------------------------------------------------
# Run configs: key paths, resolution, group ids
# ---------------------------------------------------------------------------------------------------


def resolve_run(base: dict, overrides: dict[str, Any], n_models: int, *, seed: int = 0,
                model_index: int = 0) -> dict:
    """The RunConfig dict of `base` with `overrides` (expanded key path -> value) applied.

    Integers given for float settings become floats, so `lambda: 0` and `lambda: 0.0` are one config.

    Raises:
        ValueError: the config is invalid (`RunConfig.from_dict`'s message, or a setting of the wrong
            type, e.g. "train.lr must be a number, got '1e-2'").
    """
    tree = copy.deepcopy(base)
    for path, value in overrides.items():
        _set_path(tree, path, value)
    tree.update(n_models=n_models, seed=seed, model_index=model_index)
    types_wrong = _type_problems(RunConfig, tree)
    if types_wrong:
        raise ValueError("; ".join(types_wrong))
    try:
        run = RunConfig.from_dict(tree)
    except (TypeError, KeyError, AttributeError) as e:  # a value of a shape the config code did not expect
        raise ValueError(str(e)) from e
    return _normalise(RunConfig, run.to_dict())


def trial_resources(spec: ExperimentSpec) -> dict[str, float]:
    """What one trial asks Ray Tune for ({"cpu", "gpu"}), for `tune.with_resources`."""
    return {"cpu": spec.resources["cpu"], "gpu": spec.resources["gpu"]}


def group_id(run: dict) -> str:
    """12 hex chars identifying a group: sha256 of the canonical JSON of the resolved run dict without
    seed, model_index, n_models, data.root and data.download, together with n_models."""
    d = _normalise(RunConfig, copy.deepcopy(run))
    n_models = d.pop("n_models")
    for key in ("seed", "model_index"):
        d.pop(key, None)
    for key in _LOCATION_KEYS:
        d.get("data", {}).pop(key, None)
    payload = json.dumps({"run": d, "n_models": n_models}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _expand_key(key: str) -> str:
    return SHORTHANDS.get(key, key)


def _label(params: dict[str, Any]) -> str:
    return " ".join(f"{short_name(p)}={_fmt(v)}" for p, v in params.items()) or "base"


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (int, str)):
        return str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def _num(x: float) -> str:
    return f"{x:g}"


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _leaf_hint(path: str) -> tuple[Any, str | None]:
    """(type hint of the setting at `path`, None), or (None, why the path is not a setting)."""
    cls: type = RunConfig
    parts = path.split(".")
    for i, part in enumerate(parts):
        fields = external_fields(cls)
        if part not in fields:
            where = ".".join(parts[:i]) or "a run config"
            return None, f"unknown key path; {where} has: {', '.join(sorted(fields))}"
        hint = fields[part][1]
        sub = dataclass_in(hint)
        last = i == len(parts) - 1
        if sub is None and not last:
            return None, f"unknown key path; {'.'.join(parts[:i + 1])} is a setting, not a section"
        if sub is not None and last:
            keys = ", ".join(sorted(external_fields(sub)))
            return None, f"names a section, not a setting; use one of its keys: {keys}"
        if sub is not None:
            cls = sub
    return hint, None


def _path_problem(path: Any) -> str | None:
    """Why `path` (already expanded) cannot be varied, or None."""
    if not isinstance(path, str) or not path:
        return "unknown key path"
    if path in _PER_TRIAL:
        return f"{_PER_TRIAL[path]}; not allowed here"
    return _leaf_hint(path)[1]


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = copy.deepcopy(value)


def _scalar_kinds(hint: Any) -> tuple[Any, ...] | None:
    """The member types of a scalar hint (`int`, `float | None`, `tuple[float, ...]`), else None."""
    args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    ok = {int, float, str, bool, type(None)}
    if all(a in ok or typing.get_origin(a) is tuple for a in args):
        return args
    return None


def _fits(kind: Any, value: Any) -> bool:
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return _is_int(value)
    if kind is float:
        return _is_number(value)
    if kind is str:
        return isinstance(value, str)
    if typing.get_origin(kind) is tuple:
        (elem, *_) = typing.get_args(kind) or (Any,)
        return isinstance(value, (list, tuple)) and all(_fits(elem, v) for v in value)
    return True


def _describe(kind: Any) -> str:
    names = {type(None): "null", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if typing.get_origin(kind) is tuple:
        (elem, *_) = typing.get_args(kind) or (Any,)
        return f"a list of {names.get(elem, 'values').removeprefix('an ').removeprefix('a ')}s"
    return names.get(kind, str(kind))


def _settings(cls: type, tree: Any, prefix: str = ""):
    """Yield (parent dict, key, value, scalar kinds or None, dotted path) for every setting of `cls`
    present in a run-config tree, descending into sections; unknown keys are skipped (they are
    RunConfig.from_dict's to report)."""
    if not isinstance(tree, dict):
        return
    fields = external_fields(cls)
    for key, value in list(tree.items()):
        if key not in fields:
            continue
        hint = fields[key][1]
        sub = dataclass_in(hint)
        if sub is not None:
            yield from _settings(sub, value, f"{prefix}{key}.")
        else:
            yield tree, key, value, _scalar_kinds(hint), f"{prefix}{key}"


def _type_problems(cls: type, tree: Any) -> list[str]:
    """Settings of the wrong type in a run-config tree (unknown keys are left to RunConfig.from_dict).

    RunConfig's own checks compare values (epochs < 1) but accept 2.5 epochs, and YAML reads `1e-2`
    (no dot) as a string, so a typed check here turns both into a clear message before any run.
    """
    out: list[str] = []
    for _, _, value, kinds, path in _settings(cls, tree):
        if kinds is None or any(_fits(k, value) for k in kinds):
            continue
        msg = f"{path} must be {' or '.join(_describe(k) for k in kinds)}, got {value!r}"
        if isinstance(value, str) and float in kinds and _parses_as_float(value):
            msg += " (YAML reads numbers like 1e-2 as text: write 1.0e-2)"
        out.append(msg)
    return out


def _parses_as_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _normalise(cls: type, tree: dict) -> dict:
    """Cast integers given for float settings to float, in place (so 0 and 0.0 hash alike)."""
    for parent, key, value, kinds, _ in _settings(cls, tree):
        kinds = kinds or ()
        if float in kinds and int not in kinds and _is_int(value):
            parent[key] = float(value)
        for kind in kinds:
            if typing.get_origin(kind) is tuple and typing.get_args(kind)[:1] == (float,) \
                    and isinstance(value, list):
                parent[key] = [float(v) if _is_int(v) else v for v in value]
    return tree


# ---------------------------------------------------------------------------------------------------
# Expansion of the grid into groups
# ---------------------------------------------------------------------------------------------------


def _expand(base: dict, grid: dict[str, list], n_models: int,
            points: list[dict] | None = None) -> tuple[list[Group], list[str]]:
    """Resolve every grid point (or every one of `points`, when given). Returns (groups, problems).

    A failing point is reported once, blamed on the smallest cause that explains it: the base, when
    the base alone and every point fail with that message; else one grid value, when every point
    with that value fails with it (`grid point method=madry: ...`); else the point's full label.
    """
    if points is not None:
        keys = list(dict.fromkeys(k for p in points for k in p))
        combos = [dict(p) for p in points]
    else:
        keys = list(grid)
        combos = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    results: list[tuple[dict[str, Any], str | dict]] = []  # (params, error message or resolved run)
    for params in combos:
        try:
            results.append((params, resolve_run(base, params, n_models)))
        except ValueError as e:
            results.append((params, str(e)))

    def value_key(k: str, v: Any) -> tuple[str, str]:
        return k, json.dumps(v, sort_keys=True, default=str)

    # For each grid value, the outcomes of all points that have it ("" stands for success).
    outcomes: dict[tuple[str, str], set[str]] = {}
    for params, res in results:
        for k in params:
            outcomes.setdefault(value_key(k, params[k]), set()).add(res if isinstance(res, str) else "")
    every = {res if isinstance(res, str) else "" for _, res in results}
    base_error: str | None = None
    if len(every) == 1 and next(iter(every)):
        try:
            resolve_run(base, {}, n_models)
        except ValueError as e:
            base_error = str(e)

    groups: list[Group] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for params, res in results:
        label = _label(params)
        if isinstance(res, str):
            if res == base_error:
                problems.append(f"base: {res}")
                continue
            culprit = next((k for k in params if outcomes[value_key(k, params[k])] == {res}), None)
            where = label if culprit is None else _label({culprit: params[culprit]})
            problems.append(f"grid point {where}: {res}")
            continue
        gid = group_id(res)
        if gid in seen:  # e.g. lambda=0 with several thresholds: the same run, trained once
            j = seen[gid]
            groups[j] = dataclasses.replace(groups[j], aliases=groups[j].aliases + (label,))
            continue
        seen[gid] = len(groups)
        groups.append(Group(group_id=gid, label=label, params=params, run=res))
    return groups, list(dict.fromkeys(problems))


# ---------------------------------------------------------------------------------------------------
# Section checks: each appends to `problems` and returns the cleaned value
# ---------------------------------------------------------------------------------------------------


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _unknown_keys(section: str, d: dict, allowed: tuple[str, ...], problems: list[str]) -> None:
    problems += [f"{section}.{k}: unknown key; allowed: {', '.join(allowed)}" for k in d if k not in allowed]


def _mapping(section: str, value: Any, problems: list[str]) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{section}: must be a mapping or null")
        return {}
    return value


def _check_name(name: Any, problems: list[str]) -> str:
    if name is None:
        problems.append("name: required")
        return ""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        problems.append("name: must match [A-Za-z0-9_.-]+")
        return str(name)
    return name


def _check_base(base: Any, problems: list[str]) -> dict:
    base = copy.deepcopy(_mapping("base", base, problems))
    for key, why in _PER_TRIAL.items():
        if key in base:
            problems.append(f"base.{key}: {why}; not allowed here")
            del base[key]  # reported; leave it out so the groups are checked without it
    return base


def _claim_path(section: str, key: Any, given_as: dict[str, str], problems: list[str],
                seed_problem: str | None = None) -> str | None:
    """The expanded key path of a grid / search-space key, or None (with a problem) when it is not a
    config path or names a path another key of the same section already took."""
    path = _expand_key(key) if isinstance(key, str) else key
    why = seed_problem if (seed_problem and path == "seed") else _path_problem(path)
    if why is not None:
        problems.append(f"{section}.{key}: {why}")
        return None
    if path in given_as:
        problems.append(f"{section}.{path}: given twice (as {given_as[path]} and {key})")
        return None
    given_as[path] = key
    return path


def _check_grid(grid: Any, problems: list[str]) -> tuple[dict[str, list], Any]:
    """Returns (expanded path -> values for the valid keys, the `seed` entry or None)."""
    grid = _mapping("grid", grid, problems)
    out: dict[str, list] = {}
    given_as: dict[str, str] = {}
    seeds = None
    for key, values in grid.items():
        if key == "seed":
            seeds = values
            continue
        path = _claim_path("grid", key, given_as, problems)
        if path is None:
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"grid.{key}: must be a non-empty list")
            continue
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            problems.append(f"grid.{key}: {_fmt(repeated[0])} is listed twice")
            continue
        out[path] = values
    return out, seeds


def _check_points(points: Any, problems: list[str]) -> list[dict] | None:
    """`points`: an explicit list of groups, each a mapping of key paths to values (what
    `demem confirm` writes for the best points of a search). Returns the expanded points or None."""
    if points is None:
        return None
    if not (isinstance(points, list) and points):
        problems.append("points: must be a non-empty list of mappings like {demem.lambda: 0.4}")
        return None
    out: list[dict] = []
    for i, point in enumerate(points):
        if not isinstance(point, dict):
            problems.append(f"points[{i}]: must be a mapping of key paths to values ({{}} for the base)")
            continue
        given_as: dict[str, str] = {}
        expanded = {}
        for key, value in point.items():
            path = _claim_path(f"points[{i}]", key, given_as, problems,
                               seed_problem="seeds are not points; list them in seeds")
            if path is not None:
                expanded[path] = value
        if expanded in out:
            problems.append(f"points[{i}]: the same point as points[{out.index(expanded)}]")
            continue
        out.append(expanded)
    return out


def _check_seeds(seeds: Any, grid_seeds: Any, problems: list[str]) -> tuple[int, ...]:
    where = "seeds"
    if grid_seeds is not None:
        if seeds is not None:
            problems.append("grid.seed: give the seeds as seeds or as grid.seed, not both")
            return (0,)
        seeds, where = grid_seeds, "grid.seed"
    if seeds is None:
        return (0,)
    if not (isinstance(seeds, list) and seeds and all(_is_int(s) and s >= 0 for s in seeds)):
        problems.append(f"{where}: must be a non-empty list of integers >= 0")
        return (0,)
    repeated = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if repeated:
        problems.append(f"{where}: {repeated[0]} is listed twice")
    return tuple(dict.fromkeys(seeds))


def _check_audit(audit: Any, given: bool, problems: list[str]) -> dict:
    out: dict[str, Any] = {"models": None, "targets": None, "attacks": MIA_ATTACKS, "queries": None}
    if not given or audit is None:
        problems.append("audit.models: required")
        return out
    if not isinstance(audit, dict):
        problems.append("audit: must be a mapping")
        return out
    _unknown_keys("audit", audit, AUDIT_KEYS, problems)

    attacks = audit.get("attacks")
    asked: tuple[str, ...] = MIA_ATTACKS  # what the model-count rules check; nothing when the list is broken
    if attacks is not None:
        asked = ()
        items = attacks.split(",") if isinstance(attacks, str) else attacks
        if not (isinstance(items, list) and items and all(isinstance(a, str) and a.strip() for a in items)):
            problems.append("audit.attacks: must be a non-empty list of attack names")
        else:
            expanded = parse_attacks(",".join(items))
            bad = [a for a in expanded if a not in MIA_ATTACKS]
            if bad:
                problems.append(f"audit.attacks: unknown attack(s) {', '.join(map(repr, bad))}; known: "
                                f"{', '.join(MIA_ATTACKS)}, and lira, threshold, all")
            else:
                out["attacks"] = asked = expanded

    models = audit.get("models")
    if models is None:
        problems.append("audit.models: required")
    elif not (_is_int(models) and models >= 2):
        problems.append("audit.models: must be an integer >= 2")
    else:
        out["models"] = models
        lira = [a for a in asked if a in LIRA_ATTACKS]
        per_sample_var = [a for a in lira if not a.endswith("_fixed")]
        if lira and models < MIN_MODELS_LIRA:
            problems.append(f"audit.models: LiRA needs at least {MIN_MODELS_LIRA} models per group, got {models}")
        elif models < MIN_MODELS_AUDIT:
            problems.append(f"audit.models: the audit needs every sample in at least 2 models and out of at least "
                            f"2, so at least {MIN_MODELS_AUDIT} models per group, got {models}")
        elif per_sample_var and models < MIN_MODELS_LIRA_PER_SAMPLE_VARIANCE:
            problems.append(f"audit.attacks: {', '.join(per_sample_var)} need at least "
                            f"{MIN_MODELS_LIRA_PER_SAMPLE_VARIANCE} models per group (2 IN and 2 OUT shadows per "
                            f"sample besides the target), got {models}; use the _fixed variants or more models")

    targets = audit.get("targets")
    if targets is not None:
        if not (_is_int(targets) and targets >= 1):
            problems.append("audit.targets: must be an integer >= 1 or null")
        elif out["models"] is not None and targets > out["models"]:
            problems.append(f"audit.targets: must be <= audit.models ({out['models']}), got {targets}")
        else:
            out["targets"] = targets
    queries = audit.get("queries")
    if queries is not None:
        if not (_is_int(queries) and queries >= 1):
            problems.append("audit.queries: must be an integer >= 1 or null")
        else:
            out["queries"] = queries
    return out


def _check_queries(queries: int | None, groups: list[Group], problems: list[str]) -> None:
    if queries is None:
        return
    for g in groups:
        recorded = g.run["eval"]["queries"]
        if queries > recorded:
            where = "" if g.label == "base" else f" at grid point {g.label}"
            problems.append(f"audit.queries: {queries} asked for, but the models record only {recorded} "
                            f"(eval.queries){where}")
            return


def _check_resources(resources: Any, available: dict[str, float] | None, problems: list[str]) -> dict:
    resources = _mapping("resources", resources, problems)
    _unknown_keys("resources", resources, RESOURCE_KEYS, problems)
    cpu, gpu = resources.get("cpu", 1), resources.get("gpu", 0)
    ok_cpu, ok_gpu = _is_number(cpu) and cpu > 0, _is_number(gpu) and gpu >= 0
    if not ok_cpu:
        problems.append("resources.cpu: must be > 0")
    if not ok_gpu:
        problems.append("resources.gpu: must be >= 0")
    elif gpu > 1 and gpu != int(gpu):
        # Ray packs fractions of one GPU; above one it only hands out whole devices.
        problems.append(f"resources.gpu: a trial gets a fraction of one GPU or whole GPUs, got {_num(gpu)}")
    if available is not None:
        have_cpu, have_gpu = available.get("CPU", 0), available.get("GPU", 0)
        if ok_cpu and cpu > have_cpu:
            problems.append(f"resources: a trial needs {_num(cpu)} CPU but the largest node has {_num(have_cpu)}; "
                            "no node could satisfy it")
        if ok_gpu and gpu > 0 and not have_gpu:
            problems.append(f"resources: a trial needs {_num(gpu)} GPU but no node has one; no node could satisfy it")
        elif ok_gpu and gpu > have_gpu:
            problems.append(f"resources: a trial needs {_num(gpu)} GPU but the largest node has {_num(have_gpu)}; "
                            "no node could satisfy it")
    return {"cpu": float(cpu) if ok_cpu else 1.0, "gpu": float(gpu) if ok_gpu else 0.0}


def _check_failure(failure: Any, problems: list[str]) -> int:
    failure = _mapping("failure", failure, problems)
    _unknown_keys("failure", failure, FAILURE_KEYS, problems)
    retries = failure.get("max_retries", 1)
    if not (_is_int(retries) and retries >= 0):
        problems.append("failure.max_retries: must be an integer >= 0")
        return 1
    return retries


def _check_search(search: Any, has_grid: bool, base: dict, n_models: int, base_reported: bool,
                  problems: list[str]) -> dict | None:
    if search is None:
        return None
    if not isinstance(search, dict):
        problems.append("search: must be a mapping or null")
        return None
    if has_grid:
        problems.append("search: cannot be combined with grid; give one of them")
    _unknown_keys("search", search, SEARCH_KEYS, problems)
    out: dict[str, Any] = {}

    algorithm = search.get("algorithm", "optuna")
    if algorithm not in ALGORITHMS:
        problems.append(f"search.algorithm: must be one of {', '.join(ALGORITHMS)}, got {algorithm!r}")
    out["algorithm"] = algorithm

    num_samples = search.get("num_samples")
    if not (_is_int(num_samples) and num_samples >= 1):
        problems.append("search.num_samples: must be an integer >= 1")
    out["num_samples"] = num_samples

    out["objectives"] = _check_objectives(search.get("objectives"), problems)

    scheduler = search.get("scheduler")
    if scheduler is not None and scheduler not in SCHEDULERS:
        problems.append(f"search.scheduler: must be {' or '.join(SCHEDULERS)} or null, got {scheduler!r}")
    out["scheduler"] = scheduler

    space = search.get("space")
    out["space"] = {}
    if not (isinstance(space, dict) and space):
        problems.append("search.space: must be a non-empty mapping of key paths to distributions")
        return out
    given_as: dict[str, str] = {}
    for key, dist in space.items():
        where = f"search.space.{key}"
        path = _claim_path("search.space", key, given_as, problems,
                           seed_problem="seeds are not searched; list them in seeds")
        if path is None:
            continue
        values = _check_distribution(where, path, dist, problems)
        if values is None:
            continue
        out["space"][path] = {dist_kind: list(args) for dist_kind, args in dist.items()}
        if base_reported:
            continue  # the base is already reported broken; its errors would repeat here
        for value in values:
            try:
                resolve_run(base, {path: value}, n_models)
            except ValueError as e:
                problems.append(f"{where}: {_fmt(value)}: {e}")
    return out


def _check_objectives(objectives: Any, problems: list[str]) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    example = "[{robust_acc: max}, {mia_tpr_at_1pct: min}]"
    if not (isinstance(objectives, list) and objectives):
        problems.append(f"search.objectives: must be a non-empty list like {example}")
        return out
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
        elif any(o["metric"] == metric for o in out):
            problems.append(f"search.objectives: {metric} is listed twice")
        else:
            out.append({"metric": metric, "mode": mode})
    return out


def _check_distribution(where: str, path: str, dist: Any, problems: list[str]) -> list | None:
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
    if not (isinstance(args, list) and len(args) == 2 and all(_is_number(a) for a in args)
            and args[0] < args[1] and (kind == "uniform" or args[0] > 0)):
        problems.append(f"{where}.{kind}: must be [low, high] with {low_ok}")
        return None
    kinds = _scalar_kinds(_leaf_hint(path)[0]) or ()
    if float not in kinds:
        problems.append(f"{where}: {kind} samples real numbers, but {path} takes "
                        f"{' or '.join(_describe(k) for k in kinds) or 'other values'}; use choice")
        return None
    return list(args)


def _check_data(groups: list[Group], search: dict | None, base: dict, problems: list[str]) -> None:
    """Every dataset a trial will read must be on this machine, unless its group may download it."""
    wanted: list[tuple[str, str | None]] = []
    for g in groups:
        d = g.run["data"]
        if not d["download"]:
            wanted.append((d["dataset"], d["root"]))
    if search is not None:
        choices = search["space"].get("data.dataset", {}).get("choice", [])
        data = base.get("data") if isinstance(base.get("data"), dict) else {}
        if not data.get("download"):
            wanted += [(name, data.get("root")) for name in choices if name in datalib.DATASETS]
    reported: set[str] = set()
    for name, root in wanted:
        if name in reported or datalib.locate(name, root) is not None:
            continue
        reported.add(name)
        # The same directories load_splits searches, in its order.
        looked = ", ".join(str(p) for p in datalib._candidate_dirs(name, root))
        problems.append(f"data.dataset: {name} is not present locally (looked in: {looked}); "
                        f"fetch it with: {datalib.dataset_info(name).fetch_hint}")
