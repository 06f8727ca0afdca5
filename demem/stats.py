"""What an interval means here: the training draw (seed) is the unit of replication.

A group's value of a metric is first averaged within each seed (over its models, or over its audited
targets), then the seed means are summarised with a Student t interval whose n is the number of
seeds. Models and targets of one draw share the pool, the keep masks and (for targets) the shadow
models: their spread is reported as a separate, labelled within-seed figure, never as the group's
interval. With one seed there is no group-level interval at all.

Groups of one experiment share the pool, the keep masks and the seeds, so a group and its baseline are
compared *paired*: the difference per (seed, unit) with matched units (the same model index, hence the
same keep row), averaged within each seed, then a t interval across seeds.

Pure NumPy / SciPy / pandas; no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import integrate, optimize, stats

NAN = float("nan")


def t_interval(values) -> dict[str, float]:
    """Mean, sample std and the 95% Student t interval of the finite values.

    Returns {"mean", "std", "lo", "hi", "half", "n"}; with n = 1 std / lo / hi / half are NaN (one
    value has no interval), with n = 0 everything but n is NaN.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    n = int(v.size)
    if n == 0:
        return {"mean": NAN, "std": NAN, "lo": NAN, "hi": NAN, "half": NAN, "n": 0}
    mean = float(v.mean())
    if n == 1:
        return {"mean": mean, "std": NAN, "lo": NAN, "hi": NAN, "half": NAN, "n": 1}
    std = float(v.std(ddof=1))
    half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n))
    return {"mean": mean, "std": std, "lo": mean - half, "hi": mean + half, "half": half, "n": n}


def welch_diff(a, b) -> dict[str, float]:
    """mean(a) - mean(b) with Welch's 95% interval, for two independent samples. Returns {"mean",
    "lo", "hi", "half", "df"}; the interval is NaN when either side has fewer than 2 values."""
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size == 0 or b.size == 0:
        return {"mean": NAN, "lo": NAN, "hi": NAN, "half": NAN, "df": NAN}
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return {"mean": diff, "lo": NAN, "hi": NAN, "half": NAN, "df": NAN}
    va, vb = a.var(ddof=1) / a.size, b.var(ddof=1) / b.size
    se = math.sqrt(va + vb)
    if se == 0:
        return {"mean": diff, "lo": diff, "hi": diff, "half": 0.0, "df": float(a.size + b.size - 2)}
    df = (va + vb) ** 2 / (va**2 / (a.size - 1) + vb**2 / (b.size - 1))
    half = float(stats.t.ppf(0.975, df) * se)
    return {"mean": diff, "lo": diff - half, "hi": diff + half, "half": half, "df": float(df)}


def _within_sd(frame: pd.DataFrame, value: str, seed: str) -> float:
    """The typical spread of the units of one seed: the root of the mean within-seed variance
    (ddof 1) over the seeds that have at least two units; NaN when none has."""
    var = frame.groupby(seed)[value].var(ddof=1).dropna()
    return float(math.sqrt(var.mean())) if len(var) else NAN


def seed_level(frame: pd.DataFrame, value: str, *, seed: str = "seed") -> dict[str, float]:
    """A group's value with its interval across seeds.

    Args:
        frame: one row per unit (model or audited target) with columns `seed` and `value`.

    Returns:
        t_interval of the per-seed means (n = number of seeds), plus "within_sd" (the spread of the
        units inside one seed) and "units" (finite values used).
    """
    f = frame[[seed, value]].copy()
    f[value] = pd.to_numeric(f[value], errors="coerce")
    f = f[np.isfinite(f[value].to_numpy(dtype=float))]
    out = t_interval(f.groupby(seed)[value].mean().to_numpy())
    out["within_sd"] = _within_sd(f, value, seed)
    out["units"] = int(len(f))
    return out


def paired_seed_delta(
    base: pd.DataFrame, group: pd.DataFrame, value: str, *, keys: Sequence[str] = ("seed", "unit")
) -> dict[str, float]:
    """base - group, paired: matched on `keys` (a seed and a unit of it, e.g. the model index or the
    audited target), averaged within each seed, t interval across seeds (n = seeds with a pair).

    Returns t_interval's fields plus "within_sd" (spread of the paired differences inside one seed)
    and "pairs" (matched units used). Units present on one side only are left out.
    """
    keys = list(keys)
    m = base[[*keys, value]].merge(group[[*keys, value]], on=keys, suffixes=("_base", "_group"))
    d = pd.DataFrame(
        {
            keys[0]: m[keys[0]],
            "d": pd.to_numeric(m[f"{value}_base"], errors="coerce")
            - pd.to_numeric(m[f"{value}_group"], errors="coerce"),
        }
    )
    d = d[np.isfinite(d["d"].to_numpy(dtype=float))]
    out = t_interval(d.groupby(keys[0])["d"].mean().to_numpy())
    out["within_sd"] = _within_sd(d, "d", keys[0])
    out["pairs"] = int(len(d))
    return out


def excludes_zero(ci: dict[str, float]) -> bool:
    """Whether an interval exists and lies entirely on one side of 0."""
    return bool(np.isfinite(ci["lo"]) and np.isfinite(ci["hi"]) and (ci["lo"] > 0 or ci["hi"] < 0))


def _chi_pdf(u: float, df: int) -> float:
    """Density of the chi distribution (the square root of a chi-square) with `df` degrees of freedom."""
    if u <= 0.0:  # 0 at the origin, but for df = 1 (the half-normal) it is sqrt(2 / pi) there
        return math.sqrt(2 / math.pi) if df == 1 and u == 0.0 else 0.0
    return math.exp((df - 1) * math.log(u) - u * u / 2 - (df / 2 - 1) * math.log(2.0) - math.lgamma(df / 2))


def _norm_cdf(x: float) -> float:
    # erfc keeps the far tails accurate, where 1 - erf would cancel to 0.
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def t_test_power(ncp: float, df: int, alpha: float = 0.05) -> float:
    """Power of the two-sided one-sample t test with `df` degrees of freedom at non-centrality `ncp`.

    T = (Z + ncp) / (U / sqrt(df)) with Z standard normal and U chi(df), so
    P(|T| > c) = E_U[Phi(ncp - c U / sqrt(df)) + Phi(-ncp - c U / sqrt(df))], c = t_{1 - alpha/2, df}.
    The expectation is integrated over U numerically. This is the non-central t distribution itself,
    but unlike scipy's `nct` (which returns NaN for non-centralities above about 7.5, at every df) it is
    defined for every df >= 1 and every ncp.

    Args:
        ncp: the non-centrality, true mean difference / (sd / sqrt(n)); its sign does not matter.
        df: degrees of freedom, n - 1; at least 1.
        alpha: two-sided significance level.

    Returns:
        The power in [alpha, 1]; NaN when df < 1 or ncp is not finite.
    """
    if df < 1 or not math.isfinite(ncp):
        return NAN
    crit = float(stats.t.ppf(1 - alpha / 2, df))
    scale = crit / math.sqrt(df)

    def integrand(u: float) -> float:
        # given the sample sd (U), the test rejects when Z lands beyond either critical value
        return (_norm_cdf(ncp - scale * u) + _norm_cdf(-ncp - scale * u)) * _chi_pdf(u, df)

    # U, the norm of a standard normal vector, has Gaussian tails about its mean (which lies within 1
    # of sqrt(df)): P(|U - E U| > t) <= 2 exp(-t^2 / 2). A window of sqrt(df) +- 13 so drops less than
    # 1e-30 of the mass, and keeps the narrow peak of a large df inside the range quad samples.
    mode = math.sqrt(df - 1)
    lo, hi = max(0.0, math.sqrt(df) - 13.0), math.sqrt(df) + 13.0
    points = [mode] if lo < mode < hi else None
    value, _ = integrate.quad(integrand, lo, hi, points=points, epsabs=1e-12, epsrel=1e-10, limit=200)
    return float(min(1.0, max(0.0, value)))


def paired_power(delta: float, sd: float, n: int, alpha: float = 0.05) -> float:
    """Power of the two-sided paired t test across n seeds to detect a true mean difference `delta`
    when the per-seed differences have standard deviation `sd` (non-central t, exact; `t_test_power`).

    NaN when the power cannot be stated: fewer than 2 seeds, or `sd` / `delta` not finite, or sd <= 0.
    """
    if n < 2 or not (np.isfinite(sd) and sd > 0 and np.isfinite(delta)):
        return NAN
    return t_test_power(abs(delta) * math.sqrt(n) / sd, n - 1, alpha)


def detectable_difference(sd: float, n: int, power: float = 0.8, alpha: float = 0.05) -> float:
    """The smallest true difference the paired test across n seeds detects with `power`.

    Returns:
        The difference, in the units of `sd`; NaN when it cannot be stated: fewer than 2 seeds, no
        finite positive spread, a `power` outside (alpha, 1), or no bracket of the root found.
    """
    if n < 2 or not (np.isfinite(sd) and sd > 0) or not (alpha < power < 1):
        return NAN

    def gap(d: float) -> float:
        return paired_power(d, sd, n, alpha) - power

    # gap(0) = alpha - power < 0 and the power rises to 1, so doubling finds a sign change; the cap
    # keeps a power function that never gets there (it would be a bug) from looping for ever.
    hi = sd
    for _ in range(64):
        g = gap(hi)
        if not math.isfinite(g):
            return NAN
        if g >= 0:
            return float(optimize.brentq(gap, 0.0, hi, xtol=1e-12 * sd))
        hi *= 2
    return NAN


def seeds_needed(delta: float, sd: float, power: float = 0.8, alpha: float = 0.05, max_n: int = 10_000) -> int | None:
    """The fewest seeds with which the paired test detects `delta` with `power`; None when there is
    no spread to plan from, or more than `max_n` would be needed."""
    if not (np.isfinite(sd) and sd > 0 and np.isfinite(delta) and delta != 0):
        return None
    n = 2
    while n <= max_n:
        if paired_power(delta, sd, n, alpha) >= power:
            return n
        n = n + 1 if n < 64 else int(n * 1.1)
    return None
