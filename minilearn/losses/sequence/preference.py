"""Pairwise preference losses over sequence log-probabilities: DPO and its IPO and hinge variants,
SimPO and Bradley-Terry.

Each is a function `fn(batch, logprobs) -> (loss, metrics)` for `LogprobLossCB` and
`Learner.forward_backward_custom`. The pairs are laid out in the batch as consecutive sequences:
sequence `2i` is the chosen (preferred) answer and `2i+1` the rejected one of pair `i` (a collate
function that emits each pair's two sequences together gives this layout, also when the batch is
split over processes: the gathered global batch keeps the order). A sequence's score is the sum of
its target log-probabilities, `log p(answer | prompt)` when the prompt's targets are ignored (SimPO
takes their mean instead).
"""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from minilearn.exceptions import MissingInputError

__all__ = ["sequence_totals", "pairwise_logistic", "make_bradley_terry_loss", "make_dpo_loss", "make_simpo_loss"]

# The kinds of `make_dpo_loss`, in the order its error message names them.
_DPO_KINDS = ("sigmoid", "ipo", "hinge")


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


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    # The metrics every preference loss reports, from each pair's two rewards; detached, since they
    # are for logging and must not keep the graph alive.
    margin = chosen - rejected
    metrics = {"accuracy": (margin > 0).to(margin.dtype).mean(), "margin": margin.mean(),
               "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}
    return {k: v.detach() for k, v in metrics.items()}


def pairwise_logistic(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`mean(-log sigmoid(chosen - rejected))` over pairs, and its metrics: `accuracy` (the share of
    pairs with chosen > rejected), `margin` (the mean of chosen - rejected), `chosen_reward` and
    `rejected_reward` (the means of the two scores). `chosen`, `rejected`: `(P,)`, one score a pair.

    >>> loss, m = pairwise_logistic(torch.tensor([1.0]), torch.tensor([1.0]))
    >>> round(loss.item(), 4), m["accuracy"].item()
    (0.6931, 0.0)
    """
    return -F.logsigmoid(chosen - rejected).mean(), _pair_metrics(chosen, rejected)


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


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")


def make_dpo_loss(beta: float = 0.1, kind: str = "sigmoid") -> Callable[[Mapping, list[torch.Tensor]],
                                                                    tuple[torch.Tensor, dict]]:
    """Direct Preference Optimisation (Rafailov et al., 2023) and two variants on the same margin
    `h_i = (c_i - c_ref_i) - (r_i - r_ref_i)`, where `c`, `r` are the chosen and rejected
    sequences' log-probabilities (sums over their targets) under the model and `c_ref`, `r_ref`
    under a frozen reference model:

    - `kind="sigmoid"`: `mean_i -log sigmoid(beta h_i)`, DPO.
    - `kind="ipo"`: `mean_i (h_i - 1/(2 beta))^2`, IPO (Azar et al., 2023; torchtune's `IPOLoss`
      with `tau=beta`): it pulls the margin to `1/(2 beta)` instead of pushing it ever higher. TRL
      averages each sequence's log-probabilities over its tokens for IPO; here the scores are taken
      as given (sums, as for the other kinds), so a `beta` tuned for TRL's IPO does not carry over.
    - `kind="hinge"`: `mean_i relu(1 - beta h_i)`, the SLiC / RSO hinge (torchtune's `RSOLoss` with
      `gamma=beta`, TRL's `"hinge"`).

    Returns `fn(batch, logprobs) -> (loss, metrics)`; `logprobs` holds one tensor `(T_i,)` a
    sequence, `2i` chosen and `2i+1` rejected (module docstring). The reference comes from
    `batch["ref_logprobs"]`: per-sequence tensors (what `LogprobLossCB` and `forward_backward_custom`
    put there from a `ref_model`, or cut from a per-token `(B, T)` tensor in the batch), or a `(B,)`
    tensor of sequence totals. Metrics, for every kind: `accuracy`, `margin`, `chosen_reward` and
    `rejected_reward`, the rewards being `beta (log p - log p_ref)`.

    >>> fn = make_dpo_loss(beta=0.5)
    >>> lps = [torch.tensor([-1.0]), torch.tensor([-2.0])]
    >>> loss, m = fn({"ref_logprobs": torch.tensor([-1.0, -1.0])}, lps)
    >>> round(loss.item(), 4), m["chosen_reward"].item(), m["rejected_reward"].item()
    (0.4741, 0.0, -0.5)
    >>> [make_dpo_loss(0.5, kind)({"ref_logprobs": torch.tensor([-1.0, -1.0])}, lps)[0].item() for kind in ("ipo", "hinge")]
    [0.0, 0.5]
    """
    _check_beta(beta)
    if kind not in _DPO_KINDS:
        raise ValueError(f"kind must be one of {', '.join(map(repr, _DPO_KINDS))}; got {kind!r}")

    def dpo(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if "ref_logprobs" not in batch:
            raise MissingInputError(f"the DPO loss (make_dpo_loss) needs reference log-probabilities: pass "
                                    f"ref_model=... to LogprobLossCB or forward_backward_custom, or put "
                                    f"'ref_logprobs' in the batch; the batch has keys {list(batch.keys())}")
        policy, ref = sequence_totals(logprobs), sequence_totals(batch["ref_logprobs"], "ref_logprobs")
        if ref.shape != policy.shape:
            raise ValueError(f"ref_logprobs has {ref.shape[0]} sequences but logprobs has {policy.shape[0]}: "
                             f"one reference a sequence")
        chosen, rejected = _pairs(policy - ref.to(policy.dtype), "logprobs")   # log p - log p_ref
        h = chosen - rejected
        if kind == "sigmoid":
            losses = -F.logsigmoid(beta * h)
        elif kind == "ipo":
            losses = (h - 1 / (2 * beta)) ** 2
        else:
            losses = F.relu(1 - beta * h)
        return losses.mean(), _pair_metrics(beta * chosen, beta * rejected)
    return dpo


def make_simpo_loss(beta: float = 2.0, gamma_beta_ratio: float = 0.25) -> Callable[[Mapping, list[torch.Tensor]],
                                                                             tuple[torch.Tensor, dict]]:
    """SimPO (Meng et al., 2024), a preference loss without a reference model: each sequence is
    scored by the mean of its target log-probabilities, `s = (sum_t lp_t) / T_i`, so a long answer
    is not favoured or penalised for its length, and
    `loss = mean_i -log sigmoid(beta (s_chosen_i - s_rejected_i - gamma_beta_ratio))`, a target
    reward margin of `gamma = beta * gamma_beta_ratio` (torchtune's `SimPOLoss(beta, gamma)` is
    `make_simpo_loss(beta, gamma / beta)`).

    Returns `fn(batch, logprobs) -> (loss, metrics)`; `logprobs` holds one tensor `(T_i,)` a
    sequence, `2i` chosen and `2i+1` rejected (module docstring), each with at least one target.
    Metrics: `accuracy`, `margin`, `chosen_reward` and `rejected_reward`, the rewards being `beta s`.

    >>> fn = make_simpo_loss(beta=2.0, gamma_beta_ratio=0.25)
    >>> loss, m = fn({}, [torch.tensor([-1.0, -1.0]), torch.tensor([-2.0])])
    >>> round(loss.item(), 4), m["margin"].item()
    (0.2014, 2.0)
    """
    _check_beta(beta)

    def simpo(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        if isinstance(logprobs, torch.Tensor):
            raise TypeError("the SimPO loss (make_simpo_loss) needs one tensor of log-probabilities a sequence: it "
                            "divides each sum by the sequence's number of targets, which a tensor of totals "
                            "does not tell")
        empty = [i for i, lp in enumerate(logprobs) if lp.numel() == 0]
        if empty:
            raise ValueError(f"the SimPO loss (make_simpo_loss) averages each sequence's log-probabilities and needs "
                             f"at least one target in every sequence; sequences {empty} have none")
        totals = sequence_totals(logprobs)
        lengths = torch.tensor([lp.shape[0] for lp in logprobs], dtype=totals.dtype, device=totals.device)
        chosen, rejected = _pairs(totals / lengths, "logprobs")
        loss = -F.logsigmoid(beta * (chosen - rejected - gamma_beta_ratio)).mean()
        return loss, _pair_metrics(beta * chosen, beta * rejected)
    return simpo
