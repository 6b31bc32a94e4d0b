"""The common mistakes of a loss, each written as the wrong loss it makes, called exactly like the reference,
so a teacher can add the mistakes of an exercise's own reference:

>>> import torch.nn.functional as F
>>> mistakes = {"without the mean over the batch": lambda logits, y: F.cross_entropy(logits, y, reduction="sum")}
"""

from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from minilearn.losses import KeyTokenWeightedLoss, WeightedCrossEntropy, shift_targets, token_logprobs

__all__ = ["loss_mistakes"]

_UPCAST_HINT = "x.float() if x.element_size() < 4 else x"


def _key_token(ref: KeyTokenWeightedLoss, logits: torch.Tensor, input_ids: torch.Tensor,
               attention_mask: torch.Tensor | None = None, *, shift: bool = True, per_row: bool = True,
               offset: float = 1.0, reduce: Callable = torch.mean) -> torch.Tensor:
    keep = torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
    if ref.pad_token_id is not None:
        keep &= input_ids != ref.pad_token_id
    targets = torch.where(keep, input_ids, ref.ignore_index)
    targets = shift_targets(targets, ref.ignore_index) if shift else targets
    token_losses = -token_logprobs(logits, targets, ref.ignore_index)
    counts = (targets != ref.ignore_index).sum(-1)
    weights = ref.alpha * (offset + (torch.isin(input_ids, ref.keytoken_ids) & keep).sum(-1))
    if not per_row:
        return weights.mean() * token_losses.sum() / counts.sum()
    return reduce(weights * token_losses.sum(-1) / counts)


def _key_token_mistakes(ref: KeyTokenWeightedLoss) -> dict[str, Callable]:
    return {
        "without the shift of labels by one position (position t predicts token t+1: the targets are "
        "shift_targets(input_ids))": partial(_key_token, ref, shift=False),
        "with one mean over all the tokens of the batch, times the mean weight, instead of a mean per row "
        "weighted by its row's weight": partial(_key_token, ref, per_row=False),
        "with weights alpha * (number of key tokens), without the offset of alpha * (1 + number of key tokens)":
            partial(_key_token, ref, offset=0.0),
        "with the sum over rows instead of their mean": partial(_key_token, ref, reduce=torch.sum),
    }


def _weighted_ce(ref: WeightedCrossEntropy, logits: torch.Tensor, target_tokens: torch.Tensor,
                 weights: torch.Tensor | None = None, *, weighted: bool = True,
                 divide: str = "weights") -> torch.Tensor:
    lp = token_logprobs(logits, target_tokens, ref.ignore_index)
    counted = (target_tokens != ref.ignore_index).to(lp.dtype)
    w = (weights.to(lp.dtype) if weighted and weights is not None else torch.ones_like(lp)) * counted
    total = -(w * lp).sum()
    return {"weights": total / w.sum(), "targets": total / counted.sum(), "nothing": total}[divide]


def _weighted_ce_mistakes(ref: WeightedCrossEntropy) -> dict[str, Callable]:
    if ref.reduction == "sum":
        return {"with the weighted mean instead of the sum": partial(_weighted_ce, ref),
                "without the weights": partial(_weighted_ce, ref, weighted=False, divide="nothing")}
    return {
        "without the weights (the plain mean over the target tokens)":
            partial(_weighted_ce, ref, weighted=False, divide="targets"),
        "divided by the number of target tokens instead of the sum of the weights":
            partial(_weighted_ce, ref, divide="targets"),
        "with the weighted sum, not divided by the sum of the weights": partial(_weighted_ce, ref, divide="nothing"),
    }


_MISTAKES: dict[type, Callable[[torch.nn.Module], dict[str, Callable]]] = {
    KeyTokenWeightedLoss: _key_token_mistakes,
    WeightedCrossEntropy: _weighted_ce_mistakes,
}


def _in_precision(reference: Callable, dtype: torch.dtype, preds: torch.Tensor, *args, **kwargs) -> Any:
    return reference(preds.to(dtype), *args, **kwargs)


def loss_mistakes(reference: Callable) -> dict[str, Callable]:
    """The common mistakes of `reference` by what each gets wrong, as the wrong losses they make: computing in
    float32 or bfloat16, and for a plug-in loss (`KeyTokenWeightedLoss`, `WeightedCrossEntropy`) its formula's.

    >>> from minilearn.losses import KeyTokenWeightedLoss
    >>> [name.split(" (")[0] for name in loss_mistakes(KeyTokenWeightedLoss([3]))][:3]
    ['computed in float32', 'computed in bfloat16', 'without the shift of labels by one position']
    """
    precision = {
        "computed in float32 (float64 preds turned into float32: upcast only half precision, "
        f"{_UPCAST_HINT})": partial(_in_precision, reference, torch.float32),
        "computed in bfloat16 (the preds cast down to half precision)":
            partial(_in_precision, reference, torch.bfloat16),
    }
    table = _MISTAKES.get(type(reference))
    return {**precision, **(table(reference) if table else {})}
