"""The columns of the orchestrator's tables, its curves, search objectives and headline attacks.

The keys a run writes are the library's (`demem.names`); this module builds on them, so a column of
runs.parquet, a TensorBoard curve, a search objective and a plot label never spell a name twice.
Ray-free and cheap to import (the spec validator uses it).
"""

from __future__ import annotations

from demem.names import (
    ADVERSARIAL_SECONDS,
    BOUNDARY_SECONDS,
    EPOCH_CURVES,
    EPOCHS_DONE,
    EPSILON,
    HELDOUT_ACCURACIES,
    TRAIN_LOSS,
)
from demem.names import NATURAL_ACC as NATURAL_ACC  # re-exported: the orchestrator's modules import them here
from demem.names import ROBUST_ACC as ROBUST_ACC
from demem.names import ROBUST_ACC_AA as ROBUST_ACC_AA

# Per-model accuracy columns of metrics.json / runs.parquet.
ACCURACY_METRICS = (*HELDOUT_ACCURACIES, EPSILON)
# What the robust membership signals cost per model (runs.parquet).
SIGNAL_COSTS = (ADVERSARIAL_SECONDS, BOUNDARY_SECONDS)
# What a finished grid trial reports to Tune besides its ids.
FINAL_KEYS = (*HELDOUT_ACCURACIES, EPSILON, TRAIN_LOSS, EPOCHS_DONE)
# The TensorBoard curves of a grid trial: each epoch's training metrics, then the final accuracies.
CURVES = (*EPOCH_CURVES, *HELDOUT_ACCURACIES)

# Objectives a search may name. A search trial reports its robust accuracy under PGD as `robust_acc`
# and its own-membership (loss-threshold) scores as mia_*.
SEARCH_ROBUST_ACC = "robust_acc"
SEARCH_METRICS = (NATURAL_ACC, SEARCH_ROBUST_ACC, "mia_auc", "mia_tpr_at_1pct", "mia_tpr_at_0_1pct")

# Leakage metrics of an audit row (audits.parquet) and how plots and reports name them.
LEAKAGE_LABELS = {
    "auc": "ROC AUC",
    "tpr_at_1pct": "TPR at 1% FPR",
    "tpr_at_0_1pct": "TPR at 0.1% FPR",
    "tpr_at_0_01pct": "TPR at 0.01% FPR",
    "balanced_acc": "balanced accuracy",
}
LEAKAGE_METRICS = tuple(LEAKAGE_LABELS)
# The FPR levels whose TPR is also pooled over the targets of a seed (lowfpr.parquet, ranking.md).
POOLED_LEVELS = ("tpr_at_1pct", "tpr_at_0_1pct")

# The attack the group table, TensorBoard's HParams and the summary show, chosen by the number of
# reference (shadow) models a target has (`orchestrator.collect.choose_attack`): LiRA with a global
# variance is the steadier LiRA with a handful of shadows and the usual headline with many; with fewer
# than FEW_SHADOWS, RMIA (online), which its authors designed to keep its power with few reference
# models, where it ran. Where neither ran, the first of the fallbacks that did.
HEADLINE_ATTACK = "lira_online_fixed"
FEW_SHADOWS_ATTACK = "rmia_online"
FEW_SHADOWS = 16
FALLBACK_ATTACKS = ("lira_online", "lira_offline_fixed", "lira_offline")

# The result key a grid trial reports a deterministic failure under (instead of raising, so that Tune
# does not retry what would fail the same way again).
FAILED = "failed"

# Where a grid trial ran, as its results report it and trials.json / runs.parquet record it.
WHERE_KEYS = ("node_id", "host", "gpu_ids", "started_at")
