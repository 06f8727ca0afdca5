"""Per-sample membership signals of one model on a whole pool, over K augmented queries.

For every sample and query the model's logits give:
    phi       logit-scaled confidence log p_y - log(1 - p_y), the LiRA statistic (Carlini et al. 2022)
    loss      cross-entropy
    entropy   -sum_j p_j log p_j
    mentropy  modified entropy (Song & Mittal 2021): -(1 - p_y) log p_y - sum_{j != y} p_j log(1 - p_j)
    correct   argmax == y
All logs of (1 - p) are taken as logsumexp over the other logits minus logsumexp over all, so no
signal is ever log(0), however confident the model.

Queries are fixed, deterministic views of each image: the identity first, then a horizontal flip
(where the dataset allows flips), then small shifts (and their flips). Averaging a member test over
queries is what makes LiRA strong at low FPR on augmented training.

Adversarial queries (`adversarial_signals`): the same signals on a PGD example crafted against the
model itself, one per sample. Robust training keeps predictions stable in an eps-ball around each
training point, so members and non-members differ most in how the model behaves there (Song, Shokri
& Mittal, CCS 2019). Every sample's random start is drawn from its sample id alone, so each model of a
group (target or shadow, member or not) runs the identical procedure on it. They are recorded as
`adv_phi`, `adv_loss`, ... (N, 1); the audit's attacks read them by those names.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from demem.augment import shift
from demem.data import DatasetInfo, Pool
from demem.device import autotune, fast_path, to_float
from demem.evasion import AttackConfig, eval_mode, initial_delta, pgd

SIGNALS = ("phi", "loss", "entropy", "mentropy", "correct")
ADVERSARIAL = "adv_"  # prefix of the signals on adversarial queries: adv_phi, adv_loss, ...
_START_TAG = 0x616476  # "adv": the random stream of the adversarial queries' starts
_SHIFTS = ((1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1), (2, 0), (0, 2), (-2, 0), (0, -2))


def query_plan(info: DatasetInfo, k: int) -> list[tuple[int, int, bool]]:
    """The first `k` queries (dy, dx, flip) for a dataset: identity, flip, shifts (+ flips)."""
    plan = [(0, 0, False)] + ([(0, 0, True)] if info.flip else [])
    for dy, dx in _SHIFTS:
        plan.append((dy, dx, False))
        if info.flip:
            plan.append((dy, dx, True))
    if not 1 <= k <= len(plan):
        raise ValueError(f"queries must be in [1, {len(plan)}] for {info.name}, got {k}")
    return plan[:k]


def _log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - p_j) for every class j, exactly: logsumexp_{l != j} z_l - logsumexp_l z_l. (B, C) -> (B, C)."""
    c = logits.shape[1]
    others = (
        logits[:, None, :]
        .expand(-1, c, -1)
        .masked_fill(torch.eye(c, dtype=torch.bool, device=logits.device), float("-inf"))
    )
    return torch.logsumexp(others, dim=2) - torch.logsumexp(logits, dim=1, keepdim=True)


def logit_signals(logits: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """All membership signals from logits (B, C) and labels (B,); each (B,), float64 except correct."""
    z = logits.double()
    logp = F.log_softmax(z, dim=1)
    log1mp = _log_one_minus_softmax(z)
    p = logp.exp()
    onehot = F.one_hot(y, z.shape[1]).bool()
    logp_y = logp.gather(1, y[:, None]).squeeze(1)
    log1mp_y = log1mp.gather(1, y[:, None]).squeeze(1)
    p_y = logp_y.exp()
    return {
        "phi": logp_y - log1mp_y,
        "loss": -logp_y,
        "entropy": -(p * logp).sum(1),
        "mentropy": -(1 - p_y) * logp_y - (p * log1mp).masked_fill(onehot, 0.0).sum(1),
        "correct": z.argmax(1) == y,
    }


def logit_scaled_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """phi = log p_y - log(1 - p_y) = z_y - logsumexp_{j != y} z_j. (B, C), (B,) -> (B,) float32."""
    logits = logits.float()
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices of at most `size` covering range(n)."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def pool_signals(
    model: nn.Module,
    pool: Pool,
    *,
    device: torch.device,
    queries: int = 1,
    batch_size: int = 1000,
) -> dict[str, np.ndarray]:
    """Signals of `model` on every sample of `pool`, in pool order.

    Args:
        queries: K, the number of augmented views per sample (see `query_plan`).

    Returns:
        sample_id (N,) int64, label (N,) int64, and for each name in SIGNALS an (N, K) array
        (float32; bool for correct).
    """
    plan = query_plan(pool.info, queries)
    pad = max(max(abs(dy), abs(dx)) for dy, dx, _ in plan)
    out = {name: np.empty((pool.n, len(plan)), dtype=bool if name == "correct" else np.float32) for name in SIGNALS}
    # fp32 whatever the run trained at: phi = log p - log(1 - p) needs the precision (bf16 keeps 8
    # bits of mantissa, so confident samples' phi would collapse onto a few values)
    with eval_mode(model), torch.no_grad(), autotune(device), torch.autocast(device.type, enabled=False):
        for sl in chunks(pool.n, batch_size):
            x = to_float(pool.images[sl], device, model)
            y = pool.labels[sl].to(device)
            b = x.shape[0]
            for q, (dy, dx, flip) in enumerate(plan):
                view = x
                if (dy, dx, flip) != (0, 0, False):
                    view = shift(
                        x,
                        torch.full((b,), dy, device=device),
                        torch.full((b,), dx, device=device),
                        pad,
                        torch.full((b,), flip, device=device),
                    )
                logits = model(view)
                for name, value in logit_signals(logits.float(), y).items():
                    out[name][sl, q] = value.cpu().numpy()
    out["sample_id"] = pool.sample_ids.numpy().astype(np.int64)
    out["label"] = pool.labels.numpy().astype(np.int64)
    return out


def sample_starts(x: torch.Tensor, sample_ids: torch.Tensor, cfg: AttackConfig) -> torch.Tensor:
    """Each sample's starting perturbation for `cfg`, drawn from its sample id alone (on the CPU, so
    the same on every device): the same start for a sample whatever model, batch or order."""
    out = torch.empty(x.shape, dtype=torch.float32)
    for j, sid in enumerate(sample_ids.tolist()):
        seed = int(np.random.SeedSequence([int(sid), _START_TAG]).generate_state(1)[0])
        gen = torch.Generator().manual_seed(seed)
        out[j] = initial_delta(torch.zeros((1, *x.shape[1:])), cfg, gen)[0]
    return out.to(x.device)


def adversarial_signals(
    model: nn.Module,
    pool: Pool,
    attack: AttackConfig,
    *,
    device: torch.device,
    batch_size: int = 500,
    precision: str | None = None,
) -> dict[str, np.ndarray]:
    """The membership signals of `model` on a PGD example crafted against it for every pool sample.

    The attack runs as the evaluation's do (eval mode, at `precision`: the run's, None for "auto" on the
    device); the signals come from fp32 logits of the result, as the clean ones do.

    Returns:
        ``adv_<signal>`` for each of SIGNALS as an (N, 1) array (float32; bool for correct), in pool order.
    """
    out = {
        ADVERSARIAL + name: np.empty((pool.n, 1), dtype=bool if name == "correct" else np.float32) for name in SIGNALS
    }
    with eval_mode(model):
        for sl in chunks(pool.n, batch_size):
            x = to_float(pool.images[sl], device, model)
            y = pool.labels[sl].to(device)
            start = sample_starts(x, pool.sample_ids[sl], attack)
            with fast_path(device, precision):
                x_adv = pgd(model, x, y, attack, start=start)
            with torch.no_grad(), torch.autocast(device.type, enabled=False):
                logits = model(x_adv).float()
            for name, value in logit_signals(logits, y).items():
                out[ADVERSARIAL + name][sl, 0] = value.cpu().numpy()
    return out
