"""Properties of the plug-in losses, checked with hypothesis: scaling weights, permuting tokens,
the key-token loss without key tokens, chunking, and exact normalisation over micro-batches."""

import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn.losses import (importance_weighted_cross_entropy, key_token_weighted_loss, policy_gradient_loss, token_logprobs,
                              weighted_cross_entropy)

IGNORE = -100
V = 5
KINDS = ["importance_sampling", "ppo", "cispo", "dro"]
SETTINGS = settings(max_examples=25, deadline=None)


def close(a, b, tol=1e-9):
    return torch.allclose(a, b, atol=tol, rtol=tol)


@st.composite
def token_batches(draw, min_n=1, max_n=12):
    """float64 logits (N, V), targets (N,) with some ignored, positive-sum weights, importance
    weights, sampler logprobs and advantages."""
    n = draw(st.integers(min_n, max_n))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(n, V, generator=g, dtype=torch.float64)
    targets = torch.randint(0, V, (n,), generator=g)
    targets[torch.rand(n, generator=g) < 0.2] = IGNORE
    targets[0] = int(targets[0].clamp(min=0))  # at least one token counts
    weights = torch.tensor(draw(st.lists(st.one_of(st.just(0.0), st.floats(0.01, 10.0)), min_size=n, max_size=n)),
                           dtype=torch.float64)
    weights[0] = weights[0] + 0.5  # a positive sum
    extra = torch.randn(3, n, generator=g, dtype=torch.float64)
    return logits, targets, weights, 2 * extra[0], -1.5 + 0.5 * extra[1], extra[2]


def all_losses(logits, targets, weights, iw, q, adv):
    """Every token loss's value on one batch, by name."""
    out = {"wce": weighted_cross_entropy(logits, targets, weights),
           "wce_sum": weighted_cross_entropy(logits, targets, weights, "sum"),
           "is": importance_weighted_cross_entropy(logits, targets, weights, iw),
           "is_clip": importance_weighted_cross_entropy(logits, targets, weights, iw, clip_ratio=1.0)}
    for kind in KINDS:
        out[kind] = policy_gradient_loss(logits, targets, q, adv, kind)
    return out


@SETTINGS
@given(token_batches(), st.floats(1e-3, 1e3))
def test_scaling_all_weights_leaves_weight_mean_losses_unchanged(batch, scale):
    logits, targets, weights, iw, _, _ = batch
    assert close(weighted_cross_entropy(logits, targets, weights * scale),
                 weighted_cross_entropy(logits, targets, weights))
    assert close(importance_weighted_cross_entropy(logits, targets, weights * scale, iw, 1.5),
                 importance_weighted_cross_entropy(logits, targets, weights, iw, 1.5))


@SETTINGS
@given(token_batches(), st.randoms(use_true_random=False))
def test_permuting_tokens_leaves_every_loss_unchanged(batch, rnd):
    perm = list(range(len(batch[1])))
    rnd.shuffle(perm)
    before = all_losses(*batch)
    after = all_losses(*(x[perm] for x in batch))
    for name in before:
        assert close(before[name], after[name]), name


@st.composite
def sequences(draw, max_b=5, max_t=7):
    """logits (B, T, V), input_ids (B, T) and a right-padding attention mask."""
    b, t = draw(st.integers(1, max_b)), draw(st.integers(2, max_t))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    lengths = torch.tensor(draw(st.lists(st.integers(2, t), min_size=b, max_size=b)))
    mask = (torch.arange(t)[None] < lengths[:, None]).long()
    return (torch.randn(b, t, V, generator=g, dtype=torch.float64), torch.randint(0, V, (b, t), generator=g), mask)


@SETTINGS
@given(sequences(), st.randoms(use_true_random=False), st.floats(0.1, 5.0))
def test_permuting_samples_leaves_the_key_token_loss_unchanged(seq, rnd, alpha):
    logits, ids, mask = seq
    perm = list(range(ids.shape[0]))
    rnd.shuffle(perm)
    a = key_token_weighted_loss(logits, ids, [1, 2], alpha, mask)
    b = key_token_weighted_loss(logits[perm], ids[perm], [1, 2], alpha, mask[perm])
    assert close(a, b)


@SETTINGS
@given(sequences(), st.floats(0.1, 5.0))
def test_key_token_loss_without_key_tokens_is_alpha_times_the_mean_per_sample_loss(seq, alpha):
    logits, ids, mask = seq
    ids = ids.clamp(max=V - 2)  # the key token V - 1 never occurs
    per_sample = [F.cross_entropy(logits[b, :-1][mask[b, 1:].bool()], ids[b, 1:][mask[b, 1:].bool()])
                  for b in range(ids.shape[0])]
    out = key_token_weighted_loss(logits, ids, [V - 1], alpha, mask)
    assert close(out, alpha * torch.stack(per_sample).mean())
    assert abs(out.metrics["mean_sample_weight"].item() - alpha) < 1e-12


@SETTINGS
@given(token_batches(), st.integers(1, 12))
def test_chunk_size_does_not_change_token_logprobs(batch, chunk):
    logits, targets = batch[0].clone().requires_grad_(), batch[1]
    whole, chunked = token_logprobs(logits, targets), token_logprobs(logits, targets, chunk_rows=chunk)
    assert torch.equal(whole, chunked)
    w = torch.linspace(0.5, 2, len(targets), dtype=torch.float64)
    (g1,) = torch.autograd.grad((whole * w).sum(), logits)
    (g2,) = torch.autograd.grad((chunked * w).sum(), logits)
    assert close(g1, g2, 1e-12)


def split_points(draw, n):
    cuts = sorted(set(draw(st.lists(st.integers(1, n - 1), max_size=3)))) if n > 1 else []
    return list(zip([0, *cuts], [*cuts, n]))


@settings(max_examples=25, deadline=None)
@given(token_batches(min_n=2), st.data())
def test_micro_batch_totals_and_denominators_give_the_whole_batch_gradient(batch, data):
    logits, targets, weights, iw, q, adv = batch
    pieces = split_points(data.draw, len(targets))

    def grad(loss):
        x = logits.clone().requires_grad_()
        return torch.autograd.grad(loss(x), x)[0]

    def whole_and_split(f, sum_form=False):
        whole = grad(lambda x: f(x, slice(None)))
        if sum_form:  # a sum-reduced loss: micro-batch losses add up
            split = grad(lambda x: sum(f(x, slice(a, b)) for a, b in pieces))
        else:  # a loss with a denominator: sum of totals over sum of denominators
            split = grad(lambda x: sum(f(x, slice(a, b)).total for a, b in pieces)
                         / sum(f(x, slice(a, b)).denominator for a, b in pieces))
        return whole, split

    def wce(x, s):
        return weighted_cross_entropy(x[s], targets[s], weights[s])

    def is_(x, s):
        return importance_weighted_cross_entropy(x[s], targets[s], weights[s], iw[s], 1.5)

    for f in (wce, is_):
        whole, split = whole_and_split(f)
        assert close(whole, split), f.__name__
    for kind in KINDS:
        whole, split = whole_and_split(lambda x, s: policy_gradient_loss(x[s], targets[s], q[s], adv[s], kind), True)
        assert close(whole, split), kind


@settings(max_examples=25, deadline=None)
@given(sequences(max_b=6), st.data())
def test_key_token_micro_batches_give_the_whole_batch_gradient(seq, data):
    logits, ids, mask = seq
    pieces = split_points(data.draw, ids.shape[0])
    x1, x2 = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    whole = key_token_weighted_loss(x1, ids, [1], 2.0, mask)
    parts = [key_token_weighted_loss(x2[a:b], ids[a:b], [1], 2.0, mask[a:b]) for a, b in pieces]
    split = sum(p.total for p in parts) / sum(p.denominator for p in parts)
    assert close(whole, split)
    assert close(torch.autograd.grad(whole, x1)[0], torch.autograd.grad(split, x2)[0])
