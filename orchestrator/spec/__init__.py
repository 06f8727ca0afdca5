"""Experiment specs: a YAML file -> a validated `ExperimentSpec` -> groups -> one trial per model.

    spec = load_spec("search_spaces/quickstart.yaml")    # SpecError listing EVERY problem, or a spec
    print(spec.plan())
    for trial in spec.trials():                          # group x seed x model_index, fixed order
        RunConfig.from_dict(trial.run)                    # always valid: validation resolved them all

Modules: `schema` (the format, load + validate, JSON Schema), `keys` (key paths, resolving runs,
group ids), `grid` (grid, points, seeds -> groups), `sections` (typed audit / resources / failure),
`space` (the search section), `plan` (the validated spec, its trials and printed plan).

This package never imports Ray: `demem validate` runs it, and it has to be fast.
"""

from orchestrator.columns import SEARCH_METRICS as METRICS
from orchestrator.spec.grid import Group
from orchestrator.spec.keys import SHORTHANDS, group_id, resolve_run, short_name
from orchestrator.spec.plan import ExperimentSpec, Trial, trial_resources
from orchestrator.spec.problems import SpecError
from orchestrator.spec.schema import load_spec, name_problem, spec_json_schema, validate
from orchestrator.spec.sections import (
    MIN_MODELS_AUDIT,
    MIN_MODELS_LIRA,
    AuditSpec,
    FailureSpec,
    ResourcesSpec,
)
from orchestrator.spec.space import ALGORITHMS, Objective, SearchSpec

__all__ = [
    "ALGORITHMS",
    "METRICS",
    "MIN_MODELS_AUDIT",
    "MIN_MODELS_LIRA",
    "SHORTHANDS",
    "AuditSpec",
    "ExperimentSpec",
    "FailureSpec",
    "Group",
    "Objective",
    "ResourcesSpec",
    "SearchSpec",
    "SpecError",
    "Trial",
    "group_id",
    "load_spec",
    "name_problem",
    "resolve_run",
    "short_name",
    "spec_json_schema",
    "trial_resources",
    "validate",
]
