"""Atomic file writes: every file the house writes appears whole, or not at all.

Each writer writes a uniquely named temp file in the target's directory and renames it over the
target, which is atomic within one filesystem: a reader (or a resumed run after a crash) sees the old
file or the new one, never half of one. Files get the permissions the user's umask allows (like any
file they create), not the 0600 of a bare temp file, so a shared results disk stays readable.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np


@functools.cache
def _file_mode() -> int:
    """0666 less the process's umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: read it by setting it, and put it straight back
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path to write; on a clean exit it replaces `path`, on an error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path: str | Path, obj: Any) -> Path:
    """Indented JSON with sorted keys; numpy scalars and arrays become plain numbers and lists."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default))


def write_npy(path: str | Path, array: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.save would append ".npy"
        np.save(f, array, allow_pickle=False)
    return Path(path)


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)
    return Path(path)


def write_parquet(path: str | Path, df: Any) -> Path:
    """A pandas DataFrame as Parquet (pyarrow), without its index."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), tmp)
    return Path(path)
