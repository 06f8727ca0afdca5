"""Fixtures of the orchestrator tests: one private local Ray for the session, and the tiny
experiment (search_spaces/tiny.yaml) run once on it."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "search_spaces" / "tiny.yaml"


def tiny_spec(tmp_path: Path, **changes) -> Path:
    """tiny.yaml with top-level `changes`, written to tmp_path/spec.yaml."""
    raw = yaml.safe_load(TINY.read_text())
    raw.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory):
    """One private local Ray instance for the whole test session (127.0.0.1 only)."""
    os.environ["RAY_AUTH_MODE"] = "disabled"
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    tmp = tempfile.mkdtemp(prefix="dm-ray-")  # short: Ray's socket paths must stay under 107 bytes
    os.environ["RAY_TMPDIR"] = tmp
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False, _temp_dir=str(tmp))
    yield ray
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def tiny_experiment(ray_session, tmp_path_factory):
    from orchestrator.run import run_experiment

    storage = tmp_path_factory.mktemp("results")
    lines: list[str] = []
    exp = run_experiment(TINY, storage=storage, echo=lines.append)
    return exp, lines
