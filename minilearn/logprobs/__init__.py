"""Log-probabilities: from logits or from hidden states and the output layer, per token and per
sequence, and losses over them with their exact gradient. `per_token.token_logprobs` is the one
kernel every loss's log-probabilities go through."""

from minilearn.logprobs.forward_backward import CustomLossResult, forward_backward_custom
from minilearn.logprobs.fused_head import FusedHead
from minilearn.logprobs.labels import LabelsToTargets, targets_from_labels
from minilearn.logprobs.linear import LinearLogits, linear_tile_shape, linear_token_logprobs
from minilearn.logprobs.sequences import logprob_targets, sequence_logprobs, split_sequences, target_positions
from minilearn.logprobs.per_token import (IGNORE_INDEX, LazyLogits, check_targets, shift_targets, target_logprobs,
                                       token_logprobs)

__all__ = ["IGNORE_INDEX", "token_logprobs", "target_logprobs", "shift_targets", "check_targets", "LazyLogits",
           "targets_from_labels", "LabelsToTargets",
           "LinearLogits", "linear_token_logprobs", "linear_tile_shape", "FusedHead",
           "logprob_targets", "sequence_logprobs", "split_sequences", "target_positions",
           "forward_backward_custom", "CustomLossResult"]
