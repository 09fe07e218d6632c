"""The package layout: imports run one way, and no module imports inside a function.

Layers, each importing only the ones before it:
    autograd, bpe  <-  gpt.errors, gpt.cli, gpt.core  <-  gpt.io  <-  gpt.data  <-  gpt.chat
                   <-  gpt.train  <-  gpt.finetune  <-  gpt's command modules
`autograd` and `bpe` know nothing of each other or of gpt.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("autograd", "bpe", "gpt")
# Imports allowed inside a function: optional dependencies that may be missing.
OPTIONAL = {"matplotlib", "matplotlib.pyplot", "readline"}
# Each layer may import its own and the layers to its left.
LAYERS = [
    {"autograd"}, {"bpe"}, {"gpt.errors", "gpt.cli", "gpt.core"}, {"gpt.io"}, {"gpt.data"}, {"gpt.chat"},
    {"gpt.train"}, {"gpt.finetune"}, {"gpt.download", "gpt.evaluate", "gpt"},
]
SEPARATE = {("autograd", "bpe"), ("bpe", "autograd")}


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imported(name: str, path: Path, tree: ast.AST) -> list[tuple[str, ast.AST]]:
    """(module imported, node) for every project import in the file, relative ones resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.append((base, node))
    return [(m, n) for m, n in out if m.split(".")[0] in PACKAGES]


def layer_of(module: str) -> int:
    for index, layer in enumerate(LAYERS):
        if any(module == top or module.startswith(top + ".") for top in layer):
            # the most specific match wins ("gpt" alone is the top layer)
            if module == "gpt" or not module.startswith("gpt.") or "gpt" not in layer:
                return index
    return len(LAYERS) - 1


def test_no_import_inside_a_function():
    offenders = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    names = [node.module or "."]
                else:
                    continue
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} imports {n}"
                              for n in names if n not in OPTIONAL]
    assert not offenders, "\n".join(offenders)


def test_imports_run_one_way():
    wrong = []
    for name, path in modules().items():
        tree = ast.parse(path.read_text())
        for target, node in imported(name, path, tree):
            here, there = layer_of(name), layer_of(target)
            if there > here or (name.split(".")[0], target.split(".")[0]) in SEPARATE:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: {name} imports {target}")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle_between_modules():
    all_modules = modules()
    graph = {name: set() for name in all_modules}
    for name, path in all_modules.items():
        for target, _ in imported(name, path, ast.parse(path.read_text())):
            while target and target not in all_modules:
                target = target.rpartition(".")[0]
            if target and target != name:
                graph[name].add(target)
    # Package __init__ files re-export their children: an edge parent -> child is expected, and
    # a child importing a sibling goes through the parent's __init__ only by Python's design.
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if nxt in trail[-1:] or (node.startswith(nxt + ".")):
                continue                       # a module importing its own package's __init__
            if state.get(nxt) == 1:
                pytest.fail("import cycle: " + " -> ".join(trail[trail.index(nxt):] + [nxt])
                            if nxt in trail else f"import cycle through {node} -> {nxt}")
            if nxt not in state:
                visit(nxt, trail + [nxt])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [name])
