"""How validation reports: every check appends messages (each naming its key path) to one list, and
`SpecError` carries them all."""

from __future__ import annotations

from typing import Any

MAX_PROBLEM_CHARS = 1000  # a problem quoting a huge value is cut here
MAX_PROBLEMS = 100


def clip(text: str, limit: int = MAX_PROBLEM_CHARS) -> str:
    """`text`, cut to `limit` characters with a note of how much was left out."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text) - limit} more characters)"


class SpecError(ValueError):
    """A spec that cannot run. `problems` holds every problem found, each naming its key path; each
    is cut to MAX_PROBLEM_CHARS and at most MAX_PROBLEMS are kept, so a hostile spec cannot make the
    report itself huge."""

    def __init__(self, problems: list[str]) -> None:
        problems = [clip(p) for p in problems]
        if len(problems) > MAX_PROBLEMS:
            problems = problems[:MAX_PROBLEMS] + [f"... and {len(problems) - MAX_PROBLEMS} more problems"]
        self.problems = problems
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
