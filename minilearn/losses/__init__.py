"""Plug-in losses: each a plain function over tensors plus a thin `nn.Module` whose `forward`
names the batch inputs it takes (see `minilearn.inputs`).

The losses over tokens (`weighted_ce`, `importance_weighted`, `policy_gradient`, `key_token`, built
on `masked`) are PyTorch losses: they return a 0-dim `LossTensor` (`minilearn.normalized_loss`), a
`torch.Tensor` that also carries its `.metrics` and, for a loss normalised by a sum of weights or a
count, its `.total` and `.denominator`, so that the step owner keeps it exact under gradient
accumulation and several processes. Their log-probabilities come from `minilearn.logprobs`
(`token_logprobs`: at least float32, no full log-softmax copy; from `LinearLogits` without
materialising the logits), re-exported here.

For RL post-training, `group_advantages` (GRPO, Dr. GRPO) and `kl_penalty` (k1, k2, k3) make the
inputs of `PolicyGradientLoss(..., kl_coef, aggregation)` from a round of rollouts
(`minilearn.sampling`).

The losses over per-sequence log-probabilities (`sequence/`) are built by `make_dpo_loss` (with its IPO
and hinge kinds), `make_simpo_loss`, `make_bradley_terry_loss`, `make_candidate_ce_loss` and
`make_variance_loss`: each returns a function `fn(batch, logprobs) -> (loss, metrics)` for
`LogprobLossCB` and `Learner.forward_backward_custom`, as in Tinker's `forward_backward_custom`.
"""

from minilearn.logprobs.linear import LinearLogits, linear_tile_shape, linear_token_logprobs
from minilearn.logprobs.per_token import IGNORE_INDEX, LazyLogits, check_targets, shift_targets, token_logprobs
from minilearn.losses.advantages import AdvantageScale, group_advantages
from minilearn.losses.importance_weighted import ImportanceWeightedCrossEntropy, importance_weighted_cross_entropy
from minilearn.losses.key_token import KeyTokenWeightedLoss, key_token_weighted_loss
from minilearn.losses.kl import KLKind, kl_penalty
from minilearn.losses.policy_gradient import (Aggregation, PolicyGradientKind, PolicyGradientLoss,
                                              default_clip_thresholds, policy_gradient_loss)
from minilearn.losses.sequence import (make_dpo_loss, make_bradley_terry_loss, make_candidate_ce_loss, make_variance_loss,
                                       pairwise_logistic, sequence_totals, make_simpo_loss)
from minilearn.losses.masked import (check_token_values, masked_mean, masked_sum, per_row_sums, per_row_weight_normalized,
                                    token_mask, weight_normalized)
from minilearn.losses.weighted_ce import Reduction, WeightedCrossEntropy, weighted_cross_entropy

__all__ = [
    "IGNORE_INDEX", "token_logprobs", "shift_targets", "check_targets",
    "linear_token_logprobs", "LinearLogits", "LazyLogits", "linear_tile_shape",
    "weighted_cross_entropy", "WeightedCrossEntropy", "Reduction",
    "importance_weighted_cross_entropy", "ImportanceWeightedCrossEntropy",
    "policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind", "Aggregation", "default_clip_thresholds",
    "group_advantages", "AdvantageScale", "kl_penalty", "KLKind",
    "key_token_weighted_loss", "KeyTokenWeightedLoss",
    "make_dpo_loss", "make_simpo_loss", "make_bradley_terry_loss", "make_candidate_ce_loss", "make_variance_loss",
    "pairwise_logistic", "sequence_totals",
    "check_token_values", "token_mask", "masked_sum", "masked_mean", "weight_normalized", "per_row_sums",
    "per_row_weight_normalized",
]
