"""Small value checks shared by the boundaries that take user input (pools, keep masks, metrics)."""

from __future__ import annotations

import math
import operator

import numpy as np


def as_int(what: str, value: object, minimum: int | None = None) -> int:
    """`value` as an int, or a ValueError naming `what`. Python and numpy integers pass; floats,
    strings and booleans-as-text do not (operator.index refuses them)."""
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{what} must be an integer, got {value!r}") from None
    if minimum is not None and value < minimum:
        raise ValueError(f"{what} must be >= {minimum}, got {value}")
    return value


def is_int(value: object) -> bool:
    """An integer (Python or numpy) that is not a bool: YAML's `true` is not a count."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def is_number(value: object, *, finite: bool = False) -> bool:
    """A real number (Python or numpy), not a bool; with `finite`, also not NaN or infinite."""
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        return False
    return not finite or math.isfinite(value)
