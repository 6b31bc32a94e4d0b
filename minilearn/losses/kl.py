"""Per-token estimators of the KL divergence from the policy to a frozen reference model, from the
log-probabilities of tokens sampled from the policy (Schulman, "Approximating KL divergence", 2020)."""

from typing import Literal

import torch

from minilearn.logprobs.per_token import shape_or_type

__all__ = ["kl_penalty", "KLKind"]

KLKind = Literal["k1", "k2", "k3"]
"""The estimators of `kl_penalty`: Schulman's k1 (`lp - ref`), k2 (`(lp - ref)^2 / 2`) and k3 (`exp(ref - lp) - (ref - lp) - 1`)."""


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: KLKind = "k3") -> torch.Tensor:
    """Per token, an estimate of `KL(policy || reference)` from `lp = log p(token)` and
    `ref = log p_ref(token)` of a token drawn from the policy, both of one shape (any), returned in it:
    `"k1"` `lp - ref` (unbiased, noisy, can be negative); `"k2"` `(lp - ref)^2 / 2` (biased, never
    negative); `"k3"` `exp(ref - lp) - (ref - lp) - 1` (unbiased, never negative; GRPO's).

    >>> lp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.0, -1.0])
    >>> kl_penalty(lp, ref, "k1"), kl_penalty(lp, ref, "k2")
    (tensor([ 0., -1.]), tensor([0.0000, 0.5000]))
    >>> kl_penalty(lp, ref)
    tensor([0.0000, 0.7183])
    """
    if not (isinstance(logprobs, torch.Tensor) and isinstance(ref_logprobs, torch.Tensor)) \
            or logprobs.shape != ref_logprobs.shape:
        raise ValueError(f"logprobs {shape_or_type(logprobs)} and ref_logprobs {shape_or_type(ref_logprobs)} must "
                         f"be tensors of one shape: one log-probability a token under each model")
    ref = ref_logprobs.to(logprobs.dtype)
    if kind == "k1":
        return logprobs - ref
    log_ratio = ref - logprobs  # log p_ref / p
    if kind == "k2":
        return log_ratio ** 2 / 2
    if kind == "k3":
        return log_ratio.exp() - log_ratio - 1
    raise ValueError(f"kind must be one of ('k1', 'k2', 'k3'), got {kind!r}")
