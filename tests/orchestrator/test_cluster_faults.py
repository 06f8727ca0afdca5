"""Faults on a multi-node Ray cluster (`ray.cluster_utils.Cluster` on 127.0.0.1): a worker node lost
mid-experiment, and a driver killed mid-experiment then `demem resume`d. Either way every model is
trained once into the results, interrupted trials continue from their checkpoint, and every
(group, seed) is audited once. Each scenario runs in processes of its own, apart from the session's
Ray instance, and only what a test started is stopped (by process group or `cluster.shutdown()`)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from orchestrator.columns import NATURAL_ACC, ROBUST_ACC

from .conftest import ROOT, TINY, tiny_spec

EPOCHS = 3  # a trial checkpoints after epochs 1 and 2: there is time to interrupt it past its first


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="dm-cf-")  # short: Ray's socket paths must stay under 107 bytes
    env.update(
        RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"
    )
    return env


def _spec(tmp_path: Path) -> Path:
    base = yaml.safe_load(TINY.read_text())["base"]
    base["train"]["epochs"] = EPOCHS
    return tiny_spec(tmp_path, base=base, failure={"max_retries": 2})


def _stop(proc: subprocess.Popen) -> None:
    """SIGKILL the process group of a process this test started (its own session), if still there."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run `args` in a session of its own to the end; on a timeout, its whole group (Ray's processes
    it started included) is killed."""
    proc = subprocess.Popen(
        args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        out, err = proc.communicate(timeout=900)
    finally:
        _stop(proc)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


# --- a worker node removed mid-experiment --------------------------------------------------------

# A driver on a fresh 3-node cluster (head and two workers, 1 CPU each). Its trials log each start
# (run, node, whether a checkpoint was there) to argv[3]. A thread removes (kills) the worker node
# of the first trial seen with a checkpoint there, i.e. past its first epoch, and says what it did.
_NODE_LOSS_DRIVER = """
import json, os, sys, threading, time
from pathlib import Path
import ray
from ray.cluster_utils import Cluster
from orchestrator import progress
from orchestrator.run import run_experiment
from orchestrator.trainable import train_model

LOG, CKPT = sys.argv[3], "checkpoint.pt"

def logged(trial):
    out = Path(trial.artifacts)
    rec = {"run_id": trial.run_id, "node_id": ray.get_runtime_context().get_node_id(),
           "checkpoint_present": (out / CKPT).exists(), "pid": os.getpid(), "artifacts": str(out)}
    with open(LOG, "a") as f:
        f.write(json.dumps(rec) + "\\n")
    train_model(trial)

def remove_a_worker():
    workers = {n.node_id: n for n in cluster.worker_nodes}
    while True:
        starts = [json.loads(line) for line in Path(LOG).read_text().splitlines()] if Path(LOG).exists() else []
        hit = next((r for r in starts if r["node_id"] in workers and Path(r["artifacts"], CKPT).exists()), None)
        if hit:
            pending = sum(len(getattr(p, "pending", ())) for p in progress._PROGRESS.values())
            audited = sum(len(getattr(p, "audited", ())) for p in progress._PROGRESS.values())
            cluster.remove_node(workers[hit["node_id"]], allow_graceful=False)
            print("REMOVED", hit["node_id"], hit["run_id"], f"audits_running={pending} audited={audited}", flush=True)
            return
        time.sleep(0.2)

cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
threading.Thread(target=remove_a_worker, daemon=True).start()
try:
    run_experiment(sys.argv[1], storage=sys.argv[2], train=logged)
finally:
    ray.shutdown()
    cluster.shutdown()
"""


@pytest.mark.slow
def test_a_worker_node_lost_mid_experiment(tmp_path):
    """Tiny spec, 3 epochs, max_retries 2; a worker node is killed once one of its trials has a
    checkpoint. The experiment completes; every model is in runs.parquet once, done; the interrupted
    trial started again on another node from its checkpoint; each (group, seed) is audited once (one
    "audited" line, one audits.parquet row per target model and attack), whether or not an audit
    task was running when the node went."""
    spec, storage, log, env = _spec(tmp_path), tmp_path / "results", tmp_path / "starts.jsonl", _env()
    out = _run([sys.executable, "-c", _NODE_LOSS_DRIVER, str(spec), str(storage), str(log)], env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    removed = [line.split() for line in out.stdout.splitlines() if line.startswith("REMOVED")]
    assert len(removed) == 1, out.stdout[-3000:]
    lost_node, lost_run = removed[0][1], removed[0][2]
    print(" ".join(removed[0]))  # whether an audit task was running when the node went

    runs = pd.read_parquet(storage / "tiny" / "runs.parquet")
    assert len(runs) == 8 and runs["run_id"].is_unique and (runs["status"] == "done").all()
    assert (runs["epochs_done"] == EPOCHS).all()

    starts = pd.DataFrame([json.loads(line) for line in log.read_text().splitlines()])
    assert set(starts["run_id"]) == set(runs["run_id"])
    again = starts[starts["run_id"] == lost_run]
    assert len(again) == 2, again  # the lost trial was retried once
    first, second = again.iloc[0], again.iloc[1]
    assert first["node_id"] == lost_node and not first["checkpoint_present"]
    assert second["node_id"] != lost_node and second["checkpoint_present"]  # continued from its checkpoint
    assert runs.set_index("run_id").loc[lost_run, "node_id"] == second["node_id"]
    assert (starts["run_id"].value_counts().drop(lost_run) == 1).all()  # no other trial was disturbed

    keys = set(zip(runs["group_id"], runs["seed"]))
    audits = pd.read_parquet(storage / "tiny" / "audits.parquet")
    per_key = audits.groupby(["group_id", "seed", "attack"])["target"].agg(["count", "nunique"])
    assert set(zip(audits["group_id"], audits["seed"])) == keys
    assert set(audits["attack"]) == {"rmia_online", "loss", "loss_adv"}
    assert (per_key["count"] == 4).all() and (per_key["nunique"] == 4).all()  # 4 targets, no duplicate
    assert len(per_key) == 3 * len(keys)  # 3 attacks per (group, seed)
    audited = [line for line in out.stdout.splitlines() if line.startswith("audited ")]
    assert len(audited) == len(keys) and len({line.split(" (")[0] for line in audited}) == len(keys), audited
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)  # Ray's logs are kept when a test fails


# --- the driver killed mid-experiment, then `demem resume` -------------------------------------

# Holds a cluster of a head and one worker node (1 CPU each) for the drivers of a test: writes its
# address to argv[1], shuts the cluster down once argv[2] exists.
_CLUSTER_HOLDER = """
import os, sys, time
from pathlib import Path
from ray.cluster_utils import Cluster
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.wait_for_nodes()
Path(sys.argv[1] + ".tmp").write_text(cluster.address)
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
try:
    while not Path(sys.argv[2]).exists():
        time.sleep(0.2)
finally:
    cluster.shutdown()
"""


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    """Start `args` in a session of its own, its output to `log`."""
    with log.open("w") as f:
        return subprocess.Popen(args, env=env, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _wait_for(what: str, done, proc: subprocess.Popen, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert proc.poll() is None, f"exited ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _demem(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return _run([sys.executable, "-m", "orchestrator.cli", *args], env)


# Where and when each model trained, and how long its steps took (the robust signals' timings too).
WHERE_AND_WHEN = [
    "node_id",
    "host",
    "gpu_ids",
    "started_at",
    "finished_at",
    "wall_s",
    "adversarial_seconds",
    "boundary_seconds",
]


def _compared(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """runs.parquet (all but where and when each model trained) and audits.parquet, in a fixed order."""
    runs = pd.read_parquet(root / "runs.parquet").drop(columns=WHERE_AND_WHEN)
    audits = pd.read_parquet(root / "audits.parquet")
    return (
        runs.sort_values("run_id").reset_index(drop=True),
        audits.sort_values(["group_id", "seed", "attack", "target"]).reset_index(drop=True),
    )


@pytest.mark.slow
def test_a_killed_driver_resumed_on_a_cluster_matches_an_uninterrupted_run(tmp_path):
    """On a 2-node cluster held by another process, `demem run` is SIGKILLed once 2 models are done
    and another has a checkpoint; `demem resume` then exits 0 (the killed driver's flock is gone), and
    its runs.parquet and audits.parquet equal those of an uninterrupted `demem run` of the same spec
    on the same cluster: training is seeded, and a checkpoint holds the generator state."""
    spec, env = _spec(tmp_path), _env()
    address, stop = tmp_path / "address", tmp_path / "stop"
    holder = _start([sys.executable, "-c", _CLUSTER_HOLDER, str(address), str(stop)], env, tmp_path / "cluster.log")
    try:
        _wait_for("the cluster", address.exists, holder, timeout=300)
        addr = address.read_text()
        root = tmp_path / "results" / "tiny"
        run = [sys.executable, "-m", "orchestrator.cli", "run", str(spec), "--storage", str(root.parent)]
        first = _start([*run, "--address", addr], env, tmp_path / "killed-driver.log")
        try:
            _wait_for(
                "2 models done and a checkpoint",
                lambda: (
                    len(list(root.glob("artifacts/*/*/metrics.json"))) >= 2
                    and any(root.glob("artifacts/*/*/checkpoint.pt"))
                ),
                first,
            )
        finally:
            _stop(first)
        interrupted = sorted(p.parent.name for p in root.glob("artifacts/*/*/checkpoint.pt"))
        done_before = len(list(root.glob("artifacts/*/*/metrics.json")))
        print(f"killed the driver with {done_before} models done, checkpoints of {interrupted}")

        resumed = _demem(env, "resume", str(root), "--address", addr)
        assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
        print(next(line for line in resumed.stdout.splitlines() if line.startswith("resuming")))
        reference = _demem(env, "run", str(spec), "--storage", str(tmp_path / "reference"), "--address", addr)
        assert reference.returncode == 0, reference.stdout[-3000:] + reference.stderr[-3000:]
    finally:
        stop.touch()
        try:
            holder.wait(timeout=120)
        finally:
            _stop(holder)

    # The trials' own output (Ray's worker logs): each interrupted model continued from its checkpoint.
    logs = Path(env["RAY_TMPDIR"]).glob("ray/session_*/logs/worker-*.out")
    said = "".join(p.read_text(errors="replace") for p in logs)
    assert interrupted
    for run_id in interrupted:
        assert f"continuing from {next(root.glob(f'artifacts/*/{run_id}'))}/checkpoint.pt at epoch" in said, run_id
    runs, audits = _compared(root)
    ref_runs, ref_audits = _compared(tmp_path / "reference" / "tiny")
    assert len(runs) == 8 and (runs["status"] == "done").all() and (runs["epochs_done"] == EPOCHS).all()
    assert runs[NATURAL_ACC].notna().all() and runs[ROBUST_ACC].notna().all()
    pd.testing.assert_frame_equal(runs, ref_runs)
    assert len(audits) == 2 * 4 * 3  # (group, seed) x target x attack
    pd.testing.assert_frame_equal(audits, ref_audits)
    shutil.rmtree(env["RAY_TMPDIR"], ignore_errors=True)  # Ray's logs are kept when a test fails
