"""Shared fixtures: a small real Fashion-MNIST pool and a quickly trained undefended model."""

from __future__ import annotations

import pytest
import torch

from demem.data import make_pool
from demem.train import RunConfig, prepare, train_epoch


@pytest.fixture(scope="session")
def fmnist_pool():
    """2,000 real Fashion-MNIST samples (the embedded default dataset)."""
    return make_pool("fashion-mnist", pool_size=2000, seed=0)


def tiny_run(**overrides) -> RunConfig:
    """A RunConfig for fast CPU tests: small CNN, Fashion-MNIST, 2 epochs, 1-step training attack."""
    base = {
        "data": {"dataset": "fashion-mnist", "pool_size": 2000},
        "train": {"arch": "small-cnn", "epochs": 2, "batch_size": 128, "lr": 0.05},
        "method": {"name": "pgd_at"},
        "attack": {"steps": 1},
        "n_models": 2,
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return RunConfig.from_dict(base)


@pytest.fixture(scope="session")
def trained_standard(fmnist_pool):
    """An undefended small CNN trained on 1,000 real samples until it is clearly accurate."""
    run = tiny_run(method={"name": "standard"},
                   train={"epochs": 12, "schedule": "constant", "batch_size": 64, "augment": False})
    state = prepare(run, "cpu", pool=fmnist_pool)
    for _ in range(run.train.epochs):
        train_epoch(state)
    state.model.eval()
    return state


@pytest.fixture(autouse=True)
def _deterministic_threads():
    # Two threads like the CI machine; keeps timings and reductions comparable across runs.
    torch.set_num_threads(2)
    yield
