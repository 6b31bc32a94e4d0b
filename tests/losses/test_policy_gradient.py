"""group_advantages, kl_penalty and PolicyGradientLoss's KL term and aggregations against independent
restatements in float64 (plain Python loops over sequences and tokens), their gradients, and errors."""

import math
import statistics

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn.losses import IGNORE_INDEX, PolicyGradientLoss, group_advantages, kl_penalty, policy_gradient_loss

KINDS = ("importance_sampling", "ppo", "cispo", "dro")
AGGREGATIONS = ("token_sum", "token_mean", "sequence_mean", "constant")


# ---- group advantages ----------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(2, 5), st.lists(st.floats(-10, 10), min_size=2, max_size=20), st.sampled_from(["std", "none"]))
def test_group_advantages_match_a_restatement(group_size, values, scale):
    n = len(values) // group_size * group_size
    if n == 0:
        return
    rewards = values[:n]
    got = group_advantages(torch.tensor(rewards, dtype=torch.float64), group_size, scale)
    expected = []
    for start in range(0, n, group_size):
        group = rewards[start:start + group_size]
        mean = statistics.fmean(group)
        for r in group:  # statistics.stdev divides by n - 1, as TRL's torch.std does
            expected.append((r - mean) / (statistics.stdev(group) + 1e-4) if scale == "std" else r - mean)
    torch.testing.assert_close(got, torch.tensor(expected, dtype=torch.float64), atol=1e-9, rtol=1e-9)
    assert got.shape == (n,) and got.dtype == torch.float64


def test_group_advantages_of_equal_rewards_are_zero_and_integers_are_read_as_floats():
    assert group_advantages(torch.tensor([3, 3, 1, 0]), 2).tolist() == pytest.approx([0, 0, 0.5 / (0.5 ** 0.5 + 1e-4), -0.5 / (0.5 ** 0.5 + 1e-4)], abs=1e-6)
    assert group_advantages(torch.tensor([3, 3, 1, 0]), 2).dtype == torch.float32


@pytest.mark.parametrize("args,message", [
    ((torch.ones(5), 2), "not a whole number of groups"),
    ((torch.ones(4), 1), "group_size >= 2"),
    ((torch.ones(2, 2), 2), "1-D tensor"),
    ((torch.tensor([1.0, float("nan")]), 2), "non-finite"),
    ((torch.ones(4), 2, "mean"), "scale must be"),
])
def test_group_advantages_errors_name_the_problem(args, message):
    with pytest.raises(ValueError, match=message):
        group_advantages(*args)


# ---- KL estimators -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["k1", "k2", "k3"])
def test_kl_estimators_match_their_formulas(kind):
    g = torch.Generator().manual_seed(0)
    lp, ref = -torch.rand(50, generator=g, dtype=torch.float64) * 3, -torch.rand(50, generator=g, dtype=torch.float64) * 3
    formula = {"k1": lambda a, b: a - b, "k2": lambda a, b: (a - b) ** 2 / 2,
               "k3": lambda a, b: math.exp(b - a) - (b - a) - 1}[kind]
    expected = torch.tensor([formula(a, b) for a, b in zip(lp.tolist(), ref.tolist())], dtype=torch.float64)
    torch.testing.assert_close(kl_penalty(lp, ref, kind), expected, atol=1e-12, rtol=0)


def test_k1_and_k3_are_unbiased_estimates_of_the_kl():
    # Their exact expectation over tokens drawn from the policy is KL(p || q), computed exactly
    # over a small vocabulary; k2 is biased, and k2, k3 are never negative.
    g = torch.Generator().manual_seed(1)
    p = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    q = torch.softmax(torch.randn(7, generator=g, dtype=torch.float64), 0)
    kl = (p * (p / q).log()).sum()
    for kind in ("k1", "k3"):
        torch.testing.assert_close((p * kl_penalty(p.log(), q.log(), kind)).sum(), kl, atol=1e-12, rtol=0)
    assert abs((p * kl_penalty(p.log(), q.log(), "k2")).sum() - kl) > 1e-3
    assert (kl_penalty(p.log(), q.log(), "k3") >= 0).all() and (kl_penalty(p.log(), q.log(), "k2") >= 0).all()


def test_kl_errors():
    with pytest.raises(ValueError, match="one shape"):
        kl_penalty(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="kind must be one of"):
        kl_penalty(torch.zeros(3), torch.zeros(3), "k4")


# ---- the policy-gradient loss with KL and aggregation ---------------------------------------------

def rollout_batch(B=4, T=6, V=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(B, T, V, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    lengths = [1, 3, 5, 2][:B]
    for b, n in enumerate(lengths):  # a prompt column, then n completion tokens, then padding
        targets[b, 0] = IGNORE_INDEX
        targets[b, 1 + n:] = IGNORE_INDEX
    q = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    adv = torch.randn(B, T, generator=g, dtype=torch.float64)
    ref = -torch.rand(B, T, generator=g, dtype=torch.float64) * 2
    return logits, targets, q, adv, ref


def restated(logits, targets, q, adv, ref, kind, aggregation, kl_coef, max_tokens=8, low=None, high=None, beta=0.1):
    """The loss written token by token, from the formulas of the docstrings."""
    low, high = (0.0, 4.0) if kind == "cispo" and low is None else (low or 0.8, high or 1.2)
    logp = torch.log_softmax(logits, -1)
    per_sequence, tokens = [], 0
    for b in range(targets.shape[0]):
        terms = []
        for t in range(targets.shape[1]):
            y = targets[b, t].item()
            if y == IGNORE_INDEX:
                continue
            lp = logp[b, t, y]
            r = torch.exp(lp - q[b, t])
            a = adv[b, t]
            if kind == "importance_sampling":
                o = r * a
            elif kind == "ppo":
                o = torch.minimum(r * a, r.clamp(low, high) * a)
            elif kind == "cispo":
                o = r.clamp(low, high).detach() * lp * a
            else:
                o = lp * a - beta / 2 * (lp - q[b, t]) ** 2
            if ref is not None:
                o = o - kl_coef * (torch.exp(ref[b, t] - lp) - (ref[b, t] - lp) - 1)
            terms.append(o)
        tokens += len(terms)
        per_sequence.append((sum(terms), len(terms)))
    total = sum(s for s, _ in per_sequence)
    if aggregation == "token_sum":
        return -total
    if aggregation == "token_mean":
        return -total / tokens
    if aggregation == "sequence_mean":
        return -sum(s / n for s, n in per_sequence) / len(per_sequence)
    return -total / (len(per_sequence) * max_tokens)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("with_ref", [False, True])
def test_loss_and_gradient_match_the_restatement(kind, aggregation, with_ref):
    logits, targets, q, adv, ref = rollout_batch()
    ref = ref if with_ref else None
    loss_fn = PolicyGradientLoss(kind, kl_coef=0.3 if with_ref else 0.0, aggregation=aggregation,
                                 max_tokens=8 if aggregation == "constant" else None)
    got = loss_fn(logits, targets, q, adv, ref)
    expected = restated(logits, targets, q, adv, ref, kind, aggregation, 0.3)
    torch.testing.assert_close(got.detach(), expected.detach(), atol=1e-12, rtol=0)
    (g_got,) = torch.autograd.grad(got, logits)
    (g_exp,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(g_got, g_exp, atol=1e-12, rtol=0)
    # The ratio's parts are what the step owner adds up over micro-batches and processes.
    if aggregation != "token_sum":
        counted = targets != IGNORE_INDEX
        denominator = {"token_mean": counted.sum(), "sequence_mean": 4, "constant": 4}[aggregation]
        assert got.denominator.item() == denominator
        torch.testing.assert_close(got.total / got.denominator, got.as_subclass(torch.Tensor))
    if with_ref:
        logp = torch.log_softmax(logits, -1).gather(-1, targets.clamp(min=0)[..., None])[..., 0]
        counted = targets != IGNORE_INDEX
        kl = (torch.exp(ref - logp) - (ref - logp) - 1)[counted].mean()
        torch.testing.assert_close(got.metrics["mean_kl"], kl.detach(), atol=1e-12, rtol=0)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_per_item_is_the_loss_of_each_sequence_alone(aggregation):
    logits, targets, q, adv, ref = rollout_batch()
    loss_fn = PolicyGradientLoss("ppo", kl_coef=0.2, aggregation=aggregation,
                                 max_tokens=8 if aggregation == "constant" else None)
    items = loss_fn.per_item(logits, targets, q, adv, ref)
    alone = [loss_fn(logits[b:b + 1], targets[b:b + 1], q[b:b + 1], adv[b:b + 1], ref[b:b + 1]) for b in range(4)]
    torch.testing.assert_close(items, torch.stack(alone).as_subclass(torch.Tensor), atol=1e-12, rtol=0)


def test_without_kl_the_reference_only_shows_in_the_metrics():
    logits, targets, q, adv, ref = rollout_batch()
    plain = policy_gradient_loss(logits, targets, q, adv, "ppo")
    watched = policy_gradient_loss(logits, targets, q, adv, "ppo", ref_logprobs=ref)
    assert plain.item() == watched.item() and "mean_kl" in watched.metrics and "mean_kl" not in plain.metrics


def test_prompt_positions_never_overflow_the_kl():
    logits, targets, q, adv, ref = rollout_batch()
    ref = torch.where(targets == IGNORE_INDEX, torch.tensor(-1e4, dtype=ref.dtype), ref)  # absurd where ignored
    loss = policy_gradient_loss(logits, targets, q, adv, "ppo", ref_logprobs=ref, kl_coef=1.0, aggregation="token_mean")
    assert torch.isfinite(loss) and torch.isfinite(torch.autograd.grad(loss, logits)[0]).all()


def test_gradcheck_through_the_kl_and_sequence_mean():
    logits, targets, q, adv, ref = rollout_batch(B=2, T=4, V=3)
    logits = logits.detach().requires_grad_()
    fn = lambda x: policy_gradient_loss(x, targets, q, adv, "ppo", ref_logprobs=ref, kl_coef=0.5,  # noqa: E731
                                        aggregation="sequence_mean").as_subclass(torch.Tensor)
    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(aggregation="mean"), ValueError, "aggregation must be one of"),
    (dict(aggregation="constant"), ValueError, "max_tokens"),
    (dict(max_tokens=4), ValueError, "only it takes one"),
    (dict(kl_kind="k9"), ValueError, "kl_kind"),
])
def test_bad_settings_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        PolicyGradientLoss("ppo", **kwargs)


def test_bad_inputs_are_named():
    logits, targets, q, adv, ref = rollout_batch()
    with pytest.raises(ValueError, match="kl_coef=0.1 needs the reference"):
        PolicyGradientLoss(kl_coef=0.1)(logits, targets, q, adv)
    with pytest.raises(ValueError, match=r"ref_logprobs of shape \(4, 5\)"):
        PolicyGradientLoss(kl_coef=0.1)(logits, targets, q, adv, ref[:, :5])
    with pytest.raises(ValueError, match=r"needs target_tokens of shape \(B, T\)"):
        PolicyGradientLoss(aggregation="sequence_mean")(logits[0], targets[0], q[0], adv[0])
