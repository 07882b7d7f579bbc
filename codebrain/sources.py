"""Which of the package's files a `codebrain` subcommand runs, and a hash of their code: the rerun trigger of the
step that runs it (Snakemake's own code trigger sees only a rule's shell text).

The files are the import closure of the subcommand's function, read from the source with `ast` (nothing is
imported): the imports of its CLI module's top level, of the function and of the module's functions it names,
then every import, function-level ones included, of each module reached. `codebrain.tracking` and
`codebrain.provenance` decide where and how a step is recorded, not what it computes: the closure does not enter
them, so an edited log message reruns nothing. The hash is of each module's source as `ast` reads it, docstrings
removed (`without_docstrings`), so neither does a comment or a reworded docstring."""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).parent
CLI_MODULES = ("codebrain.cli.data", "codebrain.cli.train", "codebrain.cli.evaluate")
COMMAND_MODULES = ("codebrain.cli", "codebrain.cli.__main__", *CLI_MODULES)  # their functions run one command at a time
RECORD_KEEPING = ("codebrain.tracking", "codebrain.provenance")  # parts the closure does not enter


def module_file(module: str, package: Path = PACKAGE) -> Path | None:
    """codebrain.data.slices -> <package>/data/slices.py (or the package's __init__.py); None if no such file."""
    parts = module.split(".")[1:]
    base = package.joinpath(*parts)
    candidates = [base / "__init__.py"] + ([base.with_suffix(".py")] if parts else [])
    return next((path for path in candidates if path.is_file()), None)


def parsed(path: Path) -> ast.Module:
    return parsed_text(path.read_text())


@cache
def parsed_text(text: str) -> ast.Module:
    return ast.parse(text)


def import_targets(nodes) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(module, names) of each codebrain import among `nodes`: `import codebrain.x` is (codebrain.x, ()),
    `from codebrain.x import y, z` is (codebrain.x, (y, z))."""
    targets = []
    for node in nodes:
        if isinstance(node, ast.Import):
            targets += [(alias.name, ()) for alias in node.names if alias.name.split(".")[0] == "codebrain"]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "codebrain":
            targets.append((node.module, tuple(alias.name for alias in node.names)))
    return tuple(targets)


def resolved(targets, package: Path) -> set[str]:
    """The modules import targets name: `from codebrain.x import y` is codebrain.x.y where that is a module, else
    codebrain.x."""
    found = set()
    for module, names in targets:
        submodules = {f"{module}.{name}" for name in names if module_file(f"{module}.{name}", package)}
        found |= submodules | ({module} if len(submodules) < len(names) or not names else set())
    return found


def imported_modules(node: ast.AST, package: Path = PACKAGE) -> set[str]:
    """The codebrain modules the imports anywhere under `node` name (function-level imports included)."""
    return resolved(import_targets(ast.walk(node)), package)


@cache
def file_imports(text: str, top_level: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    tree = parsed_text(text)
    return import_targets(tree.body if top_level else ast.walk(tree))


def with_parents(module: str) -> set[str]:
    """Importing codebrain.a.b runs codebrain/__init__.py and codebrain/a/__init__.py too."""
    parts = module.split(".")
    return {".".join(parts[:n]) for n in range(1, len(parts) + 1)}


def part(module: str) -> str:
    """codebrain.training.loop -> codebrain.training; codebrain.io -> codebrain.io (a top-level module)."""
    return ".".join(module.split(".")[:2])


def closure(roots: set[str], package: Path = PACKAGE) -> set[str]:
    """Every codebrain module that importing `roots` can run: of COMMAND_MODULES only what their top level
    imports (their functions are the subcommands, of which one runs), of the others every import; RECORD_KEEPING
    is not entered."""
    seen: set[str] = set()
    todo = set().union(*map(with_parents, roots))
    while todo:
        module = todo.pop()
        path = module_file(module, package)
        if module in seen or path is None or part(module) in RECORD_KEEPING:
            continue
        seen.add(module)
        imports = resolved(file_imports(path.read_text(), module in COMMAND_MODULES), package)
        todo |= set().union(*map(with_parents, imports)) - seen
    return seen


def command_function(command: str, package: Path = PACKAGE) -> tuple[str, ast.FunctionDef]:
    """(CLI module, function) of a subcommand: `train-direct` is `cmd_train_direct` of one of CLI_MODULES."""
    name = "cmd_" + command.replace("-", "_")
    for module in CLI_MODULES:
        for node in parsed(module_file(module, package)).body:
            if isinstance(node, ast.FunctionDef) and node.name == name:
                return module, node
    raise KeyError(f"codebrain {command}: no function {name} in {', '.join(CLI_MODULES)}")


def command_modules(command: str, package: Path = PACKAGE) -> set[str]:
    """The import closure of one subcommand: its CLI module's top-level imports, the imports of its function and of
    the same module's functions it calls (transitively), and all that these import."""
    module, function = command_function(command, package)
    tree = parsed(module_file(module, package))
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    roots = {module}
    called, todo = set(), [function]
    while todo:
        node = todo.pop()
        called.add(node.name)
        roots |= imported_modules(node, package)
        todo += [functions[n.id] for n in ast.walk(node)
                 if isinstance(n, ast.Name) and n.id in functions and n.id not in called]
    return closure(roots, package)


@cache
def without_docstrings(text: str) -> str:
    """A module's source as `ast` sees it, every docstring removed and comments gone: what its hash is of."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree)


def code_hash(command: str, package: Path = PACKAGE) -> str:
    """Hash of the code a subcommand runs: its closure's modules without docstrings."""
    digest = hashlib.sha256()
    for module in sorted(command_modules(command, package)):
        digest.update(module.encode() + without_docstrings(module_file(module, package).read_text()).encode())
    return digest.hexdigest()[:16]
