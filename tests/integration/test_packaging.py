"""The built wheel carries `callbacks/` as `minilearn/callbacks/` and every folder, installs and imports, and
every public module has an `__all__` and docstrings."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (whl,) = out.glob("minilearn-*.whl")
    return whl


def test_wheel_contains_callbacks_as_a_subpackage_and_every_folder(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "minilearn/callbacks/__init__.py" in names
    assert "minilearn/callbacks/metrics.py" in names and "minilearn/learner.py" in names
    assert not any(n.startswith("callbacks/") for n in names)  # no top-level `callbacks` package
    # Every module of every folder of the library (a folder left out of pyproject.toml would be missing).
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "minilearn").rglob("*.py")}
    assert sources <= set(names), sorted(sources - set(names))


def test_wheel_installs_and_imports(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, capture_output=True)
    code = ("import minilearn.callbacks as c, minilearn; "
            "assert c.__file__.startswith(%r), c.__file__; print(sorted(c.__all__))" % str(target))
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={"PYTHONPATH": str(target)},
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "MetricsCB" in out.stdout


def test_every_public_module_has_all_and_docstrings():
    import importlib
    import inspect
    import pkgutil
    import minilearn
    import minilearn.callbacks
    mods = [m.name for pkg in (minilearn, minilearn.callbacks)
            for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + ".") if m.name != "minilearn.__main__"]
    for name in mods:
        mod = importlib.import_module(name)
        assert mod.__doc__, name
        for public in mod.__all__:
            obj = getattr(mod, public)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__, f"{name}.{public} has no docstring"
