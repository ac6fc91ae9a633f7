"""No import cycles between inferpack modules, nor between its sub-packages.

Every `import` statement counts, wherever it stands: at module level, inside a function (a lazy import
only defers a dependency, it does not remove it) and under `if TYPE_CHECKING:` (type-only coupling is
coupling too). Importing `a.b.c` also imports the packages `a` and `a.b`, so it counts as depending on
their `__init__` modules as well. Relative imports are not used in the package and are refused here.
The graph is read with `ast`: nothing is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import inferpack

PACKAGE_DIR = Path(inferpack.__file__).resolve().parent


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    root = package_dir.parent
    out: dict[str, Path] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported_names(path: Path) -> set[str]:
    """Every absolute module name an import statement of the file names (`from m import x` names `m` and,
    when it is a module, `m.x`)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import"
            if node.module:
                names.add(node.module)
                names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, with the packages above each of them."""
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps: set[str] = set()
        for imported in imported_names(path):
            parts = imported.split(".")
            deps.update(".".join(parts[:k]) for k in range(1, len(parts) + 1))
        # A module's own packages are imported before it: not a dependency of it.
        graph[name] = {d for d in deps if d in modules and d != name and not name.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (each holds at least one cycle)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The same edges between the package's direct children (`fleet`, `deploy`, `plan`...)."""

    def child(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else parts[0]

    out: dict[str, set[str]] = {}
    for module, deps in graph.items():
        out.setdefault(child(module), set()).update(child(d) for d in deps if child(d) != child(module))
    return out


def test_no_cycle_between_modules() -> None:
    assert cycles(import_graph(module_files())) == []


def test_no_cycle_between_sub_packages() -> None:
    assert cycles(package_graph(import_graph(module_files()))) == []


def test_the_check_sees_lazy_and_parent_package_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "p"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from p import b\n")
    (pkg / "a.py").write_text("def f():\n    import p.sub.x\n")
    (pkg / "b.py").write_text("from p import a\n")
    (pkg / "sub" / "x.py").write_text("")
    graph = import_graph(module_files(pkg))
    assert graph["p.a"] == {"p.sub", "p.sub.x"}  # a lazy import, with the package above it
    assert cycles(graph) == [["p.a", "p.b", "p.sub"]]
