"""LossCB: a callback that owns the `get_loss` step with a loss of its own."""

from collections.abc import Callable

from minilearn.callback import Callback
from minilearn.inputs import LastCall, loss_call, per_item_losses, signature_of, store_loss
from minilearn.order import Order

__all__ = ["LossCB"]


class LossCB(Callback):
    """Compute the loss with `loss` instead of the Learner's `loss_func`.

    `loss` is called like any loss (model output first, then the batch inputs its parameters name)
    and may return a scalar, `(loss, metrics)`, a `NormalizedLoss` or a `LossTensor` (the plug-in
    losses). Passed to `fit`, it swaps the loss for that fit only: when it is removed, `get_loss`
    goes back to `TrainCB` and `learn.loss_func`. Its `order` (`Order.LOSS`) is above TrainCB's and
    below AccelerateCB's, so it works with `AccelerateCB` (which leaves `get_loss` alone), while
    `AccelerateCustomCB`, which owns `get_loss` itself, takes precedence over it.

    >>> # learn.fit(1, cbs=LossCB(KeyTokenWeightedLoss(keytoken_ids)))
    """

    order = Order.LOSS

    def __init__(self, loss: Callable):
        self.loss = loss
        self._signature = LastCall(signature_of)

    def get_loss(self, learn):
        store_loss(learn, loss_call(self.loss, learn.preds, learn.batch, learn.n_inp, self._signature(self.loss)), self.loss)

    def item_losses(self, learn):
        """The loss of each item from the loss's per-item form, or None (for `Learner.get_preds`)."""
        return per_item_losses(self.loss, learn.preds, learn.batch, learn.n_inp)

    def __repr__(self) -> str:
        return f"{self.name}({self.loss!r}, order={self.order})"
