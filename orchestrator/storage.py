"""Experiments on object storage (`--storage s3://bucket/prefix`, `gs://...`), through pyarrow's
filesystems, the ones Ray Tune uses.

Every process works on a local mirror of the experiment directory and copies files to and from the
bucket; the bucket is the record, the mirror a cache (`$DEMEM_STAGING`, default
~/.cache/demem/staging, then a hash of the experiment's URI):
- the driver pushes spec.yaml and meta.json before any trial starts, trials.json whenever a trial
  finishes, and the audits, Parquet tables and TensorBoard HParams at the end;
- a trial pulls its run directory before it starts (so it continues from a checkpoint another node
  pushed), pushes its checkpoint after every epoch and its run directory when it finishes;
- an audit task pulls its group's run directories and pushes its audit;
- `demem resume`, `status` and `summarize` pull the experiment first (Tune's logs excepted), and
  `summarize` pushes its summary back;
- Tune's own storage (`tune/run-<k>`: logs, TensorBoard curves) is handed to Tune with the same
  filesystem.

Endpoint and credentials come from pyarrow's usual places: the environment (AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, GOOGLE_APPLICATION_CREDENTIALS, ...) or the URI's query
(`s3://bucket/prefix?endpoint_override=host:port&scheme=http`), which every node then reads alike.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path, PurePosixPath

from demem.io import atomic_path

SCHEMES = ("s3", "gs", "gcs")
MAX_FILES = 1_000_000  # a pull refuses a prefix holding more files than any experiment writes
TUNE = "tune"  # Tune's storage: written and read by Tune itself
LOCK = ".driver.lock"  # the driver's lock: local to the machine that holds it


class StorageError(RuntimeError):
    """The object storage cannot be used: unknown scheme, missing bucket, refused credentials."""


def is_uri(storage: str | Path) -> bool:
    """Whether `storage` names object storage (scheme://...) rather than a directory."""
    return isinstance(storage, str) and "://" in storage


def join_uri(base: str, name: str) -> str:
    """`base` with the path component `name` appended, before any query string."""
    path, sep, query = base.partition("?")
    return f"{path.rstrip('/')}/{name}{sep}{query}"


def redact(uri: str) -> str:
    """`uri` without credentials written into it (s3://KEY:SECRET@bucket/... -> s3://***@bucket/...)."""
    scheme, sep, rest = uri.partition("://")
    host, slash, tail = rest.partition("/")
    if "@" in host:
        host = "***@" + host.rsplit("@", 1)[1]
    return f"{scheme}{sep}{host}{slash}{tail}"


def name_of(uri: str) -> str:
    """The last path component of an experiment's URI (its name)."""
    return uri.partition("?")[0].rstrip("/").rsplit("/", 1)[-1]


def staging_dir(uri: str) -> Path:
    """The local mirror of the experiment at `uri` on this machine."""
    root = Path(os.environ.get("DEMEM_STAGING") or Path.home() / ".cache" / "demem" / "staging")
    digest = hashlib.sha256(uri.encode()).hexdigest()[:16]
    return root / digest / name_of(uri)


def _safe_rel(rel: str) -> str | None:
    """`rel` when it is a plain relative path: no '..', '.' or empty component, not absolute."""
    parts = rel.split("/")
    if any(p in ("", ".", "..") or "\\" in p or "\0" in p for p in parts):
        return None
    return rel


@dataclass(frozen=True)
class Remote:
    """An experiment directory on object storage: `uri` is scheme://bucket/prefix/<name>[?options]."""

    uri: str

    def __post_init__(self) -> None:
        scheme = self.uri.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise StorageError(
                f"{redact(self.uri)}: storage must be a directory or an s3:// or gs:// URI, not {scheme}://"
            )

    @cached_property
    def _fs(self):
        """(pyarrow FileSystem, the experiment's path on it): made once per Remote, not per file."""
        from pyarrow import fs

        try:
            filesystem, path = fs.FileSystem.from_uri(self.uri)
        except (OSError, ValueError) as e:
            raise StorageError(f"{redact(self.uri)}: {_first_line(e)}") from e
        return filesystem, path.rstrip("/")

    def filesystem(self):
        """(pyarrow FileSystem, the experiment's path on it, without scheme)."""
        return self._fs

    @property
    def local(self) -> Path:
        return staging_dir(self.uri)

    def check(self) -> None:
        """Refuse before any work when the bucket is missing or the credentials are refused."""
        from pyarrow import fs

        filesystem, path = self.filesystem()
        bucket = path.split("/", 1)[0]
        try:
            info = filesystem.get_file_info(bucket)
        except OSError as e:
            raise StorageError(f"{redact(self.uri)}: cannot reach the storage: {_first_line(e)}") from e
        if info.type == fs.FileType.NotFound:
            raise StorageError(f"{redact(self.uri)}: bucket {bucket!r} does not exist (create it first)")

    def exists(self, rel: str) -> bool:
        from pyarrow import fs

        filesystem, path = self.filesystem()
        return filesystem.get_file_info(f"{path}/{rel}").type != fs.FileType.NotFound

    def names(self, rel: str) -> set[str]:
        """The entries directly under `rel`."""
        from pyarrow import fs

        filesystem, path = self.filesystem()
        infos = filesystem.get_file_info(fs.FileSelector(f"{path}/{rel}", allow_not_found=True))
        return {PurePosixPath(i.path).name for i in infos}

    def pull(self, rel: str = "", *, skip_top: tuple[str, ...] = (TUNE,), skip_names: tuple[str, ...] = ()) -> int:
        """Make the mirror's `rel` (a directory) hold what the storage holds there: files copied over,
        local files the storage lacks removed (a stale mirror must not pass for the record). Returns
        how many files were copied. `skip_top`: top-level entries of the experiment left alone;
        `skip_names`: file names left alone."""
        from pyarrow import fs

        filesystem, path = self.filesystem()
        base = f"{path}/{rel}".rstrip("/")
        infos = filesystem.get_file_info(fs.FileSelector(base, recursive=True, allow_not_found=True))
        files = [i for i in infos if i.type == fs.FileType.File]
        if len(files) > MAX_FILES:
            where = rel or "the experiment"
            raise StorageError(f"{redact(self.uri)}: more than {MAX_FILES} files under {where}; refused")

        def left_alone(sub: str) -> bool:
            return sub.split("/", 1)[0] in skip_top + (LOCK,) or PurePosixPath(sub).name in skip_names

        wanted = set()
        for info in files:
            sub = _safe_rel(f"{rel}/{info.path[len(base) + 1 :]}".strip("/"))
            if sub is None:
                why = "not a plain relative path"
                raise StorageError(f"{redact(self.uri)}: refusing the object name {info.path!r} ({why})")
            if not left_alone(sub):
                wanted.add(sub)
        start = self.local / rel if rel else self.local
        if start.is_dir():
            for f in start.rglob("*"):
                sub = f.relative_to(self.local).as_posix()
                if f.is_file() and sub not in wanted and not left_alone(sub) and not _temporary(f.name):
                    f.unlink()
        for sub in sorted(wanted):
            target = self.local / sub
            target.parent.mkdir(parents=True, exist_ok=True)
            with filesystem.open_input_stream(f"{path}/{sub}") as src, atomic_path(target) as tmp:
                Path(tmp).write_bytes(src.read())
        return len(wanted)

    def push(self, rel: str = "", *, skip_top: tuple[str, ...] = (TUNE,), skip_names: tuple[str, ...] = ()) -> int:
        """Copy the mirror's files under `rel` (a file or a directory) to the storage; returns how many."""
        filesystem, path = self.filesystem()
        start = self.local / rel if rel else self.local
        files = [start] if start.is_file() else sorted(p for p in start.rglob("*") if p.is_file())
        n = 0
        for f in files:
            sub = f.relative_to(self.local).as_posix()
            if sub.split("/", 1)[0] in skip_top + (LOCK,) or f.name in skip_names or _temporary(f.name):
                continue
            with filesystem.open_output_stream(f"{path}/{sub}") as out:
                out.write(f.read_bytes())
            n += 1
        return n

    def delete(self, rel: str) -> None:
        """Remove one file from the storage, if there."""
        filesystem, path = self.filesystem()
        try:
            filesystem.delete_file(f"{path}/{rel}")
        except FileNotFoundError:
            pass


def _temporary(name: str) -> bool:
    """A file being written by demem.io.atomic_path (`.<name>.<random>.tmp`)."""
    return name.startswith(".") and name.endswith(".tmp")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
