"""Typed trial configs (orchestrator.trials): what the tuner builds is plain data in Tune's config
(Tune swaps other objects for placeholders on the driver) and comes back as the same frozen
dataclass; a search trial whose sampled setting is refused is a deterministic failure, recorded as
failed with no objectives, as a grid trial's is."""

from __future__ import annotations

import dataclasses
import json
import math
from types import SimpleNamespace

import pytest

import orchestrator.trainable as trainable
from orchestrator.columns import FAILED
from orchestrator.layout import ExperimentDir
from orchestrator.progress import SearchProgress
from orchestrator.spec import load_spec
from orchestrator.trials import GRID_KEY, PARAMS_KEY, SETUP_KEY, GridTrial, SearchSetup, SearchTrial, trial_of
from orchestrator.tuner import grid_trial

from .conftest import ROOT, TINY

TINY_SEARCH = ROOT / "search_spaces" / "tiny_search.yaml"


def test_a_grid_trial_is_plain_data_in_tune_and_the_same_trial_back(tmp_path):
    spec = load_spec(TINY, check_data=False)
    exp = ExperimentDir(tmp_path / "tiny")
    groups = {g.group_id: g for g in spec.groups()}
    for t in spec.trials():
        trial = grid_trial(spec, exp, t, groups[t.group_id])
        config = {GRID_KEY: trial.to_config()}
        assert json.loads(json.dumps(config)) == config  # plain data: nothing for Tune to replace
        back = trial_of(json.loads(json.dumps(config)))
        assert back == trial and isinstance(back, GridTrial)
        assert back.run.demem.lam == t.run["demem"]["lambda"]  # the run config typed once, here
        with pytest.raises(dataclasses.FrozenInstanceError):
            back.seed = 3


def _search_config(spec, root, params) -> dict:
    setup = SearchSetup(
        base=spec.base,
        seed=0,
        n_models=2,
        cpus=1,
        root=str(root),
        interim_samples=16,
        objectives=tuple(spec.search.metrics),
    )
    return {PARAMS_KEY: params, SETUP_KEY: setup.to_config()}


def test_a_search_trial_round_trips_and_other_configs_are_refused(tmp_path):
    spec = load_spec(TINY_SEARCH, check_data=False)
    config = _search_config(spec, tmp_path, {"demem.lambda": 0.3})
    trial = trial_of(json.loads(json.dumps(config)))
    assert isinstance(trial, SearchTrial) and trial.params == {"demem.lambda": 0.3}
    assert trial.setup.objectives == ("robust_acc", "mia_tpr_at_1pct")
    with pytest.raises(TypeError, match="not a demem trial config"):
        trial_of({"lr": 0.1})


class _FakeTune:
    """The part of `ray.tune` a trainable calls, recording what it reports."""

    def __init__(self) -> None:
        self.reports: list[dict] = []

    def report(self, metrics: dict) -> None:
        self.reports.append(metrics)

    def get_context(self):
        return SimpleNamespace(get_trial_id=lambda: "abc_00001")


def test_a_refused_search_setting_is_a_deterministic_failure(tmp_path, monkeypatch):
    spec = load_spec(TINY_SEARCH, check_data=False)
    fake = _FakeTune()
    monkeypatch.setattr(trainable, "tune", fake)
    config = _search_config(spec, tmp_path, {"demem.lambda": -1.0, "demem.risk_threshold": 0.5})
    trainable.search_model(config)  # reported, not raised: Tune retries what raises
    (report,) = fake.reports
    assert report[FAILED] == "ValueError: demem.lambda must be a finite number >= 0, got -1.0"
    assert report["final"] is True and report["trial_id"] == "abc_00001"
    assert all(math.isnan(report[m]) for m in spec.search.metrics)  # a failed point for the searcher
    assert not (tmp_path / "search").exists()  # refused before any work

    # The driver records it as failed, with no objectives.
    exp = ExperimentDir(tmp_path)
    lines: list[str] = []
    progress = SearchProgress(spec, exp, lines.append)
    progress.trial_complete(SimpleNamespace(trial_id="abc_00001", config=config, last_result=report))
    record = json.loads(exp.search_trials.read_text())["abc_00001"]
    assert record["status"] == "failed" and "demem.lambda must be" in record["error"]
    assert record["robust_acc"] is None and record["mia_tpr_at_1pct"] is None
    assert lines == ["[1/4 search trials] lambda=-1, threshold=0.5: FAILED: " + report[FAILED]]
