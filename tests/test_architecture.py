"""The arrows between gateway's modules: no module imports, directly or through others, a
module that imports it back.

The graph is read from the source with `ast`, so it sees every import statement: at module
level, inside functions and methods, and under `if TYPE_CHECKING:`. All of them count: an import
put inside a function only moves the cycle's failure from start-up to the first call, and a
type-only import still means one module is written in terms of the other. Importing
`gateway.a.b` also runs `gateway/a/__init__.py`, so it counts as an arrow to the package
`gateway.a` too (except from inside that package, which Python has already imported).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "gateway"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imported(module: str, path: Path, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The gateway modules one import statement makes Python import."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = package[:len(package) - node.level + 1]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module or ""
        # `from pkg import name` imports the submodule pkg.name when there is one
        names = [f"{source}.{a.name}" if f"{source}.{a.name}" in known else source for a in node.names]
    out = set()
    for name in names:
        while name and name not in known:  # `import gateway.x.Thing`-like spellings, or not ours
            name = name.rpartition(".")[0]
        while name:
            if name in known:  # gateway/drivers has no __init__.py: nothing runs for it
                out.add(name)
            name = name.rpartition(".")[0]   # its packages run first
    mine = module.split(".")
    ancestors = {".".join(mine[:i]) for i in range(1, len(mine) + (path.name == "__init__.py"))}
    return out - ancestors - {module}


_CHILD = """
import ast, json, sys
out = {}
for p in json.loads(sys.stdin.read()):
    tree = ast.parse(open(p, encoding="utf-8").read(), p)
    out[p] = [[type(n).__name__, getattr(n, "module", None), [a.name for a in n.names], getattr(n, "level", 0)]
              for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
print(json.dumps(out))
"""


def import_nodes(paths: list[Path]) -> dict[Path, list[ast.Import | ast.ImportFrom]]:
    """Every import statement of each file. Parsed in a child interpreter: in this one, after a
    test changed the recursion limit (hypothesis does), CPython 3.11 before 3.11.8 can fail
    `ast.parse` with "AST constructor recursion depth mismatch" (gh-106905)."""
    done = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps([str(p) for p in paths]),
                          capture_output=True, text=True, check=True)
    out = {}
    for p, nodes in json.loads(done.stdout).items():
        out[Path(p)] = [ast.Import(names=[ast.alias(name=n) for n in names]) if kind == "Import"
                        else ast.ImportFrom(module=module, names=[ast.alias(name=n) for n in names], level=level)
                        for kind, module, names, level in nodes]
    return out


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    files = module_files(root)
    known = set(files)
    nodes = import_nodes(list(files.values()))
    return {module: set().union(*(_imported(module, path, node, known) for node in nodes[path]))
            for module, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected group of modules (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, edges = work[-1]
            for w in edges:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on_stack:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    group = []
                    while True:
                        w = stack.pop()
                        on_stack.discard(w)
                        group.append(w)
                        if w == v:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
    return [_shortest_cycle(graph, set(g), g[0]) for g in groups]


def _shortest_cycle(graph: dict[str, set[str]], group: set[str], start: str) -> list[str]:
    came = {start: None}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & group):
                if w == start:
                    path = [v]
                    while came[path[-1]] is not None:
                        path.append(came[path[-1]])
                    return path[::-1] + [start]
                if w not in came:
                    came[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is in a cycle it cannot reach")


def test_gateway_has_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles in gateway/ (one per group of modules that import each other):\n" + \
        "\n".join(" -> ".join(c) for c in found)


def _reaches(graph: dict[str, set[str]], module: str) -> set[str]:
    seen: set[str] = set()
    todo = [module]
    while todo:
        for w in graph[todo.pop()] - seen:
            seen.add(w)
            todo.append(w)
    return seen


def test_the_site_file_and_its_models_know_no_driver():
    graph = import_graph()
    for module in ("gateway.config", "gateway.meter_models", "gateway.cards"):
        drivers = sorted(m for m in _reaches(graph, module) if m.startswith("gateway.drivers"))
        assert not drivers, f"{module} imports {drivers}"


def test_billing_does_not_import_rules():
    graph = import_graph()
    found = sorted((m, w) for m in graph if m.startswith("gateway.billing")
                   for w in graph[m] if w.startswith("gateway.rules"))
    assert not found


def test_retention_asks_billing_only_its_thinning_check():
    path = ROOT / "ledger" / "retention.py"
    names = {(node.module, a.name) for node in import_nodes([path])[path]
             if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("billing")
             for a in node.names}
    # the 15-minute slot is the tariff grid's public constant, which the thinning rule steps on
    assert names == {("billing.thinning", "thinning_check"), ("billing.tariffs", "SLOT_US")}


# ---- the test's own reading of imports, on a package written for it ---------------------------

def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "gateway"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_an_import_inside_a_function_is_an_arrow_too(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "a.py": "from .b import x\n",
                               "b.py": "def f():\n    from gateway.a import y\n"})
    assert cycles(import_graph(root)) == [["gateway.a", "gateway.b", "gateway.a"]]


def test_type_only_and_relative_imports_count(tmp_path):
    root = _package(tmp_path, {
        "__init__.py": "", "p/__init__.py": "", "p/q.py": "from ..r import thing\n",
        "r.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .p import q\n"})
    assert cycles(import_graph(root)) == [["gateway.p.q", "gateway.r", "gateway.p.q"]]


def test_importing_a_submodule_runs_its_package(tmp_path):
    root = _package(tmp_path, {"__init__.py": "", "p/__init__.py": "from .q import Q\n",
                               "p/q.py": "from ..r import R\nQ = 1\n",
                               "r.py": "import gateway.p.s\nR = 2\n", "p/s.py": ""})
    graph = import_graph(root)
    assert graph["gateway.r"] == {"gateway.p", "gateway.p.s"}
    assert graph["gateway.p.q"] == {"gateway.r"}  # its own package is not an arrow
    assert cycles(graph) == [["gateway.p", "gateway.p.q", "gateway.r", "gateway.p"]]


@pytest.mark.parametrize("text", ["import json\n", "from . import b\n", "from .b import f as g\n"])
def test_no_cycle_no_failure(tmp_path, text):
    root = _package(tmp_path, {"__init__.py": "", "a.py": text, "b.py": "import json\n"})
    assert cycles(import_graph(root)) == []
