"""DeviceCB: put the model and every batch on one device."""

import torch

from minilearn.callback import Callback
from minilearn.data import default_device, to_device
from minilearn.order import Order

__all__ = ["DeviceCB"]


class DeviceCB(Callback):
    """Move the model to `device` when `fit` starts and each batch (nested tuples, lists and dicts
    of tensors) before it is used. `device` defaults to CUDA, then MPS, then the CPU.

    Not needed under AccelerateCB, which places the model and batches itself.
    """

    order = Order.DEVICE

    def __init__(self, device: torch.device | str | None = None):
        self.device = torch.device(device) if device is not None else default_device()

    def before_fit(self, learn):
        learn.model.to(self.device)

    def before_batch(self, learn):
        learn.batch = to_device(learn.batch, self.device)
