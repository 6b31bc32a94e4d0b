"""Exact resume under several processes, run by tests/integration/test_resume_multiprocess.py.

`python -m torch.distributed.run --nproc_per_node 2 resume.py OUT --mode full|interrupt|resume`:
- full: 3 epochs uninterrupted, SaveModelCB saving after every epoch into OUT.saves, CSVLoggerCB
  writing OUT.csv;
- interrupt: the same fit, saved in the middle of epoch 1 into OUT.ck and stopped;
- resume: two fresh learners, started from other random states and weights, resume from OUT.ck
  and from the end of epoch 0 of the full run.
Each process draws its own dropout masks (its own seed), so every process's random states matter.
OUT gets the final weights of every process: {"full": [rank 0's, rank 1's], "main_after_removal": [...],
"history": the epoch table, "preds": each process's get_preds(with_loss=True)} or
{"mid_epoch": [...], "epoch_end": [...]}.
"""

import argparse
import random

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import Callback, DataLoaders, Learner
from minilearn.callbacks import AccelerateCB, CSVLoggerCB, MetricsCB, OneCycleCB, SaveModelCB
from minilearn.distributed import gather_objects, rank

EPOCHS, INTERRUPT_AT = 3, (1, 5)  # (epoch, batch) of the mid-epoch save


class SaveThenInterrupt(Callback):
    order = 100

    def __init__(self, path):
        self.path = path

    def after_batch(self, learn):
        if learn.training and (learn.epoch, learn.iter) == INTERRUPT_AT:
            learn.save(self.path)
            raise KeyboardInterrupt


def learner(seed: int) -> Learner:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 3, generator=g)
    y = x.sum(1, keepdim=True)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.3), nn.ReLU(), nn.Linear(8, 1))
    dls = DataLoaders(DataLoader(TensorDataset(x[:64], y[:64]), batch_size=4, shuffle=True),
                      DataLoader(TensorDataset(x[64:94], y[64:94]), batch_size=8))  # 8, 8, 8, 6: uneven shards
    return Learner(model, dls, F.mse_loss, lr=0.05, opt_func=torch.optim.Adam, cbs=[MetricsCB(), AccelerateCB()])


def seed_process(seed: int) -> None:
    torch.manual_seed(seed + rank())
    random.seed(seed + rank())


def weights(learn: Learner) -> list[list[torch.Tensor]]:
    return gather_objects([p.detach().clone() for p in learn.model.parameters()])


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--mode", choices=["full", "interrupt", "resume"])
    a = p.parse_args()
    out = {}
    if a.mode == "resume":
        for name, ck, cbs in [("mid_epoch", f"{a.out}.ck", []),
                              ("epoch_end", f"{a.out}.saves/epoch-0000", [SaveModelCB(every_epoch=True, path=f"{a.out}.again")])]:
            learn = learner(seed=5)
            seed_process(50)  # a new launch starts from other random states
            learn.fit(EPOCHS, cbs=[OneCycleCB(0.1), *cbs], resume=ck)
            out[name] = weights(learn)
    else:
        learn = learner(seed=0)
        seed_process(100)
        if a.mode == "full":
            learn.fit(EPOCHS, cbs=[OneCycleCB(0.1), SaveModelCB(every_epoch=True, keep=3, path=f"{a.out}.saves"),
                                   CSVLoggerCB(f"{a.out}.csv")])
            out["full"] = weights(learn)
            out["history"] = next(cb for cb in learn.cbs if isinstance(cb, MetricsCB)).history
            preds = learn.get_preds(with_loss=True)
            out["preds"] = gather_objects((preds.preds, preds.targets, preds.losses))
            # A temporary AccelerateCB, once removed, leaves each process knowing whether it is the main one.
            learn.remove_cbs([cb for cb in learn.cbs if isinstance(cb, AccelerateCB)])
            out["main_after_removal"] = gather_objects(learn.is_main_process)
        else:
            try:
                learn.fit(EPOCHS, cbs=[OneCycleCB(0.1), SaveThenInterrupt(f"{a.out}.ck")])
            except KeyboardInterrupt:
                pass
    if rank() == 0:
        torch.save(out, a.out)


if __name__ == "__main__":
    main()
