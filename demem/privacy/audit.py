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
from demem.privacy import mia, rmia
from demem.privacy.memorization import bin_table, memorization, per_sample_risk
from demem.privacy.roc import attack_metrics, mean_std, pooled_low_fpr, roc_curve, roc_points

LIRA_ATTACKS = tuple(f"lira_{v}" for v in mia.LIRA_VARIANTS)
RMIA_ATTACKS = tuple(f"rmia_{v}" for v in rmia.RMIA_VARIANTS)
MIA_ATTACKS = LIRA_ATTACKS + RMIA_ATTACKS + mia.THRESHOLD_ATTACKS
# Names that stand for several attacks in attack lists (CLI, specs).
ATTACK_SETS = {"lira": LIRA_ATTACKS, "rmia": RMIA_ATTACKS, "threshold": mia.THRESHOLD_ATTACKS, "all": MIA_ATTACKS}
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
        bad = [a for a in self.attacks if a not in MIA_ATTACKS]
        if bad or not self.attacks:
            raise ValueError(f"unknown attack(s) {bad or '(none given)'}; known: {', '.join(MIA_ATTACKS)}")
        if self.targets is not None and self.targets < 1:
            raise ValueError(f"targets must be >= 1, got {self.targets}")
        if self.queries is not None and self.queries < 1:
            raise ValueError(f"queries must be >= 1, got {self.queries}")


def parse_attacks(text: str) -> tuple[str, ...]:
    """Comma-separated attack names; "lira" / "rmia" stand for every variant of the attack,
    "threshold" for every threshold attack, "all" for everything (`ATTACK_SETS`)."""
    out: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        expanded = ATTACK_SETS.get(part, (part,))
        out.extend(a for a in expanded if a not in out)
    return tuple(out)


# Shadows of each needed kind (IN and OUT; OUT only offline) every sample must have for LiRA, in
# every variant: the per-sample variance needs two values, and the fixed variance is the median of
# the per-sample ones (Carlini et al.'s code: median over samples of the shadows' per-sample std), so
# with one shadow a side every std is 0 and the "fixed" variance is the floor: scores of ~1e13.
LIRA_MIN_SHADOWS = 2
# The group size that gives them: the target and its complementary partner are left out, so each
# sample has (M - 2) / 2 shadows of a kind.
LIRA_MIN_MODELS = 2 * LIRA_MIN_SHADOWS + 2


def run_audit(group: GroupData, cfg: AuditConfig) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run the audit.

    Returns:
        (result, per_sample): `result` is the JSON-able audit (per attack: per-target metrics, their
        mean ± std, pooled ROC points; memorization bins); `per_sample` holds (N,) arrays for the
        per-sample table: sample_id, label, memorization, risk, phi_in_mean, phi_out_mean, n_in,
        n_out, heldout_acc.
    """
    m = group.n_models
    keep = group.keep
    counts_in, counts_out = keep.sum(0), (~keep).sum(0)
    if counts_in.min() < 2 or counts_out.min() < 2:
        raise ValueError(
            f"every sample needs >= 2 IN and >= 2 OUT models; the smallest counts here are "
            f"{int(counts_in.min())} IN / {int(counts_out.min())} OUT over {m} models (train more models)"
        )
    n_targets = m if cfg.targets is None else min(cfg.targets, m)
    targets = np.arange(n_targets)
    k_total = group.signals["phi"].shape[2]
    k = k_total if cfg.queries is None else cfg.queries
    if k > k_total:
        raise ValueError(f"{k} queries asked for, but the models recorded only {k_total}")
    phi = group.signals["phi"][:, :, :k]
    correct = group.signals["correct"][:, :, 0]

    # Leave each target's complementary partner out too (models 2k and 2k+1 train on complementary
    # halves): every sample then has exactly (M - 2) / 2 IN and OUT shadows, with no bias from unequal
    # counts (see demem.privacy.mia.lira_scores). Models without a partner in the group keep M - 1.
    idx = {int(mi): j for j, mi in enumerate(group.model_index)}
    partners = np.array([idx.get(int(group.model_index[t]) ^ 1, -1) for t in targets])
    for j, p in enumerate(partners):
        if p >= 0 and not np.array_equal(keep[targets[j]], ~keep[p]):
            partners[j] = -1
    results: dict[str, Any] = {}
    lira_for_risk = None
    prob = None  # p(y | x) per model and sample, for RMIA
    for name in cfg.attacks:
        if name in LIRA_ATTACKS:
            variant = name.removeprefix("lira_")
            try:
                scores = mia.lira_scores(
                    phi,
                    keep,
                    variant=variant,
                    targets=targets,
                    min_shadows=LIRA_MIN_SHADOWS,
                    exclude=partners,
                )
            except ValueError as e:  # too few shadows: say so (and how many models would do), keep the others
                results[name] = {
                    "variant": variant,
                    "skipped": f"{e} (LiRA needs a group of at least {LIRA_MIN_MODELS} models)",
                }
                continue
            if lira_for_risk is None or variant == "online":
                lira_for_risk = scores
            n_references = m - 1 - int((partners >= 0).all())
            results[name] = _summarise(
                scores,
                keep,
                targets,
                {
                    "variant": variant,
                    "family": "lira",
                    "queries": k,
                    "n_references": n_references,
                    "references": "leave target and partner out",
                },
            )
        elif name in RMIA_ATTACKS:
            variant = name.removeprefix("rmia_")
            if prob is None:
                prob = rmia.true_label_probability(group.signals["loss"][:, :, :k])
            scores = rmia.rmia_scores(prob, keep, variant=variant, targets=targets, exclude=partners)
            info = {
                "variant": variant,
                "family": "rmia",
                "queries": k,
                "n_references": m - 1 - int((partners >= 0).all()),
                "references": "leave target and partner out",
                "population": "the target's non-members",
                "gamma": rmia.DEFAULT_GAMMA,
            }
            if variant == "offline":
                info["a"] = rmia.DEFAULT_OFFLINE_A
            results[name] = _summarise(scores, keep, targets, info)
        else:
            results[name] = _threshold_attack(name, group, targets)

    mem = memorization(correct, keep)
    bin_mem = mem if cfg.memorization_from is None else _reference_memorization(cfg.memorization_from, group.sample_ids)
    bins = bin_table(bin_mem, correct, keep, lira_for_risk, targets)
    risk = per_sample_risk(lira_for_risk, keep, targets) if lira_for_risk is not None else np.full(len(mem), np.nan)
    q0 = phi[:, :, 0].astype(np.float64)
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
    accs = {key: [mt[key] for mt in group.metrics if mt.get(key) is not None] for key in HELDOUT_ACCURACIES}
    result = {
        "schema_version": SCHEMA_VERSION,
        "group": group_key(group.run),
        "seed": group.run["seed"],
        "pool_fingerprint": group.pool_fingerprint,
        "n_models": m,
        "n_samples": int(len(group.sample_ids)),
        "targets": [int(group.model_index[t]) for t in targets],
        "queries": k,
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


def _summarise(scores: np.ndarray, keep: np.ndarray, targets: np.ndarray, info: dict[str, Any]) -> dict[str, Any]:
    rows = [{"target": int(t), **attack_metrics(s, keep[t])} for t, s in zip(targets, scores)]
    pooled_fpr, pooled_tpr, _ = roc_curve(scores.ravel(), keep[targets].ravel())
    fpr, tpr = roc_points(pooled_fpr, pooled_tpr)
    return {
        **info,
        "per_target": rows,
        "mean": mean_std([{k: v for k, v in r.items() if k != "target"} for r in rows]),
        "pooled": pooled_low_fpr(scores, keep[targets]),
        "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()},
    }


def _threshold_attack(kind: str, group: GroupData, targets: np.ndarray) -> dict[str, Any]:
    """Global-threshold ROC of `kind` on each target, plus per-class thresholds learned on a shadow
    model (the next model of the group) and applied to the target."""
    sig = {"loss": "loss", "confidence": "phi", "entropy": "entropy", "modified_entropy": "mentropy"}[kind]
    arr = group.signals[sig][:, :, 0].astype(np.float64)
    scores = np.stack([mia.threshold_score(kind, **{sig: arr[i]}) for i in range(group.n_models)])
    info = {
        "variant": "global_threshold",
        "family": "threshold",
        "n_references": 1,
        "references": "the next model of the group learns the per-class thresholds; the global ROC uses none",
    }
    out = _summarise(scores[targets], group.keep, targets, info)
    num_classes = int(group.labels.max()) + 1
    bal = []
    for row, t in zip(out["per_target"], targets):
        shadow = (t + 1) % group.n_models
        thr = mia.class_thresholds(scores[shadow], group.keep[shadow], group.labels, num_classes)
        pred = mia.apply_class_thresholds(scores[t], group.labels, thr)
        row["balanced_acc_class_thresholds"] = mia.balanced_accuracy_of(pred, group.keep[t])
        bal.append(row["balanced_acc_class_thresholds"])
    out["mean"]["balanced_acc_class_thresholds_mean"] = float(np.mean(bal))
    out["mean"]["balanced_acc_class_thresholds_std"] = float(np.std(bal, ddof=1)) if len(bal) > 1 else 0.0
    return out


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
