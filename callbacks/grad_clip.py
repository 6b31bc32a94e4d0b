"""GradClipCB: clip the gradient norm before each optimizer step."""

import torch

from minilearn.callback import Callback
from minilearn.order import Order

__all__ = ["GradClipCB"]


class GradClipCB(Callback):
    """Scale the gradients so that their total norm is at most `max_norm`, after `backward` and
    before `step`, once the step's gradients are whole (`learn.ends_step`: under gradient accumulation, at
    the last micro-batch of each step). The norm before clipping is kept on `self.last_norm` (a tensor:
    reading it waits for the GPU, so only do that when you need it).
    """

    order = Order.GRAD_CLIP

    def __init__(self, max_norm: float, norm_type: float = 2.0):
        self.max_norm, self.norm_type = max_norm, norm_type

    def after_backward(self, learn):
        if not learn.ends_step:
            return
        if learn.grad_scaler is not None:
            raise ValueError("GradClipCB would clip float16 gradients still multiplied by the loss scale: "
                             "pass AccelerateCB(max_grad_norm=...) instead, which unscales them first")
        self.last_norm = torch.nn.utils.clip_grad_norm_(learn.model.parameters(), self.max_norm, self.norm_type)
