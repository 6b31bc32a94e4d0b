"""SingleBatchCB: run one batch and stop, for debugging a new model, loss or callback."""

from minilearn.callback import Callback
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["SingleBatchCB"]


class SingleBatchCB(Callback):
    """Stop `fit` after the first batch; `learn.batch`, `learn.preds` and `learn.loss` are left to inspect.

    >>> # learn.fit(1, cbs=SingleBatchCB()); learn.preds.shape
    """

    order = Order.SINGLE_BATCH

    def after_batch(self, learn):
        raise CancelFitException()
