"""Pairwise preference losses over sequence log-probabilities: DPO and Bradley-Terry.

Both are functions `fn(batch, logprobs) -> (loss, metrics)` for `LogprobLossCB` and
`Learner.forward_backward_custom`. The pairs are laid out in the batch as consecutive sequences:
sequence `2i` is the chosen (preferred) answer and `2i+1` the rejected one of pair `i` (a collate
function that emits each pair's two sequences together gives this layout, also when the batch is
split over processes: the gathered global batch keeps the order). A sequence's score is the sum of
its target log-probabilities, `log p(answer | prompt)` when the prompt's targets are ignored.
"""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from minilearn.exceptions import MissingInputError

__all__ = ["sequence_totals", "pairwise_logistic", "make_bradley_terry_loss", "make_dpo_loss"]


def sequence_totals(logprobs: list[torch.Tensor] | torch.Tensor, name: str = "logprobs") -> torch.Tensor:
    """`(B,)`: the sum of each sequence's log-probabilities. `logprobs` is a list of per-sequence
    tensors `(T_i,)`, or already a tensor `(B,)` of sequence totals.

    >>> sequence_totals([torch.tensor([-1.0, -2.0]), torch.tensor([-0.5])])
    tensor([-3.0000, -0.5000])
    """
    if isinstance(logprobs, torch.Tensor):
        if logprobs.ndim != 1:
            raise ValueError(f"{name} given as a tensor must hold one total a sequence, shape (B,); got "
                             f"{tuple(logprobs.shape)}")
        return logprobs
    if any(lp.ndim != 1 for lp in logprobs):
        shapes = [tuple(lp.shape) for lp in logprobs if lp.ndim != 1]
        raise ValueError(f"{name} must hold one log-probability a position, shape (T_i,); got {shapes[0]} "
                         f"(candidate targets (T_i, K) do not make a sequence score)")
    return torch.stack([lp.sum() for lp in logprobs])


def _pairs(scores: torch.Tensor, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    # Sequences 2i (chosen) and 2i+1 (rejected).
    if scores.shape[0] % 2 or scores.shape[0] == 0:
        raise ValueError(f"{name} has {scores.shape[0]} sequences; a preference batch needs an even, non-zero "
                         f"number: sequence 2i chosen, 2i+1 rejected")
    return scores[0::2], scores[1::2]


def pairwise_logistic(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`mean(-log sigmoid(chosen - rejected))` over pairs, and its metrics: `accuracy` (the share of
    pairs with chosen > rejected), `margin` (the mean of chosen - rejected), `chosen_reward` and
    `rejected_reward` (the means of the two scores).

    >>> loss, m = pairwise_logistic(torch.tensor([1.0]), torch.tensor([1.0]))
    >>> round(loss.item(), 4), m["accuracy"].item()
    (0.6931, 0.0)
    """
    margin = chosen - rejected
    metrics = {"accuracy": (margin > 0).to(margin.dtype).mean(), "margin": margin.mean(),
               "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}
    return -F.logsigmoid(margin).mean(), {k: v.detach() for k, v in metrics.items()}


def make_bradley_terry_loss() -> Callable[[Mapping, list[torch.Tensor]], tuple[torch.Tensor, dict]]:
    """The Bradley-Terry loss over pairwise comparisons, each sequence scored by its log-probability
    `s = sum_t lp_t`: `mean_i -log sigmoid(s_chosen_i - s_rejected_i)` (batch layout in the module
    docstring). Metrics as in `pairwise_logistic`.

    >>> fn = make_bradley_terry_loss()
    >>> loss, m = fn({}, [torch.tensor([-1.0, -1.0]), torch.tensor([-3.0])])
    >>> round(loss.item(), 4), m["margin"].item()
    (0.3133, 1.0)
    """
    def bradley_terry(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return pairwise_logistic(*_pairs(sequence_totals(logprobs), "logprobs"))
    return bradley_terry


def make_dpo_loss(beta: float = 0.1) -> Callable[[Mapping, list[torch.Tensor]], tuple[torch.Tensor, dict]]:
    """Direct Preference Optimisation (Rafailov et al., 2023):
    `mean_i -log sigmoid(beta ((c_i - c_ref_i) - (r_i - r_ref_i)))`, where `c`, `r` are the chosen and
    rejected sequences' log-probabilities under the model and `c_ref`, `r_ref` under a frozen
    reference model.

    The reference comes from `batch["ref_logprobs"]`: per-sequence tensors (what `LogprobLossCB` and
    `forward_backward_custom` put there from a `ref_model`, or cut from a per-token `(B, T)` tensor
    in the batch), or a `(B,)` tensor of sequence totals. Metrics: `accuracy`, `margin`,
    `chosen_reward` and `rejected_reward`, the rewards being `beta (log p - log p_ref)`.

    >>> fn = make_dpo_loss(beta=0.5)
    >>> lps = [torch.tensor([-1.0]), torch.tensor([-2.0])]
    >>> loss, m = fn({"ref_logprobs": torch.tensor([-1.0, -1.0])}, lps)
    >>> round(loss.item(), 4), m["chosen_reward"].item(), m["rejected_reward"].item()
    (0.4741, 0.0, -0.5)
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")

    def dpo(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if "ref_logprobs" not in batch:
            raise MissingInputError(f"the DPO loss (make_dpo_loss) needs reference log-probabilities: pass "
                                    f"ref_model=... to LogprobLossCB or forward_backward_custom, or put "
                                    f"'ref_logprobs' in the batch; the batch has keys {list(batch.keys())}")
        policy, ref = sequence_totals(logprobs), sequence_totals(batch["ref_logprobs"], "ref_logprobs")
        if ref.shape != policy.shape:
            raise ValueError(f"ref_logprobs has {ref.shape[0]} sequences but logprobs has {policy.shape[0]}: "
                             f"one reference a sequence")
        rewards = beta * (policy - ref.to(policy.dtype))
        return pairwise_logistic(*_pairs(rewards, "logprobs"))
    return dpo
