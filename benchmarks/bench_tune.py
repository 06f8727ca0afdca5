"""The orchestrator's overhead per trial, and the driver's memory against the number of trials.

Each trial does the same fixed piece of CPU work (`--work-ms` of matrix products, calibrated once)
and reports once. The reference runs that work `--trials` times in one process, one after another.
The orchestrator runs the same trials through `orchestrator.tuner.build_tuner` on a private local
Ray with our callbacks (trials.json after every trial, progress, TensorBoard logger), `--cpus` at
once. Overhead per trial = (orchestrator wall time x concurrency - reference time) / trials: what a
trial costs on top of its work, in core-seconds. Driver memory: the driver's resident set size
(psutil) after each run, for each trial count.

    python benchmarks/bench_tune.py                           # 64 and 256 trials, 2 CPUs
    python benchmarks/bench_tune.py --trials 32 --work-ms 20  # quick
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

_MATRIX = 128


def _work(reps: int) -> float:
    torch.set_num_threads(1)
    a = torch.ones(_MATRIX, _MATRIX)
    for _ in range(reps):
        a = (a @ a).clamp_(max=1.0)
    return float(a[0, 0])


def light_trial(config: dict) -> None:
    """A trial: the fixed work, then one final report, as a grid trial reports it."""
    from ray import tune

    _work(config["reps"])
    tune.report({"group_id": config["group_id"], "run_id": config["run_id"], "done": True})


def _reps_for(ms: float) -> int:
    t0 = time.perf_counter()
    _work(200)
    per = (time.perf_counter() - t0) / 200
    return max(1, round(ms / 1e3 / per))


def _spec(n: int):
    from orchestrator.spec import validate

    raw = {
        "name": "bench",
        "base": {"data": {"dataset": "fashion-mnist", "pool_size": 64}, "train": {"epochs": 1}},
        "audit": {"models": n, "attacks": ["loss"]},
        "resources": {"cpu": 1, "gpu": 0},
    }
    return validate(raw, check_data=False)


def run_once(n: int, reps: int, root: Path) -> dict:
    import functools

    import psutil

    from orchestrator.layout import ExperimentDir
    from orchestrator.progress import start_progress
    from orchestrator.tuner import build_tuner

    spec = _spec(n)
    exp = ExperimentDir(root / f"bench-{n}")
    exp.root.mkdir(parents=True)
    start_progress(spec, exp, echo=lambda _: None)
    train = functools.partial(_with_reps, reps=reps)
    tuner = build_tuner(spec, exp, None, train)
    t0 = time.perf_counter()
    tuner.fit()
    wall = time.perf_counter() - t0
    records = json.loads(exp.trials.read_text())
    done = sum(r["status"] == "done" for r in records.values())
    return {"trials": n, "done": done, "wall_s": wall, "driver_rss_mb": psutil.Process().memory_info().rss / 2**20}


def _with_reps(config: dict, *, reps: int) -> None:
    light_trial({**config, "reps": reps})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, nargs="+", default=[64, 256])
    p.add_argument("--work-ms", type=float, default=50.0)
    p.add_argument("--cpus", type=int, default=2)
    p.add_argument("--json", default=None)
    a = p.parse_args()

    import ray

    reps = _reps_for(a.work_ms)
    tmp = tempfile.mkdtemp(prefix="dm-bt-")
    ray.init(num_cpus=a.cpus, include_dashboard=False, logging_level="ERROR", log_to_driver=False, _temp_dir=tmp)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for n in a.trials:
            t0 = time.perf_counter()
            for _ in range(n):
                _work(reps)
            seq = time.perf_counter() - t0
            row = run_once(n, reps, Path(d))
            row["sequential_s"] = seq
            row["overhead_core_s_per_trial"] = (row["wall_s"] * min(a.cpus, n) - seq) / n
            row["work_ms"] = seq / n * 1e3
            rows.append(row)
            print(
                f"{n} trials of {row['work_ms']:.0f} ms work: sequential {seq:.1f} s, "
                f"orchestrator {row['wall_s']:.1f} s on {a.cpus} CPUs ({row['done']} done); "
                f"overhead {row['overhead_core_s_per_trial']:.2f} core-s per trial; "
                f"driver RSS {row['driver_rss_mb']:.0f} MB",
                flush=True,
            )
    ray.shutdown()
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
