"""One driver per experiment: an exclusive advisory lock (flock) on `<experiment>/.driver.lock`.

The lock is held for the driver's lifetime and released by the kernel when the process ends, however
it ends, so a lock left by a killed driver is never "stale": the next driver simply takes it. The
file records the holder (pid, host, start time) for the message a second driver gets. flock is
per-host on some network filesystems: two drivers on two hosts sharing one results mount are only
kept apart where the filesystem propagates locks (NFSv4, CephFS, Lustre with flock).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path


class ExperimentBusy(RuntimeError):
    """Another live driver holds the experiment."""


class ExperimentLock:
    """`with ExperimentLock(exp.lock): ...` runs the block as the experiment's only driver."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def __enter__(self) -> ExperimentLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)  # the umask decides who may read it
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(fd)
            os.close(fd)
            raise ExperimentBusy(
                f"{self.path.parent} is in use by another driver ({holder}); wait for it to finish, or stop "
                "that process, then `demem resume` it"
            ) from None
        # Written in place (not replaced): the lock lives on this inode.
        record = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(record).encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _describe(fd: int) -> str:
    try:
        rec = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(rec["since"])))
        return f"pid {int(rec['pid'])} on {str(rec['host'])[:100]}, since {since}"
    except (ValueError, KeyError, TypeError, OSError):
        return "holder unknown"
