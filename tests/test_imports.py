"""The package's import graph: no cycles inside lora_lab/, and its own imports at the top of files.

Read from the source with ``ast`` (nothing is imported), so a cycle fails here by name even
where Python would happen to resolve it. ``from lora_lab.x import y`` is an edge to
``lora_lab.x.y`` when that is a module, else to ``lora_lab.x``.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lora_lab"
# The CLI imports a subcommand's modules when that subcommand runs, so that `lora_lab --help`
# starts without loading torch and transformers.
LAZY_OK = {"lora_lab.cli"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path):
    """(target module, line, at module level) for each lora_lab import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    top = {id(n) for n in tree.body}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.split(".")[0] == "lora_lab"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "lora_lab":
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in MODULES else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            yield name, node.lineno, id(node) in top


def import_graph() -> dict[str, set[str]]:
    return {mod: {t for t, _, _ in _imports(path) if t in MODULES and t != mod} for mod, path in MODULES.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a list of modules (first == last), or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_graph_reads_the_package():
    graph = import_graph()
    assert len(graph) > 30
    assert "lora_lab.lora.layer" in graph["lora_lab.lora.io"]


def test_no_import_cycle_inside_lora_lab():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(set(MODULES) - LAZY_OK))
def test_lora_lab_imports_at_top_of_file(module):
    inside = [f"line {line}: {target}" for target, line, at_top in _imports(MODULES[module]) if not at_top]
    assert not inside, f"{module} imports lora_lab inside a function ({'; '.join(inside)}); move it to the top"
