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
from demem.names import GAPS, HELDOUT_ACCURACIES, TRAIN_ACCURACIES
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
from demem.privacy.epsilon import empirical_epsilon, epsilon_from_counts
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
ACCURACIES = HELDOUT_ACCURACIES + TRAIN_ACCURACIES + GAPS


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
        results[name] = {
            "family": attack.family,  # what a plugin's `info` leaves out, the registry says
            "variant": attack.variant,
            "n_references": setup.n_references,
            "query": attack.query,
            "threat_model": attack.threat_model,
        }
        results[name].update(_summarise(scored, group.keep, setup.targets))
        one_run = _one_run(group, setup, scored.scores)
        if one_run is not None:
            results[name]["empirical_epsilon"] = one_run
        if attack.family == "lira" and attack.query == "clean" and (lira_for_risk is None or name == "lira_online"):
            lira_for_risk = scored.scores  # per-sample risk: online LiRA where it ran, else the first clean one
    per_sample, bins = _per_sample(group, setup, lira_for_risk, cfg.memorization_from)
    accs = {key: [mt[key] for mt in group.metrics if mt.get(key) is not None] for key in ACCURACIES}
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
        "empirical_epsilon": _best_epsilon(results),
        "gap_attack": next((mt["gap_attack"] for mt in group.metrics if mt.get("gap_attack")), None),
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


def _one_run(group: GroupData, setup: AttackSetup, scores: np.ndarray) -> dict[str, Any] | None:
    """The one-run epsilon bound (demem.privacy.epsilon) from the scores of ONE target of the group.

    One target only: its scores use the other models as references, whose keep rows the auditor knows;
    with its partner left out, none of them depends on the target's coins, so its guesses see those
    coins through the target alone (Theorem 3.1 of Steinke et al. 2023 needs exactly that). A second
    target's scores would use the first's output as a reference. Independent seeds pool in the
    summary. None where the scores are not finite or the keep row is not a random half of the pool
    (`demem.membership`'s halves are what makes each swap a fair coin)."""
    j = 0
    row = scores[j : j + 1]
    if not np.isfinite(row).all():
        return None
    t = int(setup.targets[j])
    try:
        bound = empirical_epsilon(row, group.keep[t : t + 1], group.model_index[t : t + 1], delta=_delta(group))
    except ValueError:  # a keep row that is not one of our random halves: the swap argument needs them
        return None
    return {
        k: bound[k] for k in ("epsilon", "fraction", "r", "v", "canaries", "counts", "beta", "delta", "adjacency")
    } | {"model": int(group.model_index[t])}


def _delta(group: GroupData) -> float:
    """The delta of the refuted hypothesis: the DP groups' own (to compare with their accountant), 0
    (pure DP) for the others."""
    deltas = [mt.get("delta") for mt in group.metrics if mt.get("delta") is not None]
    return float(max(deltas)) if deltas else 0.0


def _best_epsilon(results: dict[str, Any]) -> dict[str, Any] | None:
    """The best one-run bound over the attacks that ran, beta split over them (Bonferroni)."""
    ran = {name: r["empirical_epsilon"] for name, r in results.items() if "empirical_epsilon" in r}
    if not ran:
        return None
    best = None
    for name, e in ran.items():
        bound = epsilon_from_counts(e["counts"], delta=e["delta"], beta=e["beta"] / len(ran), canaries=e["canaries"])
        if best is None or bound["epsilon"] > best["epsilon"]:
            best = {"attack": name, **{k: bound[k] for k in ("epsilon", "r", "v", "canaries", "beta", "delta")}}
    return {**best, "n_attacks": len(ran), "beta_total": next(iter(ran.values()))["beta"]}


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
    lines = [f"{'attack':<24}" + "".join(f"{h:>17}" for _, h in cols)]
    for name, res in result["attacks"].items():
        if "skipped" in res:
            lines.append(f"{name:<24}  skipped: {res['skipped']}")
            continue
        mean = res["mean"]
        lines.append(f"{name:<24}" + "".join(f"{mean[k + '_mean']:>9.4f} ± {mean[k + '_std']:<5.3f}" for k, _ in cols))
    lines.append("pooled over targets (each at its own FPR), with exact 95% binomial intervals within this draw:")
    for name, res in result["attacks"].items():
        if "pooled" in res:
            lines.append(
                f"  {name:<24}"
                + "   ".join(_pooled_cell(k, res["pooled"][k]) for k in ("tpr_at_1pct", "tpr_at_0_1pct"))
            )
    eps = result.get("empirical_epsilon")
    if eps:
        lines.append(
            f"empirical epsilon (one-run lower bound, {1 - eps['beta_total']:.0%}, {eps['n_attacks']} attacks, "
            f"model {result['attacks'][eps['attack']]['empirical_epsilon']['model']}): {eps['epsilon']:.3f} "
            f"({eps['attack']}: {eps['v']} of {eps['r']} guesses right, {eps['canaries']} swap canaries; "
            "replace-one adjacency)"
        )
    acc = result.get("accuracy", {})
    parts = [
        ("accuracy (held-out): ", [k for k in HELDOUT_ACCURACIES if k in acc]),
        ("accuracy (training half): ", [k for k in TRAIN_ACCURACIES if k in acc]),
        ("train minus held-out: ", [k for k in GAPS if k in acc]),
    ]
    if result.get("gap_attack"):
        parts[-1] = (f"train minus held-out (robust: {result['gap_attack']}): ", parts[-1][1])
    for head, keys in parts:
        if keys:
            cells = (f"{k} {acc[k]['mean']:.4f} ± {acc[k]['std']:.4f} (n={acc[k]['n']} models)" for k in keys)
            lines.append(head + ", ".join(cells))
    return "\n".join(lines)


def _pooled_cell(key: str, p: dict[str, Any]) -> str:
    level = {"tpr_at_1pct": "1%", "tpr_at_0_1pct": "0.1%"}[key]
    if not p["resolvable"]:
        return f"TPR@{level} below resolution ({p['n_nonmembers_min']} non-members)"
    return f"TPR@{level} {p['tpr']:.4f} [{p['lo']:.4f}, {p['hi']:.4f}] ({p['tp']}/{p['n_members']})"
