"""TrainCB: the default owner of the five steps of a training batch."""

import warnings
from collections.abc import Mapping, Sequence

import torch

from minilearn.callback import Callback
from minilearn.data import is_mapping, looks_padded
from minilearn import inputs
from minilearn.inputs import (LastCall, callable_name, input_module, loss_call, model_call,
                              per_item_losses, signature_of, store_loss)
from minilearn.order import Order

__all__ = ["TrainCB", "BatchWarning"]


class BatchWarning(UserWarning):
    """The first training batch of a fit trains, but not as meant: `labels` that make a Hugging Face
    model compute a loss of its own that nobody uses, or padded `input_ids` without an `attention_mask`.
    `TrainCB` warns once a fit; `warnings.simplefilter("ignore", BatchWarning)` silences it."""


class TrainCB(Callback):
    """The plain training step: `preds = model(inputs)`, `loss = loss_func(preds, targets...)`,
    `loss.backward()`, `opt.step()`, `opt.zero_grad()`.

    Every Learner has one unless it is removed. A callback with a higher `order` that defines one of
    these steps takes it over (a loss callback defines `get_loss`, AccelerateCB `backward` and
    `step`), and removing that callback gives the step back to TrainCB.

    `model_inputs`: for mapping batches, the keys passed to the model as keyword arguments
    (default: the keys its `forward` names).

    A model whose `forward` takes `use_cache` (a Hugging Face causal LM) gets `use_cache=False` where
    the batch does not set it: the key-value cache is for generation (`minilearn.sampling` asks for it),
    and would otherwise be built on every forward of training, validation and `get_preds` (which would
    hold every batch's cache until the end). The first training batch of each fit is looked at for what would
    pass silently (`BatchWarning`, see `check_first_batch`).
    """

    order = Order.TRAIN

    def __init__(self, model_inputs: Sequence[str] | None = None):
        self.model_inputs = tuple(model_inputs) if model_inputs is not None else None
        # Found again only when the loss or model object changes (AccelerateCB replaces the model), not per batch.
        self._loss_signature = LastCall(signature_of)
        self._model_input_names = LastCall(inputs.model_inputs)
        self._defaults = LastCall(lambda model: {"use_cache": False} if "use_cache" in self._model_input_names(model)
                                  else None)
        self._first_batch = False  # set at before_fit: the first training batch is then checked

    def model_input_names(self, model) -> tuple[str, ...]:
        """The keys of a mapping batch that go to `model`: `model_inputs`, else those its `forward` names
        (the forward of the module inside a wrapper such as DDP: see `minilearn.inputs.input_module`)."""
        if self.model_inputs is not None:
            return self.model_inputs
        return self._model_input_names(model)

    def before_fit(self, learn):
        self._first_batch = True

    def predict(self, learn):
        model = learn.model
        learn.preds = model_call(model, learn.batch, learn.n_inp, self.model_input_names(model), self._defaults(model))
        if self._first_batch and learn.training:
            self._first_batch = False
            self.check_first_batch(learn)

    def check_first_batch(self, learn) -> None:
        """Warn (`BatchWarning`) about what in `learn.batch`, a mapping batch, trains silently but not as
        meant; run on the first training batch of each fit, after the model's forward:

        - `labels` went to a model whose output then has a `loss`: the model computed a loss of its own on
          every forward, which the loss owner does not use (unless its loss reads the model's `loss`);
        - `input_ids` look padded (`minilearn.data.looks_padded` says how that is told), there is no
          `attention_mask`, and the model or the loss takes one: the padding passes for text.
        """
        batch, preds, model = learn.batch, learn.preds, callable_name(input_module(learn.model))
        if not is_mapping(batch):
            return
        # The loss of the owner of get_loss: the plug-in-loss owners keep theirs as `.loss`, TrainCB uses loss_func.
        owner = learn.step_owners["get_loss"]
        loss = getattr(owner, "loss", learn.loss_func)
        sig = signature_of(loss) if callable(loss) else None
        names = self.model_input_names(learn.model)
        own_loss = preds.get("loss") if isinstance(preds, Mapping) else getattr(preds, "loss", None)
        # TrainCB still passes `labels` to a model that names them, and only says so: they may be a real
        # input (a class-conditional model), and a loss may train on the model's own (a first parameter
        # named `loss` receives it), so leaving them out would be a silent change of its own.
        reads_own_loss = sig is not None and sig.first == "loss"
        if "labels" in batch and "labels" in names and isinstance(own_loss, torch.Tensor) and not reads_own_loss:
            trained_on = f"{getattr(owner, 'name', 'no callback')}'s" + (f" {callable_name(loss)}" if sig else "")
            warnings.warn(f"the batch's 'labels' go to model {model}, which then computes a loss of its own on every "
                          f"forward, unused: minilearn trains on {trained_on}. Turn the labels into target_tokens with "
                          f"minilearn.logprobs.LabelsToTargets(collate_fn) or targets_from_labels(batch), which drop "
                          f"them, or choose the model's inputs with TrainCB(model_inputs=[...])",
                          BatchWarning)
        harm = ([f"model {model} attends to it"] * ("attention_mask" in names)
                + [f"loss {callable_name(loss)} counts it as targets"] * bool(sig and "attention_mask" in sig.names))
        if harm and "attention_mask" not in batch and (padded := looks_padded(batch.get("input_ids"))):
            warnings.warn(f"the batch's input_ids {tuple(batch['input_ids'].shape)} look {padded[0]}-padded with token "
                          f"{padded[1]} (it occurs only in runs at the {'ends' if padded[0] == 'right' else 'starts'} "
                          f"of rows, runs of different lengths), but the batch has no attention_mask, so the padding "
                          f"passes for text: {' and '.join(harm)}. Put the attention_mask of the tokenizer or collator "
                          f"in the batch", BatchWarning)

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
        learn.gradients.backward(learn.loss, learn.loss_parts, learn.ends_step)

    def step(self, learn):
        learn.opt.step()

    def zero_grad(self, learn):
        learn.opt.zero_grad()
