"""The run-directory lifecycle (`demem.runner.train_run`): interrupted and continued equals straight
through, a finished directory is not trained again, and the one policy for a checkpoint that cannot
be read: refused, naming the file, before anything is written, and nothing deleted."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from demem import artifacts
from demem.runner import train_run

from ..helpers import tiny_run


@pytest.fixture(scope="module")
def pool():
    from demem.data import make_pool

    return make_pool("fashion-mnist", pool_size=256, seed=2)


def _run():
    return tiny_run(
        data={"pool_size": 256, "pool_seed": 2},
        train={"epochs": 3, "batch_size": 64},
        demem={"lambda": 0.4, "risk_threshold": 0.5},
        eval={"attack": {"steps": 2}, "queries": 2},
    )


class _Stop(Exception):
    """What ends a session after an epoch (the end of the session, a killed worker)."""


def test_interrupted_and_continued_equals_straight_through(tmp_path, pool):
    run = _run()
    straight = train_run(run, tmp_path / "straight", pool=pool, log=lambda _: None)

    def stop_after_first(state, metrics):
        if state.epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):
        train_run(run, tmp_path / "cut", pool=pool, on_epoch=stop_after_first, log=lambda _: None)
    assert artifacts.read_metrics(tmp_path / "cut") is None  # not finished: only the checkpoint of epoch 1
    lines: list[str] = []
    seen: list[int] = []
    resumed = train_run(run, tmp_path / "cut", pool=pool, on_epoch=lambda s, m: seen.append(s.epoch), log=lines.append)
    assert lines == [f"continuing from {tmp_path / 'cut' / artifacts.CHECKPOINT} at epoch 1/3"]
    assert seen == [2, 3]  # only the epochs left
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in straight["history"]]
    for key in ("natural_acc", "robust_acc_pgd", "epochs_done"):
        assert resumed[key] == straight[key], key
    a = np.load(tmp_path / "straight" / "samples.npz")
    b = np.load(tmp_path / "cut" / "samples.npz")
    for key in a.files:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    wa = torch.load(tmp_path / "straight" / artifacts.CHECKPOINT, weights_only=True)["model"]
    wb = torch.load(tmp_path / "cut" / artifacts.CHECKPOINT, weights_only=True)["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_finished_directory_is_not_trained_again(tmp_path, pool):
    run = tiny_run(data={"pool_size": 256, "pool_seed": 2}, train={"epochs": 1})
    first = train_run(run, tmp_path, pool=pool, keep_checkpoint=False, log=lambda _: None)
    assert not (tmp_path / artifacts.CHECKPOINT).exists()  # experiments keep only the signals
    before = (tmp_path / artifacts.METRICS).read_bytes()
    again = train_run(run, tmp_path, pool=pool, on_start=pytest.fail, on_epoch=pytest.fail)
    assert again == first == json.loads(before)
    assert (tmp_path / artifacts.METRICS).read_bytes() == before


def test_an_unreadable_checkpoint_is_refused_before_any_write(tmp_path, pool):
    run = tiny_run(data={"pool_size": 256, "pool_seed": 2}, train={"epochs": 2})
    out = tmp_path / "m0"
    out.mkdir()
    junk = b"PK\x03\x04 not a checkpoint"
    (out / artifacts.CHECKPOINT).write_bytes(junk)
    with pytest.raises(ValueError, match=f"{out / artifacts.CHECKPOINT}.*not a readable demem checkpoint"):
        train_run(run, out, pool=pool, on_start=pytest.fail)
    assert sorted(p.name for p in out.iterdir()) == [artifacts.CHECKPOINT]  # nothing written
    assert (out / artifacts.CHECKPOINT).read_bytes() == junk  # nothing deleted
    # Another run's checkpoint is refused the same way, and kept.
    other = tiny_run(data={"pool_size": 256, "pool_seed": 2}, train={"epochs": 2}, seed=7)
    train_run(other, tmp_path / "other", pool=pool, log=lambda _: None)
    theirs = (tmp_path / "other" / artifacts.CHECKPOINT).read_bytes()
    (out / artifacts.CHECKPOINT).write_bytes(theirs)
    with pytest.raises(ValueError, match="different run config"):
        train_run(run, out, pool=pool, on_start=pytest.fail)
    assert (out / artifacts.CHECKPOINT).read_bytes() == theirs
    # resume=False trains from the start and replaces it.
    train_run(run, out, pool=pool, resume=False, log=lambda _: None)
    assert artifacts.read_metrics(out)["epochs_done"] == 2
