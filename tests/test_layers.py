"""The layers of the package hold: the import-linter contracts in pyproject.toml, and no import cycle at all.

The contracts (``[tool.importlinter]``) state who may import whom: ``kernels_numba`` imports nothing
from qviz; computation never imports the presentation layer (widgets, report, report sections,
the IPython extension, the CLI, plot); plot imports no computation; sibling packages form no cycle.
The cycle test below counts every import statement, function-level ones included.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
CONTRACTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]


def _lint_imports() -> str:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else (shutil.which("lint-imports") or "lint-imports")


@pytest.mark.parametrize("contract", [c["id"] for c in CONTRACTS])
def test_import_contract_is_kept(contract):
    out = subprocess.run([_lint_imports(), "--no-cache", "--contract", contract], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"import-linter contract {contract!r} is broken:\n{out.stdout[-4000:]}{out.stderr[-2000:]}"


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module in the import graph of qviz and kernels_numba."""
    import grimp

    graph = grimp.build_graph("qviz", "kernels_numba")
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(root: str) -> None:  # Tarjan's algorithm, iterative (the graph is deep)
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges.get(child, []))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        m = stack.pop()
                        on_stack.discard(m)
                        component.append(m)
                        if m == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))

    for module in sorted(edges):
        if module not in index:
            visit(module)
    return sorted(found)


def _describe(component: list[str]) -> str:
    import grimp

    graph = grimp.build_graph("qviz", "kernels_numba")
    lines = [" <-> ".join(component)]
    for a in component:
        for b in component:
            if a != b and graph.direct_import_exists(importer=a, imported=b):
                for d in graph.get_import_details(importer=a, imported=b):
                    lines.append(f"    {a}:{d['line_number']} {d['line_contents']}")
    return "\n".join(lines)


def test_the_module_graph_has_no_cycle():
    cycles = _cycles()
    assert not cycles, "import cycles (function-level imports count):\n" + "\n".join(_describe(c) for c in cycles)


def test_the_cycle_finder_finds_a_cycle(tmp_path, monkeypatch):
    """The finder above is not vacuous: two modules importing each other inside functions are a cycle."""
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from cyclepkg import b\n")
    (pkg / "b.py").write_text("def g():\n    from cyclepkg.a import f\n")
    (pkg / "c.py").write_text("from cyclepkg import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import grimp

    graph = grimp.build_graph("cyclepkg")
    monkeypatch.setattr(grimp, "build_graph", lambda *names, **kw: graph)
    assert _cycles() == [["cyclepkg.a", "cyclepkg.b"]]
