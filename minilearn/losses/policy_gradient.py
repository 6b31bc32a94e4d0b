"""Tinker's policy-gradient losses over sampler log-probabilities (importance sampling, PPO, CISPO, DRO),
with the KL penalty to a reference model and the ways GRPO-style trainers aggregate tokens."""

from typing import Literal, get_args

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.kl import KLKind, kl_penalty
from minilearn.losses.masked import (check_choice, check_token_values, masked_mean, masked_sum, per_row_sums,
                                    token_inputs)
from minilearn.normalized_loss import LossTensor, NormalizedLoss

__all__ = ["policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind", "Aggregation",
           "default_clip_thresholds"]

PolicyGradientKind = Literal["importance_sampling", "ppo", "cispo", "dro"]
"""The per-token objectives of `PolicyGradientLoss`, named as Tinker names them."""
_KINDS = get_args(PolicyGradientKind)
Aggregation = Literal["token_sum", "token_mean", "sequence_mean", "constant"]
"""How `PolicyGradientLoss` sums its per-token objectives into a loss: Tinker's sum, DAPO's token mean, GRPO's
sequence mean, or Dr. GRPO's constant normaliser."""
_AGGREGATIONS = get_args(Aggregation)


def default_clip_thresholds(kind: PolicyGradientKind) -> tuple[float, float]:
    """Tinker's `(clip_low_threshold, clip_high_threshold)` for `kind`: `(0.0, 4.0)` for CISPO, else
    `(0.8, 1.2)` (for `"importance_sampling"` and `"dro"` only the `clip_fraction` metric uses them).

    >>> default_clip_thresholds("cispo"), default_clip_thresholds("ppo")
    ((0.0, 4.0), (0.8, 1.2))
    """
    check_choice("kind", kind, _KINDS)
    return (0.0, 4.0) if kind == "cispo" else (0.8, 1.2)


def _settings(kind: str, clip_low_threshold: float | None, clip_high_threshold: float | None,
              aggregation: str = "token_sum", max_tokens: int | None = None) -> tuple[float, float]:
    low, high = default_clip_thresholds(kind)
    low = low if clip_low_threshold is None else clip_low_threshold
    high = high if clip_high_threshold is None else clip_high_threshold
    if not 0 <= low <= high:
        raise ValueError(f"expected 0 <= clip_low_threshold <= clip_high_threshold, got clip_low_threshold={low}, "
                         f"clip_high_threshold={high}")
    check_choice("aggregation", aggregation, _AGGREGATIONS)
    if (aggregation == "constant") != (max_tokens is not None) or (max_tokens is not None and max_tokens <= 0):
        raise ValueError(f"aggregation='constant' divides by max_tokens (the longest completion allowed) and only it "
                         f"takes one: got aggregation={aggregation!r}, max_tokens={max_tokens!r}")
    return low, high


def policy_gradient_loss(logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                         advantages: torch.Tensor, kind: PolicyGradientKind = "importance_sampling",
                         clip_low_threshold: float | None = None, clip_high_threshold: float | None = None,
                         beta: float = 0.1, ignore_index: int = IGNORE_INDEX, ref_logprobs: torch.Tensor | None = None,
                         kl_coef: float = 0.0, kl_kind: KLKind = "k3", aggregation: Aggregation = "token_sum",
                         max_tokens: int | None = None) -> LossTensor:
    """A policy-gradient loss as Tinker defines them (and names the parameters), optionally with a KL
    penalty, aggregated as GRPO-style trainers do. With `lp_t` the learner's log-probability of the
    sampled token, `q_t` the sampler's (`logprobs`), `A_t` the advantage, `r_t = exp(lp_t - q_t)` and
    `clip` to `[clip_low_threshold, clip_high_threshold]` (None: `default_clip_thresholds`), the
    per-token objective `o_t` is `r_t A_t` (`"importance_sampling"`), `min(r_t A_t, clip(r_t) A_t)`
    (`"ppo"`), `stopgrad(clip(r_t)) lp_t A_t` (`"cispo"`) or `lp_t A_t - beta/2 (lp_t - q_t)^2`
    (`"dro"`), minus `kl_coef * kl_penalty(lp_t, ref_t, kl_kind)` given `ref_logprobs`. The loss is
    `-o_t` aggregated over the counted tokens of the sequences `b`:

    - `"token_sum"` (Tinker): `-(sum_b,t o_t)`, a sum-reduced loss;
    - `"token_mean"` (DAPO): `-(sum_b,t o_t) / (number of tokens)`;
    - `"sequence_mean"` (GRPO): `-(1/B) sum_b (sum_t o_t) / (tokens of b)`;
    - `"constant"` (Dr. GRPO): `-(sum_b,t o_t) / (B * max_tokens)`.

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` (`(B, T)` for the per-sequence aggregations),
    `ignore_index` where nothing counts; `logprobs`, `advantages`, `ref_logprobs` its shape, finite.
    Metrics: `mean_ratio`, `clip_fraction`, `mean_advantage` and, with `ref_logprobs`, `mean_kl`.

    >>> logits = torch.zeros(3, 2)   # lp_t = log(1/2) for every token
    >>> q = torch.full((3,), 0.5).log()
    >>> loss = policy_gradient_loss(logits, torch.tensor([0, 1, -100]), q, torch.tensor([1.0, 2.0, 5.0]))
    >>> loss.item(), loss.metrics["mean_ratio"].item(), loss.metrics["mean_advantage"].item()
    (-3.0, 1.0, 1.5)
    >>> policy_gradient_loss(logits, torch.tensor([0, 1, -100]), q, torch.tensor([1.0, 2.0, 5.0]),
    ...                      aggregation="token_mean")
    LossTensor(-1.5000)
    """
    low, high = _settings(kind, clip_low_threshold, clip_high_threshold, aggregation, max_tokens)
    terms, ratio, clipped, adv, kl, mask = _terms(logits, target_tokens, logprobs, advantages, ref_logprobs, kind,
                                                  low, high, beta, ignore_index, kl_coef, kl_kind)
    metrics = {"mean_ratio": masked_mean(ratio.detach(), mask),
               "clip_fraction": masked_mean((clipped != ratio).to(terms.dtype), mask),
               "mean_advantage": masked_mean(adv, mask)}
    if kl is not None:
        metrics["mean_kl"] = masked_mean(kl.detach(), mask)
    if aggregation == "token_sum":
        return LossTensor.of_sum(-masked_sum(terms, mask), metrics)
    if aggregation == "token_mean":
        return NormalizedLoss(-masked_sum(terms, mask), mask.sum(), metrics).as_tensor()
    sequences = _sequence_sums(terms, mask, aggregation, max_tokens)
    return NormalizedLoss(-sequences.sum(), sequences.shape[0], metrics).as_tensor()


def _sequence_sums(terms: torch.Tensor, mask: torch.Tensor, aggregation: str, max_tokens: int | None) -> torch.Tensor:
    # (B,): each sequence's token sum, over its token count or max_tokens as `aggregation` says.
    if terms.ndim < 2:
        raise ValueError(f"aggregation={aggregation!r} needs target_tokens of shape (B, T), one row a sequence; "
                         f"got {tuple(terms.shape)}")
    sums = per_row_sums(terms, mask)
    if aggregation == "constant":
        return sums / max_tokens
    if aggregation == "token_sum":
        return sums
    return sums / per_row_sums(mask.to(terms.dtype), mask).clamp(min=1)


def _terms(logits, target_tokens, logprobs, advantages, ref_logprobs, kind, clip_low_threshold, clip_high_threshold,
           beta, ignore_index, kl_coef, kl_kind, **_) -> tuple[torch.Tensor | None, ...]:
    # o_t less the KL term, the ratio, the clipped ratio, the advantages, the KL (or None) and the mask.
    lp, mask, q, adv = token_inputs(logits, target_tokens, ignore_index, logprobs=logprobs, advantages=advantages)
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    # Zeroed where ignored before exp: a prompt position's q could otherwise overflow the ratio.
    log_ratio = torch.where(mask, lp - q, zero)
    ratio = log_ratio.exp()
    clipped = ratio.clamp(clip_low_threshold, clip_high_threshold)
    if kind == "importance_sampling":
        terms = ratio * adv
    elif kind == "ppo":
        terms = torch.minimum(ratio * adv, clipped * adv)
    elif kind == "cispo":
        terms = clipped.detach() * lp * adv
    else:
        terms = lp * adv - beta / 2 * log_ratio ** 2
    kl = None
    if ref_logprobs is not None:
        check_token_values("ref_logprobs", ref_logprobs, target_tokens)
        # Where ignored, lp stands in for the reference, so the estimate there is 0 and never overflows.
        kl = kl_penalty(lp, torch.where(mask, ref_logprobs.to(lp.dtype).detach(), lp.detach()), kl_kind)
        terms = terms - kl_coef * kl
    elif kl_coef:
        raise ValueError(f"kl_coef={kl_coef} needs the reference model's log-probabilities of the sampled tokens: "
                         f"put ref_logprobs (the shape of target_tokens, {tuple(target_tokens.shape)}) in the batch")
    return terms, ratio, clipped, adv, kl, mask


class PolicyGradientLoss(nn.Module):
    """`policy_gradient_loss` as a loss module: `forward(logits, target_tokens, logprobs, advantages,
    ref_logprobs=None)` names the batch inputs it takes. A Tinker `loss_fn_config` passes as is; a
    GRPO loss is `PolicyGradientLoss("ppo", kl_coef=0.04, aggregation="sequence_mean")`.

    >>> loss = PolicyGradientLoss("ppo", clip_low_threshold=0.8, clip_high_threshold=1.2)
    >>> loss(torch.zeros(2, 2), torch.tensor([0, 1]), torch.full((2,), 0.5).log(), torch.ones(2))
    LossTensor(-2.)
    >>> PolicyGradientLoss("cispo")
    PolicyGradientLoss(kind='cispo', clip_low_threshold=0.0, clip_high_threshold=4.0, beta=0.1, ignore_index=-100, kl_coef=0.0, kl_kind='k3', aggregation='token_sum', max_tokens=None)
    """

    def __init__(self, kind: PolicyGradientKind = "importance_sampling", clip_low_threshold: float | None = None,
                 clip_high_threshold: float | None = None, beta: float = 0.1, ignore_index: int = IGNORE_INDEX,
                 kl_coef: float = 0.0, kl_kind: KLKind = "k3", aggregation: Aggregation = "token_sum",
                 max_tokens: int | None = None):
        super().__init__()
        self.clip_low_threshold, self.clip_high_threshold = _settings(kind, clip_low_threshold, clip_high_threshold,
                                                                      aggregation, max_tokens)
        check_choice("kl_kind", kl_kind, get_args(KLKind))
        self.kind, self.beta, self.ignore_index = kind, beta, ignore_index
        self.kl_coef, self.kl_kind, self.aggregation, self.max_tokens = kl_coef, kl_kind, aggregation, max_tokens

    def _options(self) -> dict:
        return {k: getattr(self, k) for k in ("kind", "clip_low_threshold", "clip_high_threshold", "beta",
                                              "ignore_index", "kl_coef", "kl_kind", "aggregation", "max_tokens")}

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                advantages: torch.Tensor, ref_logprobs: torch.Tensor | None = None) -> LossTensor:
        return policy_gradient_loss(logits, target_tokens, logprobs, advantages, ref_logprobs=ref_logprobs,
                                    **self._options())

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                 advantages: torch.Tensor, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """`(B,)`: the loss each sequence gets alone, for `Learner.get_preds(with_loss=True)`."""
        terms, *_, mask = _terms(logits, target_tokens, logprobs, advantages, ref_logprobs, **self._options())
        aggregation = "sequence_mean" if self.aggregation == "token_mean" else self.aggregation
        return -_sequence_sums(terms, mask, aggregation, self.max_tokens)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())
