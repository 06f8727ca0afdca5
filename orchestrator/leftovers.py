"""Stop what a killed driver's private local Ray instance left running.

When the `demem run` / `demem resume` driver is killed with SIGKILL, most of its private Ray
instance (gcs_server, raylet, monitor, workers) goes within seconds, but Ray's `DashboardAgent` and
`RuntimeEnvAgent` stay alive for about a minute longer (their command lines are rewritten to
`ray::DashboardAgent` / `ray::RuntimeEnvAgent`, so they do not name their session directory there;
they still hold their log files under it open).

Every driver that started a private instance records it (`record_private_instance`) in a per-user
state directory of ours: `$DEMEM_STATE`, else `~/.cache/demem/ray-private/` (never the experiment
directory: results may come from other people and must never make us signal anything). The next
driver calls `stop_leftovers` before it starts Ray: for each record whose driver is gone it stops the
processes of this user that name the recorded session directory on their command line or hold a
file under it open, and removes the record. A clean exit removes its own record
(`forget_private_instance`).

Safety: only records of this host, this boot and this user, in files this user owns, not symlinks,
of bounded size and number are read; a record whose driver is alive (same pid and start time) is
left alone; only processes of this user are signalled, never this process or its ancestors, and
each signal goes to the very process that was matched (pid and start time checked again, through a
pidfd where Linux has one). Everything here is best effort: it never raises.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from demem.io import write_json

VERSION = 1
MAX_RECORDS = 64  # record files looked at per call
MAX_RECORD_BYTES = 16 * 1024  # a real record is ~500 bytes
MAX_PROCS = 100_000  # /proc entries scanned per call
MAX_CMDLINE_BYTES = 64 * 1024
MAX_FDS = 4096  # open files looked at per process
TERM_WAIT_S = 3.0  # after SIGTERM, before SIGKILL (Ray's agents ignore SIGTERM for ~a minute)
KILL_WAIT_S = 2.0
# what Ray names a session directory: session_<date>_<time>_<microseconds>_<pid>
SESSION_NAME = re.compile(r"session_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_\d+_\d+")
# a character that may continue a path component; a match must not be followed by one
_PATH_CHAR = re.compile(r"[A-Za-z0-9_.\-]")

Echo = Callable[[str], Any]


def state_dir() -> Path:
    """Where this user's records live: $DEMEM_STATE, else ~/.cache/demem/ray-private."""
    env = os.environ.get("DEMEM_STATE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "demem" / "ray-private"


# ---- /proc -------------------------------------------------------------------------------------


def _read(path: str, limit: int) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit)
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat from field 3 (state) on; the command name may hold spaces and ')'."""
    raw = _read(f"/proc/{pid}/stat", 4096)
    if raw is None:
        return None
    text = raw.decode(errors="replace")
    close = text.rfind(")")
    return text[close + 2 :].split() if close >= 0 else None


def process_start(pid: int) -> int | None:
    """The process's start time (clock ticks after boot, field 22 of /proc/<pid>/stat), or None
    when there is no such process or it has already exited (a zombie)."""
    fields = _stat_fields(pid)
    if not fields or len(fields) < 20 or fields[0] in ("Z", "X", "x"):
        return None
    try:
        return int(fields[19])
    except ValueError:
        return None


def _parent(pid: int) -> int | None:
    fields = _stat_fields(pid)
    try:
        return int(fields[1]) if fields and len(fields) > 1 else None
    except ValueError:
        return None


def _proc_uids(pid: int) -> tuple[int, ...] | None:
    """Real, effective, saved and filesystem uid of the process."""
    raw = _read(f"/proc/{pid}/status", 8192)
    if raw is None:
        return None
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith("Uid:"):
            try:
                return tuple(int(x) for x in line.split()[1:])
            except ValueError:
                return None
    return None


def _boot_id() -> str:
    raw = _read("/proc/sys/kernel/random/boot_id", 100)
    return raw.decode(errors="replace").strip() if raw else ""


def _protected() -> set[int]:
    """This process and its ancestors."""
    pids, pid = set(), os.getpid()
    while pid and pid not in pids and len(pids) < 1000:
        pids.add(pid)
        pid = _parent(pid) or 0
    return pids


def _names(text: str, dirs: tuple[str, ...]) -> bool:
    """Whether `text` holds one of `dirs` as a whole path (not as a prefix of a longer name)."""
    for d in dirs:
        start = text.find(d)
        while start >= 0:
            end = start + len(d)
            if end == len(text) or not _PATH_CHAR.match(text[end]):
                return True
            start = text.find(d, start + 1)
    return False


def _belongs(pid: int, dirs: tuple[str, ...]) -> bool:
    """Whether the process names a session directory on its command line or holds a file under it
    open (Ray's agents and workers retitle themselves, e.g. `ray::DashboardAgent`)."""
    raw = _read(f"/proc/{pid}/cmdline", MAX_CMDLINE_BYTES)
    if raw and any(_names(arg, dirs) for arg in raw.decode(errors="replace").split("\0")):
        return True
    try:
        with os.scandir(f"/proc/{pid}/fd") as it:
            for n, entry in enumerate(it):
                if n >= MAX_FDS:
                    break
                try:
                    target = os.readlink(entry.path)
                except OSError:
                    continue
                if any(target == d or target.startswith(d + "/") for d in dirs):
                    return True
    except OSError:
        pass
    return False


def session_processes(session_dirs: tuple[str, ...]) -> dict[int, int]:
    """{pid: start time} of this user's live processes that belong to one of the session
    directories, leaving out this process and its ancestors."""
    uid, protected, found = os.getuid(), _protected(), {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for name in entries[:MAX_PROCS]:
        if not name.isdigit():
            continue
        pid = int(name)
        if pid in protected:
            continue
        uids = _proc_uids(pid)
        if not uids or any(u != uid for u in uids):
            continue
        start = process_start(pid)
        if start is None or not _belongs(pid, session_dirs):
            continue
        if process_start(pid) == start:  # still the same process
            found[pid] = start
    return found


def _send_signal(pid: int, start: int, sig: int) -> bool:
    """Signal the process `pid` only while it is still the one that started at `start`."""
    fd = None
    try:
        if hasattr(os, "pidfd_open") and hasattr(signal, "pidfd_send_signal"):
            with contextlib.suppress(OSError):
                fd = os.pidfd_open(pid)
        if process_start(pid) != start:  # gone, or the pid is another process now
            return False
        if fd is not None:
            signal.pidfd_send_signal(fd, sig)  # the pidfd pins the process just checked
        else:
            os.kill(pid, sig)
        return True
    except OSError:
        return False
    finally:
        if fd is not None:
            os.close(fd)


def _alive(procs: dict[int, int]) -> dict[int, int]:
    return {p: s for p, s in procs.items() if process_start(p) == s}


def _wait(procs: dict[int, int], seconds: float) -> dict[int, int]:
    deadline = time.monotonic() + seconds
    left = _alive(procs)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = _alive(left)
    return left


def _stop(procs: dict[int, int]) -> tuple[list[int], list[int]]:
    """SIGTERM, wait, SIGKILL what is left, wait. Returns (stopped pids, pids still alive)."""
    protected = _protected()
    procs = {p: s for p, s in procs.items() if p not in protected}
    signalled = {p: s for p, s in procs.items() if _send_signal(p, s, signal.SIGTERM)}
    left = _wait(signalled, TERM_WAIT_S)
    for p, s in left.items():
        if _send_signal(p, s, signal.SIGKILL):
            signalled[p] = s
    left = _wait(left, KILL_WAIT_S)
    return sorted(p for p in signalled if p not in left), sorted(left)


# ---- records -----------------------------------------------------------------------------------


def _session_dir() -> str | None:
    import ray

    node = getattr(getattr(ray._private.worker, "global_worker", None), "node", None)
    node = node or getattr(ray._private.worker, "_global_node", None)
    return str(node.get_session_dir_path()) if node is not None else None


def _record_path(pid: int, start: int) -> Path:
    # the start time in the name too: a record of an earlier driver with the same pid is kept
    return state_dir() / f"{pid}-{start}.json"


def record_private_instance(session_dir: str | None = None) -> Path | None:
    """Record this driver's private local Ray instance (call right after `ray.init` started it).
    Returns the record's path, or None when it could not be written (never raises)."""
    try:
        session_dir = session_dir or _session_dir()
        start = process_start(os.getpid())
        if not session_dir or start is None:
            return None
        record = {
            "version": VERSION,
            "pid": os.getpid(),
            "start": start,
            "boot_id": _boot_id(),
            "host": socket.gethostname(),
            "uid": os.getuid(),
            "session_dir": session_dir,
            "session_dir_real": os.path.realpath(session_dir),
            "recorded_at": time.time(),
        }
        folder = state_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        return write_json(_record_path(record["pid"], start), record)
    except Exception:  # noqa: BLE001 - a record that cannot be written must not stop the run
        return None


def forget_private_instance() -> None:
    """Remove this driver's record (at a clean exit, after `ray.shutdown()`)."""
    start = process_start(os.getpid())
    if start is not None:
        with contextlib.suppress(OSError):
            _record_path(os.getpid(), start).unlink()


def _load(path: Path) -> dict[str, Any] | None:
    """A record this user wrote for this host and boot, or None for anything else."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_size > MAX_RECORD_BYTES:
            return None
        rec = json.loads(os.read(fd, MAX_RECORD_BYTES + 1))
    except (OSError, ValueError):
        return None
    finally:
        os.close(fd)
    if not isinstance(rec, dict) or rec.get("version") != VERSION:
        return None
    ints = ("pid", "start", "uid")
    if not all(type(rec.get(k)) is int and rec[k] >= 0 for k in ints) or rec["pid"] <= 1:
        return None
    if rec["uid"] != os.getuid() or rec.get("host") != socket.gethostname():
        return None
    if path.name != f"{rec['pid']}-{rec['start']}.json":
        return None
    dirs = [rec.get("session_dir"), rec.get("session_dir_real")]
    for d in dirs:
        if not (isinstance(d, str) and 0 < len(d) < 4096 and os.path.isabs(d) and "\0" not in d):
            return None
        if not SESSION_NAME.fullmatch(os.path.basename(d)) or os.path.normpath(d) != d:
            return None
    if not isinstance(rec.get("boot_id"), str):
        return None
    return rec


def _records() -> Iterator[tuple[Path, dict[str, Any]]]:
    try:
        with os.scandir(state_dir()) as it:
            names = []
            for n, entry in enumerate(it):
                if n >= 10 * MAX_RECORDS:
                    break
                if entry.name.endswith(".json") and not entry.name.startswith("."):
                    names.append(entry.name)
    except OSError:
        return
    for name in sorted(names)[:MAX_RECORDS]:
        path = state_dir() / name
        rec = _load(path)
        if rec is not None:
            yield path, rec


def _driver_alive(rec: dict[str, Any]) -> bool:
    if rec["boot_id"] != _boot_id():
        return False  # rebooted since: nothing of that instance can be running
    return process_start(rec["pid"]) == rec["start"]


def stop_leftovers(echo: Echo = print) -> list[int]:
    """Stop what earlier private Ray instances of this user left running after their driver died
    (killed, crashed), one line per instance where something was stopped, and remove their
    records. Records of live drivers are left alone. Returns the pids stopped. Never raises."""
    stopped: list[int] = []
    try:
        for path, rec in _records():
            if _driver_alive(rec):
                continue
            survivors: list[int] = []
            if rec["boot_id"] == _boot_id():
                dirs = tuple(dict.fromkeys((rec["session_dir"], rec["session_dir_real"])))
                procs = session_processes(dirs)
                if procs:
                    done, survivors = _stop(procs)
                    stopped += done
                    line = (
                        f"stopped {len(done)} leftover Ray process(es) of an earlier private instance "
                        f"(driver pid {rec['pid']}, gone; session {rec['session_dir']})"
                    )
                    if survivors:
                        line += f"; still alive: {', '.join(map(str, survivors))}"
                    echo(line)
            if not survivors:
                with contextlib.suppress(OSError):
                    path.unlink()
    except Exception:  # noqa: BLE001 - cleaning up after others must never stop this run
        pass
    return stopped
