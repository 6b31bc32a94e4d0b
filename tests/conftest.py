import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from minilearn import DataLoaders, Learner


def regression_dls(n_train=40, n_valid=16, bs=8, n_in=3, seed=0):
    """Small deterministic regression data: tuple batches (x (bs, n_in), y (bs, 1))."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n_in, 1, generator=g)
    xs = torch.randn(n_train + n_valid, n_in, generator=g)
    ys = xs @ w + 0.1 * torch.randn(n_train + n_valid, 1, generator=g)
    train = DataLoader(TensorDataset(xs[:n_train], ys[:n_train]), batch_size=bs)
    valid = DataLoader(TensorDataset(xs[n_train:], ys[n_train:]), batch_size=bs)
    return DataLoaders(train, valid)


@pytest.fixture
def make_learner():
    """Build a tiny regression Learner; keyword arguments go to Learner."""
    def make(cbs=None, seed=0, dls=None, **kwargs):
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        kwargs.setdefault("loss_func", F.mse_loss)
        return Learner(model, dls or regression_dls(), cbs=cbs, **kwargs)
    return make
