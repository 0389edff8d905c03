"""The package layout keeps its shape: short modules, imports that flow one way, no torch in the encoder."""

import ast
from pathlib import Path

import pytest

from conftest import ROOT

PACKAGES = ("melee_encode", "melee_model")
MAX_LINES = 350


def modules() -> dict[str, Path]:
    return {
        f"{package}.{path.stem}": path for package in PACKAGES for path in sorted((ROOT / package).glob("*.py")) if path.stem != "__init__"
    }


def imported(name: str, path: Path) -> set[str]:
    """The project modules a module imports, anywhere in it (function-level imports included)."""
    package = name.split(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = f"{package}.{node.module}" if node.level == 1 and node.module else (node.module or package)
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found |= {n for n in names if n in modules()}
    return found - {name}


def test_no_module_is_longer_than_a_sitting():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_two_modules_import_each_other_even_through_others():
    graph = {name: imported(name, path) for name, path in modules().items()}

    def reaches(start: str, goal: str) -> bool:
        seen, stack = set(), list(graph[start])
        while stack:
            node = stack.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                stack += graph[node]
        return False

    cycles = sorted((a, b) for a in graph for b in graph[a] if reaches(b, a))
    assert not cycles, f"import cycles through: {cycles}"


@pytest.mark.parametrize("name", [n for n in modules() if n.startswith("melee_encode.")])
def test_the_encoder_never_imports_torch(name):
    tree = ast.parse(modules()[name].read_text())
    roots = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    roots |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not roots & {"torch", "melee_model"}, name


def test_the_sampler_needs_no_torch():
    tree = ast.parse((ROOT / "melee_model" / "sampler.py").read_text())
    roots = {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    roots |= {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert "torch" not in roots
