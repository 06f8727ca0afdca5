"""Several Ray nodes on 127.0.0.1 (`ray.cluster_utils.Cluster`), GPUs declared on a machine without
one: trials spread over the nodes and record where they ran, and `resources: {gpu: 0.25}` packs four
trials per declared GPU. Each scenario runs in its own process (a driver of its own cluster), apart
from the session's Ray instance."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pandas as pd
import pytest

from .conftest import ROOT, tiny_spec

# A driver on a fresh 3-node cluster: head (1 CPU), a CPU node (1 CPU), a "GPU" node (4 CPUs, 1 GPU
# declared; torch sees none here). Runs the spec in argv[1] into argv[2], then shuts the cluster down.
_CLUSTER_DRIVER = """
import sys
import ray
from ray.cluster_utils import Cluster
from orchestrator.run import run_experiment
cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
cluster.add_node(num_cpus=1)
cluster.add_node(num_cpus=4, num_gpus=1)
cluster.wait_for_nodes()
ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
gpu_node = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("GPU"))
print("GPU_NODE", gpu_node)
try:
    run_experiment(sys.argv[1], storage=sys.argv[2])
finally:
    ray.shutdown()
    cluster.shutdown()
"""


def _run_on_cluster(spec, storage) -> str:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    ray_tmp = tempfile.mkdtemp(prefix="dm-cl-")  # short: Ray's socket paths must stay under 107 bytes
    env.update(
        RAY_TMPDIR=ray_tmp, PYTHONPATH=str(ROOT), RAY_AUTH_MODE="disabled", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0"
    )
    out = subprocess.run(
        [sys.executable, "-c", _CLUSTER_DRIVER, str(spec), str(storage)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        start_new_session=True,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    return out.stdout


def _max_overlap(runs: pd.DataFrame) -> int:
    """The most trials that ran at one moment (start and finish times from trials.json)."""
    spans = list(zip(runs["started_at"], runs["finished_at"]))
    return max(sum(1 for s, f in spans if s <= t < f) for t, _ in spans)


@pytest.mark.slow
def test_trials_spread_over_nodes_and_record_where_they_ran(tmp_path):
    spec = tiny_spec(tmp_path)
    out = _run_on_cluster(spec, tmp_path / "results")
    assert "Ray: the Ray instance this process already started; 3 node(s), 6 CPUs, 1 GPUs" in out
    runs = pd.read_parquet(tmp_path / "results" / "tiny" / "runs.parquet")
    assert len(runs) == 8 and (runs["status"] == "done").all() and runs["run_id"].is_unique
    assert runs["node_id"].notna().all() and runs["node_id"].nunique() >= 2  # spread over the nodes
    assert (runs["gpu_ids"] == "").all()  # no trial asked for a GPU
    records = json.loads((tmp_path / "results" / "tiny" / "trials.json").read_text())
    assert {r["node_id"] for r in records.values()} == set(runs["node_id"])


@pytest.mark.slow
def test_a_quarter_gpu_packs_four_trials_per_declared_gpu(tmp_path):
    spec = tiny_spec(tmp_path, resources={"cpu": 1, "gpu": 0.25})
    out = _run_on_cluster(spec, tmp_path / "results")
    gpu_node = next(line.split()[1] for line in out.splitlines() if line.startswith("GPU_NODE"))
    assert "per trial: 1 CPU, 0.25 GPU (4 trials share a GPU)" in out
    runs = pd.read_parquet(tmp_path / "results" / "tiny" / "runs.parquet")
    assert len(runs) == 8 and (runs["status"] == "done").all()
    assert (runs["node_id"] == gpu_node).all()  # only that node has a GPU to share
    assert (runs["gpu_ids"] == "0").all() and (runs["device"] == "cpu").all()  # declared GPU, CPU torch
    assert 2 <= _max_overlap(runs) <= 4  # packed, and never more than four on the one GPU


def test_a_gpu_torch_cannot_see_is_reported_once_and_the_cpu_used(monkeypatch, capsys):
    import ray
    import torch

    import orchestrator.trainable as trainable

    monkeypatch.setattr(trainable, "_WARNED_NO_CUDA", False)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: ["0"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert trainable._device().type == "cpu" and trainable._device().type == "cpu"
    out = capsys.readouterr().out
    assert out.count("Ray assigned GPU(s) ['0'] to this trial, but torch sees no CUDA device here") == 1
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    monkeypatch.setattr(trainable, "_WARNED_NO_CUDA", False)
    assert trainable._device().type == "cpu" and capsys.readouterr().out == ""  # no GPU asked: nothing to say
