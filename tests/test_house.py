"""The house keeps its shape: no import cycle, no private import across modules, modules and functions of a size
one concern needs (the caps are a smell detector: past them, look for two concerns in one place), and every
growth plan is one registered definition that the settings, the CLI and the docs read."""

import ast
import inspect
from pathlib import Path

from conftest import run_cli

ROOT = Path(__file__).resolve().parents[1]
MODULE_LINES, FUNCTION_LINES = 600, 80


def _imports(path: Path, package: str) -> set[str]:
    """The ligo modules a module imports (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            found |= {target, *(f"{target}.{a.name}" for a in node.names)}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ligo"):
            found |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return found


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the directed graph, as the nodes along it, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    return next((c for node in sorted(graph) if node not in state and (c := visit(node))), None)


def test_the_cycle_finder_finds_cycles():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_no_two_modules_import_each_other():
    """The import graph of ligo/ has no cycle, direct or through other modules (and no module imports a
    private name of another)."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (ROOT / "ligo").rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        graph[name] = {t for t in _imports(path, package) if t in modules and t not in (name, "ligo")}
    assert _cycle(graph) is None
    private = [(p.name, a.name) for p in (ROOT / "ligo").rglob("*.py") for n in ast.walk(ast.parse(p.read_text()))
               if isinstance(n, ast.ImportFrom) and (n.level or (n.module or "").startswith("ligo"))
               for a in n.names if a.name.startswith("_") and a.name != "__version__"]
    assert private == []


def test_the_code_keeps_its_shape():
    big = [p.name for p in (ROOT / "ligo").rglob("*.py") if len(p.read_text().splitlines()) > MODULE_LINES]
    assert big == []
    long = [(p.name, f.name, f.end_lineno - f.lineno + 1) for p in (ROOT / "ligo").rglob("*.py")
            for f in ast.walk(ast.parse(p.read_text())) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > FUNCTION_LINES]
    assert long == []
    from ligo.training import train

    assert len(inspect.signature(train).parameters) < 8


def test_every_plan_is_one_registered_definition_that_the_settings_the_cli_and_the_docs_read():
    """A plan added to the registry is a choice of GrowthPlan, a choice of --width/--depth with its help, and a
    row of docs/method.md's table of plans; an unknown name is one clear error."""
    import pytest

    from ligo.config import GrowthPlan
    from ligo.errors import LigoError
    from ligo.plans import DEPTH, WIDTH

    for name in WIDTH:
        assert GrowthPlan(width=name).width == name
    with pytest.raises(LigoError, match="width must be one of auto, " + ", ".join(WIDTH)):
        GrowthPlan(width="nope")
    help_text = " ".join(run_cli("grow", "--help", check=True).stdout.split())
    docs = (ROOT / "docs" / "method.md").read_text()
    for registry in (WIDTH, DEPTH):
        for name, init in registry.items():
            assert "{" + ",".join(["auto", *registry]) + "}" in help_text and name in help_text
            assert f"| `{name}` |" in docs, f"docs/method.md's table of plans lacks {name}"
