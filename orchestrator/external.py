"""`demem summarize` of groups trained elsewhere: the audit directories `demem audit` wrote for them
(audit.json with its `external` record + samples.parquet), read into the same `Tables` that
`orchestrator.collect` builds from an experiment, so the one summary pipeline
(`orchestrator.summarize.summarize_tables`) ranks them with the same seed-level statistics.

    demem summarize AUDIT_DIR [AUDIT_DIR ...] --out OUT

Each audit directory is one (group, replicate): the group is its `--label`, the replicate its
`--seed`. A group's value is aggregated within each seed, then across seeds (n = seeds). Groups
whose keep masks are equal per seed (the same keep-mask fingerprint) are paired per (seed, target)
and (seed, model), as the groups of one experiment are; others are compared by Welch intervals on
their seed means. Every external group is its own baseline (method "external", no DeMem, no DP).
Ray-free.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pandas as pd

from demem.artifacts import SCHEMA_VERSION
from demem.names import GAP_ATTACK, GAPS, HELDOUT_ACCURACIES, TRAIN_ACCURACIES
from demem.privacy.audit import AUDIT_JSON
from orchestrator.collect import Tables, audit_rows, curve_rows
from orchestrator.layout import SPEC, read_json

EXPERIMENT = "external"  # the experiment column of external groups' rows
_PER_MODEL = (*HELDOUT_ACCURACIES, *TRAIN_ACCURACIES, *GAPS, GAP_ATTACK)


def is_audit_dir(path: Path) -> bool:
    """Whether `path` is an audit output directory (audit.json at its top, no experiment spec)."""
    return (path / AUDIT_JSON).is_file() and not (path / SPEC).exists()


def group_id(label: str) -> str:
    """A stable group id for an external group's label."""
    return "ext-" + hashlib.sha256(label.encode()).hexdigest()[:12]


def _record(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if (path / SPEC).exists():
        raise ValueError(f"{path} is an experiment directory; summarize it alone, not with audit directories")
    result = read_json(path / AUDIT_JSON)
    if result is None:
        raise ValueError(f"{path}: no {AUDIT_JSON} (name the directories `demem audit --out` wrote)")
    ext = result.get("external") if isinstance(result, dict) else None
    if not isinstance(ext, dict) or not isinstance(ext.get("label"), str) or not isinstance(ext.get("seed"), int):
        raise ValueError(
            f"{path / AUDIT_JSON}: no external record (label, seed): an audit of our own runs is summarized "
            "from its experiment; audit models trained elsewhere with `demem audit --format mi-lira|npz|checkpoints`"
        )
    return result, ext


def _runs_rows(result: dict[str, Any], ext: dict[str, Any], key: dict[str, Any]) -> list[dict[str, Any]]:
    """runs.parquet-like rows of one external audit: one per model, its accuracies as recorded, and
    config columns that say what summarize_groups reads (method "external", lambda 0, no DP)."""
    config = {
        "config.method.name": "external",
        "config.method.awp_gamma": 0.0,
        "config.data.dataset": ext.get("dataset") or "external",
        "config.data.pool_size": int(result["n_samples"]),
        "config.data.pool_seed": ext.get("keep_fingerprint"),  # the pool key pairs equal keep masks
        "config.train.arch": ext.get("arch") or "external",
        "config.train.epochs": int(ext.get("epoch") or 0),
        "config.demem.lambda": 0.0,
        "config.demem.risk_threshold": 0.0,
        "config.demem.risk": "none",
        "config.external.format": ext.get("format"),
        "config.external.label": ext["label"],  # groups of other labels are no baseline of this one
    }
    return [
        {
            "schema_version": SCHEMA_VERSION,
            **key,
            "run_id": f"{key['group_id']}-s{key['seed']}-m{int(m['model_index'])}",
            "model_index": int(m["model_index"]),
            **config,
            "defence": "none",
            **{k: m.get(k) for k in _PER_MODEL},
            "epsilon": None,
            "epochs_done": config["config.train.epochs"],
            "status": "done",
            "error": None,
        }
        for m in ext.get("models", [])
    ]


def audit_tables(directories: list[str | Path]) -> Tables:
    """The Tables of external audit directories, one (group = label, seed) each.

    Raises:
        ValueError: naming the directory, for one that is no external audit, an experiment
            directory, or a (label, seed) given twice.
    """
    if not directories:
        raise ValueError("no audit directories given")
    runs, audits, roc, bins, low, eps = [], [], [], [], [], []
    seen: dict[tuple[str, int], Path] = {}
    for d in map(Path, directories):
        result, ext = _record(d)
        label, seed = ext["label"], ext["seed"]
        if (label, seed) in seen:
            raise ValueError(
                f"{d} and {seen[label, seed]} are both group {label!r} seed {seed}; give each replicate its own --seed"
            )
        seen[label, seed] = d
        key = {"experiment": EXPERIMENT, "group_id": group_id(label), "group_label": label, "seed": seed}
        runs += _runs_rows(result, ext, key)
        audits += audit_rows(result, key)
        for acc, rows in zip((roc, bins, low, eps), curve_rows(result, key)):
            acc += rows
    return Tables(*(pd.DataFrame(f) for f in (runs, audits, roc, bins, low, eps)))


def summarize_audits(
    directories: list[str | Path],
    *,
    out: str | Path | None,
    leakage: str = "auto",
    attack: str | None = None,
    echo=print,
) -> dict[str, Path]:
    """`demem summarize` of external audit directories into `out`; returns {name: path} written."""
    from orchestrator.summarize import summarize_tables

    if out is None:
        raise ValueError("summarizing audit directories needs --out (there is no experiment directory to write into)")
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"--out {out} is a file; name a directory")
    tables = audit_tables(directories)
    return summarize_tables(tables, Path(out), title=Path(out).name, leakage=leakage, attack=attack, echo=echo)
