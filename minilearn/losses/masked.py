"""Pieces the token losses share: checking per-token inputs against the targets, the mask of the
positions that count, and sums over it."""

import torch

from minilearn.logprobs.per_token import IGNORE_INDEX, token_logprobs
from minilearn.normalized_loss import LossTensor, NormalizedLoss

__all__ = ["check_token_values", "token_mask", "masked_sum", "masked_mean", "weight_normalized", "per_row_sums",
           "per_row_weight_normalized"]


def check_choice(name: str, value: object, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def check_token_values(name: str, values: torch.Tensor, target_tokens: torch.Tensor) -> None:
    """Raise a clear error unless `values` (weights, advantages, ...) is a real, finite tensor shaped
    like `target_tokens`.

    >>> check_token_values("weights", torch.ones(3), torch.zeros(3, dtype=torch.long))
    >>> check_token_values("weights", torch.ones(2), torch.zeros(3, dtype=torch.long))
    Traceback (most recent call last):
    ...
    ValueError: weights of shape (2,) must have the shape of target_tokens, (3,): one value a target token
    """
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{name} must be a tensor of the shape of target_tokens {tuple(target_tokens.shape)}, "
                        f"got {type(values).__name__}")
    if values.is_complex():
        raise TypeError(f"{name} must be real, got dtype {values.dtype}")
    if values.shape != target_tokens.shape:
        raise ValueError(f"{name} of shape {tuple(values.shape)} must have the shape of target_tokens, "
                         f"{tuple(target_tokens.shape)}: one value a target token")
    if values.is_floating_point() and not torch.isfinite(values).all():
        bad = (~torch.isfinite(values)).sum().item()
        raise ValueError(f"{name} holds {bad} non-finite value(s) (inf or NaN) of {values.numel()}; "
                         f"{name} shape {tuple(values.shape)}, target_tokens shape {tuple(target_tokens.shape)}")


def token_inputs(logits, target_tokens: torch.Tensor, ignore_index: int, **values: torch.Tensor) -> tuple:
    # (lp, mask, *values): each named per-token input checked and cast to lp's dtype.
    lp = token_logprobs(logits, target_tokens, ignore_index)
    for name, v in values.items():
        check_token_values(name, v, target_tokens)
    return lp, token_mask(target_tokens, ignore_index), *(v.to(lp.dtype) for v in values.values())


def token_mask(target_tokens: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """True where a target counts: every position whose target is not `ignore_index`.

    >>> token_mask(torch.tensor([3, -100, 0]))
    tensor([ True, False,  True])
    """
    return target_tokens != ignore_index


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `values` where `mask` is True (over all positions, or along `dim`). `torch.where`, not a
    product, so a masked-out value (even inf or NaN) reaches neither the sum nor the gradient.

    >>> masked_sum(torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([True, False, True]))
    tensor(3.)
    """
    kept = torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return kept.sum() if dim is None else kept.sum(dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `mask` is True; 0 when nothing is (a metric, never NaN).

    >>> masked_mean(torch.tensor([1.0, 5.0, 2.0]), torch.tensor([True, False, True]))
    tensor(1.5000)
    """
    return masked_sum(values, mask) / mask.sum().clamp(min=1).to(values.dtype)


def weight_normalized(terms: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor,
                      metrics: dict | None = None) -> LossTensor:
    """`-(sum terms) / (sum weights)` over the positions in `mask`, as a `LossTensor` carrying
    `total = -(sum terms)` and `denominator = sum weights`; the metrics get `weight_sum` and
    `zero_weight_batches` (1.0 when the weights sum to zero: the loss is then 0, not NaN).

    >>> out = weight_normalized(torch.tensor([-1.0, -4.0]), torch.tensor([1.0, 2.0]), torch.tensor([True, True]))
    >>> out, out.total, out.metrics["zero_weight_batches"]
    (LossTensor(1.6667), tensor(5.), tensor(0.))
    """
    denominator = masked_sum(weights, mask).detach()
    return NormalizedLoss(-masked_sum(terms, mask), denominator,
                          {**(metrics or {}), "weight_sum": denominator,
                           "zero_weight_batches": (denominator == 0).to(denominator.dtype)}).as_tensor()


def per_row_sums(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B,)`: the masked sum of each row (sequence) of `values` `(B, ...)`, over all its other dimensions.

    >>> per_row_sums(torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[True, False], [True, True]]))
    tensor([1., 7.])
    """
    rows = values.shape[0]
    return masked_sum(values.reshape(rows, -1), mask.expand_as(values).reshape(rows, -1), dim=-1)


def per_row_weight_normalized(terms: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """`(B,)`: `weight_normalized` of each row alone (0 for a row whose weights sum to zero), the
    loss each sequence would get as a batch of its own.

    >>> per_row_weight_normalized(torch.tensor([[-1.0, -4.0], [-2.0, 0.0]]), torch.ones(2, 2), torch.ones(2, 2, dtype=torch.bool))
    tensor([2.5000, 1.0000])
    """
    total, denominator = -per_row_sums(terms, mask), per_row_sums(weights, mask)
    return torch.where(denominator != 0, total / torch.where(denominator != 0, denominator, torch.ones_like(denominator)),
                       total * 0)
