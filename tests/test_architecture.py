"""The shape of the code (docs/architecture.md): one-way dependencies among ethos modules (no
import circle, counting imports inside functions), no private name imported across modules, the
command line apart from the library (argparse only in ``runtime/cli/``), modules of a readable
size, every package shipped, and policy commands that start without the heavy libraries."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Source folder → the package it is installed as (pyproject's package-dir).
SOURCES = {"compiler": "ethos.compiler", "runtime": "ethos.runtime", "specs": "ethos.specs"}
CLI = "ethos.runtime.cli"
MAX_LINES = 700
HEAVY = ("torch", "transformers", "pandas", "scipy")


@dataclass(frozen=True)
class Module:
    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package a relative import with one dot resolves against."""
        return self.name if self.is_package else self.name.rpartition(".")[0]

    @property
    def rel(self) -> str:
        return self.path.relative_to(ROOT).as_posix()


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the ethos module imported (the longest known module the name resolves to)
    names: tuple[str, ...]  # the names of ``from X import a, b`` that are not modules themselves
    line: int
    text: str


@lru_cache(maxsize=1)
def modules() -> dict[str, Module]:
    out = {}
    for folder, package in SOURCES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if any(p.startswith(".") or p == "__pycache__" for p in parts):
                continue
            is_package = parts[-1] == "__init__"
            if is_package:
                parts = parts[:-1]
            name = ".".join((package, *parts))
            out[name] = Module(name, path, is_package)
    return out


@lru_cache(maxsize=None)
def tree(name: str) -> ast.Module:
    m = modules()[name]
    return ast.parse(m.path.read_text(encoding="utf-8"), filename=str(m.path))


def known(name: str) -> str | None:
    """The longest prefix of a dotted name that is an ethos module (``ethos.runtime.report.format.num``
    → ``ethos.runtime.report.format``); None outside ethos."""
    mods = modules()
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        prefix = ".".join(parts[:k])
        if prefix in mods:
            return prefix
    return None


def resolve_from(module: Module, node: ast.ImportFrom) -> str:
    """The absolute name of ``from <...> import``, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.package.split(".")
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


@lru_cache(maxsize=None)
def imports(name: str) -> tuple[Import, ...]:
    """Every import of an ethos module in ``name``, at any depth (inside functions, under
    ``if TYPE_CHECKING``, in ``try``), and ``importlib.import_module("ethos....")`` with a literal."""
    module, mods = modules()[name], modules()
    lines = module.path.read_text(encoding="utf-8").splitlines()
    out = []
    for node in ast.walk(tree(name)):
        text = lines[node.lineno - 1].strip() if hasattr(node, "lineno") else ""
        if isinstance(node, ast.Import):
            for alias in node.names:
                target = known(alias.name)
                if target:
                    out.append(Import(name, target, (), node.lineno, text))
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, node)
            attrs = []
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                if sub in mods:
                    out.append(Import(name, sub, (), node.lineno, text))
                else:
                    attrs.append(alias.name)
            target = known(base)
            if target and (attrs or base in mods):
                out.append(Import(name, target, tuple(attrs), node.lineno, text))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            target = known(node.args[0].value)
            if target:
                out.append(Import(name, target, (), node.lineno, text))
    return tuple(out)


def ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:k]) for k in range(1, len(parts))]


@lru_cache(maxsize=1)
def graph() -> dict[str, dict[str, Import]]:
    """module → {module it imports: the first import that does it}. Importing ``a.b.c`` also runs
    the packages ``a.b`` and ``a`` — except those the importer is inside (already running)."""
    mods = modules()
    edges: dict[str, dict[str, Import]] = {m: {} for m in mods}
    for name in mods:
        mine = set(ancestors(name)) | {name}
        for imp in imports(name):
            for target in [imp.target, *ancestors(imp.target)]:
                if target in mods and target not in mine:
                    edges[name].setdefault(target, imp)
    return edges


def cycles(edges: dict[str, dict[str, Import]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each as one circle
    through it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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
            if len(comp) > 1 or v in edges[v]:
                comps.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(edges):
        if v not in index:
            visit(v)
    return [circle(edges, comp) for comp in comps]


def circle(edges: dict[str, dict[str, Import]], comp: list[str]) -> list[str]:
    """One circle inside a strongly connected component: the shortest path from its first module
    back to itself (breadth-first)."""
    start, inside = comp[0], set(comp)
    prev: dict[str, str] = {}
    queue = [start]
    while queue:
        v = queue.pop(0)
        for w in sorted(edges[v]):
            if w not in inside:
                continue
            if w == start:
                path = [v]
                while path[-1] != start:
                    path.append(prev[path[-1]])
                return [start, *reversed(path[:-1]), start] if v != start else [start, start]
            if w not in prev:
                prev[w] = v
                queue.append(w)
    return comp


def where(imp: Import) -> str:
    return f"{modules()[imp.source].rel}:{imp.line}: {imp.text}"


# ---------------------------------------------------------------------------------------------
# The checker itself, on a small made-up tree (so a passing repository test means something)


def test_the_checker_sees_hidden_circles_and_private_names(tmp_path, monkeypatch):
    """A circle hidden behind an import inside a function, a ``..`` import and a package
    ``__init__``; ``importlib.import_module`` with a literal; a private name across modules."""
    pkg = tmp_path / "runtime"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "def f():\n    from .b import g\n    return g\n\n\ndef _private():\n    pass\n",
        "b.py": "from ethos.runtime.sub.c import h\n",
        "sub/__init__.py": "from .c import h\n",
        "sub/c.py": "from ..a import _private\n",
        "d.py": "import importlib\nimportlib.import_module('ethos.runtime.e')\n",
        "e.py": "from .sub import c\nc._hidden()\n",
        "cli/__init__.py": "import argparse\nimport numpy\n\n\ndef run(args):\n    import torch\n",
        "f.py": "from __future__ import annotations\nimport argparse\n\n\ndef g(args: argparse.Namespace):\n"
                "    from .cli import run\n",
    }
    (pkg / "cli").mkdir()
    for rel, text in files.items():
        (pkg / rel).write_text(text)
    monkeypatch.setitem(globals(), "ROOT", tmp_path)
    monkeypatch.setitem(globals(), "SOURCES", {"runtime": "ethos.runtime"})
    caches = (modules, tree, imports, graph)
    for f in caches:
        f.cache_clear()
    try:
        edges = graph()
        assert set(edges["ethos.runtime.a"]) == {"ethos.runtime.b"}  # inside a function
        assert set(edges["ethos.runtime.b"]) == {"ethos.runtime.sub", "ethos.runtime.sub.c"}  # and its package
        assert set(edges["ethos.runtime.sub"]) == {"ethos.runtime.sub.c"}  # not its own package
        assert set(edges["ethos.runtime.sub.c"]) == {"ethos.runtime.a"}  # ``..a`` resolved
        assert set(edges["ethos.runtime.d"]) == {"ethos.runtime.e"}  # import_module("...")
        assert cycles(edges) == [["ethos.runtime.a", "ethos.runtime.b", "ethos.runtime.sub.c", "ethos.runtime.a"]]
        assert private_imports() == ["runtime/e.py:2: c._hidden() (c._hidden)",
                                     "runtime/sub/c.py:1: from ..a import _private (_private)"]
        with pytest.raises(AssertionError) as e:
            test_argparse_only_in_the_command_line()
        for line in ("runtime/f.py:2: imports argparse", "runtime/f.py:6: from .cli import run (the command line)",
                     "runtime/f.py:5: def g(args: argparse.Namespace): (takes an argparse namespace)"):
            assert line in str(e.value)
        assert "runtime/cli/__init__.py" not in str(e.value)
        with pytest.raises(AssertionError) as e:
            test_command_modules_import_the_library_lazily()
        assert "runtime/cli/__init__.py:2: imports numpy when loaded" in str(e.value) and "torch" not in str(e.value)
    finally:
        for f in caches:
            f.cache_clear()


# ---------------------------------------------------------------------------------------------
# The repository


def test_ethos_modules_are_found():
    mods = modules()
    assert {"ethos.compiler.compile", "ethos.runtime.cli", "ethos.runtime.cli.policy", "ethos.runtime.report",
            "ethos.runtime.report.format", "ethos.runtime.documents", "ethos.runtime.errors"} <= set(mods)
    assert "ethos.runtime.report.format" in graph()["ethos.runtime.report.audit"]


def test_no_import_circle():
    edges = graph()
    found = cycles(edges)
    lines = []
    for c in found:
        lines.append(" -> ".join(c))
        lines += [f"    {where(edges[a][b])}" for a, b in zip(c, c[1:])]
    assert not found, "import circles among ethos modules (imports inside functions count):\n" + "\n".join(lines)


def private_imports() -> list[str]:
    """``from <ethos module> import _name`` in another module, and ``module._name`` through a
    name bound to an imported ethos module. Dunder names and private submodules are allowed."""
    mods = modules()
    bad = []
    for name in mods:
        bound: dict[str, str] = {}
        for imp in imports(name):
            for n in imp.names:
                if n.startswith("_") and not n.startswith("__") and imp.target != name:
                    bad.append(f"{where(imp)} ({n})")
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname and alias.name in mods:
                        bound[alias.asname] = alias.name
            elif isinstance(node, ast.ImportFrom):
                base = resolve_from(mods[name], node)
                for alias in node.names:
                    if f"{base}.{alias.name}" in mods:
                        bound[alias.asname or alias.name] = f"{base}.{alias.name}"
        lines = mods[name].path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(tree(name)):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in bound
                    and node.attr.startswith("_") and not node.attr.startswith("__")
                    and bound[node.value.id] != name):
                bad.append(f"{mods[name].rel}:{node.lineno}: {lines[node.lineno - 1].strip()} "
                           f"({node.value.id}.{node.attr})")
    return sorted(set(bad))


def test_no_private_name_imported_across_modules():
    bad = private_imports()
    assert not bad, "private names used across modules (make them public or move them):\n" + "\n".join(bad)


def test_argparse_only_in_the_command_line():
    bad = []
    for name, m in modules().items():
        if name == CLI or name.startswith(CLI + "."):
            continue
        text = m.path.read_text(encoding="utf-8")
        for node in ast.walk(tree(name)):
            if isinstance(node, ast.Import) and any(a.name == "argparse" for a in node.names):
                bad.append(f"{m.rel}:{node.lineno}: imports argparse")
            elif isinstance(node, ast.ImportFrom) and node.module == "argparse" and not node.level:
                bad.append(f"{m.rel}:{node.lineno}: imports from argparse")
        for imp in imports(name):
            if imp.target == CLI or imp.target.startswith(CLI + "."):
                bad.append(f"{where(imp)} (the command line)")
        if "Namespace" in text:
            for i, line in enumerate(text.splitlines(), 1):
                if "argparse.Namespace" in line or ": Namespace" in line:
                    bad.append(f"{m.rel}:{i}: {line.strip()} (takes an argparse namespace)")
    assert not bad, "outside runtime/cli/, modules must not use argparse or the command line:\n" + "\n".join(bad)


def test_no_runtime_module_over_700_lines():
    big = []
    for name, m in modules().items():
        if name.startswith("ethos.runtime"):
            n = len(m.path.read_text(encoding="utf-8").splitlines())
            if n > MAX_LINES:
                big.append(f"{m.rel}: {n} lines")
    assert not big, f"runtime modules over {MAX_LINES} lines (split them by job):\n" + "\n".join(big)


def test_every_package_is_shipped():
    """Each package folder on disk is in pyproject's ``packages`` (else a wheel would miss it)."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {name for name, m in modules().items() if m.is_package}
    assert on_disk - listed == set(), f"packages missing from pyproject.toml: {sorted(on_disk - listed)}"
    assert listed - on_disk == set(), f"pyproject.toml lists packages that do not exist: {sorted(listed - on_disk)}"
    templates = ROOT / "runtime" / "report" / "templates"
    assert any(templates.glob("*.j2")) and config["package-data"]["ethos.runtime.report"] == ["templates/*.j2"]


# ---------------------------------------------------------------------------------------------
# What the policy commands load

PROBE = """
import json, sys
from ethos.runtime.cli import main
try:
    rc = main(sys.argv[2:])
except SystemExit as e:
    rc = e.code
with open(sys.argv[1], "w") as f:
    json.dump({"rc": rc, "modules": sorted(sys.modules)}, f)
"""


def loaded(tmp_path: Path, *argv: str) -> tuple[int, list[str], str]:
    out = tmp_path / "modules.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(out), *argv], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert out.exists(), proc.stderr[-3000:]
    result = json.loads(out.read_text())
    return result["rc"], result["modules"], proc.stderr


def policy_commands(tmp_path: Path) -> list[list[str]]:
    minimal = str(ROOT / "specs" / "examples" / "minimal.ethos")
    return [
        ["check", minimal],
        ["fmt", minimal],
        ["fmt", "--check", minimal],
        ["compile", minimal, "-o", str(tmp_path / "plan.json")],
        ["diff", minimal, minimal],
        ["--help"],
        ["check", "--help"],
        ["--version"],
    ]


def test_policy_commands_load_no_heavy_library(tmp_path):
    failures = []
    for argv in policy_commands(tmp_path):
        rc, mods, err = loaded(tmp_path, *argv)
        heavy = sorted({m.split(".")[0] for m in mods} & set(HEAVY))
        if rc not in (0, None):
            failures.append(f"ethos {' '.join(argv)}: exit {rc}: {err[-500:]}")
        if heavy:
            failures.append(f"ethos {' '.join(argv)} loaded {', '.join(heavy)}")
    assert not failures, "\n".join(failures)


def test_the_probe_would_see_a_heavy_import(tmp_path):
    """The subprocess check reports what a command imports (here: the report renderer's numpy)."""
    out = tmp_path / "m.json"
    subprocess.run([sys.executable, "-c", PROBE.replace("rc = main(sys.argv[2:])",
                                                        "import numpy; rc = main(sys.argv[2:])"),
                    str(out), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "numpy" in json.loads(out.read_text())["modules"]


# What a command module may import when it is loaded (its handlers import the library inside the
# function): the standard library, the compiler, and these light runtime modules.
CLI_MODULE_LEVEL = ("ethos.compiler", "ethos.runtime.errors", "ethos.runtime.documents", "ethos.runtime.io",
                    "ethos.runtime.settings", CLI)


def module_level_imports(node: ast.AST):
    """The imports that run when a module is loaded: not those inside functions or classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        else:
            yield from module_level_imports(child)


def test_command_modules_import_the_library_lazily():
    bad = []
    for name, m in modules().items():
        if not (name == CLI or name.startswith(CLI + ".")):
            continue
        for n in module_level_imports(tree(name)):
            names = [a.name for a in n.names] if isinstance(n, ast.Import) else [resolve_from(m, n)]
            for full in names:
                top = full.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if any(full == ok or full.startswith(ok + ".") for ok in CLI_MODULE_LEVEL):
                    continue
                bad.append(f"{m.rel}:{n.lineno}: imports {full} when loaded")
    assert not bad, ("command modules import the library inside their handlers, so that ethos --help and the "
                     "policy commands start fast:\n" + "\n".join(bad))


# ---------------------------------------------------------------------------------------------
# docs/architecture.md's picture of the dependency direction is the code's


def unit(name: str) -> str | None:
    """The box of the picture a module belongs to: ``compiler``, a runtime module (``planner``)
    or a runtime subpackage (``report/``); None for the ``ethos.runtime`` package itself."""
    if name.startswith("ethos.compiler"):
        return "compiler"
    parts = name.split(".")
    if len(parts) < 3 or not name.startswith("ethos.runtime"):
        return None
    return parts[2] + "/" if modules().get(".".join(parts[:3]), Module("", ROOT, False)).is_package else parts[2]


def documented_layers() -> list[list[str]]:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    section = text.split("## Dependency direction", 1)[1]
    block = section.split("```\n", 2)[1]
    layers = []
    for line in block.splitlines():
        names = line.strip().split("  ")[0].strip()
        if not names or set(names) <= set("│▼ "):
            continue
        layers.append([n.strip().removeprefix("runtime/") for n in names.split(" · ")])
    return layers


def test_architecture_md_draws_the_dependency_direction():
    layers = documented_layers()
    row = {u: i for i, layer in enumerate(layers) for u in layer}
    drawn = [u for layer in layers for u in layer]
    units = {unit(n) for n in modules()} - {None}
    assert len(drawn) == len(set(drawn)), f"drawn twice: {sorted(u for u in drawn if drawn.count(u) > 1)}"
    assert units - set(drawn) == set(), f"modules missing from docs/architecture.md's picture: {sorted(units - set(drawn))}"
    assert set(drawn) - units == set(), f"docs/architecture.md draws what is not in the code: {sorted(set(drawn) - units)}"
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    undescribed = sorted(f"{m.rel}" for name, m in modules().items()
                         if m.path.name != "__init__.py" and name.count(".") == 2
                         and f"`{m.path.name}`" not in text)
    undescribed += sorted(f"{u}" for u in units if u.endswith("/") and f"`{u}`" not in text)
    assert not undescribed, f"modules docs/architecture.md's tables do not describe: {undescribed}"
    upward: dict[tuple[str, str], str] = {}
    for a, targets in sorted(graph().items()):
        for b, imp in sorted(targets.items()):
            ua, ub = unit(a), unit(b)
            if ua and ub and ua != ub and row[ub] <= row[ua]:
                upward.setdefault((ua, ub), f"{ua} (row {row[ua] + 1}) imports {ub} (row {row[ub] + 1}): {where(imp)}")
    assert not upward, ("imports against docs/architecture.md's dependency direction (a row imports only from "
                        "the rows below it); fix the import or the picture:\n" + "\n".join(sorted(upward.values())))


def test_reports_import_only_documents():
    """report/ renders documents: of ethos it imports only documents, errors, io and itself —
    never the modules that produce the documents."""
    allowed = ("ethos.runtime.documents", "ethos.runtime.errors", "ethos.runtime.io", "ethos.runtime.report")
    bad = [f"{where(imp)}" for name in modules() if name.startswith("ethos.runtime.report")
           for imp in imports(name) if not any(imp.target == a or imp.target.startswith(a + ".") for a in allowed)]
    assert not bad, "report/ imports more than documents:\n" + "\n".join(bad)
