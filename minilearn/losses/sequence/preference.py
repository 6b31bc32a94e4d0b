"""Pairwise preference losses over sequence log-probabilities: DPO and its IPO and hinge variants,
SimPO and Bradley-Terry. Sequence `2i` of a batch is the chosen answer of pair `i`, `2i+1` the
rejected one; a sequence's score is the sum of its target log-probabilities (SimPO: their mean).
"""

from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F

from minilearn.exceptions import MissingInputError

__all__ = ["sequence_totals", "pairwise_logistic", "make_bradley_terry_loss", "make_dpo_loss", "make_simpo_loss"]

_DPO_KINDS = ("sigmoid", "ipo", "hinge")
SequenceLossFn = Callable[[Mapping, list[torch.Tensor]], tuple[torch.Tensor, dict]]


def sequence_totals(logprobs: list[torch.Tensor] | torch.Tensor, name: str = "logprobs") -> torch.Tensor:
    """`(B,)`: the sum of each sequence's log-probabilities `(T_i,)`; a `(B,)` tensor of totals as is.

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


def _pairs(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if scores.shape[0] % 2 or scores.shape[0] == 0:
        raise ValueError(f"logprobs has {scores.shape[0]} sequences; a preference batch needs an even, non-zero "
                         f"number: sequence 2i chosen, 2i+1 rejected")
    return scores[0::2], scores[1::2]


def _pair_metrics(chosen: torch.Tensor, rejected: torch.Tensor) -> dict:
    # Detached: they are for logging and must not keep the graph alive.
    margin = chosen - rejected
    metrics = {"accuracy": (margin > 0).to(margin.dtype).mean(), "margin": margin.mean(),
               "chosen_reward": chosen.mean(), "rejected_reward": rejected.mean()}
    return {k: v.detach() for k, v in metrics.items()}


def pairwise_logistic(chosen: torch.Tensor, rejected: torch.Tensor) -> tuple[torch.Tensor, dict]:
    """`mean(-log sigmoid(chosen - rejected))` over pairs (`chosen`, `rejected`: `(P,)`), and the
    metrics `accuracy` (share of chosen > rejected), `margin`, `chosen_reward` and `rejected_reward` (means).

    >>> loss, m = pairwise_logistic(torch.tensor([1.0]), torch.tensor([1.0]))
    >>> round(loss.item(), 4), m["accuracy"].item()
    (0.6931, 0.0)
    """
    return -F.logsigmoid(chosen - rejected).mean(), _pair_metrics(chosen, rejected)


def make_bradley_terry_loss() -> SequenceLossFn:
    """The Bradley-Terry loss over pairwise comparisons, each sequence scored by its log-probability
    `s = sum_t lp_t`: `mean_i -log sigmoid(s_chosen_i - s_rejected_i)`. Metrics as in `pairwise_logistic`.

    >>> fn = make_bradley_terry_loss()
    >>> loss, m = fn({}, [torch.tensor([-1.0, -1.0]), torch.tensor([-3.0])])
    >>> round(loss.item(), 4), m["margin"].item()
    (0.3133, 1.0)
    """
    def bradley_terry(batch: Mapping, logprobs: list[torch.Tensor]) -> tuple[torch.Tensor, dict]:
        return pairwise_logistic(*_pairs(sequence_totals(logprobs)))
    return bradley_terry


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta!r}")


def make_dpo_loss(beta: float = 0.1, kind: str = "sigmoid") -> SequenceLossFn:
    """Direct Preference Optimisation (Rafailov et al., 2023) and two variants on the margin
    `h_i = (c_i - c_ref_i) - (r_i - r_ref_i)`, `c`, `r` the chosen and rejected sequences'
    log-probabilities under the model, `c_ref`, `r_ref` under a frozen reference model:
    `kind="sigmoid"` (DPO) `mean_i -log sigmoid(beta h_i)`; `kind="ipo"` (Azar et al., 2023;
    torchtune's `IPOLoss(tau=beta)`; TRL's IPO averages where this sums) `mean_i (h_i - 1/(2 beta))^2`;
    `kind="hinge"` (SLiC / RSO, torchtune's `RSOLoss(gamma=beta)`) `mean_i relu(1 - beta h_i)`.

    `batch["ref_logprobs"]`: one tensor `(T_i,)` a sequence, or `(B,)` totals. Metrics as in
    `pairwise_logistic`, the rewards being `beta (log p - log p_ref)`.

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
        chosen, rejected = _pairs(policy - ref.to(policy.dtype))   # log p - log p_ref
        h = chosen - rejected
        if kind == "sigmoid":
            losses = -F.logsigmoid(beta * h)
        elif kind == "ipo":
            losses = (h - 1 / (2 * beta)) ** 2
        else:
            losses = F.relu(1 - beta * h)
        return losses.mean(), _pair_metrics(beta * chosen, beta * rejected)
    return dpo


def make_simpo_loss(beta: float = 2.0, gamma_beta_ratio: float = 0.25) -> SequenceLossFn:
    """SimPO (Meng et al., 2024), without a reference model: each sequence scored by its mean target
    log-probability `s = (sum_t lp_t) / T_i` (at least one target each), and
    `loss = mean_i -log sigmoid(beta (s_chosen_i - s_rejected_i - gamma_beta_ratio))` (torchtune's
    `SimPOLoss(beta, gamma)` is `make_simpo_loss(beta, gamma / beta)`). Metrics as in
    `pairwise_logistic`, the rewards being `beta s`.

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
        chosen, rejected = _pairs(totals / lengths)
        loss = -F.logsigmoid(beta * (chosen - rejected - gamma_beta_ratio)).mean()
        return loss, _pair_metrics(beta * chosen, beta * rejected)
    return simpo
