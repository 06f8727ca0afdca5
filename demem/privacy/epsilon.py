"""Empirical lower bound on epsilon from ONE training run per model (Steinke, Nasr & Jagielski 2023).

Reference: T. Steinke, M. Nasr, M. Jagielski, "Privacy Auditing with One (1) Training Run",
NeurIPS 2023 (arXiv:2305.08846). We use their main theorem (Theorem 3.1) and the numerical
procedure of their Appendix D (a p-value for the (eps, delta) hypothesis, inverted in eps).

The bound for one (r, v) is `demem.privacy.one_run` (the theorem, restated there).

Swap canaries: why the theorem holds for our keep masks (`swap_canaries`)
    demem.membership gives each complementary pair of models (2k, 2k + 1) a uniformly random subset of
    exactly floor(N / 2) samples (model 2k) and its complement (model 2k + 1), independently across k.
    Within one model the membership bits are NOT independent (the subset size is fixed), so the samples
    themselves are not Steinke's canaries. Instead:
    - fix a pairing of the N samples into disjoint pairs that does not depend on the keep masks
      (`sample_pairing`: a seeded permutation cut into consecutive pairs, drawn from its own random
      stream, distinct from the keep masks' streams);
    - for one model, the pairs with exactly one member are the canaries. Swapping the two samples of any
      set of such pairs is a bijection on subsets that preserves the subset size, so under a uniform
      subset, conditioned on which pairs are split and on the state of every other pair, which sample
      of each split pair is the member is a fair coin, independently across split pairs. The theorem is
      applied conditionally on that pattern, with m = the number of canaries C; holding for every
      pattern, the guarantee holds unconditionally;
    - the two datasets of one coin differ by replacing one sample by the other. The bound is therefore
      a lower bound on the REPLACE-ONE (substitution) epsilon of the recipe. An add/remove
      (eps, delta)-DP guarantee (what a DP-SGD accountant reports) implies replace-one
      (2 eps, (1 + e^eps) delta)-DP (remove then add: group privacy of size 2), so compare the bound
      with 2 * the accountant's epsilon, at delta' = (1 + e^eps) delta. Results say
      ``"adjacency": "replace-one"``.
    Guess for a canary pair (i, j): the sample with the higher score is the member, with confidence
    |s_i - s_j|; equal scores are abstentions (never guesses). The auditor guesses on the r most
    confident canaries and abstains on the rest.

Which models, and pooling
    - Only ONE model of each complementary pair is used (the lowest model index present, normally the
      even one): its partner trained on the complement, so its canaries are the same pairs with the
      coins negated, not independent evidence.
    - Models of different pairs have independent halves, hence independent coins: together they form one
      mechanism (their joint training) that is (eps, delta)-DP in each coin, since a coin changes only
      its own model's dataset, by one replacement. Theorem 3.1 then applies to all their canaries at
      once, with m = the total number of canaries. We pool the canaries of all used models first and
      take the top fraction of the pooled set by confidence; the selection uses confidences only, never
      correctness, so it is a legitimate guessing rule.
    - Independent seeds (groups) pool the same way: sum r and v per fraction and the canaries
      (`pool_counts`), then `epsilon_from_counts`.
    - Choice of r: each of a fixed list of guess fractions (r = round(fraction * canaries), at least 1)
      is tested at level beta / len(fractions) and the best bound is reported: by the union
      (Bonferroni) bound, the reported maximum is still a (1 - beta) lower bound. r is fixed by the
      canary count, not by the number of non-tied canaries: when ties leave fewer than r guesses, the
      shortfall counts as wrong guesses (guessing at random instead could only add correct ones, so the
      bound stays valid).

Requirement on the scores
    The guesses must depend on the audited coins only through the trained models. A model's own
    signals (threshold attacks) satisfy this. An attack fitted on shadow models satisfies it when no
    shadow belongs to an audited pair: a shadow's keep row is a function of its pair's coins, and the
    partner's keep row is the target's coins negated. demem.privacy.audit already leaves each target's
    partner out; it still uses the OTHER targets as shadows, so when several targets of one group are
    pooled, each target's scores use the other audited pairs' keep rows. Theorem 3.1 does not cover
    that case (the dependence is second order, through the fitted Gaussians, but it can correlate the
    correctness of guesses across models); for a rigorous bound, audit one pair per group (shadows from
    the others) and pool over seeds, or use shadow-free scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from demem.checks import as_int, is_number
from demem.privacy.one_run import check_level, one_run_epsilon

__all__ = [
    "ADJACENCY",
    "DEFAULT_FRACTIONS",
    "METHOD",
    "empirical_epsilon",
    "epsilon_from_counts",
    "guess_counts",
    "one_run_epsilon",
    "pool_counts",
    "sample_pairing",
    "swap_canaries",
]

# Guess fractions: r = round(fraction * canaries). Each is tested at beta / len(fractions).
DEFAULT_FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)

ADJACENCY = "replace-one"
METHOD = (
    "Steinke-Nasr-Jagielski one-run audit (Thm 3.1) on swap canaries: higher score of a split pair is the "
    "member, top-fraction guesses, Bonferroni over fractions"
)

_PAIR_TAG = 0x70616972  # "pair": separates the pairing's random stream from other uses of the same seed


# ---------------------------------------------------------------------------------------------------
# Swap canaries
# ---------------------------------------------------------------------------------------------------


def sample_pairing(n: int, seed: int = 0) -> np.ndarray:
    """A fixed pairing of n samples into disjoint pairs, independent of any keep mask.

    Args:
        n: the pool size N (>= 0).
        seed: the pairing seed (>= 0). The stream is ``numpy.random.default_rng([seed, "pair"])``, distinct
            from the keep masks' streams (demem.membership), so the pairing is independent of them.

    Returns:
        (floor(n / 2), 2) int64: consecutive positions of a seeded permutation of range(n); with n odd,
        one sample is left unpaired.
    """
    n = as_int("pairing: n", n, 0)
    seed = as_int("pairing: seed", seed, 0)
    perm = np.random.default_rng([seed, _PAIR_TAG]).permutation(n)
    return perm[: 2 * (n // 2)].reshape(-1, 2).astype(np.int64)


def _check_pairing(pairing: object, n: int) -> np.ndarray:
    pairing = np.asarray(pairing)
    if pairing.ndim != 2 or pairing.shape[1] != 2 or not np.issubdtype(pairing.dtype, np.integer):
        raise ValueError(f"swap canaries: pairing must be a (P, 2) integer array, got {pairing.dtype} {pairing.shape}")
    flat = pairing.ravel()
    if flat.size and (flat.min() < 0 or flat.max() >= n):
        raise ValueError(f"swap canaries: pairing indices must be in [0, {n})")
    if np.unique(flat).size != flat.size:
        raise ValueError("swap canaries: pairs must be disjoint (every sample in at most one pair)")
    return pairing.astype(np.int64)


def swap_canaries(scores: np.ndarray, keep_row: np.ndarray, pairing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The canaries of one model and its guesses on them.

    A canary is a pair of `pairing` with exactly one member. The guess is that the sample with the
    higher score is the member; its confidence is the score difference.

    Args:
        scores: (N,) finite membership scores of the model, higher = more likely a member.
        keep_row: (N,) bool, the model's training-set membership.
        pairing: (P, 2) int, disjoint pairs of sample positions fixed independently of `keep_row`
            (`sample_pairing`).

    Returns:
        ``(confidence, correct)``, both (C,) over the canaries in pairing order: confidence = |s_i - s_j|
        (float64), correct = the member has the strictly higher score (bool). A tie has confidence 0 and
        correct False; `guess_counts` never guesses on it (an abstention).

    Raises:
        ValueError: on bad shapes or dtypes, non-finite scores, or a pairing that is not disjoint.
    """
    scores = np.asarray(scores)
    keep_row = np.asarray(keep_row)
    if scores.ndim != 1 or not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"swap canaries: scores must be a (N,) real array, got {scores.dtype} {scores.shape}")
    if keep_row.shape != scores.shape or keep_row.dtype != np.bool_:
        raise ValueError(
            f"swap canaries: keep_row must be a bool array of shape {scores.shape}, "
            f"got {keep_row.dtype} {keep_row.shape}"
        )
    if not np.isfinite(scores).all():
        raise ValueError("swap canaries: scores must be finite")
    pairing = _check_pairing(pairing, scores.size)
    first, second = pairing[:, 0], pairing[:, 1]
    canary = keep_row[first] != keep_row[second]
    member = np.where(keep_row[first], first, second)[canary]
    other = np.where(keep_row[first], second, first)[canary]
    diff = scores[member].astype(np.float64) - scores[other].astype(np.float64)
    return np.abs(diff), diff > 0


# ---------------------------------------------------------------------------------------------------
# Guess counts and bounds
# ---------------------------------------------------------------------------------------------------


def _check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    fractions = tuple(fractions)
    if not fractions:
        raise ValueError("one-run epsilon: need at least one guess fraction")
    for f in fractions:
        if not is_number(f, finite=True) or not 0.0 < float(f) <= 1.0:
            raise ValueError(f"one-run epsilon: guess fractions must be in (0, 1], got {f!r}")
    if len(set(map(float, fractions))) != len(fractions):
        raise ValueError(f"one-run epsilon: guess fractions must be distinct, got {fractions}")
    return tuple(float(f) for f in fractions)


def _guess_budget(fraction: float, canaries: int) -> int:
    """r for a guess fraction: round(fraction * canaries), at least 1 when there are canaries."""
    if canaries == 0:
        return 0
    return min(canaries, max(1, math.floor(fraction * canaries + 0.5)))


def guess_counts(
    confidence_list: Sequence[np.ndarray], correct_list: Sequence[np.ndarray], fractions: Sequence[float]
) -> list[dict[str, Any]]:
    """Guesses and correct guesses at each guess fraction, over the canaries of several models pooled.

    The canaries of all models are pooled first; for each fraction the auditor guesses on the
    r = round(fraction * C) most confident of the pooled C canaries (at least 1), ties in confidence
    broken by position (model order, then pairing order), never by correctness. Canaries with
    confidence 0 (tied scores) are never guessed: when fewer than r canaries have positive confidence,
    r still counts the full budget and the missing guesses count as wrong (see the module docstring).

    Args:
        confidence_list: per model, (C_m,) non-negative finite confidences (`swap_canaries`).
        correct_list: per model, (C_m,) bool, whether the guess on that canary is right.
        fractions: guess fractions in (0, 1], distinct.

    Returns:
        One ``{"fraction", "r", "v"}`` per fraction, in order (plain Python numbers).

    Raises:
        ValueError: on mismatched lengths, negative or non-finite confidences, non-bool correctness, or
            bad fractions.
    """
    fractions = _check_fractions(fractions)
    if len(confidence_list) != len(correct_list):
        raise ValueError(
            f"guess counts: {len(confidence_list)} confidence arrays but {len(correct_list)} correctness arrays"
        )
    confs, corrs = [], []
    for j, (conf, corr) in enumerate(zip(confidence_list, correct_list)):
        conf, corr = np.asarray(conf, dtype=np.float64), np.asarray(corr)
        if conf.ndim != 1 or corr.shape != conf.shape or corr.dtype != np.bool_:
            raise ValueError(f"guess counts: model {j} needs (C,) confidences and (C,) bool correctness")
        if not np.isfinite(conf).all() or (conf < 0).any():
            raise ValueError(f"guess counts: model {j} has negative or non-finite confidences")
        confs.append(conf)
        corrs.append(corr)
    conf = np.concatenate(confs) if confs else np.empty(0)
    corr = np.concatenate(corrs) if corrs else np.empty(0, dtype=bool)
    canaries = conf.size
    guessable = conf > 0
    order = np.argsort(-conf[guessable], kind="stable")
    hits = np.concatenate([[0], np.cumsum(corr[guessable][order])])  # hits[k] = correct among the top k
    out = []
    for f in fractions:
        r = _guess_budget(f, canaries)
        out.append({"fraction": f, "r": int(r), "v": int(hits[min(r, hits.size - 1)])})
    return out


def _check_counts(counts: Sequence[dict[str, Any]], canaries: int) -> list[dict[str, Any]]:
    if not counts:
        raise ValueError("one-run epsilon: need counts for at least one guess fraction")
    out = []
    for c in counts:
        if not isinstance(c, dict) or not {"fraction", "r", "v"} <= c.keys():
            raise ValueError(f"one-run epsilon: each count needs fraction, r and v, got {c!r}")
        r = as_int("one-run epsilon: r", c["r"], 0)
        v = as_int("one-run epsilon: v", c["v"], 0)
        if v > r or r > canaries:
            raise ValueError(f"one-run epsilon: need 0 <= v <= r <= canaries={canaries}, got r={r}, v={v}")
        out.append({"fraction": c["fraction"], "r": r, "v": v})
    for c, f in zip(out, _check_fractions([c["fraction"] for c in out])):
        c["fraction"] = f
    return out


def epsilon_from_counts(
    counts: Sequence[dict[str, Any]], *, delta: float = 0.0, beta: float = 0.05, canaries: int
) -> dict[str, Any]:
    """The Bonferroni-corrected best bound from per-fraction guess counts (possibly pooled over seeds).

    Args:
        counts: one ``{"fraction", "r", "v"}`` per guess fraction (`guess_counts`, `pool_counts`; other
            keys are ignored).
        delta: the delta of the refuted hypothesis, in [0, 1) (replace-one adjacency).
        beta: the overall significance level, in (0, 1); each fraction is tested at beta / len(counts).
        canaries: the total number of canaries the counts come from (m of Theorem 3.1), >= every r.

    Returns:
        A JSON-able dict: "epsilon" (the best bound), "fraction", "r", "v" (where it is attained; the
        first fraction on ties), "canaries", "counts" (per fraction: fraction, r, v, epsilon),
        "beta", "delta", "adjacency" ("replace-one": compare with 2 x an add/remove epsilon),
        "method".

    Raises:
        ValueError: on malformed counts, v > r, r > canaries, or beta / delta out of range.
    """
    canaries = as_int("one-run epsilon: canaries", canaries, 0)
    counts = _check_counts(counts, canaries)
    beta = check_level("beta", beta, 0.0, 1.0, low_open=True)
    delta = check_level("delta", delta, 0.0, 1.0, low_open=False)
    level = beta / len(counts)
    rows = [{**c, "epsilon": one_run_epsilon(c["r"], c["v"], m=canaries, delta=delta, beta=level)} for c in counts]
    best = max(range(len(rows)), key=lambda k: (rows[k]["epsilon"], -k))
    return {
        "epsilon": rows[best]["epsilon"],
        "fraction": rows[best]["fraction"],
        "r": rows[best]["r"],
        "v": rows[best]["v"],
        "canaries": canaries,
        "counts": rows,
        "beta": beta,
        "delta": delta,
        "adjacency": ADJACENCY,
        "method": METHOD,
    }


def pool_counts(count_lists: Sequence[Sequence[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Sum per-fraction counts of independent runs (e.g. seeds); the canaries add up the same way.

    Args:
        count_lists: per run, its ``counts`` (the same fractions in the same order).

    Returns:
        One ``{"fraction", "r", "v"}`` per fraction with r and v summed over the runs.

    Raises:
        ValueError: when there are no runs or their fractions differ.
    """
    if not count_lists:
        raise ValueError("pool counts: need at least one run")
    fractions = [c["fraction"] for c in count_lists[0]]
    pooled = [{"fraction": f, "r": 0, "v": 0} for f in fractions]
    for counts in count_lists:
        if [c["fraction"] for c in counts] != fractions:
            raise ValueError(f"pool counts: every run needs the fractions {fractions}")
        for p, c in zip(pooled, counts):
            p["r"] += as_int("pool counts: r", c["r"], 0)
            p["v"] += as_int("pool counts: v", c["v"], 0)
    return pooled


def _check_group(scores, keep, model_index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scores, keep, model_index = np.asarray(scores), np.asarray(keep), np.asarray(model_index)
    if scores.ndim != 2 or scores.shape[0] < 1 or scores.shape[1] < 2:
        raise ValueError(f"empirical epsilon: scores must be (T, N) with T >= 1, N >= 2, got {scores.shape}")
    if not (np.issubdtype(scores.dtype, np.floating) or np.issubdtype(scores.dtype, np.integer)):
        raise ValueError(f"empirical epsilon: scores must be real, got {scores.dtype}")
    if not np.isfinite(scores).all():
        raise ValueError("empirical epsilon: scores must be finite")
    if keep.shape != scores.shape or keep.dtype != np.bool_:
        raise ValueError(f"empirical epsilon: keep must be bool of shape {scores.shape}, got {keep.dtype} {keep.shape}")
    if model_index.shape != (scores.shape[0],) or not np.issubdtype(model_index.dtype, np.integer):
        raise ValueError(
            f"empirical epsilon: model_index must be ({scores.shape[0]},) integers, got {model_index.shape}"
        )
    if (model_index < 0).any():
        raise ValueError("empirical epsilon: model indices must be >= 0")
    return scores, keep, model_index.astype(np.int64)


def empirical_epsilon(
    scores: np.ndarray,
    keep: np.ndarray,
    model_index: np.ndarray,
    *,
    delta: float = 0.0,
    beta: float = 0.05,
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    pairing_seed: int = 0,
) -> dict[str, Any]:
    """One-run lower bound on the replace-one epsilon from the scores of target models of one group.

    Uses one model per complementary pair (pair = model_index // 2; the lowest index present, normally
    the even one; repeated rows of a model count once), the swap canaries of `sample_pairing(N,
    pairing_seed)`, guesses pooled over the used models (`guess_counts`) and the Bonferroni best over
    `fractions` (`epsilon_from_counts`). See the module docstring for the assumptions, in particular
    the requirement that the scores depend on the audited coins only through the trained models.

    Args:
        scores: (T, N) finite membership scores, row j of model ``model_index[j]``; higher = member.
        keep: (T, N) bool keep rows of those models (demem.membership: each row a uniformly random
            floor(N/2)-subset, or its complement for odd models).
        model_index: (T,) the models' indices in the group.
        delta: the delta of the refuted hypothesis, in [0, 1) (replace-one adjacency).
        beta: the significance level, in (0, 1).
        fractions: guess fractions in (0, 1].
        pairing_seed: the seed of the sample pairing (>= 0).

    Returns:
        `epsilon_from_counts`'s dict plus "models" (the model indices used, by pair) and "pairing_seed".

    Raises:
        ValueError: on bad shapes or dtypes, non-finite scores, negative model indices, keep rows whose
            size is not floor(N/2) (even model) or ceil(N/2) (odd model), or bad beta, delta, fractions.
    """
    scores, keep, model_index = _check_group(scores, keep, model_index)
    fractions = _check_fractions(fractions)
    n = scores.shape[1]
    sizes = keep.sum(axis=1)
    expected = np.where(model_index % 2 == 0, n // 2, n - n // 2)
    if (sizes != expected).any():
        j = int(np.flatnonzero(sizes != expected)[0])
        raise ValueError(
            f"empirical epsilon: keep row of model {int(model_index[j])} has {int(sizes[j])} members, expected "
            f"{int(expected[j])}; the swap-canary argument needs demem.membership's exact-half keep rows"
        )
    chosen: dict[int, int] = {}  # pair -> row
    for row in np.lexsort((np.arange(model_index.size), model_index)):  # by model index, then row
        chosen.setdefault(int(model_index[row]) // 2, int(row))
    rows = [chosen[p] for p in sorted(chosen)]
    pairing = sample_pairing(n, pairing_seed)
    guesses = [swap_canaries(scores[j], keep[j], pairing) for j in rows]
    counts = guess_counts([g[0] for g in guesses], [g[1] for g in guesses], fractions)
    canaries = int(sum(g[0].size for g in guesses))
    result = epsilon_from_counts(counts, delta=delta, beta=beta, canaries=canaries)
    result["models"] = [int(model_index[j]) for j in rows]
    result["pairing_seed"] = int(pairing_seed)
    return result
