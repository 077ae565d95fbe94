"""Dependencies between subpackages go one way (design.md); checked on the source, by AST."""

import ast
from pathlib import Path

import rfcache

ROOT = Path(rfcache.__file__).parent
# subpackage -> the subpackages of ours it may import ("errors", "devices", "stats" and "outputs" are shared
# leaf modules; "outputs" imports only "errors")
ALLOWED = {
    "schedules": {"errors", "outputs"},
    "models": {"errors", "outputs"},
    "runtime": {"errors", "devices", "models", "schedules", "outputs"},
    "calibrate": {"errors", "devices", "models", "schedules", "runtime", "stats", "outputs"},
    "export": {"errors", "devices", "models", "schedules", "runtime", "outputs"},
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
    for leaf in ("errors.py", "stats.py"):
        assert not any(m.startswith("rfcache.") for m in _imports(ROOT / leaf)), leaf


def test_outputs_imports_only_errors():
    ours = {m for m in _imports(ROOT / "outputs.py") if m.startswith("rfcache.")}
    assert ours <= {"rfcache.errors"}, ours
