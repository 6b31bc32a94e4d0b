"""Records each process's random stream under AccelerateCB; run by tests/integration/test_accelerate_multiprocess.py.

Rank 0 saves, for every rank, the seed its torch generator was given and the dropout mask of its first
training batch. Usage: torchrun --standalone --nproc_per_node 2 random_streams.py OUT [--seed 7]
"""

import argparse

import torch
from torch import nn

from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import AccelerateCB


class FirstMask(Callback):
    """Keeps which outputs dropout zeroed in the first training batch."""

    def after_predict(self, learn):
        if learn.training and learn.epoch == 0 and learn.iter == 0:
            self.mask, self.seed = (learn.preds == 0), torch.initial_seed()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args()
    torch.manual_seed(0)  # the script's one seed, the same on every process
    model = nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5))
    batches = [(torch.ones(8, 4), torch.zeros(8, 64))] * 4
    record = FirstMask()
    learn = Learner(model, DataLoaders(batches, []), nn.functional.mse_loss,
                    cbs=[AccelerateCB(seed=args.seed), record])
    learn.fit(1)
    seen = [None, None]
    torch.distributed.all_gather_object(seen, (record.seed, record.mask))
    if learn.is_main_process:
        torch.save({"seeds": [s for s, _ in seen], "masks": [m for _, m in seen]}, args.out)


if __name__ == "__main__":
    main()
