"""Rerun hashes from the imports (codebrain/sources.py): each rule's code hash covers exactly the package modules
its command can run, without docstrings and comments."""

import re
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, TINY, workflow_copy

from codebrain.sources import PACKAGE, RECORD_KEEPING, code_hash, command_modules, part


def rule_bodies() -> dict[str, str]:
    """{rule: its text} of every rule file."""
    found = {}
    for path in (REPO / "workflow" / "rules").glob("*.smk"):
        pattern = r"^\s*(?:rule|checkpoint) (\w+):(.*?)(?=^\s*(?:rule|checkpoint) |\Z)"
        found.update(re.findall(pattern, path.read_text(), re.M | re.S))
    return found


def rule_commands() -> dict[str, str]:
    """{rule: the codebrain subcommand its rerun hash is of} (its `code=command_code("...")` parameter)."""
    return {rule: code[1] for rule, body in rule_bodies().items()
            if (code := re.search(r'code=command_code\("([\w-]+)"\)', body))}


def test_each_command_hashes_what_it_imports():
    assert "codebrain.models.fsq" not in command_modules("train-direct")  # the regressor has no code
    assert "codebrain.models.fsq" in command_modules("train-stage1")
    assert "codebrain.data.layouts" in command_modules("extract-slices")  # the label mapping
    for module in ("codebrain.data.augment", "codebrain.evaluation.metrics"):  # the data and the kept checkpoint
        assert module in command_modules("train-stage1") and module in command_modules("train-direct")
    assert not any(m.startswith("codebrain.models") or m.startswith("codebrain.training")
                   for m in command_modules("extract-slices"))
    every = set().union(*map(command_modules, rule_commands().values()))
    assert not {m for m in every if part(m) in RECORD_KEEPING}  # a log message reruns nothing


def test_every_rule_hashes_the_command_it_runs():
    """download_raw has none: what it fetches is the URL list's (and its checksums), not the code's."""
    commands = rule_commands()
    for rule, body in rule_bodies().items():
        ran = [c for c in re.findall(r"codebrain(?:\.cli)? ([a-z][\w-]+)", body) if c != "with-gpus"]
        ran = [] if rule == "download_raw" else ran
        assert commands.get(rule) == (ran[0] if ran else None), rule
    assert {"train_stage1", "train_direct", "extract_slices", "evaluate_model", "train_segmenter"} <= set(commands)


@pytest.fixture
def package_copy(tmp_path):
    copy = tmp_path / "codebrain"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_a_docstring_or_comment_edit_changes_no_hash(package_copy):
    before = {c: code_hash(c, package_copy) for c in ("train-stage1", "extract-slices", "register")}
    path = package_copy / "data" / "slices.py"
    text = path.read_text()
    docstring = re.search(r'"""(.+?)"""', text, re.S)[1]
    path.write_text(text.replace(docstring, "Reworded entirely.", 1) + "\n# a comment\n")
    assert {c: code_hash(c, package_copy) for c in before} == before
    path = package_copy / "data" / "registration.py"
    path.write_text(path.read_text() + "\nEDITED = 1\n")
    after = {c: code_hash(c, package_copy) for c in before}
    assert after["register"] != before["register"]
    assert after["extract-slices"] == before["extract-slices"] and after["train-stage1"] == before["train-stage1"]


def rule_graph(workdir, snakefile) -> dict[str, set[str]]:
    """{rule: the rules that consume its outputs}, from Snakemake's own --rulegraph."""
    dot = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir),
                          "--configfile", str(TINY), "--rulegraph"], capture_output=True, text=True, check=True).stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    graph = {name: set() for name in names.values()}
    for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M):
        graph[names[a]].add(names[b])
    return graph


def downstream(rules: set[str], graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(rules), list(rules)
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.slow
def test_editing_each_module_plans_exactly_the_rules_that_run_it(workdir, tmp_path):
    """Every package module edited in turn, in a copy of the workflow: a dry run over the finished tiny DAG plans
    the rules whose command's closure holds the module and what consumes their outputs, nothing else; a docstring
    edit plans nothing."""
    copy = tmp_path / "workflow-copy"
    shutil.copytree(workflow_copy(), copy)
    commands = rule_commands()
    graph = rule_graph(workdir[0], copy / "Snakefile")
    closures = {rule: command_modules(command, copy / "codebrain") for rule, command in commands.items()}
    checked = 0
    for path in sorted((copy / "codebrain").rglob("*.py")):
        module = ".".join(("codebrain",) + path.relative_to(copy / "codebrain").with_suffix("").parts).removesuffix(".__init__")
        expected = downstream({rule for rule, closure in closures.items() if module in closure}, graph) & set(graph)
        original = path.read_text()
        path.write_text(original + "\nEDITED_FOR_THE_TEST = 1\n")
        try:
            result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d",
                                     str(workdir[0]), "--configfile", str(TINY), "-n", "--quiet", "rules"],
                                    capture_output=True, text=True, check=True)
        finally:
            path.write_text(original)
        planned = {m[1] for m in re.finditer(r"^(\w+)\s+\d+$", result.stdout + result.stderr, re.M)} - {"total"}
        planned_rules = planned - {"all"}
        assert planned_rules == expected - {"all"}, f"{module}: planned {sorted(planned_rules)}, expected {sorted(expected)}"
        checked += 1
    assert checked >= 50
    path = copy / "codebrain" / "models" / "fsq.py"
    original = path.read_text()
    path.write_text(original.replace('"""', '"""Reworded. ', 1) + "\n# and a comment\n")
    result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(copy / "Snakefile"), "-d", str(workdir[0]),
                             "--configfile", str(TINY), "-n"], capture_output=True, text=True, check=True)
    assert "Nothing to be done" in result.stdout + result.stderr
