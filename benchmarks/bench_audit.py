"""LiRA for every target model of a group: our vectorised `lira_scores` against a per-sample Python loop.

The scale is the paper's: M = 128 models x N = 60,000 pool samples x K = 2 queries, every model in
turn the target and the other 127 its shadows (leave-one-out). Signals are random float32 (standard
normal, +1 where the model trained on the sample, so the attack has something to find); the keep mask
is the library's balanced one (`demem.membership.keep_mask`: every sample IN for exactly M / 2 models).

    python benchmarks/bench_audit.py                       # full scale, seconds on 2 cores
    python benchmarks/bench_audit.py --models 16 --samples 2000 --repeats 1 --loop-samples 100   # quick
    python benchmarks/bench_audit.py --signals             # what the robust signals cost per model
    python benchmarks/bench_audit.py --signals --device cuda --arch resnet18 --dataset cifar10 --samples 2000

`--signals` times, for one model on a pool, the per-sample signals the audit reads: the clean views
(`eval.queries`), the adversarial queries (`eval.adversarial`, PGD-10 by default) and the boundary
distances (`eval.boundary`, L-inf and L2), each per model and per sample and as a multiple of the
clean pass, with the model's training for scale. The model is first trained with PGD-AT on the pool's
training half (`--epochs`, default 14 at batch 32 without augmentation: the quickstart's recipe), so
its boundary is that of a trained model (an untrained one misclassifies most samples, which the
boundary search skips); the pool is synthetic data of the dataset's shape unless `--real` (then the
dataset must be on disk).

The reference is how LiRA is commonly written: for each target, for each sample, select the IN and OUT
shadows, `np.mean` / `np.std` them, and score with `scipy.stats.norm.logpdf`. It is far too slow to run
at full scale, so it runs on `--loop-targets` x `--loop-samples` (target, sample) pairs and its time is
extrapolated linearly to M x N pairs (each pair costs the same: same number of shadows). Its scores
must equal ours on those pairs (to 1e-6, relative or absolute).

Memory: peak resident set size (`ru_maxrss`) is read just before and just after the timed vectorised
runs, which come first so the high-water mark is theirs; the increase is what the attack needed on top
of the inputs (it includes the (M, N) float64 output). A further, untimed run under `tracemalloc`
gives the peak of the Python/NumPy allocations alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
from scipy import stats

from demem.membership import keep_mask
from demem.privacy.mia import STD_FLOOR, lira_scores
from demem.privacy.roc import roc_auc

MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", type=int, default=128, help="M, models in the group (every one a target)")
    p.add_argument("--samples", type=int, default=60_000, help="N, pool samples")
    p.add_argument("--queries", type=int, default=2, help="K, augmented queries per sample")
    p.add_argument("--loop-targets", type=int, default=2, help="targets the reference loop scores")
    p.add_argument("--loop-samples", type=int, default=300, help="samples per target the reference loop scores")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of the vectorised path")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    p.add_argument("--signals", action="store_true", help="time the per-sample signals of one model instead")
    p.add_argument("--device", default="cpu", help="--signals: cpu or cuda")
    p.add_argument("--arch", default="small-cnn", help="--signals: the architecture")
    p.add_argument("--dataset", default="fashion-mnist", help="--signals: the dataset (its shape)")
    p.add_argument("--real", action="store_true", help="--signals: the real dataset rather than synthetic data")
    p.add_argument("--epochs", type=int, default=14, help="--signals: PGD-AT epochs before timing")
    args = p.parse_args(argv)
    if args.signals:
        if "--samples" not in (argv if argv is not None else sys.argv[1:]):
            args.samples = 400
        return args
    if args.models < 4 or args.samples < 2 or args.queries < 1 or args.repeats < 1:
        p.error("need --models >= 4, --samples >= 2, --queries >= 1, --repeats >= 1")
    if not 1 <= args.loop_targets <= args.models or not 1 <= args.loop_samples <= args.samples:
        p.error("--loop-targets must be in [1, models] and --loop-samples in [1, samples]")
    return args


def max_rss_mib() -> float:
    # Linux reports ru_maxrss in KiB, macOS in bytes.
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / MIB if sys.platform == "darwin" else rss / 1024


def make_inputs(m: int, n: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """signals (M, N, K) float32 and the balanced keep mask (M, N) bool."""
    keep = keep_mask(m, n, seed)
    signals = np.random.default_rng(seed).standard_normal((m, n, k), dtype=np.float32)
    signals += keep[:, :, None]
    return signals, keep


def loop_lira(signals: np.ndarray, keep: np.ndarray, targets: np.ndarray, samples: np.ndarray) -> np.ndarray:
    """The reference: LiRA online, one (target, sample) at a time. Returns (len(targets), len(samples))."""
    out = np.empty((targets.size, samples.size))
    models = np.arange(signals.shape[0])
    for a, t in enumerate(targets):
        shadows = models != t
        for b, i in enumerate(samples):
            ins = shadows & keep[:, i]
            outs = shadows & ~keep[:, i]
            per_query = []
            for q in range(signals.shape[2]):
                x_in = signals[ins, i, q].astype(np.float64)
                x_out = signals[outs, i, q].astype(np.float64)
                mu_in, sd_in = np.mean(x_in), max(np.std(x_in), STD_FLOOR)
                mu_out, sd_out = np.mean(x_out), max(np.std(x_out), STD_FLOOR)
                x = float(signals[t, i, q])
                per_query.append(stats.norm.logpdf(x, mu_in, sd_in) - stats.norm.logpdf(x, mu_out, sd_out))
            out[a, b] = np.mean(per_query)
    return out


def _timed(fn, device) -> tuple[float, object]:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0, out


def signals_cost(args: argparse.Namespace) -> dict:
    """Seconds per model and per sample of each signal kind, against the clean pass."""
    import torch

    from demem.calibrate import _synthetic_pool
    from demem.evaluate import sample_statistics
    from demem.privacy.boundary import pool_boundary
    from demem.privacy.signals import adversarial_signals
    from demem.runner import attack_batch
    from demem.train import RunConfig, load_pool, prepare, train_epoch

    device = torch.device(args.device)
    raw = {
        "data": {"dataset": args.dataset, "pool_size": args.samples if args.real else None},
        "train": {"arch": args.arch, "epochs": args.epochs, "batch_size": 32, "augment": False},
        "method": {"name": "pgd_at"},
        "seed": args.seed,
    }
    run = RunConfig.from_dict(raw)
    pool = load_pool(run) if args.real else _synthetic_pool(args.dataset, args.samples, args.seed)
    state = prepare(run, device, pool=pool)
    train_s, _ = _timed(lambda: [train_epoch(state) for _ in range(args.epochs)], device)
    ev, model, n = run.eval, state.model, pool.n
    sample_statistics(model, pool, device=device, queries=ev.queries)  # warm-up
    rows = {}
    rows["clean"], _ = _timed(lambda: sample_statistics(model, pool, device=device, queries=ev.queries), device)
    batch = attack_batch(ev.batch_size, device)  # as evaluate_run
    rows["adversarial"], _ = _timed(
        lambda: adversarial_signals(model, pool, ev.adversarial, device=device, batch_size=batch), device
    )
    for norm in ev.boundary.norms:
        cfg = replace(ev.boundary, norms=(norm,), batch_size=min(ev.boundary.batch_size, batch))
        rows[f"boundary_{norm}"], _ = _timed(
            lambda cfg=cfg: pool_boundary(model, pool, cfg, eps_linf=ev.attack.eps, device=device), device
        )
    print(
        f"signals of one {args.arch} on {n} {'real' if args.real else 'synthetic'} {args.dataset} samples, "
        f"{device} ({torch.get_num_threads()} threads), torch {torch.__version__}; {args.epochs} PGD-AT epochs "
        f"on its {int(state.keep.sum())} training samples: {train_s:.2f} s"
    )
    print(f"  {'signal':<18}{'s / model':>12}{'ms / sample':>14}{'x clean':>10}{'x training':>12}")
    for name, sec in rows.items():
        print(f"  {name:<18}{sec:>12.3f}{1000 * sec / n:>14.3f}{sec / rows['clean']:>10.1f}{sec / train_s:>12.2f}")
    caps = ", ".join(f"{k} {getattr(ev.boundary, k + '_max'):.3g}" for k in ev.boundary.norms)
    print(
        f"  adversarial: PGD-{ev.adversarial.steps}; boundary: {1 + ev.boundary.bisections} rounds of "
        f"PGD-{ev.boundary.steps} per norm (caps {caps})"
    )
    result = {"samples": n, "device": str(device), "arch": args.arch, "train_epoch_s": train_s, "seconds": rows}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.signals:
        return signals_cost(args)
    m, n, k = args.models, args.samples, args.queries
    signals, keep = make_inputs(m, n, k, args.seed)
    lira_scores(signals[:, :100], keep[:, :100])  # warm-up: imports, first-call costs

    rss_before = max_rss_mib()
    times = []
    for _ in range(args.repeats):
        scores = None  # free the previous run's output first, so runs do not overlap in memory
        t0 = time.perf_counter()
        scores = lira_scores(signals, keep, variant="online")
        times.append(time.perf_counter() - t0)
    rss_after = max_rss_mib()
    del scores
    tracemalloc.start()
    scores = lira_scores(signals, keep, variant="online")
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    rng = np.random.default_rng(args.seed + 1)
    loop_targets = np.unique(np.linspace(0, m - 1, args.loop_targets).round().astype(int))
    loop_samples = np.sort(rng.choice(n, args.loop_samples, replace=False))
    t0 = time.perf_counter()
    ref = loop_lira(signals, keep, loop_targets, loop_samples)
    loop_s = time.perf_counter() - t0
    ours = scores[loop_targets][:, loop_samples]
    max_abs = float(np.max(np.abs(ours - ref)))
    agree = bool(np.allclose(ours, ref, rtol=1e-6, atol=1e-6))

    pairs_loop = loop_targets.size * loop_samples.size
    loop_full_s = loop_s / pairs_loop * m * n
    vec_s = statistics.mean(times)
    auc = [roc_auc(scores[t], keep[t]) for t in loop_targets]
    result = {
        "config": {
            "models": m,
            "samples": n,
            "queries": k,
            "variant": "online",
            "repeats": args.repeats,
            "loop_targets": int(loop_targets.size),
            "loop_samples": int(loop_samples.size),
            "seed": args.seed,
        },
        "vectorised_s_mean": vec_s,
        "vectorised_s_std": statistics.stdev(times) if len(times) > 1 else 0.0,
        "vectorised_s_all": times,
        "peak_rss_increase_mib": rss_after - rss_before,
        "peak_rss_mib": rss_after,
        "tracemalloc_peak_mib": traced_peak / MIB,
        "inputs_mib": (signals.nbytes + keep.nbytes) / MIB,
        "loop_s": loop_s,
        "loop_pairs": pairs_loop,
        "loop_s_per_pair": loop_s / pairs_loop,
        "loop_extrapolated_s": loop_full_s,
        "ratio_loop_over_vectorised": loop_full_s / vec_s,
        "max_abs_diff": max_abs,
        "agree_1e-6": agree,
        "auc_loop_targets": auc,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
    }

    print(
        f"LiRA online, every target of a group: M={m} models x N={n} samples x K={k} queries "
        f"(leave-one-out, {m - 1} shadows each)"
    )
    print(
        f"  inputs: signals float32 + keep bool = {result['inputs_mib']:.1f} MiB; numpy {np.__version__}, "
        f"{os.cpu_count()} CPUs, 1-min load average {result['loadavg_1min']:.2f}"
    )
    print(
        f"  vectorised lira_scores: {vec_s:.2f} s +- {result['vectorised_s_std']:.2f} "
        f"(mean +- std over {args.repeats} runs; {', '.join(f'{t:.2f}' for t in times)})"
    )
    print(
        f"  peak RSS: +{result['peak_rss_increase_mib']:.0f} MiB over the inputs (peak {rss_after:.0f} MiB); "
        f"tracemalloc peak {result['tracemalloc_peak_mib']:.0f} MiB (incl. the {m * n * 8 / MIB:.0f} MiB output)"
    )
    print(
        f"  reference loop: {loop_s:.2f} s for {loop_targets.size} targets x {loop_samples.size} samples "
        f"= {result['loop_s_per_pair'] * 1e6:.0f} us per (target, sample)"
    )
    print(f"  reference extrapolated to {m} x {n}: {loop_full_s:.0f} s ({loop_full_s / 3600:.2f} h)")
    print(f"  ratio loop / vectorised: {result['ratio_loop_over_vectorised']:.0f}x")
    print(
        f"  agreement on the {pairs_loop} pairs: max |diff| = {max_abs:.2e} -> "
        f"{'OK' if agree else 'MISMATCH'} (rtol = atol = 1e-6)"
    )
    # K i.i.d. queries averaged: a mean shift of 1 against a difference std of sqrt(2 / K).
    print(
        f"  sanity: AUC of the loop targets {', '.join(f'{a:.4f}' for a in auc)} (signals IN ~ N(1, 1), "
        f"OUT ~ N(0, 1) per query: ideal {stats.norm.cdf(np.sqrt(k / 2)):.4f} with K = {k})"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"  wrote {args.json}")
    if not agree:
        raise SystemExit("vectorised and reference scores disagree")
    return result


if __name__ == "__main__":
    main()
