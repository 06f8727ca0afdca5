"""Helpers shared by the tests (plain functions and constants; fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from demem.train import RunConfig

# Debian's dataset-fashion-mnist: the embedded default dataset.
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist is not installed",
)


def tiny_run(**overrides) -> RunConfig:
    """A RunConfig for fast CPU tests: small CNN, Fashion-MNIST, 2 epochs, 1-step training attack."""
    base = {
        "data": {"dataset": "fashion-mnist", "pool_size": 2000},
        "train": {"arch": "small-cnn", "epochs": 2, "batch_size": 128, "lr": 0.05},
        "method": {"name": "pgd_at"},
        "attack": {"steps": 1},
        # The robust membership signals are off here (their cost would dwarf 2 epochs); the tests
        # of the robust audit switch them on (ROBUST_SIGNALS).
        "eval": {"adversarial": None, "boundary": None},
        "n_models": 2,
        "seed": 0,
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return RunConfig.from_dict(base)


def train_group(directory, n_models: int, **overrides):
    """Train every model of a group with the lifecycle `demem train` uses (`demem.runner.train_run`),
    into `demem train`-style directories."""
    from demem.runner import train_run
    from demem.train import load_pool

    pool = None
    for m in range(n_models):
        run = tiny_run(n_models=n_models, model_index=m, **overrides)
        pool = pool or load_pool(run)
        train_run(run, Path(directory) / f"model-{m:02d}", "cpu", pool=pool)
    return Path(directory)


# Cheap robust membership signals for tests: PGD-3 adversarial queries, boundary distances with 3
# bisection rounds of PGD-3.
ROBUST_SIGNALS = {"adversarial": {"steps": 3}, "boundary": {"bisections": 3, "steps": 3}}

OVERFIT = {
    # 200 real samples, no augmentation, small batches, many epochs: each model memorises its 100
    # (100% training accuracy from about epoch 30). GroupNorm so DP-SGD can train the same model.
    "data": {"dataset": "fashion-mnist", "pool_size": 200, "pool_seed": 3},
    "train": {"epochs": 35, "batch_size": 20, "lr": 0.02, "schedule": "constant", "augment": False, "norm": "group"},
    "method": {"name": "standard"},
    "eval": {"attack": {"steps": 1}, "queries": 2},
}


ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def readme_blocks(heading: str, lang: str) -> list[str]:
    """The fenced ```lang code blocks of README.md's section whose heading starts with `heading`
    ("### Datasets from files"), up to the next heading of the same or a higher level: the tests run
    the README's examples as written."""
    level = len(heading) - len(heading.lstrip("#"))
    lines = README.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    blocks, block, fence = [], None, None
    for line in lines[start + 1 :]:
        if fence is None and line.startswith("#") and len(line) - len(line.lstrip("#")) <= level:
            break
        if fence is None and line.startswith("```"):
            fence = line.strip()[3:]
            block = [] if fence == lang else None
        elif fence is not None and line.strip() == "```":
            if block is not None:
                blocks.append("\n".join(block) + "\n")
            block = fence = None
        elif block is not None:
            block.append(line)
    return blocks
