"""The losses' earlier names, kept so that code written for them keeps running, with a warning
naming the new one. They are not in `minilearn.losses.__all__`: new code uses the new names.

- `importance_sampling_loss`, `ImportanceSamplingLoss` are now `importance_weighted_cross_entropy`,
  `ImportanceWeightedCrossEntropy`: the old name read like Tinker's importance-sampling loss,
  `PolicyGradientLoss(kind="importance_sampling")`, a different formula.
- `bradley_terry_loss`, `candidate_ce_loss`, `variance_loss` are now `make_bradley_terry_loss`, ...:
  they build a loss function rather than compute a loss.
- `make_dpo_loss` is now `dpo_loss(beta, kind="sigmoid")`, the builder of DPO and its IPO and hinge
  variants, named like `simpo_loss` beside it. (For a while `dpo_loss` was itself the earlier name
  of `make_dpo_loss`; `dpo_loss(beta)` builds the same loss as it did then, now without a warning.)
"""

import warnings
from collections.abc import Callable

from minilearn.losses.importance_weighted import ImportanceWeightedCrossEntropy, importance_weighted_cross_entropy
from minilearn.losses.sequence import dpo_loss, make_bradley_terry_loss, make_candidate_ce_loss, make_variance_loss

__all__ = ["importance_sampling_loss", "ImportanceSamplingLoss", "make_dpo_loss", "bradley_terry_loss",
           "candidate_ce_loss", "variance_loss"]


def _renamed(old: str, new: Callable) -> None:
    warnings.warn(f"{old} is now called {new.__name__}; the old name will go in a later version", FutureWarning,
                  stacklevel=3)


def importance_sampling_loss(*args, **kwargs):
    """Now `importance_weighted_cross_entropy`."""
    _renamed("importance_sampling_loss", importance_weighted_cross_entropy)
    return importance_weighted_cross_entropy(*args, **kwargs)


class ImportanceSamplingLoss(ImportanceWeightedCrossEntropy):
    """Now `ImportanceWeightedCrossEntropy`."""

    def __init__(self, *args, **kwargs):
        _renamed("ImportanceSamplingLoss", ImportanceWeightedCrossEntropy)
        super().__init__(*args, **kwargs)


def make_dpo_loss(beta: float = 0.1) -> Callable:
    """Now `dpo_loss`: `make_dpo_loss(beta)` is `dpo_loss(beta)`, the sigmoid (DPO) kind."""
    _renamed("make_dpo_loss", dpo_loss)
    return dpo_loss(beta)


def bradley_terry_loss(*args, **kwargs):
    """Now `make_bradley_terry_loss`."""
    _renamed("bradley_terry_loss", make_bradley_terry_loss)
    return make_bradley_terry_loss(*args, **kwargs)


def candidate_ce_loss(*args, **kwargs):
    """Now `make_candidate_ce_loss`."""
    _renamed("candidate_ce_loss", make_candidate_ce_loss)
    return make_candidate_ce_loss(*args, **kwargs)


def variance_loss(*args, **kwargs):
    """Now `make_variance_loss`."""
    _renamed("variance_loss", make_variance_loss)
    return make_variance_loss(*args, **kwargs)
