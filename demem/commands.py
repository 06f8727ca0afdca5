"""The Ray-free commands `demem train` (one model of a group) and `demem audit` (one group's models).

The `demem` console script is `orchestrator.cli`, which adds these two to the experiment commands
that need Ray (run, resume, status, ...); this module alone runs them as `python -m demem.commands`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from demem import __version__
from demem.artifacts import CHECKPOINT, METRICS
from demem.data import SPLITS
from demem.dp import ACCOUNTANTS
from demem.evasion import LOSSES as ATTACK_LOSSES
from demem.evasion import STARTS as ATTACK_STARTS
from demem.evasion import THREAT_NORMS
from demem.methods import AWP_OBJECTIVES
from demem.models import NORM_LAYERS
from demem.penalty import RISKS, THRESHOLD_MODES
from demem.privacy.attacks import attack_names, attack_sets
from demem.train import SCHEDULES

# `demem train` flags: (flag, run-config keys it sets, argparse options, help). Defaults are not
# restated here: a flag left out leaves its keys out, and RunConfig.from_dict fills them; --help shows
# the default that from_dict gives (for Fashion-MNIST and pgd_at where it depends on them).
_TRAIN_FLAGS: dict[str, list[tuple[str, tuple[str, ...], dict[str, Any], str]]] = {
    "data": [
        ("--dataset", ("data.dataset",), {}, "dataset"),
        ("--data-root", ("data.root",), {}, "directory holding the dataset files (else $DEMEM_DATA, ...)"),
        ("--download", ("data.download",), {"action": "store_true"}, "let torchvision download a missing dataset"),
        ("--pool-size", ("data.pool_size",), {"type": int}, "subsample the merged train+test pool to this size"),
        ("--pool-seed", ("data.pool_seed",), {"type": int}, "seed of the pool subsample and of the keep mask"),
        ("--splits", ("data.splits",), {"choices": SPLITS}, "which splits make the pool"),
    ],
    "group membership": [
        ("--n-models", ("n_models",), {"type": int}, "models in the group (M); each trains on half the pool"),
        ("--model-index", ("model_index",), {"type": int}, "which of the M models to train, 0..M-1"),
        ("--seed", ("seed",), {"type": int}, "training seed (init, batch order, attacks)"),
    ],
    "model and optimisation": [
        ("--arch", ("train.arch",), {}, "network"),
        ("--norm", ("train.norm",), {"choices": NORM_LAYERS}, "normalisation layers (group for the DP methods)"),
        ("--epochs", ("train.epochs",), {"type": int}, "epochs (per dataset)"),
        ("--batch-size", ("train.batch_size",), {"type": int}, "batch size (per dataset: 256 CIFAR / SVHN)"),
        ("--lr", ("train.lr",), {"type": float}, "SGD learning rate"),
        ("--weight-decay", ("train.weight_decay",), {"type": float}, "SGD weight decay"),
        ("--schedule", ("train.schedule",), {"choices": SCHEDULES}, "learning-rate schedule"),
        ("--no-augment", ("train.augment",), {"action": "store_false"}, "train without random crops and flips"),
    ],
    "method": [
        ("--method", ("method.name",), {}, "training method"),
        (
            "--beta",
            ("method.beta",),
            {"type": float},
            "the method's weight: TRADES / MART robustness (6 / 5), a plugin's own",
        ),
        ("--awp-gamma", ("method.awp_gamma",), {"type": float}, "AWP size for pgd_at / trades (0 = off)"),
        (
            "--awp-objective",
            ("method.awp_objective",),
            {"choices": AWP_OBJECTIVES},
            "what AWP perturbs the weights along: the method's loss (reference) or loss + DeMem penalty",
        ),
        ("--eps", ("attack.eps", "eval.attack.eps"), {"type": float}, "attack radius (per dataset)"),
        ("--attack-norm", ("attack.norm", "eval.attack.norm"), {"choices": THREAT_NORMS}, "attack norm"),
        ("--train-attack-steps", ("attack.steps",), {"type": int}, "PGD steps of the training attack"),
        ("--train-attack-step", ("attack.step_size",), {"type": float}, "step size (1.25 * eps / steps)"),
        (
            "--train-attack-start",
            ("attack.start",),
            {"choices": ATTACK_STARTS},
            "random start of the training attack (default: where the method's authors start)",
        ),
    ],
    "DeMem": [
        ("--demem-lambda", ("demem.lambda",), {"type": float}, "penalty weight, >= 0 (0 = off)"),
        ("--demem-threshold", ("demem.risk_threshold",), {"type": float}, "risk threshold tau in [0, 1)"),
        ("--demem-risk", ("demem.risk",), {"choices": RISKS}, "how samples are ranked by risk"),
        ("--demem-risk-file", ("demem.risk_file",), {}, "per-sample memorization table (risk 'memorization')"),
        ("--demem-threshold-mode", ("demem.threshold_mode",), {"choices": THRESHOLD_MODES}, "quantile or absolute"),
    ],
    "differential privacy (methods dp_sgd, dp_pgd_at, dp_trades; through Opacus)": [
        ("--dp-noise", ("dp.noise_multiplier",), {"type": float}, "noise multiplier sigma (or --dp-epsilon)"),
        ("--dp-epsilon", ("dp.target_epsilon",), {"type": float}, "target epsilon for the whole run (or --dp-noise)"),
        ("--dp-clip", ("dp.max_grad_norm",), {"type": float}, "per-sample gradient clipping norm"),
        ("--dp-delta", ("dp.delta",), {"type": float}, "delta (1/N_train rounded down to a power of ten)"),
        ("--dp-accountant", ("dp.accountant",), {"choices": ACCOUNTANTS}, "privacy accountant"),
    ],
    "evaluation": [
        ("--eval-attack-steps", ("eval.attack.steps",), {"type": int}, "PGD steps of the held-out evaluation"),
        ("--eval-attack-loss", ("eval.attack.loss",), {"choices": ATTACK_LOSSES}, "loss of the evaluation attack"),
        ("--autoattack", ("eval.autoattack",), {"action": "store_true"}, "also AutoAttack (needs demem[autoattack])"),
        (
            "--adversarial-steps",
            ("eval.adversarial.steps",),
            {"type": int},
            "PGD steps of each sample's adversarial query (membership signals on perturbed inputs)",
        ),
        (
            "--no-adversarial",
            ("eval.adversarial",),
            {"action": "store_const", "const": None},
            "record no adversarial-query signals",
        ),
        (
            "--boundary-norms",
            ("eval.boundary.norms",),
            {"type": lambda text: [n.strip() for n in text.split(",") if n.strip()]},
            "norms of the boundary distance, comma-separated: linf, l2",
        ),
        ("--no-boundary", ("eval.boundary",), {"action": "store_const", "const": None}, "record no boundary distance"),
    ],
}


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _resolved_default(path: str) -> Any:
    """What RunConfig.from_dict({}) puts at `path` (dotted, aliases applied), for --help."""
    from demem.train import RunConfig

    value: Any = RunConfig.from_dict({}).to_dict()
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _starts_by_method() -> str:
    """'gaussian: mart, trades; uniform: pgd_at, ...': each method's own training-attack start."""
    from demem.methods import METHODS

    by: dict[str, list[str]] = {}
    for name in sorted(METHODS):
        by.setdefault(METHODS.get(name).start, []).append(name)
    return "; ".join(f"{start}: {', '.join(names)}" for start, names in sorted(by.items()))


def _registered(path: str) -> str:
    """': a, b, c' for a flag whose values are a registry's names (read when the parser is built, so
    every registered name is listed), else ''."""
    from demem.data import DATASETS
    from demem.methods import METHODS
    from demem.models import MODELS

    if path == "method.name":
        dp = [n for n in METHODS.names() if METHODS.get(n).dp]
        return f": {', '.join(n for n in METHODS.names() if n not in dp)}; DP-SGD: {', '.join(dp)}"
    registry = {"data.dataset": DATASETS, "train.arch": MODELS}.get(path)
    return f": {', '.join(registry.names())}" if registry is not None else ""


def _add_train_args(p: argparse.ArgumentParser) -> None:
    for title, flags in _TRAIN_FLAGS.items():
        g = p.add_argument_group(title)
        for flag, paths, options, text in flags:
            text += _registered(paths[0])
            shown = "off" if options.get("action") else _resolved_default(paths[0])
            shown = f"{shown:g}" if isinstance(shown, float) else shown
            shown = ",".join(map(str, shown)) if isinstance(shown, list) else shown
            if paths[0] == "attack.start":  # the method's own: one default would mislead
                shown = _starts_by_method()
            g.add_argument(flag, dest=_dest(flag), default=argparse.SUPPRESS, help=f"{text} [{shown}]", **options)
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="directory for config, checkpoint, statistics and metrics")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    g.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    g.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last stdout line")


def run_dict_from_args(a: argparse.Namespace) -> dict[str, Any]:
    """The RunConfig dict the `train` flags describe: only the keys of the flags given."""
    return flags_to_dict(a, [f for flags in _TRAIN_FLAGS.values() for f in flags])


def flags_to_dict(a: argparse.Namespace, flags) -> dict[str, Any]:
    """The nested run-config dict that the given (flag, keys, options, help) entries set in `a`."""
    out: dict[str, Any] = {}
    for flag, paths, _, _ in flags:
        if not hasattr(a, _dest(flag)):
            continue
        for path in paths:
            *parents, leaf = path.split(".")
            node = out
            for key in parents:
                node = node.setdefault(key, {})
            node[leaf] = getattr(a, _dest(flag))
    return out


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
    why = _out_problem(out)
    if why is not None:
        print(f"demem train: {why}", file=sys.stderr)
        return 2
    if not a.resume and ((out / METRICS).exists() or (out / CHECKPOINT).exists()):
        print(
            f"demem train: {out} already holds a run; pass --resume to continue it or choose another --out",
            file=sys.stderr,
        )
        return 2

    from demem import names
    from demem.data import DatasetNotFoundError
    from demem.runner import train_run

    log = sys.stderr if a.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=log, flush=True)

    def started(state) -> None:
        say(
            f"training {run.method.name} ({run.train.arch}) on {state.pool.info.name}: model "
            f"{run.model_index}/{run.n_models}, {int(state.keep.sum())} of {state.pool.n} pool samples, "
            f"{run.train.epochs} epochs, eps {run.attack.eps:.4g}, DeMem lambda {run.demem.lam:g} "
            f"tau {run.demem.risk_threshold:g}, defence {run.defence}, device {device}"
        )
        if state.dp is not None:
            say(
                f"DP-SGD (Opacus): noise multiplier {state.dp.noise_multiplier:.4g}, clip {run.dp.max_grad_norm:g}, "
                f"sample rate {state.dp.sample_rate:.4g}, delta {state.dp.delta:g}, accountant {run.dp.accountant}"
            )

    def epoch_done(state, m: dict[str, Any]) -> None:
        say(
            f"epoch {m[names.EPOCH]:>3}/{run.train.epochs}  loss {m[names.TRAIN_LOSS]:.4f}  "
            f"penalty {m[names.PENALTY]:.4f}  train acc {m[names.TRAIN_ACC]:.3f}  lr {m[names.LR]:.4g}  "
            + (f"epsilon {m[names.EPSILON]:.3f}  " if names.EPSILON in m else "")
            + f"{m[names.SECONDS]:.1f}s ({m[names.SAMPLES_PER_S]:.0f} samples/s)"
        )
        if state.done:
            say("evaluating on held-out samples ...")

    try:
        metrics = train_run(run, out, device, resume=a.resume, on_start=started, on_epoch=epoch_done, log=say)
    except (DatasetNotFoundError, FileNotFoundError, ValueError) as e:  # refused before any training
        print(f"demem train: {e}", file=sys.stderr)
        return 2
    except FloatingPointError as e:
        print(f"demem train: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # what _out_problem cannot foresee (a dangling link, a race, a full disk)
        print(f"demem train: --out {out}: {e.strerror or e}", file=sys.stderr)
        return 1
    aa = metrics[names.ROBUST_ACC_AA]
    aa = f"  AutoAttack {aa:.4f}" if aa is not None else ""
    say(
        f"held-out ({metrics[names.N_HELDOUT]} samples): natural acc {metrics[names.NATURAL_ACC]:.4f}  "
        f"PGD-{run.eval.attack.steps} acc {metrics[names.ROBUST_ACC]:.4f}{aa}"
    )
    say(f"wrote {out}/{{config.json, checkpoint.pt, keep.npy, samples.npz, metrics.json}}")
    if a.json:
        print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, sort_keys=True))
    return 0


def _out_problem(out: Path) -> str | None:
    """Why `out` cannot be (or become) the run directory, or None; checked before any work."""
    if out.exists():
        if not out.is_dir():
            return f"--out {out} is a file; name a directory"
        return None if os.access(out, os.W_OK | os.X_OK) else f"--out {out}: the directory is not writable"
    for parent in out.parents:  # mkdir(parents=True) starts below the nearest existing ancestor
        if parent.exists():
            if not parent.is_dir():
                return f"--out {out}: {parent} is a file, not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"--out {out}: cannot create it in {parent} (not writable)"
            return None
    return None


AUDIT_FORMATS = ("auto", "runs", "mi-lira", "npz", "checkpoints")
# The `demem train` flags that describe the models of `demem audit --format checkpoints` (a keep
# matrix + state dicts): which pool the keep columns are, the architecture, and the evaluation.
_CHECKPOINT_FLAGS = ("data", "--arch", "--norm", "--eps", "--attack-norm", "evaluation")


def _checkpoint_flags() -> list[tuple[str, tuple[str, ...], dict[str, Any], str]]:
    out = []
    for title, flags in _TRAIN_FLAGS.items():
        out += [f for f in flags if title in _CHECKPOINT_FLAGS or f[0] in _CHECKPOINT_FLAGS]
    return out


def _checkpoint_run_dict(a: argparse.Namespace) -> dict[str, Any]:
    """The run-config keys the checkpoint flags given describe (only those given)."""
    return flags_to_dict(a, _checkpoint_flags())


def _read_group(a: argparse.Namespace, fmt: str, say):
    """The group `demem audit` audits, read in format `fmt`; external groups also get their record."""
    from demem.artifacts import load_group

    if fmt == "runs":
        return load_group(a.directory, seed=a.seed, allow_partial=a.allow_partial), None
    from demem.privacy import external

    models = [m.strip() for m in a.models.split(",") if m.strip()] if a.models else None
    seed = a.seed if a.seed is not None else 0
    dataset = getattr(a, "dataset", None)
    if fmt == "mi-lira":
        group = external.read_mi_lira(a.directory, epoch=a.epoch, experiments=models, seed=seed, dataset=dataset)
        say(f"LiRA authors' layout: logits of epoch {group.run['external']['epoch']} of {group.n_models} experiments")
    elif fmt == "npz":
        group = external.read_npz_models(a.directory, seed=seed, dataset=dataset)
    else:
        from demem.device import resolve_device
        from demem.privacy.external_checkpoints import read_checkpoints

        run_dict = _checkpoint_run_dict(a)
        if a.queries is not None and run_dict:
            run_dict.setdefault("eval", {})["queries"] = a.queries
        group = read_checkpoints(
            a.directory, run_dict=run_dict, models=models, seed=a.seed, device=resolve_device(a.device), log=say
        )
        seed = group.run["seed"]
    label = a.label or Path(a.directory).resolve().name
    return group, external.external_record(group, label=label, seed=seed)


def cmd_audit(a: argparse.Namespace) -> int:
    from demem.artifacts import GroupError
    from demem.data import DatasetNotFoundError
    from demem.privacy.audit import AuditConfig, format_table, parse_attacks, run_audit, write_audit

    try:
        cfg = AuditConfig(
            attacks=parse_attacks(a.attacks),
            targets=a.targets,
            queries=a.queries,
            memorization_from=a.memorization_from,
        )
    except ValueError as e:
        print(f"demem audit: {e}", file=sys.stderr)
        return 2
    directory = Path(a.directory)
    if directory.exists() and not directory.is_dir():
        print(f"demem audit: {directory} is a file; name a directory", file=sys.stderr)
        return 2
    out = Path(a.out) if a.out is not None else directory
    why = _out_problem(out)
    if why is not None:
        print(f"demem audit: {why}", file=sys.stderr)
        return 2
    from demem.privacy.external import detect_format

    fmt = a.format if a.format != "auto" else detect_format(directory) if directory.is_dir() else "runs"
    given = _checkpoint_run_dict(a)
    given.get("data", {}).pop("dataset", None)  # every format names its dataset (the summary's column)
    if fmt != "checkpoints" and any(given.values()):
        print(
            f"demem audit: --arch and the data / evaluation flags are for --format checkpoints, not {fmt}",
            file=sys.stderr,
        )
        return 2
    log = sys.stderr if a.json else sys.stdout

    def say(line: str) -> None:
        print(line, file=log, flush=True)

    t0 = time.perf_counter()
    try:
        group, record = _read_group(a, fmt, say)
        say(f"auditing {group.n_models} models x {group.keep.shape[1]} samples from {a.directory} ({fmt}) ...")
        result, per_sample = run_audit(group, cfg)
    except (GroupError, ValueError, FileNotFoundError, DatasetNotFoundError) as e:  # nothing written yet
        print(f"demem audit: {e}", file=sys.stderr)
        return 2
    if record is not None:
        result["external"] = record
    result["seconds"] = time.perf_counter() - t0
    paths = write_audit(out, result, per_sample)
    print(format_table(result), file=log)
    print(f"wrote {', '.join(str(p) for p in paths)}", file=log)
    if a.json:
        print(json.dumps({name: r.get("mean", r) for name, r in result["attacks"].items()}, sort_keys=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser of the two Ray-free commands alone (`python -m demem.commands`)."""
    p = argparse.ArgumentParser(prog="demem", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"demem {__version__}")
    add_commands(p.add_subparsers(dest="command", required=True))
    return p


def add_commands(sub) -> None:
    """Add `train` and `audit` to `sub`, the object `ArgumentParser.add_subparsers` returned."""
    t = sub.add_parser(
        "train", help="train and evaluate one model of a group", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    _add_train_args(t)
    t.set_defaults(func=cmd_train)
    au = sub.add_parser("audit", help="membership-inference audit of one group's trained models")
    au.add_argument(
        "directory",
        help="one group's models: `demem train --out` directories; or, trained elsewhere, the LiRA authors' "
        "layout (y_train.npy, <experiment>/keep.npy, <experiment>/logits/<epoch>.npy), one .npz per model, "
        "or keep.npy + models/<i>.pt state dicts",
    )
    au.add_argument(
        "--format",
        default="auto",
        choices=AUDIT_FORMATS,
        help="the layout of DIRECTORY (default: auto: y_train.npy means mi-lira, keep.npy + models/ "
        "checkpoints, *.npz files npz, else runs)",
    )
    au.add_argument(
        "--attacks",
        default="all",
        help=f"comma-separated, from: {', '.join(attack_names())}; or {', '.join(attack_sets())} for several "
        "(default: all; the README's attack table says what each needs)",
    )
    au.add_argument("--targets", type=int, default=None, help="attack the first K models (default: all)")
    au.add_argument(
        "--queries",
        type=int,
        default=None,
        help="use the first K augmented queries (default: all; checkpoints: compute K, else eval.queries)",
    )
    au.add_argument(
        "--seed",
        type=int,
        default=None,
        help="runs / checkpoints of run directories: audit only the models of this seed (default: the one seed "
        "found); logits and keep.npy + models/: the replicate this directory is, for `demem summarize` [0]",
    )
    au.add_argument("--allow-partial", action="store_true", help="audit even if some of the group's models are missing")
    au.add_argument(
        "--memorization-from",
        default=None,
        help="per-sample table whose memorization defines the bins (e.g. the undefended group's; "
        "default: this group's own)",
    )
    g = au.add_argument_group("models trained elsewhere")
    g.add_argument("--label", default=None, help="the group's name in `demem summarize` (default: the directory's)")
    g.add_argument("--epoch", type=int, default=None, help="mi-lira: the logits epoch (default: the latest in all)")
    g.add_argument(
        "--models",
        default=None,
        help="mi-lira: the experiment directories to read; checkpoints: the files under models/, one per keep "
        "row (comma-separated; default: every experiment / 0.pt, 1.pt, ...)",
    )
    g.add_argument("--device", default="auto", help="checkpoints: where the signals are computed")
    g = au.add_argument_group("checkpoints (keep.npy + models/): the pool of the keep columns, the network")
    for flag, paths, options, text in _checkpoint_flags():
        g.add_argument(flag, dest=_dest(flag), default=argparse.SUPPRESS, help=text + _registered(paths[0]), **options)
    au.add_argument("--out", default=None, help="where to write audit.json and samples.parquet (default: DIRECTORY)")
    au.add_argument("--json", action="store_true", help="print per-attack mean metrics as JSON on the last line")
    au.set_defaults(func=cmd_audit)


def main(argv: Sequence[str] | None = None, parser: argparse.ArgumentParser | None = None) -> int:
    args = (parser or build_parser()).parse_args(argv)
    try:
        return args.func(args)
    except BrokenPipeError:  # `demem validate spec | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so the exit flush stays quiet
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
