"""AccelerateCB and AccelerateCustomCB: run the Learner under Hugging Face Accelerate.

One CPU, one GPU or several processes (`torchrun`, `accelerate launch`, `notebook_launcher`), with
mixed precision and gradient accumulation, and a custom `nn.Module` loss computed in float32.
"""

import warnings
from collections.abc import Callable
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader

from minilearn.callback import Callback
from minilearn.data import DataLoaders, batches_in_pass, to_device
from minilearn.distributed import (PADDING, is_main_process, launched_processes, reset_accelerate_state,
                                   shut_down_process_group_at_exit, trains_alone)
from minilearn.exceptions import CancelBatchException
from minilearn.inputs import LastCall, float32_outputs, loss_call, per_item_losses, signature_of, store_loss
from minilearn.normalized_loss import StepGradients
from minilearn.order import Order
from minilearn.predictions import gather_valid_batch

__all__ = ["AccelerateCB", "AccelerateCustomCB"]


class AccelerateCB(Callback):
    """Train under an `accelerate.Accelerator`: owns `backward`, `step` and `zero_grad`.

    - The model, optimizer and `DataLoader`s are prepared at the first `fit` (new ones when they appear);
      `learn.unwrapped_model` is the model without Accelerate's wrappers. Passed to one fit, it leaves the
      learner as it found it (its own model object and `forward`, loaders, optimizer); kept in `learn.cbs`,
      it keeps its preparation across fits.
    - `gradient_accumulation_steps=k`: one optimizer step every k micro-batches (between them `step` raises
      `CancelBatchException`, so `after_step` callbacks run once a real step), and one for the last
      micro-batches of a pass. It publishes `learn.ends_step` and `learn.gradients` (`StepGradients`: each
      step's exact gradient); `max_grad_norm` clips after that.
    - Validation outputs and batches are gathered from every process (`gather_valid_batch`, padded per key
      by `minilearn.distributed.PADDING` updated with `valid_padding`): metrics of the whole validation set.
    - Several processes: `cpu=True` where there is no GPU; a launcher/Accelerate disagreement on the number
      of processes is refused; process `i` is seeded with `seed + i` at the first fit (without `seed`, one
      drawn from torch's generator, so `torch.manual_seed(s)` in the script reproduces the run).

    A subclass written as in a textbook works:

    >>> class MyAccelerateCB(AccelerateCB):
    ...     def get_loss(self, learn): learn.loss = learn.loss_func(learn.preds, *learn.batch[1:])
    ...     def backward(self, learn): self.acc.backward(learn.loss)
    """

    order = Order.ACCELERATE

    def __init__(self, mixed_precision: str | None = None, gradient_accumulation_steps: int = 1,
                 max_grad_norm: float | None = None, valid_padding: dict[str, float] | None = None,
                 seed: int | None = None, **accelerator_kwargs: Any):
        world_size = launched_processes()
        if world_size > 1 and not torch.cuda.is_available():
            accelerator_kwargs.setdefault("cpu", True)
        if trains_alone():  # Accelerate's settings are process-wide: each callback starts afresh
            reset_accelerate_state(keep_process_setup=True)
        # The accumulation windows are kept here, not by Accelerate (whose counter runs on across
        # epochs and divides a short window's gradients by k): its Accelerator steps at every call.
        self.acc = Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs)
        if self.acc.num_processes != world_size:
            raise RuntimeError(
                f"the launcher started WORLD_SIZE={world_size} processes but Accelerate sees "
                f"num_processes={self.acc.num_processes}: each process would train on all the data. "
                f"On a machine without a GPU pass cpu=True (AccelerateCB(cpu=True)); check the launch config.")
        if self.acc.num_processes > 1:
            shut_down_process_group_at_exit()
        if mixed_precision not in (None, "no") and not self.acc.native_amp:
            # Accelerate then trains in float32 without a word: the run would look like mixed precision.
            warnings.warn(f"mixed_precision={mixed_precision!r} cannot run on {self.acc.device.type}: Accelerate "
                          f"makes no autocast or loss scaler there, so this trains in float32. On a CPU use "
                          f"mixed_precision='bf16'; float16 needs a GPU.", UserWarning, stacklevel=2)
        self.max_grad_norm, self.gradient_accumulation_steps, self.seed = max_grad_norm, gradient_accumulation_steps, seed
        self.valid_padding = {**PADDING, **(valid_padding or {})}
        # Without a loss scaler, DeepSpeed, Megatron or XLA, Accelerate's optimizer wrapper and `backward`
        # only add bookkeeping that looks up packages and signatures on every call (0.1-0.3 ms a batch).
        self._plain = self.acc.scaler is None and self.acc.distributed_type not in (
            DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)
        self.gradients = StepGradients(torch.Tensor.backward if self._plain else self.acc.backward,
                                       self.acc.num_processes, lambda t: self.acc.reduce(t.to(self.acc.device), "sum"))
        self._mixed_precision, self._seeded, self._no_sync, self._pass_length = self.acc.mixed_precision, False, None, None
        self._forget_prepared()

    def before_fit(self, learn):
        if self.acc.mixed_precision != self._mixed_precision:
            raise RuntimeError(
                f"this AccelerateCB was built with mixed_precision={self._mixed_precision!r}, but Accelerate's "
                f"process-wide state now says {self.acc.mixed_precision!r}: another AccelerateCB was built since. "
                f"Build this one again (AccelerateCB(...)) to use it.")
        if learn.model is not self._model:
            self._undo_model_patches()  # a model replaced while this callback stayed: unpatch the old one
            self._user_model, self._user_model_attrs = learn.model, frozenset(vars(learn.model))
            learn.model = self._model = self.acc.prepare_model(learn.model)
        if learn.opt is not self._opt:
            self._user_opt, wrapped = learn.opt, self.acc.prepare_optimizer(learn.opt)
            learn.opt = self._opt = wrapped.optimizer if self._plain else wrapped  # schedules see a plain one
        if learn.dls is not self._dls:
            prepare = lambda dl: self.acc.prepare_data_loader(dl) if isinstance(dl, DataLoader) else dl  # noqa: E731
            self._user_dls, learn.dls = learn.dls, DataLoaders(prepare(learn.dls.train), prepare(learn.dls.valid))
            self._dls = learn.dls
        if learn.gradients is not self.gradients:
            self._user_gradients = learn.gradients
        learn.is_main_process, learn.grad_scaler, learn.gradients = self.acc.is_main_process, self.acc.scaler, self.gradients
        self.gradients.reset()
        if not self._seeded:  # every process starts from the script's one random state: give each its own
            self._seeded = True
            if self.seed is not None or self.acc.num_processes > 1:
                set_seed(self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1024, ())),
                         device_specific=True)

    def before_epoch(self, learn):
        # Validation batches are gathered from every process (after_predict): only a training pass is split.
        learn.pass_is_sharded = learn.training and self.acc.num_processes > 1
        if learn.training and self.gradient_accumulation_steps > 1:
            self._pass_length = batches_in_pass(learn.dls.train, f"AccelerateCB(gradient_accumulation_steps={self.gradient_accumulation_steps})")

    def before_batch(self, learn):
        if not isinstance(learn.dl, DataLoader):  # prepared loaders place batches themselves
            learn.batch = to_device(learn.batch, self.acc.device)
        if learn.training and self.gradient_accumulation_steps > 1:
            done = learn.iter + 1
            learn.ends_step = (done % self.gradient_accumulation_steps == 0 or done == self._pass_length or
                               (self._pass_length is None and self.acc.gradient_state.end_of_dataloader))
            if not learn.ends_step:  # DDP must not all-reduce gradients that are not final yet
                self._no_sync = self.acc.no_sync(learn.model)
                self._no_sync.__enter__()

    def cleanup_batch(self, learn):
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None

    def after_predict(self, learn):
        if not learn.training and self.acc.num_processes > 1:
            learn.preds, learn.batch = gather_valid_batch(self.acc.gather_for_metrics, learn.preds, learn.batch,
                                                          self.valid_padding)

    def backward(self, learn):
        learn.gradients.backward(learn.loss, learn.loss_parts, learn.ends_step)

    def after_backward(self, learn):
        # Before any other callback looks at the gradients (GradClipCB): those of the whole step.
        if learn.ends_step:
            learn.gradients.finish(learn.model.parameters(), learn.iter % self.gradient_accumulation_steps + 1)

    def step(self, learn):
        if not learn.ends_step:
            raise CancelBatchException()  # not a boundary: keep accumulating, no step, no zero_grad
        if self.max_grad_norm is not None:
            self.acc.clip_grad_norm_(learn.model.parameters(), self.max_grad_norm)
        learn.opt.step()

    def zero_grad(self, learn):
        learn.opt.zero_grad()  # only reached at a boundary: `step` cancels the rest

    def _undo_model_patches(self) -> None:
        # Accelerate marks the model object itself (`_is_accelerate_prepared`) and, with mixed precision,
        # replaces its `forward` by one under autocast, keeping the original in `_original_forward`.
        model = self._user_model
        if model is None:
            return
        original_forward = vars(model).get("_original_forward")
        for name in set(vars(model)) - self._user_model_attrs:
            delattr(model, name)
        if "forward" in self._user_model_attrs and original_forward is not None:
            model.forward = original_forward  # the model had a forward of its own on the instance

    def removed(self, learn):
        self._undo_model_patches()
        # Put back only what is still ours: a model, optimizer or loaders set since then stay.
        for mine, name, theirs in ((self._model, "model", self._user_model), (self._opt, "opt", self._user_opt),
                                   (self._dls, "dls", self._user_dls), (self.gradients, "gradients", self._user_gradients)):
            if mine is not None and getattr(learn, name) is mine:
                setattr(learn, name, theirs)
        learn.is_main_process, learn.pass_is_sharded, learn.grad_scaler = is_main_process(), False, None
        learn.ends_step = True  # without accumulation every micro-batch ends a step
        self.acc.free_memory()  # Accelerate's references to the prepared objects
        self._forget_prepared()

    def _forget_prepared(self) -> None:
        # The prepared model, optimizer and loaders, and the user's that they replaced (put back by `removed`).
        self._model = self._opt = self._dls = self._user_model = self._user_opt = self._user_dls = self._user_gradients = None
        self._user_model_attrs: frozenset[str] = frozenset()  # the names in vars(user's model) before preparing


class AccelerateCustomCB(AccelerateCB):
    """AccelerateCB that also owns `get_loss`, with a custom loss module (or function).

    The loss is called with its named inputs (see `minilearn.inputs`), outside autocast and on float32
    model outputs; its result lands on `learn.loss` and `learn.loss_metrics` for MetricsCB, ProgressCB and
    schedules, and AccelerateCB's `backward` hands it to the accelerator, exactly normalised.

    >>> # learn.fit(1, cbs=AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16"))
    """

    def __init__(self, loss: Callable, **kwargs: Any):
        super().__init__(**kwargs)
        self.loss, self._signature = loss, LastCall(signature_of)

    def before_fit(self, learn):
        super().before_fit(learn)
        if isinstance(self.loss, torch.nn.Module):
            self.loss.to(self.acc.device)

    def get_loss(self, learn):
        with torch.autocast(device_type=self.acc.device.type, enabled=False):
            out = loss_call(self.loss, float32_outputs(learn.preds), learn.batch, learn.n_inp, self._signature(self.loss))
        store_loss(learn, out, self.loss)

    def item_losses(self, learn):
        """The loss of each item from the loss's per-item form, or None (for `Learner.get_preds`)."""
        with torch.autocast(device_type=self.acc.device.type, enabled=False):
            return per_item_losses(self.loss, float32_outputs(learn.preds), learn.batch, learn.n_inp)
