"""minilearn.losses as a package: every module has `__all__` and docstrings, the package exports what
its modules export."""

import importlib
import inspect
import pkgutil

import pytest

import minilearn.losses as losses

MODULES = sorted(m.name for m in pkgutil.walk_packages(losses.__path__, prefix="minilearn.losses."))


def test_the_walk_finds_the_sequence_losses():
    assert {"minilearn.losses.weighted_ce", "minilearn.losses.sequence.preference"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES + ["minilearn.losses", "minilearn.callbacks.loss"])
def test_every_public_name_has_a_docstring(name):
    mod = importlib.import_module(name)
    objects = [getattr(mod, public) for public in mod.__all__]
    assert mod.__doc__ and all(o.__doc__ for o in objects if inspect.isclass(o) or inspect.isfunction(o)), name


def test_the_package_exports_every_module_export():
    for name in MODULES:
        for public in importlib.import_module(name).__all__:
            assert public in losses.__all__ and getattr(losses, public) is not None, (name, public)
    from minilearn.callbacks import __all__
    assert "LossCB" in __all__
