"""TrainCB: the default owner of the five steps of a training batch."""

from collections.abc import Sequence

from minilearn.callback import Callback
from minilearn.inputs import (LastCall, input_module, loss_call, model_call, model_input_names, per_item_losses,
                              signature_of, store_loss)
from minilearn.order import Order

__all__ = ["TrainCB"]


class TrainCB(Callback):
    """The plain training step: `preds = model(inputs)`, `loss = loss_func(preds, targets...)`,
    `loss.backward()`, `opt.step()`, `opt.zero_grad()`.

    Every Learner has one unless it is removed. A callback with a higher `order` that defines one of
    these steps takes it over (a loss callback defines `get_loss`, AccelerateCB `backward` and
    `step`), and removing that callback gives the step back to TrainCB.

    `model_inputs`: for mapping batches, the keys passed to the model as keyword arguments
    (default: the keys its `forward` names).
    """

    order = Order.TRAIN

    def __init__(self, model_inputs: Sequence[str] | None = None):
        self.model_inputs = tuple(model_inputs) if model_inputs is not None else None
        # Found again only when the loss or model object changes (AccelerateCB replaces the model), not per batch.
        self._loss_signature = LastCall(signature_of)
        self._model_input_names = LastCall(lambda model: model_input_names(signature_of(input_module(model))))

    def model_input_names(self, model) -> tuple[str, ...]:
        """The keys of a mapping batch that go to `model`: `model_inputs`, else those its `forward` names
        (the forward of the module inside a wrapper such as DDP: see `minilearn.inputs.input_module`)."""
        if self.model_inputs is not None:
            return self.model_inputs
        return self._model_input_names(model)

    def predict(self, learn):
        learn.preds = model_call(learn.model, learn.batch, learn.n_inp, self.model_input_names(learn.model))

    def get_loss(self, learn):
        if learn.loss_func is None:
            raise ValueError("the Learner has no loss_func: pass one to Learner(...), or add a callback "
                             "that owns get_loss (for example LossCB(loss) or AccelerateCustomCB(loss))")
        out = loss_call(learn.loss_func, learn.preds, learn.batch, learn.n_inp, self._loss_signature(learn.loss_func))
        store_loss(learn, out, learn.loss_func)

    def item_losses(self, learn):
        """The loss of each item of `learn.batch` from the loss's per-item form, or None (see
        `minilearn.inputs.per_item_losses`); `Learner.get_preds` asks the owner of `get_loss`."""
        return per_item_losses(learn.loss_func, learn.preds, learn.batch, learn.n_inp)

    def backward(self, learn):
        # One micro-batch per step here, so the ratio of a loss with a denominator (a LossTensor
        # from NormalizedLoss or a plug-in loss) already has the exact gradient.
        learn.loss.backward()

    def step(self, learn):
        learn.opt.step()

    def zero_grad(self, learn):
        learn.opt.zero_grad()
