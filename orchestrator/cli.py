"""The `demem` console script: the Ray-free commands of `demem.commands` (train, audit) plus the experiment
commands (validate, schema, run, resume, confirm, summarize, status). Ray is imported only by the
commands that need it.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys
from collections.abc import Sequence

from demem import __version__
from demem.commands import add_commands
from demem.commands import main as core_main
from orchestrator.columns import FEW_SHADOWS, FEW_SHADOWS_ATTACK, HEADLINE_ATTACK, LEAKAGE_METRICS


def _print_problems(path: str, e) -> int:
    print(f"{path}: {len(e.problems)} problem(s):", file=sys.stderr)
    for p in e.problems:
        print(f"  - {p}", file=sys.stderr)
    return 2


def cmd_validate(a: argparse.Namespace) -> int:
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(a.spec, check_data=not a.no_data_check)
    except SpecError as e:
        return _print_problems(a.spec, e)
    except (FileNotFoundError, ValueError) as e:  # as `demem run` refuses what escapes the problem list
        print(f"demem validate: {e}", file=sys.stderr)
        return 2
    print(f"{a.spec}: valid")
    print(spec.plan())
    from demem.plugins import origins_text

    print(origins_text((g.run for g in spec.groups()), spec.audit.attacks))
    if a.power_from:
        from orchestrator.report import planned_power

        try:
            print(f"from {a.power_from}: {planned_power(a.power_from, len(spec.seeds))}")
        except (FileNotFoundError, KeyError, ValueError) as e:
            print(f"demem validate: --power-from: {e}", file=sys.stderr)
            return 2
    return 0


def cmd_calibrate(a: argparse.Namespace) -> int:
    from demem.calibrate import calibrate, cost_key, device_name, store
    from demem.device import resolve_device
    from orchestrator.spec import SpecError, load_spec

    try:
        spec = load_spec(a.spec, check_data=False)  # synthetic data: the dataset need not be here
        device = resolve_device(a.device)
    except SpecError as e:
        return _print_problems(a.spec, e)
    except (FileNotFoundError, ValueError) as e:
        print(f"demem calibrate: {e}", file=sys.stderr)
        return 2
    kinds = {cost_key(g.run): g for g in spec.groups()}
    name = device_name(device)
    for i, (key, group) in enumerate(kinds.items(), 1):
        timing = calibrate(group.run, device, batches=a.batches)
        path = store(name, key, timing)
        print(
            f"[{i}/{len(kinds)}] {group.label}: {timing['train_s_per_sample'] * 1e3:.3g} ms per training sample "
            f"per epoch, {timing['eval_s_per_sample'] * 1e3:.3g} ms per pool sample evaluated on {name}"
        )
    print(f"timings cached in {path}")
    print(spec.cost_text())
    return 0


def cmd_schema(a: argparse.Namespace) -> int:
    from orchestrator.spec import spec_json_schema

    print(json.dumps(spec_json_schema(), indent=2))
    return 0


def _disk_full(e: BaseException) -> bool:
    """Whether `e` (or what caused it, Tune's wrapping included) is a full disk."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _drive(command: str, what: str, work) -> int:
    """Run a driver command (`work()` returns the experiment) and turn its outcome into an exit code
    (orchestrator.run.EXIT_*), with a one-line message instead of a traceback for what we expect."""
    from orchestrator.lock import ExperimentBusy
    from orchestrator.probe import StorageNotShared
    from orchestrator.run import (
        EXIT_BUSY,
        EXIT_DISK_FULL,
        EXIT_TRIALS_FAILED,
        EXIT_UNFINISHED,
        RayStartError,
        disk_full_trials,
        failed_trials,
        unaudited_groups,
        unfinished_trials,
    )
    from orchestrator.spec import SpecError, load_spec
    from orchestrator.storage import StorageError

    try:
        exp = work()
    except SpecError as e:
        return _print_problems(what, e)
    except ExperimentBusy as e:
        print(f"demem {command}: {e}", file=sys.stderr)
        return EXIT_BUSY
    except Exception as e:  # noqa: BLE001 - a full disk can surface from any layer, Tune's included
        if _disk_full(e):
            print(
                f"demem {command}: the disk holding the results is full ({e.__class__.__name__}). Finished models "
                "and audits are kept; free space, then `demem resume EXPERIMENT_DIR` continues.",
                file=sys.stderr,
            )
            return EXIT_DISK_FULL
        if isinstance(
            e, (FileExistsError, FileNotFoundError, ValueError, RayStartError, StorageError, StorageNotShared)
        ):
            print(f"demem {command}: {e}", file=sys.stderr)
            return 2
        raise
    spec = load_spec(exp.spec, check_data=False)
    if disk_full_trials(spec, exp):
        print(
            f"demem {command}: the disk holding the results filled up during the trials ({disk_full_trials(spec, exp)} "
            f"failed with 'No space left on device'). Finished models and audits are kept; free space, then "
            f"`demem resume {exp.where}` continues.",
            file=sys.stderr,
        )
        return EXIT_DISK_FULL
    left = unfinished_trials(spec, exp)
    if left:  # the tables hold what finished; a script must not take them for the experiment's
        print(
            f"demem {command}: {left} of {len(spec.trials())} trials did not finish (the driver was stopped "
            f"before they ended); `demem resume {exp.where}` continues them",
            file=sys.stderr,
        )
        return EXIT_UNFINISHED
    n, unaudited = failed_trials(spec, exp), unaudited_groups(spec, exp)
    if n:
        print(
            f"demem {command}: {n} trial(s) failed after their retries; their groups are reported with the "
            f"failures (see `demem status {exp.where}`)",
            file=sys.stderr,
        )
    if unaudited:
        shown = ", ".join(unaudited[:5]) + (f" and {len(unaudited) - 5} more" if len(unaudited) > 5 else "")
        print(
            f"demem {command}: the audit of {len(unaudited)} group(s) failed ({shown}): the reason is printed above; "
            f"fix it, then `demem resume {exp.where}` audits them",
            file=sys.stderr,
        )
    return EXIT_TRIALS_FAILED if n or unaudited else 0


def _seed_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: a comma-separated list of integers, e.g. 3,4") from None


def cmd_run(a: argparse.Namespace) -> int:
    from orchestrator.run import run_experiment

    return _drive(
        "run",
        a.spec,
        lambda: run_experiment(
            a.spec,
            name=a.name,
            storage=a.storage,
            address=a.address,
            max_concurrent=a.max_concurrent,
            seeds=a.seeds,
        ),
    )


def cmd_resume(a: argparse.Namespace) -> int:
    from orchestrator.run import resume_experiment

    return _drive(
        "resume", a.experiment, lambda: resume_experiment(a.experiment, address=a.address, retry_failed=a.retry_failed)
    )


def cmd_confirm(a: argparse.Namespace) -> int:
    from orchestrator.confirm import confirm

    return _drive(
        "confirm",
        a.experiment,
        lambda: confirm(
            a.experiment,
            a.top,
            name=a.name,
            baseline=not a.no_baseline,
            address=a.address,
            max_concurrent=a.max_concurrent,
        ),
    )


def cmd_summarize(a: argparse.Namespace) -> int:
    from pathlib import Path

    from orchestrator.external import is_audit_dir, summarize_audits
    from orchestrator.summarize import summarize

    try:
        if len(a.experiment) == 1 and not is_audit_dir(Path(a.experiment[0])):
            summarize(a.experiment[0], leakage=a.leakage, attack=a.attack, out=a.out, forest_from=a.forest_from)
        else:  # audit directories of groups trained elsewhere (`demem audit --format ...`)
            summarize_audits(a.experiment, out=a.out, leakage=a.leakage, attack=a.attack)
    except (FileNotFoundError, ValueError) as e:
        print(f"demem summarize: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_merge(a: argparse.Namespace) -> int:
    from orchestrator.merge import merge_experiments
    from orchestrator.spec import SpecError

    try:
        merge_experiments(a.experiments, a.name, storage=a.storage)
    except SpecError as e:
        return _print_problems("demem merge", e)
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        print(f"demem merge: {e}", file=sys.stderr)
        return 2
    return 0


def cmd_status(a: argparse.Namespace) -> int:
    from orchestrator.run import status

    return status(a.experiment)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="demem",
        description="demem: adversarial training with DeMem and privacy audits. train / audit work on one "
        "model or group without Ray; validate / run / resume / status / confirm run experiments on "
        "Ray Tune; summarize ranks their results.",
    )
    p.add_argument("--version", action="version", version=f"demem {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    add_commands(sub)
    v = sub.add_parser("validate", help="check an experiment spec (YAML) and print its plan")
    v.add_argument("spec")
    v.add_argument("--no-data-check", action="store_true", help="do not check (read) the datasets here")
    v.add_argument(
        "--power-from",
        metavar="EXPERIMENT",
        default=None,
        help="a summarized earlier experiment: print the leakage difference this spec's seeds could detect, "
        "from its across-seed spread",
    )
    v.set_defaults(func=cmd_validate)
    ca = sub.add_parser(
        "calibrate", help="time one epoch per kind of group of a spec on this device; the plan then states its cost"
    )
    ca.add_argument("spec")
    ca.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:1, ...")
    ca.add_argument("--batches", type=int, default=3, help="batches per timed epoch (default 3)")
    ca.set_defaults(func=cmd_calibrate)
    sc = sub.add_parser("schema", help="print the JSON Schema of an experiment spec (for editors checking YAML)")
    sc.set_defaults(func=cmd_schema)
    r = sub.add_parser("run", help="run an experiment spec on Ray Tune (local Ray by default)")
    r.add_argument("spec")
    r.add_argument("--name", default=None, help="experiment name (default: the spec's name)")
    r.add_argument(
        "--storage",
        default="results",
        help="where experiments live: a directory (shared by every node on a cluster) or s3://bucket/prefix, "
        "gs://bucket/prefix (default: results)",
    )
    r.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray)")
    r.add_argument(
        "--max-concurrent", type=int, default=None, help="trials running at once (default: as resources allow)"
    )
    r.add_argument(
        "--seeds",
        type=_seed_list,
        default=None,
        help="only these of the spec's training seeds, e.g. 3,4 (a piece of a study too long for one sitting; "
        "default name <spec name>-s3-4; `demem merge` joins the pieces)",
    )
    r.set_defaults(func=cmd_run)
    re_ = sub.add_parser("resume", help="continue an interrupted experiment")
    re_.add_argument("experiment", help="the experiment directory, e.g. results/quickstart")
    re_.add_argument("--address", default=None)
    re_.add_argument(
        "--retry-failed",
        action="store_true",
        help="also run again the trials that failed deterministically (a refused config, a non-finite loss); "
        "other failures are always run again",
    )
    re_.set_defaults(func=cmd_resume)
    c = sub.add_parser("confirm", help="train and LiRA-audit full groups for the best points of a search")
    c.add_argument("experiment", help="the search experiment directory, e.g. results/search")
    c.add_argument("--top", type=int, default=3, help="how many of the best points (Pareto rank) to confirm")
    c.add_argument("--name", default=None, help="name of the confirmation experiment (default: <name>-confirm)")
    c.add_argument("--no-baseline", action="store_true", help="do not add the base config as a reference group")
    c.add_argument("--address", default=None)
    c.add_argument("--max-concurrent", type=int, default=None)
    c.set_defaults(func=cmd_confirm)
    sm = sub.add_parser("summarize", help="rank groups by privacy-robustness trade-off; plots and report.html")
    sm.add_argument(
        "experiment",
        nargs="+",
        help="the experiment directory, e.g. results/quickstart; or the audit directories (`demem audit --out`) "
        "of groups trained elsewhere, one per (--label, --seed), with --out",
    )
    sm.add_argument(
        "--leakage",
        default="auto",
        choices=("auto", *LEAKAGE_METRICS),
        help="the leakage metric to rank by (default: auto, the lowest FPR level this experiment's non-member "
        "counts resolve, else AUC; the reason is printed)",
    )
    sm.add_argument(
        "--attack",
        default=None,
        help=f"the audit attack whose leakage is used (default: {FEW_SHADOWS_ATTACK} where it ran and a target "
        f"has fewer than {FEW_SHADOWS} reference models, else {HEADLINE_ATTACK}; the reason is printed)",
    )
    sm.add_argument("--out", default=None, help="output directory (default: EXPERIMENT/summary)")
    sm.add_argument(
        "--forest-from",
        default=None,
        metavar="EXPERIMENT",
        help="an earlier summarized experiment: the forest plot takes its attacks (one per family and query kind) "
        "and reports on all "
        "of this experiment's seeds (an independent repeat); default: chosen on half of the seeds, reported on "
        "the other half",
    )
    sm.set_defaults(func=cmd_summarize)
    mg = sub.add_parser(
        "merge",
        help="one experiment from several runs of the same spec with disjoint training seeds (a study run a few "
        "seeds at a time), to summarize as one",
    )
    mg.add_argument("experiments", nargs="+", help="the finished experiment directories")
    mg.add_argument("--name", required=True, help="name of the merged experiment")
    mg.add_argument("--storage", default="results", help="where to write it (default: results)")
    mg.set_defaults(func=cmd_merge)
    s = sub.add_parser("status", help="what is done, running, failed and pending in an experiment")
    s.add_argument("experiment")
    s.set_defaults(func=cmd_status)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    return core_main(argv, build_parser())


if __name__ == "__main__":
    raise SystemExit(main())
