"""orchestrator.leftovers: the next driver stops what a SIGKILLed driver's private Ray left running.

The fast tests stand in for Ray with plain sleeping Python processes that name a (made-up) session directory
on their command line or hold a file under it open; the slow test kills a real driver."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator import leftovers
from orchestrator.leftovers import process_start, record_private_instance, session_processes, stop_leftovers

ROOT = Path(__file__).resolve().parents[2]
SESSION = "session_2026-01-02_03-04-05_123456_4242"
SLEEP = [sys.executable, "-c", "import time; time.sleep(120)"]  # extra arguments land in sys.argv


@pytest.fixture
def state(tmp_path, monkeypatch):
    folder = tmp_path / "state"
    monkeypatch.setenv("DEMEM_STATE", str(folder))
    return folder


@pytest.fixture
def spawn():
    """Start processes that are stopped (by pid, if still running) at the end of the test."""
    procs: list[subprocess.Popen] = []

    def start(args, **kw) -> subprocess.Popen:
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, **kw)
        procs.append(p)
        return p

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


@pytest.fixture
def signals(monkeypatch):
    """Record every signal leftovers would send, and send none."""
    sent: list[tuple[int, int]] = []

    def fake(pid, start, sig):
        sent.append((pid, sig))
        return True

    monkeypatch.setattr(leftovers, "_send_signal", fake)
    return sent


def session_dir(tmp_path: Path, name: str = SESSION) -> Path:
    d = tmp_path / "ray" / name
    (d / "logs").mkdir(parents=True)
    return d


def write_record(state: Path, session: Path, **changes) -> Path:
    rec = {
        "version": leftovers.VERSION,
        "pid": os.getpid(),
        "start": process_start(os.getpid()),
        "boot_id": leftovers._boot_id(),
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "session_dir": str(session),
        "session_dir_real": os.path.realpath(session),
        "recorded_at": time.time(),
    }
    rec.update(changes)
    state.mkdir(parents=True, exist_ok=True)
    path = state / f"{rec['pid']}-{rec['start']}.json"
    path.write_text(json.dumps(rec))
    return path


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def bait(spawn, session: Path) -> subprocess.Popen:
    """A process that names the session directory on its command line, like Ray's raylet."""
    p = spawn([*SLEEP, f"--log_dir={session}/logs"])
    wait_for(lambda: process_start(p.pid) is not None and session_processes((str(session),)).get(p.pid))
    return p


def wait_for(cond, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := cond():
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


def gone(pid: int) -> bool:
    return process_start(pid) is None


def test_record_and_forget(state, tmp_path):
    session = session_dir(tmp_path)
    path = record_private_instance(str(session))
    assert path is not None and path.parent == state
    rec = json.loads(path.read_text())
    assert rec["pid"] == os.getpid() and rec["start"] == process_start(os.getpid())
    assert rec["session_dir"] == str(session) and rec["uid"] == os.getuid()
    assert leftovers._load(path) == rec
    leftovers.forget_private_instance()
    assert not path.exists()
    leftovers.forget_private_instance()  # nothing to forget: no error


def test_live_driver_is_left_alone(state, tmp_path, spawn, signals):
    session = session_dir(tmp_path)
    p = bait(spawn, session)
    path = write_record(state, session)  # this test process is the (live) driver
    assert stop_leftovers(echo=pytest.fail) == []
    assert signals == [] and path.exists() and not gone(p.pid)


def test_dead_driver_without_processes_is_removed(state, tmp_path, signals):
    lines: list[str] = []
    gone_pid = write_record(state, session_dir(tmp_path), pid=dead_pid())
    reused = write_record(state, session_dir(tmp_path, SESSION + "7"), start=process_start(os.getpid()) - 1)
    assert stop_leftovers(echo=lines.append) == []
    assert signals == [] and lines == []
    assert not gone_pid.exists() and not reused.exists()


def test_dead_driver_leftovers_are_stopped(state, tmp_path, spawn):
    session = session_dir(tmp_path)
    by_cmdline = bait(spawn, session)
    with open(session / "logs" / "agent.out", "w") as out:  # a retitled agent: only an open log file
        by_fd = spawn(SLEEP, stdout=out)
    other = spawn([*SLEEP, f"--log_dir={session}0/logs"])  # another session's name, longer
    unrelated = spawn(SLEEP)
    wait_for(lambda: by_fd.pid in session_processes((str(session),)))
    path = write_record(state, session, pid=dead_pid())
    lines: list[str] = []
    t0 = time.monotonic()
    stopped = stop_leftovers(echo=lines.append)
    assert time.monotonic() - t0 < leftovers.TERM_WAIT_S  # dies on SIGTERM: no SIGKILL wait
    assert sorted(stopped) == sorted([by_cmdline.pid, by_fd.pid])
    assert by_cmdline.wait(timeout=5) == -signal.SIGTERM and by_fd.wait(timeout=5) == -signal.SIGTERM
    assert other.poll() is None and unrelated.poll() is None
    assert len(lines) == 1 and "stopped 2 leftover Ray process(es)" in lines[0] and str(session) in lines[0]
    assert not path.exists()


def test_sigkill_after_sigterm(state, tmp_path, spawn, monkeypatch):
    monkeypatch.setattr(leftovers, "TERM_WAIT_S", 0.5)
    session = session_dir(tmp_path)
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(120)"
    p = spawn([sys.executable, "-c", code, f"--session-dir={session}"], stdout=subprocess.PIPE)
    p.stdout.readline()  # SIGTERM is ignored from here on
    write_record(state, session, pid=dead_pid())
    assert stop_leftovers(echo=lambda _: None) == [p.pid]
    assert p.wait(timeout=5) == -signal.SIGKILL


def test_crafted_records_signal_nothing(state, tmp_path, spawn, signals, monkeypatch):
    session = session_dir(tmp_path)
    p = bait(spawn, session)  # would match each of these records if it were believed
    dead = dead_pid()
    crafted = [
        write_record(state, session, pid=dead, uid=os.getuid() + 1),
        write_record(state, session, pid=dead + 1, host="elsewhere"),
        write_record(state, session, pid=dead + 2, version=99),
        write_record(state, session, pid=dead + 3, session_dir="/", session_dir_real="/"),
        write_record(state, session, pid=dead + 4, session_dir=str(session.parent)),
        write_record(state, session, pid=dead + 5, session_dir=str(session) + "/../" + SESSION),
        write_record(state, session, pid=dead + 6, start="0"),
    ]
    (state / "9-9.json").write_text("{not json")
    (state / "8-8.json").write_text(json.dumps([1, 2]))
    huge = write_record(state, session, pid=dead + 7)
    huge.write_text(huge.read_text()[:-1] + ', "pad": "' + "x" * (2 * leftovers.MAX_RECORD_BYTES) + '"}')
    renamed = write_record(state, session, pid=dead + 8)
    renamed.rename(state / f"{dead + 9}-0.json")
    linked = write_record(state, session, pid=dead + 10)
    target = tmp_path / "elsewhere.json"
    linked.rename(target)
    (state / linked.name).symlink_to(target)
    assert stop_leftovers(echo=pytest.fail) == []
    assert signals == []
    assert all(c.exists() for c in crafted) and (state / "9-9.json").exists() and huge.exists()
    monkeypatch.setattr(leftovers, "TERM_WAIT_S", 0)
    monkeypatch.setattr(leftovers, "KILL_WAIT_S", 0)
    believable = write_record(state, session, pid=dead)  # the same, believable: the bait is found
    lines: list[str] = []
    assert stop_leftovers(echo=lines.append) == []  # the faked signals leave it alive
    assert signals == [(p.pid, signal.SIGTERM), (p.pid, signal.SIGKILL)]
    assert f"still alive: {p.pid}" in lines[0] and believable.exists()  # kept for the next driver


def test_too_many_records_are_not_all_read(state, tmp_path, signals, monkeypatch):
    monkeypatch.setattr(leftovers, "MAX_RECORDS", 3)
    session = session_dir(tmp_path)
    for i in range(6):
        write_record(state, session, pid=dead_pid(), start=i)
    stop_leftovers(echo=lambda _: None)
    assert len(list(state.glob("*.json"))) == 3


def test_other_users_processes_and_this_process_are_never_signalled(state, tmp_path, spawn, signals, monkeypatch):
    session = session_dir(tmp_path)
    p = bait(spawn, session)
    own = open(session / "logs" / "driver.log", "w")  # this process now "belongs" to the session too
    try:
        real = leftovers._proc_uids
        monkeypatch.setattr(leftovers, "_proc_uids", lambda pid: (12345,) * 4 if pid == p.pid else real(pid))
        write_record(state, session, pid=dead_pid())
        assert stop_leftovers(echo=lambda _: None) == []
        assert signals == []
    finally:
        own.close()


# ---- a real private Ray instance ----------------------------------------------------------------

DRIVER = textwrap.dedent(
    """
    import sys, time
    from orchestrator.leftovers import record_private_instance
    from orchestrator.run import start_ray
    start_ray("local")
    print("RECORDED", record_private_instance(), flush=True)
    time.sleep(600)
    """
)


def _children(pids: set[int]) -> set[int]:
    """The live descendants of `pids` (read from /proc)."""
    parents: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (fields := leftovers._stat_fields(int(name))) and fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(name))
    found, todo = set(), list(pids)
    while todo:
        for child in parents.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


@pytest.mark.slow
def test_killed_driver_leftovers_are_stopped(state):
    ray_tmp = tempfile.mkdtemp(prefix="dm-lo-", dir="/tmp")  # short: Ray's socket paths
    env = dict(
        os.environ,
        RAY_AUTH_MODE="disabled",
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        RAY_TMPDIR=ray_tmp,
        DEMEM_STATE=str(state),
        PYTHONPATH=str(ROOT),
    )
    env.pop("RAY_ADDRESS", None)
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER], env=env, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True
    )
    started: dict[int, int] = {}  # every process of the instance, with its start time
    try:
        line = ""
        for line in driver.stdout:  # noqa: B007 - the last line read is the one wanted
            if line.startswith("RECORDED"):
                break
        assert line.startswith("RECORDED") and line.split()[1] != "None", line
        (path,) = state.glob("*.json")
        rec = json.loads(path.read_text())
        assert rec["pid"] == driver.pid and rec["session_dir"].startswith(ray_tmp)
        time.sleep(2)  # let the raylet start its agents and workers
        started = {p: s for p in _children({driver.pid}) if (s := process_start(p)) is not None}
        assert started, "the private instance has no processes"
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        time.sleep(3)  # gcs_server, raylet and workers go by themselves within ~2 s; the agents stay
        left = {p for p, s in started.items() if process_start(p) == s}
        found = set(session_processes((rec["session_dir"], rec["session_dir_real"])))
        assert left <= found  # every survivor is recognised by its session directory
        lines: list[str] = []
        t0 = time.monotonic()
        stopped = stop_leftovers(echo=lines.append)
        took = time.monotonic() - t0
        assert left <= set(stopped)
        assert not any(process_start(p) == s for p, s in started.items())
        assert not path.exists()
        if left:
            assert len(lines) == 1 and rec["session_dir"] in lines[0], lines
        print(f"survivors after SIGKILL + 3 s: {sorted(left)}; stopped: {stopped} in {took:.1f} s; {lines}")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=10)
        for p, s in started.items():
            leftovers._send_signal(p, s, signal.SIGKILL)
        shutil.rmtree(ray_tmp, ignore_errors=True)
