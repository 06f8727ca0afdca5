"""Confirmation of a search: full groups (M models each, LiRA-audited like any grid experiment) for
the best points of a finished search, plus the base config as the reference group.

    demem confirm results/search --top 3
"""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import yaml

from demem.io import write_text
from orchestrator.layout import ExperimentDir
from orchestrator.run import run_experiment
from orchestrator.search import PARAM, py_value
from orchestrator.spec import load_spec


def confirm_spec(exp: ExperimentDir, top: int, *, name: str | None = None, baseline: bool = True) -> dict:
    """The grid-like spec that confirms the `top` best completed search points (plus the base
    config as the reference group, unless baseline=False) with full groups and the spec's audit."""
    if top < 1:
        raise ValueError(f"--top must be >= 1, got {top}")
    spec = load_spec(exp.spec, check_data=False)
    if spec.search is None:
        raise ValueError(f"{exp.root} is a grid experiment, not a search; there is nothing to confirm")
    path = exp.search_results
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist; finish the search first (demem resume {exp.root})")
    df = pd.read_parquet(path)
    best = df[df["pareto_rank"].notna()].sort_values("pareto_rank").head(top)
    if best.empty:
        raise ValueError(f"{exp.root}: no search trial ran every epoch; nothing to confirm")
    params = [c for c in df.columns if c.startswith(PARAM)]
    points = [{c[len(PARAM) :]: py_value(r[c]) for c in params} for _, r in best.iterrows()]
    if baseline and {} not in points:
        points.insert(0, {})
    raw = copy.deepcopy(spec.raw)
    raw.pop("search", None)
    raw.pop("grid", None)
    raw["points"] = points
    raw["name"] = name or f"{spec.name}-confirm"
    return raw


def confirm(
    root: str | Path,
    top: int,
    *,
    name: str | None = None,
    baseline: bool = True,
    address: str | None = None,
    max_concurrent: int | None = None,
    echo=print,
) -> ExperimentDir:
    """Run the confirmation experiment next to the search (results/<name>-confirm by default)."""
    exp = ExperimentDir(Path(root))
    exp.check_tree()  # confirm.yaml is written into it
    raw = confirm_spec(exp, top, name=name, baseline=baseline)
    spec_path = exp.confirm_spec
    write_text(spec_path, yaml.safe_dump(raw, sort_keys=False))
    echo(f"confirming {len(raw['points'])} points of {exp.root} (spec: {spec_path})")
    return run_experiment(
        spec_path, name=raw["name"], storage=exp.root.parent, address=address, max_concurrent=max_concurrent, echo=echo
    )
