"""Group-relative advantages (GRPO): each completion's reward measured against the other completions
of the same prompt, so no value model is needed."""

from typing import Literal, get_args

import torch

from minilearn.logprobs.per_token import shape_or_type
from minilearn.losses.masked import check_choice

__all__ = ["group_advantages", "AdvantageScale"]

AdvantageScale = Literal["std", "none"]
"""How `group_advantages` scales: by the group's standard deviation (GRPO) or not at all (Dr. GRPO)."""


def group_advantages(rewards: torch.Tensor, group_size: int, scale: AdvantageScale = "std",
                     eps: float = 1e-4) -> torch.Tensor:
    """The advantage of each completion within its group of `group_size` completions of one prompt:
    `scale="std"` (GRPO, as TRL's `GRPOTrainer`) `(r - group mean) / (unbiased group std + eps)`, 0 for
    a group of equal rewards; `scale="none"` (Dr. GRPO) `r - group mean`.

    `rewards` `(B,)`, groups of `group_size` contiguous rows (as `minilearn.sampling.sample` lays them
    out). Returns `(B,)` in the dtype of `rewards` (float32 for integer rewards).

    >>> group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0]), group_size=3, scale="none")
    tensor([ 0.6667, -0.3333, -0.3333, -0.6667,  0.3333,  0.3333])
    >>> group_advantages(torch.tensor([1.0, 0.0, 2.0, 2.0]), group_size=2)
    tensor([ 0.7070, -0.7070,  0.0000,  0.0000])
    """
    if not isinstance(rewards, torch.Tensor) or rewards.ndim != 1:
        raise ValueError(f"rewards must be a 1-D tensor (B,), one reward a completion; got {shape_or_type(rewards)}")
    if not isinstance(group_size, int) or group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(f"rewards has {rewards.shape[0]} completions, which is not a whole number of groups of "
                         f"group_size={group_size!r}")
    check_choice("scale", scale, get_args(AdvantageScale))
    if scale == "std" and group_size < 2:
        raise ValueError("scale='std' needs group_size >= 2: the std of a group of one completion is undefined")
    r = rewards if rewards.is_floating_point() else rewards.float()
    if not torch.isfinite(r).all():
        raise ValueError(f"rewards holds {(~torch.isfinite(r)).sum().item()} non-finite value(s) of {r.numel()}")
    groups = r.reshape(-1, group_size)
    centred = groups - groups.mean(1, keepdim=True)
    if scale == "std":
        centred = centred / (groups.std(1, keepdim=True) + eps)
    return centred.reshape(-1)
