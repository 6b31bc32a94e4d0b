"""The library's import rules, read from the source with `ast` (imports inside functions count too):

- the loop core (the modules at the top of `minilearn/`) never imports the callback library;
- `losses/` knows no learner and no callback;
- only `testing/` and `demo/` import the callback library (and the callback library itself);
- no private name (`_name`) is imported from another folder;
- the folders (each core module counts on its own) import each other without cycles.

`minilearn/__init__.py` is the public face of the package and imports from every folder; it is not
a part of any folder, so it is left out of the graph.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CALLBACKS = "minilearn.callbacks"
KNOWS_A_LEARNER = ("minilearn.learner", "minilearn.callback", "minilearn.train", "minilearn.lr_finder", CALLBACKS)


def module_name(path: Path) -> str:
    """`minilearn/losses/masked.py` -> `minilearn.losses.masked`; `callbacks/x.py` -> `minilearn.callbacks.x`."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "callbacks":
        parts = ["minilearn", *parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def part_of(module: str) -> str:
    """What a module belongs to: its first folder under `minilearn` (`minilearn.losses`), or itself for
    a core module at the top (`minilearn.learner`)."""
    return ".".join(module.split(".")[:2])


def imports(source: str, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """`(imported module, names)` for every import statement of `source`, anywhere in it."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def library_imports() -> dict[str, list[tuple[str, list[str]]]]:
    files = [*(ROOT / "minilearn").rglob("*.py"), *(ROOT / "callbacks").rglob("*.py")]
    return {module_name(f): [(m, n) for m, n in imports(f.read_text(), module_name(f), f.stem == "__init__")
                             if m == "minilearn" or m.startswith("minilearn.")]
            for f in files}


def broken_rules(graph: dict[str, list[tuple[str, list[str]]]]) -> list[str]:
    """Every way `graph` (module -> its imports of the library) breaks the rules, as sentences."""
    broken = []
    for module, found in graph.items():
        if module == "minilearn":
            continue
        mine = part_of(module)
        for target, names in found:
            theirs = part_of(target)
            if mine == theirs:
                continue
            if theirs == CALLBACKS and mine not in ("minilearn.testing", "minilearn.demo"):
                broken.append(f"{module} imports the callback library ({target})")
            if mine == "minilearn.losses" and theirs in KNOWS_A_LEARNER:
                broken.append(f"{module} (a loss) imports {target}, which knows the learner or callbacks")
            private = [n for n in names if n.startswith("_")] + [p for p in target.split(".") if p.startswith("_")]
            if private:
                broken.append(f"{module} imports the private {private} from another folder ({target})")
    edges: dict[str, set[str]] = {}
    for module, found in graph.items():
        if module != "minilearn":
            edges.setdefault(part_of(module), set()).update(part_of(t) for t, _ in found if part_of(t) != part_of(module)
                                                           and t != "minilearn")
    broken += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    return broken


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each node that lies on one (depth-first search)."""
    found, state = [], {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                found.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def test_the_library_keeps_its_import_rules():
    graph = library_imports()
    assert {"minilearn.learner", "minilearn.logprobs.per_token", "minilearn.callbacks.accelerate"} <= set(graph)
    assert broken_rules(graph) == []


def test_the_core_and_the_folders_are_what_the_layout_says():
    parts = {part_of(m) for m in library_imports()}
    assert {"minilearn.logprobs", "minilearn.losses", "minilearn.checkpoints", "minilearn.testing", "minilearn.demo",
            "minilearn.callbacks", "minilearn.learner", "minilearn.callback", "minilearn.events"} <= parts


@pytest.mark.parametrize("module, source, expected", [
    ("minilearn.learner", "from minilearn.callbacks import ProgressCB", "imports the callback library"),
    ("minilearn.losses.masked", "import minilearn.callbacks.metrics", "imports the callback library"),
    ("minilearn.losses.masked", "def f():\n    from minilearn.learner import Learner", "knows the learner"),
    ("minilearn.losses.weighted_ce", "from minilearn.callback import Callback", "knows the learner"),
    ("minilearn.logprobs.forward_backward", "from minilearn.losses.masked import _mask", "private ['_mask']"),
    ("minilearn.checkpoints.files", "from ..losses.masked import _mask", "private ['_mask']"),
])
def test_each_rule_catches_what_it_forbids(module, source, expected):
    graph = {module: [(m, n) for m, n in imports(source, module, False) if m.startswith("minilearn")]}
    assert any(expected in b for b in broken_rules(graph)), broken_rules(graph)


def test_a_private_name_within_a_folder_is_allowed():
    graph = {"minilearn.losses.key_token": [("minilearn.losses.masked", ["_helper"])]}
    assert broken_rules(graph) == []


def test_a_cycle_between_folders_is_caught():
    graph = {"minilearn.logprobs.per_token": [("minilearn.losses.masked", ["masked_sum"])],
             "minilearn.losses.masked": [("minilearn.logprobs.per_token", ["token_logprobs"])]}
    assert broken_rules(graph) == ["import cycle: minilearn.logprobs -> minilearn.losses -> minilearn.logprobs"]
