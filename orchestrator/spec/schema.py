"""The spec format: reading a YAML file, validating it (every problem at once), and its JSON Schema.

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
    seeds: [0]                       # training seeds, default [0]; `seed: [...]` in grid means the same;
                                     # or {train: [0, 1, 2], pool: per-seed}: fresh pool and keep masks
                                     # per seed (pool_seed = base pool_seed + seed); pool: same (default)
    audit: {models: 8, targets: null, attacks: [lira, loss], queries: null}   # see sections.AuditSpec
    resources: {cpu: 1, gpu: 0}      # per trial; gpu may be a fraction (0.25) to pack small models
    max_concurrent: null             # at most this many trials at once; null = as many as fit
    failure: {max_retries: 1}        # retries of a failed trial (default 1)
    points: null                     # explicit groups instead of a grid: [{lambda: 0.4}, {}] ({} = base)
    search: null                     # a search instead of a grid (never both): see space.SearchSpec

Any other key, at any level (one starting with "_" too), is refused, naming the keys allowed there.
"""

from __future__ import annotations

import copy
import math
import re
from pathlib import Path
from typing import Any

from demem import data as datalib
from demem.checks import is_int
from demem.config import json_schema
from demem.device import PRECISIONS, resolve_precision
from demem.privacy.audit import ATTACK_SETS, MIA_ATTACKS
from demem.train import RunConfig
from orchestrator.columns import SEARCH_METRICS
from orchestrator.spec.grid import SEED_POOLS, Group, check_grid, check_points, check_seeds, expand
from orchestrator.spec.keys import PER_TRIAL, SHORTHANDS
from orchestrator.spec.plan import ExperimentSpec
from orchestrator.spec.problems import SpecError, clip, mapping
from orchestrator.spec.reader import read_spec
from orchestrator.spec.sections import (
    AuditSpec,
    FailureSpec,
    ResourcesSpec,
    check_audit,
    check_failure,
    check_queries,
    check_resources,
    check_signals,
)
from orchestrator.spec.space import ALGORITHMS, DISTRIBUTIONS, MODES, SCHEDULERS, SearchSpec, check_search

MAX_GROUPS = 1000
MAX_SEEDS = 100
MAX_TRIALS = 100_000
TOP_KEYS = ("audit", "base", "failure", "grid", "max_concurrent", "name", "points", "resources", "search", "seeds")
# An experiment name is one path component under --storage: no separators, no "." or "..", no
# leading dot or dash (hidden files, options), bounded length.
NAME_PATTERN = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}"
_NAME_RE = re.compile(NAME_PATTERN)


def name_problem(name: Any, what: str = "name") -> str | None:
    """Why `name` cannot name an experiment directory, or None."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        shown = clip(repr(name), 80)
        return (
            f"{what}: must be one path component of letters, digits, '_', '.', '-' (not starting with '.' or '-', "
            f"at most 100 characters), got {shown}"
        )
    return None


def load_spec(
    path: str | Path, *, check_data: bool = True, available: dict[str, float] | None = None
) -> ExperimentSpec:
    """Read a YAML spec (bounded and alias-free: `orchestrator.spec.reader`) and validate it; see
    `validate`.

    Raises:
        SpecError: an unreadable, oversized, binary or non-UTF-8 file, a YAML syntax error or a
            refused construct (naming file and line), or every problem `validate` finds.
    """
    path = Path(path)
    raw = read_spec(path)
    if raw is None:
        raise SpecError([f"{path}: the spec is empty"])
    return validate(raw, check_data=check_data, available=available)


def validate(raw: dict, *, check_data: bool = True, available: dict[str, float] | None = None) -> ExperimentSpec:
    """Check a loaded spec and return it as an `ExperimentSpec`.

    Args:
        raw: the spec as loaded from YAML.
        check_data: also require every group's dataset to be present locally (or data.download), and
            read it with the trials' readers (a malformed or crafted file is a problem naming it).
        available: the resources of the largest node, Ray-style ({"CPU": 2, "GPU": 0}); when given, a
            trial must fit on it.

    Raises:
        SpecError: listing every problem found, one per line, each prefixed with its key path.
    """
    if not isinstance(raw, dict):
        raise SpecError([f"spec: must be a mapping of settings, got {type(raw).__name__}"])
    problems: list[str] = []
    problems += [f"{k}: unknown key; allowed: {', '.join(TOP_KEYS)}" for k in raw if k not in TOP_KEYS]

    name = _check_name(raw.get("name"), problems)
    base = _check_base(raw.get("base"), problems)
    grid, grid_seeds = check_grid(raw.get("grid"), problems)
    points = check_points(raw.get("points"), problems)
    seeds, seed_pool = check_seeds(raw.get("seeds"), grid_seeds, problems)
    audit = check_audit(raw.get("audit"), "audit" in raw, problems)
    resources = check_resources(raw.get("resources"), available, problems)
    max_concurrent = raw.get("max_concurrent")
    if max_concurrent is not None and not (is_int(max_concurrent) and max_concurrent >= 1):
        problems.append("max_concurrent: must be an integer >= 1 or null")
    failure = check_failure(raw.get("failure"), problems)

    n_points = len(points) if points is not None else math.prod(len(v) for v in grid.values())
    if n_points > MAX_GROUPS:
        problems.append(
            f"{'points' if points is not None else 'grid'}: {n_points} groups; at most {MAX_GROUPS} per experiment"
        )
        groups, group_problems = [], []
    else:
        base = with_precision(base, "cuda" if resources.gpu > 0 else "cpu")
        groups, group_problems = expand(base, grid, audit.models, points, seed_pool)
    problems += group_problems
    if len(seeds) > MAX_SEEDS:
        problems.append(f"seeds: {len(seeds)} seeds; at most {MAX_SEEDS}")
    n_trials = len(groups) * len(seeds) * (audit.models or 0)
    if n_trials > MAX_TRIALS:
        problems.append(f"spec: {n_trials} trials (groups x seeds x audit.models); at most {MAX_TRIALS}")
    raw_grid = raw.get("grid")
    has_grid = isinstance(raw_grid, dict) and any(k != "seed" for k in raw_grid)
    if has_grid and points is not None:
        problems.append("points: cannot be combined with grid; give one of them")
    if points is not None and raw.get("search") is not None:
        problems.append("search: cannot be combined with points; give one of them")
    search = check_search(raw.get("search"), has_grid, base, audit.models, bool(group_problems), problems)
    if seed_pool != "same" and raw.get("search") is not None:
        problems.append("seeds.pool: per-seed needs several seeds' groups; a search trains one seed (use pool: same)")
    check_queries(audit.queries, groups, problems)
    check_signals(audit.attacks, groups, problems)
    if check_data:
        _check_data(groups, search, base, problems)

    if problems:
        raise SpecError(list(dict.fromkeys(problems)))  # without repeats, in the order found
    return ExperimentSpec(
        name=name,
        base=base,
        grid=grid,
        seeds=seeds,
        seed_pool=seed_pool,
        audit=audit,
        resources=resources,
        max_concurrent=max_concurrent,
        failure=failure,
        search=search,
        raw=copy.deepcopy(raw),
        points=points,
    )


def _check_name(name: Any, problems: list[str]) -> str:
    if name is None:
        problems.append("name: required")
        return ""
    why = name_problem(name)
    if why is not None:
        problems.append(why)
        return str(name)
    return name


def _check_base(base: Any, problems: list[str]) -> dict:
    base = copy.deepcopy(mapping("base", base, problems))
    for key, why in PER_TRIAL.items():
        if key in base:
            problems.append(f"base.{key}: {why}; not allowed here")
            del base[key]  # reported; leave it out so the groups are checked without it
    return base


def _check_data(groups: list[Group], search: SearchSpec | None, base: dict, problems: list[str]) -> None:
    """Every dataset a trial will read must be on this machine, unless its group may download it, and
    must read as the trials will read it."""
    wanted: list[tuple[str, str | None]] = []
    for g in groups:
        d = g.run["data"]
        if not d["download"]:
            wanted.append((d["dataset"], d["root"]))
    if search is not None:
        choices = search.space.get("data.dataset", {}).get("choice", [])
        data = base.get("data") if isinstance(base.get("data"), dict) else {}
        root = data.get("root")
        if not data.get("download") and (root is None or isinstance(root, str)):  # a bad root is reported
            wanted += [(name, root) for name in choices if name in datalib.DATASETS]
    reported: set[str] = set()
    read: set[tuple[str, str | None]] = set()
    for name, root in wanted:
        if name in reported or (name, root) in read:
            continue
        if datalib.locate(name, root) is None:
            reported.add(name)
            # The same directories load_splits searches, in its order.
            looked = ", ".join(str(p) for p in datalib.candidate_dirs(name, root))
            problems.append(
                f"data.dataset: {name} is not present locally (looked in: {looked}); "
                f"fetch it with: {datalib.dataset_info(name).fetch_hint}"
            )
            continue
        read.add((name, root))
        # Present: read it through the trials' own readers (once per copy; a second or so for the
        # largest dataset), so a truncated, foreign or crafted file is refused here, naming the file,
        # rather than failing every trial that reads it.
        try:
            datalib.load_splits(name, root=root)
        except (ValueError, OSError) as e:
            problems.append(f"data.dataset: {name}: {e}")


# ---------------------------------------------------------------------------------------------------
# JSON Schema (`demem schema`): what an editor can check while a spec is typed. The run config and the
# typed sections come from the one walker (demem.config.json_schema); the cross-field rules (model
# minimums, grid values resolving to valid runs, datasets present) stay `validate`'s.
# ---------------------------------------------------------------------------------------------------


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def spec_json_schema() -> dict[str, Any]:
    """The JSON Schema of a spec file."""
    run = json_schema(RunConfig)
    base = {**run, "properties": {k: v for k, v in run["properties"].items() if k not in PER_TRIAL}}
    audit = json_schema(AuditSpec)
    audit["properties"]["attacks"] = {
        "anyOf": [{"type": "array", "items": {"type": "string"}, "minItems": 1}, {"type": "string"}],
        "description": f"attack names ({', '.join(MIA_ATTACKS)}) or {', '.join(ATTACK_SETS)}",
    }
    audit["properties"]["models"] = {"type": "integer", "minimum": 2}
    audit["required"] = ["models"]
    resources = json_schema(ResourcesSpec)
    resources["properties"] = {
        "cpu": {"type": "number", "exclusiveMinimum": 0},
        "gpu": {"type": "number", "minimum": 0},
    }
    failure = json_schema(FailureSpec)
    failure["properties"]["max_retries"] = {"type": "integer", "minimum": 0}
    key_path = {"type": "string", "description": f"a key path into base, or a shorthand: {', '.join(SHORTHANDS)}"}
    dist = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {d: {"type": "array"} for d in DISTRIBUTIONS},
    }
    objective = {
        "type": "object",
        "minProperties": 1,
        "maxProperties": 1,
        "additionalProperties": False,
        "properties": {m: {"enum": list(MODES)} for m in SEARCH_METRICS},
    }
    search = json_schema(SearchSpec)
    search["properties"].update(
        algorithm={"enum": list(ALGORITHMS)},
        num_samples={"type": "integer", "minimum": 1},
        objectives={"type": "array", "minItems": 1, "items": objective},
        space={"type": "object", "minProperties": 1, "propertyNames": key_path, "additionalProperties": dist},
        scheduler={"anyOf": [{"enum": list(SCHEDULERS)}, {"type": "null"}]},
    )
    search["required"] = ["num_samples", "objectives", "space"]
    seed_list = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0}}
    seeds = {
        "anyOf": [
            seed_list,
            {
                "type": "object",
                "properties": {"train": seed_list, "pool": {"enum": list(SEED_POOLS)}},
                "additionalProperties": False,
            },
        ]
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "demem experiment spec",
        "type": "object",
        "required": ["name", "audit"],
        "properties": {
            "name": {"type": "string", "pattern": f"^{NAME_PATTERN}$"},
            "base": _nullable(base),
            "grid": _nullable(
                {"type": "object", "propertyNames": key_path, "additionalProperties": {"type": "array", "minItems": 1}}
            ),
            "points": _nullable(
                {"type": "array", "minItems": 1, "items": {"type": "object", "propertyNames": key_path}}
            ),
            "seeds": _nullable(seeds),
            "audit": audit,
            "resources": _nullable(resources),
            "max_concurrent": _nullable({"type": "integer", "minimum": 1}),
            "failure": _nullable(failure),
            "search": _nullable(search),
        },
        "additionalProperties": False,
    }


def with_precision(base: dict, device: str) -> dict:
    """`base` with `train.precision` resolved for the trials' device (their resources, not the
    driver's: a CPU-only driver plans GPU trials), so the group ids carry the precision they train at.
    A base that is not a mapping is left for the problem list."""
    if not isinstance(base, dict) or not isinstance(base.get("train", {}), dict):
        return base
    train = dict(base.get("train") or {})
    precision = train.get("precision", "auto")
    if precision in PRECISIONS:  # anything else: RunConfig's own message, from the expansion
        train["precision"] = resolve_precision(precision, device)
    return {**base, "train": train}
