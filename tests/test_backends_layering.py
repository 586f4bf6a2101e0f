"""The package layering is readable and has no cycle: export -> engines (build) -> runtime -> backends.

Imports are read with `ast` (every import statement, also the lazy ones inside functions), resolved to
sdrt's top-level packages, and checked for the rules docs/gpu.md and sdrt/backends/__init__.py state.
"""

from __future__ import annotations

import ast
from pathlib import Path

SDRT = Path(__file__).resolve().parent.parent / "sdrt"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SDRT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Absolute names of every sdrt module `path` imports, lazily or not."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            found.update(f"{target}.{a.name}" for a in node.names)  # `from . import cuda_rt`
    return {name for name in found if name == "sdrt" or name.startswith("sdrt.")}


def module_graph() -> dict[str, set[str]]:
    """sdrt module -> the sdrt modules it imports, lazily or not. `from . import x` imports the submodule x
    (its package is being imported already); `from .. import name` of a name that is no module imports the
    package whose __init__ defines it."""
    modules = {_module_name(p): p for p in SDRT.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        module_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name in modules)
            elif isinstance(node, ast.ImportFrom):
                parts = module_package.split(".")
                base = parts[: len(parts) - node.level + 1] if node.level else []
                target = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    deps.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in modules else target)
        graph[name] = {d for d in deps if d in modules} - {name}
    return graph


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def package_graph() -> dict[str, set[str]]:
    """sdrt top-level package or module -> the others it imports (self-imports dropped)."""
    graph: dict[str, set[str]] = {}
    for path in SDRT.rglob("*.py"):
        src = _top(_module_name(path))
        if not src:
            continue
        deps = {_top(n) for n in _imports(path)} - {src, ""}
        graph.setdefault(src, set()).update(deps)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        state[n] = 2
        stack.pop()
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_import_reader_sees_relative_and_lazy_imports() -> None:
    got = _imports(SDRT / "backends" / "gpu_engines.py")
    assert {"sdrt.backends.trt_engine", "sdrt.engines.store", "sdrt.manifest"} <= got


def test_build_and_run_packages_import_each_other_one_way_only() -> None:
    graph = package_graph()
    assert "runtime" not in graph["engines"] and "backends" not in graph["engines"], graph["engines"]
    assert "runtime" not in graph["backends"], graph["backends"]
    assert "backends" in graph["runtime"] and "engines" in graph["backends"]


def test_no_import_cycle_between_sdrt_packages() -> None:
    graph = package_graph()
    front = {"cli", "commands", "__main__"}  # the CLI imports everything and nothing imports it back
    inner = {n: deps - front for n, deps in graph.items() if n not in front}
    assert _cycle(inner) is None, f"import cycle: {' -> '.join(_cycle(inner) or [])}"


def test_no_import_cycle_between_sdrt_modules() -> None:
    """Also within a package: two modules importing each other (even lazily, inside a function) hide which
    one is the lower layer, e.g. export/loading.py <-> export/single_file.py or runtime/lora_sets.py <->
    runtime/pipeline.py before they were split."""
    graph = module_graph()
    assert "sdrt.runtime.cpu_auto" in graph["sdrt.runtime.pipeline"]  # `from . import cpu_auto` is seen
    assert "sdrt.runtime" not in graph["sdrt.runtime.pipeline"]
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_the_module_cycle_check_finds_a_lazy_two_module_circle() -> None:
    graph = module_graph()
    graph["sdrt.runtime.noise"] = graph["sdrt.runtime.noise"] | {"sdrt.runtime.pipeline"}
    cycle = _cycle(graph)
    assert cycle is not None and set(cycle) == {"sdrt.runtime.noise", "sdrt.runtime.pipeline"}, cycle


def test_the_serving_layer_imports_no_command_module() -> None:
    """Seed rules and the like belong to the runtime: the HTTP server must not reach up into the CLI."""
    graph = module_graph()
    up = sorted(f"{m} -> {d}" for m, deps in graph.items() if m.startswith(("sdrt.serving", "sdrt.runtime"))
                for d in deps if d.startswith(("sdrt.commands", "sdrt.cli")))
    assert not up, up
