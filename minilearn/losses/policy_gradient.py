"""Tinker's policy-gradient losses over sampler log-probabilities: importance sampling, PPO, CISPO, DRO."""

from typing import Literal

import torch
from torch import nn

from minilearn.losses.logprobs import token_logprobs
from minilearn.losses.tokens import check_token_values, masked_mean, masked_sum, token_mask

__all__ = ["policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind"]

PolicyGradientKind = Literal["importance_sampling", "ppo", "cispo", "dro"]
_KINDS = ("importance_sampling", "ppo", "cispo", "dro")


def _check_settings(kind: str, clip_low: float, clip_high: float) -> None:
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    if not 0 <= clip_low <= clip_high:
        raise ValueError(f"expected 0 <= clip_low <= clip_high, got clip_low={clip_low}, clip_high={clip_high}")


def policy_gradient_loss(logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                         advantages: torch.Tensor, kind: PolicyGradientKind = "importance_sampling",
                         clip_low: float = 0.8, clip_high: float = 1.2, beta: float = 0.1,
                         ignore_index: int = -100) -> tuple[torch.Tensor, dict]:
    """A sum-reduced policy-gradient loss, as Tinker defines them. With `lp_t` the learner's
    log-probability of the sampled token, `q_t` the sampler's (`logprobs`), `A_t` the advantage and
    the ratio `r_t = exp(lp_t - q_t)`:

    - `"importance_sampling"`: `-(sum r_t A_t)`
    - `"ppo"`: `-(sum min(r_t A_t, clip(r_t, clip_low, clip_high) A_t))`
    - `"cispo"`: `-(sum stopgrad(clip(r_t, clip_low, clip_high)) lp_t A_t)`
    - `"dro"`: `-(sum lp_t A_t - beta/2 (lp_t - q_t)^2)`

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` (the sampled tokens); `logprobs` and
    `advantages` the shape of `target_tokens`, finite, used as data. Positions whose target is
    `ignore_index` (prompt, padding) count nowhere. Returns `(loss, metrics)` with `mean_ratio`,
    `clip_fraction` (share of counted tokens with `r_t` outside `[clip_low, clip_high]`) and
    `mean_advantage`.

    >>> logits = torch.zeros(3, 2)   # lp_t = log(1/2) for every token
    >>> q = torch.full((3,), 0.5).log()
    >>> loss, m = policy_gradient_loss(logits, torch.tensor([0, 1, -100]), q, torch.tensor([1.0, 2.0, 5.0]))
    >>> loss.item(), m["mean_ratio"].item(), m["mean_advantage"].item()
    (-3.0, 1.0, 1.5)
    """
    _check_settings(kind, clip_low, clip_high)
    lp = token_logprobs(logits, target_tokens, ignore_index)
    check_token_values("logprobs", logprobs, target_tokens)
    check_token_values("advantages", advantages, target_tokens)
    q, adv, mask = logprobs.to(lp.dtype), advantages.to(lp.dtype), token_mask(target_tokens, ignore_index)
    # Zeroed where ignored before exp: a prompt position's q could otherwise overflow the ratio.
    log_ratio = torch.where(mask, lp - q, torch.zeros((), dtype=lp.dtype, device=lp.device))
    ratio = log_ratio.exp()
    clipped = ratio.clamp(clip_low, clip_high)
    if kind == "importance_sampling":
        terms = ratio * adv
    elif kind == "ppo":
        terms = torch.minimum(ratio * adv, clipped * adv)
    elif kind == "cispo":
        terms = clipped.detach() * lp * adv
    else:
        terms = lp * adv - beta / 2 * log_ratio ** 2
    metrics = {"mean_ratio": masked_mean(ratio.detach(), mask),
               "clip_fraction": masked_mean((clipped != ratio).to(lp.dtype), mask),
               "mean_advantage": masked_mean(adv, mask)}
    return -masked_sum(terms, mask), metrics


class PolicyGradientLoss(nn.Module):
    """`policy_gradient_loss` as a loss module: `forward(logits, target_tokens, logprobs, advantages)`
    names the batch inputs it takes (`logprobs` are the sampler's, one a target token).

    >>> loss = PolicyGradientLoss("ppo", clip_low=0.8, clip_high=1.2)
    >>> loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.full((2,), 0.5).log(), torch.ones(2))[0]
    tensor(-2.)
    """

    def __init__(self, kind: PolicyGradientKind = "importance_sampling", clip_low: float = 0.8,
                 clip_high: float = 1.2, beta: float = 0.1, ignore_index: int = -100):
        super().__init__()
        _check_settings(kind, clip_low, clip_high)
        self.kind, self.clip_low, self.clip_high, self.beta, self.ignore_index = kind, clip_low, clip_high, beta, ignore_index

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                advantages: torch.Tensor) -> tuple[torch.Tensor, dict]:
        return policy_gradient_loss(logits, target_tokens, logprobs, advantages, self.kind, self.clip_low,
                                    self.clip_high, self.beta, self.ignore_index)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, clip_low={self.clip_low}, clip_high={self.clip_high}, beta={self.beta}, "
                f"ignore_index={self.ignore_index}")
