"""The import arrows between the layers: status may use stores, never the reverse."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "dramatiq_shared"


def imported(module: Path) -> set[str]:
    """The dramatiq_shared subpackages ``module`` imports from, by name."""
    names = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 2 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("stores", {"status", "db", "middleware", "relay"}),
        ("db", {"status", "middleware", "relay"}),
    ],
)
def test_a_lower_layer_imports_nothing_from_a_higher_one(package: str, forbidden: set[str]) -> None:
    found = {
        str(module.relative_to(PACKAGE)): imported(module) & forbidden
        for module in (PACKAGE / package).glob("*.py")
    }
    assert {module: names for module, names in found.items() if names} == {}
