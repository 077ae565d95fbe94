"""Dependencies between subpackages go one way (design.md); checked on the source, by AST."""

import ast
from pathlib import Path

import rfcache

ROOT = Path(rfcache.__file__).parent
# subpackage -> the subpackages of ours it may import ("errors", "devices", "stats", "_version" and "outputs"
# are shared leaf modules; "outputs" imports only "errors")
ALLOWED = {
    "schedules": {"errors", "outputs"},
    "models": {"errors", "outputs"},
    "runtime": {"errors", "devices", "models", "schedules", "outputs"},
    "calibrate": {"errors", "devices", "models", "schedules", "runtime", "stats", "outputs", "_version"},
    "export": {"errors", "devices", "models", "schedules", "runtime", "outputs", "_version"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_dependencies_go_one_way():
    for sub, allowed in ALLOWED.items():
        for path in (ROOT / sub).rglob("*.py") if (ROOT / sub).is_dir() else []:
            ours = {m.split(".")[1] for m in _imports(path) if m.startswith("rfcache.")}
            assert ours <= allowed | {sub}, f"{path.relative_to(ROOT)} imports {sorted(ours - allowed - {sub})}"


def test_schedules_never_imports_torch():
    for path in (ROOT / "schedules").rglob("*.py"):
        assert not any(m.split(".")[0] == "torch" for m in _imports(path)), path


def test_leaf_modules_import_nothing_of_ours():
    for leaf in ("errors.py", "stats.py", "_version.py"):
        assert not any(m.startswith("rfcache.") for m in _imports(ROOT / leaf)), leaf


# -- the import graph of the whole package, imports inside functions included ----------------------

MAX_FUNCTION_LINES = 80


def _module_name(path: Path) -> str:
    parts = ["rfcache", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """module -> the modules of ours it imports anywhere in its text (``from a import b`` names the
    submodule ``a.b`` where there is one)."""
    modules = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
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


def test_no_import_cycle_between_modules():
    cycles = _cycles(_import_graph())
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_cycle_finder_sees_function_level_imports(tmp_path):
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_nothing_inside_imports_the_package_root():
    graph = _import_graph()
    back = sorted(m for m, targets in graph.items() if "rfcache" in targets)
    assert not back, f"{back} import the package root rfcache (its version is rfcache._version)"


def test_no_function_over_80_lines():
    long = []
    for path in ROOT.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over 80 lines: " + ", ".join(sorted(long))


def test_outputs_imports_only_errors():
    ours = {m for m in _imports(ROOT / "outputs.py") if m.startswith("rfcache.")}
    assert ours <= {"rfcache.errors"}, ours
