"""The package's parts form a DAG of imports (docs/design.md, "Imports"): io and tracking at the bottom, then
data and models, checkpoints, evaluation, training, and the CLI on top. A cycle fails here, naming it."""

import ast
from pathlib import Path

import codebrain

PACKAGE = Path(codebrain.__file__).parent


def part(module: str) -> str:
    """codebrain.training.loop -> codebrain.training; codebrain.io -> codebrain.io (a top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2])


def import_graph() -> dict[str, set[str]]:
    """Every import of a codebrain module by another part, function-level imports included."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        module = ".".join(("codebrain",) + path.relative_to(PACKAGE).with_suffix("").parts).removesuffix(".__init__")
        graph.setdefault(part(module), set())
        for node in ast.walk(ast.parse(path.read_text())):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
            for name in names:
                if name.startswith("codebrain.") and part(name) != part(module):
                    graph[part(module)].add(part(name))
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """Depth-first search; the first cycle found as [a, b, ..., a], or None."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_find_cycle_finds_a_planted_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_package_parts_import_each_other_without_a_cycle():
    graph = import_graph()
    assert {"codebrain.data", "codebrain.models", "codebrain.training", "codebrain.evaluation",
            "codebrain.io", "codebrain.checkpoints"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_model_code_never_imports_the_pipeline():
    """STYLE.md: model files import neither accelerate, mlflow nor snakemake, nor the rest of the package."""
    for path in (PACKAGE / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    assert name.split(".")[0] not in ("accelerate", "mlflow", "snakemake"), f"{path.name}: {name}"
                    assert not name.startswith("codebrain.") or name.startswith("codebrain.models"), f"{path.name}: {name}"
