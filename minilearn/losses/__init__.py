"""Plug-in losses: each a plain function over tensors plus a thin `nn.Module` whose `forward`
names the batch inputs it takes (see `minilearn.inputs`).

The losses over tokens return a 0-dim `LossTensor` (`minilearn.normalized_loss`), exact under
gradient accumulation and several processes. `group_advantages` and `kl_penalty` make the inputs of
`PolicyGradientLoss` from a round of rollouts. The losses over per-sequence log-probabilities are in
`sequence/`.
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
