"""LogprobLossCB: a loss over per-sequence target log-probabilities in the `fit` loop."""

import torch

from minilearn.callback import Callback, method_owner
from minilearn.logprobs.forward_backward import (CustomLossStep, LogprobLossFn, apply_custom_loss_gradients,
                                                 custom_loss_step)
from minilearn.inputs import select_output
from minilearn.order import Order

__all__ = ["LogprobLossCB"]


class LogprobLossCB(Callback):
    """Train with `fn(batch, logprobs) -> loss or (loss, metrics)`, a loss over the target
    log-probabilities of each sequence (see `minilearn.logprobs.forward_backward` and, for targets and padding,
    `minilearn.logprobs.sequences`). Owns `get_loss` and `backward`, and `predict`, which it hands to
    the owner beneath it except for the loop's forward of a two-pass training batch.

    - `two_pass=False`: the usual forward pass with autograd, `fn`, and its backward.
    - `two_pass=True`, training: the loop's forward does not run (`learn.preds` stays None); `get_loss`
      runs the first pass without a graph in micro-batches of `micro_batch_size` sequences, `fn` gives
      `g = dLoss/dlogprobs`, and `backward` runs the surrogate `sum(lp * g)` forward-backward in the same
      micro-batches, each replaying its first pass's random state: the gradient of
      `forward_backward_custom(two_pass=True)` (exact with dropout too), with the memory of one micro-batch.
      Validation batches go through the loop's forward as usual.
    - `ref_model`: a frozen reference model, run without grad in eval mode; `fn` finds its
      per-sequence log-probabilities in `batch["ref_logprobs"]` (for `make_dpo_loss`).

    Back-propagation goes through the step owner's `learn.gradients` (under AccelerateCB, the accelerator:
    gradient accumulation, fp16 scaling) and, with several processes, `fn` sees the gathered batch and
    log-probabilities of every process while each process back-propagates its own sequences: the gradient
    equals one process's on the whole global batch.

    >>> from minilearn.losses import make_dpo_loss
    >>> # learn.fit(1, cbs=LogprobLossCB(make_dpo_loss(beta=0.1), two_pass=True, micro_batch_size=4, ref_model=ref))
    """

    order = Order.LOGPROB_LOSS

    def __init__(self, fn: LogprobLossFn, two_pass: bool = False, micro_batch_size: int | None = None,
                 ref_model: torch.nn.Module | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be a function fn(batch, logprobs) -> loss or (loss, metrics), got {fn!r}")
        if micro_batch_size is not None and not two_pass:
            raise ValueError(f"micro_batch_size={micro_batch_size} needs two_pass=True")
        self.fn, self.two_pass, self.micro_batch_size, self.ref_model = fn, two_pass, micro_batch_size, ref_model
        self._step: CustomLossStep | None = None
        self._skip_predict = False
        self._beneath: Callback | None = None  # the owner of predict beneath this one, during a fit

    def before_fit(self, learn):
        self._beneath = self._predict_owner_beneath(learn)
        if self.ref_model is not None:
            self.ref_model.to(next(learn.model.parameters()).device)

    def before_batch(self, learn):
        # Two passes, training: the first pass is not the loop's forward of the whole batch but runs in
        # get_loss, in the micro-batches of the surrogate pass, because a surrogate micro-batch can replay
        # the random state (dropout masks) only of a forward of the same rows; and no logits of the
        # whole batch are ever kept. So the loop's forward is skipped; the passes' own calls of predict
        # (through `model_logits`) come after it and go to the owner beneath.
        self._skip_predict = self.two_pass and learn.training

    def predict(self, learn):
        if self._skip_predict:
            self._skip_predict = False
            return
        (self._beneath or self._predict_owner_beneath(learn)).predict(learn)

    def _predict_owner_beneath(self, learn) -> Callback:
        # Found once a fit; outside one (get_preds, forward_backward_custom) at each call: the callbacks may change.
        owner = method_owner([cb for cb in learn.cbs if cb is not self], "predict")
        if owner is None:
            raise RuntimeError(f"{self.name} hands predict to the callback beneath it that owns it, and none does: "
                               f"add TrainCB()")
        return owner

    def cleanup_fit(self, learn):
        self._beneath = None

    def cleanup_batch(self, learn):
        self._step, self._skip_predict = None, False

    def get_loss(self, learn):
        # A validation batch is whole already: the owner of several processes gathered it (AccelerateCB).
        logits = None if learn.preds is None else select_output(learn.preds, "logits")
        self._step = custom_loss_step(learn, learn.batch, self.fn, self.two_pass, self.micro_batch_size,
                                      self.ref_model, logits, gather=learn.training)
        learn.loss, learn.loss_metrics, learn.loss_parts = self._step.loss, self._step.metrics, None

    def backward(self, learn):
        learn.gradients.backward(learn.loss, ends_step=learn.ends_step, backward=lambda backward_fn:
                                 apply_custom_loss_gradients(learn, self._step, self.micro_batch_size, backward_fn))

    def __repr__(self) -> str:
        return f"{self.name}({getattr(self.fn, '__qualname__', self.fn)!r}, two_pass={self.two_pass}, order={self.order})"
