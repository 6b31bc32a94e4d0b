"""Every notebook in nbs/ runs top to bottom (on a small setting) and is stored without outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NBS = sorted((Path(__file__).resolve().parents[1] / "nbs").rglob("*.ipynb"))
NBS = [p for p in NBS if ".ipynb_checkpoints" not in p.parts]


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_runs_top_to_bottom(path, monkeypatch):
    monkeypatch.setenv("MINILEARN_SMALL", "1")
    monkeypatch.setenv("MPLBACKEND", "module://matplotlib_inline.backend_inline")
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"


def test_the_tutorials_are_there():
    names = {p.name for p in NBS}
    assert {"00_quickstart.ipynb", "01_callbacks.ipynb"} <= names
