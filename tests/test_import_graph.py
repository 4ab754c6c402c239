"""The package's import graph has no cycles (module-level and function-level imports both count)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ((ROOT / "miga_fast", "miga_fast"), (ROOT / "kernels" / "miga_kernels", "miga_fast.kernels"))


def modules() -> dict[str, tuple[Path, bool]]:
    """Dotted name -> (file, is a package __init__), with kernels/miga_kernels/ under its installed name."""
    out = {}
    for base, package in SOURCES:
        for path in base.rglob("*.py"):
            parts = [p for p in path.relative_to(base).with_suffix("").parts if p != "__init__"]
            out[".".join([package, *parts])] = (path, path.name == "__init__.py")
    return out


def imported(name: str, is_package: bool, node: ast.Import | ast.ImportFrom, known) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names} & known
    if node.level:  # relative: from the module's package, one level up per extra dot
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        module = ".".join(base + ([node.module] if node.module else []))
    else:
        module = node.module or ""
    return ({module} | {f"{module}.{a.name}" for a in node.names}) & known


def import_cycles() -> list[list[str]]:
    """Cycles among modules; edges into package __init__ files (re-exports only) are left out."""
    mods = modules()
    packages = {n for n, (_, is_package) in mods.items() if is_package}
    known = set(mods) - packages
    graph = {}
    for name, (path, is_package) in mods.items():
        if not is_package:
            deps = set()
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import | ast.ImportFrom):
                    deps |= imported(name, is_package, node, known)
            graph[name] = deps - {name}
    state, stack, cycles = {}, [], []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for d in sorted(graph.get(n, ())):
            if state.get(d) == "open":
                cycles.append([*stack[stack.index(d):], d])
            elif d not in state:
                visit(d)
        state[n] = "done"
        stack.pop()

    for n in sorted(graph):
        if n not in state:
            visit(n)
    return cycles


def test_the_checker_sees_the_modules():
    mods = modules()
    assert "miga_fast.runtime.engine" in mods and "miga_fast.kernels.solver_update" in mods


def test_no_import_cycles():
    assert import_cycles() == []
