"""Architecture tests: the layering of the package, read from its source.

Layers (bottom to top)::

    base     metagen_ppl.errors, metagen_ppl.io, metagen_ppl.util
    engine   metagen_ppl.engine.*          (never models, apps, domain)
    domain   metagen_ppl.domain.*          (never engine, models, apps)
    models   metagen_ppl.models.*          (the repository's models/ folder; never apps)
    apps     metagen_ppl.apps.*            (anything)

The import graph is built statically with :mod:`ast` (nothing is imported), so a
broken layer is reported even where the import would happen to work.
"""

from __future__ import annotations

import ast
import io
import json
import os
import re
import subprocess
import sys
import textwrap
import tokenize
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = "metagen_ppl"
#: source folder -> dotted prefix of the modules in it
SOURCE_DIRS = {ROOT / "metagen_ppl": "metagen_ppl", ROOT / "models": "metagen_ppl.models"}
BASE = frozenset({"metagen_ppl.errors", "metagen_ppl.io", "metagen_ppl.util"})


# --------------------------------------------------------------------------- the project's modules
def _module_files() -> dict:
    """``{dotted module name: (path, is_package)}`` of every ``.py`` file under metagen_ppl/ and models/."""
    out = {}
    for base, prefix in SOURCE_DIRS.items():
        for path in sorted(base.rglob("*.py")):
            rel = path.relative_to(base)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            parts = list(rel.with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            if is_pkg:
                parts = parts[:-1]
            name = ".".join([prefix, *parts])
            assert name not in out, f"two files map to module {name}: {out[name][0]} and {path}"
            out[name] = (path, is_pkg)
    return out


MODULES = _module_files()
TREES = {name: ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
         for name, (path, _) in MODULES.items()}


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _resolve_relative(module: str, is_pkg: bool, level: int, target: str | None) -> str:
    """Absolute name of ``from <level dots><target> import ...`` inside ``module``."""
    package = module if is_pkg else module.rpartition(".")[0]
    parts = package.split(".")
    if level - 1 > len(parts) - 1:
        raise AssertionError(f"relative import beyond the top-level package in {module}")
    base = parts[: len(parts) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def _project_target(name: str) -> str | None:
    """The project module ``name`` refers to: itself, else its longest prefix that is one (else None)."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        cand = ".".join(parts[:n])
        if cand in MODULES:
            return cand
    return None


def _imports(module: str):
    """Yield ``(node, [absolute imported names])`` for every import statement of ``module`` (any depth).

    ``from pkg import name`` gives ``pkg.name`` where that is a project module, else ``pkg``.
    """
    _, is_pkg = MODULES[module]
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            yield node, [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = (_resolve_relative(module, is_pkg, node.level, node.module) if node.level
                    else node.module)
            names = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.append(sub if alias.name != "*" and sub in MODULES else base)
            yield node, names


#: ``{module: [(import node, [absolute imported names])]}``
IMPORTS = {module: list(_imports(module)) for module in MODULES}


def _import_graph() -> dict:
    """``{module: {imported project module: first line}}`` (edges to project modules only)."""
    graph = {}
    for module in MODULES:
        edges = {}
        for node, names in IMPORTS[module]:
            for name in names:
                target = _project_target(name)
                if target is not None and target != module:
                    edges.setdefault(target, node.lineno)
        graph[module] = edges
    return graph


GRAPH = _import_graph()


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def _fmt(edges) -> str:
    return "\n".join(f"  {a} -> {b}  ({_rel(MODULES[a][0])}:{GRAPH[a][b]})" for a, b in sorted(edges))


# --------------------------------------------------------------------------- a. the graph itself
def test_import_graph_is_built_from_the_whole_source():
    """Sanity of the parser: it sees every layer and the edges the design relies on."""
    for pkg in ("metagen_ppl.engine", "metagen_ppl.domain", "metagen_ppl.apps", "metagen_ppl.apps.cli",
                "metagen_ppl.models", "metagen_ppl.models.detector", "metagen_ppl.models.projective",
                "metagen_ppl.models.categorical", "metagen_ppl.models.baseline", *BASE):
        assert pkg in MODULES, f"{pkg} not found under {list(map(_rel, SOURCE_DIRS))}"
    assert "metagen_ppl.engine.enumeration" in GRAPH["metagen_ppl.engine.em"]
    assert "metagen_ppl.errors" in GRAPH["metagen_ppl.engine.em"]
    # a package's re-exports are edges to its submodules
    assert "metagen_ppl.models.detector.estep" in GRAPH["metagen_ppl.models.detector"]
    assert "metagen_ppl.engine.api" in GRAPH["metagen_ppl"]
    # the resolution rules on a synthetic case
    assert _resolve_relative("metagen_ppl.engine.em", False, 1, "mstep") == "metagen_ppl.engine.mstep"
    assert _resolve_relative("metagen_ppl.engine", True, 1, "em") == "metagen_ppl.engine.em"
    assert _resolve_relative("metagen_ppl.models.detector.fit", False, 2, None) == "metagen_ppl.models"


# --------------------------------------------------------------------------- b. layering
def _violations(source_pred, forbidden_pred):
    return [(a, b) for a, edges in GRAPH.items() if source_pred(a) for b in edges if forbidden_pred(b)]


def test_engine_imports_no_model_app_or_domain():
    bad = _violations(lambda m: _in(m, "metagen_ppl.engine"),
                      lambda m: any(_in(m, p) for p in ("metagen_ppl.models", "metagen_ppl.apps",
                                                         "metagen_ppl.domain")))
    assert not bad, "the engine imports models/apps/domain:\n" + _fmt(bad)


def test_domain_imports_no_engine_model_or_app():
    bad = _violations(lambda m: _in(m, "metagen_ppl.domain"),
                      lambda m: any(_in(m, p) for p in ("metagen_ppl.engine", "metagen_ppl.models",
                                                         "metagen_ppl.apps")))
    assert not bad, "the domain imports engine/models/apps:\n" + _fmt(bad)


def test_base_modules_import_only_base_modules():
    bad = _violations(lambda m: m in BASE, lambda m: m not in BASE)
    assert not bad, "a base module (errors, io, util) imports a non-base module:\n" + _fmt(bad)


def test_models_import_no_app():
    bad = _violations(lambda m: _in(m, "metagen_ppl.models"), lambda m: _in(m, "metagen_ppl.apps"))
    assert not bad, "a model imports an application:\n" + _fmt(bad)


def test_public_facade_imports_engine_and_base_only():
    bad = [("metagen_ppl", b) for b in GRAPH["metagen_ppl"] if not (_in(b, "metagen_ppl.engine") or b in BASE)]
    assert not bad, "metagen_ppl/__init__.py imports beyond the engine:\n" + _fmt(bad)


def test_no_source_imports_the_top_level_models_package():
    """``models`` is installed as ``metagen_ppl.models``; a top-level ``import models`` works only
    from the repository root."""
    bad = []
    for module in MODULES:
        for node, names in IMPORTS[module]:
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            for name in names:
                if name == "models" or name.startswith("models."):
                    bad.append(f"  {_rel(MODULES[module][0])}:{node.lineno}: {name}")
    assert not bad, "imports of the top-level package `models` (use metagen_ppl.models):\n" + "\n".join(bad)


# --------------------------------------------------------------------------- c. no cycles
def _find_cycle(graph: dict):
    """One cycle of ``graph`` as a list of nodes (first == last), or None."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {n: WHITE for n in graph}
    for root in sorted(graph):
        if colour[root] != WHITE:
            continue
        stack = [(root, iter(sorted(graph[root])))]
        path = [root]
        colour[root] = GREY
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                colour[node] = BLACK
                stack.pop()
                path.pop()
                continue
            if colour.get(nxt, BLACK) == GREY:
                return path[path.index(nxt):] + [nxt]
            if colour.get(nxt) == WHITE:
                colour[nxt] = GREY
                stack.append((nxt, iter(sorted(graph[nxt]))))
                path.append(nxt)
    return None


def test_cycle_finder_finds_cycles():
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {}}) is None
    assert _find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]


def test_import_graph_has_no_cycle():
    cycle = _find_cycle(GRAPH)
    if cycle:
        lines = "\n".join(f"  {a} -> {b}  ({_rel(MODULES[a][0])}:{GRAPH[a][b]})" for a, b in zip(cycle, cycle[1:]))
        pytest.fail("the import graph has a cycle:\n" + lines)


# --------------------------------------------------------------------------- d. module-level imports only
def _is_project_import(module: str, node) -> bool:
    if isinstance(node, ast.ImportFrom):
        if node.level:
            return True
        names = [node.module or ""]
    else:
        names = [a.name for a in node.names]
    return any(n == PKG or n.startswith(PKG + ".") or n == "models" or n.startswith("models.") for n in names)


def test_project_imports_are_at_module_level_only():
    bad = []
    for module, tree in TREES.items():
        project = [node for node, _ in IMPORTS[module] if _is_project_import(module, node)]
        if not project:
            continue
        functions = [fn for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for node in project:
            inside = [fn.name for fn in functions if fn.lineno <= node.lineno <= fn.end_lineno]
            if inside:
                bad.append(f"  {_rel(MODULES[module][0])}:{node.lineno} in {inside[-1]}(): {ast.unparse(node)}")
    bad = sorted(set(bad))
    assert not bad, "imports of project modules inside functions (move them to module level):\n" + "\n".join(bad)


def test_no_private_helper_crosses_a_module():
    """A helper another module uses is public: no ``from project.module import _name`` and no
    ``module._name`` on an imported project module, anywhere under metagen_ppl/ and models/."""
    bad = []
    for module, tree in TREES.items():
        imported_modules = set()
        for node, _ in IMPORTS[module]:
            if isinstance(node, ast.ImportFrom) and _is_project_import(module, node):
                for a in node.names:
                    if a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"  {_rel(MODULES[module][0])}:{node.lineno}: {ast.unparse(node)}")
                    target = f"{node.module}.{a.name}" if node.module else a.name
                    if target in MODULES:
                        imported_modules.add(a.asname or a.name)
            elif isinstance(node, ast.Import) and _is_project_import(module, node):
                imported_modules.update(a.asname for a in node.names if a.asname)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in imported_modules
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"  {_rel(MODULES[module][0])}:{node.lineno}: {node.value.id}.{node.attr}")
    bad = sorted(set(bad))
    assert not bad, "private helpers used from another module (make them public):\n" + "\n".join(bad)


# --------------------------------------------------------------------------- e. the installed layout
def test_installed_layout_from_outside_the_repository(tmp_path):
    code = textwrap.dedent("""
        import json, sys
        out = {"root_on_path": [p for p in sys.path if p and __import__("os").path.isdir(p + "/models")
                                and __import__("os").path.isfile(p + "/pyproject.toml")]}
        import metagen_ppl.models.baseline as b
        out["baseline"] = b.__name__
        try:
            import models
            out["models"] = "imported from " + str(getattr(models, "__file__", None))
        except ModuleNotFoundError:
            out["models"] = "ModuleNotFoundError"
        import metagen_ppl.engine.registry as r
        out["builtin"] = r.builtin_models()
        print(json.dumps(out))
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not out["root_on_path"], f"the repository root is on sys.path: {out['root_on_path']}"
    assert out["baseline"] == "metagen_ppl.models.baseline"
    assert out["models"] == "ModuleNotFoundError", out["models"]
    assert out["builtin"] == ["baseline", "categorical", "detector", "projective"]


# --------------------------------------------------------------------------- f. packaging
def _pyproject() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def _package_dir(name: str, table: dict) -> Path:
    """The folder of package ``name`` under setuptools' ``package-dir`` mapping."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        key = ".".join(parts[:n])
        if key in table:
            return ROOT.joinpath(table[key], *parts[n:])
    return ROOT.joinpath(table.get("", "."), *parts)


def test_every_package_is_listed_in_pyproject_and_vice_versa():
    tool = _pyproject()["tool"]["setuptools"]
    listed = list(tool["packages"])
    assert len(listed) == len(set(listed)), f"duplicates in [tool.setuptools] packages: {listed}"
    table = dict(tool.get("package-dir", {}))
    listed_dirs = {_package_dir(p, table).resolve(): p for p in listed}
    on_disk = set()
    for base in SOURCE_DIRS:
        for init in base.rglob("__init__.py"):
            if "__pycache__" not in init.parts:
                on_disk.add(init.parent.resolve())
    missing = sorted(_rel(d) for d in on_disk - set(listed_dirs))
    extra = sorted(f"{listed_dirs[d]} ({_rel(d) if d.is_relative_to(ROOT) else d})"
                   for d in set(listed_dirs) - on_disk)
    assert not missing, f"packages on disk not listed in pyproject.toml [tool.setuptools] packages: {missing}"
    assert not extra, f"listed packages with no __init__.py folder under metagen_ppl/ or models/: {extra}"
    # and the listed names are the ones the modules are imported as
    pkgs = {m for m, (_, is_pkg) in MODULES.items() if is_pkg}
    assert set(listed) == pkgs


def test_entry_points_name_the_installed_model_modules():
    eps = _pyproject()["project"]["entry-points"]["metagen_ppl.models"]
    assert sorted(eps) == ["baseline", "categorical", "detector", "projective"]
    for name, target in eps.items():
        assert target in MODULES, f"entry point {name} = {target!r} is not a module of the project"


# --------------------------------------------------------------------------- g. one convergence test
_TOL_TIMES_MAX = re.compile(r"\btol\s*\*\s*max\s*\(")


def _code_without_strings(src: str) -> str:
    """``src`` with string literals and comments blanked (line structure kept)."""
    lines = src.splitlines(keepends=True)
    out = [list(line) for line in lines]
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type in (tokenize.STRING, tokenize.COMMENT) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            (r0, c0), (r1, c1) = tok.start, tok.end
            for r in range(r0, r1 + 1):
                row = out[r - 1]
                lo = c0 if r == r0 else 0
                hi = c1 if r == r1 else len(row)
                for c in range(lo, hi):
                    if row[c] != "\n":
                        row[c] = " "
    return "".join("".join(r) for r in out)


def _names(node) -> set:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | \
           {n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def _is_call(node, fname) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == fname


def _convergence_tests() -> set:
    """``(file, enclosing function)`` of every EM-style relative convergence test in the code:
    ``... tol * max(...)`` (any name containing "tol" times a ``max`` call), a comparison of
    ``abs(a - b)`` against a product involving a ``*tol*`` name, or the text ``tol * max(``
    outside string literals and comments."""
    found = set()
    for module, tree in TREES.items():
        path = MODULES[module][0]
        src = path.read_text(encoding="utf-8")
        if "tol" not in src.lower():
            continue
        for node in ast.walk(tree):
            hit = False
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
                for a, b in ((node.left, node.right), (node.right, node.left)):
                    if _is_call(b, "max") and any("tol" in n.lower() for n in _names(a)):
                        hit = True
            if isinstance(node, ast.Compare) and _is_call(node.left, "abs") and node.left.args \
                    and isinstance(node.left.args[0], ast.BinOp) and isinstance(node.left.args[0].op, ast.Sub) \
                    and any(isinstance(c, ast.BinOp) and isinstance(c.op, ast.Mult)
                            and any("tol" in n.lower() for n in _names(c)) for c in node.comparators):
                hit = True  # |a - b| <= tol * (scale): a relative test (an absolute |a - b| > TOL is not)
            if hit:
                found.add((_rel(path), where_line(tree, node.lineno)))
        for i, line in enumerate(_code_without_strings(src).splitlines(), 1):
            if _TOL_TIMES_MAX.search(line):
                found.add((_rel(path), where_line(tree, i)))
    return found


def where_line(tree, lineno: int) -> str:
    """Name of the innermost function whose body spans ``lineno``."""
    best, best_span = "<module>", None
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and \
                node.lineno <= lineno <= (node.end_lineno or node.lineno):
            span = (node.end_lineno or node.lineno) - node.lineno
            if best_span is None or span < best_span:
                best, best_span = node.name, span
    return best


def test_one_em_convergence_test():
    found = _convergence_tests()
    assert found == {("metagen_ppl/engine/em.py", "has_converged")}, (
        "EM's convergence test |L_t - L_{t-1}| <= tol * max(|L_t|, 1) must live only in "
        f"metagen_ppl.engine.em.has_converged (call it instead of repeating it); found in {sorted(found)}")


def test_convergence_search_ignores_strings_and_comments():
    src = 'x = 1  # tol * max(a, 1)\ns = """\n tol * max(b)"""\ny = tol * max(c, 1)\n'
    code = _code_without_strings(src).splitlines()
    assert [bool(_TOL_TIMES_MAX.search(line)) for line in code] == [False, False, False, True]
