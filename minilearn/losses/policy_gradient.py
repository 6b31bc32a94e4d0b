"""Tinker's policy-gradient losses over sampler log-probabilities (importance sampling, PPO, CISPO, DRO),
with the KL penalty to a reference model and the ways GRPO-style trainers aggregate tokens."""

from typing import Literal

import torch
from torch import nn

from minilearn.logprobs.per_token import IGNORE_INDEX, token_logprobs
from minilearn.losses.kl import KLKind, kl_penalty
from minilearn.losses.masked import check_token_values, masked_mean, masked_sum, per_row_sums, token_mask
from minilearn.normalized_loss import LossTensor, NormalizedLoss

__all__ = ["policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind", "Aggregation",
           "default_clip_thresholds"]

PolicyGradientKind = Literal["importance_sampling", "ppo", "cispo", "dro"]
_KINDS = ("importance_sampling", "ppo", "cispo", "dro")
Aggregation = Literal["token_sum", "token_mean", "sequence_mean", "constant"]
_AGGREGATIONS = ("token_sum", "token_mean", "sequence_mean", "constant")


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


def _settings(kind: str, clip_low_threshold: float | None, clip_high_threshold: float | None,
              aggregation: str = "token_sum", max_tokens: int | None = None) -> tuple[float, float]:
    # The thresholds to use: those given, else the kind's defaults; checked with the aggregation.
    low, high = default_clip_thresholds(kind)
    low = low if clip_low_threshold is None else clip_low_threshold
    high = high if clip_high_threshold is None else clip_high_threshold
    if not 0 <= low <= high:
        raise ValueError(f"expected 0 <= clip_low_threshold <= clip_high_threshold, got clip_low_threshold={low}, "
                         f"clip_high_threshold={high}")
    if aggregation not in _AGGREGATIONS:
        raise ValueError(f"aggregation must be one of {_AGGREGATIONS}, got {aggregation!r}")
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
    """A policy-gradient loss, as Tinker defines them, optionally with a KL penalty and aggregated as
    GRPO-style trainers do. With `lp_t` the learner's log-probability of the sampled token, `q_t` the
    sampler's (`logprobs`), `A_t` the advantage, the ratio `r_t = exp(lp_t - q_t)` and `clip` to
    `[clip_low_threshold, clip_high_threshold]`, the per-token objective `o_t` is:

    - `"importance_sampling"`: `r_t A_t`
    - `"ppo"`: `min(r_t A_t, clip(r_t) A_t)`
    - `"cispo"`: `stopgrad(clip(r_t)) lp_t A_t`
    - `"dro"`: `lp_t A_t - beta/2 (lp_t - q_t)^2`

    minus `kl_coef * kl_t` when `ref_logprobs` (the frozen reference model's log-probabilities of the
    same tokens) is given, `kl_t = kl_penalty(lp_t, ref_t, kl_kind)`. The loss is `-o_t` aggregated by
    `aggregation`, sums over the counted tokens of each sequence `b`:

    - `"token_sum"` (Tinker): `-(sum_b,t o_t)`, a sum-reduced loss;
    - `"token_mean"` (DAPO): `-(sum_b,t o_t) / (number of tokens)`;
    - `"sequence_mean"` (GRPO): `-(1/B) sum_b (sum_t o_t) / (tokens of b)`;
    - `"constant"` (Dr. GRPO): `-(sum_b,t o_t) / (B * max_tokens)`.

    The last three are ratios whose denominator the step owner adds up over the optimizer step, so
    the mean is over every token (or sequence) of the global batch, however it was split into
    micro-batches and processes.

    The parameters are named as in Tinker's `loss_fn_config`; thresholds left None take Tinker's
    defaults for `kind` (`default_clip_thresholds`: CISPO `(0.0, 4.0)`, the others `(0.8, 1.2)`).

    Shapes: `logits` `(..., V)`; `target_tokens` `(...)` (the sampled tokens; `(B, T)` for the
    per-sequence aggregations); `logprobs`, `advantages` and `ref_logprobs` the shape of
    `target_tokens`, finite, used as data. Positions whose target is `ignore_index` (prompt,
    padding) count nowhere. Returns a 0-dim `LossTensor` whose `.metrics` are `mean_ratio`,
    `clip_fraction` (share of counted tokens with `r_t` outside the thresholds), `mean_advantage`
    and, with `ref_logprobs`, `mean_kl`.

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
    terms, ratio, clipped, adv, kl, mask = _terms(logits, target_tokens, logprobs, advantages, kind, low, high, beta,
                                                  ignore_index, ref_logprobs, kl_coef, kl_kind)
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
    # (B,): each sequence's part of the numerator of a per-sequence aggregation (before the minus sign):
    # its token sum, divided by its own token count ("sequence_mean", "token_mean" of one sequence) or by
    # max_tokens ("constant"); unchanged for "token_sum".
    if terms.ndim < 2:
        raise ValueError(f"aggregation={aggregation!r} needs target_tokens of shape (B, T), one row a sequence; "
                         f"got {tuple(terms.shape)}")
    sums = per_row_sums(terms, mask)
    if aggregation == "constant":
        return sums / max_tokens
    if aggregation == "token_sum":
        return sums
    return sums / per_row_sums(mask.to(terms.dtype), mask).clamp(min=1)


def _terms(logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor, advantages: torch.Tensor,
           kind: str, low: float, high: float, beta: float, ignore_index: int, ref_logprobs: torch.Tensor | None,
           kl_coef: float, kl_kind: str) -> tuple[torch.Tensor | None, ...]:
    # The per-token objective o_t of `kind` less the KL term (the loss is minus its aggregate), the
    # ratio, the clipped ratio, the advantages, the KL estimate (None without a reference) and the mask.
    lp = token_logprobs(logits, target_tokens, ignore_index)
    check_token_values("logprobs", logprobs, target_tokens)
    check_token_values("advantages", advantages, target_tokens)
    q, adv, mask = logprobs.to(lp.dtype), advantages.to(lp.dtype), token_mask(target_tokens, ignore_index)
    zero = torch.zeros((), dtype=lp.dtype, device=lp.device)
    # Zeroed where ignored before exp: a prompt position's q could otherwise overflow the ratio.
    log_ratio = torch.where(mask, lp - q, zero)
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
    ref_logprobs=None)` names the batch inputs it takes (`logprobs` are the sampler's, one a target
    token; `ref_logprobs`, when the batch has it, the frozen reference model's).

    The settings are those of Tinker's `loss_fn_config`, so a config written for Tinker passes as is:
    `PolicyGradientLoss("cispo", **{"clip_low_threshold": 0.0, "clip_high_threshold": 4.0})`.
    Thresholds left None take the kind's defaults (`default_clip_thresholds`). `kl_coef`, `kl_kind`,
    `aggregation` and `max_tokens` as in `policy_gradient_loss`: a GRPO loss is
    `PolicyGradientLoss("ppo", kl_coef=0.04, aggregation="sequence_mean")`.

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
        if kl_kind not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_kind must be one of ('k1', 'k2', 'k3'), got {kl_kind!r}")
        self.kind, self.beta, self.ignore_index = kind, beta, ignore_index
        self.kl_coef, self.kl_kind, self.aggregation, self.max_tokens = kl_coef, kl_kind, aggregation, max_tokens

    def _options(self) -> dict:
        return dict(kind=self.kind, clip_low_threshold=self.clip_low_threshold,
                    clip_high_threshold=self.clip_high_threshold, beta=self.beta, ignore_index=self.ignore_index,
                    kl_coef=self.kl_coef, kl_kind=self.kl_kind, aggregation=self.aggregation,
                    max_tokens=self.max_tokens)

    def forward(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                advantages: torch.Tensor, ref_logprobs: torch.Tensor | None = None) -> LossTensor:
        return policy_gradient_loss(logits, target_tokens, logprobs, advantages, ref_logprobs=ref_logprobs,
                                    **self._options())

    def per_item(self, logits: torch.Tensor, target_tokens: torch.Tensor, logprobs: torch.Tensor,
                 advantages: torch.Tensor, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
        """`(B,)`: the loss each sequence gets alone, for `Learner.get_preds(with_loss=True)`: its
        token sum, token mean (`"token_mean"`, `"sequence_mean"`) or sum over `max_tokens`."""
        terms, *_, mask = _terms(logits, target_tokens, logprobs, advantages, self.kind, self.clip_low_threshold,
                                 self.clip_high_threshold, self.beta, self.ignore_index, ref_logprobs, self.kl_coef,
                                 self.kl_kind)
        aggregation = "sequence_mean" if self.aggregation == "token_mean" else self.aggregation
        return -_sequence_sums(terms, mask, aggregation, self.max_tokens)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self._options().items())
