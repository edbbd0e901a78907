"""The package's shape: no import cycle (function-level imports included), and the axes import only torch."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parents[1] / "mlembed"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The mlembed modules ``path`` imports anywhere in the file (top level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # ``from mlembed.x import y`` imports mlembed.x, and mlembed.x.y when y is a module.
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        # An edge to the module named, not to the packages above it: a package's __init__ only re-exports
        # (test_package_inits_only_re_export), so passing through it adds no dependency of substance.
        found |= {name for name in names if name in known}
    return found


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    return {name: imports_of(path, known) - {name} for name, path in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return out


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_package():
    graph = import_graph()
    assert "mlembed.module" in graph and "mlembed.encoder" in graph["mlembed.module"]  # the graph is real
    assert cycles(graph) == []


def test_package_inits_only_re_export():
    for init in PACKAGE.rglob("__init__.py"):
        tree = ast.parse(init.read_text())
        body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
        if init.parent == PACKAGE:  # the root: ``__version__`` and the lazy ``mlembed.load``
            assert {type(n) for n in body} <= {ast.Assign, ast.FunctionDef}, init
            continue
        allowed = (ast.Import, ast.ImportFrom, ast.Assign)  # imports and ``__all__``
        assert all(isinstance(n, allowed) for n in body), init
        assert all(n.targets[0].id == "__all__" for n in body if isinstance(n, ast.Assign)), init


def test_the_axes_and_the_artifact_import_no_other_mlembed_module_at_load_time():
    """An axis is readable on its own: its file imports torch, and mlembed.artifact nothing of mlembed."""
    for name in ("axes/mel.py", "axes/mll.py", "axes/mrl.py", "artifact.py"):
        tree = ast.parse((PACKAGE / name).read_text())
        top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        modules = {n.module if isinstance(n, ast.ImportFrom) else n.names[0].name for n in top_level}
        assert not {m for m in modules if m and m.startswith("mlembed")}, name


EVALUATION_MAY_IMPORT = ("mlembed.evaluation", "mlembed.encoder", "mlembed.artifact", "mlembed.data.records")
"""What the evaluation core (tasks, metrics, the grid, results) may import of mlembed: the encoder it scores, the
artifact's point types, and the error type of a bad input line. Reporting, the grid callback, the control arm,
the mteb adapter and the demo's tasks live elsewhere and import it, never the reverse."""


def lightning_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] in ("lightning", "pytorch_lightning")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in (
                "lightning", "pytorch_lightning"):
            found.add(node.module)
    return found


def test_the_evaluation_core_imports_only_the_encoder_and_the_artifact_and_never_lightning():
    graph = import_graph()
    core = [name for name in graph if name.startswith("mlembed.evaluation")]
    assert {"mlembed.evaluation.grid", "mlembed.evaluation.suite", "mlembed.evaluation.result"} <= set(core)
    for name in core:
        outside = {m for m in graph[name] if not m.startswith(EVALUATION_MAY_IMPORT)}
        assert not outside, f"{name} imports {sorted(outside)}"
    # Nor anything it loads, at any depth (a function-level import inside a training-only path, such as the
    # callbacks an axis names for fit, is not loaded by scoring: tests/test_no_lightning.py runs a grid to check).
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(files)
    reached, todo = set(), list(core)
    while todo:
        name = todo.pop()
        if name not in reached:
            reached.add(name)
            todo += top_level_imports(files[name], known)
    assert not {name: lightning_imports(files[name]) for name in reached if lightning_imports(files[name])}


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The mlembed modules ``path`` imports when it is loaded (its module-level import statements)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in known}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {n for n in [node.module] + [f"{node.module}.{a.name}" for a in node.names] if n in known}
    return found


def test_the_encoder_reads_no_axis_settings_and_only_the_spec_gives_it_a_grid():
    tree = ast.parse((PACKAGE / "encoder.py").read_text())
    from_axes = {alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                 and (node.module or "").startswith("mlembed.axes") for alias in node.names}
    assert from_axes <= {"FactorizedEmbedding", "check_rank"}, from_axes  # model parts, not training settings
    # No module sets an encoder's grid from outside: it is the constructor's argument (EncoderSpec's grid).
    for path in PACKAGE.rglob("*.py"):
        if path.name == "encoder.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                assert not any(isinstance(t, ast.Attribute) and t.attr == "grid" for t in targets), path
    # ... and every encoder is made through the spec: no module but spec.py calls Encoder(...).
    for path in PACKAGE.rglob("*.py"):
        calls = [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)
                 and isinstance(n.func, ast.Name) and n.func.id == "Encoder"]
        assert not calls or path.name == "spec.py", path
