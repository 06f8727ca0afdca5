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
import stat
import time
from pathlib import Path


class ExperimentBusy(RuntimeError):
    """Another live driver holds the experiment."""


class UnsafeLock(ValueError):
    """The lock's path is a symbolic link, not a plain file, or a file with other hard links: a
    results directory from elsewhere could point it at a file of ours, which we would truncate."""


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
        # Never through a link (O_NOFOLLOW), and only a plain file of its own: we truncate it below.
        try:
            fd = os.open(
                self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o666
            )  # umask applies
        except OSError:
            if os.path.islink(self.path) or os.path.isdir(self.path):
                raise UnsafeLock(
                    f"{self.path} is not a plain file (a symbolic link or a directory); remove it"
                ) from None
            raise
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            os.close(fd)
            what = "not a plain file" if not stat.S_ISREG(st.st_mode) else "a file with other hard links"
            raise UnsafeLock(f"{self.path} is {what}; remove it")
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
