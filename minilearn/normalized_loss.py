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
from dataclasses import dataclass, field

import torch

__all__ = ["NormalizedLoss", "LossTensor", "loss_kind"]


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
            return out.as_subclass(torch.Tensor) if isinstance(out, LossTensor) else out

    def __format__(self, format_spec: str) -> str:
        # torch formats only plain tensors as numbers (f"{loss:.4f}")
        return format(self.detach(), format_spec)

    def __deepcopy__(self, memo: dict) -> "LossTensor":
        # As for a plain tensor, only a loss without a graph can be deep-copied.
        parts = (self.as_subclass(torch.Tensor), self.total, self.denominator, self.metrics)
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


def _loss_tensor(value: torch.Tensor, total: torch.Tensor, denominator: torch.Tensor | None,
                 metrics: dict | None) -> LossTensor:
    # `as_subclass` keeps the autograd graph (the result is an alias of `value`, not a new leaf).
    with torch._C.DisableTorchFunctionSubclass():
        out = value.as_subclass(LossTensor)
    out.total, out.denominator, out.metrics = total, denominator, dict(metrics or {})
    return out
