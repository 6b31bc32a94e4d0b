"""The key-token weighted causal-LM loss of the Hugging Face course (chapter 7, "Training a causal
language model from scratch"): samples that use the key tokens more count more."""

from collections.abc import Sequence

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX, check_targets, shift_targets, target_logprobs
from minilearn.losses.masked import masked_mean, masked_sum
from minilearn.normalized_loss import LossTensor, NormalizedLoss

__all__ = ["key_token_weighted_loss", "KeyTokenWeightedLoss"]


def _as_ids(keytoken_ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
    ids = torch.as_tensor(keytoken_ids)
    # An empty list reads as a float tensor: no key tokens, every sample weighs alpha.
    if ids.numel() and (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool or ids.ndim > 1):
        raise TypeError(f"keytoken_ids must be a sequence of integer token ids, got {keytoken_ids!r}")
    return ids.reshape(-1).long()


def key_token_weighted_loss(logits: torch.Tensor, input_ids: torch.Tensor,
                            keytoken_ids: Sequence[int] | torch.Tensor, alpha: float = 1.0,
                            attention_mask: torch.Tensor | None = None, pad_token_id: int | None = None,
                            ignore_index: int = IGNORE_INDEX) -> LossTensor:
    """Key-token weighted causal-LM loss: position t predicts token t+1; `loss_b` is sample b's mean
    cross-entropy over its non-padding targets, `weight_b = alpha * (1 + key tokens among its non-padding
    input_ids)`, and the loss the mean over samples of `weight_b * loss_b` (the course's
    `keytoken_weighted_loss` when nothing is padding), a `LossTensor` with `total = sum_b weight_b loss_b`
    and `denominator` = the samples with a target.

    Shapes: `logits` `(B, T, V)`, `input_ids` `(B, T)` integer. Padding: where `attention_mask` is 0
    or `input_ids` is `pad_token_id`. Metric: `mean_sample_weight`.

    >>> logits = torch.zeros(2, 3, 4)                  # every token has probability 1/4
    >>> ids = torch.tensor([[1, 2, 3], [3, 3, 0]])
    >>> out = key_token_weighted_loss(logits, ids, keytoken_ids=[3], alpha=1.0)
    >>> round(out.item(), 4), out.metrics["mean_sample_weight"].item()   # log(4) * (2 + 3) / 2
    (3.4657, 2.5)
    """
    weighted, counted, sample_weight = _weighted_samples(logits, input_ids, keytoken_ids, alpha, attention_mask,
                                                         pad_token_id, ignore_index)
    return NormalizedLoss(masked_sum(weighted, counted), counted.sum(),
                          {"mean_sample_weight": masked_mean(sample_weight, counted)}).as_tensor()


def _weighted_samples(logits, input_ids, keytoken_ids, alpha, attention_mask, pad_token_id,
                      ignore_index) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    # `weight_b * loss_b`, which samples count (they have a target), and `weight_b`.
    check_targets(logits, input_ids, ignore_index, name="input_ids")
    if input_ids.ndim != logits.ndim - 1 or input_ids.ndim < 1:
        raise ValueError(f"input_ids of shape {tuple(input_ids.shape)} must be (..., T) with logits (..., T, V), "
                         f"got logits of shape {tuple(logits.shape)}")
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if attention_mask is not None:
        if attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask of shape {tuple(attention_mask.shape)} must have the shape of "
                             f"input_ids, {tuple(input_ids.shape)}")
        keep &= attention_mask.bool()
    if pad_token_id is not None:
        keep &= input_ids != pad_token_id
    # Only the target side is masked, as Hugging Face does with labels = input_ids and -100 at the
    # padding: under left padding the last pad position predicts the first real token.
    targets = torch.where(shift_targets(keep.long(), 0).bool(), shift_targets(input_ids, ignore_index), ignore_index)
    target_mask = targets != ignore_index
    lp = target_logprobs(logits, targets, ignore_index)
    n_targets = target_mask.sum(-1)
    per_sample = -lp.sum(-1) / n_targets.clamp(min=1).to(lp.dtype)
    n_key = (torch.isin(input_ids, _as_ids(keytoken_ids).to(input_ids.device)) & keep).sum(-1)
    sample_weight = alpha * (1 + n_key.to(lp.dtype))
    counted = n_targets > 0
    return sample_weight * per_sample, counted, sample_weight


class KeyTokenWeightedLoss(nn.Module):
    """`key_token_weighted_loss` as a loss module: `forward(logits, input_ids, attention_mask=None)`
    names the batch inputs it takes; `pad_token_id`: padding to exclude besides `attention_mask`.

    >>> loss = KeyTokenWeightedLoss([3], alpha=2.0)
    >>> loss(torch.zeros(1, 3, 4), torch.tensor([[1, 2, 0]]))   # no key token: alpha * log(4)
    LossTensor(2.7726)
    """

    def __init__(self, keytoken_ids: Sequence[int] | torch.Tensor, alpha: float = 1.0,
                 pad_token_id: int | None = None, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        # A buffer, so that `.to(device)` moves the ids with the module.
        self.register_buffer("keytoken_ids", _as_ids(keytoken_ids), persistent=False)
        self.alpha, self.pad_token_id, self.ignore_index = alpha, pad_token_id, ignore_index

    def forward(self, logits: torch.Tensor, input_ids: torch.Tensor,
                attention_mask: torch.Tensor | None = None) -> LossTensor:
        return key_token_weighted_loss(logits, input_ids, self.keytoken_ids, self.alpha, attention_mask,
                                       self.pad_token_id, self.ignore_index)

    def per_item(self, logits: torch.Tensor, input_ids: torch.Tensor,
                 attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """`(B,)`: each sample's `weight_b * loss_b` (0 without a target), for `Learner.get_preds(with_loss=True)`."""
        weighted, counted, _ = _weighted_samples(logits, input_ids, self.keytoken_ids, self.alpha, attention_mask,
                                                 self.pad_token_id, self.ignore_index)
        return torch.where(counted, weighted, torch.zeros_like(weighted))

    def extra_repr(self) -> str:
        return f"keytoken_ids={self.keytoken_ids.tolist()}, alpha={self.alpha}, pad_token_id={self.pad_token_id}"
