"""Hugging Face causal-LM batches for the token losses: `labels` into `target_tokens`.

Hugging Face's `labels` are a copy of `input_ids` (`-100` on padding); `target_tokens` are shifted one
step left, aligned with the logits (position t holds the token it predicts).
"""

from collections.abc import Callable, Mapping
from typing import Any

from minilearn.logprobs.per_token import shift_targets

__all__ = ["targets_from_labels", "LabelsToTargets"]


def targets_from_labels(batch: Mapping) -> dict:
    """`batch` with its `labels` (B, T) replaced by `target_tokens = shift_targets(labels)` (B, T); `labels`
    is dropped, so a Hugging Face model does not also compute its own loss.

    >>> import torch
    >>> targets_from_labels({"input_ids": torch.tensor([[5, 6, 0]]), "labels": torch.tensor([[5, 6, -100]])})
    {'input_ids': tensor([[5, 6, 0]]), 'target_tokens': tensor([[   6, -100, -100]])}
    """
    if "labels" not in batch:
        raise KeyError(f"targets_from_labels needs a 'labels' key (unshifted, -100 where ignored, as Hugging Face's "
                       f"DataCollatorForLanguageModeling(mlm=False) makes); the batch has keys {list(batch.keys())}")
    if "target_tokens" in batch:
        raise ValueError("the batch has both 'labels' and 'target_tokens': targets_from_labels would replace the "
                         "'target_tokens' it has; drop one of them")
    out = {k: v for k, v in batch.items() if k != "labels"}
    out["target_tokens"] = shift_targets(batch["labels"])
    return out


class LabelsToTargets:
    """A picklable collate function: `collate_fn(items)` (say a Hugging Face collator), then `targets_from_labels`.

    >>> import torch
    >>> collate = LabelsToTargets(lambda items: {"input_ids": torch.stack(items), "labels": torch.stack(items)})
    >>> collate([torch.tensor([1, 2, 3])])["target_tokens"]
    tensor([[   2,    3, -100]])
    """

    def __init__(self, collate_fn: Callable[[list], Mapping]):
        self.collate_fn = collate_fn

    def __call__(self, items: list) -> dict[str, Any]:
        return targets_from_labels(self.collate_fn(items))
