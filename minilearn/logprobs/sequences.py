"""Per-sequence target log-probabilities: what a loss over log-probabilities receives.

The convention, for a mapping batch of `B` sequences (the one place it is written down):

- The targets are `target_tokens`, `(B, T)` or `(B, T, K)` (K candidates a position), `IGNORE_INDEX`
  where nothing is predicted; else the next tokens of `input_ids` (`shift_targets`), counting only
  where positions t and t+1 are both real tokens of the `attention_mask`, if any.
- Sequence i contributes the positions whose target is not `ignore_index`, in order: `(T_i,)`, or
  `(T_i, K)` where all K are given (a mix is an error). Per-token `ref_logprobs` in the batch,
  `(B, T)` or `(B, T, K)`, are cut into sequences the same way.
"""

from collections.abc import Mapping

import torch

from minilearn.data import is_mapping
from minilearn.exceptions import MissingInputError
from minilearn.logprobs.per_token import IGNORE_INDEX, check_targets, shape_or_type, shift_targets, target_logprobs

__all__ = ["logprob_targets", "target_positions", "split_sequences", "sequence_logprobs"]


def logprob_targets(batch: Mapping) -> torch.Tensor:
    """The targets `(B, T)` or `(B, T, K)` of a mapping batch, by the convention above.

    >>> logprob_targets({"input_ids": torch.tensor([[5, 6, 7]]), "attention_mask": torch.tensor([[1, 1, 0]])})
    tensor([[   6, -100, -100]])
    """
    if not is_mapping(batch):
        raise TypeError(f"a loss over log-probabilities needs a mapping batch (with 'input_ids' or "
                        f"'target_tokens'), got a {type(batch).__name__}")
    if "target_tokens" in batch:
        targets = batch["target_tokens"]
        if not isinstance(targets, torch.Tensor) or targets.ndim not in (2, 3):
            raise ValueError(f"target_tokens must be a tensor of shape (B, T) or (B, T, K), "
                             f"got {shape_or_type(targets)}")
        return targets
    if "input_ids" not in batch:
        raise MissingInputError(f"a loss over log-probabilities needs 'target_tokens' or 'input_ids' in the "
                                f"batch; the batch has keys {list(batch.keys())}")
    ids = batch["input_ids"]
    if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
        raise ValueError(f"input_ids must be a tensor of shape (B, T), got {shape_or_type(ids)}")
    targets = shift_targets(ids, IGNORE_INDEX)
    mask = batch.get("attention_mask")
    if mask is not None:
        real = mask.bool()
        targets[:, :-1].masked_fill_(~(real[:, :-1] & real[:, 1:]), IGNORE_INDEX)
    return targets


def target_positions(targets: torch.Tensor) -> torch.Tensor:
    """`(B, T)` bool: the positions of `targets` that count (see the convention above).

    >>> target_positions(torch.tensor([[[1, 2], [-100, -100]]]))
    tensor([[ True, False]])
    """
    given = targets != IGNORE_INDEX
    if targets.ndim == 2:
        return given
    counts = given.all(-1)
    partial = given.any(-1) & ~counts
    if partial.any():
        b, t = partial.nonzero()[0].tolist()
        raise ValueError(f"target_tokens of shape {tuple(targets.shape)} gives some but not all of its K candidate "
                         f"targets at sequence {b}, position {t}: {targets[b, t].tolist()}; give all K, or "
                         f"ignore_index={IGNORE_INDEX} for all K at a position that does not count")
    return counts


def split_sequences(values: torch.Tensor, positions: torch.Tensor, name: str = "values") -> list[torch.Tensor]:
    """Cut `values` `(B, T, ...)` into one tensor a sequence, keeping the `positions` `(B, T)` that count.

    >>> split_sequences(torch.tensor([[1., 2.], [3., 4.]]), torch.tensor([[True, False], [True, True]]))
    [tensor([1.]), tensor([3., 4.])]
    """
    if tuple(values.shape[:2]) != tuple(positions.shape):
        raise ValueError(f"{name} of shape {tuple(values.shape)} does not line up with the targets: expected "
                         f"(B, T) = {tuple(positions.shape)} in front")
    return [row[keep] for row, keep in zip(values, positions)]


def sequence_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> list[torch.Tensor]:
    """Target log-probabilities of each sequence, padding removed: `B` tensors `(T_i,)` (or `(T_i, K)`),
    from `logits` `(B, T, V)` and `targets` `(B, T)` or `(B, T, K)`.

    >>> lps = sequence_logprobs(torch.zeros(2, 3, 4), torch.tensor([[1, 2, -100], [0, -100, -100]]))
    >>> [lp.shape for lp in lps], lps[1]
    ([torch.Size([2]), torch.Size([1])], tensor([-1.3863]))
    """
    if not isinstance(logits, torch.Tensor) or logits.ndim != 3:
        raise ValueError(f"a loss over log-probabilities needs model logits of shape (B, T, V), "
                         f"got {shape_or_type(logits)}")
    check_targets(logits, targets, IGNORE_INDEX)
    return split_sequences(target_logprobs(logits, targets, IGNORE_INDEX), target_positions(targets), "logprobs")
