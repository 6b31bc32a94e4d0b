"""LogprobLossCB: a loss over per-sequence target log-probabilities in the `fit` loop."""

from collections.abc import Callable

import torch

from minilearn.callback import Callback
from minilearn.callbacks.accelerate import AccelerateCB
from minilearn.logprobs.forward_backward import (CustomLossStep, LogprobLossFn, apply_custom_loss_gradients,
                                                 custom_loss_step)
from minilearn.inputs import select_output
from minilearn.order import Order

__all__ = ["LogprobLossCB"]


class LogprobLossCB(Callback):
    """Train with `fn(batch, logprobs) -> loss or (loss, metrics)`, a loss over the target
    log-probabilities of each sequence (see `minilearn.logprobs.forward_backward` and, for targets and padding,
    `minilearn.logprobs.sequences`). Owns `get_loss` and `backward`.

    - `two_pass=False`: the usual forward pass with autograd, `fn`, and its backward.
    - `two_pass=True`: the forward pass of the loop runs without a graph (only the logits are
      kept), `fn` gives `g = dLoss/dlogprobs`, and `backward` runs the surrogate `sum(lp * g)`
      forward-backward in micro-batches of `micro_batch_size` sequences: the same gradient, with
      the memory of one micro-batch.
    - `ref_model`: a frozen reference model, run without grad in eval mode; `fn` finds its
      per-sequence log-probabilities in `batch["ref_logprobs"]` (for `dpo_loss`).

    Under AccelerateCB (below this callback in `Order`), back-propagation goes through the
    accelerator (gradient accumulation, fp16 scaling) and, with several processes, `fn` sees the
    gathered batch and log-probabilities of every process while each process back-propagates its
    own sequences: the gradient equals one process's on the whole global batch.

    >>> from minilearn.losses import dpo_loss
    >>> # learn.fit(1, cbs=LogprobLossCB(dpo_loss(beta=0.1), two_pass=True, micro_batch_size=4, ref_model=ref))
    """

    order = Order.LOGPROB_LOSS

    def __init__(self, fn: LogprobLossFn, two_pass: bool = False, micro_batch_size: int | None = None,
                 ref_model: torch.nn.Module | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be a function fn(batch, logprobs) -> loss or (loss, metrics), got {fn!r}")
        if micro_batch_size is not None and not two_pass:
            raise ValueError(f"micro_batch_size={micro_batch_size} needs two_pass=True")
        self.fn, self.two_pass, self.micro_batch_size, self.ref_model = fn, two_pass, micro_batch_size, ref_model
        self._accelerate: AccelerateCB | None = None
        self._step: CustomLossStep | None = None
        self._grad_mode: torch.set_grad_enabled | None = None

    def before_fit(self, learn):
        self._accelerate = next((cb for cb in learn.cbs if isinstance(cb, AccelerateCB)), None)
        if self.ref_model is not None:
            self.ref_model.to(next(learn.model.parameters()).device)

    def before_batch(self, learn):
        if self.two_pass and learn.training:
            # The loop's forward pass is the first of the two: it needs the logits, not their graph.
            self._grad_mode = torch.set_grad_enabled(False)

    def after_predict(self, learn):
        self._restore_grad_mode()

    def cleanup_batch(self, learn):
        self._restore_grad_mode()  # when the batch was cancelled before after_predict
        self._step = None

    def _restore_grad_mode(self) -> None:
        if self._grad_mode is not None:
            self._grad_mode.__exit__(None, None, None)
            self._grad_mode = None

    def get_loss(self, learn):
        # Under AccelerateCB, validation batches and predictions were already gathered from every process.
        gathered = not learn.training and self._accelerate is not None
        self._step = custom_loss_step(learn, learn.batch, self.fn, self.two_pass, self.micro_batch_size,
                                      self.ref_model, select_output(learn.preds, "logits"), gather=not gathered)
        learn.loss, learn.loss_metrics, learn.loss_parts = self._step.loss, self._step.metrics, None

    def backward(self, learn):
        backward: Callable | None = self._accelerate.acc.backward if self._accelerate else None
        apply_custom_loss_gradients(learn, self._step, self.micro_batch_size, backward)

    def __repr__(self) -> str:
        return f"{self.name}({getattr(self.fn, '__qualname__', self.fn)!r}, two_pass={self.two_pass}, order={self.order})"
