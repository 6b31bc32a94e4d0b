"""Losses over per-sequence log-probabilities, for `LogprobLossCB` and `Learner.forward_backward_custom`:
each `make_*_loss(...)` returns `fn(batch, logprobs) -> (loss, metrics)`, `logprobs` one tensor a
sequence (`minilearn.logprobs.sequences`), as in Tinker's `forward_backward_custom`.
"""

from minilearn.losses.sequence.candidates import make_candidate_ce_loss
from minilearn.losses.sequence.preference import (make_dpo_loss, make_bradley_terry_loss, pairwise_logistic,
                                                  sequence_totals, make_simpo_loss)
from minilearn.losses.sequence.variance import make_variance_loss

__all__ = ["make_dpo_loss", "make_simpo_loss", "make_bradley_terry_loss", "make_candidate_ce_loss", "make_variance_loss",
           "pairwise_logistic", "sequence_totals"]
