"""One round of on-policy rollouts: sample completions, score them, and turn the rewards into what a
policy-gradient loss takes (group advantages per token, the reference model's log-probabilities)."""

import math
import numbers
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.utils.data import Dataset

from minilearn.inputs import callable_name
from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.advantages import AdvantageScale, group_advantages
from minilearn.sampling.sample import Prompts, completion_tokens, model_logprobs, prompt_tokens, sample

__all__ = ["make_rollouts", "check_rewards", "RolloutBuffer", "RewardFn"]

# reward_fn(prompts, completions) -> one reward a completion: both lists of token-id lists, row by row
# (each prompt repeated for every completion of its group; completions without their final eos).
RewardFn = Callable[[list[list[int]], list[list[int]]], Sequence[float] | torch.Tensor]
"""A reward function: `(prompts, completions) -> one reward per completion`, each a list of token ids."""


def make_rollouts(model: nn.Module, prompts: Prompts, reward_fn: RewardFn, group_size: int, max_new_tokens: int,
                  temperature: float = 1.0, top_k: int | None = None, eos_token_id: int | None = None,
                  generator: torch.Generator | None = None, ref_model: nn.Module | None = None,
                  advantage_scale: AdvantageScale = "std") -> dict[str, torch.Tensor]:
    """A round of GRPO-style rollouts as one dict batch on `model`'s device, which
    `PolicyGradientLoss` takes by name: `sample`'s keys plus

    - `rewards` `(B,)`: `reward_fn(prompts, completions)`, one finite number a completion (`check_rewards`);
    - `advantages` `(B, T)`: `group_advantages(rewards, group_size, advantage_scale)` at every drawn
      token of the completion, 0 elsewhere;
    - `ref_logprobs` `(B, T)` when `ref_model` is given: the frozen reference model's log-probabilities
      of the drawn tokens, for the KL term of `PolicyGradientLoss(kl_coef=...)`.

    >>> from minilearn.demo.tiny_model import TinyCausalLM
    >>> lm = TinyCausalLM(vocab_size=12, dim=16, n_layers=1, n_heads=2, max_len=16)
    >>> longer = lambda prompts, completions: [float(len(c)) for c in completions]
    >>> out = make_rollouts(lm, [[1, 2]], longer, group_size=4, max_new_tokens=3, eos_token_id=0,
    ...                     generator=torch.Generator().manual_seed(0))
    >>> sorted(out), out["advantages"].shape
    (['advantages', 'attention_mask', 'input_ids', 'logprobs', 'prompt_index', 'rewards', 'target_tokens'], torch.Size([4, 5]))
    """
    rows = prompt_tokens(prompts)
    batch = sample(model, rows, max_new_tokens, temperature=temperature, top_k=top_k, eos_token_id=eos_token_id,
                   group_size=group_size, generator=generator)
    completions = completion_tokens(batch, eos_token_id)
    rewards = check_rewards(reward_fn([rows[i] for i in batch["prompt_index"].tolist()], completions),
                            len(completions), reward_fn).to(batch["input_ids"].device)
    advantages = group_advantages(rewards, group_size, advantage_scale)[:, None]
    batch |= {"rewards": rewards, "advantages": torch.where(batch["target_tokens"] != IGNORE_INDEX, advantages, 0.0)}
    if ref_model is not None:
        batch["ref_logprobs"] = model_logprobs(ref_model, batch).to(batch["logprobs"].device)
    return batch


def check_rewards(rewards: Sequence[float] | torch.Tensor, n: int, reward_fn: Callable | None = None) -> torch.Tensor:
    """What `reward_fn` returned for `n` completions as a float32 `(n,)` tensor, or an error naming
    `reward_fn` and what was wrong: not a list or 1-d tensor, a length other than `n`, or the first
    reward that is not a finite real number (NaN would make its whole group's advantages NaN).

    >>> check_rewards([1, 0.5, True], 3)
    tensor([1.0000, 0.5000, 1.0000])
    >>> check_rewards([1.0, None], 2, reward_fn=len)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: reward_fn len returned None (NoneType) at index 1 of its 2 rewards; expected a finite real number ...
    """
    name = f"reward_fn {callable_name(reward_fn)}" if reward_fn is not None else "reward_fn"
    if isinstance(rewards, torch.Tensor) and (rewards.ndim != 1 or rewards.is_complex()):
        raise ValueError(f"{name} returned a {rewards.dtype} tensor of shape {tuple(rewards.shape)} for {n} "
                         f"completions; expected one real number a completion, shape ({n},)")
    if isinstance(rewards, (str, bytes, Mapping)) or not hasattr(rewards, "__len__"):
        raise TypeError(f"{name} returned {rewards!r} ({type(rewards).__name__}) for {n} completions; expected a "
                        f"list or 1-d tensor of {n} real numbers, one a completion")
    if len(rewards) != n:
        raise ValueError(f"{name} returned {len(rewards)} rewards for {n} completions; expected one a completion")
    values = rewards.tolist() if isinstance(rewards, torch.Tensor) else [
        v.item() if isinstance(v, torch.Tensor) and v.numel() == 1 else v for v in rewards]
    for i, v in enumerate(values):
        number = isinstance(v, numbers.Real)
        if not number or not math.isfinite(v):
            raise (ValueError if number else TypeError)(
                f"{name} returned {v!r} ({type(v).__name__}) at index {i} of its {n} rewards; expected a finite "
                f"real number (int, float, bool) for each completion"
                + ("" if not number else ": a NaN or infinite reward would make its whole group's advantages NaN"))
    return torch.tensor(values, dtype=torch.float32)


class RolloutBuffer(Dataset):
    """A dataset of `size` rollouts that is refilled each round (`fill`), so that one DataLoader made
    at the start (and prepared by Accelerate, sharded over processes) serves every round.

    Item `i` is row `i` of the batch last filled in, a dict of CPU tensors of one width (the default
    collate stacks them).

    >>> buffer = RolloutBuffer(2)
    >>> buffer.fill({"input_ids": torch.tensor([[1, 2], [3, 4]])})
    >>> len(buffer), buffer[1]
    (2, {'input_ids': tensor([3, 4])})
    """

    def __init__(self, size: int):
        self.size, self.batch = size, None

    def fill(self, batch: Mapping[str, torch.Tensor]) -> None:
        """Replace the rollouts by the rows of `batch`, `size` of them."""
        rows = {k: v.shape[0] for k, v in batch.items()}
        if set(rows.values()) != {self.size}:
            raise ValueError(f"RolloutBuffer holds {self.size} rollouts a round; the batch has rows {rows}")
        self.batch = {k: v.detach().cpu() for k, v in batch.items()}

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.batch is None:
            raise RuntimeError("the RolloutBuffer is empty: RolloutCB fills it at the start of each training epoch "
                               "(or call fill(batch) yourself)")
        return {k: v[i] for k, v in self.batch.items()}
