"""Trains a small model under AccelerateCB; run by tests/integration/test_accelerate_multiprocess.py with torchrun.

Every process builds the same data; Accelerate gives each its shard. Rank 0 writes the final weights.
Usage: torchrun --standalone --nproc_per_node 2 train_weighted.py OUT --loss weighted --gas 2 --bs 4
"""

import argparse
import atexit

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner, NormalizedLoss
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB
from minilearn.losses import WeightedCrossEntropy


def dataset(n=64, seed=0):
    """Features, labels and token weights; many weights are zero so denominators differ a lot
    between micro-batches and processes."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.randint(0, 3, (n,), generator=g)
    w = torch.rand(n, generator=g) * (torch.rand(n, generator=g) > 0.6)
    return TensorDataset(x, y, w)


class WeightedCE(nn.Module):
    """-(sum w lp) / (sum w), as a NormalizedLoss."""

    def forward(self, logits, target, weights):
        lp = torch.log_softmax(logits.float(), -1).gather(-1, target[:, None])[:, 0]
        return NormalizedLoss(-(weights * lp).sum(), weights.sum())


def micro_batch_mean(logits, target, weights):
    """The same weighted loss, but returned as a plain ratio: normalised per micro-batch."""
    return WeightedCE()(logits, target, weights).value


def plain_ce(logits, target, weights):
    return F.cross_entropy(logits, target)


def model(seed=1):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--loss", choices=["weighted", "plugin", "micro_batch_mean", "plain"], default="weighted",
                   help="plugin: minilearn.losses.WeightedCrossEntropy, the same loss as weighted")
    p.add_argument("--gas", type=int, default=1)
    p.add_argument("--bs", type=int, default=8, help="micro-batch size per process")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--custom", action="store_true", help="use AccelerateCustomCB to own the loss")
    p.add_argument("--report-exit", action="store_true",
                   help="print, at the very end of the interpreter's exit handlers, whether a process group is left")
    args = p.parse_args()
    if args.report_exit:  # registered before AccelerateCB registers its own, so it runs after it
        atexit.register(lambda: print(f"process group left at exit: {torch.distributed.is_initialized()}", flush=True))

    m = model()
    dls = DataLoaders(DataLoader(dataset(), batch_size=args.bs), DataLoader(dataset(seed=5), batch_size=args.bs))
    loss = {"weighted": WeightedCE(), "plugin": WeightedCrossEntropy(), "micro_batch_mean": micro_batch_mean,
            "plain": plain_ce}[args.loss]
    if args.custom:
        learn = Learner(m, dls, lr=0.5, cbs=AccelerateCustomCB(loss, gradient_accumulation_steps=args.gas))
    else:
        learn = Learner(m, dls, loss, lr=0.5, cbs=AccelerateCB(gradient_accumulation_steps=args.gas))
    learn.fit(args.epochs)
    if learn.is_main_process:
        torch.save({k: v.clone() for k, v in learn.unwrapped_model.state_dict().items()}, args.out)


if __name__ == "__main__":
    main()
