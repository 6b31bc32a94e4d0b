"""minilearn.losses as a package: every module has `__all__` and docstrings, its examples run, the
wheel config ships it, and it imports the core only (never the callback library)."""

import doctest
import importlib
import inspect
import tomllib
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["minilearn.losses." + p.stem for p in sorted((ROOT / "minilearn" / "losses").glob("*.py"))
           if p.stem != "__init__"] + ["minilearn.callbacks.loss"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, globs={"torch": torch, **vars(mod)})
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES + ["minilearn.losses"])
def test_every_public_name_has_a_docstring(name):
    mod = importlib.import_module(name)
    objects = [getattr(mod, public) for public in mod.__all__]
    assert mod.__doc__ and all(o.__doc__ for o in objects if inspect.isclass(o) or inspect.isfunction(o)), name


def test_the_package_exports_every_module_export():
    import minilearn.losses as losses
    for name in MODULES[:-1]:
        for public in importlib.import_module(name).__all__:
            assert public in losses.__all__ and getattr(losses, public) is not None, (name, public)
    from minilearn.callbacks import LossCB, __all__
    assert "LossCB" in __all__ and LossCB.order == 10


def test_the_wheel_config_ships_the_losses_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "minilearn.losses" in config["tool"]["setuptools"]["packages"]


def test_losses_do_not_import_the_callback_library():
    for path in (ROOT / "minilearn" / "losses").glob("*.py"):
        assert "minilearn.callbacks" not in path.read_text(), path
