"""Where an experiment keeps its files: the one owner of every path below an experiment directory.

    results/<name>/
        spec.yaml                the exact spec file the experiment was started with
        meta.json                package version, start time
        tune/run-<k>/            Ray Tune's storage of each driver session: trial logs, TensorBoard event
                                 files (never read back: resume works from the files below)
        .driver.lock             held by the one driver running or resuming the experiment
        artifacts/<group_id>/<run_id>/   each model's run directory (config, keep row, samples, metrics;
                                 checkpoint.pt while it trains)
        audits/<group_id>/s<seed>/       audit.json + samples.parquet of each (group, seed)
        trials.json              status of every finished or failed trial (written by the driver)
        runs.parquet, audits.parquet, samples.parquet, roc.parquet, membins.parquet, lowfpr.parquet
                                 collected results (orchestrator.collect)
        tensorboard-groups/      HParams per group; summary/ holds the summary's figures as images
        summary/                 `demem summarize` output (ranking, plots, report.html)
    a search experiment instead has:
        search/<trial_id>/       each search trial's run directory
        search_trials.json, search.parquet, confirm.yaml

On a directory, artifacts go next to Tune's storage, so they must be on a filesystem every worker
can write (local disk for the embedded default, a shared mount on a cluster: `orchestrator.probe`
checks it). On object storage (s3://, gs://) `root` is this machine's mirror of the experiment and
`remote` its URI (orchestrator.storage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from demem.privacy.audit import AUDIT_JSON, SAMPLES_TABLE
from orchestrator.storage import TUNE, Remote, is_uri, redact, staging_dir

RUNS, AUDITS, SAMPLES = "runs.parquet", "audits.parquet", "samples.parquet"
ROC, MEMBINS, LOWFPR = "roc.parquet", "membins.parquet", "lowfpr.parquet"
TABLES = (RUNS, AUDITS, SAMPLES, ROC, MEMBINS, LOWFPR)
SPEC = "spec.yaml"


@dataclass(frozen=True)
class ExperimentDir:
    root: Path
    remote: str | None = None  # the experiment's URI on object storage; `root` is then its local mirror

    @classmethod
    def at(cls, where: str | Path) -> ExperimentDir:
        """The experiment at a directory or an s3:// / gs:// URI."""
        if is_uri(where):
            return cls(staging_dir(str(where)), remote=str(where))
        return cls(Path(where))

    @cached_property
    def store(self) -> Remote | None:
        """The object storage holding the experiment, or None for a directory."""
        return Remote(self.remote) if self.remote else None

    def rel(self, path: Path) -> str:
        """`path` (below the experiment) relative to it, as the storage names it."""
        return Path(path).relative_to(self.root).as_posix()

    @property
    def where(self) -> str:
        """The experiment's place as a user names it: its URI or its directory."""
        return redact(self.remote) if self.remote else str(self.root)

    @property
    def spec(self) -> Path:
        return self.root / SPEC

    @property
    def meta(self) -> Path:
        return self.root / "meta.json"

    @property
    def tune(self) -> Path:
        """Ray Tune's storage: one `run-<k>` experiment per driver session (run, then each resume)."""
        return self.root / TUNE

    def next_tune_session(self) -> str:
        """The name of the next driver session's Tune experiment under `tune/`: run-1, run-2, ..."""
        if self.store is not None:
            taken = self.store.names(TUNE)
        else:
            taken = {p.name for p in self.tune.glob("run-*")} if self.tune.is_dir() else set()
        k = 1
        while f"run-{k}" in taken:
            k += 1
        return f"run-{k}"

    @property
    def lock(self) -> Path:
        """Held (flock) by the one driver working on the experiment; holds its pid and host."""
        return self.root / ".driver.lock"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def audits(self) -> Path:
        return self.root / "audits"

    @property
    def trials(self) -> Path:
        return self.root / "trials.json"

    def table(self, name: str) -> Path:
        """One of the collected Parquet files (RUNS, AUDITS, SAMPLES, ROC, MEMBINS)."""
        return self.root / name

    def run_dir(self, group_id: str, run_id: str) -> Path:
        return self.artifacts / group_id / run_id

    def audit_dir(self, group_id: str, seed: int) -> Path:
        return self.audits / group_id / f"s{seed}"

    def audit_result(self, group_id: str, seed: int) -> Path:
        """audit.json of a (group, seed): it exists once the group is audited."""
        return self.audit_dir(group_id, seed) / AUDIT_JSON

    def audit_samples(self, group_id: str, seed: int) -> Path:
        return self.audit_dir(group_id, seed) / SAMPLES_TABLE

    @property
    def tensorboard_groups(self) -> Path:
        return self.root / "tensorboard-groups"

    @property
    def tensorboard_summary(self) -> Path:
        return self.tensorboard_groups / "summary"

    @property
    def summary(self) -> Path:
        return self.root / "summary"

    # search experiments
    @property
    def search_runs(self) -> Path:
        return self.root / "search"

    def search_run_dir(self, trial_id: str) -> Path:
        return self.search_runs / trial_id

    @property
    def search_trials(self) -> Path:
        return self.root / "search_trials.json"

    @property
    def search_results(self) -> Path:
        return self.root / "search.parquet"

    @property
    def confirm_spec(self) -> Path:
        return self.root / "confirm.yaml"


def open_experiment(where: str | Path) -> ExperimentDir:
    """An existing experiment at a directory or a URI; from a URI, its files (but Tune's logs and the
    checkpoints, which trials fetch themselves) are first copied into this machine's mirror."""
    exp = ExperimentDir.at(where)
    if exp.store is not None:
        exp.store.check()
        if not exp.store.exists(SPEC):
            raise FileNotFoundError(f"{exp.where} is not an experiment (no spec.yaml there)")
        from demem.train import CHECKPOINT

        exp.store.pull(skip_names=(CHECKPOINT,))
    return exp


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON value in `path`; `default` when there is no such file.

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON (truncated or overwritten).
    """
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except FileNotFoundError:
        return default
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: corrupt (not UTF-8 text at byte {e.start}); restore or remove it") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno}); restore or remove it") from None


def read_records(path: Path) -> dict[str, dict[str, Any]]:
    """trials.json / search_trials.json: {run or trial id: record}; {} when absent.

    Raises:
        ValueError: naming the file, when it is corrupt or not a mapping of records.
    """
    records = read_json(path, {}) or {}
    if not isinstance(records, dict) or not all(isinstance(r, dict) and "status" in r for r in records.values()):
        raise ValueError(f"{path}: corrupt (not a mapping of trial records); restore or remove it")
    return records
