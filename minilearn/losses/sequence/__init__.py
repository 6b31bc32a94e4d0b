"""Losses over per-sequence log-probabilities, for `LogprobLossCB` and `Learner.forward_backward_custom`.

Each function here builds a loss: `make_dpo_loss(beta=0.1)` returns a function
`fn(batch, logprobs) -> (loss, metrics)`, where `logprobs` holds one tensor of target
log-probabilities a sequence (the convention of `minilearn.logprobs.sequences`), as in Tinker's
`forward_backward_custom`.
"""

from minilearn.losses.sequence.candidates import make_candidate_ce_loss
from minilearn.losses.sequence.preference import (make_dpo_loss, make_bradley_terry_loss, pairwise_logistic,
                                                  sequence_totals, make_simpo_loss)
from minilearn.losses.sequence.variance import make_variance_loss

__all__ = ["make_dpo_loss", "make_simpo_loss", "make_bradley_terry_loss", "make_candidate_ce_loss", "make_variance_loss",
           "pairwise_logistic", "sequence_totals"]
