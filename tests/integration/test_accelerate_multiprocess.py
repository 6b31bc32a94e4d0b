"""Two real processes (torchrun, gloo on CPU) give the weights of one process on the same global batch."""

import sys
from pathlib import Path

import pytest
import torch


sys.path.insert(0, str(Path(__file__).parent / "dist"))
import train_weighted as script  # noqa: E402

from support import SCRIPT, torchrun, one_process, assert_same  # noqa: F401


@pytest.mark.parametrize("args, loss, global_bs", [
    (["--loss", "weighted", "--bs", "8"], "weighted", 16),
    (["--loss", "weighted", "--bs", "4", "--gas", "2"], "weighted", 16),
    (["--loss", "weighted", "--bs", "4", "--gas", "2", "--custom"], "weighted", 16),
    # the plug-in loss returns a LossTensor: the same exact normalisation as NormalizedLoss
    (["--loss", "plugin", "--bs", "4", "--gas", "2"], "weighted", 16),
    (["--loss", "plugin", "--bs", "4", "--gas", "2", "--custom"], "weighted", 16),
    (["--loss", "plain", "--bs", "8"], "plain", 16),
])
def test_two_processes_match_one_process_on_the_global_batch(tmp_path, args, loss, global_bs):
    got = torchrun(tmp_path / "w.pt", *args)
    assert_same(got, one_process(loss, global_bs))


def test_every_process_shuts_its_process_group_down_before_the_interpreter_finalizes(tmp_path):
    # Left to interpreter shutdown, a gloo worker thread still releasing the last collective's
    # tensors aborted a rank now and then (SIGABRT); AccelerateCB ends the group in an exit handler.
    out = []
    torchrun(tmp_path / "w.pt", "--bs", "8", "--epochs", "1", "--report-exit", stdout=out)
    assert out[0].count("process group left at exit: False") == 2, out[0][-2000:]


def test_weighted_loss_denominators_really_differ_between_ranks_and_micro_batches():
    # the property the test above relies on: otherwise a per-micro-batch mean would pass too
    ds = script.dataset()
    sums = [ds.tensors[2][i:i + 4].sum().item() for i in range(0, 16, 4)]
    assert max(sums) > 1.5 * min(sums)


def test_the_same_loss_normalised_per_micro_batch_would_not_match(tmp_path):
    # what a naive loop does with a weighted loss: each process's ratio, averaged over processes
    got = torchrun(tmp_path / "w.pt", "--loss", "micro_batch_mean", "--bs", "8")
    ref = one_process("weighted", 16)
    assert max((got[k] - ref[k]).abs().max().item() for k in ref) > 1e-3


STREAMS = Path(__file__).parent / "dist" / "random_streams.py"


def test_each_process_draws_its_own_dropout_masks_from_one_seed(tmp_path):
    first = torchrun(tmp_path / "a.pt", script=STREAMS)
    again = torchrun(tmp_path / "b.pt", script=STREAMS)
    assert not torch.equal(first["masks"][0], first["masks"][1])  # each process its own masks
    assert first["seeds"][1] == first["seeds"][0] + 1  # seed + process index
    # the script's torch.manual_seed(0) reproduces every process's stream
    assert first["seeds"] == again["seeds"] and all(torch.equal(a, b) for a, b in zip(first["masks"], again["masks"]))


def test_a_given_seed_starts_process_i_at_seed_plus_i(tmp_path):
    assert torchrun(tmp_path / "a.pt", "--seed", "7", script=STREAMS)["seeds"] == [7, 8]
