"""The package's shape, read from its source: layers that import only downward, no import circle, the engine
reached through its package face, and modules and functions small enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hllama"

#: Lowest first: a module may import its own layer and the ones before it, never one after.
LAYERS = ("foundation", "models", "aliases", "engine", "backends", "runtime", "server", "cli")

MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 60
MAX_TOP_LEVEL_MODULES = 12


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _bound_in(package: str) -> set[str]:
    """The names a package's ``__init__`` binds itself (so ``from package import name`` is not a submodule)."""
    tree = ast.parse(MODULES[package].read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {target.id for target in node.targets if isinstance(target, ast.Name)}
    return names


def _imports(module: str) -> set[str]:
    """The package's modules ``module`` imports (typing-only imports too)."""
    path = MODULES[module]
    here = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                is_module = submodule in MODULES and (base not in MODULES or alias.name not in _bound_in(base))
                found.add(submodule if is_module else base)
    return {name for name in found if name in MODULES and name not in (module, "hllama")}


GRAPH = {module: _imports(module) for module in MODULES}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "foundation"


def test_imports_point_down_the_layers():
    upward = [(module, target) for module, targets in GRAPH.items() for target in targets
              if module != "hllama.__main__" and LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))]
    assert upward == []


def test_there_is_no_import_circle():
    seen: dict[str, int] = {}  # 1: on the path being walked, 2: done
    circles = []

    def walk(module: str, path: list[str]) -> None:
        seen[module] = 1
        for target in sorted(GRAPH[module]):
            if seen.get(target) == 1:
                circles.append([*path[path.index(target):], target])
            elif target not in seen:
                walk(target, [*path, target])
        seen[module] = 2

    for module in sorted(MODULES):
        if module not in seen:
            walk(module, [module])
    assert circles == []


def test_the_engine_is_reached_through_its_package_face():
    reaching_in = [(module, target) for module, targets in GRAPH.items() for target in targets
                   if target.startswith("hllama.engine.") and not module.startswith("hllama.engine")]
    assert reaching_in == []


def test_the_top_level_holds_the_foundation_only():
    top = sorted(module for module in MODULES if module.count(".") == 1 and _layer(module) == "foundation"
                 and module != "hllama.__main__")
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top
    packages = {module.split(".")[1] for module in MODULES if module.count(".") == 2}
    assert packages == set(LAYERS[1:])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_and_functions_stay_small(module: str):
    text = MODULES[module].read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(text))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert long == []


def test_the_check_sees_an_upward_import():
    """The layer test reads what it should: the runtime imports the backends, the server the runtime."""
    assert "hllama.backends" in GRAPH["hllama.runtime.service"]
    assert "hllama.runtime.service" in GRAPH["hllama.server.streaming"]
    assert _layer("hllama.units") == "foundation" and _layer("hllama.engine") == "engine"
