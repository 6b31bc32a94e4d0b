"""Callbacks do not find each other, read from the source with `ast`:

- no module of the callback library imports or names a callback class defined in another module (by
  its name in code, or as a string to compare a class name with): what one callback needs from
  another is published on the learner (`learn.gradients`, `learn.ends_step`, ...);
- nothing in the library asks the learner for an attribute with a fallback (`getattr(learn, name,
  default)`, `hasattr(learn, name)`): every attribute a callback reads is declared in `Learner.__init__`.
"""

import ast
from pathlib import Path

import pytest

import minilearn.callbacks
from minilearn import Callback

ROOT = Path(__file__).resolve().parents[2]


def callback_classes() -> dict[str, str]:
    """Every callback class the library ships: its name, and the file that defines it."""
    return {name: Path(obj.__module__.replace(".", "/")).name for name in minilearn.callbacks.__all__
            if isinstance(obj := getattr(minilearn.callbacks, name), type) and issubclass(obj, Callback)}


def names_of_other_callbacks(source: str, own_file: str, classes: dict[str, str]) -> set[str]:
    """The callback classes of other files that `source` names: in code, imports, or an exact string."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        name = (node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute)
                else node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None)
        if isinstance(node, ast.ImportFrom):
            found |= {a.name for a in node.names if a.name in classes and classes[a.name] != own_file}
        if name in classes and classes[name] != own_file:
            found.add(name)
    return found


def learner_fallbacks(source: str) -> list[str]:
    """`getattr(learn, ..., default)` and `hasattr(learn, ...)` calls in `source`."""
    return [ast.unparse(node) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args
            and isinstance(node.args[0], ast.Name) and node.args[0].id == "learn"
            and (node.func.id == "hasattr" or (node.func.id == "getattr" and len(node.args) == 3))]


def test_no_callback_module_names_a_callback_of_another_module():
    classes = callback_classes()
    assert {"AccelerateCB", "GradClipCB", "TrainCB", "LogprobLossCB"} <= set(classes)
    found = {path.name: names for path in sorted((ROOT / "callbacks").glob("*.py")) if path.name != "__init__.py"
             if (names := names_of_other_callbacks(path.read_text(), path.stem, classes))}
    assert found == {}


def test_nothing_in_the_library_asks_the_learner_with_a_fallback():
    found = {str(path.relative_to(ROOT)): calls for folder in ("minilearn", "callbacks")
             for path in sorted((ROOT / folder).rglob("*.py")) if (calls := learner_fallbacks(path.read_text()))}
    assert found == {}


@pytest.mark.parametrize("source, own_file, expected", [
    ("from minilearn.callbacks.accelerate import AccelerateCB", "logprob_loss", {"AccelerateCB"}),
    ("ok = any(type(cb).__name__ == 'GradClipCB' for cb in learn.cbs)", "accelerate", {"GradClipCB"}),
    ("ok = isinstance(cb, minilearn.callbacks.TrainCB)", "accelerate", {"TrainCB"}),
    ("class AccelerateCustomCB(AccelerateCB): pass", "accelerate", set()),  # its own file's class
    ('"""Use it instead of GradClipCB."""', "accelerate", set()),  # prose may mention one
])
def test_the_callback_rule_catches_what_it_forbids(source, own_file, expected):
    assert names_of_other_callbacks(source, own_file, callback_classes()) == expected


def test_the_fallback_rule_catches_what_it_forbids():
    assert learner_fallbacks("x = getattr(learn, 'recorder', None)\ny = hasattr(learn, 'opt')\nz = getattr(learn, n)") \
        == ["getattr(learn, 'recorder', None)", "hasattr(learn, 'opt')"]
