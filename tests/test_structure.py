"""The package's shape (docs/engine.md#layers): every module sits in one layer and imports only from
lower layers (a package's own modules aside), and no function is longer than a screen."""

import ast
from pathlib import Path

import pytest

from helpers import ROOT

PACKAGE = ROOT / "dimat_bench"
# Lowest first. A package (methods, models) is one unit: its modules may import each other.
LAYERS = [
    {"registry", "subsets"},
    {"config", "results", "devices", "splits", "topology", "network", "permutation"},
    {"data", "models", "matching", "plan"},
    {"population", "checkpoint", "bundle"},
    {"methods", "final_merge"},
    {"pretrain", "run", "communication"},
    {"grid"},
    {"aggregate", "estimate"},
    {"figures", "claims", "preflight", "card"},
    {"cli"},
    {"__main__", "__init__"},
]
LAYER = {unit: index for index, units in enumerate(LAYERS) for unit in units}
MAX_FUNCTION_LINES = 60


def unit_of(path: Path) -> str:
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imported_units(source: str, depth: int) -> set[str]:
    """The package units a module imports (relative or absolute, anywhere in the file); `depth` is 0
    for dimat_bench/x.py, 1 for dimat_bench/methods/x.py."""
    units = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                if node.level - 1 < depth:
                    continue  # inside its own package
                names = [node.module] if node.module else [a.name for a in node.names]
            elif (node.module or "").startswith("dimat_bench"):
                names = [node.module.partition(".")[2] or "__init__"]
            else:
                continue
            units |= {name.split(".")[0] for name in names}
        elif isinstance(node, ast.Import):
            units |= {a.name.split(".")[1] for a in node.names if a.name.startswith("dimat_bench.")}
    return units - {"__version__"}


SOURCES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_every_module_imports_only_from_lower_layers(path):
    unit = unit_of(path)
    assert unit in LAYER, f"{unit}: place it in a layer of tests/test_structure.py and docs/engine.md"
    depth = len(path.relative_to(PACKAGE).parts) - 1
    higher = {other for other in imported_units(path.read_text(), depth) - {unit} if LAYER[other] >= LAYER[unit]}
    assert not higher, f"{path.name} (layer {LAYER[unit]}) imports {higher} (layers {[LAYER[u] for u in higher]})"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_function_is_longer_than_a_screen(path):
    long = [(node.name, node.end_lineno - node.lineno + 1) for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: {long}"


def test_the_layer_check_sees_upward_imports_and_ignores_a_packages_own_modules():
    source = "from .run import RunConfig\nfrom . import grid\nimport dimat_bench.aggregate\nfrom .base import x\n"
    assert imported_units(source, depth=0) == {"run", "grid", "aggregate", "base"}
    assert imported_units(source, depth=1) == {"aggregate"}  # inside methods/: relative imports stay home
    absolute = "from ..run import RunConfig\nfrom dimat_bench.grid import expand_grid\n"
    assert imported_units(absolute, depth=1) == {"run", "grid"}
