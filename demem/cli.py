"""The `demem` command line. `demem train` trains and evaluates one model of a group, no cluster needed.

Commands that need Ray (run, resume, status, ...) live in `orchestrator/` and are added there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demem import __version__
from demem.dp import ACCOUNTANTS
from demem.evasion import LOSSES as ATTACK_LOSSES
from demem.evasion import STARTS as ATTACK_STARTS
from demem.evasion import THREAT_NORMS
from demem.methods import AWP_OBJECTIVES
from demem.models import NORM_LAYERS
from demem.penalty import RISKS, THRESHOLD_MODES
from demem.train import SCHEDULES, SPLITS


def _add_train_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--dataset", default="fashion-mnist", help="fashion-mnist (default), mnist, cifar10, cifar100, svhn")
    g.add_argument("--data-root", default=None, help="directory holding the dataset files (else $DEMEM_DATA, ...)")
    g.add_argument("--download", action="store_true", help="let torchvision download a missing dataset")
    g.add_argument("--pool-size", type=int, default=None, help="subsample the merged train+test pool to this size")
    g.add_argument("--pool-seed", type=int, default=0, help="seed of the pool subsample and of the keep mask")
    g.add_argument("--splits", default="train+test", choices=SPLITS)
    g = p.add_argument_group("group membership")
    g.add_argument("--n-models", type=int, default=2, help="models in the group (M); each trains on half the pool")
    g.add_argument("--model-index", type=int, default=0, help="which of the M models to train, 0..M-1")
    g.add_argument("--seed", type=int, default=0, help="training seed (init, batch order, attacks)")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--arch", default="small-cnn")
    g.add_argument("--norm", default=None, choices=NORM_LAYERS, help="default: batch; group for the DP methods")
    g.add_argument("--epochs", type=int, default=None, help="default: per dataset (15 for (fashion-)mnist)")
    g.add_argument("--batch-size", type=int, default=None, help="default: 256 (CIFAR, SVHN), 128 ((fashion-)mnist)")
    g.add_argument("--lr", type=float, default=0.1)
    g.add_argument("--weight-decay", type=float, default=5e-4)
    g.add_argument("--schedule", default="step", choices=SCHEDULES)
    g.add_argument("--no-augment", action="store_true", help="train without random crops and flips")
    g = p.add_argument_group("method")
    g.add_argument("--method", default="pgd_at",
                   help="standard, pgd_at, trades, mart, fgsm_rs; DP-SGD: dp_sgd, dp_pgd_at, dp_trades")
    g.add_argument("--beta", type=float, default=None, help="TRADES / MART robustness weight (default 6 / 5)")
    g.add_argument("--awp-gamma", type=float, default=0.0, help="AWP size for pgd_at / trades (0 = off)")
    g.add_argument("--awp-objective", default="method", choices=AWP_OBJECTIVES,
                   help="what AWP perturbs the weights along: the method's loss (reference) or loss + DeMem penalty")
    g.add_argument("--eps", type=float, default=None, help="attack radius (default: per dataset)")
    g.add_argument("--attack-norm", default="linf", choices=THREAT_NORMS)
    g.add_argument("--train-attack-steps", type=int, default=3)
    g.add_argument("--train-attack-step", type=float, default=None, help="default 1.25 * eps / steps")
    g.add_argument("--train-attack-start", default=None, choices=ATTACK_STARTS,
                   help="random start of the training attack (default: the method's authors': gaussian for "
                        "trades / mart, uniform otherwise)")
    g = p.add_argument_group("DeMem")
    g.add_argument("--demem-lambda", type=float, default=0.0, help="penalty weight, >= 0 (0 = off)")
    g.add_argument("--demem-threshold", type=float, default=0.0, help="risk threshold tau in [0, 1)")
    g.add_argument("--demem-risk", default="loss_deviation", choices=RISKS)
    g.add_argument("--demem-risk-file", default=None, help="per-sample memorization table (risk 'memorization')")
    g.add_argument("--demem-threshold-mode", default="quantile", choices=THRESHOLD_MODES)
    g = p.add_argument_group("differential privacy (methods dp_sgd, dp_pgd_at, dp_trades; through Opacus)")
    g.add_argument("--dp-noise", type=float, default=None, help="noise multiplier sigma (or --dp-epsilon)")
    g.add_argument("--dp-epsilon", type=float, default=None, help="target epsilon for the whole run (or --dp-noise)")
    g.add_argument("--dp-clip", type=float, default=1.0, help="per-sample gradient clipping norm")
    g.add_argument("--dp-delta", type=float, default=None, help="default: 1/N_train rounded down to a power of ten")
    g.add_argument("--dp-accountant", default="prv", choices=ACCOUNTANTS)
    g = p.add_argument_group("evaluation")
    g.add_argument("--eval-attack-steps", type=int, default=20)
    g.add_argument("--eval-attack-loss", default="ce", choices=ATTACK_LOSSES)
    g.add_argument("--autoattack", action="store_true", help="also AutoAttack (needs demem[autoattack])")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="directory for config, checkpoint, statistics and metrics")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last stdout line")


def run_dict_from_args(a: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig dict the `train` flags describe."""
    attack: dict[str, Any] = {"norm": a.attack_norm, "steps": a.train_attack_steps}
    evals: dict[str, Any] = {"norm": a.attack_norm, "steps": a.eval_attack_steps, "loss": a.eval_attack_loss}
    if a.eps is not None:
        attack["eps"] = evals["eps"] = a.eps
    if a.train_attack_step is not None:
        attack["step_size"] = a.train_attack_step
    if a.train_attack_start is not None:
        attack["start"] = a.train_attack_start
    return {
        "data": {"dataset": a.dataset, "pool_size": a.pool_size, "pool_seed": a.pool_seed, "splits": a.splits,
                 "root": a.data_root, "download": a.download},
        "train": {"arch": a.arch, **({"norm": a.norm} if a.norm else {}), "epochs": a.epochs,
                  "batch_size": a.batch_size, "lr": a.lr,
                  "weight_decay": a.weight_decay, "schedule": a.schedule, "augment": not a.no_augment},
        "method": {"name": a.method, "beta": a.beta, "awp_gamma": a.awp_gamma, "awp_objective": a.awp_objective},
        "attack": attack,
        "eval": {"attack": evals, "autoattack": a.autoattack},
        "demem": {"lambda": a.demem_lambda, "risk_threshold": a.demem_threshold, "risk": a.demem_risk,
                  "risk_file": a.demem_risk_file, "threshold_mode": a.demem_threshold_mode},
        "dp": {"noise_multiplier": a.dp_noise, "target_epsilon": a.dp_epsilon, "max_grad_norm": a.dp_clip,
               "delta": a.dp_delta, "accountant": a.dp_accountant},
        "n_models": a.n_models, "model_index": a.model_index, "seed": a.seed,
    }


def cmd_train(a: argparse.Namespace) -> int:
    from demem.device import resolve_device
    from demem.train import RunConfig

    try:
        run = RunConfig.from_dict(run_dict_from_args(a))
        device = resolve_device(a.device)
    except ValueError as e:
        print(f"demem train: {e}", file=sys.stderr)
        return 2
    out = Path(a.out)
    if not a.resume and ((out / "metrics.json").exists() or (out / "checkpoint.pt").exists()):
        print(f"demem train: {out} already holds a run; pass --resume to continue it or choose another --out",
              file=sys.stderr)
        return 2

    from demem import artifacts
    from demem.data import DatasetNotFoundError
    from demem.train import CHECKPOINT, prepare

    log = sys.stderr if a.json else sys.stdout
    try:
        state = prepare(run, device)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as e:
        print(f"demem train: {e}", file=sys.stderr)
        return 2
    out.mkdir(parents=True, exist_ok=True)
    if a.resume and (out / CHECKPOINT).exists():
        try:
            state.load(out)
        except ValueError as e:
            print(f"demem train: {out / CHECKPOINT}: {e}", file=sys.stderr)
            return 2
        print(f"resumed from {out / CHECKPOINT} at epoch {state.epoch}/{run.train.epochs}", file=log)
    artifacts.start_run(state, out)
    print(f"training {run.method.name} ({run.train.arch}) on {state.pool.info.name}: model "
          f"{run.model_index}/{run.n_models}, {int(state.keep.sum())} of {state.pool.n} pool samples, "
          f"{run.train.epochs} epochs, eps {run.attack.eps:.4g}, DeMem lambda {run.demem.lam:g} "
          f"tau {run.demem.risk_threshold:g}, defence {run.defence}, device {device}", file=log)
    if state.dp is not None:
        print(f"DP-SGD (Opacus): noise multiplier {state.dp.noise_multiplier:.4g}, clip {run.dp.max_grad_norm:g}, "
              f"sample rate {state.dp.sample_rate:.4g}, delta {state.dp.delta:g}, accountant {run.dp.accountant}",
              file=log)
    t0 = time.perf_counter()
    try:
        for m in _epochs(state, out):
            print(f"epoch {m['epoch']:>3}/{run.train.epochs}  loss {m['train_loss']:.4f}  "
                  f"penalty {m['penalty']:.4f}  train acc {m['train_acc']:.3f}  lr {m['lr']:.4g}  "
                  + (f"epsilon {m['epsilon']:.3f}  " if "epsilon" in m else "")
                  + f"{m['seconds']:.1f}s ({m['samples_per_s']:.0f} samples/s)", file=log, flush=True)
    except FloatingPointError as e:
        print(f"demem train: {e}", file=sys.stderr)
        return 1
    print("evaluating on held-out samples ...", file=log, flush=True)
    metrics = artifacts.finish_run(state, out, train_seconds=time.perf_counter() - t0)
    aa = f"  AutoAttack {metrics['robust_acc_aa']:.4f}" if metrics["robust_acc_aa"] is not None else ""
    print(f"held-out ({metrics['n_heldout']} samples): natural acc {metrics['natural_acc']:.4f}  "
          f"PGD-{run.eval.attack.steps} acc {metrics['robust_acc_pgd']:.4f}{aa}", file=log)
    print(f"wrote {out}/{{config.json, checkpoint.pt, keep.npy, samples.npz, metrics.json}}", file=log)
    if a.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, sort_keys=True))
    return 0


def _epochs(state, out: Path):
    from demem.train import epochs

    for m in epochs(state):
        state.save(out)  # every epoch: an interrupted run resumes with --resume
        yield m


def cmd_audit(a: argparse.Namespace) -> int:
    from demem.artifacts import GroupError, load_group
    from demem.privacy.audit import AuditConfig, format_table, parse_attacks, run_audit, write_audit

    try:
        cfg = AuditConfig(attacks=parse_attacks(a.attacks), targets=a.targets, queries=a.queries,
                          memorization_from=a.memorization_from)
    except ValueError as e:
        print(f"demem audit: {e}", file=sys.stderr)
        return 2
    log = sys.stderr if a.json else sys.stdout
    t0 = time.perf_counter()
    try:
        group = load_group(a.directory, seed=a.seed, allow_partial=a.allow_partial)
        print(f"auditing {group.n_models} models x {group.keep.shape[1]} samples from {a.directory} ...", file=log,
              flush=True)
        result, per_sample = run_audit(group, cfg)
    except (GroupError, ValueError, FileNotFoundError) as e:
        print(f"demem audit: {e}", file=sys.stderr)
        return 2
    result["seconds"] = time.perf_counter() - t0
    paths = write_audit(a.out or a.directory, result, per_sample)
    print(format_table(result), file=log)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=log)
    if a.json:
        print(json.dumps({name: r.get("mean", r) for name, r in result["attacks"].items()}, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="demem", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"demem {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and evaluate one model of a group",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _add_train_args(t)
    t.set_defaults(func=cmd_train)
    au = sub.add_parser("audit", help="membership-inference audit of one group's trained models",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    au.add_argument("directory", help="directory holding the `demem train --out` directories of one group")
    au.add_argument("--attacks", default="all",
                    help="comma-separated: lira (all variants), lira_online, lira_online_fixed, lira_offline, "
                         "lira_offline_fixed, loss, confidence, entropy, modified_entropy, threshold, all")
    au.add_argument("--targets", type=int, default=None, help="attack the first K models (default: all)")
    au.add_argument("--queries", type=int, default=None, help="use the first K augmented queries (default: all)")
    au.add_argument("--seed", type=int, default=None, help="audit only the models of this seed")
    au.add_argument("--allow-partial", action="store_true", help="audit even if some of the group's models are missing")
    au.add_argument("--memorization-from", default=None,
                    help="per-sample table whose memorization defines the bins (e.g. the undefended group's)")
    au.add_argument("--out", default=None, help="where to write audit.json and samples.parquet (default: DIRECTORY)")
    au.add_argument("--json", action="store_true", help="print per-attack mean metrics as JSON on the last line")
    au.set_defaults(func=cmd_audit)
    return p


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
