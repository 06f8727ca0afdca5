"""How values read in the orchestrator's plain-text output: grid labels, plans, progress lines and
tables all format a setting the same way."""

from __future__ import annotations

import json
import math
from typing import Any


def fmt_value(v: Any, *, digits: int | None = None, missing: str = "null") -> str:
    """A setting as text: floats with `digits` significant digits (None: up to 6, "%g"), None as
    `missing`, booleans as YAML writes them, lists and mappings as compact JSON."""
    if v is None:
        return missing
    if isinstance(v, bool):
        return json.dumps(v)
    if isinstance(v, float):
        return f"{v:.{digits}g}" if digits else f"{v:g}"
    if isinstance(v, (int, str)):
        return str(v)
    return json.dumps(v, sort_keys=True, separators=(",", ":"))


def fmt_num(x: float) -> str:
    """A count of CPUs / GPUs: 1, 0.25 (no trailing zeros)."""
    return f"{x:g}"


def count(n: int, what: str) -> str:
    """'1 group', '3 groups'."""
    return f"{n} {what}{'' if n == 1 else 's'}"


def fmt_ci(mean: Any, lo: Any, hi: Any, n: Any = None, digits: int = 3, unit: str = "") -> str:
    """'0.612 ± 0.021 (n=3 seeds)'; no ± when there is no interval (one seed); '—' without a value."""
    if mean is None or not math.isfinite(mean):
        return "—"
    tail = f" (n={int(n)}{unit})" if n is not None else ""
    if lo is None or not math.isfinite(lo):
        return f"{mean:.{digits}f}{tail}"
    return f"{mean:.{digits}f} ± {(hi - lo) / 2:.{digits}f}{tail}"


def seeds_unit(n: Any) -> str:
    """' seed' / ' seeds': the unit an interval's n counts."""
    return " seed" if n == 1 else " seeds"
