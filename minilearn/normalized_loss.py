"""NormalizedLoss: how a loss tells the step owner its sum and the total it is normalised by."""

from dataclasses import dataclass, field

import torch

__all__ = ["NormalizedLoss"]


@dataclass
class NormalizedLoss:
    """A loss given as `total / denominator`, for example a token loss `-(sum w_t lp_t) / (sum w_t)`.

    Returning this instead of the ratio is how a loss opts in to exact normalisation: the step owner
    back-propagates `total`, adds up the denominators of every micro-batch (and, at the optimizer
    step, of every process) and divides the gradients by that sum, so the gradient of a step is the
    gradient of the same loss over the whole global batch, however it was split. In a plain loop
    (one micro-batch per step) it is simply `total / denominator`.

    `total`: scalar tensor with a graph. `denominator`: scalar tensor (or number), not
    differentiated. `metrics`: as in `(loss, metrics)`. A zero denominator gives a zero loss (all
    weights zero means nothing to learn), not NaN.

    >>> w, lp = torch.tensor([1., 0., 3.]), torch.tensor([-1., -2., -0.5])
    >>> out = NormalizedLoss(-(w * lp).sum(), w.sum())
    >>> out.value
    tensor(0.6250)
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
