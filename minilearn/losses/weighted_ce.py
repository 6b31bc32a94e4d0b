"""Weighted token cross-entropy: Weaver's `cross_entropy` and Tinker's sum form."""

from typing import Literal, get_args

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.masked import (check_choice, per_row_sums, per_row_weight_normalized, token_inputs,
                                    weight_normalized)
from minilearn.normalized_loss import LossTensor

__all__ = ["weighted_cross_entropy", "WeightedCrossEntropy", "Reduction"]

Reduction = Literal["weight_mean", "sum"]
"""`WeightedCrossEntropy`'s reductions: the weight-normalised mean (exact under accumulation) or the sum."""
_REDUCTIONS = get_args(Reduction)


def weighted_cross_entropy(logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor | None = None,
                           reduction: Reduction = "weight_mean",
                           ignore_index: int = IGNORE_INDEX) -> LossTensor:
    """Token cross-entropy weighted per target token, as a 0-dim `LossTensor`:
    `"weight_mean"` (Weaver `cross_entropy`) `-(sum w_t lp_t) / (sum w_t)`, with `total = -(sum w_t lp_t)`
    and `denominator = sum w_t`; `"sum"` (Tinker) `-(sum w_t lp_t)`, with no denominator (`.is_sum`).

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` or `(..., K)` (top-K distillation), `ignore_index`
    where nothing counts; `weights` its shape, finite, or None for 1 everywhere (a Hugging Face causal
    LM's token mean). Weights that sum to zero give a zero loss and `zero_weight_batches` = 1.

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 0.0]])
    >>> out = weighted_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]))
    >>> round(out.item(), 4), out.denominator.item(), out.metrics["weight_sum"].item()
    (0.5516, 4.0, 4.0)
    >>> out = weighted_cross_entropy(logits, torch.tensor([0, 1]), torch.tensor([1.0, 3.0]), reduction="sum")
    >>> round(out.item(), 4), out.is_sum
    (2.2064, True)
    """
    check_choice("reduction", reduction, _REDUCTIONS)
    terms, w, mask = _weighted_logprobs(logits, target_tokens, weights, ignore_index)
    out = weight_normalized(terms, w, mask)
    return LossTensor.of_sum(out.total, out.metrics) if reduction == "sum" else out


def _weighted_logprobs(logits, target_tokens, weights, ignore_index) -> tuple[torch.Tensor, ...]:
    if weights is None:
        lp, mask = token_inputs(logits, target_tokens, ignore_index)
        w = torch.ones_like(lp)
    else:
        lp, mask, w = token_inputs(logits, target_tokens, ignore_index, weights=weights)
    return w * lp, w, mask


class WeightedCrossEntropy(nn.Module):
    """`weighted_cross_entropy` as a loss module: `forward(logits, target_tokens, weights=None)` names
    the batch inputs it takes.

    >>> loss = WeightedCrossEntropy()
    >>> loss(torch.zeros(3, 4), torch.tensor([0, 1, 2]), torch.ones(3))
    LossTensor(1.3863)
    """

    def __init__(self, reduction: Reduction = "weight_mean", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        check_choice("reduction", reduction, _REDUCTIONS)
        self.reduction, self.ignore_index = reduction, ignore_index

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor,
                weights: torch.Tensor | None = None) -> LossTensor:
        return weighted_cross_entropy(logits, target_tokens, weights, self.reduction, self.ignore_index)

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
        """`(B,)`: the loss of each sequence alone, for `Learner.get_preds(with_loss=True)`."""
        terms, w, mask = _weighted_logprobs(logits, target_tokens, weights, self.ignore_index)
        return -per_row_sums(terms, mask) if self.reduction == "sum" else per_row_weight_normalized(terms, w, mask)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, ignore_index={self.ignore_index}"
