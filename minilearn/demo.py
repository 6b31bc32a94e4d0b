"""The demo behind `python -m minilearn demo`: train a small classifier on data it generates."""

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from minilearn.data import DataLoaders
from minilearn.learner import Learner

__all__ = ["make_spirals", "run_demo"]


def make_spirals(n: int, n_classes: int = 3, noise: float = 0.15, seed: int = 0) -> TensorDataset:
    """`n` points on `n_classes` interleaved 2-D spiral arms, with labels: a problem a linear model
    cannot solve, so a small MLP has something to learn. Returns a dataset of `((2,), ())` pairs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, n_classes, (n,), generator=g)
    r = torch.rand(n, generator=g)
    theta = r * 3 * math.pi + y * (2 * math.pi / n_classes)
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return TensorDataset(x + noise * r[:, None] * torch.randn(n, 2, generator=g), y)


def accuracy(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of rows of `preds` (N, C) whose argmax equals `target` (N,)."""
    return (preds.argmax(-1) == target).float().mean()


def run_demo(epochs: int = 8, n: int = 6000, bs: int = 64, lr: float = 0.05, out: str = "minilearn_demo_loss.png",
             seed: int = 0) -> dict:
    """Train an MLP on the spirals with a one-cycle schedule, print the epoch table, save the loss
    plot to `out`, and return the last validation row."""
    # Imported here: the core package never imports the callback library at import time.
    import matplotlib
    matplotlib.use("Agg")
    from minilearn.callbacks import DeviceCB, MetricsCB, OneCycleCB, ProgressCB, Recorder

    torch.manual_seed(seed)
    dls = DataLoaders.from_dsets(make_spirals(n, seed=seed), make_spirals(n // 4, seed=seed + 1), bs=bs)
    model = nn.Sequential(nn.Linear(2, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 3))
    learn = Learner(model, dls, F.cross_entropy, lr=lr, opt_func=torch.optim.AdamW,
                    cbs=[DeviceCB(), MetricsCB(accuracy=accuracy), Recorder(), ProgressCB()])
    learn.fit(epochs, cbs=OneCycleCB(lr_max=lr))
    ax = learn.recorder.plot_loss()
    ax.set_title("minilearn demo: spirals, MLP, one-cycle")
    ax.figure.savefig(out, dpi=100)
    print(f"\nloss plot written to {Path(out).resolve()}")
    return learn.epoch_metrics
