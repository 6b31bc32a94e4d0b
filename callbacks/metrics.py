"""MetricsCB: per pass, the loss over the whole pass and the averages of the loss's own metrics and user metrics."""

from collections.abc import Callable

import torch

from minilearn.callback import Callback
from minilearn.data import batch_size
from minilearn.distributed import sum_across_processes
from minilearn.inputs import loss_call, signature_of
from minilearn.normalized_loss import loss_kind
from minilearn.order import Order

__all__ = ["MetricsCB"]


class MetricsCB(Callback):
    """Per training and validation pass: the loss over the whole pass, and the row-weighted average
    of every metric the loss returned and of each metric passed by name.

    The pass's loss does not depend on how it was cut into batches or processes: a loss with
    normalisation parts counts as summed totals over summed denominators, a sum-reduced loss as its
    sum per row, any other as its row-weighted mean. Under several processes (`learn.pass_is_sharded`)
    the sums are added up across processes at the end of the pass.

    A metric is called like a loss, `metric(preds, *inputs)`, and returns a number or a 0-dim tensor
    (the batch mean). Sums stay on the device until the pass ends, so the batch loop never waits.
    Each pass's row `{'epoch': 0, 'phase': 'train', 'loss': ..., ...}` goes to `history` and
    `learn.epoch_metrics`.

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
        self.rows = 0
        self._loss_kind: str | None = None

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
        rows, parts = batch_size(learn.batch), learn.loss_parts
        self.rows += rows
        self._loss_kind = loss_kind(learn.loss, parts, self._loss_kind)
        if self._loss_kind == "ratio":
            self._add(_TOTAL, parts.total, 1)
            self._add(_DENOMINATOR, parts.denominator, 1)
        else:
            self._add("loss", learn.loss, 1 if self._loss_kind == "sum" else rows)
        for name, value in learn.loss_metrics.items():
            self._add(name, value, rows)
        if self.metrics:
            with torch.no_grad():
                for name, fn in self.metrics.items():
                    value = loss_call(fn, learn.preds, learn.batch, learn.n_inp, self._sigs[name], "metric")
                    self._add(name, value, rows)

    def after_epoch(self, learn):
        row = {"epoch": learn.epoch, "phase": "train" if learn.training else "valid"}
        if self.rows:
            # One tensor, summed across processes when each held a share of the pass, read in one go.
            names = sorted(self.sums)
            device = next((v.device for v in self.sums.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
            values = torch.stack([torch.as_tensor(self.sums[k], dtype=torch.float32, device=device).reshape(())
                                  for k in names] + [torch.tensor(float(self.rows), device=device)])
            if learn.pass_is_sharded:
                values = sum_across_processes(values)
            sums = dict(zip([*names, _ROWS], values.tolist()))
            rows = sums.pop(_ROWS)
            if self._loss_kind == "ratio":
                total, denominator = sums.pop(_TOTAL), sums.pop(_DENOMINATOR)
                loss = total / denominator if denominator else 0.0
            else:
                loss = sums.pop("loss") / rows
            row.update({"loss": loss, **{k: v / rows for k, v in sums.items()}})
        self.history.append(row)
        learn.epoch_metrics = row


# Names of the pass sums that are not columns of the table (a space keeps them apart from metric names).
_TOTAL, _DENOMINATOR, _ROWS = "loss total", "loss denominator", "rows"
