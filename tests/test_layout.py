"""The package's imports run one way, layer by layer, with no cycles (docs/layout.md)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "imgsearch"

# Lowest first. A module may import modules of lower layers only; a package (models,
# search) is one unit, whose modules may import each other.
LAYERS = [
    {"errors", "config", "files"},
    {"results", "slabs"},
    {
        "captions",
        "colours",
        "storage",
        "relations",
        "search",
        "models",
        "projections",
        "metrics",
        "baselines",
        "thumbnails",
        "copies",
        "gpudecode",
        "pipeline",
    },
    {"indexer", "derived", "scoring", "selection"},
    {"distributed", "vectors", "duplicates"},
    {"collection"},
    {"api"},
    {"report", "evaluate"},
    {"web", "watch"},
    {"cli"},
]
LAYER = {unit: number for number, units in enumerate(LAYERS) for unit in units}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(path: Path, known: set[str]) -> set[str]:
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py", known)


def imports_in(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """The imgsearch modules ``source`` (the module ``name``) imports anywhere, inside
    functions too, leaving out imports under ``if TYPE_CHECKING:``."""
    package = name if is_package else name.rsplit(".", 1)[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "imgsearch")
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                base = f"{base}.{node.module}" if node.module else base
            if base.split(".")[0] == "imgsearch":
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    found.add(sub if sub in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(source))
    return {m for m in found if m in known and m != name}


def unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "imgsearch"


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer() -> None:
    units = {unit(m) for m in modules()} - {"imgsearch"}
    assert units == set(LAYER), f"not in LAYERS: {units - set(LAYER)}; gone: {set(LAYER) - units}"


def test_modules_import_lower_layers_only() -> None:
    wrong = []
    for module, targets in graph().items():
        if module == "imgsearch":  # the package's lazy front, names only
            continue
        for target in targets:
            a, b = unit(module), unit(target)
            if a != b and LAYER[b] >= LAYER[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that go up or sideways: " + ", ".join(sorted(wrong))


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                walk(target, [*path, target])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            walk(start, [start])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_imports_in_functions_and_skips_type_checking() -> None:
    known = set(modules())
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from imgsearch.api import Index\n"
        "def f():\n    from imgsearch import scoring\n    from . import config\n"
    )
    assert imports_in(source, "imgsearch.files", False, known) == {
        "imgsearch.scoring",
        "imgsearch.config",
    }
    assert LAYER[unit("imgsearch.scoring")] > LAYER[unit("imgsearch.files")]


def test_decode_workers_load_neither_faiss_nor_torch() -> None:
    code = (
        "import sys, imgsearch.files, imgsearch.models\n"
        "print(sorted(m for m in ('faiss', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_every_transformers_import_holds_the_import_lock() -> None:
    """transformers loads lazily; the model loads on a thread while the decoders read its
    preprocessing, and two threads importing it at once failed one run in about eight with
    "cannot import name 'AutoConfig'" (the start-up benchmark found it). So every import
    of it sits in a ``with TRANSFORMERS_IMPORT:`` block."""
    unguarded = []
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text("utf-8"))
        guarded: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.With) and any(
                isinstance(item.context_expr, ast.Name)
                and item.context_expr.id == "TRANSFORMERS_IMPORT"
                for item in node.items
            ):
                guarded |= {id(inner) for inner in ast.walk(node)}
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "transformers" for n in names) and id(node) not in guarded:
                unguarded.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not unguarded, unguarded
