"""The shape of the code: no import cycle inside bzpipe/, no oversized library module, and every
store key built by the layout module (bzpipe/store/layout.py)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LIB = REPO / "bzpipe"
MAX_LINES = 450
#: the top-level folders of a store (bzpipe/store/layout.py)
STORE_PREFIX = re.compile(r"^(raw|datasets|models|reports|outputs|quarantine|manifests|state|work)/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Bzpipe modules that ``path`` imports anywhere: at the top, in functions (lazy) and under
    ``if TYPE_CHECKING``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:          # ``import bzpipe.a.b`` of a name inside a module
                t = t.rpartition(".")[0]
            if t and t != name:
                out.add(t)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycle_inside_bzpipe_counting_lazy_and_type_checking_imports() -> None:
    mods = _modules()
    graph = {name: _imports(path, name, set(mods)) for name, path in mods.items()}
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_library_module_is_over_450_lines() -> None:
    long = {str(p.relative_to(REPO)): n for p in LIB.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def _string_parts(tree: ast.AST) -> list[tuple[int, str]]:
    """Every string constant of a module, except docstrings; an f-string by its leading text."""
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    parts = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.JoinedStr) and n.values and isinstance(n.values[0], ast.Constant):
            out.append((n.lineno, str(n.values[0].value)))
        elif isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs | parts:
            out.append((n.lineno, n.value))
    return out


def test_every_store_key_comes_from_the_layout_module() -> None:
    layout = LIB / "store" / "layout.py"
    found = []
    for path in sorted([*LIB.rglob("*.py"), *(REPO / "flows").rglob("*.py")]):
        if path == layout:
            continue
        for line, text in _string_parts(ast.parse(path.read_text())):
            if STORE_PREFIX.match(text) and "<" not in text:        # help texts show the layout: <run>
                found.append(f"{path.relative_to(REPO)}:{line}: {text!r}")
    assert found == []


def test_the_store_key_check_sees_plain_and_f_string_literals() -> None:
    tree = ast.parse('"""raw/doc"""\nA = "raw/kazr/x"\nB = f"quarantine/{n}.json"\n')
    hits = [t for _, t in _string_parts(tree) if STORE_PREFIX.match(t)]
    assert hits == ["raw/kazr/x", "quarantine/"]


def test_the_dataset_package_exports_what_it_lists() -> None:
    import bzpipe.dataset as ds

    assert sorted(ds.__all__) == sorted(ds._EXPORTS)
    for name in ds.__all__:
        assert getattr(ds, name) is not None
