"""AccelerateCB and AccelerateCustomCB: run the Learner under Hugging Face Accelerate.

One CPU, one GPU or several processes (`torchrun`, `accelerate launch`, `notebook_launcher`), with
mixed precision and gradient accumulation, and a custom `nn.Module` loss computed in float32.
"""

import atexit
import functools
import os
import time
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import DistributedType, set_seed
from torch.utils.data import DataLoader

from minilearn.callback import Callback
from minilearn.data import DataLoaders, is_mapping, to_device
from minilearn.distributed import is_main_process, pad_across_processes
from minilearn.exceptions import CancelBatchException
from minilearn.inputs import LastCall, loss_call, per_item_losses, signature_of, store_loss
from minilearn.logprobs.linear import LinearLogits
from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.normalized_loss import loss_kind
from minilearn.order import Order
from minilearn.predictions import TARGET_KEYS, pad_value

__all__ = ["AccelerateCB", "AccelerateCustomCB", "VALID_PADDING", "float32_outputs", "reset_accelerate_state"]


# How a validation batch's tensors are padded to the longest sequence on any process before the
# processes' batches are joined: targets with IGNORE_INDEX (nothing is predicted there), anything else
# with 0: masks and weights, and `input_ids` (a reference model may run on them, so they must stay
# token ids; the attention_mask, 0 there too, marks them as padding).
VALID_PADDING: dict[str, int] = {key: IGNORE_INDEX for key in TARGET_KEYS}

# How long, at exit, the process group's worker threads get to finish releasing their last collective.
_EXIT_GRACE_SECONDS = 0.25


def reset_accelerate_state() -> None:
    """Forget Accelerate's process-wide settings (its `AcceleratorState`, `GradientState` and
    `PartialState` singletons) in a process that trains alone.

    `AccelerateCB` resets the first two itself when it is built in one process. Call this before
    `accelerate.notebook_launcher(train, num_processes=2)` in a notebook that has already trained
    with Accelerate: the launcher refuses to start processes once an `Accelerator` exists.
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        raise RuntimeError("reset_accelerate_state is for a process that trains alone; this one is in a process "
                           "group of several, whose state Accelerate still needs")
    AcceleratorState._reset_state(reset_partial_state=True)  # a forked process must not inherit the device setup
    GradientState._reset_state()


@functools.cache  # once per process
def _shut_down_process_group_at_exit() -> None:
    atexit.register(_shut_down_process_group)


def _shut_down_process_group() -> None:
    # A gloo collective's tensors are released by one of the process group's worker threads after
    # the collective has completed, and releasing a tensor that Python knows takes the GIL. A worker
    # that gets there only once the interpreter has begun to finalize is stopped by Python inside a
    # C++ destructor, which aborts the process ("terminate called without an active exception",
    # SIGABRT) at the very end of a run that went well. Under load a worker can wait that long for
    # the CPU and the GIL after the last validation gather. So, while Python still runs threads:
    # sleep (which hands the GIL over) to let them finish, then shut the group down as Accelerate's
    # `end_training` does. (That cannot be done at the end of a fit: the next fit needs the group.)
    time.sleep(_EXIT_GRACE_SECONDS)
    PartialState().destroy_process_group()


class AccelerateCB(Callback):
    """Train under an `accelerate.Accelerator`: owns `backward`, `step` and `zero_grad`.

    - The model, optimizer and the train and valid `DataLoader`s are prepared once, at the first
      `fit` (a new optimizer from `fit(reset_opt=True)`, or new `dls`, are prepared when they appear).
      `learn.unwrapped_model` is then the model without Accelerate's wrappers.
    - With `gradient_accumulation_steps=k`, gradients of k micro-batches are summed and the optimizer
      steps once; between boundaries `step` raises `CancelBatchException`, so `after_step` callbacks
      (schedules) run once per real optimizer step. A window never crosses the end of a training
      pass: the last micro-batches of a pass (fewer than k) make a step of their own, normalised by the
      same rules as a whole window (so the end of the fit leaves no gradient behind).
    - A loss with a denominator (the plug-in losses, or any loss returning
      `NormalizedLoss(total, denominator)`; `learn.loss_parts`) gets the exact gradient of the whole
      global batch: `total` is back-propagated, the denominators are added up over micro-batches and
      processes, and the gradients are divided by that sum before clipping and stepping. A
      sum-reduced loss (`WeightedCrossEntropy(reduction="sum")`, `PolicyGradientLoss`) gets the
      gradient of its sum over the whole global batch. Any other loss gets the mean of its values
      over the micro-batches of the step (and the processes), as in a hand-written accumulation
      loop; for a short window at the end of a pass, over the micro-batches it has.
    - `max_grad_norm` clips at the boundary, after the division (use it instead of GradClipCB).
    - Validation predictions and batches are gathered from all processes before the loss, so
      validation metrics are those of the whole validation set (the duplicates that even sharding
      adds dropped): model outputs of any kind (a tensor, a tuple, a Hugging Face `ModelOutput`,
      `LinearLogits`), sequences of different lengths padded to a common one first, each batch key
      with its padding (`VALID_PADDING`, updated by `valid_padding={key: value}`; tuple batches pad
      integer tensors with IGNORE_INDEX, others with 0).
    - Progress is shown on the main process only (`learn.is_main_process`).

    Passed to one fit (`fit(cbs=AccelerateCB(...))`), it leaves the learner as it found it: its own
    model object with its own `forward` (no DDP wrapper, no autocast patch), its data loaders and
    optimizer. Kept in `learn.cbs`, it keeps its preparation across fits until it is removed.

    On a machine without a GPU, a multi-process launch needs `cpu=True`; it is set for you when
    `WORLD_SIZE` > 1 and CUDA is not available, and a launcher/Accelerate disagreement on the number
    of processes is refused rather than silently training unsharded.

    Random streams: under several processes each one draws its own dropout masks and augmentations.
    At the first fit, process `i` is seeded with `seed + i` (Accelerate's `set_seed(seed,
    device_specific=True)`); without `seed`, one is drawn from torch's generator, so
    `torch.manual_seed(s)` at the top of the script reproduces the run. In one process the stream is
    left as it is unless `seed` is given. A resumed fit (`fit(resume=...)`) then sets back each
    process's own saved states.
    """

    order = Order.ACCELERATE

    def __init__(self, mixed_precision: str | None = None, gradient_accumulation_steps: int = 1,
                 max_grad_norm: float | None = None, valid_padding: dict[str, float] | None = None,
                 seed: int | None = None, **accelerator_kwargs: Any):
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size > 1 and not torch.cuda.is_available():
            accelerator_kwargs.setdefault("cpu", True)
        if world_size == 1 and not torch.distributed.is_initialized():
            # Accelerate keeps its settings in process-wide singletons, so a second Accelerator would
            # inherit (or clash with) the first one's. In one process, start each callback afresh (the
            # process's own setup, PartialState, stays: it cannot change within the process).
            AcceleratorState._reset_state()
            GradientState._reset_state()
        # The accumulation windows are kept here, not by Accelerate (whose counter runs on across
        # epochs over a plain list and divides a short window's gradients by k): its Accelerator
        # steps at every call, and `before_batch` decides which micro-batch ends a window.
        self.acc = Accelerator(mixed_precision=mixed_precision, **accelerator_kwargs)
        if self.acc.num_processes != world_size:
            raise RuntimeError(
                f"the launcher started WORLD_SIZE={world_size} processes but Accelerate sees "
                f"num_processes={self.acc.num_processes}: each process would train on all the data. "
                f"On a machine without a GPU pass cpu=True (AccelerateCB(cpu=True)); check the launch config.")
        if self.acc.num_processes > 1:
            _shut_down_process_group_at_exit()
        self.max_grad_norm = max_grad_norm
        self.valid_padding = {**VALID_PADDING, **(valid_padding or {})}
        # Without a loss scaler, DeepSpeed, Megatron or XLA, Accelerate's optimizer wrapper and
        # `backward` only do what `step` and `backward` below do, plus bookkeeping that looks up
        # installed packages and signatures on every call (0.1-0.3 ms a batch): then we skip them.
        self._plain = self.acc.scaler is None and self.acc.distributed_type not in (
            DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM, DistributedType.XLA)
        self.gradient_accumulation_steps, self.seed = gradient_accumulation_steps, seed
        self._seeded = False  # each process's random stream is set once, at the first fit
        self._ends_step = True  # whether this training micro-batch ends an accumulation window
        self._no_sync = None  # DDP's no_sync context while a window is open
        self._pass_length: int | None = None  # batches in this training pass (None: Accelerate's loader says when it ends)
        self._mixed_precision = self.acc.mixed_precision
        if mixed_precision not in (None, "no") and not self.acc.native_amp:
            # Accelerate then trains in float32 without a word: the run would look like mixed precision.
            warnings.warn(f"mixed_precision={mixed_precision!r} cannot run on {self.acc.device.type}: Accelerate "
                          f"makes no autocast or loss scaler there, so this trains in float32. On a CPU use "
                          f"mixed_precision='bf16'; float16 needs a GPU.", UserWarning, stacklevel=2)
        self._model = self._opt = self._dls = None  # the prepared ones
        self._user_model = self._user_opt = self._user_dls = None  # what they replaced, put back by `removed`
        self._user_model_attrs: frozenset[str] = frozenset()  # the names in vars(user's model) before preparing
        self._denominator: torch.Tensor | None = None
        self._step_kind: str | None = None  # "ratio", "sum" or "mean": what this step's micro-batches returned

    # ---- preparing, once ---------------------------------------------------------------------

    def _prepare_loader(self, dl):
        return self.acc.prepare_data_loader(dl) if isinstance(dl, DataLoader) else dl

    def before_fit(self, learn):
        if self.acc.mixed_precision != self._mixed_precision:
            raise RuntimeError(
                f"this AccelerateCB was built with mixed_precision={self._mixed_precision!r}, but Accelerate's "
                f"process-wide state now says {self.acc.mixed_precision!r}: another AccelerateCB was built since. "
                f"Build this one again (AccelerateCB(...)) to use it.")
        if any(type(cb).__name__ == "GradClipCB" for cb in learn.cbs):
            raise ValueError("GradClipCB clips each micro-batch before the gradients are normalised; "
                             "under AccelerateCB pass max_grad_norm=... instead")
        if learn.model is not self._model:
            self._undo_model_patches()  # a model replaced while this callback stayed: unpatch the old one
            self._user_model, self._user_model_attrs = learn.model, frozenset(vars(learn.model))
            learn.model = self._model = self.acc.prepare_model(learn.model)
        if learn.opt is not self._opt:
            self._user_opt = learn.opt
            wrapped = self.acc.prepare_optimizer(learn.opt)
            # The learner then keeps a plain optimizer, which schedules and lr_find also see.
            learn.opt = self._opt = wrapped.optimizer if self._plain else wrapped
        if learn.dls is not self._dls:
            self._user_dls = learn.dls
            learn.dls = self._dls = DataLoaders(self._prepare_loader(learn.dls.train),
                                                 self._prepare_loader(learn.dls.valid))
        learn.is_main_process, learn.grad_scaler = self.acc.is_main_process, self.acc.scaler
        self._denominator = self._step_kind = None
        if not self._seeded:
            self._seed_processes()

    def _seed_processes(self) -> None:
        # Every process starts with the random state the script gave it, the same everywhere, so they
        # would all draw the same dropout masks. Process i gets the seed `seed + i` instead (python,
        # numpy, torch, CUDA), the seed drawn from torch's generator when none is given, which the
        # script's torch.manual_seed made the same on every process: one number reproduces the run.
        # A single process keeps its own stream unless a seed is given.
        self._seeded = True
        if self.seed is None and self.acc.num_processes == 1:
            return
        seed = self.seed if self.seed is not None else int(torch.randint(0, 2**31 - 1024, ()))
        set_seed(seed, device_specific=True)

    def before_epoch(self, learn):
        # Validation batches are gathered from every process (after_predict): only a training pass is split.
        learn.pass_is_sharded = learn.training and self.acc.num_processes > 1
        if learn.training and self.gradient_accumulation_steps > 1:
            self._pass_length = _batches_in_pass(learn.dls.train, self.gradient_accumulation_steps)

    def before_batch(self, learn):
        if not isinstance(learn.dl, DataLoader):  # prepared loaders place batches themselves
            learn.batch = to_device(learn.batch, self.acc.device)
        if learn.training and self.gradient_accumulation_steps > 1:
            done = learn.iter + 1
            self._ends_step = (done % self.gradient_accumulation_steps == 0 or done == self._pass_length or
                               (self._pass_length is None and self.acc.gradient_state.end_of_dataloader))
            if not self._ends_step:  # DDP must not all-reduce gradients that are not final yet
                self._no_sync = self.acc.no_sync(learn.model)
                self._no_sync.__enter__()

    def cleanup_batch(self, learn):
        if self._no_sync is not None:
            self._no_sync.__exit__(None, None, None)
            self._no_sync = None

    def after_predict(self, learn):
        if learn.training or self.acc.num_processes == 1:
            return
        preds, batch = learn.preds, self._padded_batch(learn.batch)
        if isinstance(preds, LinearLogits):
            # Every process holds the same output layer: gather the hidden states only.
            hidden, learn.batch = self.acc.gather_for_metrics((pad_across_processes(preds.hidden), batch))
            learn.preds = LinearLogits(hidden, preds.weight, preds.bias)
        elif isinstance(preds, Mapping):  # a ModelOutput: its tensors (a cache object stays behind)
            tensors = {k: pad_across_processes(v) for k, v in preds.items() if isinstance(v, torch.Tensor)}
            gathered, learn.batch = self.acc.gather_for_metrics((tensors, batch))
            learn.preds = type(preds)(**gathered)
        elif isinstance(preds, tuple):
            learn.preds, learn.batch = self.acc.gather_for_metrics((tuple(pad_across_processes(v) for v in preds), batch))
        else:
            learn.preds, learn.batch = self.acc.gather_for_metrics((pad_across_processes(preds), batch))

    def _padded_batch(self, batch: Any) -> Any:
        # Each tensor padded to the longest on any process, so that the processes' batches can be joined.
        if is_mapping(batch):
            return {k: pad_across_processes(v, self.valid_padding.get(k, 0)) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()}
        return type(batch)(pad_across_processes(v, pad_value(None, v)) if isinstance(v, torch.Tensor) else v
                           for v in batch)

    # ---- the steps ---------------------------------------------------------------------------

    def backward(self, learn):
        parts = learn.loss_parts
        kind = loss_kind(learn.loss, parts, self._step_kind, "earlier micro-batches of this step")
        self._step_kind = kind
        if kind != "ratio":
            self._backward(learn.loss)
            return
        self._backward(parts.total)
        d = parts.denominator.to(torch.promote_types(parts.denominator.dtype, torch.float32))  # float64 stays
        self._denominator = d if self._denominator is None else self._denominator + d

    def _backward(self, loss: torch.Tensor) -> None:
        if self._plain:
            loss.backward()  # what acc.backward does in this case
        else:
            self.acc.backward(loss)

    def step(self, learn):
        if not self._ends_step:
            raise CancelBatchException()  # not a boundary: keep accumulating, no step, no zero_grad
        # The gradients hold the sum over this window's micro-batches, averaged over the p processes by
        # DDP. A loss with a denominator undoes the average and divides by the global denominator; a sum
        # undoes it, so that the gradient is that of the sum over the whole global batch; a mean (also
        # what LogprobLossCB back-propagates) is divided by the micro-batches of the window.
        p = self.acc.num_processes
        if self._step_kind == "ratio":
            total = self.acc.reduce(self._denominator.to(self.acc.device), "sum")
            self._scale_gradients(learn.model, torch.where(total != 0, p / total, torch.zeros_like(total)))
        elif self._step_kind == "sum" and p > 1:
            self._scale_gradients(learn.model, float(p))
        elif self._step_kind in ("mean", None) and (window := learn.iter % self.gradient_accumulation_steps + 1) > 1:
            self._scale_gradients(learn.model, 1.0 / window)
        self._denominator = self._step_kind = None
        if self.max_grad_norm is not None:
            self.acc.clip_grad_norm_(learn.model.parameters(), self.max_grad_norm)
        learn.opt.step()

    def zero_grad(self, learn):
        learn.opt.zero_grad()  # only reached at a boundary: `step` cancels the rest

    @staticmethod
    def _scale_gradients(model: torch.nn.Module, scale: torch.Tensor | float) -> None:
        for p in model.parameters():
            if p.grad is not None:  # a Python float is exact in the gradients' own dtype
                p.grad.mul_(scale.to(p.grad.dtype) if isinstance(scale, torch.Tensor) else scale)

    # ---- leaving the learner ---------------------------------------------------------------------

    def _undo_model_patches(self) -> None:
        # Accelerate marks the model object itself (`_is_accelerate_prepared`) and, with mixed
        # precision, replaces its `forward` by one under autocast that converts the outputs to fp32,
        # keeping the original in `_original_forward`. Put the model's own attributes back.
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
        if self._model is not None and learn.model is self._model:
            learn.model = self._user_model
        if self._opt is not None and learn.opt is self._opt:
            learn.opt = self._user_opt
        if self._dls is not None and learn.dls is self._dls:
            learn.dls = self._user_dls
        learn.is_main_process, learn.pass_is_sharded, learn.grad_scaler = is_main_process(), False, None
        self.acc.free_memory()  # Accelerate's references to the prepared objects
        self._model = self._opt = self._dls = self._user_model = self._user_opt = self._user_dls = None
        self._user_model_attrs, self._denominator, self._step_kind = frozenset(), None, None

    # ---- state ---------------------------------------------------------------------------------

    def save_state(self, path: str | os.PathLike) -> None:
        """Save model, optimizer, RNG and scaler states through `Accelerator.save_state`."""
        self.acc.save_state(str(path))

    def load_state(self, path: str | os.PathLike) -> None:
        """Load what `save_state` wrote (call after the first `fit`, once things are prepared)."""
        self.acc.load_state(str(path))


def _batches_in_pass(loader: Any, gradient_accumulation_steps: int) -> int | None:
    """The number of batches of a training pass, so that its last accumulation window can end with it;
    None for a prepared loader without a length (Accelerate then says when its last batch comes)."""
    try:
        return len(loader)
    except TypeError:
        if isinstance(loader, DataLoader):
            return None
        raise TypeError(f"AccelerateCB(gradient_accumulation_steps={gradient_accumulation_steps}) needs to know where a "
                        f"training pass ends, so that its last micro-batches still make a step, but the training loader "
                        f"({type(loader).__name__}) has no len(): pass a DataLoader or a list of batches") from None


def float32_outputs(x: Any) -> Any:
    """Upcast every half-precision floating tensor in a nested output to float32 (float64 stays).

    `LinearLogits` pass unchanged: their log-probabilities are computed in float32 anyway, and an
    upcast copy of the output layer is what they exist to avoid.
    """
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.element_size() < 4 else x
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(float32_outputs(v) for v in x)
    if isinstance(x, dict):
        return {k: float32_outputs(v) for k, v in x.items()}
    if hasattr(x, "logits") and isinstance(x.logits, torch.Tensor):
        x.logits = float32_outputs(x.logits)
    return x


class AccelerateCustomCB(AccelerateCB):
    """AccelerateCB that also owns `get_loss`, with a custom loss module (or function).

    The loss is called with its named inputs (see `minilearn.inputs`), outside autocast and on
    float32 model outputs, and its result lands on `learn.loss` and `learn.loss_metrics`, so that
    MetricsCB, ProgressCB and schedules see it. The plug-in losses (and a loss returning
    `NormalizedLoss`) are normalised exactly under accumulation and several processes.

    >>> # learn.fit(1, cbs=AccelerateCustomCB(WeightedCrossEntropy(), mixed_precision="bf16"))
    """

    def __init__(self, loss: Callable, **kwargs: Any):
        super().__init__(**kwargs)
        self.loss = loss
        self._signature = LastCall(signature_of)

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
