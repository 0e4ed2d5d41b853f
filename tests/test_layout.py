"""The house rules, checked on the source: adapters, tasks and the core never import the harness, the harness
names no method or task family (it asks their interfaces), and no import circle between modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "peftbench"
NAMED = re.compile(r"[\"'](lora|dora|adalora|full|glue|squad)[\"']")


def _modules() -> dict[str, Path]:
    out = {}
    for path in PKG.rglob("*.py"):
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        out[".".join(parts)] = path
    return out


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("peftbench")}


def test_only_the_harness_imports_the_harness():
    for name, path in _modules().items():
        # `python -m peftbench` is the CLI's own entry point; the root package hands out the Python API
        # (`peftbench.run`, `peftbench.sweep`), loaded on first use.
        if not name.startswith("peftbench.harness") and name not in ("peftbench.__main__", "peftbench"):
            bad = [m for m in _imports(path) if m.startswith("peftbench.harness")]
            assert not bad, f"{name} imports {bad}"


def test_the_harness_names_no_method_or_task_family():
    for path in (PKG / "harness").rglob("*.py"):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            assert not NAMED.search(line), f"{path.relative_to(PKG)}:{n}: {line.strip()}"


def test_no_import_circle_at_module_level():
    mods = _modules()

    def top_level(path: Path) -> set[str]:
        deps = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("peftbench"):
                deps.add(node.module)
                deps |= {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("peftbench")}
        return {d for d in deps if d in mods}

    graph = {m: top_level(p) - {m} for m, p in mods.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            if state.get(d) == 1 and not m.startswith(d + "."):  # a package's __init__ is not a circle
                raise AssertionError("import circle: " + " -> ".join([*trail, m, d]))
            if d not in state:
                visit(d, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
