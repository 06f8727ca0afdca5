"""The one-run bound itself: a lower bound on epsilon from r guesses of which v were right
(Steinke, Nasr & Jagielski, "Privacy Auditing with One (1) Training Run", NeurIPS 2023,
arXiv:2305.08846: Theorem 3.1 and the numerical procedure of Appendix D). Which guesses, on which
canaries, and why they fit our keep masks: `demem.privacy.epsilon`.

The theorem (restated in our words)
    m canaries are each put into the training set or left out by independent fair coins
    S in {-1, +1}^m (everything else fixed). Let A be (eps, delta)-DP with respect to changing ONE
    coordinate of S, and let an auditor who sees only A's output make r guesses of coins (abstaining
    on the other m - r); W is the number of correct guesses. Then, for every v,
        P[W >= v] <= f(v) + 2 m delta * max_{i = 1..m} (f(v - i) - f(v)) / i,
        f(k) := P[Binomial(r, q) >= k],   q := e^eps / (1 + e^eps).
    With delta = 0 this is the stochastic domination W <= Binomial(r, q): a guess made through an
    eps-DP mechanism is right with probability at most q, as for randomised response.

The bound (`one_run_epsilon`)
    The right-hand side is a p-value for the hypothesis "the recipe is (eps, delta)-DP". The (1 - beta)
    lower bound is the largest eps whose hypothesis is rejected at level beta, every smaller eps being
    rejected too (0.0 when even eps = 0 is not rejected):
    - delta = 0: the p-value is the binomial upper tail, increasing in eps, so the bound is the eps at
      which P[Binomial(r, q) >= v] = beta. The tail equals the regularised incomplete beta function
      I_q(v, r - v + 1), so q is its inverse (`scipy.special.betaincinv`; the one-sided
      Clopper-Pearson limit) and eps = logit(q).
    - delta > 0: the p-value of Theorem 3.1 above, computed as in the paper's Appendix D (the max over
      i stops at i = v: for i >= v, f(v - i) = 1 and (1 - f(v)) / i is largest at i = v). It is at least
      the delta = 0 tail, so the bound lies in [0, eps0] where eps0 is the delta = 0 bound. When
      c = 2 m delta <= 1 every term (1 - c/i) f(v) + (c/i) f(v - i) has non-negative weights on tails
      that grow with eps, so the p-value is non-decreasing and we solve p(eps) = beta (brentq). When
      c > 1 that monotonicity is not guaranteed (the weight 1 - c/i of f(v) is negative for i < c), so
      instead of bisecting blindly we certify intervals: on [a, b] every term is at most its value with
      f(v) taken at a (negative weight) or b (positive weight) and f(v - i) at b, and a line search
      over [0, eps0] with such steps returns an eps below which every hypothesis is provably rejected.
      This is conservative (never above the exact first crossing) and agrees with it to ~1e-10.
    The theorem needs m, the number of randomised canaries (guessed or not), for the delta term.

"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize, special, stats

from demem.checks import as_int, is_number

__all__ = ["check_level", "one_run_epsilon"]

_WINDOW_SDS = 12.0  # delta > 0: binomial mass more than this many sds below the mean is bounded, not summed
_SCAN_STEPS = 64  # delta > 0, 2 m delta > 1: the longest certified step is eps0 / _SCAN_STEPS
_LINE_TOL = 1e-10  # ... and the search stops when the step falls below this (times max(1, eps0))


# ---------------------------------------------------------------------------------------------------
# The bound for one (r, v)
# ---------------------------------------------------------------------------------------------------


def check_level(what: str, value: object, low: float, high: float, *, low_open: bool) -> float:
    if not is_number(value, finite=True):
        raise ValueError(f"one-run epsilon: {what} must be a finite number, got {value!r}")
    value = float(value)
    ok = (low < value if low_open else low <= value) and value < high
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high})"
        raise ValueError(f"one-run epsilon: {what} must be in {interval}, got {value}")
    return value


def _pure_bound(r: int, v: int, beta: float) -> float:
    """delta = 0: the eps with P[Binomial(r, q(eps)) >= v] = beta, or 0.0 when eps = 0 is not rejected."""
    if v == 0:
        return 0.0
    # P[Binomial(r, q) >= v] = I_q(v, r - v + 1) and 1 - I_q(a, b) = I_{1-q}(b, a): q and 1 - q each
    # from its own inverse, so logit(q) keeps its precision when q is close to 1.
    q = special.betaincinv(v, r - v + 1, beta)
    if not q > 0.5:
        return 0.0
    q_bar = special.betaincinv(r - v + 1, v, 1.0 - beta)
    return max(0.0, float(math.log(q) - math.log(q_bar)))


class _Tails:
    """f(v) and the windows w_i = f(v - i) - f(v) = P[v - i <= B < v] of B ~ Binomial(r, q(eps)).

    Only i <= `size` are summed (the window reaches 12 sds below the mean); for larger i the terms are
    bounded with w_i <= 1 - f(v), which keeps the p-value an upper bound whatever the window and, with
    the mass left out this small, does not set the maximum in practice."""

    def __init__(self, r: int, v: int, eps: float):
        q = float(special.expit(eps))
        self.f = float(stats.binom.sf(v - 1, r, q))
        low = max(0, math.floor(r * q - _WINDOW_SDS * math.sqrt(r * q * (1.0 - q))))
        self.size = max(1, min(v, v - low))
        pmf = stats.binom.pmf(np.arange(v - 1, v - 1 - self.size, -1), r, q)  # k = v-1, v-2, ...
        self.w = np.cumsum(pmf)  # w[i - 1] = P[v - i <= B <= v - 1]
        self.truncated = self.size < v


def _upper_p(c: float, at_a: _Tails, at_b: _Tails) -> float:
    """Upper bound on the Theorem 3.1 p-value over eps in [a, b] (its value at b when a == b or c <= 1).

    Term i is (1 - c/i) f(v) + (c/i) f(v - i) = f(v) + t w_i with t = c / i. Both tails grow with eps,
    so on [a, b] a term is at most f_b + t w_b (t <= 1) or f_a + t (f_b - f_a + w_b) (t > 1)."""

    def term(t: np.ndarray | float, w: np.ndarray | float) -> np.ndarray:
        return np.where(t <= 1.0, at_b.f + t * w, at_a.f + t * (at_b.f - at_a.f + w))

    t = c / np.arange(1, at_b.size + 1)
    best = float(term(t, at_b.w).max())
    if at_b.truncated:  # i > size: t <= c / (size + 1), w_i <= 1 - f(v); the term grows with both
        best = max(best, float(term(c / (at_b.size + 1), 1.0 - at_b.f)))
    return min(best, 1.0)


def _approx_bound(r: int, v: int, m: int, delta: float, beta: float, eps0: float) -> float:
    """delta > 0: the largest eps in [0, eps0] with every smaller eps rejected by Theorem 3.1."""
    c = 2.0 * m * delta
    cache: dict[float, _Tails] = {}

    def tails(eps: float) -> _Tails:
        if eps not in cache:
            cache[eps] = _Tails(r, v, eps)
        return cache[eps]

    def upper(a: float, b: float) -> float:
        return _upper_p(c, tails(a), tails(b))

    if upper(0.0, 0.0) > beta:
        return 0.0
    if upper(eps0, eps0) <= beta:  # the delta term vanished numerically
        return eps0
    if c <= 1.0:  # non-decreasing p-value (module docstring): solve p(eps) = beta
        return float(optimize.brentq(lambda e: upper(e, e) - beta, 0.0, eps0, xtol=1e-12, rtol=1e-12))
    # Certified line search: advance lo over [lo, lo + h] when the interval bound stays <= beta (then
    # every eps up to lo + h is rejected), otherwise halve h. Near the first crossing the looseness of
    # the interval bound is O(h), so lo converges to the crossing from below.
    lo, h0 = 0.0, eps0 / _SCAN_STEPS
    h, tol = h0, _LINE_TOL * max(1.0, eps0)
    while h > tol:
        b = min(lo + h, eps0)
        if upper(lo, b) <= beta:
            lo, h = b, min(2.0 * h, h0)
        else:
            h *= 0.5
    return lo


def one_run_epsilon(r: int, v: int, *, m: int | None = None, delta: float = 0.0, beta: float = 0.05) -> float:
    """The (1 - beta) lower bound on epsilon from r guesses with v correct (Steinke et al., Thm 3.1).

    Args:
        r: the number of guesses (abstentions excluded), >= 0.
        v: the number of correct guesses, 0 <= v <= r.
        m: the number of randomised canaries (guessed or not), >= r; required when delta > 0 (its
            2 m delta term), ignored otherwise.
        delta: the delta of the hypothesis being refuted, in [0, 1).
        beta: the significance level, in (0, 1); the bound fails with probability at most beta.

    Returns:
        The largest eps such that every (eps', delta)-DP hypothesis with eps' < eps is rejected at level
        beta; 0.0 when even eps = 0 is not rejected (or r = 0). With delta = 0 this is the eps at which
        P[Binomial(r, e^eps / (1 + e^eps)) >= v] = beta.

    Raises:
        ValueError: on non-integer or out-of-range r, v, m; beta or delta out of range; delta > 0
            without m.
    """
    r = as_int("one-run epsilon: r", r, 0)
    v = as_int("one-run epsilon: v", v, 0)
    if v > r:
        raise ValueError(f"one-run epsilon: need v <= r (correct guesses <= guesses), got v={v} > r={r}")
    if m is not None:
        m = as_int("one-run epsilon: m", m, 0)
        if r > m:
            raise ValueError(f"one-run epsilon: need r <= m (guesses <= canaries), got r={r} > m={m}")
    beta = check_level("beta", beta, 0.0, 1.0, low_open=True)
    delta = check_level("delta", delta, 0.0, 1.0, low_open=False)
    if delta > 0 and m is None:
        raise ValueError("one-run epsilon: delta > 0 needs m, the number of canaries (its 2 m delta term)")
    eps0 = _pure_bound(r, v, beta)
    if delta == 0 or eps0 == 0.0:
        return eps0
    return _approx_bound(r, v, m, delta, beta, eps0)
