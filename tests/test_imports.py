"""The package's parts import each other in the layer order docs/design.md draws ("Imports"): provenance and io
at the bottom, the CLI on top, each part only from layers below it. A part importing upwards, or a part in no
layer, fails here, naming the import; so does a cycle."""

import ast
import shutil

from codebrain.sources import PACKAGE, imported_modules, parsed, part

LAYERS = [  # bottom first, as docs/design.md draws them
    {"codebrain", "codebrain.provenance", "codebrain.io", "codebrain.sources", "codebrain.validation"},
    {"codebrain.data", "codebrain.models", "codebrain.gpus"},
    {"codebrain.checkpoints"},
    {"codebrain.rebuild"},
    {"codebrain.registry"},
    {"codebrain.evaluation"},
    {"codebrain.tracking", "codebrain.pyfunc_model"},
    {"codebrain.training"},
    {"codebrain.config"},
    {"codebrain.workflow", "codebrain.cli"},
]


def import_graph(package=PACKAGE) -> dict[str, set[str]]:
    """Every import of a codebrain module by another part, function-level imports included (the walk the rerun
    hashes use: codebrain/sources.py)."""
    graph: dict[str, set[str]] = {}
    for path in package.rglob("*.py"):
        module = ".".join(("codebrain",) + path.relative_to(package).with_suffix("").parts).removesuffix(".__init__")
        graph.setdefault(part(module), set())
        for name in imported_modules(parsed(path), package):
            if part(name) != part(module) and part(name) != "codebrain":
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


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """"a -> b" for each import of a part from its own layer or above, and each part in no layer."""
    layer = {part: level for level, parts in enumerate(LAYERS) for part in parts}
    unplaced = [f"{part}: in no layer of LAYERS (docs/design.md)" for part in sorted(graph) if part not in layer]
    upward = [f"{a} -> {b}" for a in sorted(graph) for b in sorted(graph[a])
              if a in layer and layer.get(b, len(LAYERS)) >= layer[a]]
    return unplaced + upward


def test_a_planted_upward_import_is_caught(tmp_path):
    """A copy of the package whose io module imports the training loop: a bottom layer importing the top."""
    copy = tmp_path / "codebrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "io.py", "a") as handle:
        handle.write("\n\ndef late():\n    from codebrain.training.loop import fit\n")
    assert layer_violations(import_graph(copy)) == ["codebrain.io -> codebrain.training"]
    (copy / "newpart.py").write_text("import codebrain.io\n")
    assert "codebrain.newpart: in no layer of LAYERS (docs/design.md)" in layer_violations(import_graph(copy))


def test_every_part_imports_only_from_layers_below_it():
    assert layer_violations(import_graph()) == []


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
