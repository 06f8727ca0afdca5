"""Audit one group: membership-inference attacks against each target model, memorization, per-sample
risk, and the per-memorization-bin analysis. Pure arrays in (`GroupData`), plain dicts out.

Every target is attacked with the group's other models as shadows, leaving out its complementary
partner too, so each sample has equally many IN and OUT shadows. Numbers are
reported per target and as mean ± std over targets, each labelled with its attack variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from demem.artifacts import SCHEMA_VERSION, GroupData, group_key
from demem.io import write_json, write_parquet
from demem.names import HELDOUT_ACCURACIES
from demem.privacy.attacks import (
    LIRA_MIN_MODELS,
    LIRA_MIN_SHADOWS,
    MIA,
    AttackRefused,
    AttackSetup,
    Scores,
    attack_names,
    attack_sets,
)
from demem.privacy.memorization import bin_table, memorization, per_sample_risk
from demem.privacy.roc import attack_metrics, mean_std, pooled_low_fpr, roc_curve, roc_points

__all__ = [
    "ATTACK_SETS",
    "LIRA_ATTACKS",
    "LIRA_MIN_MODELS",
    "LIRA_MIN_SHADOWS",
    "MIA_ATTACKS",
    "RMIA_ATTACKS",
    "THRESHOLD_ATTACKS",
    "AuditConfig",
    "format_table",
    "parse_attacks",
    "run_audit",
    "write_audit",
]

# The built-in attacks' names (demem.privacy.attacks), in the registry's order: every attack, each
# family, the sets. The checks below ask the registry itself, so an attack registered later counts.
MIA_ATTACKS = attack_names()
LIRA_ATTACKS = attack_names("lira")
RMIA_ATTACKS = attack_names("rmia")
THRESHOLD_ATTACKS = attack_names("threshold")
# Names that stand for several attacks in attack lists (CLI, specs).
ATTACK_SETS = attack_sets()
AUDIT_JSON, SAMPLES_TABLE = "audit.json", "samples.parquet"


@dataclass(frozen=True)
class AuditConfig:
    """What to run.

    Attributes:
        attacks: names from MIA_ATTACKS.
        targets: attack the first `targets` models (by model_index); None = every model.
        queries: use the first K recorded queries for LiRA; None = all that were recorded.
        memorization_from: a per-sample table (sample_id, memorization) whose memorization defines
            the bins, e.g. the undefended group's, so defended groups are compared on the same bins.
    """

    attacks: tuple[str, ...] = MIA_ATTACKS
    targets: int | None = None
    queries: int | None = None
    memorization_from: str | None = None

    def __post_init__(self) -> None:
        bad = [a for a in self.attacks if a not in MIA]  # the registry now, with any attack added since
        if bad or not self.attacks:
            raise ValueError(f"unknown attack(s) {bad or '(none given)'}; known: {', '.join(attack_names())}")
        if self.targets is not None and self.targets < 1:
            raise ValueError(f"targets must be >= 1, got {self.targets}")
        if self.queries is not None and self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")


def parse_attacks(text: str) -> tuple[str, ...]:
    """Comma-separated attack names; "lira" / "rmia" stand for every variant of the attack,
    "threshold" for every threshold attack, "all" for everything (`attacks.attack_sets`)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        expanded = attack_sets().get(part, (part,))
        out.extend(a for a in expanded if a not in out)
    return tuple(out)


def run_audit(group: GroupData, cfg: AuditConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run the audit: the shared setup, every asked attack from the registry, then memorization and
    the per-sample table.

    Returns:
        (result, per_sample): `result` is the JSON-able audit (per attack: per-target metrics, their
        mean ± std, pooled ROC points, or why it was refused; memorization bins); `per_sample` holds
        (N,) arrays for the per-sample table: sample_id, label, memorization, risk, phi_in_mean,
        phi_out_mean, n_in, n_out, heldout_acc.
    """
    setup = attack_setup(group, cfg)
    results: dict[str, Any] = {}
    lira_for_risk = None
    for name in cfg.attacks:
        attack = MIA.get(name)
        try:
            scored = attack.score(setup)
        except AttackRefused as e:  # cannot be estimated here: say why, keep the others
            results[name] = {"variant": attack.variant, "skipped": str(e)}
            continue
        results[name] = _summarise(scored, group.keep, setup.targets)
        if attack.family == "lira" and (lira_for_risk is None or name == "lira_online"):
            lira_for_risk = scored.scores  # per-sample risk: online LiRA where it ran, else the first
    per_sample, bins = _per_sample(group, setup, lira_for_risk, cfg.memorization_from)
    accs = {key: [mt[key] for mt in group.metrics if mt.get(key) is not None] for key in HELDOUT_ACCURACIES}
    result = {
        "schema_version": SCHEMA_VERSION,
        "group": group_key(group.run),
        "seed": group.run["seed"],
        "pool_fingerprint": group.pool_fingerprint,
        "n_models": group.n_models,
        "n_samples": int(len(group.sample_ids)),
        "targets": [int(group.model_index[t]) for t in setup.targets],
        "queries": setup.queries,
        "attacks": results,
        "accuracy": {
            key: {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
            for key, v in accs.items()
            if v
        },
        "memorization_bins": bins,
        "memorization_source": cfg.memorization_from or "this group",
    }
    return result, per_sample


def attack_setup(group: GroupData, cfg: AuditConfig) -> AttackSetup:
    """Check the group can be audited as asked and fix what every attack shares: the targets, their
    partners and the queries.

    Each target's complementary partner is left out of its references too (models 2k and 2k+1 train
    on complementary halves): every sample then has exactly (M - 2) / 2 IN and OUT shadows, with no
    bias from unequal counts (see demem.privacy.mia.lira_scores). Models without a partner in the
    group keep M - 1."""
    m, keep = group.n_models, group.keep
    counts_in, counts_out = keep.sum(0), (~keep).sum(0)
    if counts_in.min() < 2 or counts_out.min() < 2:
        raise ValueError(
            f"every sample needs >= 2 IN and >= 2 OUT models; the smallest counts here are "
            f"{int(counts_in.min())} IN / {int(counts_out.min())} OUT over {m} models (train more models)"
        )
    targets = np.arange(m if cfg.targets is None else min(cfg.targets, m))
    k_total = group.signals["phi"].shape[2]
    k = k_total if cfg.queries is None else cfg.queries
    if k > k_total:
        raise ValueError(f"{k} queries asked for, but the models recorded only {k_total}")
    idx = {int(mi): j for j, mi in enumerate(group.model_index)}
    partners = np.array([idx.get(int(group.model_index[t]) ^ 1, -1) for t in targets])
    for j, p in enumerate(partners):
        if p >= 0 and not np.array_equal(keep[targets[j]], ~keep[p]):
            partners[j] = -1
    return AttackSetup(group, targets, partners, k)


def _per_sample(
    group: GroupData, setup: AttackSetup, lira_scores: np.ndarray | None, memorization_from: str | None
) -> tuple[dict[str, np.ndarray], list[dict[str, Any]]]:
    """The per-sample table and the memorization bins (bins from `memorization_from` where given)."""
    keep, targets = group.keep, setup.targets
    counts_in, counts_out = keep.sum(0), (~keep).sum(0)
    correct = group.signals["correct"][:, :, 0]
    mem = memorization(correct, keep)
    bin_mem = mem if memorization_from is None else _reference_memorization(memorization_from, group.sample_ids)
    bins = bin_table(bin_mem, correct, keep, lira_scores, targets)
    risk = per_sample_risk(lira_scores, keep, targets) if lira_scores is not None else np.full(len(mem), np.nan)
    q0 = group.signals["phi"][:, :, 0].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_sample = {
            "sample_id": group.sample_ids,
            "label": group.labels,
            "memorization": mem,
            "risk": risk,
            "phi_in_mean": (q0 * keep).sum(0) / counts_in,
            "phi_out_mean": (q0 * ~keep).sum(0) / counts_out,
            "n_in": counts_in,
            "n_out": counts_out,
            "heldout_acc": (correct * ~keep).sum(0) / counts_out,
        }
    return per_sample, bins


def _summarise(scored: Scores, keep: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """Per-target metrics of an attack's scores, their mean ± std, pooled low-FPR points and ROC."""
    scores = scored.scores
    rows = [{"target": int(t), **attack_metrics(s, keep[t])} for t, s in zip(targets, scores)]
    mean = mean_std([{k: v for k, v in r.items() if k != "target"} for r in rows])
    for key, values in scored.per_target.items():
        for row, v in zip(rows, values):
            row[key] = v
        mean[f"{key}_mean"] = float(np.mean(values))
        mean[f"{key}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    pooled_fpr, pooled_tpr, _ = roc_curve(scores.ravel(), keep[targets].ravel())
    fpr, tpr = roc_points(pooled_fpr, pooled_tpr)
    return {
        **scored.info,
        "per_target": rows,
        "mean": mean,
        "pooled": pooled_low_fpr(scores, keep[targets]),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def _reference_memorization(path: str, sample_ids: np.ndarray) -> np.ndarray:
    from demem.penalty import load_risk_table, scores_for

    return scores_for(sample_ids, load_risk_table(path, "memorization"), path).astype(np.float64)


def write_audit(directory: str | Path, result: dict[str, Any], per_sample: dict[str, np.ndarray]) -> list[Path]:
    """Write audit.json and samples.parquet (usable as `--demem-risk-file`) atomically."""
    import pandas as pd

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    write_json(directory / AUDIT_JSON, result)
    table = pd.DataFrame(per_sample)
    table["schema_version"] = SCHEMA_VERSION
    write_parquet(directory / SAMPLES_TABLE, table)
    return [directory / AUDIT_JSON, directory / SAMPLES_TABLE]


def format_table(result: dict[str, Any]) -> str:
    """A short text table of the audit: one line per attack, mean ± std over targets."""
    cols = [
        ("auc", "AUC"),
        ("balanced_acc", "bal.acc"),
        ("tpr_at_1pct", "TPR@1%"),
        ("tpr_at_0_1pct", "TPR@0.1%"),
        ("tpr_at_0_01pct", "TPR@0.01%"),
    ]
    lines = [f"{'attack':<20}" + "".join(f"{h:>17}" for _, h in cols)]
    for name, res in result["attacks"].items():
        if "skipped" in res:
            lines.append(f"{name:<20}  skipped: {res['skipped']}")
            continue
        mean = res["mean"]
        lines.append(f"{name:<20}" + "".join(f"{mean[k + '_mean']:>9.4f} ± {mean[k + '_std']:<5.3f}" for k, _ in cols))
    lines.append("pooled over targets (each at its own FPR), with exact 95% binomial intervals within this draw:")
    for name, res in result["attacks"].items():
        if "pooled" in res:
            lines.append(
                f"  {name:<18}"
                + "   ".join(_pooled_cell(k, res["pooled"][k]) for k in ("tpr_at_1pct", "tpr_at_0_1pct"))
            )
    acc = result.get("accuracy", {})
    if acc:
        lines.append(
            "accuracy (held-out): "
            + ", ".join(f"{k} {v['mean']:.4f} ± {v['std']:.4f} (n={v['n']})" for k, v in acc.items())
        )
    return "\n".join(lines)


def _pooled_cell(key: str, p: dict[str, Any]) -> str:
    level = {"tpr_at_1pct": "1%", "tpr_at_0_1pct": "0.1%"}[key]
    if not p["resolvable"]:
        return f"TPR@{level} below resolution ({p['n_nonmembers_min']} non-members)"
    return f"TPR@{level} {p['tpr']:.4f} [{p['lo']:.4f}, {p['hi']:.4f}] ({p['tp']}/{p['n_members']})"
