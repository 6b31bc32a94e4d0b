"""The exactness matrix of real models on real launches: {TinyCausalLM, GPT-2 from a config, a
Llama-style config} x {weighted cross-entropy, the key-token loss, a sum-reduced importance-sampling
loss, DPO through LogprobLossCB, the fused head} x {1 process, accumulation 2, 2 processes,
2 processes x accumulation 2}, each on padded dict batches whose lengths differ between batches and
processes. Every cell must end with the weights and the epoch table (train and valid loss) of one
process training on the whole global batch without Accelerate.

The cells run in two launches (one process, then torchrun with two), each training every cell of its
half of the matrix: starting a process group costs more than a cell."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_accelerate_multiprocess import assert_same, torchrun

sys.path.insert(0, str(Path(__file__).parent / "dist"))
import matrix  # noqa: E402

SCRIPT = Path(__file__).parent / "dist" / "matrix.py"
TOL = 1e-5


@pytest.fixture(scope="module")
def launches(tmp_path_factory):
    return launch_matrix(tmp_path_factory.mktemp("matrix"))


def launch_matrix(out: Path) -> dict:
    """{processes: {cell: (weights, table)}} from one plain launch and one torchrun launch (files in `out`)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    res = subprocess.run([sys.executable, str(SCRIPT), str(out / "one.pt"), "--gas", "1", "2"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return {1: torch.load(out / "one.pt", weights_only=True),
            2: torchrun(out / "two.pt", "--gas", "1", "2", script=SCRIPT, timeout=600)}


_references = {}


def reference(model_name, loss):
    """One process, no Accelerate, the whole global batch at once."""
    if (model_name, loss) not in _references:
        _references[model_name, loss] = matrix.run(model_name, loss, matrix.GLOBAL_BS, 1, accelerate=False)
    return _references[model_name, loss]


@pytest.mark.parametrize("processes, gas", [(1, 1), (1, 2), (2, 1), (2, 2)],
                         ids=["1-process", "accumulation-2", "2-processes", "2-processes-x-accumulation-2"])
@pytest.mark.parametrize("loss", matrix.LOSSES)
@pytest.mark.parametrize("model_name", matrix.MODELS)
def test_every_launch_gives_the_weights_and_table_of_one_process(launches, model_name, loss, processes, gas):
    weights, table = launches[processes][f"{model_name}/{loss}/gas{gas}"]
    want_weights, want_table = reference(model_name, loss)
    assert_same(weights, want_weights, tol=TOL)
    assert [(r["epoch"], r["phase"]) for r in table] == [(r["epoch"], r["phase"]) for r in want_table]
    assert [r["phase"] for r in table] == ["train", "valid"] * matrix.EPOCHS
    for got, want in zip(table, want_table):
        assert got["loss"] == pytest.approx(want["loss"], abs=TOL), (got, want)


@pytest.mark.parametrize("loss", matrix.LOSSES)
@pytest.mark.parametrize("model_name", matrix.MODELS)
def test_every_cell_really_trains(model_name, loss):
    # a cell whose weights barely move would pass the matrix above whatever the launch did
    start = matrix.network(model_name, loss).state_dict()
    weights, table = reference(model_name, loss)
    moved = max((weights[k] - start[k]).abs().max().item() for k in start)
    assert moved > 100 * TOL, moved
    assert table[-2]["loss"] < table[0]["loss"]


def test_the_processes_batches_really_differ_in_length():
    # two processes of four sequences each: the first global batch's halves are padded differently,
    # so the gathering in validation and the metrics must pad and unpad
    lengths = [b["input_ids"].shape[1] for b in torch.utils.data.DataLoader(
        matrix.sequences(16, seed=1), batch_size=4, collate_fn=matrix.collate)]
    assert len(set(lengths)) > 1, lengths
