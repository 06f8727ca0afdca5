"""Where an experiment keeps its files. One directory per experiment:

    results/<name>/
        spec.yaml                the exact spec file the experiment was started with
        meta.json                package version, start time
        tune/                    Ray Tune's storage: trial state, checkpoints, TensorBoard event files
        artifacts/<group_id>/<run_id>/   each model's run directory (config, keep row, samples, metrics)
        audits/<group_id>/s<seed>/       audit.json + samples.parquet of each (group, seed)
        trials.json              status of every finished or failed trial (written by the driver)
        runs.parquet, audits.parquet, samples.parquet   the collected results

Artifacts go to a plain directory next to Tune's storage, so they must be on a filesystem every
worker can write (local disk for the embedded default, a shared mount on a cluster).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ExperimentDir:
    root: Path

    @property
    def spec(self) -> Path:
        return self.root / "spec.yaml"

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def tune(self) -> Path:
        return self.root / "tune"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def audits(self) -> Path:
        return self.root / "audits"

    @property
    def trials(self) -> Path:
        return self.root / "trials.json"

    def run_dir(self, group_id: str, run_id: str) -> Path:
        return self.artifacts / group_id / run_id

    def audit_dir(self, group_id: str, seed: int) -> Path:
        return self.audits / group_id / f"s{seed}"


def read_json(path: Path, default: Any = None) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        return default
