"""Two real processes (torchrun, gloo on CPU) running DPO with LogprobLossCB give the weights of one
process on the same global batch: `fn` sees the gathered pairs, each process back-propagates its own.
With dropout, two passes give direct autograd's weights: each process replays its own random state."""

import sys
from pathlib import Path

import pytest
import torch
from support import assert_same, torchrun
from torch.utils.data import DataLoader

from minilearn import DataLoaders, Learner

sys.path.insert(0, str(Path(__file__).parent / "dist"))
import train_dpo as script  # noqa: E402

SCRIPT = Path(__file__).parent / "dist" / "train_dpo.py"


def one_process(args):
    dls = DataLoaders(DataLoader(script.pairs(), batch_size=2 * args.bs, collate_fn=script.collate), [])
    learn = Learner(script.model(), dls, lr=0.5, cbs=script.callbacks(args))
    learn.fit(1)
    return learn.model.state_dict()


@pytest.mark.parametrize("args", [["--bs", "4"], ["--bs", "4", "--two-pass", "--micro", "3"]])
def test_two_processes_give_the_weights_of_one_process(tmp_path, args):
    got = torchrun(tmp_path / "w.pt", *args, script=SCRIPT)
    want = one_process(script.parse(["out", *args]))
    assert max((want[k] - script.model().state_dict()[k]).abs().max().item() for k in want) > 1e-2  # it trained
    assert_same(got, want, tol=2e-6)


def test_with_dropout_two_processes_train_with_two_passes_like_direct_autograd(tmp_path):
    got = torchrun(tmp_path / "w.pt", "--bs", "4", "--dropout", "0.2", script=SCRIPT)
    plain = one_process(script.parse(["out", "--bs", "4"]))  # without dropout
    assert max((got["direct"][k] - plain[k]).abs().max().item() for k in plain) > 1e-3  # the masks mattered
    assert_same(got["two_pass"], got["direct"], tol=2e-6)


def test_the_processes_batches_really_differ_in_length():
    # the property that makes the test above check padding, gathering and unpadding
    loader = DataLoader(script.pairs(), batch_size=4, collate_fn=script.collate)
    lengths = [b["input_ids"].shape[1] for b in loader]
    assert len(set(lengths[:2])) == 2 or len(set(lengths[2:4])) == 2, lengths
    assert torch.equal(script.collate(script.pairs()[:2])["attention_mask"].sum(1),
                       torch.tensor([len(s) for p in script.pairs()[:2] for s in p]))
