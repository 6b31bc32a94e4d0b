"""Weighted token cross-entropy: Weaver's `cross_entropy` and Tinker's sum form."""

from typing import Literal

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX, token_logprobs
from minilearn.losses.masked import (check_token_values, per_row_sums, per_row_weight_normalized, token_mask,
                                    weight_normalized)
from minilearn.normalized_loss import LossTensor

__all__ = ["weighted_cross_entropy", "WeightedCrossEntropy", "Reduction"]

Reduction = Literal["weight_mean", "sum"]
_REDUCTIONS = ("weight_mean", "sum")


def _check_reduction(reduction: str) -> None:
    """Raise a clear error for a reduction other than `"weight_mean"` or `"sum"`."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")


def weighted_cross_entropy(logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor | None = None,
                           reduction: Reduction = "weight_mean",
                           ignore_index: int = IGNORE_INDEX) -> LossTensor:
    """Token cross-entropy weighted per target token, as a 0-dim `LossTensor` (a `torch.Tensor`
    that also carries `.total`, `.denominator` and `.metrics`).

    - `"weight_mean"` (Weaver `cross_entropy`): `-(sum w_t lp_t) / (sum w_t)`, with
      `total = -(sum w_t lp_t)` and `denominator = sum w_t`, so that it stays exact under gradient
      accumulation and several processes.
    - `"sum"` (Tinker): `-(sum w_t lp_t)`; no denominator (`.is_sum`), averaged per micro-batch
      like any plain scalar.

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)`, or `(..., K)` for K candidate tokens a
    position (top-K distillation); `weights` exactly the shape of `target_tokens`, finite, or None
    for a weight of 1 on every target (the plain token-mean cross-entropy of a Hugging Face causal LM
    given `labels`). Positions
    whose target is `ignore_index` count in neither sum. Weights that sum to zero give a zero loss
    with zero gradient and the metric `zero_weight_batches` = 1.

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> out = weighted_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    >>> round(out.item(), 4), out.denominator.item(), out.metrics["weight_sum"].item()
    (0.5516, 4.0, 4.0)
    >>> out = weighted_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]), reduction="sum")
    >>> round(out.item(), 4), out.is_sum
    (2.2064, True)
    """
    _check_reduction(reduction)
    terms, w, mask = _weighted_logprobs(logits, target_tokens, weights, ignore_index)
    out = weight_normalized(terms, w, mask)
    return LossTensor.of_sum(out.total, out.metrics) if reduction == "sum" else out


def _weighted_logprobs(logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor | None,
                       ignore_index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # `w_t lp_t`, `w_t` and the mask of the positions that count.
    lp = token_logprobs(logits, target_tokens, ignore_index)
    if weights is None:
        weights = torch.ones_like(lp)
    check_token_values("weights", weights, target_tokens)
    w = weights.to(lp.dtype)
    return w * lp, w, token_mask(target_tokens, ignore_index)


class WeightedCrossEntropy(nn.Module):
    """`weighted_cross_entropy` as a loss module: `forward(logits, target_tokens, weights=None)` names
    the batch inputs it takes (see `minilearn.inputs`); a batch without `weights` weighs every target 1.

    Returns a 0-dim `LossTensor`: `reduction="weight_mean"` carries its total and denominator
    (exact under accumulation), `"sum"` is a sum.

    >>> loss = WeightedCrossEntropy()
    >>> loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.ones(3))
    LossTensor(1.3863)
    """

    def __init__(self, reduction: Reduction = "weight_mean", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        _check_reduction(reduction)
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor,
                weights: torch.Tensor | None = None) -> LossTensor:
        return weighted_cross_entropy(logits, target_tokens, weights, self.reduction, self.ignore_index)

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """`(B,)`: the loss of each sequence alone (what `forward` gives on a batch of that one
        sequence), for `Learner.get_preds(with_loss=True)`; the first dimension is the sequence."""
        terms, w, mask = _weighted_logprobs(logits, target_tokens, weights, self.ignore_index)
        return -per_row_sums(terms, mask) if self.reduction == "sum" else per_row_weight_normalized(terms, w, mask)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
