"""The shape of the code: imports point one way, modules stay small, the README maps every module."""
import re
from pathlib import Path

from conftest import tutorforge_imports

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "tutorforge"
MAX_LINES = 500  # CONVENTIONS.md: modules under about 500 lines


def import_graph() -> dict[str, set[str]]:
    """Module -> the tutorforge modules it imports, at module level or inside functions."""
    modules = {p.stem for p in SRC.glob("*.py")}
    return {m: ({name.split(".")[1] for name in tutorforge_imports(m)} & modules) - {m} for m in modules}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

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
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_not_even_through_imports_inside_functions():
    graph = import_graph()
    assert len(graph) > 40 and "rundir" in graph["export"]  # the walk sees the package
    assert cycles(graph) == []


def test_no_module_over_the_size_limit():
    sizes = {p.name: len(p.read_text().splitlines()) for p in SRC.glob("*.py")}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_readme_module_map_names_every_module_once():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Module map", 1)[1].split("```", 2)[1]
    listed = re.findall(r"^(\w+\.py)\s", block, re.MULTILINE)
    modules = sorted(p.name for p in SRC.glob("*.py") if not p.name.startswith("__"))
    assert sorted(listed) == modules
    assert len(listed) == len(set(listed))
