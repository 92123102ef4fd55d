"""The package's import graph has no cycle, counting every import of a simclr_tf module.

A static walk (``ast``, nothing is imported): each module's imports of other simclr_tf modules,
at module level, under ``if TYPE_CHECKING:`` and inside functions alike. A function-level import
is fine when it only delays work (run.py imports TensorFlow after parsing flags), but one that
closes a cycle only hides it, so it counts as an edge. Importing ``a.b.c`` also runs the
``__init__`` of ``a.b`` (except the packages the importer is itself inside, already loading).
"""

from __future__ import annotations

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "simclr_tf"


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _targets(node: ast.Import | ast.ImportFrom, name: str, is_package: bool, known) -> set[str]:
    """The simclr_tf modules an import statement in module ``name`` loads."""
    if isinstance(node, ast.Import):
        found = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:
            here = name.split(".") if is_package else name.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join(here + ([node.module] if node.module else []))
        found = {f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names}
    loaded = set()
    for target in found:
        parts = target.split(".")
        for i in range(2, len(parts) + 1):  # the packages on the way run their __init__
            prefix = ".".join(parts[:i])
            if prefix in known and not (name + ".").startswith(prefix + "."):
                loaded.add(prefix)
    return loaded - {name}


def import_graph() -> dict[str, set[str]]:
    known = _modules()
    graph = {}
    for name, path in known.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        is_package = path.name == "__init__.py"
        graph[name] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                graph[name] |= _targets(node, name, is_package, known)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_walk_sees_imports_of_every_kind():
    graph = import_graph()
    assert "simclr_tf.checkpoints" in graph["simclr_tf.restore"]  # module level
    assert "simclr_tf.train" in graph["simclr_tf.cli"]  # inside a function
    assert "simclr_tf.data.augment" in graph["simclr_tf.data.pipeline"]  # a package
    build = graph["simclr_tf.models.build"]  # ... import study_ops: the package's __init__ runs
    assert {"simclr_tf.data.augment", "simclr_tf.data.augment.study_ops"} <= build
    assert "simclr_tf.data" not in graph["simclr_tf.data.pipeline"]  # already loading
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, (
        "Import cycle: " + " -> ".join(cycle) + ". Move the shared piece below both modules "
        "(see the layering in README.md); a function-level import does not break it."
    )
