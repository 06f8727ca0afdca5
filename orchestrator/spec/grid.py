"""The groups of a spec: the grid (cartesian product) or explicit points, and the seeds.

A *group* is one grid point resolved through `RunConfig.from_dict` (DESIGN.md): its id is a hash of
the resolved config minus what only names a model or where the data lie, plus M (`keys.group_id`).
The same config always gets the same id, so results and caches are keyed by content, never by a label.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from dataclasses import dataclass
from typing import Any

from demem.checks import is_int
from orchestrator.fmt import fmt_value
from orchestrator.spec.keys import expand_key, group_id, label, path_problem, resolve_run
from orchestrator.spec.problems import mapping


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


def claim_path(
    section: str, key: Any, given_as: dict[str, str], problems: list[str], seed_problem: str | None = None
) -> str | None:
    """The expanded key path of a grid / search-space key, or None (with a problem) when it is not a
    config path or names a path another key of the same section already took."""
    path = expand_key(key) if isinstance(key, str) else key
    why = seed_problem if (seed_problem and path == "seed") else path_problem(path)
    if why is not None:
        problems.append(f"{section}.{key}: {why}")
        return None
    if path in given_as:
        problems.append(f"{section}.{path}: given twice (as {given_as[path]} and {key})")
        return None
    given_as[path] = key
    return path


def check_grid(grid: Any, problems: list[str]) -> tuple[dict[str, list], Any]:
    """Returns (expanded path -> values for the valid keys, the `seed` entry or None)."""
    grid = mapping("grid", grid, problems)
    out: dict[str, list] = {}
    given_as: dict[str, str] = {}
    seeds = None
    for key, values in grid.items():
        if key == "seed":
            seeds = values
            continue
        path = claim_path("grid", key, given_as, problems)
        if path is None:
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"grid.{key}: must be a non-empty list")
            continue
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            problems.append(f"grid.{key}: {fmt_value(repeated[0])} is listed twice")
            continue
        out[path] = values
    return out, seeds


def check_points(points: Any, problems: list[str]) -> list[dict] | None:
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
            path = claim_path(
                f"points[{i}]", key, given_as, problems, seed_problem="seeds are not points; list them in seeds"
            )
            if path is not None:
                expanded[path] = value
        if expanded in out:
            problems.append(f"points[{i}]: the same point as points[{out.index(expanded)}]")
            continue
        out.append(expanded)
    return out


SEED_POOLS = ("same", "per-seed")


def check_seeds(seeds: Any, grid_seeds: Any, problems: list[str]) -> tuple[tuple[int, ...], str]:
    """`seeds: [0, 1, 2]` or `seeds: {train: [0, 1, 2], pool: same | per-seed}` (or `grid.seed`).

    Returns (training seeds, pool design). `same`: every seed trains on the base pool and keep masks;
    `per-seed`: seed s draws its own pool and keep masks (data.pool_seed = base pool_seed + s), so a
    replicate repeats the data split too."""
    where, pool = "seeds", "same"
    if grid_seeds is not None:
        if seeds is not None:
            problems.append("grid.seed: give the seeds as seeds or as grid.seed, not both")
            return (0,), pool
        seeds, where = grid_seeds, "grid.seed"
    if isinstance(seeds, dict):
        unknown = [k for k in seeds if k not in ("train", "pool")]
        if unknown:
            problems.append(f"seeds.{unknown[0]}: unknown key; allowed: train, pool")
        pool = seeds.get("pool", "same")
        if pool not in SEED_POOLS:
            problems.append(f"seeds.pool: must be one of {', '.join(SEED_POOLS)}, got {pool!r}")
            pool = "same"
        seeds, where = seeds.get("train"), "seeds.train"
    if seeds is None:
        return (0,), pool
    if not (isinstance(seeds, list) and seeds and all(is_int(s) and s >= 0 for s in seeds)):
        problems.append(f"{where}: must be a non-empty list of integers >= 0")
        return (0,), pool
    repeated = [s for i, s in enumerate(seeds) if s in seeds[:i]]
    if repeated:
        problems.append(f"{where}: {repeated[0]} is listed twice")
    return tuple(dict.fromkeys(seeds)), pool


def pool_seed_of(run: dict, seed: int, pool: str) -> int:
    """The pool seed a trial of training seed `seed` uses under the pool design `pool`."""
    base = int(run["data"]["pool_seed"])
    return base + seed if pool == "per-seed" else base


def expand(
    base: dict, grid: dict[str, list], n_models: int, points: list[dict] | None = None, pool: str = "same"
) -> tuple[list[Group], list[str]]:
    """Resolve every grid point (or every one of `points`, when given). Returns (groups, problems).

    A failing point is reported once, blamed on the smallest cause that explains it: the base, when
    the base alone and every point fail with that message; else one grid value, when every point
    with that value fails with it (`grid point method=madry: ...`); else the point's full label.
    """
    if points is not None:
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
        name = label(params)
        if isinstance(res, str):
            if res == base_error:
                problems.append(f"base: {res}")
                continue
            culprit = next((k for k in params if outcomes[value_key(k, params[k])] == {res}), None)
            where = name if culprit is None else label({culprit: params[culprit]})
            problems.append(f"grid point {where}: {res}")
            continue
        gid = group_id(res, pool=pool)
        if gid in seen:  # e.g. lambda=0 with several thresholds: the same run, trained once
            j = seen[gid]
            groups[j] = dataclasses.replace(groups[j], aliases=groups[j].aliases + (name,))
            continue
        seen[gid] = len(groups)
        groups.append(Group(group_id=gid, label=name, params=params, run=res))
    return groups, list(dict.fromkeys(problems))
