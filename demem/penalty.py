"""The DeMem de-memorization penalty (Luo & Li, arXiv 2412.05767), generalised with a risk threshold.

For a batch of B per-sample losses l (the CE on the examples the training method attacks with):

    penalty = lambda * 1/(B - 1) * sum_{i in H} (l_i - mean_B(l))^2

H holds the high-risk samples: the ceil((1 - tau) * B) samples with the highest risk score r
(ties broken by position), i.e. those at or above the batch's tau-quantile of r. The count is
computed in exact decimal arithmetic on tau as written (tau 0.7, B 10 gives 3, not the 4 that
float rounding of (1 - 0.7) * 10 = 3.0000000000000004 would give). At tau = 0, H is the
whole batch and the penalty is exactly `lambda * torch.var(l)` (unbiased), the reference objective.
Taking the top-k rather than comparing to an interpolated quantile makes |H| exact under ties.

Risk scores:
    loss_deviation  |l_i - mean(l)| (default): the samples the variance term pulls hardest.
    loss            l_i: hard, atypical samples.
    memorization    a per-sample score from an earlier privacy audit, looked up by sample_id. With
                    `threshold_mode="absolute"`, H = {i : mem_i >= tau} instead of a quantile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

RISKS = ("loss_deviation", "loss", "memorization")
THRESHOLD_MODES = ("quantile", "absolute")


@dataclass(frozen=True)
class DeMemConfig:
    """DeMem settings. `lam` is the paper's lambda (the key is "lambda" in dicts and YAML).

    Attributes:
        lam: penalty weight, >= 0; 0 is the undefended method (reference values 0.2-0.6).
        risk_threshold: tau in [0, 1): the fraction of the batch, by risk, left unpenalised.
        risk: how samples are ranked: one of RISKS.
        risk_file: per-sample score table (npz/csv/parquet with columns sample_id, memorization);
            required by, and only allowed with, risk="memorization".
        threshold_mode: "quantile" (tau is a batch quantile) or "absolute" (memorization only:
            tau is a score threshold).
    """

    _aliases = {"lambda": "lam"}  # `lambda` is a Python keyword

    lam: float = 0.0
    risk_threshold: float = 0.0
    risk: str = "loss_deviation"
    risk_file: str | None = None
    threshold_mode: str = "quantile"

    def __post_init__(self) -> None:
        if not (self.lam >= 0 and math.isfinite(self.lam)):
            raise ValueError(f"demem.lambda must be a finite number >= 0, got {self.lam}")
        if not 0 <= self.risk_threshold < 1:
            raise ValueError(f"demem.risk_threshold must be in [0, 1), got {self.risk_threshold}")
        if self.risk not in RISKS:
            raise ValueError(f"demem.risk must be one of {RISKS}, got {self.risk!r}")
        if self.threshold_mode not in THRESHOLD_MODES:
            raise ValueError(f"demem.threshold_mode must be one of {THRESHOLD_MODES}, got {self.threshold_mode!r}")
        if self.risk == "memorization" and not self.risk_file:
            raise ValueError("demem.risk 'memorization' needs demem.risk_file (the audit's per-sample table)")
        if self.risk != "memorization" and self.risk_file:
            raise ValueError(f"demem.risk_file is only used with risk 'memorization', not {self.risk!r}")
        if self.threshold_mode == "absolute" and self.risk != "memorization":
            raise ValueError("demem.threshold_mode 'absolute' needs risk 'memorization'")

    @property
    def active(self) -> bool:
        return self.lam > 0


def high_risk_mask(risk: torch.Tensor, tau: float, mode: str = "quantile") -> torch.Tensor:
    """Select H. risk: (B,) scores. Returns a (B,) bool mask.

    quantile: the ceil((1 - tau) * B) highest scores (all of them at tau = 0).
    absolute: risk >= tau.
    """
    if mode == "absolute":
        return risk >= tau
    b = risk.shape[0]
    k = high_risk_count(tau, b)
    mask = torch.zeros(b, dtype=torch.bool, device=risk.device)
    if k >= b:
        return mask.fill_(True)
    # A stable descending sort breaks ties by position, so the selection is deterministic.
    idx = torch.sort(risk, descending=True, stable=True).indices[:k]
    return mask.index_fill_(0, idx, True)


def high_risk_count(tau: float, b: int) -> int:
    """|H| = ceil((1 - tau) * b), exactly: tau is taken as the shortest decimal that round-trips to
    it (Fraction(repr(tau))), so 0.7 is 7/10 and no float error is rounded up."""
    return math.ceil((1 - Fraction(repr(float(tau)))) * b)


def risk_scores(losses: torch.Tensor, cfg: DeMemConfig, memorization: torch.Tensor | None = None) -> torch.Tensor:
    """The risk r_i used to pick H, detached. losses: (B,). memorization: (B,) for risk='memorization'."""
    l = losses.detach()
    if cfg.risk == "loss_deviation":
        return (l - l.mean()).abs()
    if cfg.risk == "loss":
        return l
    if memorization is None:
        raise ValueError("risk 'memorization' needs the batch's memorization scores")
    return memorization.to(l.device, l.dtype)


def penalty(
    losses: torch.Tensor, cfg: DeMemConfig, memorization: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeMem penalty of one batch.

    Args:
        losses: (B,) per-sample losses with grad (CE on the method's adversarial examples).
        cfg: DeMem settings.
        memorization: (B,) scores of the batch's samples, for risk='memorization'.

    Returns:
        (scalar penalty including lambda, (B,) bool mask of H).
    """
    b = losses.shape[0]
    if b < 2:  # the unbiased variance of one value is undefined; penalise nothing
        return losses.sum() * 0.0, torch.zeros(b, dtype=torch.bool, device=losses.device)
    mask = high_risk_mask(risk_scores(losses, cfg, memorization), cfg.risk_threshold, cfg.threshold_mode)
    dev = losses - losses.mean()
    sq = (dev * dev * mask).sum() / (b - 1)
    return cfg.lam * sq, mask


def load_risk_table(path: str | Path, column: str = "memorization") -> tuple[np.ndarray, np.ndarray]:
    """Read a per-sample score table: returns (sample_ids int64 (n,), scores float32 (n,)).

    Accepts .npz (arrays `sample_id` and `column`), .csv and .parquet (columns `sample_id`, `column`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"risk file {path} does not exist (write it with `demem audit`)")
    if path.suffix == ".npz":
        with np.load(path) as z:
            if "sample_id" not in z or column not in z:
                raise ValueError(f"{path}: needs arrays 'sample_id' and {column!r}, has {sorted(z.files)}")
            ids, scores = z["sample_id"], z[column]
    elif path.suffix in (".csv", ".parquet"):
        import pandas as pd

        df = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
        if "sample_id" not in df or column not in df:
            raise ValueError(f"{path}: needs columns 'sample_id' and {column!r}, has {list(df.columns)}")
        ids, scores = df["sample_id"].to_numpy(), df[column].to_numpy()
    else:
        raise ValueError(f"{path}: risk file must be .npz, .csv or .parquet")
    ids = np.asarray(ids, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{path}: duplicate sample_id values")
    if not np.isfinite(scores).all():
        raise ValueError(f"{path}: non-finite {column} values")
    return ids, scores


def scores_for(sample_ids: np.ndarray, table: tuple[np.ndarray, np.ndarray], source: str = "risk file") -> np.ndarray:
    """Look up scores for `sample_ids` (n,) in a (ids, scores) table; every id must be present."""
    ids, scores = table
    order = np.argsort(ids)
    pos = np.searchsorted(ids[order], sample_ids)
    pos = np.clip(pos, 0, len(ids) - 1)
    found = ids[order][pos] == sample_ids
    if not found.all():
        missing = np.asarray(sample_ids)[~found]
        raise ValueError(
            f"{source} has no score for {len(missing)} of the pool's samples (e.g. sample_id {missing[:5].tolist()}); "
            "was it written for this pool?"
        )
    return scores[order][pos]
