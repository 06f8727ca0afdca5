"""Shared fixtures: a small real Fashion-MNIST pool and a quickly trained undefended model."""

from __future__ import annotations

import pytest
import torch

from demem.data import make_pool
from demem.train import prepare, train_epoch

from .helpers import OVERFIT, tiny_run, train_group


@pytest.fixture(scope="session")
def fmnist_pool():
    """2,000 real Fashion-MNIST samples (the embedded default dataset)."""
    return make_pool("fashion-mnist", pool_size=2000, seed=0)


@pytest.fixture(scope="session")
def trained_standard(fmnist_pool):
    """An undefended small CNN trained on 1,000 real samples until it is clearly accurate."""
    run = tiny_run(
        method={"name": "standard"}, train={"epochs": 12, "schedule": "constant", "batch_size": 64, "augment": False}
    )
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


@pytest.fixture(scope="session")
def overfit_group(tmp_path_factory):
    """12 overfit small CNNs on 200 Fashion-MNIST samples, each trained on a balanced half."""
    return train_group(tmp_path_factory.mktemp("overfit"), 12, **OVERFIT)


@pytest.fixture
def isolated_data_env(monkeypatch, tmp_path_factory):
    """Keep the developer's $DEMEM_DATA and download cache out of a test (use it per module with
    `pytestmark = pytest.mark.usefixtures("isolated_data_env")`)."""
    monkeypatch.delenv("DEMEM_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
