"""The package's shape: short functions, short modules, and imports that flow one way (no circles,
no arrow from a floor up to one above it)."""

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "cmae"
MAX_FUNCTION_LINES = 70
MAX_FILE_LINES = 400

# The house, bottom to top (DESIGN.md): a module may import from its own floor and the floors
# below, never from one above. Rooms are the first name under `cmae` ("" is cmae/__init__.py).
FLOORS = [
    {"config", "config_rules", "config_schema", "errors", "distributed"},  # import nothing else of cmae
    {"models", "masking", "losses", "interop", "data"},  # the parts (interop maps weights onto models)
    {"methods"},  # compose the parts into a loss
    {"engine"},  # loops, checkpoints, evaluation
    {"cli", "demo", "export", "visualize", ""},  # the commands
]
FLOOR = {room: level for level, rooms in enumerate(FLOORS) for room in rooms}
# "A method never opens a file; a dataset never knows which method consumes it."
MODEL_SIDE = {"models", "masking", "losses", "interop", "methods"}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(path): path for path in sorted(SRC.rglob("*.py"))}
MODULES = set(FILES)


def cmae_imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every `cmae.*` import in the file, at module level or inside functions;
    `from cmae.a import b` names cmae.a.b when b is a module, else cmae.a."""
    found = []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES]
            if len(submodules) < len(node.names):  # names from the module itself, not only its submodules
                found.append((node.lineno, base))
            found += [(node.lineno, name) for name in submodules]
    return [(line, name) for line, name in found if name == "cmae" or name.startswith("cmae.")]


def room(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


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


def test_every_module_has_a_floor():
    assert not {room(module) for module in MODULES} - set(FLOOR), "place the new module on a floor in FLOORS"


def test_no_import_goes_up_a_floor():
    upward = []
    for module, path in FILES.items():
        for line, imported in cmae_imports(path):
            if FLOOR[room(imported)] > FLOOR[room(module)]:
                upward.append(f"{path.relative_to(SRC)}:{line} imports {imported} (floor {FLOOR[room(imported)]}, "
                              f"above its own {FLOOR[room(module)]})")
    assert not upward, upward


def test_config_imports_nothing_but_its_floor():
    """config.py is the bottom: besides its siblings (errors, rules, the schema reader) no cmae import."""
    imported = {name for _, name in cmae_imports(FILES["cmae.config"])}
    assert imported <= {"cmae.errors", "cmae.config_rules", "cmae.config_schema"}, imported
    for sibling in ("cmae.errors", "cmae.config_rules", "cmae.config_schema"):
        assert {name for _, name in cmae_imports(FILES[sibling])} <= {"cmae.errors"}, sibling


def test_masking_takes_arguments_not_configs():
    assert {name for _, name in cmae_imports(FILES["cmae.masking"])} <= {"cmae.errors"}


def test_the_data_and_the_model_side_do_not_import_each_other():
    crossing = [f"{path.relative_to(SRC)}:{line} imports {imported}" for module, path in FILES.items()
                for line, imported in cmae_imports(path)
                if {room(module), room(imported)} & {"data"} and {room(module), room(imported)} & MODEL_SIDE]
    assert not crossing, crossing


def test_no_import_circle():
    graph = {module: {name for _, name in cmae_imports(path) if name in MODULES} - {module}
             for module, path in FILES.items()}
    done, stack, circles = set(), [], []

    def visit(module: str) -> None:
        if module in stack:
            circles.append(" -> ".join([*stack[stack.index(module):], module]))
            return
        if module in done:
            return
        stack.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert not circles, circles
