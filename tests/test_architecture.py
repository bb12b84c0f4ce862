"""The house's rules, checked: files a reader takes in one sitting, provider knowledge in providers/, no cycles.

The layers themselves (imports running one way) are import-linter's contract in pyproject.toml, run by
`make lint`; this file checks what a layers contract cannot: sizes, where provider names appear, and cycles
inside a layer (TYPE_CHECKING imports included).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rate_limited_processor"
#: The mock API is a test double with its own layout, not part of the product's layers.
OUTSIDE = {"mock_server"}
MOST_MODULE_LINES, MOST_CLASS_LINES, MOST_FUNCTION_LINES = 500, 250, 80
PROVIDERS = ("anthropic", "azure", "gemini", "openai")
#: Modules outside providers/ that may still name a provider in code: the CLI's help text and examples.
MOST_MODULES_NAMING_A_PROVIDER = 3


def modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if not OUTSIDE.intersection(path.relative_to(PACKAGE).parts):
            yield path


def name_of(path: Path) -> str:
    return ".".join(("rate_limited_processor", *path.relative_to(PACKAGE).with_suffix("").parts)).removesuffix(".__init__")


def test_each_file_is_one_sitting() -> None:
    too_long = []
    for path in modules():
        source = path.read_text()
        if (lines := len(source.splitlines())) > MOST_MODULE_LINES:
            too_long.append(f"{name_of(path)}: {lines} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
                most = MOST_CLASS_LINES if isinstance(node, ast.ClassDef) else MOST_FUNCTION_LINES
                if (lines := (node.end_lineno or node.lineno) - node.lineno + 1) > most:
                    too_long.append(f"{name_of(path)}.{node.name}: {lines} lines (at most {most})")
    assert too_long == []


def _names_a_provider(tree: ast.Module, provider: str) -> bool:
    """In code: an identifier, an imported name or a string literal; docstrings and comments do not count."""
    docstrings = {
        id(node.body[0].value) for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
        and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        text = (
            node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
            else node.name if isinstance(node, ast.alias | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
            else node.module or "" if isinstance(node, ast.ImportFrom)
            else ""
        )
        if provider in text.lower():
            return True
    return False


@pytest.mark.parametrize("provider", PROVIDERS)
def test_provider_knowledge_lives_in_its_provider_module(provider: str) -> None:
    naming = [
        name_of(path) for path in modules()
        if "providers" not in path.relative_to(PACKAGE).parts and _names_a_provider(ast.parse(path.read_text()), provider)
    ]
    assert len(naming) <= MOST_MODULES_NAMING_A_PROVIDER, naming


def _imports(path: Path) -> set[str]:
    """Every module of the package this one imports, at the top, in a function or under TYPE_CHECKING."""
    package = name_of(path).rsplit(".", 0 if path.name == "__init__.py" else 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = f"{base}.{node.module}" if node.level and node.module else base if node.level else node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {name for name in found if name.startswith("rate_limited_processor")}


def test_no_import_cycle_type_checking_imports_included() -> None:
    graph: dict[str, set[str]] = {name_of(path): set() for path in modules()}
    for path in modules():
        graph[name_of(path)] = {name for name in _imports(path) if name in graph and name != name_of(path)}
    # A package's __init__ re-exporting its own modules is not a cycle of the design: leave those edges out.
    for name, targets in graph.items():
        graph[name] = {target for target in targets if not target.startswith(name + ".")}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                cycles.append(" -> ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []
