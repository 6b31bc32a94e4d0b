"""Tinker's policy-gradient losses over sampler log-probabilities: importance sampling, PPO, CISPO, DRO."""

from typing import Literal

import torch
from torch import nn

from minilearn.logprobs.tokens import IGNORE_INDEX, token_logprobs
from minilearn.losses.tokens import check_token_values, masked_mean, masked_sum, per_row_sums, token_mask
from minilearn.normalized_loss import LossTensor

__all__ = ["policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind", "default_clip_thresholds"]

PolicyGradientKind = Literal["importance_sampling", "ppo", "cispo", "dro"]
_KINDS = ("importance_sampling", "ppo", "cispo", "dro")


def default_clip_thresholds(kind: PolicyGradientKind) -> tuple[float, float]:
    """Tinker's `(clip_low_threshold, clip_high_threshold)` for `kind`: CISPO clips one side only,
    `(0.0, 4.0)`; the others `(0.8, 1.2)` (PPO's epsilon of 0.2; for `"importance_sampling"` and
    `"dro"` they only define the `clip_fraction` metric).

    >>> default_clip_thresholds("cispo"), default_clip_thresholds("ppo")
    ((0.0, 4.0), (0.8, 1.2))
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
    return (0.0, 4.0) if kind == "cispo" else (0.8, 1.2)


def _settings(kind: str, clip_low_threshold: float | None, clip_high_threshold: float | None) -> tuple[float, float]:
    # The thresholds to use: those given, else the kind's defaults; checked.
    low, high = default_clip_thresholds(kind)
    low = low if clip_low_threshold is None else clip_low_threshold
    high = high if clip_high_threshold is None else clip_high_threshold
    if not 0 <= low <= high:
        raise ValueError(f"expected 0 <= clip_low_threshold <= clip_high_threshold, got clip_low_threshold={low}, "
                         f"clip_high_threshold={high}")
    return low, high


def policy_gradient_loss(logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                         advantages: torch.Tensor, kind: PolicyGradientKind = "importance_sampling",
                         clip_low_threshold: float | None = None, clip_high_threshold: float | None = None,
                         beta: float = 0.1, ignore_index: int = IGNORE_INDEX) -> LossTensor:
    """A sum-reduced policy-gradient loss, as Tinker defines them. With `lp_t` the learner's
    log-probability of the sampled token, `q_t` the sampler's (`logprobs`), `A_t` the advantage, the
    ratio `r_t = exp(lp_t - q_t)` and `clip` to `[clip_low_threshold, clip_high_threshold]`:

    - `"importance_sampling"`: `-(sum r_t A_t)`
    - `"ppo"`: `-(sum min(r_t A_t, clip(r_t) A_t))`
    - `"cispo"`: `-(sum stopgrad(clip(r_t)) lp_t A_t)`
    - `"dro"`: `-(sum lp_t A_t - beta/2 (lp_t - q_t)^2)`

    The parameters are named as in Tinker's `loss_fn_config`; thresholds left None take Tinker's
    defaults for `kind` (`default_clip_thresholds`: CISPO `(0.0, 4.0)`, the others `(0.8, 1.2)`).

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` (the sampled tokens); `logprobs` and
    `advantages` the shape of `target_tokens`, finite, used as data. Positions whose target is
    `ignore_index` (prompt, padding) count nowhere. Returns a 0-dim `LossTensor`, a sum (`.is_sum`),
    whose `.metrics` are `mean_ratio`, `clip_fraction` (share of counted tokens with `r_t` outside
    the thresholds) and `mean_advantage`.

    >>> logits = torch.zeros(3, 2)   # lp_t = log(1/2) for every token
    >>> q = torch.full((3,), 0.5).log()
    >>> loss = policy_gradient_loss(logits, torch.tensor([0, 1, -100]), q, torch.tensor([1.0, 2.0, 5.0]))
    >>> loss.item(), loss.metrics["mean_ratio"].item(), loss.metrics["mean_advantage"].item()
    (-3.0, 1.0, 1.5)
    """
    terms, ratio, clipped, adv, mask = _terms(logits, target_tokens, logprobs, advantages, kind, clip_low_threshold,
                                              clip_high_threshold, beta, ignore_index)
    metrics = {"mean_ratio": masked_mean(ratio.detach(), mask),
               "clip_fraction": masked_mean((clipped != ratio).to(terms.dtype), mask),
               "mean_advantage": masked_mean(adv, mask)}
    return LossTensor.of_sum(-masked_sum(terms, mask), metrics)


def _terms(logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor, advantages: torch.Tensor,
           kind: str, clip_low_threshold: float | None, clip_high_threshold: float | None, beta: float,
           ignore_index: int) -> tuple[torch.Tensor, ...]:
    # The per-token terms of `kind` (the loss is minus their sum), the ratio, the clipped ratio, the
    # advantages and the mask of counted positions.
    low, high = _settings(kind, clip_low_threshold, clip_high_threshold)
    lp = token_logprobs(logits, target_tokens, ignore_index)
    check_token_values("logprobs", logprobs, target_tokens)
    check_token_values("advantages", advantages, target_tokens)
    q, adv, mask = logprobs.to(lp.dtype), advantages.to(lp.dtype), token_mask(target_tokens, ignore_index)
    # Zeroed where ignored before exp: a prompt position's q could otherwise overflow the ratio.
    log_ratio = torch.where(mask, lp - q, torch.zeros((), dtype=lp.dtype, device=lp.device))
    ratio = log_ratio.exp()
    clipped = ratio.clamp(low, high)
    if kind == "importance_sampling":
        terms = ratio * adv
    elif kind == "ppo":
        terms = torch.minimum(ratio * adv, clipped * adv)
    elif kind == "cispo":
        terms = clipped.detach() * lp * adv
    else:
        terms = lp * adv - beta / 2 * log_ratio ** 2
    return terms, ratio, clipped, adv, mask


class PolicyGradientLoss(nn.Module):
    """`policy_gradient_loss` as a loss module: `forward(logits, target_tokens, logprobs, advantages)`
    names the batch inputs it takes (`logprobs` are the sampler's, one a target token).

    The settings are those of Tinker's `loss_fn_config`, so a config written for Tinker passes as is:
    `PolicyGradientLoss("cispo", **{"clip_low_threshold": 0.0, "clip_high_threshold": 4.0})`.
    Thresholds left None take the kind's defaults (`default_clip_thresholds`).

    >>> loss = PolicyGradientLoss("ppo", clip_low_threshold=0.8, clip_high_threshold=1.2)
    >>> loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.full((2,), 0.5).log(), torch.ones(2))
    LossTensor(-2.)
    >>> PolicyGradientLoss("cispo")
    PolicyGradientLoss(kind='cispo', clip_low_threshold=0.0, clip_high_threshold=4.0, beta=0.1, ignore_index=-100)
    """

    def __init__(self, kind: PolicyGradientKind = "importance_sampling", clip_low_threshold: float | None = None,
                 clip_high_threshold: float | None = None, beta: float = 0.1, ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.clip_low_threshold, self.clip_high_threshold = _settings(kind, clip_low_threshold, clip_high_threshold)
        self.kind, self.beta, self.ignore_index = kind, beta, ignore_index

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                advantages: torch.Tensor) -> LossTensor:
        return policy_gradient_loss(logits, target_tokens, logprobs, advantages, self.kind, self.clip_low_threshold,
                                    self.clip_high_threshold, self.beta, self.ignore_index)

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                 advantages: torch.Tensor) -> torch.Tensor:
        """`(B,)`: each sequence's sum, the loss it gets alone, for `Learner.get_preds(with_loss=True)`."""
        terms, *_, mask = _terms(logits, target_tokens, logprobs, advantages, self.kind, self.clip_low_threshold,
                                 self.clip_high_threshold, self.beta, self.ignore_index)
        return -per_row_sums(terms, mask)

    def extra_repr(self) -> str:
        return (f"kind={self.kind!r}, clip_low_threshold={self.clip_low_threshold}, "
                f"clip_high_threshold={self.clip_high_threshold}, beta={self.beta}, ignore_index={self.ignore_index}")
