"""`check_shared`: every node of the cluster must see the driver's results directory. On one node there
is nothing to check; a cluster on 127.0.0.1 shares the filesystem; a node in a private mount namespace
(an empty tmpfs over the results directory) does not, and is named in the refusal. The cluster
scenarios run in their own processes (drivers of their own clusters), apart from the session's Ray."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from orchestrator.probe import StorageNotShared, check_shared

from .conftest import ROOT

# A driver on head + 2 nodes of one machine: checks argv[1] and lists what is left there.
_SHARED_DRIVER = """
import sys
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from orchestrator.probe import check_shared
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
try:
    cluster.add_node(num_cpus=1)
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    print("CHECKED", check_shared(Path(sys.argv[1]), timeout_s=240))
    print("LEFT", sorted(p.name for p in Path(sys.argv[1]).iterdir()))
finally:
    ray.shutdown()
    cluster.shutdown()
"""

# A Ray node joining the cluster at argv[1] as `Cluster.add_node` starts one (`ray start --address` refuses
# with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, and with =1 turns 127.0.0.1 into this machine's outward IP,
# where a loopback cluster does not listen); run in a mount namespace of its own. Stops on SIGTERM.
_NODE = """
import sys, time
import ray._private.node
import ray._private.parameter
params = ray._private.parameter.RayParams(
    gcs_address=sys.argv[1], num_cpus=1, num_gpus=0, resources={"hidden": 1}, object_store_memory=150 * 2**20,
    min_worker_port=0, max_worker_port=0, node_manager_port=0, include_log_monitor=False,
)
ray._private.node.Node(params, head=False, shutdown_at_exit=True, spawn_reaper=True)
while True:
    time.sleep(1)
"""

# A driver on a head (Cluster) and the node above, started by `unshare -m` after an empty tmpfs was
# mounted over argv[1] (the storage) there. Its pid (= process group) goes to argv[2] for the test's
# cleanup. Checks argv[1]/exp, prints the refusal and what is left there.
_HIDDEN_DRIVER = """
import json, os, signal, subprocess, sys, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from orchestrator.probe import StorageNotShared, check_shared
storage, pidfile, node_script = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
hide = 'mount -t tmpfs none "$1" && shift && exec "$@"'
node = subprocess.Popen(
    ["unshare", "-m", "sh", "-c", hide, "sh", str(storage), sys.executable, "-c", node_script, cluster.address],
    start_new_session=True,
)
pidfile.write_text(str(node.pid))
try:
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    deadline = time.monotonic() + 240
    while not any(n["Alive"] and n["Resources"].get("hidden") for n in ray.nodes()):
        assert node.poll() is None, f"the hidden node exited: {node.returncode}"
        assert time.monotonic() < deadline, "the hidden node did not join"
        time.sleep(1)
    print("HIDDEN", next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("hidden")))
    try:
        print("CHECKED", check_shared(storage / "exp", timeout_s=240))
    except StorageNotShared as e:
        print("REFUSED", json.dumps([node_id for node_id, _, _ in e.failures]))
        print(e)
    print("LEFT", sorted(p.name for p in (storage / "exp").iterdir()))
finally:
    ray.shutdown()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(node.pid, sig)
            node.wait(timeout=60)
            break
        except ProcessLookupError:
            break
        except subprocess.TimeoutExpired:
            pass
    node.wait()
    cluster.shutdown()
"""


def _drive(script: str, *args: str, pidfile: Path | None = None) -> str:
    """Runs `script` as a driver in its own session with a private short RAY_TMPDIR; stops whatever
    it (and the process group named in `pidfile`) left running; returns its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="dm-pr-")  # short: Ray's socket paths must stay under 107 bytes
    env.update(
        RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        groups = [proc.pid] + ([int(pidfile.read_text())] if pidfile is not None and pidfile.exists() else [])
        for pgid in groups:
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass  # already gone: the driver stopped everything
        proc.wait()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    return out


def test_one_node_has_nothing_to_check_and_writes_nothing(ray_session, tmp_path):
    assert check_shared(tmp_path) == 1
    assert list(tmp_path.iterdir()) == []


def test_the_refusal_names_the_directory_each_node_and_what_to_do(tmp_path):
    failures = [("a" * 56, "host-b, 10.0.0.2", "did not answer within 60 s")]
    message = str(StorageNotShared(tmp_path, failures, 3))
    assert message.splitlines() == [
        f"{tmp_path} is not shared by every node of the Ray cluster (1 of 3 failed the check):",
        f"  node {'a' * 12} (host-b, 10.0.0.2): did not answer within 60 s",
        "Trials on those nodes would write results the driver never sees: use a directory on a shared mount "
        "every node sees, or object storage: --storage s3://bucket/prefix",
    ]


@pytest.mark.slow
def test_nodes_of_one_machine_share_the_directory(tmp_path):
    out = _drive(_SHARED_DRIVER, str(tmp_path / "results"))
    assert "CHECKED 3" in out.splitlines()
    assert "LEFT []" in out.splitlines()  # created (it was missing) and left empty


def _cannot_hide(directory: Path) -> str | None:
    """Why an empty tmpfs cannot be mounted over `directory` in a private mount namespace, if it cannot."""
    if shutil.which("unshare") is None:
        return "no `unshare` here"
    done = subprocess.run(
        ["unshare", "-m", "mount", "-t", "tmpfs", "none", str(directory)], capture_output=True, text=True
    )
    return None if done.returncode == 0 else f"`unshare -m` + tmpfs mount not permitted here: {done.stderr.strip()}"


@pytest.mark.slow
def test_a_node_that_does_not_see_the_directory_is_named_in_the_refusal(tmp_path):
    storage = tmp_path / "results"
    storage.mkdir()
    if (why := _cannot_hide(storage)) is not None:
        pytest.skip(why)
    pidfile = tmp_path / "node.pid"
    out = _drive(_HIDDEN_DRIVER, str(storage), str(pidfile), _NODE, pidfile=pidfile)
    lines = out.splitlines()
    hidden = next(line.split()[1] for line in lines if line.startswith("HIDDEN"))
    assert f'REFUSED ["{hidden}"]' in lines, out  # only that node: the head sees it
    assert f"{storage / 'exp'} is not shared by every node of the Ray cluster (1 of 2 failed the check):" in out
    assert f"  node {hidden[:12]} (" in out and ", 127.0.0.1): the directory does not exist there" in out
    assert "use a directory on a shared mount every node sees, or object storage: --storage s3://" in out
    assert "LEFT []" in lines  # the probe files are gone
