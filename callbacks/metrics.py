"""MetricsCB: per-epoch averages of the loss, the loss's own metrics and user metrics."""

from collections.abc import Callable

import torch

from minilearn.callback import Callback
from minilearn.data import batch_size
from minilearn.inputs import loss_call, signature_of
from minilearn.order import Order

__all__ = ["MetricsCB"]


class MetricsCB(Callback):
    """Average, over each training and validation epoch and weighted by batch size, the loss, every
    metric the loss returned in `(loss, metrics)`, and each metric passed by name.

    A metric is called like a loss, `metric(preds, *inputs)`, with inputs named by its parameters,
    and returns a number or a 0-dim tensor (the batch mean). Sums stay on the device during the
    epoch and are read once at its end, so the batch loop never waits for the GPU.

    After each epoch phase the row `{'epoch': 0, 'phase': 'train', 'loss': ..., ...}` is appended to
    `history` and stored on `learn.epoch_metrics`, where ProgressCB and other callbacks read it.

    >>> def accuracy(preds, target): return (preds.argmax(-1) == target).float().mean()
    >>> cb = MetricsCB(accuracy=accuracy)
    """

    order = Order.METRICS

    def __init__(self, **metrics: Callable):
        self.metrics = metrics
        self._sigs = {name: signature_of(fn) for name, fn in metrics.items()}
        self.history: list[dict] = []

    def before_fit(self, learn):
        self.history = []

    def removed(self, learn):
        learn.epoch_metrics = None  # a row nobody updates any more would read as this epoch's

    def before_epoch(self, learn):
        self.sums: dict[str, torch.Tensor | float] = {}
        self.count = 0

    def _add(self, name: str, value, weight: int) -> None:
        if isinstance(value, torch.Tensor):
            value = value.detach()
            total = self.sums.get(name)
            if total is None:
                self.sums[name] = value.float() * weight
            else:
                total.add_(value, alpha=weight)  # in place, on the device: no synchronisation
        else:
            self.sums[name] = self.sums.get(name, 0.0) + float(value) * weight

    def after_loss(self, learn):
        bs = batch_size(learn.batch)
        self.count += bs
        self._add("loss", learn.loss, bs)
        for name, value in learn.loss_metrics.items():
            self._add(name, value, bs)
        if self.metrics:
            with torch.no_grad():
                for name, fn in self.metrics.items():
                    self._add(name, loss_call(fn, learn.preds, learn.batch, learn.n_inp, self._sigs[name], "metric"), bs)

    def after_epoch(self, learn):
        row = {"epoch": learn.epoch, "phase": "train" if learn.training else "valid"}
        if self.count:
            row.update({k: float(v) / self.count for k, v in self.sums.items()})
        self.history.append(row)
        learn.epoch_metrics = row
