"""Tests for orchestrator.spec: every validation rule with its exact message, grid expansion, group ids,
trials, the shipped search spaces, and the local-data check. No Ray."""

from __future__ import annotations

import copy
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from demem.membership import keep_mask
from demem.methods import METHODS
from demem.privacy import mia
from demem.privacy.attacks import MIA
from demem.privacy.audit import ATTACK_SETS, LIRA_MIN_SHADOWS, MIA_ATTACKS
from demem.registry import BUILTIN
from demem.train import RunConfig
from orchestrator import spec as speclib
from orchestrator.spec import (
    AuditSpec,
    ExperimentSpec,
    Objective,
    ResourcesSpec,
    SearchSpec,
    SpecError,
    group_id,
    load_spec,
    resolve_run,
    validate,
)

from ..helpers import needs_fashion

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("isolated_data_env")


def good() -> dict:
    """A small valid spec: 2 x 2 grid, 4 models per group."""
    return {
        "name": "t",
        "base": {"data": {"dataset": "fashion-mnist", "pool_size": 64}, "train": {"epochs": 2}},
        "grid": {"method": ["pgd_at", "trades"], "lambda": [0.0, 0.4]},
        "seeds": [0, 1],
        "audit": {"models": 4, "attacks": ["rmia_online", "loss"]},
        "resources": {"cpu": 1, "gpu": 0},
    }


DELETE = object()


def patched(*changes: tuple[str, object]) -> dict:
    """good() with ("a.b.c", value) changes; DELETE removes a key. Dotted grid/space keys use '|' here."""
    raw = good()
    for path, value in changes:
        *parents, last = [p.replace("|", ".") for p in path.split(".")]
        node = raw
        for p in parents:
            node = node.setdefault(p, {})
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    return raw


def problems_of(raw, **kwargs) -> list[str]:
    with pytest.raises(SpecError) as err:
        validate(raw, check_data=False, **kwargs)
    assert str(err.value) == "\n".join(err.value.problems)
    assert isinstance(err.value, ValueError)
    return err.value.problems


KNOWN_METHODS = ", ".join(METHODS.names())
# The installed plugins' attacks that run on 4 models (examples/plugin's calibrated_loss), listed last.
PLUGIN_ATTACKS = "".join(f", {n}" for n in MIA_ATTACKS if MIA.origin(n) != BUILTIN and MIA.get(n).min_models <= 4)
DP_METHODS = [n for n in METHODS if METHODS.get(n).dp]

# (id, spec, exact problem line or regex it must produce)
BAD = [
    ("name-missing", patched(("name", DELETE)), "name: required"),
    *(
        (f"name-{i}", patched(("name", bad)), re.compile(r"name: must be one path component .*, got .*"))
        for i, bad in enumerate(["my exp!", 12, ".", "..", "../x", "a/b", "-x", ".hidden", "x" * 101, ""])
    ),
    (
        "top-unknown",
        patched(("foo", 1)),
        "foo: unknown key; allowed: audit, base, failure, grid, max_concurrent, name, points, resources, search, seeds",
    ),
    (
        "top-underscore",  # no key is exempt: "_" keys once let a test hook ride in a user's spec
        patched(("_test_fail", 5)),
        "_test_fail: unknown key; allowed: audit, base, failure, grid, max_concurrent, name, points, resources, "
        "search, seeds",
    ),
    *(
        (f"underscore-{where}", patched((f"{where}._x", 1)), f"{where}._x: unknown key; allowed: {allowed}")
        for where, allowed in (
            ("audit", "attacks, keep_models, models, queries, targets"),
            ("resources", "cpu, gpu"),
            ("failure", "max_retries"),
        )
    ),
    (
        "underscore-base",
        patched(("base._x", 1)),
        "base: unknown key '_x'; allowed: attack, data, demem, dp, eval, method, model_index, n_models, seed, train",
    ),
    (
        "underscore-base-train",
        patched(("base.train._x", 1)),
        re.compile(r"base: unknown key 'train\._x'; allowed: .*"),
    ),
    ("base-type", patched(("base", [1])), "base: must be a mapping or null"),
    (
        "base-method",
        patched(("grid", None), ("base.method", {"name": "madry"})),
        f"base: unknown method 'madry'; known: {KNOWN_METHODS}",
    ),
    (
        "base-typo-with-grid",
        patched(("base.trian", {})),
        "base: unknown key 'trian'; allowed: attack, data, demem, dp, eval, method, model_index, n_models, seed, train",
    ),
    ("base-n_models", patched(("base.n_models", 8)), "base.n_models: set by audit.models; not allowed here"),
    ("base-seed", patched(("base.seed", 1)), "base.seed: set by seeds; not allowed here"),
    (
        "base-model_index",
        patched(("base.model_index", 1)),
        "base.model_index: every trial sets its own; not allowed here",
    ),
    (
        "base-lr-yaml-text",
        patched(("base.train.lr", "1e-2")),
        "base: train.lr must be a finite number, got '1e-2' (YAML reads numbers like 1e-2 as text: write 1.0e-2)",
    ),
    (
        "base-epochs-float",
        patched(("base.train.epochs", 2.5)),
        "base: train.epochs must be an integer or null, got 2.5",
    ),
    (
        "grid-point-single-value",
        patched(("grid.method", ["pgd_at", "madry"])),
        f"grid point method=madry: unknown method 'madry'; known: {KNOWN_METHODS}",
    ),
    (
        "grid-point-combination",
        patched(("base.dp", {"noise_multiplier": 1.0}), ("grid.method", ["dp_sgd", "pgd_at"])),
        f"grid point method=pgd_at: dp settings are given but method 'pgd_at' is not a DP method; use one of "
        f"{DP_METHODS}",
    ),
    (
        "grid-point-full-label",
        patched(("grid", {"threshold": [0.0, 0.5], "demem.risk": ["loss", "memorization"]})),
        "grid point demem.risk=memorization: demem.risk 'memorization' needs demem.risk_file (the audit's per-sample "
        "table)",
    ),
    (
        "grid-unknown-path",
        patched(("grid.demem|lamda", [0.0])),
        "grid.demem.lamda: unknown key path; demem has: lambda, risk, risk_file, risk_threshold, threshold_mode",
    ),
    (
        "grid-unknown-top",
        patched(("grid.optimizer", ["sgd"])),
        "grid.optimizer: unknown key path; a run config has: attack, data, demem, dp, eval, method, model_index, "
        "n_models, seed, train",
    ),
    (
        "grid-path-through-setting",
        patched(("grid.train|lr|x", [1])),
        "grid.train.lr.x: unknown key path; train.lr is a setting, not a section",
    ),
    (
        "grid-section",
        patched(("grid.dp", [{}])),
        "grid.dp: names a section, not a setting; use one of its keys: accountant, delta, max_grad_norm, "
        "noise_multiplier, target_epsilon",
    ),
    (
        "grid-alias-field-name",
        patched(("grid.demem|lam", [0.1])),
        "grid.demem.lam: unknown key path; demem has: lambda, risk, risk_file, risk_threshold, threshold_mode",
    ),
    ("grid-empty-list", patched(("grid.method", [])), "grid.method: must be a non-empty list"),
    ("grid-scalar", patched(("grid.lambda", 0.4)), "grid.lambda: must be a non-empty list"),
    ("grid-n_models", patched(("grid.n_models", [4])), "grid.n_models: set by audit.models; not allowed here"),
    (
        "grid-twice",
        patched(("grid.method|name", ["mart"])),
        "grid.method.name: given twice (as method and method.name)",
    ),
    ("grid-repeat", patched(("grid.lambda", [0, 0.0])), "grid.lambda: 0 is listed twice"),
    ("grid-type", patched(("grid", [1])), "grid: must be a mapping or null"),
    (
        "points-with-grid",
        patched(("points", [{"lambda": 0.4}])),
        "points: cannot be combined with grid; give one of them",
    ),
    (
        "points-not-list",
        patched(("grid", None), ("points", {"lambda": 0.4})),
        "points: must be a non-empty list of mappings like {demem.lambda: 0.4}",
    ),
    (
        "points-item",
        patched(("grid", None), ("points", [3])),
        "points[0]: must be a mapping of key paths to values ({} for the base)",
    ),
    (
        "points-repeat",
        patched(("grid", None), ("points", [{"lambda": 0.4}, {"demem.lambda": 0.4}])),
        "points[1]: the same point as points[0]",
    ),
    (
        "points-bad-path",
        patched(("grid", None), ("points", [{"demem.lamda": 0.4}])),
        "points[0].demem.lamda: unknown key path; demem has: lambda, risk, risk_file, risk_threshold, threshold_mode",
    ),
    (
        "points-bad-value",
        patched(("grid", None), ("points", [{"lambda": 0.4}, {"method": "madry"}])),
        f"grid point method=madry: unknown method 'madry'; known: {KNOWN_METHODS}",
    ),
    ("seeds-empty", patched(("seeds", [])), "seeds: must be a non-empty list of integers >= 0"),
    ("seeds-negative", patched(("seeds", [0, -1])), "seeds: must be a non-empty list of integers >= 0"),
    ("seeds-scalar", patched(("seeds", 0)), "seeds: must be a non-empty list of integers >= 0"),
    ("seeds-bool", patched(("seeds", [True])), "seeds: must be a non-empty list of integers >= 0"),
    ("seeds-repeat", patched(("seeds", [1, 1])), "seeds: 1 is listed twice"),
    (
        "grid-seed-bad",
        patched(("seeds", DELETE), ("grid.seed", [-2])),
        "grid.seed: must be a non-empty list of integers >= 0",
    ),
    ("seeds-both", patched(("grid.seed", [0])), "grid.seed: give the seeds as seeds or as grid.seed, not both"),
    (
        "seeds-pool-bad",
        patched(("seeds", {"train": [0], "pool": "fresh"})),
        "seeds.pool: must be one of same, per-seed, got 'fresh'",
    ),
    (
        "seeds-map-key",
        patched(("seeds", {"train": [0], "pools": "same"})),
        "seeds.pools: unknown key; allowed: train, pool",
    ),
    (
        "seeds-train-bad",
        patched(("seeds", {"train": [], "pool": "same"})),
        "seeds.train: must be a non-empty list of integers >= 0",
    ),
    ("audit-missing", patched(("audit", DELETE)), "audit.models: required"),
    ("audit-models-missing", patched(("audit.models", DELETE)), "audit.models: required"),
    ("audit-models-1", patched(("audit.models", 1)), "audit.models: must be an integer >= 2"),
    ("audit-models-float", patched(("audit.models", 4.0)), "audit.models: must be an integer >= 2"),
    (
        "audit-lira-2",
        patched(("audit.models", 2), ("audit.attacks", ["lira_online_fixed"])),
        "audit.models: the audit needs every sample in at least 2 models and out of at least 2, so at least 4 models "
        "per group, got 2",
    ),
    (
        "audit-lira-shorthand-5",
        patched(("audit.models", 5), ("audit.attacks", ["lira"])),
        re.compile(
            r"audit\.attacks: lira_online, lira_online_fixed, lira_offline, lira_offline_fixed need at least 6 "
            r"models per group, got 5: .*"
        ),
    ),
    (
        "audit-threshold-only-3",
        patched(("audit.models", 3), ("audit.attacks", ["loss"])),
        "audit.models: the audit needs every sample in at least 2 models and out of at least 2, so at least 4 models "
        "per group, got 3",
    ),
    (
        "audit-fixed-variance-4",
        patched(("audit.attacks", "lira_online_fixed,lira_offline_fixed,loss")),
        "audit.attacks: lira_online_fixed, lira_offline_fixed need at least 6 models per group, got 4: each sample "
        "needs 2 IN and 2 OUT shadows besides the target and its partner to estimate a variance (the fixed variants "
        "use the median of the per-sample ones); use more models, or attacks that run on 4: rmia_online, rmia_offline, "
        "loss, confidence, entropy, modified_entropy, rmia_online_adv, rmia_offline_adv, loss_adv, confidence_adv, "
        "entropy_adv, modified_entropy_adv, boundary_linf, boundary_l2" + PLUGIN_ATTACKS,
    ),
    (
        "audit-unknown-attack",
        patched(("audit.attacks", ["loss", "lira_magic", "gap"])),
        f"audit.attacks: unknown attack(s) 'lira_magic', 'gap'; known: {', '.join(MIA_ATTACKS)}, "
        f"and {', '.join(ATTACK_SETS)}",
    ),
    ("audit-attacks-empty", patched(("audit.attacks", [])), "audit.attacks: must be a non-empty list of attack names"),
    ("audit-targets", patched(("audit.targets", 0)), "audit.targets: must be an integer >= 1 or null"),
    ("audit-targets-too-many", patched(("audit.targets", 5)), "audit.targets: must be <= audit.models (4), got 5"),
    ("audit-queries", patched(("audit.queries", 0)), "audit.queries: must be an integer >= 1 or null"),
    (
        "audit-queries-recorded",
        patched(("audit.queries", 3)),
        "audit.queries: 3 asked for, but the models record only 2 (eval.queries) at grid point method=pgd_at lambda=0",
    ),
    (
        "audit-unknown-key",
        patched(("audit.shadows", 3)),
        "audit.shadows: unknown key; allowed: attacks, keep_models, models, queries, targets",
    ),
    ("audit-type", patched(("audit", [4])), "audit: must be a mapping"),
    ("cpu-zero", patched(("resources.cpu", 0)), "resources.cpu: must be > 0"),
    ("cpu-text", patched(("resources.cpu", "two")), "resources.cpu: must be > 0"),
    ("gpu-negative", patched(("resources.gpu", -1)), "resources.gpu: must be >= 0"),
    (
        "gpu-1.5",
        patched(("resources.gpu", 1.5)),
        "resources.gpu: a trial gets a fraction of one GPU or whole GPUs, got 1.5",
    ),
    ("resources-unknown", patched(("resources.memory", 4)), "resources.memory: unknown key; allowed: cpu, gpu"),
    ("max-concurrent-0", patched(("max_concurrent", 0)), "max_concurrent: must be an integer >= 1 or null"),
    ("max-concurrent-text", patched(("max_concurrent", "4")), "max_concurrent: must be an integer >= 1 or null"),
    ("retries-negative", patched(("failure.max_retries", -1)), "failure.max_retries: must be an integer >= 0"),
    (
        "failure-unknown",
        patched(("failure.max_failures", 1)),
        "failure.max_failures: unknown key; allowed: max_retries",
    ),
]


def search(**changes) -> dict:
    s = {
        "algorithm": "optuna",
        "num_samples": 4,
        "objectives": [{"robust_acc": "max"}, {"mia_tpr_at_1pct": "min"}],
        "space": {"demem.lambda": {"uniform": [0, 1]}, "train.lr": {"loguniform": [0.01, 0.2]}},
        "scheduler": "asha",
    }
    s.update(changes)
    return s


def with_search(**changes) -> dict:
    return patched(("grid", DELETE), ("search", search(**changes)))


BAD += [
    ("search-and-grid", patched(("search", search())), "search: cannot be combined with grid; give one of them"),
    ("search-type", patched(("grid", DELETE), ("search", [1])), "search: must be a mapping or null"),
    (
        "search-unknown",
        with_search(trials=3),
        "search.trials: unknown key; allowed: algorithm, num_samples, objectives, scheduler, space",
    ),
    ("search-algorithm", with_search(algorithm="hyperopt"), "search.algorithm: must be one of optuna, got 'hyperopt'"),
    ("search-num-samples", with_search(num_samples=0), "search.num_samples: must be an integer >= 1"),
    ("search-num-samples-missing", with_search(num_samples=None), "search.num_samples: must be an integer >= 1"),
    (
        "search-objectives-empty",
        with_search(objectives=[]),
        "search.objectives: must be a non-empty list like [{robust_acc: max}, {mia_tpr_at_1pct: min}]",
    ),
    (
        "search-objective-metric",
        with_search(objectives=[{"accuracy": "max"}]),
        "search.objectives[0]: unknown metric 'accuracy'; known: natural_acc, robust_acc, mia_auc, mia_tpr_at_1pct, "
        "mia_tpr_at_0_1pct",
    ),
    (
        "search-objective-mode",
        with_search(objectives=[{"robust_acc": "maximize"}]),
        "search.objectives[0].robust_acc: must be max or min, got 'maximize'",
    ),
    (
        "search-objective-shape",
        with_search(objectives=[{"robust_acc": "max", "mia_auc": "min"}]),
        "search.objectives[0]: must be one mapping metric: max | min, like {robust_acc: max}",
    ),
    (
        "search-objective-twice",
        with_search(objectives=[{"mia_auc": "min"}, {"mia_auc": "max"}]),
        "search.objectives: mia_auc is listed twice",
    ),
    ("search-scheduler", with_search(scheduler="pbt"), "search.scheduler: must be asha or null, got 'pbt'"),
    (
        "search-space-empty",
        with_search(space={}),
        "search.space: must be a non-empty mapping of key paths to distributions",
    ),
    (
        "search-space-path",
        with_search(space={"demem.lamda": {"uniform": [0, 1]}}),
        "search.space.demem.lamda: unknown key path; demem has: "
        "lambda, risk, risk_file, risk_threshold, threshold_mode",
    ),
    (
        "search-space-seed",
        with_search(space={"seed": {"choice": [0, 1]}}),
        "search.space.seed: seeds are not searched; list them in seeds",
    ),
    (
        "search-space-two-kinds",
        with_search(space={"lambda": {"uniform": [0, 1], "choice": [0.1]}}),
        "search.space.lambda: must have exactly one of uniform, loguniform, choice",
    ),
    (
        "search-space-twice",
        with_search(space={"lambda": {"uniform": [0, 1]}, "demem.lambda": {"choice": [0.1]}}),
        "search.space.demem.lambda: given twice (as lambda and demem.lambda)",
    ),
    (
        "search-space-range",
        with_search(space={"lambda": {"uniform": [1, 0]}}),
        "search.space.lambda.uniform: must be [low, high] with low < high",
    ),
    (
        "search-space-log",
        with_search(space={"train.lr": {"loguniform": [0, 0.1]}}),
        "search.space.train.lr.loguniform: must be [low, high] with 0 < low < high",
    ),
    (
        "search-space-choice",
        with_search(space={"method": {"choice": []}}),
        "search.space.method.choice: must be a non-empty list",
    ),
    (
        "search-space-int-uniform",
        with_search(space={"epochs": {"uniform": [1, 5]}}),
        "search.space.epochs: uniform samples real numbers, but train.epochs takes an integer or null; use choice",
    ),
    (
        "search-space-out-of-range",
        with_search(space={"threshold": {"uniform": [0, 1]}}),
        "search.space.threshold: 1: demem.risk_threshold must be in [0, 1), got 1",
    ),
    (
        "search-space-bad-choice",
        with_search(space={"method": {"choice": ["trades", "madry"]}}),
        f"search.space.method: madry: unknown method 'madry'; known: {KNOWN_METHODS}",
    ),
]


@pytest.mark.parametrize("raw, expected", [pytest.param(r, e, id=i) for i, r, e in BAD])
def test_bad_spec_reports_the_problem(raw, expected):
    problems = problems_of(raw)
    if isinstance(expected, re.Pattern):
        assert any(expected.fullmatch(p) for p in problems), problems
    else:
        assert expected in problems, problems


def test_every_problem_is_reported_at_once():
    raw = patched(
        ("name", DELETE),
        ("foo", 1),
        ("grid.demem|lamda", [0.1]),
        ("grid.method", ["pgd_at", "madry"]),
        ("seeds", []),
        ("audit.models", 1),
        ("audit.attacks", ["nope"]),
        ("resources.cpu", 0),
        ("resources.gpu", -1),
        ("max_concurrent", 0),
        ("failure.max_retries", -1),
    )
    problems = problems_of(raw)
    expected = [
        "name: required",
        "foo: unknown key; allowed: audit, base, failure, grid, max_concurrent, name, points, resources, search, seeds",
        "grid.demem.lamda: unknown key path; demem has: lambda, risk, risk_file, risk_threshold, threshold_mode",
        f"grid point method=madry: unknown method 'madry'; known: {KNOWN_METHODS}",
        "seeds: must be a non-empty list of integers >= 0",
        "audit.models: must be an integer >= 2",
        f"audit.attacks: unknown attack(s) 'nope'; known: {', '.join(MIA_ATTACKS)}, and {', '.join(ATTACK_SETS)}",
        "resources.cpu: must be > 0",
        "resources.gpu: must be >= 0",
        "max_concurrent: must be an integer >= 1 or null",
        "failure.max_retries: must be an integer >= 0",
    ]
    assert sorted(problems) == sorted(expected)
    assert len(problems) == len(set(problems))


def test_a_bad_base_is_reported_once_not_per_grid_point():
    problems = problems_of(patched(("base.method", {"name": "madry"}), ("grid", {"lambda": [0.0, 0.1, 0.2]})))
    assert problems == [f"base: unknown method 'madry'; known: {KNOWN_METHODS}"]
    # ...but a grid that overrides the broken setting blames the grid value, not the base.
    problems = problems_of(patched(("base.method", {"name": "dp_sgd"}), ("grid", {"dp.noise_multiplier": [None, 1.0]})))
    assert problems == [
        "grid point dp.noise_multiplier=null: method 'dp_sgd' needs dp.noise_multiplier or dp.target_epsilon"
    ]


def test_available_resources():
    lines = problems_of(patched(("resources", {"cpu": 4, "gpu": 1})), available={"CPU": 2, "GPU": 0})
    assert "resources: a trial needs 4 CPU but the largest node has 2; no node could satisfy it" in lines
    assert "resources: a trial needs 1 GPU but no node has one; no node could satisfy it" in lines
    lines = problems_of(patched(("resources.gpu", 2)), available={"CPU": 8, "GPU": 1})
    assert lines == ["resources: a trial needs 2 GPU but the largest node has 1; no node could satisfy it"]
    ok = validate(patched(("resources", {"cpu": 2, "gpu": 0.25})), check_data=False, available={"CPU": 2, "GPU": 1})
    assert ok.resources == ResourcesSpec(cpu=2.0, gpu=0.25)


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nbase:\n  data: {dataset: fashion-mnist\naudit: {models: 4}\n")
    with pytest.raises(SpecError) as err:
        load_spec(path)
    (line,) = err.value.problems
    assert line.startswith(f"{path}:4: YAML syntax error: ")
    with pytest.raises(SpecError, match="cannot read the spec"):
        load_spec(tmp_path / "missing.yaml")
    (tmp_path / "empty.yaml").write_text("# nothing\n")
    with pytest.raises(SpecError, match="the spec is empty"):
        load_spec(tmp_path / "empty.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(SpecError, match="spec: must be a mapping of settings, got list"):
        load_spec(tmp_path / "list.yaml")


# ---------------------------------------------------------------------------------------------------
# A good spec: groups, ids, trials, plan
# ---------------------------------------------------------------------------------------------------


def test_groups_labels_and_params():
    spec = validate(good(), check_data=False)
    assert spec.grid == {"method.name": ["pgd_at", "trades"], "demem.lambda": [0.0, 0.4]}
    groups = spec.groups()
    assert [g.label for g in groups] == [
        "method=pgd_at lambda=0",
        "method=pgd_at lambda=0.4",
        "method=trades lambda=0",
        "method=trades lambda=0.4",
    ]
    assert groups[3].params == {"method.name": "trades", "demem.lambda": 0.4}
    assert groups[3].run["method"]["name"] == "trades" and groups[3].run["demem"]["lambda"] == 0.4
    for g in groups:
        assert (g.run["n_models"], g.run["seed"], g.run["model_index"]) == (4, 0, 0)
        assert g.run["data"]["pool_size"] == 64 and g.run["train"]["epochs"] == 2
        assert re.fullmatch(r"[0-9a-f]{12}", g.group_id)
    assert len({g.group_id for g in groups}) == 4
    assert spec.audit == AuditSpec(models=4, targets=None, attacks=("rmia_online", "loss"), queries=None)
    assert (spec.seeds, spec.max_concurrent, spec.max_retries, spec.search) == ((0, 1), None, 1, None)
    assert spec.raw == good()
    no_grid = validate(patched(("grid", DELETE)), check_data=False)
    assert [g.label for g in no_grid.groups()] == ["base"] and no_grid.groups()[0].params == {}


def test_trials_count_order_and_runs():
    spec = validate(good(), check_data=False)
    trials = spec.trials()
    assert len(trials) == 4 * 2 * 4
    assert len({t.trial_key for t in trials}) == len(trials)
    groups = spec.groups()
    expected = [(g.group_id, s, m) for g in groups for s in (0, 1) for m in range(4)]
    assert [(t.group_id, t.seed, t.model_index) for t in trials] == expected
    t = trials[13]
    assert t.trial_key == f"{t.group_id}-s{t.seed}-m{t.model_index:03d}" == f"{groups[1].group_id}-s1-m001"
    for t in trials:
        run = RunConfig.from_dict(t.run)
        assert (run.seed, run.model_index, run.n_models) == (t.seed, t.model_index, 4)
        assert run.to_dict() == t.run  # a fixed point: resolving again changes nothing
    assert spec.groups()[0].run["seed"] == 0  # trials copy the group's run, they do not share it


def test_group_id_is_stable_and_content_keyed():
    a = validate(good(), check_data=False)
    # Same spec written with other key orders (and shorthands spelled out): same ids.
    raw = good()
    raw["base"] = {"train": {"epochs": 2}, "data": {"pool_size": 64, "dataset": "fashion-mnist"}}
    raw["grid"] = {"method.name": ["pgd_at", "trades"], "demem.lambda": [0, 0.4]}
    b = validate(raw, check_data=False)
    assert [g.group_id for g in a.groups()] == [g.group_id for g in b.groups()]
    assert [g.group_id for g in a.groups()] == [g.group_id for g in validate(good(), check_data=False).groups()]
    # A pinned value: a change to the hashing, or a new RunConfig field, changes every group id and so
    # orphans stored results. If this fails on purpose, say so in CHANGELOG.md.
    # The precision is pinned: "auto" resolves by the machine (bf16 on a CPU with native bf16).
    train = {"epochs": 2, "precision": "fp32"}
    run = resolve_run({"data": {"pool_size": 64}, "train": train}, {}, 4)
    assert group_id(run) == "f535e1b57f58" == group_id(copy.deepcopy(run))
    # Where the data lie is not part of the group; what they are, and M, are.
    moved = resolve_run({"data": {"pool_size": 64, "root": "/elsewhere", "download": True}, "train": train}, {}, 4)
    assert group_id(moved) == group_id(run)
    assert group_id(resolve_run({"data": {"pool_size": 65}, "train": train}, {}, 4)) != group_id(run)
    assert group_id(resolve_run({"data": {"pool_size": 64}, "train": train}, {}, 6)) != group_id(run)
    assert group_id(
        resolve_run({"data": {"pool_size": 64}, "train": {**train, "precision": "bf16"}}, {}, 4)
    ) != group_id(run)
    assert group_id({**run, "seed": 3, "model_index": 2}) == group_id(run)
    # The id ignores the labels: the same config through a grid or through the base is one group.
    via_grid = validate(patched(("grid", {"lambda": [0.4]})), check_data=False).groups()[0]
    via_base = validate(patched(("grid", DELETE), ("base.demem", {"lambda": 0.4})), check_data=False).groups()[0]
    assert via_grid.group_id == via_base.group_id and via_grid.label != via_base.label


def test_integers_for_float_settings_are_one_config():
    a = resolve_run({"demem": {"lambda": 0, "risk_threshold": 0}, "train": {"lr": 1, "lr_milestones": [0.5]}}, {}, 4)
    b = resolve_run({"demem": {"lambda": 0.0, "risk_threshold": 0.0}, "train": {"lr": 1.0}}, {}, 4)
    assert isinstance(a["demem"]["lambda"], float) and isinstance(a["train"]["lr"], float)
    assert group_id(a) != group_id(b)  # lr_milestones differ
    b = resolve_run(
        {"demem": {"lambda": 0.0, "risk_threshold": 0.0}, "train": {"lr": 1.0, "lr_milestones": [0.5]}}, {}, 4
    )
    assert a == b and group_id(a) == group_id(b)


def test_plan_mentions_groups_trials_epochs_and_resources():
    spec = validate(good(), check_data=False)
    plan = spec.plan()
    assert plan.splitlines()[0] == "experiment t: 4 groups x 2 seeds x 4 models = 32 trials"
    for g in spec.groups():
        assert g.label in plan and g.group_id in plan
    assert "training: 64 epochs in all (32 trials x 2 epochs)" in plan
    assert "per trial: 1 CPU, 0 GPU;" in plan
    for gpu, text in (
        (0.25, "0.25 GPU (4 trials share a GPU)"),
        (0.3, "0.3 GPU (3 trials share a GPU)"),
        (1, "1 GPU;"),
    ):
        assert text in validate(patched(("resources", {"cpu": 1, "gpu": gpu})), check_data=False).plan()
    assert "rmia_online, loss" in plan
    assert "each target is attacked with 2 reference models (1 IN and 1 OUT per sample" in plan
    assert "LiRA needs at least 6 models" in plan


def test_seeds_per_seed_pool_gives_each_seed_its_own_keep_masks():
    same = validate(patched(("seeds", {"train": [0, 2]})), check_data=False)
    assert same.seed_pool == "same" and same.seeds == (0, 2)
    plain = validate(good(), check_data=False)
    assert [g.group_id for g in same.groups()] == [g.group_id for g in plain.groups()]
    assert {t.run["data"]["pool_seed"] for t in same.trials()} == {0}

    raw = patched(("seeds", {"train": [0, 2], "pool": "per-seed"}), ("base.data.pool_seed", 5))
    per = validate(raw, check_data=False)
    assert per.seed_pool == "per-seed"
    # A different design is a different group: never resumed into, never paired with the other.
    assert not {g.group_id for g in per.groups()} & {g.group_id for g in plain.groups()}
    assert {(t.seed, t.run["data"]["pool_seed"]) for t in per.trials()} == {(0, 5), (2, 7)}
    assert all(g.run["data"]["pool_seed"] == 5 for g in per.groups())
    assert "each seed draws its own pool and keep masks" in per.plan()
    assert "every seed uses the same pool" in plain.plan()
    with pytest.raises(SpecError, match="seeds.pool: per-seed needs"):
        validate({**with_search(), "seeds": {"train": [0], "pool": "per-seed"}}, check_data=False)


def test_grid_seed_means_seeds():
    raw = patched(("seeds", DELETE), ("grid.seed", [3, 4]))
    spec = validate(raw, check_data=False)
    assert spec.seeds == (3, 4) and "seed" not in spec.grid
    assert isinstance(spec, ExperimentSpec)


def test_search_is_normalised():
    spec = validate(
        patched(
            ("grid", DELETE),
            ("search", search(space={"lambda": {"uniform": [0, 1]}, "method": {"choice": ["pgd_at", "trades"]}})),
        ),
        check_data=False,
    )
    assert spec.search == SearchSpec(
        algorithm="optuna",
        num_samples=4,
        scheduler="asha",
        objectives=(Objective(metric="robust_acc", mode="max"), Objective(metric="mia_tpr_at_1pct", mode="min")),
        space={"demem.lambda": {"uniform": [0, 1]}, "method.name": {"choice": ["pgd_at", "trades"]}},
    )
    assert [g.label for g in spec.groups()] == ["base"]
    assert "search with optuna, 4 trials over lambda, method" in spec.plan()


@pytest.mark.parametrize("m", range(2, 10))
def test_audit_model_minimums_match_the_audit_code(m):
    """The spec's model minimums agree with what the audit code accepts on a real keep mask."""
    keep = keep_mask(m, 64, 0)
    signals = np.random.default_rng(0).normal(size=keep.shape)
    # run_audit refuses groups where some sample is in, or out of, fewer than 2 models.
    assert (keep.sum(0).min() >= 2 and (~keep).sum(0).min() >= 2) == (m >= speclib.MIN_MODELS_AUDIT)
    # As run_audit attacks: each target's complementary partner left out too.
    partners = [t ^ 1 if (t ^ 1) < m and np.array_equal(keep[t], ~keep[t ^ 1]) else -1 for t in range(m)]
    for attack in ATTACK_SETS["lira"]:  # the clean LiRAs: their estimator's variants
        variant = attack.removeprefix("lira_")
        try:
            mia.lira_scores(signals, keep, variant=variant, min_shadows=LIRA_MIN_SHADOWS, exclude=partners)
            works = True
        except ValueError:
            works = False
        assert works == (m >= speclib.MIN_MODELS_LIRA), (attack, m)


# ---------------------------------------------------------------------------------------------------
# The shipped search spaces, and the local-data check
# ---------------------------------------------------------------------------------------------------


@needs_fashion
def test_quickstart_spec():
    spec = load_spec(ROOT / "search_spaces" / "quickstart.yaml")
    groups = spec.groups()
    # PGD-AT undefended vs DeMem lambda 0.4; 6 seeds, each its own pool and keep masks; 4 models
    assert len(groups) == 2 and spec.audit.models == 4 and len(spec.trials()) == 48
    assert {g.run["method"]["name"] for g in groups} == {"pgd_at"}
    assert [g.run["demem"]["lambda"] for g in groups] == [0.0, 0.4]
    assert spec.seeds == (0, 1, 2, 3, 4, 5) and spec.seed_pool == "per-seed"
    assert len({t.run["data"]["pool_seed"] for t in spec.trials()}) == 6
    run = groups[0].run
    assert run["data"]["dataset"] == "fashion-mnist" and run["train"]["arch"] == "small-cnn"
    assert run["eval"]["attack"]["steps"] == 10 and run["eval"]["queries"] == 2
    # LiRA needs 6 models; the robust attacks read signals the quickstart records
    assert set(spec.audit.attacks) == {
        "rmia_online",
        "rmia_offline",
        "loss",
        "rmia_online_adv",
        "rmia_offline_adv",
        "loss_adv",
        "boundary_linf",
    }
    assert run["eval"]["adversarial"]["steps"] == 5 and run["eval"]["boundary"]["norms"] == ["linf"]
    assert spec.resources.cpu == 1


@needs_fashion
def test_tiny_spec():
    spec = load_spec(ROOT / "search_spaces" / "tiny.yaml")
    groups = spec.groups()
    assert [g.run["demem"]["lambda"] for g in groups] == [0.0, 0.4]
    assert len(spec.trials()) == 8 and spec.audit.models == 4
    assert all(g.run["train"]["epochs"] == 1 and g.run["data"]["pool_size"] == 512 for g in groups)
    assert groups[0].run["eval"]["attack"]["steps"] == 3
    assert spec.audit.attacks == ("rmia_online", "loss", "loss_adv")
    assert spec.resources == ResourcesSpec(cpu=1.0, gpu=0.0)
    assert groups[0].run["eval"]["adversarial"]["steps"] == 1 and groups[0].run["eval"]["boundary"] is None


def test_robust_attacks_need_their_signals_recorded():
    # By default every model records both robust signals (both norms of the boundary distance).
    spec = validate(patched(("audit.attacks", ["loss_adv", "boundary_linf", "boundary_l2"])), check_data=False)
    run = spec.groups()[0].run
    assert run["eval"]["adversarial"]["eps"] == pytest.approx(0.1) and run["eval"]["adversarial"]["steps"] == 10
    assert run["eval"]["boundary"]["norms"] == ["linf", "l2"] and run["eval"]["boundary"]["linf_max"] == 0.4
    # Switched off, or a norm not recorded: refused before anything trains, naming what to record.
    with pytest.raises(
        SpecError, match=r"loss_adv needs a signal the models would not record \(eval.adversarial is null\)"
    ):
        validate(
            patched(("audit.attacks", ["loss", "loss_adv"]), ("base.eval", {"adversarial": None})), check_data=False
        )
    with pytest.raises(SpecError, match=r"boundary_l2 needs .* \(eval.boundary.norms has no l2\)"):
        validate(
            patched(("audit.attacks", ["boundary_l2"]), ("base.eval", {"boundary": {"norms": ["linf"]}})),
            check_data=False,
        )
    with pytest.raises(SpecError, match=r"at grid point .*boundary=None|eval.boundary is null"):
        validate(patched(("audit.attacks", ["boundary_linf"]), ("base.eval", {"boundary": None})), check_data=False)


def test_missing_dataset_names_the_places_and_the_fetch_command(tmp_path, monkeypatch):
    monkeypatch.delenv("DEMEM_DATA", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    empty = tmp_path / "empty"
    empty.mkdir()
    raw = patched(("base.data", {"dataset": "cifar10", "root": str(empty), "pool_size": 64}))
    with pytest.raises(SpecError) as err:
        validate(raw)
    looked = ", ".join(str(p) for p in (empty / "cifar10", empty))  # an explicit root: only there
    line = (
        f"data.dataset: cifar10 is not present locally (looked in: {looked}); "
        "fetch it with: demem train --dataset cifar10 --download --data-root DIR"
    )
    assert err.value.problems == [line]  # four groups, one missing dataset: reported once
    assert len(validate(raw, check_data=False).groups()) == 4
    assert validate(patched(("base.data", {"dataset": "cifar10", "root": str(empty), "download": True})))
    # Two missing datasets: one line each.
    raw = patched(("base.data", {"root": str(empty), "pool_size": 64}), ("grid", {"dataset": ["cifar10", "svhn"]}))
    with pytest.raises(SpecError) as err:
        validate(raw)
    assert [p.split(" is not")[0] for p in err.value.problems] == ["data.dataset: cifar10", "data.dataset: svhn"]


def test_the_data_check_reads_the_files_as_the_trials_do(tmp_path, capsys):
    # Present is not enough: a batch replaced by a crafted pickle is refused at validate time, naming
    # the file, through the restricted unpickler (nothing runs), by `demem validate` and every load_spec.
    from orchestrator.cli import main

    from ..demem.test_data import RunsAShellCommand, write_cifar10

    write_cifar10(tmp_path / "c")
    raw = patched(("base.data", {"dataset": "cifar10", "root": str(tmp_path / "c"), "pool_size": 24}))
    assert len(validate(raw).groups()) == 4  # a real copy passes
    batch = tmp_path / "c" / "cifar-10-batches-py" / "data_batch_3"
    marker = tmp_path / "pwned"
    batch.write_bytes(pickle.dumps({b"data": RunsAShellCommand(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(SpecError) as err:
        validate(raw)
    assert err.value.problems == [
        f"data.dataset: cifar10: {batch}: not a CIFAR batch file: refusing posix.system: a CIFAR batch holds "
        "only numpy arrays, lists and dicts"
    ]  # four groups, one copy: read and reported once
    assert validate(raw, check_data=False)  # --no-data-check does not read
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["validate", str(spec)]) == 2
    err = capsys.readouterr().err
    assert f"{batch}: not a CIFAR batch file" in err and "Traceback" not in err
    batch.write_bytes(b"\x80\x02}q\x00(")  # truncated: EOFError inside the unpickler
    with pytest.raises(SpecError, match=r"data_batch_3: not a CIFAR batch file \(EOFError"):
        validate(raw)
    assert not marker.exists()


def test_an_integer_too_long_for_python_is_a_problem_for_run_and_validate(tmp_path):
    # Python will not convert a string of more than 4300 digits; run and validate both read through
    # load_spec, which reports it like any other problem (with its line), not as a traceback.
    path = tmp_path / "spec.yaml"
    path.write_text("name: t\naudit: {models: 4}\nmax_concurrent: " + "9" * 5000 + "\n")
    with pytest.raises(SpecError) as err:
        load_spec(path, check_data=False)
    assert err.value.problems == [f"{path}:3: an integer written with 5000 characters; at most 1000"]
    path.write_text("name: t\naudit: {models: 4}\nmax_concurrent: 0x" + "f" * 4000 + "\n")  # hex too
    with pytest.raises(SpecError, match="an integer written with 4002 characters"):
        load_spec(path, check_data=False)
    path.write_text("name: 2001-13-45\naudit: {models: 4}\n")  # a date PyYAML resolves but cannot build
    with pytest.raises(SpecError) as err:
        load_spec(path, check_data=False)
    assert err.value.problems == [f"{path}:1: cannot read this value: month must be in 1..12"]


def test_spec_module_does_not_import_ray():
    code = "import sys, orchestrator.spec; assert 'ray' not in sys.modules, 'ray imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_shipped_specs_are_plain_yaml():
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        assert isinstance(yaml.safe_load(path.read_text()), dict), path


def test_grid_points_with_the_same_run_are_one_group():
    # lambda = 0 is the undefended method whatever the threshold: a 2 x 2 x 2 grid has 6 distinct
    # runs, not 8.
    raw = patched(("grid", {"method": ["pgd_at", "trades"], "lambda": [0.0, 0.4], "threshold": [0.0, 0.5]}))
    spec = validate(raw, check_data=False)
    groups = spec.groups()
    assert len(groups) == 6 and len({g.group_id for g in groups}) == 6
    undefended = [g for g in groups if g.params["demem.lambda"] == 0]
    assert len(undefended) == 2 and all(len(g.aliases) == 1 and "threshold=0.5" in g.aliases[0] for g in undefended)
    assert "the same run" in spec.plan()


def test_points_give_explicit_groups_in_order():
    raw = patched(("grid", None), ("points", [{"lambda": 0.4, "threshold": 0.5}, {}, {"method": "trades"}]))
    spec = validate(raw, check_data=False)
    labels = [g.label for g in spec.groups()]
    assert labels == ["lambda=0.4 threshold=0.5", "base", "method=trades"]
    assert spec.groups()[0].run["demem"]["risk_threshold"] == 0.5
    assert len(spec.trials()) == 3 * len(spec.seeds) * spec.audit.models


# --- JSON Schema (`demem schema`) ---------------------------------------------------------------


def test_json_schema_accepts_the_shipped_specs_and_rejects_unknown_keys(capsys):
    jsonschema = pytest.importorskip("jsonschema")
    import json

    from orchestrator.cli import main

    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    jsonschema.Draft202012Validator.check_schema(schema)
    check = jsonschema.Draft202012Validator(schema)
    for path in sorted((ROOT / "search_spaces").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text())
        assert not list(check.iter_errors(raw)), path
    raw = yaml.safe_load((ROOT / "search_spaces" / "quickstart.yaml").read_text())
    for section, key in (((), "grids"), (("audit",), "modles"), (("base", "train"), "lrr")):
        bad = copy.deepcopy(raw)
        node = bad
        for part in section:
            node = node[part]
        node[key] = 1
        assert list(check.iter_errors(bad)), key
    assert list(check.iter_errors({**raw, "_tool": {"anything": 1}}))  # no key is exempt, "_" ones included
    assert list(check.iter_errors({**raw, "audit": {**raw["audit"], "models": "8"}}))  # a wrong type
