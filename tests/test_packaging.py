"""The built wheel carries `callbacks/` as `minilearn/callbacks/`, and the README's promises hold."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out), str(ROOT)], check=True, capture_output=True)
    (whl,) = out.glob("minilearn-*.whl")
    return whl


def test_wheel_contains_callbacks_as_a_subpackage(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert "minilearn/callbacks/__init__.py" in names
    assert "minilearn/callbacks/metrics.py" in names and "minilearn/learner.py" in names
    assert "minilearn/testing/loss_checks.py" in names
    assert not any(n.startswith("callbacks/") for n in names)  # no top-level `callbacks` package


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


def test_core_does_not_import_the_callback_library():
    for path in (ROOT / "minilearn").glob("*.py"):
        text = path.read_text()
        assert "minilearn.callbacks import" not in text or path.name == "demo.py", path


def test_every_public_module_has_all_and_docstrings():
    import importlib
    import inspect
    mods = ["minilearn." + p.stem for p in (ROOT / "minilearn").glob("*.py") if p.stem not in ("__init__", "__main__")]
    mods += ["minilearn.callbacks." + p.stem for p in (ROOT / "callbacks").glob("*.py") if p.stem != "__init__"]
    for name in mods:
        mod = importlib.import_module(name)
        assert mod.__doc__, name
        for public in mod.__all__:
            obj = getattr(mod, public)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert obj.__doc__, f"{name}.{public} has no docstring"
