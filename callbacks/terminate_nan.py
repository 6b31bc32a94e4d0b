"""TerminateOnNaNCB: stop at the first loss that is NaN or infinite, before it reaches the weights."""

import warnings

import torch

from minilearn.callback import Callback
from minilearn.exceptions import CancelFitException
from minilearn.order import Order

__all__ = ["TerminateOnNaNCB"]


class TerminateOnNaNCB(Callback):
    """Cancel the fit at the first non-finite loss, in `after_loss`: before `backward` and `step`, so
    the weights stay those of the last good step. Warns (`RuntimeWarning`) naming the epoch and batch;
    the message is kept on `self.message`.

    Checking the loss reads it from the device every batch (one synchronisation a batch on a GPU).

    >>> cb = TerminateOnNaNCB()
    """

    order = Order.TERMINATE_ON_NAN

    def before_fit(self, learn):
        self.message = None

    def after_loss(self, learn):
        if not bool(torch.isfinite(learn.loss.detach())):
            self.message = (f"TerminateOnNaNCB: the loss is {learn.loss.item()} at epoch {learn.epoch}, "
                            f"{'training' if learn.training else 'validation'} batch {learn.iter}; the fit was "
                            f"cancelled before that batch's step, so the weights are those of the last good step")
            warnings.warn(self.message, RuntimeWarning, stacklevel=2)
            raise CancelFitException()
