"""The package's layering, read from its source: no import cycle, no import up the order, short modules.

Order (README, docs/doc-ma.md): backends → core → text → models → losses → io → trainers →
conformance → app. A module may import its own layer and the layers below it, never one above, and
no chain of imports (module-level or lazy, inside a function) may lead back to where it started.
`_version` is a leaf every layer may read; the package root (`__init__`, `__main__`) sits on top.
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PKG = "vietnamese_ai_ref"
ORDER = ["_version", "backends", "core", "text", "models", "losses", "io", "trainers", "conformance", "app"]
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80


def _modules() -> dict:
    """Dotted module name -> source path, for the package and its mapped `backends/`."""
    out = {}
    for path in sorted((ROOT / PKG).rglob("*.py")):
        rel = path.relative_to(ROOT / PKG).with_suffix("")
        parts = [PKG] + [p for p in rel.parts if p != "__init__"]
        out[".".join(parts)] = path
    for path in sorted((ROOT / "backends").glob("*.py")):
        name = f"{PKG}.backends" + ("" if path.stem == "__init__" else "." + path.stem)
        out[name] = path
    return out


MODULES = _modules()


def _package_of(name: str, path: pathlib.Path) -> str:
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imports(name: str, path: pathlib.Path) -> set:
    """Every module of this package that `name` imports, anywhere in its body (lazy imports too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = _package_of(name, path).split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports the submodule when one exists by that name
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in node.names]
        else:
            continue
        for t in targets:
            if t == PKG or t.startswith(PKG + "."):
                while t not in MODULES and "." in t:
                    t = t.rpartition(".")[0]
                if t in MODULES and t != name:
                    found.add(t)
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str):
    parts = name.split(".")
    if len(parts) == 1 or parts[1] in ("__main__",):
        return None  # the package root: on top of everything
    if parts[1] == "data":
        return None
    return ORDER.index(parts[1])


def test_every_module_has_a_layer():
    for name in MODULES:
        parts = name.split(".")
        if len(parts) > 1 and parts[1] not in ("__main__", "data"):
            assert parts[1] in ORDER, f"{name} is in no layer of {ORDER}"


def test_no_import_goes_up_the_order():
    bad = []
    for name, targets in GRAPH.items():
        mine = _layer(name)
        if mine is None:
            continue
        for t in targets:
            theirs = _layer(t)
            if theirs is None or theirs > mine:
                bad.append(f"{name} -> {t}")
    assert not bad, "imports up the layer order:\n" + "\n".join(sorted(bad))


def _cycles(graph: dict) -> list:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle():
    # a package's __init__ re-exporting its own submodules is not a cycle of code: leave it out
    graph = {n: {t for t in ts if not (MODULES[t].name == "__init__.py" and n.startswith(t + "."))}
             for n, ts in GRAPH.items()}
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_planted_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_importing_the_package_imports_each_module_once():
    code = (
        "import sys, collections\n"
        "seen = collections.Counter()\n"
        "class Watch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        seen[name] += 1\n"
        "sys.meta_path.insert(0, Watch())\n"
        "import vietnamese_ai_ref\n"
        "twice = [n for n, c in seen.items() if c > 1 and n.startswith('vietnamese_ai_ref')]\n"
        "print(twice)\n"
        "assert not twice, twice\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr + r.stdout


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_header_and_size(name):
    path = MODULES[name]
    src = path.read_text(encoding="utf-8")
    tree = ast.parse(src)
    doc = ast.get_docstring(tree)
    assert doc, f"{name} has no header docstring"
    lines = src.count("\n")
    if lines > MAX_MODULE_LINES:
        assert "over 600 lines" in doc, f"{name} has {lines} lines and its header does not say why"
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES:
                fdoc = ast.get_docstring(node) or ""
                assert "over 80 lines" in fdoc, f"{name}.{node.name} has {n} lines and its docstring does not say why"


@pytest.mark.parametrize("name", sorted(n for n, p in MODULES.items() if p.name == "__init__.py"))
def test_subpackage_headers_say_what_and_what_not(name):
    doc = ast.get_docstring(ast.parse(MODULES[name].read_text(encoding="utf-8")))
    assert "What it is for" in doc and "What it is not" in doc, name


@pytest.mark.parametrize("name", sorted(n for n in MODULES if not n.startswith(PKG + ".backends")))
def test_only_the_backend_layer_touches_numpy_or_cupy(name):
    tree = ast.parse(MODULES[name].read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        mods = [a.name for a in node.names] if isinstance(node, ast.Import) else (
            [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for m in mods:
            assert m.split(".")[0] not in ("numpy", "cupy", "torch"), f"{name} imports {m}"
