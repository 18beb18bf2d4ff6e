"""The package's shape: short functions, and models / losses free of the engine."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cmae"
MAX_FUNCTION_LINES = 70
MAX_FILE_LINES = 400


def test_no_function_is_longer_than_70_lines():
    long = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, long


def test_no_module_is_longer_than_400_lines():
    long = [f"{path.relative_to(SRC)} ({lines} lines)" for path in sorted(SRC.rglob("*.py"))
            if (lines := len(path.read_text().splitlines())) > MAX_FILE_LINES]
    assert not long, long


def test_models_and_losses_do_not_import_the_engine():
    offenders = []
    for path in [*sorted((SRC / "models").rglob("*.py")), SRC / "losses.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else \
                [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            offenders += [f"{path.relative_to(SRC)}: {name}" for name in names if name.startswith("cmae.engine")]
    assert not offenders, offenders
