"""The package's import graph: no circles between files or between packages (lazy, function-level imports
count too), and the layering the design promises (docs/architecture.md: models and losses know nothing of
Lightning; the Lightning systems know nothing of ``amad compare``)."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2] / "amad"


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """The amad modules ``name`` imports anywhere in its file (``from pkg import sub`` counts as ``pkg.sub``)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("amad")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                base = ".".join([*package.split(".")[: len(package.split(".")) - node.level + 1], base]).strip(".")
            if not base.startswith("amad"):
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if sub in MODULES else base)
    return {m for m in out if m in MODULES and m != name}


def _runtime_nodes(tree: ast.AST):
    """Every node, except those under ``if TYPE_CHECKING:`` (annotations only, never imported at run time)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if (
                isinstance(child, ast.If)
                and getattr(child.test, "id", getattr(child.test, "attr", "")) == "TYPE_CHECKING"
            ):
                todo.extend(child.orelse)
                continue
            todo.append(child)


GRAPH = {name: _imports(name) for name in MODULES}


def _cycle(graph: dict[str, set[str]] | None = None) -> list[str] | None:
    """A circle of ``graph`` (default: the file graph) as a list of nodes, first = last; None without one."""
    graph = GRAPH if graph is None else graph
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = _cycle()
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def _reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in GRAPH[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("amad.lit", "amad.compare"),  # systems never train or look up a comparison's teacher
        ("amad.distill", "amad.lit"),  # the distillation task is a plain nn.Module
        ("amad.models", "amad.lit"),
        ("amad.losses", "amad.lit"),
        ("amad.losses", "amad.distill"),
        ("amad.models", "amad.distill"),
        ("amad.models", "amad.losses"),  # the capture types live in models; losses may import them
    ],
)
def test_layering(package, forbidden):
    for name in (m for m in MODULES if m == package or m.startswith(package + ".")):
        bad = sorted(m for m in _reachable(name) if m == forbidden or m.startswith(forbidden + "."))
        assert not bad, f"{name} imports {bad} (directly or through others)"


def test_the_graph_is_read():
    assert "amad.models.build" in GRAPH["amad.models.io"]
    assert "amad.compare.teacher" in GRAPH["amad.lightning_cli"]


# ----------------------------------------------------------------------------------- between packages


def _package(module: str) -> str:
    """``amad.<sub>``: a subpackage, or a top-level module (``amad.cli``, ``amad.config``...)."""
    return ".".join(module.split(".")[:2])


#: package -> (package, the file imports that make the edge), from the file graph
PACKAGE_EDGES: dict[str, dict[str, list[str]]] = {}
for _name, _deps in GRAPH.items():
    for _dep in _deps:
        if _package(_name) != _package(_dep):
            PACKAGE_EDGES.setdefault(_package(_name), {}).setdefault(_package(_dep), []).append(f"{_name} -> {_dep}")
PACKAGES = sorted({_package(m) for m in MODULES} - {"amad"})
PACKAGE_GRAPH = {p: set(PACKAGE_EDGES.get(p, {})) for p in PACKAGES}

#: The layers of docs/architecture.md, bottom first: a package imports only from lower layers.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("amad.paths", "amad.artefacts"),
    ("amad.models",),
    ("amad.scenes", "amad.losses"),
    ("amad.metrics", "amad.distill", "amad.config"),
    ("amad.data",),
    ("amad.lit", "amad.callbacks", "amad.export"),
    ("amad.compare",),
    ("amad.lightning_cli", "amad.bench"),
    ("amad.cli",),
)
RANK = {package: rank for rank, layer in enumerate(LAYERS) for package in layer}


def _explain(cycle: list[str]) -> str:
    steps = [f"{a} -> {b} ({'; '.join(sorted(PACKAGE_EDGES[a][b]))})" for a, b in itertools.pairwise(cycle)]
    return "package import circle:\n  " + "\n  ".join(steps)


def test_no_package_import_circles():
    cycle = _cycle(PACKAGE_GRAPH)
    assert cycle is None, _explain(cycle)


def test_every_package_has_a_layer():
    missing = [p for p in PACKAGES if p not in RANK]
    assert not missing, f"{missing}: add them to LAYERS here and to the layers of docs/architecture.md"


def test_packages_import_only_from_lower_layers():
    bad = [
        f"{a} (layer {RANK[a]}) -> {b} (layer {RANK[b]}): {sorted(PACKAGE_EDGES[a][b])}"
        for a in PACKAGES
        for b in sorted(PACKAGE_GRAPH[a])
        if a in RANK and b in RANK and RANK[b] >= RANK[a]
    ]
    assert not bad, "imports against the layers of docs/architecture.md:\n" + "\n".join(bad)


def test_the_package_check_sees_a_circle():
    graph = {**PACKAGE_GRAPH, "amad.scenes": PACKAGE_GRAPH["amad.scenes"] | {"amad.data"}}
    cycle = _cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and {"amad.data", "amad.scenes"} <= set(cycle)
    assert "amad.metrics" in PACKAGE_GRAPH["amad.data"] and "amad.scenes" in PACKAGE_GRAPH["amad.metrics"]
