"""The package's shape: subpackages in layers, each importing only the layers below it.

Read from the source (AST), not by importing: no circle of imports, no import that
runs back up a layer, no private name imported from another module, no module over
500 lines and no function over 80.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "keras_ft"
# Bottom to top: a module may import its own layer and those before it.
LAYERS = ("utils", "config", "data", "models", "training", "runs", "task", "tools", "cli")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _imports(name: str, path: Path) -> list[tuple[str, str]]:
    """`(module imported, name imported)` for every keras_ft import in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found += [(base, alias.name) for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [(alias.name, "") for alias in node.names]
    return [(module, imported) for module, imported in found if module.startswith("keras_ft")]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = set()
        for module, imported in _imports(name, path):
            submodule = f"{module}.{imported}"
            targets.add(submodule if submodule in modules else module)
        graph[name] = targets - {name}
    return graph


def _layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def test_every_module_belongs_to_a_layer():
    loose = [m for m in _modules() if m != "keras_ft" and _layer(m) == len(LAYERS)]
    assert loose == []


def test_no_import_runs_back_up_a_layer():
    upward = [
        f"{module} -> {target}"
        for module, targets in _graph().items()
        if module != "keras_ft"
        for target in targets
        if _layer(target) > _layer(module)
    ]
    assert upward == []


def test_no_circle_of_imports():
    graph, circles = _graph(), []

    def visit(module, path):
        for target in sorted(graph.get(module, ())):
            if target in path:
                circles.append(" -> ".join([*path[path.index(target) :], target]))
            elif target not in seen:
                seen.add(target)
                visit(target, [*path, target])

    seen = set()
    for module in sorted(graph):
        if module not in seen:
            seen.add(module)
            visit(module, [module])
    assert circles == []


def test_no_private_name_is_imported_from_another_module():
    private = [
        f"{name}: {module}.{imported}"
        for name, path in _modules().items()
        for module, imported in _imports(name, path)
        if imported.startswith("_") and not imported.startswith("__")
    ]
    assert private == []


def test_no_module_over_500_lines_and_no_function_over_80():
    too_long = []
    for name, path in _modules().items():
        source = path.read_text()
        if len(source.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}.{node.name}: {lines} lines")
    assert too_long == []


def test_no_module_reaches_into_another_module_s_objects_private_attributes():
    """`obj._name` where keras_ft defines `_name` in another module (its class's private
    state or method): such a module uses a public name instead."""
    trees = {name: ast.parse(path.read_text()) for name, path in _modules().items()}
    defined: dict[str, set[str]] = {}
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                for item in ast.walk(node):
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
                        defined.setdefault(item.name, set()).add(name)
                    elif isinstance(item, ast.Attribute) and isinstance(item.ctx, ast.Store):
                        defined.setdefault(item.attr, set()).add(name)
    reaches = [
        f"{name}:{node.lineno} {ast.unparse(node)}"
        for name, tree in trees.items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
        and defined.get(node.attr, {name}) - {name}
    ]
    assert reaches == []
