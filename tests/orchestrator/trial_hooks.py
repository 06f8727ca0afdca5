"""Training functions the orchestrator tests hand to `run_experiment(train=...)` in place of the real
one: they wrap `orchestrator.trainable.train_model`, so production code carries no test hooks. Ray
workers import this module by name (the driver's working directory is on their path)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from orchestrator.trainable import train_model


class InjectedFailure(RuntimeError):
    """The failure a test asked for."""


def failing(config: dict[str, Any], *, fail: dict[int, str]) -> None:
    """Train, except that model_index i fails as `fail[i]` says: "always", or "once" (the first
    attempt fails and leaves .failed-once in its run directory; the retry trains)."""
    mode = fail.get(config["model_index"])
    out = Path(config["artifacts"])
    if mode == "always":
        raise InjectedFailure("injected failure (always) before epoch 1")
    if mode == "once" and not (out / ".failed-once").exists():
        out.mkdir(parents=True, exist_ok=True)
        (out / ".failed-once").touch()
        raise InjectedFailure("injected failure (once) before epoch 1")
    train_model(config)


def gated(config: dict[str, Any], *, allow: list[str], gate: str) -> None:
    """Train the runs in `allow`; every other trial writes `gate/<run_id>` and waits forever (until the
    test kills the driver), before touching its run directory. So once a gate file exists and the
    allowed runs have finished, the experiment's files are in a known state."""
    if config["run_id"] in allow:
        train_model(config)
        return
    Path(gate, config["run_id"]).touch()
    while True:
        time.sleep(1)


def refusing(config: dict[str, Any], *, lam: float) -> None:
    """Train, except that every model of the group with DeMem lambda `lam` meets a deterministic
    failure (what a refused setting raises); each attempt leaves a file, so a test can count them."""
    out = Path(config["artifacts"])
    out.mkdir(parents=True, exist_ok=True)
    (out / f".attempt-{len(list(out.glob('.attempt-*')))}").touch()
    if config["run"]["demem"]["lambda"] == lam:
        import orchestrator.trainable as trainable

        def refuse(cfg, base, started):
            raise ValueError(f"injected deterministic failure (lambda {lam})")

        trainable._train_model, real = refuse, trainable._train_model
        try:
            train_model(config)
        finally:
            trainable._train_model = real
        return
    train_model(config)


def filling(config: dict[str, Any], *, models: list[int]) -> None:
    """Train, except that the models in `models` find the results disk full (what a trial's
    checkpoint write raises then)."""
    import errno

    if config["model_index"] in models:
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(config["artifacts"]) / "checkpoint.pt"))
    train_model(config)
