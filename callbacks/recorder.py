"""Recorder: the learning rate and loss of every training batch, and a plot of them."""

import torch

from minilearn.callback import Callback
from minilearn.order import Order

__all__ = ["Recorder"]


class Recorder(Callback):
    """Record the learning rate and loss of each training batch, and the validation loss of each
    epoch (from MetricsCB, when there is one). Reachable as `learn.recorder` while it is in the
    learner; a Recorder passed to one fit leaves with it, so keep your own reference.

    >>> # rec = Recorder(); learn.fit(3, cbs=[MetricsCB(), rec]); rec.plot_loss()
    """

    order = Order.RECORDER

    def __init__(self):
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self.valid_losses: list[tuple[int, float]] = []

    def before_fit(self, learn):
        learn.recorder = self
        self.lrs, self.losses, self.valid_losses = [], [], []
        self._pending: list[torch.Tensor] = []

    def removed(self, learn):
        if learn.recorder is self:
            learn.recorder = None

    def after_loss(self, learn):
        if learn.training:
            self.lrs.append(learn.opt.param_groups[0]["lr"])
            self._pending.append(learn.loss.detach())  # read at the end of fit: no sync per batch

    def after_epoch(self, learn):
        row = learn.epoch_metrics
        if not learn.training and row and row["phase"] == "valid" and "loss" in row:
            self.valid_losses.append((len(self.lrs), row["loss"]))

    def cleanup_fit(self, learn):
        if self._pending:
            self.losses += torch.stack(self._pending).float().cpu().tolist()
        self._pending = []

    def plot_loss(self, skip_start: int = 0, with_valid: bool = True):
        """Plot the training loss per batch (and the validation loss per epoch); returns the axes."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        ax.plot(range(skip_start, len(self.losses)), self.losses[skip_start:], label="train")
        if with_valid and self.valid_losses:
            its, vals = zip(*self.valid_losses)
            ax.plot(its, vals, "o-", label="valid")
        ax.set_xlabel("training batch")
        ax.set_ylabel("loss")
        ax.legend()
        return ax

    def plot_lr(self):
        """Plot the learning rate of each training batch; returns the axes."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        ax.plot(self.lrs)
        ax.set_xlabel("training batch")
        ax.set_ylabel("learning rate")
        return ax
