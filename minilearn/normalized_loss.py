"""How a loss tells the step owner its sum and the total it is normalised by.

- `NormalizedLoss(total, denominator, metrics)`: the parts of a loss `total / denominator`, a plain
  record. A user's loss may return it; so do the plug-in losses, through `.as_tensor()`.
- `LossTensor`: the loss value itself, a 0-dim `torch.Tensor` (`.backward()`, `.item()`, arithmetic,
  `accelerator.backward` all work as on any loss), carrying `.total`, `.denominator` and `.metrics`
  for the step owner. What the plug-in losses of `minilearn.losses` return.

A loss normalised by something that varies between micro-batches (a sum of token weights, a count of
samples) needs both: the value to show and back-propagate in a plain loop, the parts so that gradient
accumulation and several processes divide by the total of the whole optimizer step.
"""

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["NormalizedLoss", "LossTensor", "loss_kind", "StepGradients"]

# PyTorch's own, also where a library patches `Tensor.as_subclass` (fastai's copies the tensor's attributes
# along, which would give a plain view of a loss its parts).
_as_subclass = torch._C.TensorBase.as_subclass


@dataclass
class NormalizedLoss:
    """A loss given as `total / denominator`, for example a token loss `-(sum w_t lp_t) / (sum w_t)`.

    Returning this (or the `LossTensor` that `.as_tensor()` makes of it) instead of the ratio is how
    a loss opts in to exact normalisation: the step owner back-propagates `total`, adds up the
    denominators of every micro-batch (and, at the optimizer step, of every process) and divides the
    gradients by that sum, so the gradient of a step is the gradient of the same loss over the whole
    global batch, however it was split. In a plain loop (one micro-batch per step) it is simply
    `total / denominator`.

    `total`: scalar tensor with a graph. `denominator`: scalar tensor (or number), not
    differentiated. `metrics`: as in `(loss, metrics)`. A zero denominator gives a zero loss (all
    weights zero means nothing to learn), not NaN.

    >>> w, lp = torch.tensor([1., 0., 3.]), torch.tensor([-1., -2., -0.5])
    >>> out = NormalizedLoss(-(w * lp).sum(), w.sum())
    >>> out.value
    tensor(0.6250)
    >>> loss = out.as_tensor()        # the same loss as a tensor, carrying the parts
    >>> loss, loss.total, loss.denominator
    (LossTensor(0.6250), tensor(2.5000), tensor(4.))
    """

    total: torch.Tensor
    denominator: torch.Tensor | float
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.total, torch.Tensor) or self.total.ndim != 0:
            shape = tuple(self.total.shape) if isinstance(self.total, torch.Tensor) else type(self.total).__name__
            raise ValueError(f"NormalizedLoss.total must be a scalar tensor, got {shape}")
        self.denominator = torch.as_tensor(self.denominator, device=self.total.device).detach()
        if self.denominator.ndim != 0:
            raise ValueError(f"NormalizedLoss.denominator must be a scalar, got shape {tuple(self.denominator.shape)}")

    @property
    def value(self) -> torch.Tensor:
        """`total / denominator`, or 0 (with zero gradient) where the denominator is 0."""
        d = self.denominator.to(self.total.dtype)
        return torch.where(d != 0, self.total / torch.where(d != 0, d, torch.ones_like(d)), self.total * 0)

    def as_tensor(self) -> "LossTensor":
        """The loss as a `LossTensor`: the value `total / denominator`, carrying `total`,
        `denominator` and `metrics`."""
        return _loss_tensor(self.value, self.total, self.denominator, self.metrics)


class LossTensor(torch.Tensor):
    """A loss value, a 0-dim tensor, that carries what the step owner needs to normalise it exactly.

    It is a `torch.Tensor` in every way that matters for a loss: `.backward()`, `.item()`,
    `float()`, f-string formatting, `accelerator.backward(loss)`, `torch.autograd.grad`. On top:

    - `total`: the un-normalised sum, with its graph (for a sum-reduced loss, the value itself);
    - `denominator`: the detached scalar the value is `total` divided by, or None for a sum-reduced
      loss (then the step owner treats it as any plain scalar: `is_sum` is True);
    - `metrics`: the dict a loss would return in `(loss, metrics)`.

    The parts belong to this value only: every operation on it (`0.5 * loss`, `loss + other`,
    `loss.detach()`, `loss.float()`) gives a plain `torch.Tensor`. A combination of losses is then an
    ordinary scalar, averaged per micro-batch like any other, rather than a value whose parts no
    longer match it. Return the `LossTensor` itself (or a `NormalizedLoss`) to get exact
    normalisation.

    Made by `NormalizedLoss.as_tensor()` (a ratio) and `LossTensor.of_sum(total, metrics)` (a sum).

    >>> x = torch.tensor([1.0, 3.0], requires_grad=True)
    >>> loss = NormalizedLoss(x.sum(), 2, {"n": 2}).as_tensor()
    >>> loss
    LossTensor(2., grad_fn=<AliasBackward0>)
    >>> loss.total, loss.denominator, loss.metrics, loss.is_sum
    (tensor(4., grad_fn=<SumBackward0>), tensor(2), {'n': 2}, False)
    >>> type(0.5 * loss).__name__, f"{loss:.3f}", loss.item()
    ('Tensor', '2.000', 2.0)
    >>> loss.backward(); x.grad
    tensor([0.5000, 0.5000])
    """

    total: torch.Tensor
    denominator: torch.Tensor | None
    metrics: dict

    @staticmethod
    def of_sum(total: torch.Tensor, metrics: dict | None = None) -> "LossTensor":
        """A sum-reduced loss (Tinker's `"sum"` form): the value is `total`, there is no denominator.

        >>> LossTensor.of_sum(torch.tensor(3.0), {"tokens": 4}).is_sum
        True
        """
        if not isinstance(total, torch.Tensor) or total.ndim != 0:
            raise ValueError(f"LossTensor.of_sum needs a scalar tensor, got "
                             f"{tuple(total.shape) if isinstance(total, torch.Tensor) else type(total).__name__}")
        return _loss_tensor(total, total, None, metrics)

    @property
    def is_sum(self) -> bool:
        """True for a sum-reduced loss (no denominator): normalised like any plain scalar."""
        return self.denominator is None

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Run every torch operation as on a plain tensor, so that results are plain tensors. A
        # no-op conversion (`.float()` of a float32 loss) or an in-place operation would hand back
        # this LossTensor itself: give a plain view of it instead.
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **(kwargs or {}))
            return _as_subclass(out, torch.Tensor) if isinstance(out, LossTensor) else out

    def __format__(self, format_spec: str) -> str:
        # torch formats only plain tensors as numbers (f"{loss:.4f}")
        return format(self.detach(), format_spec)

    def __deepcopy__(self, memo: dict) -> "LossTensor":
        # As for a plain tensor, only a loss without a graph can be deep-copied.
        parts = (_as_subclass(self, torch.Tensor), self.total, self.denominator, self.metrics)
        copied = _loss_tensor(*copy.deepcopy(parts, memo))
        memo[id(self)] = copied
        return copied


def loss_kind(loss: torch.Tensor, parts: NormalizedLoss | None, earlier: str | None = None,
              scope: str = "earlier batches of this pass") -> str:
    """How a loss is normalised across batches: `"ratio"` (it carries `parts`, a total and a
    denominator), `"sum"` (a sum-reduced `LossTensor`) or `"mean"` (any other scalar).

    `earlier` is the kind seen for the other batches of the same sum (`scope` says which, for the
    message); a different kind now raises a ValueError, since a sum, a ratio and a mean cannot be
    added up into one figure.

    >>> loss_kind(torch.tensor(2.0), None), loss_kind(LossTensor.of_sum(torch.tensor(3.0)), None)
    ('mean', 'sum')
    >>> loss_kind(torch.tensor(2.0), None, earlier="ratio")
    Traceback (most recent call last):
    ...
    ValueError: the loss was a ratio for earlier batches of this pass and is a mean now (a LossTensor with a denominator, a sum-reduced one, or a plain scalar): return the same kind every time
    """
    kind = "ratio" if parts is not None else "sum" if isinstance(loss, LossTensor) and loss.is_sum else "mean"
    if earlier not in (None, kind):
        raise ValueError(f"the loss was a {earlier} for {scope} and is a {kind} now (a LossTensor with a "
                         f"denominator, a sum-reduced one, or a plain scalar): return the same kind every time")
    return kind


class StepGradients:
    """The one place where losses become the gradients of an optimizer step, exactly normalised.

    The step owner keeps one on `learn.gradients`; every owner of `backward` calls
    `learn.gradients.backward(learn.loss, learn.loss_parts, learn.ends_step)` for each micro-batch, and the
    step owner calls `finish(model, micro_batches)` once the step's last micro-batch is back-propagated:

    - a ratio (a loss with `parts`): each micro-batch back-propagates its `total`; `finish` divides the
      gradients by the sum of the denominators over the micro-batches and the `processes` (`reduce` adds
      them up across processes). Alone in its step, in one process, the ratio is back-propagated as it is;
    - a sum-reduced loss: the gradient of the sum over the whole global batch (DDP's average undone);
    - any other scalar: the mean over the step's `micro_batches` (and, by DDP's average, the processes).

    `backward_fn(loss)` back-propagates one scalar: `Tensor.backward`, or AccelerateCB's accelerator.

    >>> w = torch.tensor([2.0], requires_grad=True)
    >>> grads = StepGradients()
    >>> for x, n in ((3.0, 1.0), (5.0, 3.0)):  # two micro-batches of a loss sum(w * x) / n
    ...     grads.backward(*[NormalizedLoss(w.sum() * x, n).as_tensor()] * 2, ends_step=False)
    >>> grads.finish([w]); w.grad  # (3 + 5) / (1 + 3)
    tensor([2.])
    """

    def __init__(self, backward_fn: Callable[[torch.Tensor], None] = torch.Tensor.backward, processes: int = 1,
                 reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t):
        self.backward_fn, self.processes, self.reduce = backward_fn, processes, reduce
        self.kind: str | None = None  # what this step's micro-batches returned so far (None: nothing yet)
        self.denominator: torch.Tensor | None = None  # their denominators' sum, for a ratio

    def backward(self, loss: torch.Tensor, parts: "LossTensor | None" = None, ends_step: bool = True,
                 backward: Callable[[Callable], None] | None = None) -> None:
        """Back-propagate one micro-batch's `loss` (`parts`: the `LossTensor` with a denominator, or None).
        `backward(backward_fn)`, when given, back-propagates the micro-batch its own way (LogprobLossCB's
        surrogate passes) with the step owner's `backward_fn`; `loss` then only says its kind."""
        kind = loss_kind(loss, parts, self.kind, "earlier micro-batches of this step")
        if ends_step and self.kind is None and self.processes == 1:  # alone in its step: exact as it is
            parts = None
        else:
            self.kind = kind
        if backward is not None:
            backward(self.backward_fn)
        elif parts is None:
            self.backward_fn(loss)
        else:
            self.backward_fn(parts.total)
            d = parts.denominator.to(torch.promote_types(parts.denominator.dtype, torch.float32))  # float64 stays
            self.denominator = d if self.denominator is None else self.denominator + d

    def reset(self) -> None:
        """Forget the step in progress (one a cancelled fit left open)."""
        self.kind = self.denominator = None

    def finish(self, params, micro_batches: int = 1) -> None:
        """Scale the gradients of `params` (an iterable of parameters) to those of the whole step, and start
        the next step afresh. The gradients hold the sum over the step's micro-batches, averaged over the
        processes by DDP."""
        kind, denominator, p = self.kind, self.denominator, self.processes
        self.reset()
        if denominator is not None:
            total = self.reduce(denominator)
            scale = torch.where(total != 0, p / total, torch.zeros_like(total))
        elif kind == "sum" and p > 1:
            scale = float(p)
        elif kind != "sum" and micro_batches > 1:
            scale = 1.0 / micro_batches
        else:
            return
        for param in params:
            if param.grad is not None:  # a Python float is exact in the gradients' own dtype
                param.grad.mul_(scale.to(param.grad.dtype) if isinstance(scale, torch.Tensor) else scale)


def _loss_tensor(value: torch.Tensor, total: torch.Tensor, denominator: torch.Tensor | None,
                 metrics: dict | None) -> LossTensor:
    # `as_subclass` keeps the autograd graph (the result is an alias of `value`, not a new leaf).
    with torch._C.DisableTorchFunctionSubclass():
        out = _as_subclass(value, LossTensor)
    out.total, out.denominator, out.metrics = total, denominator, dict(metrics or {})
    return out
