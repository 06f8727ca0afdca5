"""Pareto ranking of configurations scored on several objectives.

    front = pareto_fronts(values, maximize=[True, False])    # 0 = non-dominated, 1 = next front, ...
    crowd = crowding_distance(values, maximize=[True, False], front=front)
    order = pareto_order(values, maximize=[True, False])     # best first: front, then crowding

Row a *dominates* row b when a is at least as good on every objective and strictly better on one.
Identical rows do not dominate each other, so duplicates share a front. A row with NaN on any
objective cannot be compared: it gets front -1 and is ranked after every comparable row.

Within a front we order by crowding distance (Deb et al., NSGA-II): the sum over objectives of the
normalised gap between each point's neighbours on that objective; the extremes of a front get
infinity. It rewards spread along the front and, unlike hypervolume contribution, needs no
reference point, so the order does not move when someone picks a different nadir.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["crowding_distance", "dominates", "pareto_fronts", "pareto_order"]


def _oriented(values, maximize: Sequence[bool]) -> np.ndarray:
    """(n, k) floats where larger is better on every column."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2:
        raise ValueError(f"pareto: values must be (n, k), got shape {v.shape}")
    if len(maximize) != v.shape[1]:
        raise ValueError(f"pareto: {v.shape[1]} objectives but {len(maximize)} directions")
    sign = np.where(np.asarray(maximize, dtype=bool), 1.0, -1.0)
    return v * sign


def dominates(a, b, maximize: Sequence[bool]) -> bool:
    """Whether point a dominates point b (both length-k)."""
    va, vb = _oriented(np.asarray([a, b], dtype=np.float64), maximize)
    return bool(np.all(va >= vb) and np.any(va > vb))


def pareto_fronts(values, maximize: Sequence[bool]) -> np.ndarray:
    """Non-dominated sorting. Returns (n,) int: 0 for the first front, 1 for the next, ...;
    -1 for rows with a NaN objective."""
    v = _oriented(values, maximize)
    n = v.shape[0]
    front = np.full(n, -1, dtype=np.int64)
    ok = ~np.isnan(v).any(axis=1)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return front
    w = v[idx]
    # dom[i, j]: i dominates j. O(n^2 k) memory is fine for the hundreds of groups a sweep has.
    ge = (w[:, None, :] >= w[None, :, :]).all(axis=2)
    gt = (w[:, None, :] > w[None, :, :]).any(axis=2)
    dom = ge & gt
    remaining = np.ones(idx.size, dtype=bool)
    level = 0
    while remaining.any():
        dominated = (dom[remaining][:, remaining]).any(axis=0)
        current = np.flatnonzero(remaining)[~dominated]
        front[idx[current]] = level
        remaining[current] = False
        level += 1
    return front


def crowding_distance(values, maximize: Sequence[bool], front: np.ndarray | None = None) -> np.ndarray:
    """NSGA-II crowding distance of each row within its front (inf at a front's extremes and for a
    front of one or two points; NaN for rows with a NaN objective)."""
    v = _oriented(values, maximize)
    front = pareto_fronts(values, maximize) if front is None else np.asarray(front)
    out = np.full(v.shape[0], np.nan)
    for f in np.unique(front[front >= 0]):
        members = np.flatnonzero(front == f)
        dist = np.zeros(members.size)
        if members.size <= 2:
            out[members] = np.inf
            continue
        for j in range(v.shape[1]):
            col = v[members, j]
            order = np.argsort(col, kind="stable")
            span = col[order[-1]] - col[order[0]]
            dist[order[0]] = dist[order[-1]] = np.inf
            if span > 0:
                gaps = (col[order[2:]] - col[order[:-2]]) / span
                dist[order[1:-1]] += gaps
        out[members] = dist
    return out


def pareto_order(values, maximize: Sequence[bool]) -> np.ndarray:
    """Row indices best first: by front, then by crowding distance (larger first), then by row index;
    rows with a NaN objective last."""
    front = pareto_fronts(values, maximize)
    crowd = crowding_distance(values, maximize, front)
    n = front.size
    key_front = np.where(front < 0, np.iinfo(np.int64).max, front)
    key_crowd = np.where(np.isnan(crowd), 0.0, -np.nan_to_num(crowd, posinf=np.finfo(np.float64).max))
    return np.lexsort((np.arange(n), key_crowd, key_front))
