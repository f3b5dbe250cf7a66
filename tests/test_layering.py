"""Layering of the three source trees (mlusim/, compiler/ imported as mlusim.compiler, torch_mlu/):
imports only point down, functions stay readable, modules keep out of each other's privates.

Why a test: a circle hidden by a function-level import, or a 300-line function, reads fine in a
diff and only hurts the next maintainer; the brief forbids both. The import graph is read with
`ast`, never by importing, so the check is cheap and sees function-level imports too.

Rules:
  (a) no import cycles (module-level and function-level imports; `from pkg import mod` is an
      edge to the module mod, `from mod import name` an edge to mod);
  (b) no function or method over MAX_LINES lines;
  (c) no module uses a name that starts with `_` in another in-tree module, imported or as an
      attribute of an imported module (aliasing a public name to a private one, `import x as _x`,
      is fine: the rule is about the name in its home module);
  (d) the compiler emits programs and never reaches into the engine or the CLI, and nothing below
      the CLI imports it.
"""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = {"mlusim": ROOT / "mlusim", "mlusim.compiler": ROOT / "compiler", "torch_mlu": ROOT / "torch_mlu"}
MAX_LINES = 100


def module_files(trees: dict[str, Path]) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under each tree (a package is its __init__)."""
    out = {}
    for prefix, top in trees.items():
        for path in sorted(top.rglob("*.py")):
            parts = list(path.relative_to(top).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix] + parts)] = path
    return out


@lru_cache(maxsize=None)
def parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), str(path))


def _known(name: str, mods) -> str | None:
    """The in-tree module `name` is, or lies in (an attribute of it); None outside the trees."""
    while name and name not in mods:
        name = name.rpartition(".")[0]
    return name or None


def _base(node: ast.ImportFrom, module: str, is_pkg: bool) -> str:
    """The absolute module a `from ... import` names, relative imports resolved."""
    if not node.level:
        return node.module or ""
    parts = module.split(".") if is_pkg else module.split(".")[:-1]
    parts = parts[:len(parts) - (node.level - 1)]
    return ".".join(parts + ([node.module] if node.module else []))


def imports(module: str, path: Path, mods) -> list[tuple[str, str | None]]:
    """Every in-tree import in a module, at any depth: (target module, imported name or None).
    `from pkg import mod` gives (pkg.mod, None): the name is the module itself."""
    out = []
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            out += [(t, None) for a in node.names if (t := _known(a.name, mods))]
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, module, path.name == "__init__.py")
            for a in node.names:
                if f"{base}.{a.name}" in mods:
                    out.append((f"{base}.{a.name}", None))
                elif (t := _known(base, mods)) is not None:
                    out.append((t, a.name))
    return out


def import_graph(mods: dict[str, Path]) -> dict[str, set[str]]:
    return {m: {t for t, _ in imports(m, p, mods) if t != m} for m, p in mods.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph.get(w, ())))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def long_functions(mods: dict[str, Path], limit: int = MAX_LINES) -> list[str]:
    out = []
    for m, path in mods.items():
        for node in ast.walk(parse(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    out.append(f"{m}.{node.name}: {lines} lines")
    return out


def _module_names(module: str, path: Path, mods) -> dict[str, str]:
    """Local names bound to in-tree modules by imports (`import a.b as m`, `from a import b`)."""
    out = {}
    for node in ast.walk(parse(path)):
        if isinstance(node, ast.Import):
            out.update({a.asname: t for a in node.names if a.asname and (t := _known(a.name, mods)) == a.name})
        elif isinstance(node, ast.ImportFrom):
            base = _base(node, module, path.name == "__init__.py")
            out.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in mods})
    return out


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_imports(mods: dict[str, Path]) -> list[str]:
    """Private names of one module used by another: imported (`from m import _x`, a private
    module), or reached through an imported module (`m._x`)."""
    out = [f"{m} imports {name} from {t}" for m, p in mods.items() for t, name in imports(m, p, mods)
           if t != m and _private(name or t.rpartition(".")[2])]
    for m, path in mods.items():
        bound = _module_names(m, path, mods)
        out += [f"{m} uses {bound[n.value.id]}.{n.attr}" for n in ast.walk(parse(path))
                if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in bound
                and bound[n.value.id] != m and _private(n.attr)]
    return out


MODS = module_files(TREES)
GRAPH = import_graph(MODS)


def test_the_trees_are_all_read():
    """The checks below see every tree (a wrong root would make them pass vacuously)."""
    assert {"mlusim.sim", "mlusim.compiler.kernels.conv", "torch_mlu.core.mlu_model"} <= set(MODS)
    assert "mlusim.compiler.codegen" in GRAPH["mlusim.compiler.kernels.conv"]


def test_no_import_cycles():
    found = cycles(GRAPH)
    assert not found, found


def test_no_function_over_100_lines():
    assert not long_functions(MODS), long_functions(MODS)


def test_no_imports_of_private_names():
    found = private_imports(MODS)
    assert not found, found


def test_compiler_points_down_to_isa_and_program():
    """The compiler turns graphs into programs: it may use the ISA, configs and errors, never the
    engine that runs them (mlusim.cores, mlusim.sim), the CLI, or the shim above it; and no module
    but the CLI's own reaches into the CLI."""
    engine_or_up = ("mlusim.cores", "mlusim.sim", "mlusim.commands", "mlusim.cli", "torch_mlu")
    bad = [f"{m} -> {t}" for m, deps in GRAPH.items() if m.startswith("mlusim.compiler")
           for t in deps if t.startswith(engine_or_up)]
    bad += [f"{m} -> {t}" for m, deps in GRAPH.items() if not m.startswith(("mlusim.commands", "mlusim.cli"))
            and m != "mlusim.__main__" for t in deps if t.startswith(("mlusim.commands", "mlusim.cli"))]
    assert not bad, bad


def _fake_package(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    return module_files({"pkg": tmp_path})


def test_checks_catch_a_hidden_cycle_a_long_function_and_a_private_import(tmp_path):
    """The checkers themselves, on a tiny package: a cycle closed only by a function-level,
    relative `from . import` must be found, and so must a 101-line function and a private name."""
    body = "".join(f"    x{i} = {i}\n" for i in range(99))
    mods = _fake_package(tmp_path, {
        "__init__.py": "",
        "a.py": "from pkg.sub import b\n\n_hidden = 1\n",
        "sub/__init__.py": "",
        "sub/b.py": f"def f():\n    from .. import a\n{body}",
        "sub/c.py": "from pkg.a import _hidden\nimport pkg.sub.b as _b\nfrom pkg import a\n\na._hidden, _b.f\n",
    })
    graph = import_graph(mods)
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    assert long_functions(mods) == ["pkg.sub.b.f: 101 lines"]
    assert private_imports(mods) == ["pkg.sub.c imports _hidden from pkg.a", "pkg.sub.c uses pkg.a._hidden"]
    assert cycles({"x": {"y"}, "y": {"z"}, "z": set()}) == []
