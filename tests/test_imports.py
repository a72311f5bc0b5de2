"""The package's import graph has no circle (every import counted: top level, function
level and ``TYPE_CHECKING``), and the probe settings import without the probing runtime."""

import ast
import doctest
import pathlib

import jaxtune
from jaxtune import probe_settings


def _import_graph() -> dict[str, set[str]]:
    root = pathlib.Path(jaxtune.__file__).parent
    mods = {}
    for p in root.rglob("*.py"):
        parts = p.relative_to(root.parent).with_suffix("").parts
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            graph[m] |= {t for t in targets
                         if t in mods and t != m and not m.startswith(t + ".")}
    return graph


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_circle_finder_finds_a_circle():
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_circle():
    graph = _import_graph()
    assert "jaxtune.probe_settings" in graph["jaxtune.experiment"]
    assert _circles(graph) == []


def test_probe_settings_import_nothing_of_jaxtune():
    assert _import_graph()["jaxtune.probe_settings"] == set()
    assert jaxtune.Probes is probe_settings.Probes is jaxtune.probing.Probes
    assert doctest.testmod(probe_settings).attempted >= 2
