"""Calibration: timing one epoch on synthetic data of the dataset's shape, the cache, and the cost a
plan states from it."""

from __future__ import annotations

import json
import math

import pytest

from demem.calibrate import cost_key, estimate_seconds, fmt_hours, load_cache, store

from ..helpers import tiny_run


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "calibration.json"
    monkeypatch.setenv("DEMEM_CALIBRATION", str(path))
    return path


def test_calibrate_times_a_real_epoch_without_data(isolated_data_env):
    from demem.calibrate import calibrate

    run = tiny_run(data={"dataset": "cifar10", "pool_size": 64}, train={"batch_size": 16}).to_dict()
    timing = calibrate(run, "cpu", batches=2)  # CIFAR-10 is not on this machine: synthetic pixels
    assert all(math.isfinite(v) and v > 0 for v in timing.values())
    assert set(timing) == {"train_s_per_sample", "eval_s_per_sample"}


def test_calibrate_times_a_dp_model(isolated_data_env):
    # The held-out attack backpropagates to the input: Opacus's per-sample hooks must be off for it,
    # as when a DP run finishes (they raised IndexError here once).
    from demem.calibrate import calibrate

    run = tiny_run(
        method={"name": "dp_sgd"},
        dp={"noise_multiplier": 1.0, "max_grad_norm": 1.0},
        train={"batch_size": 16, "norm": "group"},
    ).to_dict()
    timing = calibrate(run, "cpu", batches=2)
    assert all(math.isfinite(v) and v > 0 for v in timing.values())


def test_estimate_is_epochs_times_the_training_half_plus_the_evaluated_pool():
    # The evaluation: accuracies on both halves and every per-sample signal, on the whole pool.
    run = tiny_run(data={"pool_size": 1000}, train={"epochs": 7}).to_dict()
    t = {"train_s_per_sample": 0.002, "eval_s_per_sample": 0.01}
    assert estimate_seconds(run, t) == pytest.approx(7 * 500 * 0.002 + 1000 * 0.01)
    whole = tiny_run(data={"pool_size": None}, train={"epochs": 1}).to_dict()  # Fashion-MNIST: 70,000
    assert estimate_seconds(whole, t) == pytest.approx(35_000 * 0.002 + 70_000 * 0.01)


def test_cost_key_follows_what_changes_the_cost():
    a = tiny_run(demem={"lambda": 0.4}).to_dict()
    assert cost_key(a) == cost_key(tiny_run(demem={"lambda": 0.6}).to_dict())  # same work per step
    assert cost_key(a) != cost_key(tiny_run().to_dict())  # the penalty's extra work
    assert cost_key(a) != cost_key(tiny_run(demem={"lambda": 0.4}, method={"name": "trades"}).to_dict())
    assert cost_key(a) != cost_key(tiny_run(demem={"lambda": 0.4}, attack={"steps": 7}).to_dict())
    # the robust signals' passes
    robust = tiny_run(demem={"lambda": 0.4}, eval={"adversarial": {"steps": 10}}).to_dict()
    assert cost_key(a) != cost_key(robust)
    assert cost_key(robust) != cost_key(tiny_run(demem={"lambda": 0.4}, eval={"boundary": {"steps": 2}}).to_dict())


def test_cache_round_trip_and_a_corrupt_cache_is_ignored(cache):
    store("cpu (2 threads)", "k", {"train_s_per_sample": 1.0, "eval_s_per_sample": 2.0})
    assert load_cache()["cpu (2 threads)"]["k"]["train_s_per_sample"] == 1.0
    cache.write_text("{not json")
    assert load_cache() == {}
    assert fmt_hours(30) == "30 s" and fmt_hours(600) == "10 min" and fmt_hours(36_000) == "10.0 h"
    assert fmt_hours(3600 * 1250) == "1,250 h"


def test_the_plan_states_the_cost_once_calibrated(cache, capsys):
    from orchestrator.cli import main
    from orchestrator.spec import load_spec

    from ..orchestrator.conftest import TINY

    spec = load_spec(TINY, check_data=False)
    assert "cost: not calibrated here; `demem calibrate SPEC`" in spec.plan()
    assert main(["calibrate", str(TINY), "--device", "cpu", "--batches", "1"]) == 0
    out = capsys.readouterr().out
    assert out.count("ms per training sample per epoch") == 2  # two kinds of group (lambda 0 and 0.4)
    data = json.loads(cache.read_text())
    (device,) = data
    timings = {g.group_id: data[device][cost_key(g.run)] for g in spec.groups()}
    total = 4 * sum(estimate_seconds(g.run, timings[g.group_id]) for g in spec.groups())
    assert f"cost: about {fmt_hours(total)} of {device} time" in spec.plan() and device.startswith("cpu")
