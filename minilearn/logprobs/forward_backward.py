"""Any loss over per-sequence target log-probabilities, with its exact gradient (Tinker's
`forward_backward_custom`).

A user function `fn(batch, logprobs) -> loss` or `-> (loss, metrics)` gets the batch and a list
with one tensor of target log-probabilities a sequence, padding removed (the convention is in
`minilearn.logprobs.sequences`). Its gradient reaches the parameters in one of two ways:

- direct: one forward pass with autograd, `fn`, and its backward;
- two passes: the log-probabilities `lp` without a graph; `fn` on detached leaves to get
  `g = dLoss/dlp`; then a forward-backward of the linear surrogate `sum(lp * g)`, which has the
  same gradient with respect to the parameters. The surrogate splits over sequences, so it runs in
  micro-batches of `micro_batch_size` sequences: a loss that couples the whole batch (pairs,
  rankings, batch statistics) then runs over a batch larger than one forward-backward could hold.

Stochastic layers (dropout in train mode): each micro-batch of the surrogate pass starts from the random
state its first-pass forward started from, so both passes draw the same masks and the gradient is exact.
With `micro_batch_size=None` it is direct mode's (the same one forward of the whole batch, the same
masks); with micro-batches the masks are those of running the micro-batches one after another, and the
gradient is that of direct autograd through that micro-batched forward (the micro-batches' log-probabilities
joined, then `fn`). Afterwards the generators are where the first pass and `fn` left them, as in direct mode.

Several processes (a `torch.distributed` group, as under AccelerateCB): each process passes its
share of the global batch, `fn` sees the gathered batch and log-probabilities of all of them (in
rank order), and each process back-propagates its own sequences only. The gradient left in the
parameters is then scaled so that DistributedDataParallel's average over processes equals the
one-process gradient of the whole global batch.
"""

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch.nn.parallel import DistributedDataParallel

from minilearn.callback import replacing
from minilearn.checkpoints.random_state import forward_random_state, forward_random_state_kept, set_forward_random_state
from minilearn.data import take_rows
from minilearn.distributed import gather_batch, gather_sequences, world_size
from minilearn.inputs import (callable_name, model_call, model_inputs, select_output, split_loss_output)
from minilearn.logprobs.sequences import logprob_targets, sequence_logprobs, split_sequences, target_positions
from minilearn.logprobs.per_token import IGNORE_INDEX, target_logprobs

__all__ = ["LogprobLossFn", "CustomLossResult", "CustomLossStep", "forward_backward_custom", "model_logits",
           "reference_logprobs", "custom_loss_step", "apply_custom_loss_gradients"]

LogprobLossFn = Callable[[Mapping, list[torch.Tensor]], torch.Tensor | tuple[torch.Tensor, dict]]
Backward = Callable[[torch.Tensor], None]


@dataclass
class CustomLossResult:
    """What `forward_backward_custom` returns: the loss's value and its metrics, as plain floats.
    The gradients are left in the parameters."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class CustomLossStep:
    """The loss of one batch, between computing it and back-propagating it.

    `loss` and `metrics` are what `fn` returned (on the global batch); `graph` is the loss with its
    autograd graph (direct mode) or None; `grads` are `dLoss/dlp` of this process's sequences (two
    passes) or None; `batch` and `targets` are this process's, for the surrogate pass; `random_states`
    the state each micro-batch's first-pass forward started from (`forward_random_state`), which the
    surrogate pass replays.
    """

    loss: torch.Tensor
    metrics: dict
    batch: Mapping
    targets: torch.Tensor
    graph: torch.Tensor | None = None
    grads: list[torch.Tensor] | None = None
    random_states: list | None = None


def _check_micro_batch_size(micro_batch_size: int | None, two_pass: bool) -> None:
    if micro_batch_size is not None and not two_pass:
        raise ValueError(f"micro_batch_size={micro_batch_size} needs two_pass=True: in direct mode the loss's "
                         f"graph spans the whole batch, so it cannot be cut into micro-batches")
    if micro_batch_size is not None and (not isinstance(micro_batch_size, int) or micro_batch_size < 1):
        raise ValueError(f"micro_batch_size must be a whole number >= 1 (sequences a pass) or None, "
                         f"got {micro_batch_size!r}")


def _micro_batches(batch: Mapping, n: int, size: int | None) -> list[tuple[slice, dict]]:
    step = size or n
    return [(rows, take_rows(batch, rows, n)) for rows in (slice(i, i + step) for i in range(0, n, step))]


def model_logits(learn, batch: Mapping) -> torch.Tensor:
    """Run the learner's `predict` step (whichever callback owns it) on `batch` and return the
    logits `(B, T, V)`; `learn.batch` and `learn.preds` are left as they were."""
    with replacing(learn, batch=batch, preds=None):
        learn.predict()
        return select_output(learn.preds, "logits")


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _logprobs_without_grad(call_model: Callable[[Mapping], torch.Tensor], batch: Mapping, targets: torch.Tensor,
                           micro_batch_size: int | None, states: list | None = None,
                           device: torch.device | None = None) -> list[torch.Tensor]:
    # `states`, when given, gets the random state each micro-batch's forward on `device` starts from.
    lps = []
    with torch.no_grad():
        for rows, mb in _micro_batches(batch, targets.shape[0], micro_batch_size):
            if states is not None:
                states.append(forward_random_state(device))
            lps += sequence_logprobs(select_output(call_model(mb), "logits"), targets[rows])
    return lps


def reference_logprobs(ref_model: torch.nn.Module, batch: Mapping, targets: torch.Tensor,
                       micro_batch_size: int | None = None, n_inp: int = 1) -> list[torch.Tensor]:
    """Per-sequence target log-probabilities under a frozen `ref_model`: eval mode, no gradient,
    in micro-batches of `micro_batch_size` sequences. It gets the keys its `forward` names."""
    names = model_inputs(ref_model)
    was_training = ref_model.training
    ref_model.eval()
    try:
        return _logprobs_without_grad(lambda mb: model_call(ref_model, mb, n_inp, names), batch, targets,
                                      micro_batch_size)
    finally:
        ref_model.train(was_training)


def _fn_batch(batch: Mapping, targets: torch.Tensor, ref: list[torch.Tensor] | None) -> dict:
    # What `fn` sees: the batch, with reference log-probabilities cut into sequences like the policy's.
    data = dict(batch)
    if ref is not None:
        data["ref_logprobs"] = ref
    elif isinstance(data.get("ref_logprobs"), torch.Tensor) and data["ref_logprobs"].ndim >= 2:
        data["ref_logprobs"] = split_sequences(data["ref_logprobs"], target_positions(targets), "ref_logprobs")
    return data


def _call(fn: LogprobLossFn, data: Mapping, lps: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
    loss, metrics, _ = split_loss_output(fn(data, lps), fn)
    if not loss.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"the loss returned by {callable_name(fn)} does not depend on the log-probabilities it "
                         f"was given (no gradient reaches them): compute it from the logprobs list")
    return loss, {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}


def custom_loss_step(learn, batch: Mapping, fn: LogprobLossFn, two_pass: bool = False,
                     micro_batch_size: int | None = None, ref_model: torch.nn.Module | None = None,
                     logits: torch.Tensor | None = None, gather: bool = True) -> CustomLossStep:
    """Compute `fn`'s loss on `batch` (and, when gradients are enabled, what its backward needs).

    `logits`: the model's output on the whole `batch` when already computed (with a graph in
    direct mode); else the model runs here (two passes: without grad, in micro-batches). With two passes
    and gradients the first pass must run here, in the surrogate's micro-batches, for its random states
    to be replayed.
    `gather=False` when `batch` already is the global batch (validation under AccelerateCB).
    """
    _check_micro_batch_size(micro_batch_size, two_pass)
    surrogate = two_pass and torch.is_grad_enabled()
    if surrogate and logits is not None:
        raise ValueError("two passes with gradients run their first pass themselves, micro-batch by micro-batch, "
                         "so that the surrogate pass replays its random state (dropout): pass logits=None")
    targets = logprob_targets(batch)
    states = [] if surrogate else None
    if logits is not None:
        lps = sequence_logprobs(logits, targets)
    elif two_pass:
        lps = _logprobs_without_grad(lambda mb: model_logits(learn, mb), batch, targets, micro_batch_size, states,
                                     _model_device(learn.model))
    else:
        lps = sequence_logprobs(model_logits(learn, batch), targets)
    ref = None if ref_model is None else reference_logprobs(ref_model, batch, targets, micro_batch_size, learn.n_inp)
    data = _fn_batch(batch, targets, ref)
    start = 0
    if gather and world_size() > 1:
        data = gather_batch(data, len(lps))
        lps, start = gather_sequences(lps)
    if not surrogate:
        loss, metrics = _call(fn, data, lps)
        return CustomLossStep(loss.detach(), metrics, batch, targets, graph=loss if loss.requires_grad else None)
    leaves = [lp.detach().requires_grad_() for lp in lps]
    loss, metrics = _call(fn, data, leaves)
    mine = leaves[start:start + targets.shape[0]]
    grads = torch.autograd.grad(loss, mine, allow_unused=True, materialize_grads=True)
    return CustomLossStep(loss.detach(), metrics, batch, targets, grads=list(grads), random_states=states)


def _gradient_scale(model: torch.nn.Module) -> int:
    # DistributedDataParallel averages the processes' gradients; each holds its own sequences' part
    # of the global loss's gradient, so multiply by the number of processes to get their sum.
    return world_size() if isinstance(model, DistributedDataParallel) else 1


def apply_custom_loss_gradients(learn, step: CustomLossStep, micro_batch_size: int | None = None,
                                backward: Backward | None = None) -> None:
    """Back-propagate a `CustomLossStep` into the parameters of `learn.model` (accumulating into
    `.grad`): the loss itself (direct), or the surrogate `sum(lp * g)` in micro-batches (two passes).

    `backward(loss)` back-propagates one scalar (default: the step owner's, `learn.gradients.backward_fn`:
    `loss.backward()`, or under AccelerateCB its accelerator's, which scales float16 losses).
    """
    backward = backward or learn.gradients.backward_fn
    scale = _gradient_scale(learn.model)
    if step.grads is None:
        if step.graph is None:
            raise RuntimeError("this loss was computed without gradients (in eval or no_grad mode); nothing to "
                               "back-propagate")
        backward(step.graph * scale)
        return
    positions = target_positions(step.targets)
    parts = _micro_batches(step.batch, step.targets.shape[0], micro_batch_size)
    device = _model_device(learn.model)
    # The first pass's micro-batches (the same rows): each forward starts from the random state that one
    # started from, so it draws the same dropout masks; then the generators go back to where the first
    # pass and `fn` left them.
    with forward_random_state_kept(device):
        for i, ((rows, mb), state) in enumerate(zip(parts, step.random_states, strict=True)):
            # Under DDP, only the last pass all-reduces: the earlier ones add up in .grad locally first.
            quiet = isinstance(learn.model, DistributedDataParallel) and i < len(parts) - 1
            set_forward_random_state(state, device)
            with learn.model.no_sync() if quiet else nullcontext():
                lp = target_logprobs(model_logits(learn, mb), step.targets[rows], IGNORE_INDEX)
                g = torch.zeros_like(lp)
                g[positions[rows]] = torch.cat(step.grads[rows]).to(lp.dtype)
                # (dense, so that every pass has a graph: under DDP each process must run its backward)
                backward((lp * g).sum() * scale)


def forward_backward_custom(learn, batch: Mapping, fn: LogprobLossFn, two_pass: bool = False,
                            micro_batch_size: int | None = None,
                            ref_model: torch.nn.Module | None = None) -> CustomLossResult:
    """Compute `fn(batch, logprobs)` on `batch` and leave its gradient in the parameters of
    `learn.model`, for `learn.optim_step()` to apply (gradients add up over calls, as with
    `loss.backward()`).

    - `batch`: a mapping with `input_ids` (and `attention_mask`) or `target_tokens`; see
      `minilearn.logprobs.sequences` for the targets and padding.
    - `fn(batch, logprobs)`: `logprobs` is a list of one tensor a sequence, `(T_i,)` or `(T_i, K)`;
      returns a scalar loss or `(loss, metrics)`. With `ref_model`, `batch["ref_logprobs"]` holds its
      log-probabilities the same way; per-token `ref_logprobs` `(B, T)` in the batch are cut likewise.
    - `two_pass`: compute the gradient through the surrogate `sum(lp * dLoss/dlp)` instead of
      through `fn`'s graph; `micro_batch_size` sequences a pass (both passes; None: all at once).
      With dropout each surrogate micro-batch replays its first pass's random state: the gradient is
      direct mode's with `micro_batch_size=None`, else that of direct autograd through the same
      micro-batched forward (see the module docstring).

    >>> from minilearn import DataLoaders, Learner
    >>> from minilearn.demo import TinyCausalLM
    >>> learn = Learner(TinyCausalLM(20, dim=16, n_layers=1, n_heads=2, max_len=8), DataLoaders([], []))
    >>> batch = {"input_ids": torch.randint(0, 20, (4, 6))}
    >>> mean_nll = lambda batch, lps: -torch.cat(lps).mean()
    >>> out = forward_backward_custom(learn, batch, mean_nll, two_pass=True, micro_batch_size=2)
    >>> round(out.loss, 1)   # about log(20) for a new model
    3.0
    """
    if not callable(fn):
        raise TypeError(f"fn must be a function fn(batch, logprobs) -> loss or (loss, metrics), got {fn!r}")
    with torch.enable_grad():
        step = custom_loss_step(learn, batch, fn, two_pass, micro_batch_size, ref_model)
        apply_custom_loss_gradients(learn, step, micro_batch_size)
    return CustomLossResult(step.loss.item(), {k: float(v) for k, v in step.metrics.items()})
