"""The house's floors, drawn from its imports: every import (function-level ones included) goes
down, never up or sideways into a circle, and the prepared dataset is read in one place.

A *unit* is a subpackage or top-level module of ``blade`` (``blade.eval``, ``blade.sampling``), or
the ``baselines`` / ``analysis`` package. :data:`FLOORS` is the architecture, lowest floor first;
a unit may import units on lower floors only. A new module gets a floor here, on purpose.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import ROOT

FLOORS: list[set[str]] = [
    {"blade.errors", "blade.lazy", "blade.allocator"},
    {"blade.config", "blade.io", "blade.seeding", "blade.metrics", "blade.power", "blade.distributed"},
    {"blade.reference", "blade.data"},                    # PreparedData: the one reader of results/data
    {"blade.rewards", "blade.model", "blade.tracking"},   # model: codecs, the trie constraint, policies
    {"blade.sampling"},
    {"blade.eval"},                                       # lists, scoring, selection, reference rows
    {"blade.train"},
    {"blade.align"},
    {"blade.experiment"},
    {"blade.stages"},
    {"blade.cli"},
    {"baselines"},
    {"analysis"},
]
PACKAGES = ("blade", "baselines", "analysis")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


def _unit(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "blade" and len(parts) > 1 else parts[0]


def _imports(mods: dict[str, Path]) -> dict[str, set[tuple[str, int]]]:
    """module → {(imported project module, line)} for every import statement anywhere in it."""

    def resolve(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out = defaultdict(set)
    for module, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                target = resolve(name)
                if target and target != module and not module.startswith(target + "."):
                    out[module].add((target, node.lineno))
    return out


def test_every_unit_has_a_floor():
    placed = set().union(*FLOORS)
    units = {_unit(m) for m in _modules()} - {"blade"}
    assert units <= placed, f"give these units a floor in FLOORS: {sorted(units - placed)}"


def test_imports_only_go_down():
    floor = {unit: i for i, units in enumerate(FLOORS) for unit in units}
    mods = _modules()
    wrong = []
    for module, targets in _imports(mods).items():
        for target, line in targets:
            a, b = _unit(module), _unit(target)
            if a != b and a in floor and b in floor and floor[b] >= floor[a]:
                wrong.append(f"{mods[module].relative_to(ROOT)}:{line}: {module} imports {target} "
                             f"(floor {floor[a]} -> {floor[b]})")
    assert not wrong, "imports that climb or go sideways:\n" + "\n".join(sorted(wrong))


def test_no_import_circle_between_modules():
    graph = {m: {t for t, _ in ts} for m, ts in _imports(_modules()).items()}
    index, low, stack, on, circles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other: {circles}"


def test_the_prepared_dataset_is_loaded_by_the_stages_only():
    """One ``PreparedData.load`` per job, in the stage; everything below takes the loaded object."""
    calls = []
    for module, path in _modules().items():
        if not module.startswith("blade."):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.attr if isinstance(fn, ast.Attribute) else getattr(fn, "id", "")
                owner = getattr(fn.value, "id", "") if isinstance(fn, ast.Attribute) else ""
                if name == "load_prepared" or (owner == "PreparedData" and name == "load"):
                    calls.append(f"{module}:{node.lineno}")
    assert calls and all(c.split(":")[0] in ("blade.stages", "blade.data.prepared") for c in calls), calls
