"""Training functions the orchestrator tests hand to `run_experiment(train=...)` in place of the real
one: they wrap `orchestrator.trainable.train_model`, so production code carries no test hooks. Ray
workers import this module by name (the driver's working directory is on their path)."""

from __future__ import annotations

import time
from pathlib import Path

from orchestrator.trainable import train_model
from orchestrator.trials import GridTrial


class InjectedFailure(RuntimeError):
    """The failure a test asked for."""


def failing(trial: GridTrial, *, fail: dict[int, str]) -> None:
    """Train, except that model_index i fails as `fail[i]` says: "always", or "once" (the first
    attempt fails and leaves .failed-once in its run directory; the retry trains)."""
    mode = fail.get(trial.model_index)
    out = Path(trial.artifacts)
    if mode == "always":
        raise InjectedFailure("injected failure (always) before epoch 1")
    if mode == "once" and not (out / ".failed-once").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / ".failed-once").touch()
        raise InjectedFailure("injected failure (once) before epoch 1")
    train_model(trial)


def gated(trial: GridTrial, *, allow: list[str], gate: str) -> None:
    """Train the runs in `allow`; every other trial writes `gate/<run_id>` and waits forever (until the
    test kills the driver), before touching its run directory. So once a gate file exists and the
    allowed runs have finished, the experiment's files are in a known state."""
    if trial.run_id in allow:
        train_model(trial)
        return
    Path(gate, trial.run_id).touch()
    while True:
        time.sleep(1)


def refusing(trial: GridTrial, *, lam: float) -> None:
    """Train, except that every model of the group with DeMem lambda `lam` meets a deterministic
    failure (what a refused setting raises); each attempt leaves a file, so a test can count them."""
    out = Path(trial.artifacts)
    out.mkdir(parents=True, exist_ok=True)
    (out / f".attempt-{len(list(out.glob('.attempt-*')))}").touch()
    if trial.run.demem.lam == lam:
        import orchestrator.trainable as trainable

        def refuse(cfg, base, started):
            raise ValueError(f"injected deterministic failure (lambda {lam})")

        trainable._train_model, real = refuse, trainable._train_model
        try:
            train_model(trial)
        finally:
            trainable._train_model = real
        return
    train_model(trial)


def filling(trial: GridTrial, *, models: list[int]) -> None:
    """Train, except that the models in `models` find the results disk full (what a trial's
    checkpoint write raises then)."""
    import errno

    if trial.model_index in models:
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(trial.artifacts) / "checkpoint.pt"))
    train_model(trial)


def damaging(trial: GridTrial, *, models: list[int], content: str) -> None:
    """Train, except that the models in `models` find `content` in their run directory's checkpoint
    (damage, or somebody else's file); each attempt leaves a file, so a test can count them."""
    out = Path(trial.artifacts)
    out.mkdir(parents=True, exist_ok=True)
    (out / f".attempt-{len(list(out.glob('.attempt-*')))}").touch()
    if trial.model_index in models and not (out / "checkpoint.pt").exists():
        (out / "checkpoint.pt").write_text(content)
    train_model(trial)
