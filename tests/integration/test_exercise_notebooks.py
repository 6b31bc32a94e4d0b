"""The coursework notebooks: each solution runs top to bottom; each exercise, run unsolved, stops at
its check cell with the checker's message (CheckFailed naming the unfinished code), not with a
traceback from inside minilearn; an exercise and its solution differ only in the cells to fill in."""

import ast

import nbformat
import pytest
from nbclient.exceptions import CellExecutionError
from support import NBS_DIR, run_notebook

NAMES = sorted(p.name for p in (NBS_DIR / "exercises").glob("*.ipynb"))
# What each unsolved exercise must report: the failed check and the unfinished code it names.
UNSOLVED = {
    "01_grad_norm_callback.ipynb": ["FAIL  fit    GradNormCB.before_fit raised NotImplementedError",
                                    "(during before_fit)", "FAIL  norms"],
    "02_key_token_loss.ipynb": ["FAIL  scalar  MyKeyTokenLoss raised NotImplementedError"],
    "03_dpo_loss.ipynb": ["FAIL  scalar  DPOLoss raised NotImplementedError"],
}


def read(folder, name):
    return nbformat.read(NBS_DIR / folder / name, as_version=4)


def test_every_exercise_has_a_solution_and_an_expected_failure():
    assert NAMES == sorted(p.name for p in (NBS_DIR / "solutions").glob("*.ipynb")) == sorted(UNSOLVED)


@pytest.mark.parametrize("name", NAMES)
def test_exercise_and_solution_differ_only_in_the_cells_to_fill_in(name):
    exercise, solution = read("exercises", name), read("solutions", name)
    assert len(exercise.cells) == len(solution.cells)
    to_fill = 0
    for ex, sol in zip(exercise.cells, solution.cells):
        if "exercise" in ex.metadata.get("tags", []):
            to_fill += 1
            assert "raise NotImplementedError" in ex.source and "NotImplementedError" not in sol.source
        else:
            assert ex.source == sol.source
    assert to_fill >= 1


@pytest.mark.parametrize("folder", ["exercises", "solutions"])
@pytest.mark.parametrize("name", NAMES)
def test_every_assert_says_what_failed(name, folder):
    # A bare `assert` fails a cell with an empty AssertionError; checker reports end in raise_if_failed().
    bare = [ast.unparse(node) for cell in read(folder, name).cells if cell.cell_type == "code"
            for node in ast.walk(ast.parse(cell.source)) if isinstance(node, ast.Assert) and node.msg is None]
    assert not bare, f"{folder}/{name}: asserts without a message: {bare}"


@pytest.mark.parametrize("name", NAMES)
def test_solution_runs_top_to_bottom(name):
    run_notebook(read("solutions", name), NBS_DIR / "solutions")


@pytest.mark.parametrize("name", NAMES)
def test_unsolved_exercise_stops_at_its_check_cell_with_the_checkers_message(name):
    nb = read("exercises", name)
    with pytest.raises(CellExecutionError) as info:
        run_notebook(nb, NBS_DIR / "exercises")
    assert info.value.ename == "CheckFailed"
    for text in UNSOLVED[name]:
        assert text in info.value.evalue
    failed = [c for c in nb.cells if c.cell_type == "code" and any(o.output_type == "error" for o in c.outputs)]
    assert len(failed) == 1 and "raise_if_failed()" in failed[0].source
    # The cells to fill in only define things: the first error is the check's.
    assert all("exercise" not in c.metadata.get("tags", []) for c in failed)
