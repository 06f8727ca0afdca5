"""The import graph of `demem/` and `orchestrator/`, read from the source (nothing is imported): it has
no cycle, counting every import, at module level and inside functions; and nothing under `demem/`
imports Ray or the orchestrator (the library runs without them)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("demem", "orchestrator")
FORBIDDEN_IN_DEMEM = ("ray", "orchestrator")


def _modules(root: Path) -> dict[str, Path]:
    """{dotted name: file} of every module of the packages (a package is its __init__.py)."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imported(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every dotted name the module imports: `import a.b` gives a.b; `from a import b` gives a.b when
    a.b is a module, else a; relative imports are resolved against the module's package."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                out.add(sub if sub in modules else source)
    return out


def _graph(root: Path = ROOT) -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(edges between the packages' modules, every imported name per module)."""
    modules = _modules(root)
    imports = {name: _imported(name, path, modules) for name, path in modules.items()}
    edges = {name: {m for m in names if m in modules and m != name} for name, names in imports.items()}
    return edges, imports


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    for start in sorted(edges):
        if start in state:
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif nxt not in state:
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges[nxt])))
    return None


def test_no_import_cycles():
    edges, _ = _graph()
    cycle = _cycle(edges)
    print(f"{len(edges)} modules, {sum(map(len, edges.values()))} edges: " + ("no cycles" if cycle is None else ""))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_library_imports_neither_ray_nor_the_orchestrator():
    _, imports = _graph()
    bad = {
        (module, name)
        for module, names in imports.items()
        if module.split(".")[0] == "demem"
        for name in names
        if name.split(".")[0] in FORBIDDEN_IN_DEMEM
    }
    assert not bad, "demem/ imports " + ", ".join(f"{name} ({module})" for module, name in sorted(bad))


def test_the_check_sees_imports_inside_functions_and_relative_ones(tmp_path):
    """The checker itself: a cycle closed only by an import inside a function, through a relative
    `from . import`, is found."""
    pkg = tmp_path / "demem"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from demem.b import f\n")
    (pkg / "b.py").write_text("def f():\n    from . import a\n    return a\n")
    (tmp_path / "orchestrator").mkdir()
    edges, _ = _graph(tmp_path)
    assert edges["demem.a"] == {"demem.b"} and edges["demem.b"] == {"demem.a"}
    assert _cycle(edges) in (["demem.a", "demem.b", "demem.a"], ["demem.b", "demem.a", "demem.b"])
