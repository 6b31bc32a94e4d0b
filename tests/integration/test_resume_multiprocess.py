"""Exact resume under two real processes (torchrun, gloo on CPU): a fit saved in the middle of an
epoch, or by SaveModelCB at an epoch's end, and resumed in a new launch ends with the weights of the
fit never interrupted, bit for bit, on every process. Each process has its own random states (dropout)
and its share of a shuffled loader; the checkpoint keeps every process's."""

import csv
import sys
from pathlib import Path

import pytest
import torch
from support import torchrun

from minilearn import CheckpointError
from minilearn.checkpoints.files import read_checkpoint

sys.path.insert(0, str(Path(__file__).parent / "dist"))
import resume as script  # noqa: E402

SCRIPT = Path(__file__).parent / "dist" / "resume.py"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "run.pt"
    full = torchrun(out, "--mode", "full", script=SCRIPT)
    torchrun(out, "--mode", "interrupt", script=SCRIPT)
    resumed = torchrun(out, "--mode", "resume", script=SCRIPT)
    return out, full, resumed


@pytest.mark.parametrize("where", ["mid_epoch", "epoch_end"])
def test_a_resumed_two_process_fit_gives_the_uninterrupted_weights_bit_for_bit(runs, where):
    _, full, resumed = runs
    for process in (0, 1):
        assert all(torch.equal(p, q) for p, q in zip(full["full"][process], resumed[where][process])), process


def test_each_process_knows_whether_it_is_the_main_one_after_accelerate_cb_is_removed(runs):
    # So that `if learn.is_main_process: save(...)` after a fit with a temporary AccelerateCB saves once.
    _, full, _ = runs
    assert full["main_after_removal"] == [True, False]


def test_the_csv_log_of_two_processes_is_written_once_and_holds_the_global_table(runs):
    out, full, _ = runs
    with open(f"{out}.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(int(r["epoch"]), r["phase"], float(r["loss"])) for r in rows] == \
        [(h["epoch"], h["phase"], h["loss"]) for h in full["history"]]


def test_get_preds_of_two_processes_is_the_whole_validation_set_of_one_process(runs):
    # 30 validation rows in batches of 8: the processes' shares are uneven, and Accelerate pads the
    # shorter one with repeated rows, which must not come back.
    _, full, _ = runs
    learn = script.learner(seed=0)
    with torch.no_grad():
        for p, w in zip(learn.model.parameters(), full["full"][0]):
            p.copy_(w)
    want = learn.get_preds(with_loss=True)
    for preds, targets, losses in full["preds"]:  # every process got the whole set
        assert preds.shape == want.preds.shape == (30, 1)
        torch.testing.assert_close(preds, want.preds, rtol=1e-6, atol=1e-6)
        assert torch.equal(targets, want.targets)
        torch.testing.assert_close(losses, want.losses, rtol=1e-5, atol=1e-6)


def test_the_checkpoint_keeps_each_process_s_own_random_states(runs):
    out, _, _ = runs
    state, _ = read_checkpoint(f"{out}.ck")
    ranks = state["ranks"]
    assert len(ranks) == 2
    # Seeded differently, the processes' torch states differ: restoring one for both would be wrong.
    assert not torch.equal(ranks[0]["random"]["torch"], ranks[1]["random"]["torch"])
    assert state["position"]["skip"] == script.INTERRUPT_AT[1] + 1


def test_resuming_a_two_process_checkpoint_in_one_process_is_an_error_naming_both_counts(runs):
    out, _, _ = runs
    learn = script.learner(seed=0)
    with pytest.raises(CheckpointError, match=r"saved by 2 process\(es\) and this fit runs 1"):
        learn.fit(script.EPOCHS, resume=f"{out}.ck")
    learn.fit(1)  # still usable
