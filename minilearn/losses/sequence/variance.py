"""A sequence-level loss that couples the whole batch: mean plus variance of the per-sequence loss."""

from collections.abc import Mapping

import torch

from minilearn.losses.sequence.preference import SequenceLossFn

__all__ = ["make_variance_loss"]


def make_variance_loss(weight: float = 1.0) -> SequenceLossFn:
    """`mean_i(l_i) + weight * var_i(l_i)`, where `l_i = -mean_t lp_{i,t}` is sequence i's mean negative
    log-likelihood (at least one target each) and `var` the variance over the batch (dividing by B):
    it couples the whole batch. Metrics: `mean_nll` and `nll_std`.

    >>> fn = make_variance_loss(weight=1.0)
    >>> loss, m = fn({}, [torch.tensor([-1.0, -1.0]), torch.tensor([-3.0])])
    >>> loss.item(), m["nll_std"].item()
    (3.0, 1.0)
    """
    if weight < 0:
        raise ValueError(f"weight must be >= 0, got {weight!r}")

    def variance(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        empty = [i for i, lp in enumerate(logprobs) if lp.numel() == 0]
        if not logprobs or empty:
            raise ValueError(f"the variance loss (make_variance_loss) needs at least one target in every sequence; "
                             f"{'the batch is empty' if not logprobs else f'sequences {empty} have none'}")
        nll = torch.stack([-lp.mean() for lp in logprobs])
        var = nll.var(correction=0)
        return nll.mean() + weight * var, {"mean_nll": nll.mean().detach(), "nll_std": var.detach().sqrt()}
    return variance
