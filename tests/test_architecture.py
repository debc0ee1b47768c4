"""The package's dependencies point one way: runtime <- nn (the layers) <- head <- model <- {rerank,
engine} <- commands; each equation of the paper lives in the layers; the test protocol's valid values
are listed once (hrnet_pyg/protocol.py).

The import graph is read from the source with ``ast`` (module-level and function-level imports,
absolute and relative), so the tests see imports that a plain ``import hrnet_pyg`` never runs.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = "hrnet_pyg"
ROOT = Path(__file__).resolve().parents[1] / PACKAGE

# Modules that model the paper and must stay usable without the training/evaluation engine.
MODELING = ("nn", "nn.individual", "nn.pairwise", "nn.verification", "layers", "graphs", "head", "model",
            "losses", "backbone", "hybrid", "scoring")
# What the layers (hrnet_pyg/nn/, re-exported by layers.py) may import of the package: each other,
# the leaf helpers and graph construction.
LAYERS_MAY_IMPORT = {f"{PACKAGE}.runtime", f"{PACKAGE}.graphs"}
# Calls that compute attention (softmax over logits, mu = LeakyReLU, the denominators of Eq. 2 and 6):
# the layers' alone, so that no other module restates their equations.
ATTENTION_CALLS = {"softmax", "log_softmax", "leaky_relu", "leaky_relu_", "logsumexp"}


def _module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _lazy_table(path: Path) -> dict[str, str]:
    """The root package's ``_LAZY`` map (attribute -> module imported on first access)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "_LAZY" for t in node.targets):
            return ast.literal_eval(node.value)
    return {}


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` for every module under ``root``.

    ``import a.b`` and ``from a.b import c`` are edges to ``a.b`` (or to ``a.b.c`` when ``c`` is a
    submodule); ``from a import b`` with ``b`` a submodule is an edge to ``a.b``. Names of the root
    package's lazy table count as an edge to the module that serves them, since reading one
    imports it. A package's ``__init__`` is a node of its own, with an edge per re-export; the
    implicit import of parent packages is not an edge (their own imports are edges of theirs).
    """
    modules = _module_names(root, package)
    lazy = _lazy_table(modules[package])
    graph: dict[str, set[str]] = {name: set() for name in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        here = name if is_package else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        targets.append(f"{source}.{alias.name}")
                    elif source == package and alias.name in lazy:
                        targets.append(lazy[alias.name])
                    else:
                        targets.append(source)
            for target in targets:
                if target == package or target.startswith(package + "."):
                    dep = known(target)
                    if dep is not None and dep != name:
                        graph[name].add(dep)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as ``[a, b, ..., a]``, or ``None``."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in graph.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


# ---------------------------------------------------------------------------- the walker itself
def _write_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "pkg"
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_walker_reads_every_import_form(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "_LAZY = {'Thing': 'pkg.lazy'}\n",
        "lazy.py": "",
        "a.py": "import pkg.b\n",
        "b.py": "def f():\n    from pkg import c\n",  # function level, submodule by name
        "c.py": "from .sub.d import x\n",  # relative
        "sub/__init__.py": "from . import d\n",  # a package's re-export
        "sub/d.py": "from ..a import y\nfrom pkg import Thing\nimport os\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.c"}
    assert graph["pkg.c"] == {"pkg.sub.d"}
    assert graph["pkg.sub"] == {"pkg.sub.d"}
    assert graph["pkg.sub.d"] == {"pkg.a", "pkg.lazy"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"pkg.a", "pkg.b", "pkg.c", "pkg.sub.d"}


def test_walker_finds_no_cycle_in_a_one_way_package(tmp_path):
    root = _write_package(tmp_path, {
        "__init__.py": "from pkg import __version__\n",
        "low.py": "",
        "mid.py": "from pkg.low import x\n",
        "top.py": "from pkg import mid\nfrom pkg.low import y\n",
    })
    graph = import_graph(root, "pkg")
    assert graph["pkg.top"] == {"pkg.mid", "pkg.low"}
    assert find_cycle(graph) is None


# ---------------------------------------------------------------------------- the package
def test_the_package_has_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def _layer_modules(graph: dict[str, set[str]]) -> list[str]:
    return [m for m in graph if m == f"{PACKAGE}.layers" or m == f"{PACKAGE}.nn" or m.startswith(f"{PACKAGE}.nn.")]


def test_layers_import_only_the_leaf_helpers_and_graphs():
    graph = import_graph()
    layers = _layer_modules(graph)
    assert f"{PACKAGE}.nn.pairwise" in layers and f"{PACKAGE}.layers" in layers
    for module in layers:
        extra = {m for m in graph[module] - LAYERS_MAY_IMPORT if m not in layers}
        assert not extra, f"{module} imports {sorted(extra)}; it may only import {sorted(LAYERS_MAY_IMPORT)}"


def _attention_calls(path: Path) -> list[str]:
    """``name:line`` of every call of an ATTENTION_CALLS function (``torch.softmax``, ``F.leaky_relu``,
    PyG's ``softmax``, a tensor's ``.logsumexp`` ...) in the module at ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ATTENTION_CALLS:
                found.append(f"{name}:{node.lineno}")
    return found


def test_no_module_outside_the_layers_computes_attention():
    """Eq. 2-3 and 6-9 are written in hrnet_pyg/nn/ only: the relation head, the model and the
    test-time scoring call the layers (``forward``, ``forward_dense``, ``project``) instead."""
    graph = import_graph()
    layers = set(_layer_modules(graph))
    modules = _module_names()
    assert _attention_calls(modules[f"{PACKAGE}.nn.individual"])  # the check sees the layers' own calls
    assert _attention_calls(modules[f"{PACKAGE}.nn.pairwise"])
    bad = {name: calls for name, path in modules.items() if name not in layers and (calls := _attention_calls(path))}
    assert not bad, f"attention computed outside hrnet_pyg/nn/: {bad}"


def test_the_attention_check_catches_a_restatement(tmp_path):
    path = tmp_path / "scoring.py"
    path.write_text("import torch\nimport torch.nn.functional as F\n\ndef g(e):\n"
                    "    return torch.softmax(F.leaky_relu(e, 0.2), -1) + e.logsumexp(-1, keepdim=True)\n")
    assert sorted(c.split(":")[0] for c in _attention_calls(path)) == ["leaky_relu", "logsumexp", "softmax"]


@pytest.mark.parametrize("module", ["model", "head", "scoring", "hybrid"])
def test_modeling_leaves_distributed_to_the_engine(module):
    """The model's forward runs under DDP, but the gather of the global graph batch is a hook that the
    engine sets (hrnet_pyg.distributed.set_graph_scope): modeling never imports the distributed module."""
    reached = reachable(import_graph(), f"{PACKAGE}.{module}")
    assert f"{PACKAGE}.distributed" not in reached, f"{module}.py reaches hrnet_pyg.distributed"


@pytest.mark.parametrize("module", MODELING)
def test_modeling_never_reaches_the_engine(module):
    graph = import_graph()
    bad = {m for m in reachable(graph, f"{PACKAGE}.{module}") if m == f"{PACKAGE}.engine"
           or m.startswith(f"{PACKAGE}.engine.") or m in (f"{PACKAGE}.api", f"{PACKAGE}.rerank")}
    assert not bad, f"{module}.py imports (directly or through others) {sorted(bad)}"


def test_runtime_is_a_leaf():
    deps = import_graph()[f"{PACKAGE}.runtime"]
    assert deps <= {f"{PACKAGE}.config"}, f"runtime.py imports {sorted(deps)}"


def test_the_package_root_stays_lazy():
    """``hrnet_pyg/__init__`` imports no module of its own: every module may read ``__version__``
    from it without pulling in the rest, and its names resolve on first access."""
    deps = import_graph()[PACKAGE]
    assert not deps, f"hrnet_pyg/__init__.py imports {sorted(deps)} when it is imported"


# ---------------------------------------------------------------------------- size limits
# A function longer than a screen or two, or a module longer than a few hundred lines, holds more
# than one concept: torchreid, fast-reid and PyG keep theirs well below these limits.
MAX_FUNCTION_CODE_LINES = 80  # code lines: not blank, not only a comment, docstrings excluded
MAX_MODULE_LINES = 600  # physical lines of the file


def _docstring_lines(tree: ast.AST) -> set[int]:
    """Line numbers of every docstring (module, class, function) in ``tree``."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                lines.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return lines


def code_lines(source: str) -> set[int]:
    """Line numbers that hold code: a token other than a comment, in no docstring.

    A statement over several lines counts each of them, a string literal too (all its lines);
    a line with code and a trailing comment counts.
    """
    import io
    import tokenize

    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}
    lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type not in skip:
            lines.update(range(tok.start[0], tok.end[0] + 1))
    return lines - _docstring_lines(ast.parse(source))


def function_sizes(source: str) -> dict[str, int]:
    """``{qualified name: code lines}`` of every function and method in ``source`` (nested ones
    too, under ``outer.inner``; a function's count includes what it nests)."""
    code = code_lines(source)
    sizes: dict[str, int] = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if not isinstance(child, ast.ClassDef):
                    first = min([child.lineno] + [d.lineno for d in child.decorator_list])
                    sizes[name] = len({n for n in code if first <= n <= (child.end_lineno or child.lineno)})
                visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(ast.parse(source), "")
    return sizes


def _package_files() -> dict[str, Path]:
    return {path.relative_to(ROOT).as_posix(): path for path in sorted(ROOT.rglob("*.py"))}


def test_code_lines_skip_blanks_comments_and_docstrings():
    source = (
        '"""Module docstring."""\n'  # 1
        "@decorator\n"  # 2: counted with the function below
        "def f(x):\n"  # 3
        '    """Doc\n'  # 4
        '    string."""\n'  # 5
        "    # a comment\n"  # 6
        "\n"  # 7
        "    y = (x +\n"  # 8
        "         1)  # trailing comment\n"  # 9
        '    s = """not a\n'  # 10
        '    docstring"""\n'  # 11
        "    def g():\n"  # 12
        '        """Nested docstring."""\n'  # 13
        "        return 1\n"  # 14
        "    return y\n"  # 15
        "class C:\n"  # 16
        "    def m(self):\n"  # 17
        "        pass\n"  # 18
    )
    assert code_lines(source) == {2, 3, 8, 9, 10, 11, 12, 14, 15, 16, 17, 18}
    assert function_sizes(source) == {"f": 9, "f.g": 2, "C.m": 2}


def test_no_function_over_the_code_line_limit():
    too_long = []
    for rel, path in _package_files().items():
        for name, size in function_sizes(path.read_text()).items():
            if size > MAX_FUNCTION_CODE_LINES:
                too_long.append(f"{PACKAGE}/{rel}:{name} ({size} code lines)")
    assert not too_long, (
        f"functions over {MAX_FUNCTION_CODE_LINES} code lines (split them by concept): " + ", ".join(too_long)
    )


def test_no_module_over_the_line_limit():
    too_long = []
    for rel, path in _package_files().items():
        lines = len(path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{PACKAGE}/{rel} ({lines} lines)")
    assert not too_long, f"modules over {MAX_MODULE_LINES} lines (split them by concept): " + ", ".join(too_long)


# ---------------------------------------------------------------------------- valid values listed once
_SOURCES = [p for d in ("hrnet_pyg", "experiments", "benchmarks") for p in sorted((ROOT.parent / d).rglob("*.py"))]


def listed_choices(source: str) -> list[tuple[int, list[str]]]:
    """(line, values) of every tuple, list or set literal of strings that lists two or more valid
    values of one of RerankConfig's Literal fields."""
    from hrnet_pyg.protocol import RerankConfig

    names = ("ir_score", "pr_score", "norm", "protocol", "gallery_neighbours")
    groups = [set(RerankConfig.choices(name)) for name in names]
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            strings = {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            if any(len(strings & group) >= 2 for group in groups):
                out.append((node.lineno, sorted(strings)))
    return out


def test_the_listing_check_catches_a_list():
    assert listed_choices('ok = ("ir_cosine",)\nbad = ["none", "rank"]\n') == [(2, ["none", "rank"])]
    assert listed_choices('x = {"ir_cosine": 1, "ir_bn_cosine": 2}\n') == []  # names of terms, not a listing


def test_valid_values_are_listed_once():
    """The test protocol's valid values are RerankConfig's annotations: no other module lists them."""
    found = [f"{p.relative_to(ROOT.parent)}:{line} {values}" for p in _SOURCES if p.name != "protocol.py"
             for line, values in listed_choices(p.read_text())]
    assert not found, "valid values of RerankConfig listed outside hrnet_pyg/protocol.py: " + "; ".join(found)
