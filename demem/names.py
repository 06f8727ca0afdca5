"""Every epoch and result key the library writes, spelled once.

`demem.train` reports the epoch keys, `demem.evaluate` the held-out keys, `demem.artifacts` writes
both into metrics.json, and the orchestrator builds its tables, TensorBoard curves and search
objectives from these names (`orchestrator.columns`), so no key is spelled twice.
"""

from __future__ import annotations

# One epoch of training: what `train_epoch` returns and metrics.json's `history` holds.
EPOCH = "epoch"
TRAIN_LOSS = "train_loss"  # the method's loss plus lambda times the DeMem penalty
METHOD_LOSS = "method_loss"  # the method's own loss
PENALTY = "penalty"  # the DeMem penalty (0 when lambda is 0)
TRAIN_ACC = "train_acc"  # accuracy on the (clean) training batches
HIGH_RISK_FRAC = "high_risk_frac"  # share of training samples DeMem counts as high-risk
LR = "lr"
SECONDS = "seconds"
SAMPLES_PER_S = "samples_per_s"
EPSILON = "epsilon"  # DP-SGD's epsilon spent so far (DP methods only)

# The epoch keys drawn as curves (TensorBoard), in the order the README lists them.
EPOCH_CURVES = (TRAIN_LOSS, METHOD_LOSS, PENALTY, TRAIN_ACC, HIGH_RISK_FRAC, LR, EPSILON, SAMPLES_PER_S)

# Held-out evaluation: what `evaluate_heldout` returns.
N_HELDOUT = "n_heldout"
NATURAL_ACC = "natural_acc"
ROBUST_ACC = "robust_acc_pgd"  # robust accuracy under the evaluation PGD
ROBUST_ACC_AA = "robust_acc_aa"  # under AutoAttack, where it ran (else None)
N_AUTOATTACK = "n_autoattack"
HELDOUT_ACCURACIES = (NATURAL_ACC, ROBUST_ACC, ROBUST_ACC_AA)

# The generalization gaps, natural and robust, that membership attacks exploit
# (`demem.evaluate.generalization_gap`): accuracy on the model's own training half, and that minus
# the same accuracy on its held-out half, measured by one procedure on both halves.
N_TRAIN_EVAL = "n_train_eval"
TRAIN_NATURAL_ACC = "train_natural_acc"
TRAIN_ROBUST_ACC = "train_robust_acc"
NATURAL_GAP = "natural_gap"
ROBUST_GAP = "robust_gap"
GAP_ATTACK = "gap_attack"  # the attack behind the robust gap, in words
TRAIN_ACCURACIES = (TRAIN_NATURAL_ACC, TRAIN_ROBUST_ACC)
GAPS = (NATURAL_GAP, ROBUST_GAP)

# What the robust membership signals cost (`demem.runner.evaluate_run`), in seconds per model.
ADVERSARIAL_SECONDS = "adversarial_seconds"
BOUNDARY_SECONDS = "boundary_seconds"

# metrics.json of a finished run, besides the held-out keys and provenance.
EPOCHS_DONE = "epochs_done"
TRAIN_SECONDS = "train_seconds"
EVAL_SECONDS = "eval_seconds"
STATUS = "status"
DONE = "done"  # the STATUS of a finished run
