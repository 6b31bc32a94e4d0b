"""Cross-entropy renormalised over a small candidate set: multiple-choice answers."""

from collections.abc import Mapping

import torch

from minilearn.exceptions import MissingInputError
from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.losses.sequence.preference import SequenceLossFn

__all__ = ["make_candidate_ce_loss"]


def _correct(correct_index: int | str, batch: Mapping, n: int, k: int) -> torch.Tensor:
    if isinstance(correct_index, str):
        if correct_index not in batch:
            raise MissingInputError(f"the candidate loss (make_candidate_ce_loss) reads the correct candidates from "
                                    f"the batch key {correct_index!r}, but the batch has keys {list(batch.keys())}")
        index = torch.as_tensor(batch[correct_index])
        if index.shape != (n,):
            raise ValueError(f"{correct_index} must hold one candidate index a sequence, shape ({n},); got "
                             f"{tuple(index.shape)}")
    else:
        index = torch.full((n,), correct_index)
    if index.is_floating_point() or ((index < 0) | (index >= k)).any():
        raise ValueError(f"the correct candidate index must be a whole number in [0, {k}) for K={k} candidates; "
                         f"got {index.tolist()}")
    return index.long()


def make_candidate_ce_loss(correct_index: int | str = "correct_index") -> SequenceLossFn:
    """Cross-entropy over the K candidate tokens of each answer position, renormalised over them:
    `-log(p(correct) / sum_k p(candidate_k))`, averaged over all answer positions of the batch.

    `target_tokens` `(B, T, K)` gives the candidates (say "A" to "D") at the answer positions, so each
    sequence's log-probabilities are `(T_i, K)`; `correct_index`: an int, or the batch key of a `(B,)`
    tensor. Metrics: `accuracy` (the correct candidate is the most likely) and `correct_prob`.

    >>> fn = make_candidate_ce_loss(0)
    >>> loss, m = fn({}, [torch.log(torch.tensor([[0.3, 0.1]]))])
    >>> round(loss.item(), 4), round(m["correct_prob"].item(), 4)
    (0.2877, 0.75)
    """
    def candidate_ce(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if not logprobs or any(lp.ndim != 2 for lp in logprobs):
            shapes = [tuple(lp.shape) for lp in logprobs]
            raise ValueError(f"the candidate loss (make_candidate_ce_loss) needs candidate targets: target_tokens "
                             f"(B, T, K), giving log-probabilities (T_i, K) a sequence; got shapes {shapes}")
        k = logprobs[0].shape[1]
        index = _correct(correct_index, batch, len(logprobs), k).to(logprobs[0].device)
        lp = torch.cat(logprobs)                                           # (answer positions, K)
        if lp.shape[0] == 0:
            raise ValueError(f"the candidate loss (make_candidate_ce_loss) found no answer position in the batch: "
                             f"target_tokens is {IGNORE_INDEX} everywhere")
        correct = torch.repeat_interleave(index, torch.tensor([x.shape[0] for x in logprobs], device=lp.device))
        chosen = (lp - torch.logsumexp(lp, -1, keepdim=True)).gather(1, correct[:, None])[:, 0]
        return -chosen.mean(), {"accuracy": (lp.detach().argmax(-1) == correct).to(lp.dtype).mean(),
                                "correct_prob": chosen.detach().exp().mean()}
    return candidate_ce
