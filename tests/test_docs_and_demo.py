"""Docstring examples run, the README's example runs, and `python -m minilearn demo` works."""

import doctest
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MODULES = ["minilearn.corpus", "minilearn.models", "minilearn.fused_head", "minilearn.normalized_loss", "minilearn.callback", "minilearn.data", "minilearn.inputs", "minilearn.learner", "minilearn.train",
           "minilearn.lr_finder", "minilearn.callbacks.metrics", "minilearn.callbacks.schedule",
           "minilearn.custom_loss", "minilearn.sequence_logprobs", "minilearn.distributed", "minilearn.callbacks.logprob_loss",
           "minilearn.testing", "minilearn.testing.report", "minilearn.testing.tiny", "minilearn.testing.loss_checks",
           "minilearn.testing.callback_checks", "minilearn.checkpoint",
           "minilearn.random_state", "minilearn.callbacks.monitor", "minilearn.callbacks.save_model"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, globs={"torch": importlib.import_module("torch"), **vars(mod)})
    assert result.failed == 0


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    example = re.search(r"<!-- example -->\s*```python\n(.*?)```", text, re.S).group(1)
    assert 10 <= len(example.strip().splitlines()) <= 20
    exec(compile(example, "README example", "exec"), {})


def test_readme_shows_the_test_command_that_ci_runs():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    cmd = re.search(r"^(python -m pytest.*)$", readme, re.M).group(1).strip()
    assert cmd in ci


def test_demo_runs_writes_the_plot_and_prints_the_table(tmp_path):
    png = tmp_path / "loss.png"
    out = subprocess.run([sys.executable, "-m", "minilearn", "demo", "--epochs", "1", "--chars", "40000",
                          "--out", str(png)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "MPLBACKEND": "Agg"})
    assert out.returncode == 0, out.stderr
    assert png.stat().st_size > 1000 and png.read_bytes()[:4] == b"\x89PNG"
    assert "phase" in out.stdout and "mean_sample_weight" in out.stdout
    assert re.search(r"key-token accuracy: plain cross-entropy [\d.]+, key-token weighted [\d.]+", out.stdout)


def test_demo_help_lists_its_options():
    out = subprocess.run([sys.executable, "-m", "minilearn", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and all(o in out.stdout for o in ("--epochs", "--chars", "--alpha", "--out"))


def test_readme_fault_table_cites_tests_that_exist():
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", (ROOT / "README.md").read_text())
    assert len(cited) >= 15
    for file, name in cited:
        assert f"def {name}(" in (ROOT / "tests" / file).read_text(), f"{file}::{name}"
