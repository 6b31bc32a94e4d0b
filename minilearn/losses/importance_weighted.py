"""Weaver's `importance_sampling` loss: the weighted token cross-entropy with each token's
log-likelihood multiplied by an importance weight given as data (Tinker's, whose ratio comes from
the model, is `PolicyGradientLoss(kind="importance_sampling")`).
"""

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.masked import masked_mean, per_row_weight_normalized, token_inputs, weight_normalized
from minilearn.normalized_loss import LossTensor

__all__ = ["importance_weighted_cross_entropy", "ImportanceWeightedCrossEntropy"]


def _check_clip_ratio(clip_ratio: float | None) -> None:
    if clip_ratio is not None and not clip_ratio > 0:
        raise ValueError(f"clip_ratio must be a positive number or None, got {clip_ratio!r}")


def importance_weighted_cross_entropy(logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor,
                             importance_weights: torch.Tensor, clip_ratio: float | None = None,
                             ignore_index: int = IGNORE_INDEX) -> LossTensor:
    """`-(sum w_t iw_t lp_t) / (sum w_t)`, the importance weights `iw_t` clipped to `[-clip_ratio, clip_ratio]`
    when `clip_ratio` is set; a 0-dim `LossTensor` with `total = -(sum w_t iw_t lp_t)`, `denominator = sum w_t`.

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` or `(..., K)`, `ignore_index` where nothing
    counts; `weights` and `importance_weights` (data, used as given) its shape, finite. Metrics:
    `mean_importance_weight` (clipped), `clip_fraction`, `weight_sum`, `zero_weight_batches`.

    >>> logits = torch.zeros(2, 2)
    >>> out = importance_weighted_cross_entropy(logits, torch.tensor([0, 1]), torch.ones(2), torch.tensor([0.5, 4.0]), clip_ratio=2.0)
    >>> round(out.item(), 4), out.metrics["clip_fraction"].item()
    (0.8664, 0.5)
    """
    _check_clip_ratio(clip_ratio)
    terms, w, iw, clipped, mask = _terms(logits, target_tokens, weights, importance_weights, clip_ratio, ignore_index)
    metrics = {"mean_importance_weight": masked_mean(clipped.detach(), mask),
               "clip_fraction": masked_mean((clipped != iw).to(terms.dtype), mask)}
    return weight_normalized(terms, w, mask, metrics)


def _terms(logits, target_tokens, weights, importance_weights, clip_ratio, ignore_index) -> tuple[torch.Tensor, ...]:
    lp, mask, w, iw = token_inputs(logits, target_tokens, ignore_index, weights=weights,
                                   importance_weights=importance_weights)
    clipped = iw if clip_ratio is None else iw.clamp(-clip_ratio, clip_ratio)
    return w * clipped * lp, w, iw, clipped, mask


class ImportanceWeightedCrossEntropy(nn.Module):
    """`importance_weighted_cross_entropy` as a loss module:
    `forward(logits, target_tokens, weights, importance_weights)` names the batch inputs it takes.

    >>> loss = ImportanceWeightedCrossEntropy(clip_ratio=2.0)
    >>> loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.ones(2), torch.ones(2))
    LossTensor(0.6931)
    """

    def __init__(self, clip_ratio: float | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        _check_clip_ratio(clip_ratio)
        self.clip_ratio, self.ignore_index = clip_ratio, ignore_index

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor,
                importance_weights: torch.Tensor) -> LossTensor:
        return importance_weighted_cross_entropy(logits, target_tokens, weights, importance_weights, self.clip_ratio,
                                        self.ignore_index)

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor, weights: torch.Tensor,
                 importance_weights: torch.Tensor) -> torch.Tensor:
        """`(B,)`: the loss of each sequence alone, for `Learner.get_preds(with_loss=True)`."""
        terms, w, _, _, mask = _terms(logits, target_tokens, weights, importance_weights, self.clip_ratio,
                                      self.ignore_index)
        return per_row_weight_normalized(terms, w, mask)

    def extra_repr(self) -> str:
        return f"clip_ratio={self.clip_ratio}, ignore_index={self.ignore_index}"
