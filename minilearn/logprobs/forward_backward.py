"""Any loss over per-sequence target log-probabilities, with its exact gradient (Tinker's
`forward_backward_custom`).

`fn(batch, logprobs) -> loss` or `(loss, metrics)` gets one tensor of target log-probabilities a sequence
(see `minilearn.logprobs.sequences`). Direct mode back-propagates through `fn`'s graph. Two passes compute
`lp` without a graph, `g = dLoss/dlp` from `fn` on detached leaves, then back-propagate the surrogate
`sum(lp * g)`: the same gradient, split over micro-batches of sequences, so a loss that couples the whole
batch (pairs, rankings) runs over more than one forward-backward could hold. Each surrogate micro-batch
replays its first pass's random state (dropout): the gradient is direct mode's (`micro_batch_size=None`)
or direct autograd's through the same micro-batched forward, and the generators end where the first pass
and `fn` left them. Under `torch.distributed`, `fn` sees the gathered global batch (in rank order) and each
process back-propagates its own sequences, scaled so that DDP's average is the one-process gradient.
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
from minilearn.logprobs.per_token import IGNORE_INDEX, slices, target_logprobs

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
    """The loss of one batch, between computing it and back-propagating it: `loss` and `metrics` from `fn`
    (on the global batch); `graph`, the loss with its graph (direct mode); `grads`, `dLoss/dlp` of this
    process's sequences (two passes); this process's `batch` and `targets`, and the `random_states` each
    first-pass micro-batch started from, for the surrogate pass."""

    loss: torch.Tensor
    metrics: dict
    batch: Mapping
    targets: torch.Tensor
    graph: torch.Tensor | None = None
    grads: list[torch.Tensor] | None = None
    random_states: list | None = None


def _micro_batches(batch: Mapping, n: int, size: int | None) -> list[tuple[slice, dict]]:
    return [(rows, take_rows(batch, rows, n)) for rows in slices(n, size or n)]


def model_logits(learn, batch: Mapping) -> torch.Tensor:
    """Run the learner's `predict` step (whichever callback owns it) on `batch` and return the
    logits `(B, T, V)`; `learn.batch` and `learn.preds` are left as they were."""
    with replacing(learn, batch=batch, preds=None):
        learn.predict()
        return select_output(learn.preds, "logits")


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


def custom_loss_step(learn, batch: Mapping, fn: LogprobLossFn, two_pass: bool = False,
                     micro_batch_size: int | None = None, ref_model: torch.nn.Module | None = None,
                     logits: torch.Tensor | None = None, gather: bool = True) -> CustomLossStep:
    """Compute `fn`'s loss on `batch` (and, when gradients are enabled, what its backward needs).

    `logits`: the model's output on the whole `batch` if already computed (not allowed for two passes
    with gradients, whose first pass runs here so that its random states are replayed); `gather=False`
    when `batch` already is the global batch (validation under AccelerateCB).
    """
    if micro_batch_size is not None and not two_pass:
        raise ValueError(f"micro_batch_size={micro_batch_size} needs two_pass=True: in direct mode the loss's "
                         f"graph spans the whole batch, so it cannot be cut into micro-batches")
    if micro_batch_size is not None and (not isinstance(micro_batch_size, int) or micro_batch_size < 1):
        raise ValueError(f"micro_batch_size must be a whole number >= 1 (sequences a pass) or None, "
                         f"got {micro_batch_size!r}")
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
                                     next(learn.model.parameters()).device)
    else:
        lps = sequence_logprobs(model_logits(learn, batch), targets)
    # What `fn` sees: the batch, with reference log-probabilities cut into sequences like the policy's.
    data = dict(batch)
    if ref_model is not None:
        data["ref_logprobs"] = reference_logprobs(ref_model, batch, targets, micro_batch_size, learn.n_inp)
    elif isinstance(data.get("ref_logprobs"), torch.Tensor) and data["ref_logprobs"].ndim >= 2:
        data["ref_logprobs"] = split_sequences(data["ref_logprobs"], target_positions(targets), "ref_logprobs")
    start = 0
    if gather and world_size() > 1:
        data = gather_batch(data, len(lps))
        lps, start = gather_sequences(lps)
    if surrogate:
        lps = [lp.detach().requires_grad_() for lp in lps]
    loss, metrics, _ = split_loss_output(fn(data, lps), fn)
    if not loss.requires_grad and torch.is_grad_enabled():
        raise ValueError(f"the loss returned by {callable_name(fn)} does not depend on the log-probabilities it "
                         f"was given (no gradient reaches them): compute it from the logprobs list")
    metrics = {k: v.detach() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
    if not surrogate:
        return CustomLossStep(loss.detach(), metrics, batch, targets, graph=loss if loss.requires_grad else None)
    mine = lps[start:start + targets.shape[0]]
    grads = torch.autograd.grad(loss, mine, allow_unused=True, materialize_grads=True)
    return CustomLossStep(loss.detach(), metrics, batch, targets, grads=list(grads), random_states=states)


def apply_custom_loss_gradients(learn, step: CustomLossStep, micro_batch_size: int | None = None,
                                backward: Backward | None = None) -> None:
    """Back-propagate a `CustomLossStep` into the parameters of `learn.model` (accumulating into
    `.grad`): the loss itself (direct), or the surrogate `sum(lp * g)` in micro-batches (two passes).
    `backward(loss)` back-propagates one scalar (default: the step owner's `learn.gradients.backward_fn`).
    """
    backward = backward or learn.gradients.backward_fn
    ddp = isinstance(learn.model, DistributedDataParallel)
    # DDP averages the processes' gradients, each its own sequences' part of the global loss's: times
    # the number of processes gives their sum.
    scale = world_size() if ddp else 1
    if step.grads is None:
        if step.graph is None:
            raise RuntimeError("this loss was computed without gradients (in eval or no_grad mode); nothing to "
                               "back-propagate")
        backward(step.graph * scale)
        return
    positions = target_positions(step.targets)
    parts = _micro_batches(step.batch, step.targets.shape[0], micro_batch_size)
    device = next(learn.model.parameters()).device
    # Each of the first pass's micro-batches replays the random state it started from (same dropout
    # masks); then the generators go back to where the first pass and `fn` left them.
    with forward_random_state_kept(device):
        for i, ((rows, mb), state) in enumerate(zip(parts, step.random_states, strict=True)):
            set_forward_random_state(state, device)
            # Under DDP only the last pass all-reduces: the earlier ones add up in .grad locally first.
            with learn.model.no_sync() if ddp and i < len(parts) - 1 else nullcontext():
                lp = target_logprobs(model_logits(learn, mb), step.targets[rows], IGNORE_INDEX)
                g = torch.zeros_like(lp)
                g[positions[rows]] = torch.cat(step.grads[rows]).to(lp.dtype)
                # (dense, so that every pass has a graph: under DDP each process must run its backward)
                backward((lp * g).sum() * scale)


def forward_backward_custom(learn, batch: Mapping, fn: LogprobLossFn, two_pass: bool = False,
                            micro_batch_size: int | None = None,
                            ref_model: torch.nn.Module | None = None) -> CustomLossResult:
    """Compute `fn(batch, logprobs)` on `batch` and leave its gradient in the parameters of `learn.model`
    for `learn.optim_step()` to apply (gradients add up over calls, as with `loss.backward()`).

    - `batch`: a mapping with `input_ids` (and `attention_mask`) or `target_tokens`; see
      `minilearn.logprobs.sequences` for the targets and padding.
    - `fn(batch, logprobs)`: `logprobs` is a list of one tensor a sequence, `(T_i,)` or `(T_i, K)`;
      returns a scalar loss or `(loss, metrics)`. With `ref_model`, `batch["ref_logprobs"]` holds its
      log-probabilities the same way; per-token `ref_logprobs` `(B, T)` in the batch are cut likewise.
    - `two_pass`: compute the gradient through the surrogate `sum(lp * dLoss/dlp)` instead of through
      `fn`'s graph; `micro_batch_size` sequences a pass (both passes; None: all at once), exact with
      dropout too (see the module docstring).

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
