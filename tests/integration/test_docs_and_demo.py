"""Docstring examples run, the README's example runs (the same as Get started's), the docs' fault table
and layout are true, and `python -m minilearn demo` works."""

import doctest
import importlib
import importlib.metadata
import importlib.util
import os
import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
import torch.nn.functional as F
from nbclient import NotebookClient
from torch.utils.data import DataLoader

import minilearn
import minilearn.callbacks
from minilearn import DataLoaders, Learner
from minilearn.__main__ import build_parser
from minilearn.demo.corpus import python_sources
from minilearn.demo.run import NextTokenScoreCB, key_token_accuracy, lm_batch, plot_scores
from minilearn.losses import KeyTokenWeightedLoss
from minilearn.demo.tiny_model import TinyCausalLM

ROOT = Path(__file__).resolve().parents[2]
# Every module of the library, found by walking the packages, so a module that moves or is added
# has its examples run without anyone remembering to list it.
MODULES = sorted(m.name for pkg in (minilearn, minilearn.callbacks)
                 for m in pkgutil.walk_packages(pkg.__path__, prefix=pkg.__name__ + "."))


def test_the_module_list_covers_every_folder():
    assert {"minilearn.learner", "minilearn.logprobs.per_token", "minilearn.checkpoints.files", "minilearn.losses.sequence.preference",
            "minilearn.demo.run", "minilearn.testing.loss_checks", "minilearn.callbacks.accelerate"} <= set(MODULES)


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    mod = importlib.import_module(name)
    result = doctest.testmod(mod, globs={"torch": importlib.import_module("torch"), **vars(mod)})
    assert result.failed == 0


def cell_outputs(source: str) -> list[dict]:
    """The outputs of `source` run as the one cell of a notebook, in a fresh Jupyter kernel."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source)])
    NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    return nb.cells[0].outputs


@pytest.mark.skipif(importlib.util.find_spec("ipywidgets") is not None, reason="tqdm only warns without ipywidgets")
def test_importing_minilearn_in_a_notebook_prints_no_warning():
    # What every notebook met: Accelerate's import of tqdm.auto warns in red in a kernel without ipywidgets.
    assert "IProgress not found" in str(cell_outputs("import accelerate"))
    assert cell_outputs("import minilearn.callbacks, transformers") == []


def example_of(page: Path) -> str:
    return re.search(r"<!-- example -->\s*```python\n(.*?)```", page.read_text(), re.S).group(1)


def test_readme_example_runs():
    example = example_of(ROOT / "README.md")
    assert example == example_of(ROOT / "docs" / "index.md")  # the site's Get started shows the same
    assert 10 <= len(example.strip().splitlines()) <= 20
    scope = {}
    exec(compile(example, "README example", "exec"), scope)
    # It is seeded and prints what its last comment shows (to within a few of the 400 validation
    # samples, should another CPU round differently).
    shown = re.search(r"'loss': ([\d.]+)\.\.\., 'accuracy': ([\d.]+)", example)
    row = scope["learn"].epoch_metrics
    assert row["accuracy"] == pytest.approx(float(shown.group(2)), abs=0.0125) and row["accuracy"] > 0.95
    assert row["loss"] == pytest.approx(float(shown.group(1)), abs=0.01)


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
    # It says what it trained on, so that its figures can be reproduced.
    version = importlib.metadata.version("numpy")
    assert re.search(rf"corpus: 40,000 characters \(sha256 [0-9a-f]{{12}}\) from \d+ files of numpy {version}", out.stdout)
    assert all(f in out.stdout for f in python_sources("numpy", max_chars=40_000)[1])
    assert re.search(r"^0 +train ", out.stdout, re.M)  # epochs counted from 0, as in the plot
    assert re.search(r"key-token accuracy: plain cross-entropy [\d.]+, key-token weighted [\d.]+", out.stdout)


def test_the_demo_plot_numbers_epochs_as_the_tables_do(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to look at its curves
    history = [{"epoch": e, "plain_valid_loss": 3.0 - e, "key_token_accuracy": 0.2 * e, "key_tokens": 9} for e in (0, 1)]
    plot_scores({"plain": history, "weighted": history}, ["np"], tmp_path / "plot.png")
    lines = [line for ax in figures[0].axes for line in ax.lines]
    assert len(lines) == 4 and all(list(line.get_xdata()) == [0, 1] for line in lines)


def write_package(root: Path, name: str, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / name / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / name / rel).write_text(text)
    (root / name / "__init__.py").touch()


def test_the_demo_corpus_is_one_package_densest_files_first_whatever_else_is_installed(tmp_path, monkeypatch):
    use = "import numpy as np\n"
    dense, sparse = use + "np.a\n" * 20, use + "x = 1\n" * 40 + "np.b\n"
    write_package(tmp_path, "codepkg", {"sparse.py": sparse, "sub/dense.py": dense, "plain.py": "x = 1\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    text, files = python_sources("codepkg")
    assert files == ["codepkg/sub/dense.py", "codepkg/sparse.py"] and text == dense + "\n" + sparse
    assert python_sources("codepkg", max_chars=len(dense) + 5) == ((dense + "\n" + sparse)[:len(dense) + 5], files)
    assert python_sources("codepkg", max_chars=len(dense) - 1) == (dense[:-1], files[:1])
    # Another package next to it, however dense, changes nothing: the old corpus read all of site-packages.
    write_package(tmp_path, "otherpkg", {"denser.py": use + "np.c\n" * 50})
    assert python_sources("codepkg") == (text, files)


def test_the_demo_corpus_names_the_package_it_cannot_read(tmp_path, monkeypatch):
    write_package(tmp_path, "nonumpy", {"a.py": "x = 1\n"})
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="'no_such_package' is not one"):
        python_sources("no_such_package")
    with pytest.raises(FileNotFoundError, match=r"no \.py file of 'nonumpy' .* contains any of \('import numpy as np',\)"):
        python_sources("nonumpy")


def test_demo_help_shows_every_option_with_its_default():
    out = subprocess.run([sys.executable, "-m", "minilearn", "demo", "--help"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = " ".join(out.stdout.split()).replace("- ", "-")  # undo argparse's line wrapping
    demo = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    options = [a for a in demo._actions if a.dest != "help"]
    assert {o.dest for o in options} >= {"epochs", "chars", "alpha", "lr", "out", "seed"}
    for o in options:
        assert f"{o.option_strings[0]} {o.metavar or o.dest.upper()}" in text
        assert f"(default: {o.default})" in text, (o.dest, o.default)


def test_demo_scores_both_runs_on_plain_validation_loss_and_key_token_accuracy():
    torch.manual_seed(0)
    rows = torch.randint(0, 12, (10, 9))
    valid = DataLoader(rows, batch_size=4, collate_fn=lm_batch)  # batches of 4, 4 and 2 rows
    model = TinyCausalLM(12, dim=16, n_layers=1, n_heads=2, max_len=9)
    score, key_ids = NextTokenScoreCB([3, 5]), [3, 5]
    learn = Learner(model, DataLoaders(valid, valid), KeyTokenWeightedLoss(key_ids, alpha=3.0), lr=0.01,
                    cbs=[score])
    learn.fit(2)
    assert [r["epoch"] for r in score.history] == [0, 1]
    with torch.no_grad():
        logits = model(rows, torch.ones_like(rows)).double()
    target = rows[:, 1:]
    plain = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten()).item()
    is_key = (target == 3) | (target == 5)
    acc = (logits[:, :-1].argmax(-1) == target)[is_key].double().mean().item()
    last = score.history[-1]
    assert last["plain_valid_loss"] == pytest.approx(plain, rel=1e-6)
    assert last["key_token_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert last["key_tokens"] == is_key.sum().item() > 0
    assert key_token_accuracy(model, valid, key_ids) == (pytest.approx(acc, abs=1e-12), last["key_tokens"])


def test_the_fault_table_cites_tests_that_exist():
    cited = re.findall(r"`(\w+/test_\w+\.py)::(test_\w+)`", (ROOT / "docs" / "explanations" / "faults.md").read_text())
    assert len(cited) >= 15
    for file, name in cited:
        assert f"def {name}(" in (ROOT / "tests" / file).read_text(), f"{file}::{name}"


def test_the_layout_page_names_every_core_module_and_every_folder():
    layout = (ROOT / "docs" / "explanations" / "layout.md").read_text()
    core = [p.name for p in (ROOT / "minilearn").glob("*.py") if p.stem not in ("__init__", "__main__")]
    folders = [p.name + "/" for p in (ROOT / "minilearn").iterdir() if (p / "__init__.py").exists()]
    modules = [p.name for p in (ROOT / "minilearn").glob("*/*.py") if p.stem != "__init__"]
    missing = [name for name in core + folders + modules if name not in layout]
    assert not missing, f"docs/explanations/layout.md leaves out {missing}"
