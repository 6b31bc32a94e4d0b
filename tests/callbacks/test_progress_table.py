"""ProgressCB's table, with and without metrics."""

import torch.nn.functional as F
from torch import nn
from minilearn import DataLoaders, Learner
from minilearn.callbacks import MetricsCB, ProgressCB
from conftest import uneven_batches
from minilearn.metrics import mae


def test_progress_prints_the_table(capsys):
    batches = uneven_batches([4] * 5)
    learn = Learner(nn.Linear(3, 1), DataLoaders(batches, batches[:2]), F.mse_loss,
                    cbs=[MetricsCB(mae=mae), ProgressCB(plot=True)])
    learn.fit(2)
    out = capsys.readouterr().out
    header = [line for line in out.splitlines() if "phase" in line]
    assert header and header[0].split()[-5:] == ["epoch", "phase", "loss", "mae", "time"]
    rows = [line.split() for line in out.splitlines() if line.split()[1:2] in (["train"], ["valid"])]
    assert [r[:2] for r in rows[-4:]] == [["0", "train"], ["0", "valid"], ["1", "train"], ["1", "valid"]]


def test_progress_without_metrics_and_over_an_iterator_without_length(capsys):
    class Stream:
        train = property(lambda self: iter(uneven_batches([4, 4])))
        valid = []
    Learner(nn.Linear(3, 1), Stream(), F.mse_loss, cbs=ProgressCB()).fit(1)
    assert "train" in capsys.readouterr().out
