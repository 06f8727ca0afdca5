"""How validation reports: every check appends messages (each naming its key path) to one list, and
`SpecError` carries them all."""

from __future__ import annotations

from typing import Any


class SpecError(ValueError):
    """A spec that cannot run. `problems` holds every problem found, each naming its key path."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


def unknown_keys(section: str, d: dict, allowed: tuple[str, ...], problems: list[str]) -> None:
    problems += [f"{section}.{k}: unknown key; allowed: {', '.join(allowed)}" for k in d if k not in allowed]


def mapping(section: str, value: Any, problems: list[str]) -> dict:
    """`value` when it is a mapping, {} for null; anything else is a problem (and {})."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{section}: must be a mapping or null")
        return {}
    return value
