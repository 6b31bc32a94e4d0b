"""Recorder's record and plot."""

import torch.nn.functional as F
from torch import nn
from minilearn import DataLoaders, Learner
from minilearn.callbacks import MetricsCB, Recorder
from conftest import uneven_batches


def test_recorder_records_lr_and_loss_of_each_training_batch_and_plots():
    batches = uneven_batches([4] * 5)
    rec = Recorder()
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, batches[:2]), F.mse_loss, lr=0.01,
                    cbs=[MetricsCB(), rec])
    learn.fit(2)
    assert learn.recorder is rec
    assert rec.lrs == [0.01] * 10 and len(rec.losses) == 10
    assert [i for i, _ in rec.valid_losses] == [5, 10]
    ax = rec.plot_loss()
    assert len(ax.lines) == 2 and list(ax.lines[0].get_ydata()) == rec.losses
    rec.plot_lr()
