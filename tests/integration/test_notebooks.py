"""Every notebook in nbs/ runs top to bottom (on a small setting) and is stored without outputs.

The coursework notebooks in nbs/exercises/ and nbs/solutions/ are tested in test_exercise_notebooks.py:
the exercises are meant to stop at their check cell until solved."""


import nbformat
import pytest

from support import NBS_DIR

NBS = sorted(NBS_DIR.glob("*.ipynb"))
ALL_NBS = [p for p in sorted(NBS_DIR.rglob("*.ipynb")) if ".ipynb_checkpoints" not in p.parts]


@pytest.mark.parametrize("path", NBS, ids=[p.name for p in NBS])
def test_notebook_runs_top_to_bottom(path, site):
    # The documentation build runs each one (a failing cell fails it), as its tutorial page.
    ran = nbformat.read(NBS_DIR.parent / "docs" / "tutorials" / path.name, as_version=4)
    assert [c.source for c in ran.cells if c.cell_type == "code"] == [
        c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code" and c.source.strip())
    assert not [o for c in ran.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert (site / "tutorials" / path.stem / "index.html").exists()


@pytest.mark.parametrize("path", ALL_NBS, ids=[str(p.relative_to(NBS_DIR)) for p in ALL_NBS])
def test_notebook_is_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name} has stored outputs"


def test_the_tutorials_are_there():
    names = {p.name for p in NBS}
    assert {"00_quickstart.ipynb", "01_callbacks.ipynb"} <= names
