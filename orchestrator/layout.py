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

An experiment directory may come from someone else, so nothing in it decides where we write or
delete: every path below it is built here from names the spec defines (group ids, run ids), records
that name anything else are refused (`read_records`), a symbolic link inside it that leads outside
is refused before any work (`ExperimentDir.check_tree`), and every delete checks containment first
(`ExperimentDir.remove`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from demem.privacy.audit import AUDIT_JSON, SAMPLES_TABLE
from orchestrator.storage import TUNE, Remote, is_uri, redact, staging_dir

RUNS, AUDITS, SAMPLES = "runs.parquet", "audits.parquet", "samples.parquet"
ROC, MEMBINS, LOWFPR = "roc.parquet", "membins.parquet", "lowfpr.parquet"
EPSILON = "epsilon.parquet"
TABLES = (RUNS, AUDITS, SAMPLES, ROC, MEMBINS, LOWFPR, EPSILON)
SPEC = "spec.yaml"
LOCK = ".driver.lock"
# trials.json of the largest spec (100,000 trials, each error cut to 2,000 characters) stays under this
MAX_JSON_BYTES = 512 << 20
MAX_ENTRIES = 2_000_000  # what check_tree walks at most: a paper-scale experiment has about 100,000

# The names demem writes, one path component each (orchestrator.spec builds them).
GROUP_ID = re.compile(r"[0-9a-f]{12}")  # 12 hex digits of the sha256 of a group's resolved config
RUN_ID = re.compile(r"([0-9a-f]{12})-s(-?[0-9]{1,9})-m([0-9]{3,9})")  # <group id>-s<seed>-m<model index, 3+ digits>
TRIAL_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")  # a Tune trial id (search experiments)
STATUSES = ("done", "failed")


class UnsafePath(ValueError):
    """A path below an experiment leads outside it (through a symbolic link), or is not a plain file
    where demem keeps one."""


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

    def inside(self, path: str | Path) -> Path:
        """`path`, once checked to stay below the experiment with every symbolic link in it followed.

        Raises:
            UnsafePath: naming the path and where it leads.
        """
        root, real = self.root.resolve(), Path(path).resolve()
        if real != root and root not in real.parents:
            raise UnsafePath(
                f"{path} leads outside the experiment {self.root} (to {real}): demem does not follow a "
                "symbolic link out of an experiment directory; remove the link"
            )
        return Path(path)

    def remove(self, path: str | Path) -> None:
        """Delete a file or directory tree below the experiment (nothing when absent), after checking
        that it stays below it; a link is removed itself, never what it points at."""
        path = Path(path)
        if path.is_symlink():  # the link's own place must be inside; where it points does not matter
            self.inside(path.parent)
            path.unlink()
            return
        path = self.inside(path)
        if path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)  # removes links inside the tree, never follows them

    def check_tree(self, limit: int = MAX_ENTRIES) -> None:
        """Refuse an experiment directory that could make us write outside it: a symbolic link
        anywhere below it that leads outside, or a lock that is not a plain file of its own (and
        FIFOs, sockets and devices, which have no place in it). Called
        before any work by every command that writes into an experiment; Tune's per-session logs are
        looked at but not entered (each driver session writes a new one).

        Raises:
            UnsafePath: naming the first such entry.
        """
        if not self.root.exists():
            return
        if self.root.resolve() == Path(self.root.anchor):
            raise UnsafePath(f"{self.root} is the filesystem root, not an experiment directory")
        lock = self.lock
        if lock.is_symlink() or (lock.exists() and not lock.is_file()):
            raise UnsafePath(f"{lock} is not a plain file (a link or a directory); remove it")
        if lock.exists() and lock.stat().st_nlink > 1:
            raise UnsafePath(f"{lock} has other hard links (a file elsewhere shares it); remove it")
        seen = 0
        for top, dirs, files in os.walk(self.root):  # followlinks=False: a linked directory is listed, not entered
            here = Path(top)
            for name in dirs + files:
                seen += 1
                if seen > limit:
                    raise UnsafePath(f"{self.root} holds more than {limit:,} entries: not an experiment directory")
                mode = os.lstat(here / name).st_mode
                if stat.S_ISLNK(mode):
                    self.inside(here / name)
                elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):  # reading a FIFO would hang
                    raise UnsafePath(f"{here / name} is not a file or a directory (a FIFO, socket or device)")
            if here == self.tune:
                dirs[:] = []  # run-<k>/ of earlier sessions: written by Tune, never again by us
        self.inside(self.root)

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
        return self.root / LOCK

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
        return self.artifacts / _component(group_id, GROUP_ID, "group id") / _component(run_id, RUN_ID, "run id")

    def audit_dir(self, group_id: str, seed: int) -> Path:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise UnsafePath(f"seed {seed!r} is not an integer")
        return self.audits / _component(group_id, GROUP_ID, "group id") / f"s{seed}"

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
        return self.search_runs / _component(trial_id, TRIAL_ID, "search trial id")

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
        from demem.artifacts import CHECKPOINT

        exp.store.pull(skip_names=(CHECKPOINT,))
    return exp


def read_json(path: Path, default: Any = None) -> Any:
    """The JSON value in `path`; `default` when there is no such file.

    Raises:
        ValueError: naming the file, when it is not UTF-8 JSON (truncated or overwritten), or larger
            than MAX_JSON_BYTES.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except FileNotFoundError:
        return default
    if len(data) > MAX_JSON_BYTES:
        raise ValueError(
            f"{path}: larger than {MAX_JSON_BYTES >> 20} MiB, not a record demem writes; restore or remove it"
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: corrupt (not UTF-8 text at byte {e.start}); restore or remove it") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: corrupt JSON ({e.msg} at line {e.lineno}); restore or remove it") from None


def _component(name: Any, pattern: re.Pattern, what: str) -> str:
    """`name` when it is the one path component demem writes for `what`."""
    if not isinstance(name, str) or not pattern.fullmatch(name):
        raise UnsafePath(f"{what} {str(name)[:80]!r} is not a name demem writes ({_FORMS[what]})")
    return name


_FORMS = {
    "group id": "12 hex digits",
    "run id": "<12 hex digits>-s<seed>-m<model index>",
    "search trial id": "letters, digits, '_' and '-', at most 64",
}


def read_records(path: Path, trials: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """trials.json / search_trials.json: {run or trial id: record}; {} when absent.

    Every record is checked before any of it is used. Records of a grid experiment (`trials`: the
    spec's trials by run id) must name a trial of the spec, and the group id, seed and model index
    they carry must be that trial's; those of a search, a Tune trial id. So a record cannot name a
    path the experiment does not have.

    Raises:
        ValueError: naming the file and the first bad record, when the file is corrupt, is not a
            mapping of records, or holds a record demem would not have written.
    """
    records = read_json(path, {}) or {}
    if not isinstance(records, dict) or not all(isinstance(r, dict) and "status" in r for r in records.values()):
        raise ValueError(f"{path}: corrupt (not a mapping of trial records); restore or remove it")
    for key, record in records.items():
        why = _record_problem(key, record, trials)
        if why:
            raise ValueError(f"{path}: record {str(key)[:80]!r}: {why}; restore the file or remove that record")
    return records


def trial_records(spec: Any, exp: ExperimentDir) -> dict[str, dict[str, Any]]:
    """The checked records of an experiment's finished and failed trials (grid or search, by its
    spec: an `orchestrator.spec.ExperimentSpec`)."""
    if spec.search is not None:
        return read_records(exp.search_trials)
    return read_records(exp.trials, spec.trials_by_key)


def _record_problem(key: str, record: dict[str, Any], trials: Mapping[str, Any] | None) -> str | None:
    if record["status"] not in STATUSES:
        return f"status {str(record['status'])[:40]!r} is not one of {', '.join(STATUSES)}"
    if trials is None:
        return None if TRIAL_ID.fullmatch(key) else f"not a search trial id ({_FORMS['search trial id']})"
    trial = trials.get(key)
    if trial is None:
        return (
            f"names no trial of this experiment's spec (a run id is {_FORMS['run id']})"
            if RUN_ID.fullmatch(key)
            else f"not a run id ({_FORMS['run id']})"
        )
    for field in ("group_id", "seed", "model_index"):
        if field in record and (
            record[field] != getattr(trial, field) or type(record[field]) is not type(getattr(trial, field))
        ):
            return f"{field} {str(record[field])[:80]!r} is not its trial's ({getattr(trial, field)!r})"
    return None
