"""No import circle between product modules, not even a lazy one (docs/architecture.md#layers).

import-linter's layers contract sees only imports between packages; a circle inside one package (``runs.engine``
→ ``runs.tasks`` → ``runs.bulk`` → ``runs.engine``) passes it, and an import inside a function hides one from a
reader. This test builds the import graph with grimp (import-linter's own engine), which reads every import
statement, those inside functions included, over the packages of pyproject's ``[tool.importlinter]
root_packages``, and names every circle it finds with the line of each import that closes it.

Run as a script (``python tests/test_import_cycles.py``, with the tree to read on ``PYTHONPATH`` and as the
working directory) it prints the circles and exits 1 if there is one: the test of a deliberate circle runs it so
over a copy of the tree.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import shutil
import subprocess
import sys
import tomllib
from collections import deque
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent

# Imports allowed to close a circle, each with who removes it. None is left: the last one (urls → views →
# openapi → urls) went when the HTTP face moved into ``api/``. An entry whose import is gone fails
# ``test_every_allowed_import_still_exists`` until it is deleted.
ALLOWED: dict[tuple[str, str], str] = {}


def root_packages(root: Path) -> list[str]:
    """The product packages: the ones the import-linter contracts cover."""
    with (root / "pyproject.toml").open("rb") as f:
        return list(tomllib.load(f)["tool"]["importlinter"]["root_packages"])


def import_graph(packages: list[str]) -> grimp.ImportGraph:
    return grimp.build_graph(*packages, cache_dir=None)


def product_imports(graph: grimp.ImportGraph, packages: list[str]) -> dict[str, set[str]]:
    """Module → the product modules it imports (at module level or inside a function)."""
    return {
        module: {m for m in graph.find_modules_directly_imported_by(module) if m.split(".")[0] in packages}
        for module in graph.modules
        if module.split(".")[0] in packages
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle per strongly connected component of two or more modules (each listed once, first
    module repeated at the end). Every circle lies in one such component, so none is missed: fixing the one
    shown and running again shows the next.

    1. Tarjan's algorithm (iterative: the graph has hundreds of modules) finds the components;
    2. in each, a breadth-first search from its first module finds the shortest way back to it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, ()))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    found = []
    for component in components:
        members, first = set(component), component[0]
        came_from: dict[str, str] = {}
        queue, last = deque([first]), None
        while queue and last is None:
            node = queue.popleft()
            for child in sorted(edges[node] & members):
                if child == first:
                    last = node
                    break
                if child not in came_from:
                    came_from[child] = node
                    queue.append(child)
        path = [last]
        while path[-1] != first:
            path.append(came_from[path[-1]])  # type: ignore[index]
        found.append([*reversed(path), first])  # type: ignore[list-item]
    return found


def describe(graph: grimp.ImportGraph, circle: list[str]) -> str:
    """One line per import of the circle: ``a -> b   (line 12: from b import c)``."""
    lines = []
    for importer, imported in itertools.pairwise(circle):
        details = graph.get_import_details(importer=importer, imported=imported)
        where = ", ".join(f"line {d['line_number']}: {d['line_contents']}" for d in details)
        lines.append(f"  {importer} -> {imported}   ({where})")
    return "\n".join(lines)


def circles_in(root: Path) -> tuple[grimp.ImportGraph, dict[str, set[str]], list[list[str]]]:
    packages = root_packages(root)
    for package in packages:  # grimp reads the packages Python would import: they must be this tree's
        spec = importlib.util.find_spec(package)
        origin = Path(spec.origin).resolve() if spec and spec.origin else None
        assert origin == (root / package / "__init__.py").resolve(), f"{package} is read from {origin}, not {root}"
    graph = import_graph(packages)
    edges = product_imports(graph, packages)
    allowed = {importer: {imported} for importer, imported in ALLOWED}
    kept = {module: imported - allowed.get(module, set()) for module, imported in edges.items()}
    return graph, edges, cycles(kept)


def report(graph: grimp.ImportGraph, found: list[list[str]]) -> str:
    return "\n".join(f"import circle {' -> '.join(c)}:\n{describe(graph, c)}" for c in found)


def test_no_import_circle_between_product_modules():
    graph, _, found = circles_in(ROOT)
    assert not found, f"{len(found)} import circle(s) between product modules:\n" + report(graph, found)


def test_every_allowed_import_still_exists():
    """An exception for a circle that is gone must go too: it would let the circle come back unseen."""
    _, edges, _ = circles_in(ROOT)
    stale = {edge: why for edge, why in ALLOWED.items() if edge[1] not in edges.get(edge[0], set())}
    assert not stale, f"delete these entries of ALLOWED in {__file__}, their import is gone: {stale}"


def test_the_cycle_finder_names_every_circle_and_only_circles():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"f"}, "f": {"e"}, "g": {"a"}}
    assert cycles(edges) == [["a", "b", "c", "a"], ["e", "f", "e"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """A copy of the product packages and pyproject.toml, to break on purpose."""
    for package in root_packages(ROOT):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_a_lazy_import_closing_a_circle_fails_naming_it(tree: Path):
    # runs.engine imports runs.models at module level; an import inside a function closes the circle.
    with (tree / "runs" / "models.py").open("a") as f:
        f.write("\n\ndef _deliberate() -> None:\n    from runs import engine  # noqa: F401\n")
    env = {**os.environ, "PYTHONPATH": str(tree)}

    done = subprocess.run(
        [sys.executable, str(Path(__file__))], cwd=tree, env=env, capture_output=True, text=True, timeout=300
    )

    assert done.returncode == 1, done.stdout + done.stderr
    assert "import circle runs.engine -> runs.models -> runs.engine" in done.stdout
    assert "runs.models -> runs.engine   (line " in done.stdout


if __name__ == "__main__":
    here = Path(__file__).resolve().parent  # tests/ has packages named like the product's (buffer…): off the path
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    graph, _, found = circles_in(Path.cwd())
    print(report(graph, found) if found else "no import circle")
    sys.exit(1 if found else 0)
