"""The exactness matrix of real models on real launches: {TinyCausalLM, GPT-2 from a config, a
Llama-style config} x {weighted cross-entropy, the key-token loss, a sum-reduced importance-sampling
loss, DPO through LogprobLossCB, the fused head} x {1 process, accumulation 2, 2 processes,
2 processes x accumulation 2}, each on padded dict batches whose lengths differ between batches and
processes. Every cell must end with the weights and the epoch table (train and valid loss) of one
process training on the whole global batch without Accelerate.

A row with dropout (GPT-2, its default 0.1): there every process draws its own masks, so no run on
other micro-batches or processes can have the masks of one process on the whole batch. "Exact" then
means the same masks per micro-batch and process: the launch ends with the weights of a hand-written
loop in one process that keeps one random stream per process (seeded as AccelerateCB seeds them),
runs each micro-batch from its process's stream, and divides the summed totals by the summed
denominators of the global step.

The cells run in two launches (one process, then torchrun with two), each training every cell of its
half of the matrix: starting a process group costs more than a cell."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed
from torch.utils.data import DataLoader
from support import assert_same, torchrun

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


def replayed_streams(processes: int, gas: int) -> dict:
    """The dropout row's reference: the global step's micro-batches, each process's from its own random
    stream, in one process without Accelerate; the weighted cross-entropy's exact ratio over the step."""
    net = matrix.model(matrix.DROPOUT_MODEL)
    opt = torch.optim.SGD(net.parameters(), lr=matrix.LRS["weighted_ce"])
    batches = list(DataLoader(matrix.sequences(32, seed=0), batch_size=matrix.GLOBAL_BS // (processes * gas),
                              collate_fn=matrix.collate))
    streams = []
    for rank in range(processes):
        set_seed(matrix.DROPOUT_SEED + rank)
        streams.append(torch.get_rng_state())
    loss = matrix.WeightedCrossEntropy()
    net.train()

    def loader_starts():  # a DataLoader draws its workers' base seed from the stream at each iteration
        for rank in range(processes):
            torch.set_rng_state(streams[rank])
            torch.empty((), dtype=torch.int64).random_()
            streams[rank] = torch.get_rng_state()

    for _ in range(matrix.EPOCHS):
        loader_starts()  # the training pass
        for start in range(0, len(batches), processes * gas):
            window, denominator = batches[start:start + processes * gas], 0.0
            for rank in range(processes):  # process r takes batches r, r + p, ... (Accelerate's sharding)
                torch.set_rng_state(streams[rank])
                for b in window[rank::processes]:
                    out = loss(net(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits,
                               b["target_tokens"], b["weights"])
                    out.total.backward()
                    denominator += out.denominator
                streams[rank] = torch.get_rng_state()
            for p in net.parameters():
                p.grad /= denominator
            opt.step()
            opt.zero_grad()
        loader_starts()  # the validation pass (eval mode: no masks)
    return net.state_dict()


@pytest.mark.parametrize("processes, gas", [(1, 1), (1, 2), (2, 1), (2, 2)],
                         ids=["1-process", "accumulation-2", "2-processes", "2-processes-x-accumulation-2"])
def test_with_dropout_every_launch_gives_the_weights_of_its_masks_replayed(launches, processes, gas):
    weights, table = launches[processes][f"{matrix.DROPOUT_MODEL}/weighted_ce/gas{gas}"]
    assert_same(weights, replayed_streams(processes, gas), tol=TOL)
    if (processes, gas) != (1, 1):  # the masks do differ with the cut, so the comparison is not vacuous
        other = launches[1][f"{matrix.DROPOUT_MODEL}/weighted_ce/gas1"][0]
        assert max((weights[k] - other[k]).abs().max().item() for k in other) > 100 * TOL
