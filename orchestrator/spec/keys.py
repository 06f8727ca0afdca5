"""Run configs inside a spec: key paths ("demem.lambda"), their shorthands, resolving a point of the
grid into a RunConfig dict, and the group id of a resolved run.

Key paths are the keys of RunConfig.to_dict() joined with dots ("demem.lambda", "eval.attack.steps").
Shorthands: method -> method.name, dataset -> data.dataset, arch -> train.arch, epochs -> train.epochs,
lambda -> demem.lambda, threshold -> demem.risk_threshold. Paths are stored expanded; labels use the
shorthand names.
"""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from demem.artifacts import group_key
from demem.config import leaf_hint, normalise, type_problems
from demem.train import RunConfig
from orchestrator.fmt import fmt_value

SHORTHANDS = {
    "method": "method.name",
    "dataset": "data.dataset",
    "arch": "train.arch",
    "epochs": "train.epochs",
    "lambda": "demem.lambda",
    "threshold": "demem.risk_threshold",
}
_SHORT_NAME = {path: short for short, path in SHORTHANDS.items()}

# Set per trial by the spec, never by the user's run config.
PER_TRIAL = {
    "n_models": "set by audit.models",
    "model_index": "every trial sets its own",
    "seed": "set by seeds",
}


def short_name(path: str) -> str:
    """The shorthand of an expanded key path where it has one ("demem.lambda" -> "lambda")."""
    return _SHORT_NAME.get(path, path)


def expand_key(key: str) -> str:
    return SHORTHANDS.get(key, key)


def label(params: dict[str, Any]) -> str:
    """'method=trades lambda=0.4' (shorthand names), or 'base' for no parameters."""
    return " ".join(f"{short_name(p)}={fmt_value(v)}" for p, v in params.items()) or "base"


def run_hint(path: str) -> tuple[Any, str | None]:
    """(type hint of the run setting at `path`, None), or (None, why the path is not a setting)."""
    return leaf_hint(RunConfig, path, "a run config")


def path_problem(path: Any) -> str | None:
    """Why `path` (already expanded) cannot be varied, or None."""
    if not isinstance(path, str) or not path:
        return "unknown key path"
    if path in PER_TRIAL:
        return f"{PER_TRIAL[path]}; not allowed here"
    return run_hint(path)[1]


def _set_path(tree: dict, path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = tree
    for part in parents:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[last] = copy.deepcopy(value)


def resolve_run(base: dict, overrides: dict[str, Any], n_models: int, *, seed: int = 0, model_index: int = 0) -> dict:
    """The RunConfig dict of `base` with `overrides` (expanded key path -> value) applied.

    Integers given for float settings become floats, so `lambda: 0` and `lambda: 0.0` are one config.

    Raises:
        ValueError: the config is invalid (`RunConfig.from_dict`'s message, or a setting of the wrong
            type, e.g. "train.lr must be a finite number, got '1e-2'").
    """
    tree = copy.deepcopy(base)
    for path, value in overrides.items():
        _set_path(tree, path, value)
    tree.update(n_models=n_models, seed=seed, model_index=model_index)
    types_wrong = type_problems(RunConfig, tree)
    if types_wrong:
        raise ValueError("; ".join(types_wrong))
    try:
        run = RunConfig.from_dict(tree)
    except (TypeError, KeyError, AttributeError) as e:  # a value of a shape the config code did not expect
        raise ValueError(str(e)) from e
    return normalise(RunConfig, run.to_dict())


def group_id(run: dict, pool: str = "same") -> str:
    """12 hex chars identifying a group: sha256 of the canonical JSON of the resolved run dict without
    the per-model keys (`demem.artifacts.PER_MODEL_KEYS`: seed, model_index, data.root,
    data.download) and n_models, together with n_models, and with the pool design when every seed
    draws its own pool (`seeds.pool: per-seed`; the ids of `same` are those of older experiments)."""
    d = normalise(RunConfig, group_key(run))
    n_models = d.pop("n_models")
    key: dict[str, Any] = {"run": d, "n_models": n_models}
    if pool != "same":
        key["pool"] = pool
    payload = json.dumps(key, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(payload.encode()).hexdigest()[:12]
