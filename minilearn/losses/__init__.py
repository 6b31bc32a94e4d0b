"""Plug-in losses: each a plain function over tensors plus a thin `nn.Module` whose `forward`
names the batch inputs it takes (see `minilearn.inputs`).

Every log-probability goes through `token_logprobs` (at least float32, no full log-softmax copy),
also when the model returns `LinearLogits` (hidden states and its output layer) instead of logits:
then `linear_token_logprobs` computes them without materialising the logits.
The losses over tokens (`weighted_cross_entropy`, `importance_sampling_loss`,
`policy_gradient_loss`, `key_token_weighted_loss` and their modules) are PyTorch losses: they return
a 0-dim `LossTensor` (`minilearn.normalized_loss`), a `torch.Tensor` that also carries its
`.metrics` and, for a loss normalised by a sum of weights or a count, its `.total` and
`.denominator`, so that the step owner keeps it exact under gradient accumulation and several
processes. The losses over per-sequence log-probabilities (`dpo_loss`, `bradley_terry_loss`,
`candidate_ce_loss`, `variance_loss`) are functions `fn(batch, logprobs) -> (loss, metrics)` for
`LogprobLossCB` and `Learner.forward_backward_custom`, as in Tinker's `forward_backward_custom`.
"""

from minilearn.losses.candidates import candidate_ce_loss
from minilearn.losses.importance_sampling import ImportanceSamplingLoss, importance_sampling_loss
from minilearn.losses.key_token import KeyTokenWeightedLoss, key_token_weighted_loss
from minilearn.losses.linear_logprobs import LinearLogits, linear_tile_shape, linear_token_logprobs
from minilearn.losses.logprobs import LazyLogits, check_targets, shift_targets, token_logprobs
from minilearn.losses.policy_gradient import (PolicyGradientKind, PolicyGradientLoss, default_clip_thresholds,
                                              policy_gradient_loss)
from minilearn.losses.preference import bradley_terry_loss, dpo_loss, pairwise_logistic, sequence_totals
from minilearn.losses.tokens import check_token_values, masked_mean, masked_sum, token_mask, weight_normalized
from minilearn.losses.variance import variance_loss
from minilearn.losses.weighted_ce import Reduction, WeightedCrossEntropy, weighted_cross_entropy

__all__ = [
    "token_logprobs", "shift_targets", "check_targets",
    "linear_token_logprobs", "LinearLogits", "LazyLogits", "linear_tile_shape",
    "weighted_cross_entropy", "WeightedCrossEntropy", "Reduction",
    "importance_sampling_loss", "ImportanceSamplingLoss",
    "policy_gradient_loss", "PolicyGradientLoss", "PolicyGradientKind", "default_clip_thresholds",
    "key_token_weighted_loss", "KeyTokenWeightedLoss",
    "dpo_loss", "bradley_terry_loss", "candidate_ce_loss", "variance_loss", "pairwise_logistic", "sequence_totals",
    "check_token_values", "token_mask", "masked_sum", "masked_mean", "weight_normalized",
]
