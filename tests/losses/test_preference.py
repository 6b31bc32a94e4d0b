"""The preference losses over sequence log-probabilities: make_dpo_loss (its sigmoid, ipo and hinge kinds)
and make_simpo_loss, against the values published in torchtune's tests, against hand formulas in float64
(values, metrics and gradients), their errors."""

import warnings

import pytest
import torch

import minilearn.losses as losses
from minilearn.exceptions import MissingInputError
from minilearn.losses import make_dpo_loss, make_simpo_loss

TOL = 1e-12
KINDS = ["sigmoid", "ipo", "hinge"]


def interleave(chosen: list[torch.Tensor], rejected: list[torch.Tensor]) -> list[torch.Tensor]:
    """The batch layout of the preference losses: sequence 2i chosen, 2i+1 rejected."""
    return [seq for pair in zip(chosen, rejected) for seq in pair]


def spread(total: float, n: int, mean: bool = False) -> torch.Tensor:
    """A sequence of n unequal float32 log-probabilities whose sum (or, with mean=True, mean) is
    `total`, so that a test sees whether a loss sums or averages."""
    offsets = torch.linspace(-0.3, 0.3, n) if n > 1 else torch.zeros(1)
    return (total / (1 if mean else n)) + offsets - offsets.mean()


# ---- published values: torchtune's tests --------------------------------------------------------
# pytorch/torchtune, tests/torchtune/rlhf/loss/test_dpo_loss.py (DPOLoss, RSOLoss, SimPOLoss; the same
# in tests/torchtune/modules/rlhf/loss/test_dpo_loss.py before the move), and, for IPOLoss, that file at
# commit f5e0e68f7efc37e43926887e2b199c7c2798e372 (the IPO test went with IPOLoss in 22456bb7, "remove
# ipo loss"). Their fixed inputs, per pair (torchtune's losses return one loss a pair; ours the mean, so
# each pair is run alone and then all together), their tolerance atol=1e-4, rtol=1e-5, in float32.
TT_POLICY_CHOSEN = [-0.5, -10.0, -1.0]
TT_POLICY_REJECTED = [-0.1, -30.0, -21.0]
TT_REF_CHOSEN = [-0.5, -10.1, -0.1]
TT_REF_REJECTED = [-0.1, -20.1, -0.1]
# Their expected losses, as their test writes them.
TT_DPO = -(1 / (1 + torch.exp(torch.tensor([0.0, -1.0, -2.0])))).log()          # DPOLoss(beta=0.1)
TT_RSO = torch.tensor([1.0, 0.0, 0.0])                                           # RSOLoss(gamma=0.1)
TT_IPO = torch.tensor([25.0, 25.0, 225.0])                                       # IPOLoss(tau=0.1)
TT_SIMPO = -(1 / (1 + torch.exp(torch.tensor([1.3, -39.5, -39.5])))).log()      # SimPOLoss(beta=2, gamma=0.5)


def torchtune_dpo_batch(i: int) -> tuple[dict, list[torch.Tensor]]:
    """torchtune's pair i as our batch: the policy's scores spread over 1, 2, 3 tokens, the reference as
    a (2,) tensor of sequence totals."""
    lps = [spread(TT_POLICY_CHOSEN[i], i + 1), spread(TT_POLICY_REJECTED[i], 3 - i)]
    return {"ref_logprobs": torch.tensor([TT_REF_CHOSEN[i], TT_REF_REJECTED[i]])}, lps


def close(got: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(got, expected.to(got.dtype), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind, beta, expected", [
    ("sigmoid", 0.1, TT_DPO),   # DPOLoss(beta=0.1, label_smoothing=0.0)
    ("hinge", 0.1, TT_RSO),     # RSOLoss(gamma=0.1): gamma is our beta
    ("ipo", 0.1, TT_IPO),       # IPOLoss(tau=0.1): tau is our beta
])
def test_dpo_kinds_reproduce_torchtunes_published_losses(kind, beta, expected):
    fn = make_dpo_loss(beta, kind)
    for i in range(3):
        close(fn(*torchtune_dpo_batch(i))[0], expected[i])
    batches = [torchtune_dpo_batch(i) for i in range(3)]
    batch = {"ref_logprobs": torch.cat([b["ref_logprobs"] for b, _ in batches])}
    close(fn(batch, [lp for _, lps in batches for lp in lps])[0], expected.mean())


def test_simpo_reproduces_torchtunes_published_losses():
    # torchtune's SimPO test passes the same policy numbers as average log-probabilities; here they are
    # the means of sequences of 2, 3, 4 tokens (and 4, 1, 2), whose sums differ from them.
    # SimPOLoss(beta=2.0, gamma=0.5) is make_simpo_loss(beta=2.0, gamma_beta_ratio=0.5 / 2.0).
    fn = make_simpo_loss(beta=2.0, gamma_beta_ratio=0.5 / 2.0)
    chosen = [spread(v, n, mean=True) for v, n in zip(TT_POLICY_CHOSEN, (2, 3, 4))]
    rejected = [spread(v, n, mean=True) for v, n in zip(TT_POLICY_REJECTED, (4, 1, 2))]
    assert abs(chosen[1].sum().item() - 3 * TT_POLICY_CHOSEN[1]) < 1e-4   # the sums are not the averages
    for i in range(3):
        close(fn({}, [chosen[i], rejected[i]])[0], TT_SIMPO[i])
    close(fn({}, interleave(chosen, rejected))[0], TT_SIMPO.mean())


# ---- hand formulas in float64 --------------------------------------------------------------------
# Restated here with scalar operations, sharing nothing with minilearn.losses: each sequence's score
# summed (or averaged) token by token, sigmoid and relu from their definitions.

def hand_sum(lp: torch.Tensor) -> torch.Tensor:
    total = torch.zeros((), dtype=lp.dtype)
    for t in range(lp.shape[0]):
        total = total + lp[t]
    return total


def hand_dpo(lps: list[torch.Tensor], refs: list[torch.Tensor], beta: float, kind: str) -> tuple[torch.Tensor, dict]:
    """The DPO-family loss and metrics, by the definition, over pairs (2i, 2i+1)."""
    terms, chosen_rewards, rejected_rewards = [], [], []
    for i in range(0, len(lps), 2):
        c, r = hand_sum(lps[i]) - hand_sum(refs[i]), hand_sum(lps[i + 1]) - hand_sum(refs[i + 1])
        h = c - r
        if kind == "sigmoid":
            terms.append(-torch.log(1 / (1 + torch.exp(-beta * h))))
        elif kind == "ipo":
            terms.append((h - 1 / (2 * beta)) * (h - 1 / (2 * beta)))
        else:
            terms.append(torch.clamp(1 - beta * h, min=0.0))
        chosen_rewards.append(beta * c.item())
        rejected_rewards.append(beta * r.item())
    return sum(terms) / len(terms), hand_metrics(chosen_rewards, rejected_rewards)


def hand_simpo(lps: list[torch.Tensor], beta: float, ratio: float) -> tuple[torch.Tensor, dict]:
    """SimPO's loss and metrics, by the definition, over pairs (2i, 2i+1)."""
    terms, chosen_rewards, rejected_rewards = [], [], []
    for i in range(0, len(lps), 2):
        c, r = hand_sum(lps[i]) / lps[i].shape[0], hand_sum(lps[i + 1]) / lps[i + 1].shape[0]
        terms.append(-torch.log(1 / (1 + torch.exp(-beta * (c - r - ratio)))))
        chosen_rewards.append(beta * c.item())
        rejected_rewards.append(beta * r.item())
    return sum(terms) / len(terms), hand_metrics(chosen_rewards, rejected_rewards)


def hand_metrics(chosen: list[float], rejected: list[float]) -> dict:
    n = len(chosen)
    return {"accuracy": sum(c > r for c, r in zip(chosen, rejected)) / n,
            "margin": sum(c - r for c, r in zip(chosen, rejected)) / n,
            "chosen_reward": sum(chosen) / n, "rejected_reward": sum(rejected) / n}


def random_sequences(seed: int, n: int = 10, scale: float = 2.0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 6, (n,), generator=g).tolist()
    return [(-scale * torch.rand(k, generator=g, dtype=torch.float64)).requires_grad_() for k in lengths]


def assert_matches(got: tuple[torch.Tensor, dict], want: tuple[torch.Tensor, dict], lps: list[torch.Tensor]) -> None:
    (loss, metrics), (hand_loss, hand_m) = got, want
    assert abs(loss.item() - hand_loss.item()) < TOL, (loss.item(), hand_loss.item())
    assert set(metrics) == set(hand_m)
    for k, v in metrics.items():
        assert not v.requires_grad and abs(v.item() - hand_m[k]) < TOL, (k, v.item(), hand_m[k])
    # The gradient through autograd of each: every sequence's tokens get one.
    for a, b in zip(torch.autograd.grad(loss, lps, retain_graph=True), torch.autograd.grad(hand_loss, lps)):
        assert torch.allclose(a, b, atol=TOL, rtol=0), (a - b).abs().max()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("beta", [0.1, 0.7, 2.5])
def test_dpo_kinds_match_their_formulas_in_float64(kind, beta):
    lps, refs = random_sequences(seed=int(10 * beta)), [r.detach() for r in random_sequences(seed=int(10 * beta) + 1)]
    assert_matches(make_dpo_loss(beta, kind)({"ref_logprobs": refs}, lps), hand_dpo(lps, refs, beta, kind), lps)


def test_the_hinge_test_covers_both_sides_of_the_hinge():
    # With beta=0.7 and the inputs of the formula test, some pairs are past the margin (no gradient)
    # and some not, so the gradient comparison covers both pieces of relu.
    lps, refs = random_sequences(seed=7), [r.detach() for r in random_sequences(seed=8)]
    sums = [lp.sum().item() - r.sum().item() for lp, r in zip(lps, refs)]
    active = [1 - 0.7 * (sums[i] - sums[i + 1]) > 0 for i in range(0, len(sums), 2)]
    assert any(active) and not all(active)


@pytest.mark.parametrize("beta, ratio", [(2.0, 0.25), (0.5, 0.0), (10.0, 1.5)])
def test_simpo_matches_its_formula_in_float64(beta, ratio):
    lps = random_sequences(seed=int(beta * 10 + ratio * 100))
    assert_matches(make_simpo_loss(beta, ratio)({}, lps), hand_simpo(lps, beta, ratio), lps)


@pytest.mark.parametrize("kind", KINDS)
def test_dpo_kinds_pass_gradcheck(kind):
    lps, refs = random_sequences(seed=3, n=6), [r.detach() for r in random_sequences(seed=4, n=6)]
    # A (B,) tensor of totals is also a reference; gradcheck compares autograd with finite differences.
    ref_totals = torch.stack([r.sum() for r in refs])
    assert torch.autograd.gradcheck(lambda *x: make_dpo_loss(0.7, kind)({"ref_logprobs": ref_totals}, list(x))[0], lps)


def test_simpo_passes_gradcheck():
    lps = random_sequences(seed=5, n=6)
    assert torch.autograd.gradcheck(lambda *x: make_simpo_loss()({}, list(x))[0], lps)


def test_the_sigmoid_kind_is_the_default_and_equals_pairwise_logistic_of_the_rewards():
    lps, refs = random_sequences(seed=11), [r.detach() for r in random_sequences(seed=12)]
    beta = 0.3
    rewards = torch.stack([beta * (lp.sum() - r.sum()) for lp, r in zip(lps, refs)])
    expected = losses.pairwise_logistic(rewards[0::2], rewards[1::2])[0]
    assert abs(make_dpo_loss(beta)({"ref_logprobs": refs}, lps)[0].item() - expected.item()) < TOL


def test_simpo_needs_no_reference_and_ignores_one():
    lps = random_sequences(seed=13)
    with_ref = make_simpo_loss()({"ref_logprobs": [lp.detach() - 1 for lp in lps]}, lps)[0]
    assert with_ref.item() == make_simpo_loss()({}, lps)[0].item()


# ---- errors ---------------------------------------------------------------------------------------

def test_an_unknown_kind_is_refused_naming_the_kinds():
    with pytest.raises(ValueError, match=r"kind must be one of 'sigmoid', 'ipo', 'hinge'; got 'kto'"):
        make_dpo_loss(0.1, "kto")


@pytest.mark.parametrize("beta", [0.0, -0.5, float("nan")])
@pytest.mark.parametrize("build", [lambda b: make_dpo_loss(b), lambda b: make_dpo_loss(b, "ipo"), lambda b: make_simpo_loss(b)])
def test_beta_must_be_positive(build, beta):
    with pytest.raises(ValueError, match=r"beta must be > 0, got"):
        build(beta)


@pytest.mark.parametrize("fn, batch", [(make_dpo_loss(0.1, "hinge"), {"ref_logprobs": torch.zeros(3)}), (make_simpo_loss(), {})])
def test_an_odd_number_of_sequences_is_refused(fn, batch):
    lps = [torch.tensor([-1.0]), torch.tensor([-2.0]), torch.tensor([-3.0])]
    with pytest.raises(ValueError, match=r"logprobs has 3 sequences; a preference batch needs an even"):
        fn(batch, lps)


@pytest.mark.parametrize("kind", KINDS)
def test_dpo_without_a_reference_names_what_is_missing(kind):
    with pytest.raises(MissingInputError, match=r"make_dpo_loss.*needs reference log-probabilities.*ref_model=.*"
                                                r"'ref_logprobs'.*keys \['input_ids'\]"):
        make_dpo_loss(0.1, kind)({"input_ids": torch.zeros(2, 3)}, [torch.tensor([-1.0]), torch.tensor([-2.0])])


def test_dpo_refuses_a_reference_of_another_length():
    with pytest.raises(ValueError, match=r"ref_logprobs has 4 sequences but logprobs has 2"):
        make_dpo_loss()({"ref_logprobs": torch.zeros(4)}, [torch.tensor([-1.0]), torch.tensor([-2.0])])


def test_simpo_refuses_an_empty_sequence_and_a_tensor_of_totals():
    with pytest.raises(ValueError, match=r"make_simpo_loss.*at least one target.*sequences \[1\] have none"):
        make_simpo_loss()({}, [torch.tensor([-1.0]), torch.zeros(0)])
    with pytest.raises(TypeError, match=r"make_simpo_loss.*one tensor of log-probabilities a sequence"):
        make_simpo_loss()({}, torch.tensor([-1.0, -2.0]))


def test_the_new_names_do_not_warn():
    lps, refs = random_sequences(seed=23), [r.detach() for r in random_sequences(seed=24)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for kind in KINDS:
            make_dpo_loss(0.1, kind)({"ref_logprobs": refs}, lps)
        make_simpo_loss()({}, lps)
