"""Where every registered name comes from: the four registries plugins extend, their problems, and
the origin of each name a run uses (`demem validate` prints both).

Plugins are installed Python packages that declare entry points in the groups ``demem.models``,
``demem.methods``, ``demem.datasets`` and ``demem.mia`` (docs/plugins.md); the registries read them
on first use (`demem.registry.Registry`). A spec only names registered names, so a spec from someone
else stays data: the code that runs is what the user installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from demem.registry import Registry


def registries() -> dict[str, Registry]:
    """{kind: registry} of the four kinds plugins register, keyed as a run config names them."""
    from demem.data import DATASETS
    from demem.methods import METHODS
    from demem.models import MODELS
    from demem.privacy.attacks import MIA

    return {"data.dataset": DATASETS, "train.arch": MODELS, "method.name": METHODS, "audit.attacks": MIA}


def problems() -> list[str]:
    """Every plugin entry that could not be registered (import error, clash, bad entry), one line each."""
    return [p for reg in registries().values() for p in reg.problems()]


def _get(run: dict[str, Any], path: str) -> Any:
    node: Any = run
    for key in path.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    return node


def origins(runs: Iterable[dict[str, Any]], attacks: Iterable[str] = ()) -> list[tuple[str, str, str]]:
    """(key, name, origin) for every dataset, architecture and method the run-config dicts `runs` use
    and every attack in `attacks`, in that order, each once."""
    regs = registries()
    seen: dict[tuple[str, str], str] = {}
    for run in runs:
        for key in ("data.dataset", "train.arch", "method.name"):
            name = _get(run, key)
            if isinstance(name, str) and (key, name) not in seen:
                seen[(key, name)] = regs[key].origin(name)
    for name in attacks:
        if ("audit.attacks", name) not in seen:
            seen[("audit.attacks", name)] = regs["audit.attacks"].origin(name)
    return [(key, name, where) for (key, name), where in seen.items()]


def origins_text(runs: Iterable[dict[str, Any]], attacks: Iterable[str] = ()) -> str:
    """The lines `demem validate` prints: where each name comes from, then any plugin problems."""
    rows = origins(runs, attacks)
    width = max((len(f"{k} {n}") for k, n, _ in rows), default=0)
    lines = ["names (where each comes from):"] + [f"  {f'{k} {n}':<{width}}  {w}" for k, n, w in rows]
    lines += [f"warning: {p}" for p in problems()]
    return "\n".join(lines)
