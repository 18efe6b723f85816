"""No import cycle among the project's modules (`pipeline`, `targets`, `calibration`): module-level and lazy
(function-level) imports both count; imports only for type checkers (`if TYPE_CHECKING:`) do not."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "targets", "calibration")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _runtime_nodes(tree: ast.AST):
    """Every node except the bodies of ``if TYPE_CHECKING:`` blocks."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for child in node.orelse for n in [child, *_runtime_nodes(child)])
            continue
        yield node
        yield from _runtime_nodes(node)


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports when it runs (``from a import b`` counts a.b when that is a module)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {module for module in found if module in modules and module != name}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (its modules in order, the first repeated at the end), or None."""
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        path.pop()
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert len(graph) > 50 and graph["pipeline.rundir"], "the scan found the project's modules and their imports"
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " → ".join(cycle)


def test_the_scan_finds_a_lazy_cycle() -> None:
    """A cycle closed by an import inside a function is found (the kind config validators used to close)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    lazy = ast.parse("def f():\n    from pipeline.config import RunConfig\n")
    assert any(isinstance(node, ast.ImportFrom) for node in _runtime_nodes(lazy))
    typing_only = ast.parse("if TYPE_CHECKING:\n    from pipeline.rundir import RunDir\n")
    assert not any(isinstance(node, ast.ImportFrom) for node in _runtime_nodes(typing_only))


STAGE_ORDER = ("distill", "calibrate", "prune", "export", "qat", "bench", "report", "release")
ENTRY_POINTS = {"pipeline.cli", "pipeline.run"}  # they run the stages, so they import every one


def _stage_imports() -> dict[str, set[str]]:
    """Each project module's imports (type-checking-only ones included: a signature naming a later stage's type is
    data flowing backwards too) that are stage modules."""
    modules = _modules()
    stages = {f"pipeline.stages.{name}" for name in STAGE_ORDER}
    found = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported |= {node.module, *(f"{node.module}.{alias.name}" for alias in node.names)}
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names}
        found[name] = (imported & stages) - {name}
    return found


def test_every_stage_is_one_module_in_order() -> None:
    stage_dir = REPO / "pipeline" / "stages"
    assert sorted(p.stem for p in stage_dir.glob("*.py") if p.stem != "__init__") == sorted(STAGE_ORDER)


def test_no_module_imports_a_later_stage() -> None:
    """A stage imports only earlier stages (it reads what they recorded, or reuses their code); a module that is not
    a stage imports none, except the entry points that run them."""
    for name, stages in _stage_imports().items():
        if name in ENTRY_POINTS:
            continue
        if name.startswith("pipeline.stages."):
            position = STAGE_ORDER.index(name.rpartition(".")[2])
            later = {s for s in stages if STAGE_ORDER.index(s.rpartition(".")[2]) > position}
            assert not later, f"{name} imports a later stage: {sorted(later)}"
        else:
            assert not stages, f"{name} is not a stage but imports {sorted(stages)}"
