"""The package's shape: no import circles, short functions, no public name shadowed by a module.

These are the layout rules of the project (see CONTRIBUTING.md), checked on the source itself:

- the import graph among ``src/cryograd`` modules (module-level and function-local imports alike,
  ``TYPE_CHECKING`` blocks excluded) has no cycle, and every module imports on its own in a fresh
  interpreter;
- no function is longer than 120 lines or takes more than 12 parameters;
- no public name of ``cryograd`` is also the name of one of its modules or subpackages (importing
  the submodule would rebind the attribute).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "cryograd"
MAX_LINES = 120
MAX_PARAMS = 12


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(name: str) -> str | None:
    """The most specific cryograd module that an imported dotted name denotes."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _imports(module: str, path: Path) -> set[str]:
    """cryograd modules imported by ``module`` anywhere but under ``if TYPE_CHECKING``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                found.add(f"{base}.{alias.name}")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    resolved = {_resolve(n) for n in found if n.startswith("cryograd")}
    return {r for r in resolved if r and r != module}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in graph:
        if v not in index:
            strong(v)
    return out


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_among_modules():
    # A package's __init__ may re-export its own submodules; a submodule importing its package
    # then is not a cycle of ours (Python imports the parent first), so parent edges are dropped.
    graph = {}
    for name, path in MODULES.items():
        deps = _imports(name, path)
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    cycles = _cycles(graph)
    assert not cycles, f"import cycles: {cycles}"


def test_every_module_imports_alone_in_a_fresh_interpreter():
    # Third-party packages are imported once; each cryograd module is then imported with no other
    # cryograd module loaded, so an import order that only works by accident shows up here.
    code = f"""
import importlib, sys, torch, numpy  # noqa: F401
failed = []
for name in {sorted(MODULES)!r}:
    for loaded in [m for m in sys.modules if m == "cryograd" or m.startswith("cryograd.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except ImportError as exc:
        if "triton" in str(exc).lower():
            continue
        failed.append(f"{{name}}: {{exc!r}}")
    except Exception as exc:
        failed.append(f"{{name}}: {{exc!r}}")
print("\\n".join(failed))
sys.exit(1 if failed else 0)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _functions():
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                yield name, node


def _n_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    a = fn.args
    names = [*a.posonlyargs, *a.args, *a.kwonlyargs]
    n = len(names) + (a.vararg is not None) + (a.kwarg is not None)
    if names and names[0].arg in ("self", "cls"):
        n -= 1
    return n


def test_no_function_over_120_lines():
    long = [
        f"{m}.{f.name} ({f.end_lineno - f.lineno + 1} lines)"
        for m, f in _functions()
        if f.end_lineno - f.lineno + 1 > MAX_LINES
    ]
    assert not long, "functions over 120 lines: " + ", ".join(long)


def test_no_function_over_12_parameters():
    wide = [f"{m}.{f.name} ({_n_params(f)})" for m, f in _functions() if _n_params(f) > MAX_PARAMS]
    assert not wide, "functions with more than 12 parameters: " + ", ".join(wide)


def test_public_names_do_not_shadow_modules():
    import cryograd

    for public in cryograd.__all__:
        assert f"cryograd.{public}" not in MODULES, (
            f"cryograd.{public} is both a public name and a module"
        )


def test_public_names_resolve_in_a_fresh_interpreter():
    # Touch every submodule first (as any user code that imports one would), then every public name:
    # a lazily served name rebound by a submodule import would come back as a module here.
    code = """
import importlib, pkgutil, types, cryograd
for info in pkgutil.walk_packages(cryograd.__path__, "cryograd."):
    try:
        importlib.import_module(info.name)
    except ImportError:
        pass
bad = [n for n in cryograd.__all__ if isinstance(getattr(cryograd, n), types.ModuleType)]
assert not bad, bad
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=SRC)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_typed_package_marker_is_shipped():
    assert (PACKAGE / "py.typed").exists()
    pyproject = (SRC.parent / "pyproject.toml").read_text()
    assert "py.typed" in pyproject
