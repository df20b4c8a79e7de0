"""The house's shape: imports follow the data flow (the import-linter contracts in pyproject.toml), there is no
import cycle, the measures' leaves load no measure family, and training knows no measure."""
from __future__ import annotations

import shutil
import subprocess
import sys

import grimp
import pytest

from tests.conftest import ROOT


def _python(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(shutil.which("lint-imports") is None, reason="import-linter is not installed")
def test_the_import_contracts_are_kept():
    out = subprocess.run(["lint-imports"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:]
    assert "0 broken" in out.stdout


def test_no_import_cycles():
    """Every strongly connected component of the module import graph is a single module."""
    graph = grimp.build_graph("benchmark", "measures", exclude_type_checking_imports=True)
    modules = sorted(graph.modules)
    edges = {m: graph.find_modules_directly_imported_by(m) & set(modules) for m in modules}
    index, low, stack, on_stack, cycles, counter = {}, {}, [], set(), [], [0]

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    assert not cycles, cycles


def test_the_measures_leaves_load_no_measure_family():
    loaded = _python("import sys, measures.seeding, measures.history, measures.losses; "
                     "print(sorted(m for m in sys.modules if m.startswith('measures.')))")
    # the registry (``measures/__init__``; the Context is imported on first use, and with it torch)
    assert loaded == "['measures.history', 'measures.losses', 'measures.registry', 'measures.seeding']"


def test_training_loads_no_measure_family():
    loaded = _python("import sys, benchmark.training, benchmark.store, benchmark.zoo; "
                     "print(sorted(m for m in sys.modules if m.startswith('measures.')))")
    assert "measures.phases" not in loaded and "measures.norms" not in loaded, loaded


def test_the_registry_order_does_not_depend_on_import_order():
    direct = _python("import measures; print(measures.REGISTRY.names())")
    family_first = _python("import measures.sgd_regularization, measures.phases, measures; "
                           "print(measures.REGISTRY.names())")
    assert direct == family_first and direct.startswith("['params', 'cross_entropy'")
