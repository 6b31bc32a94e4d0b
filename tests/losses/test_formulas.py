"""Each plug-in loss against an independent hand formula in float64 (values and gradients), against
F.cross_entropy where they coincide, and through torch.autograd.gradcheck.

The hand formulas loop over tokens with plain torch scalar ops; they share no code with
minilearn.losses (not even the log-softmax)."""

import math

import pytest
import torch
import torch.nn.functional as F

from minilearn import LossTensor
from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy,
                              importance_weighted_cross_entropy, key_token_weighted_loss, policy_gradient_loss,
                              shift_targets, token_logprobs, weighted_cross_entropy)

IGNORE = -100
TOL = 1e-10


def rand(*shape, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()


def ints(high, *shape, seed=0):
    return torch.randint(0, high, shape, generator=torch.Generator().manual_seed(seed + 100))


def hand_lp(row, t):
    """log p(t) for one row of logits, by the definition."""
    return row[t] - torch.log(sum(torch.exp(row[j]) for j in range(row.shape[0])))


def token_list(logits, targets):
    """[(row_logits, target, index_into_targets)] for every non-ignored target, by loops."""
    V = logits.shape[-1]
    rows = logits.reshape(-1, V)
    k = targets.numel() // rows.shape[0]
    flat_t = targets.reshape(rows.shape[0], k)
    return [(rows[r], int(flat_t[r, j]), r * k + j) for r in range(rows.shape[0]) for j in range(k)
            if int(flat_t[r, j]) != IGNORE]


def value_and_grad(loss, x):
    (g,) = torch.autograd.grad(loss, x, retain_graph=True)  # some tests compare one loss twice
    return loss.detach(), g


def assert_same(lib, hand, x):
    lv, lg = value_and_grad(lib, x)
    hv, hg = value_and_grad(hand, x)
    assert torch.allclose(lv, hv, atol=TOL, rtol=0), (lv, hv)
    assert torch.allclose(lg, hg, atol=TOL, rtol=0), (lg - hg).abs().max()


# ---- token_logprobs and shift_targets -------------------------------------------------------------

@pytest.mark.parametrize("shape,k", [((7,), None), ((2, 3), None), ((5,), 3), ((2, 2), 2)])
def test_token_logprobs_matches_the_definition(shape, k):
    V = 6
    x = rand(*shape, V)
    t = ints(V, *shape, *((k,) if k else ()))
    t.view(-1)[1] = IGNORE
    lp = token_logprobs(x, t, chunk_rows=2)
    assert lp.shape == t.shape and lp.dtype == torch.float64
    flat = lp.reshape(-1)
    expected = [(i, hand_lp(row, tt)) for row, tt, i in token_list(x, t)]
    for i, e in expected:
        assert abs(flat[i].item() - e.item()) < TOL
    assert flat[1].item() == 0.0  # the ignored position
    # a different weight on each position, so that the gradient of every one is checked
    assert_same((flat * (1.0 + torch.arange(flat.numel()))).sum(), sum((1.0 + i) * e for i, e in expected), x)


def test_token_logprobs_gradcheck_chunked_and_candidates():
    x = rand(5, 4)
    t1 = torch.tensor([0, 3, IGNORE, 1, 2])
    t2 = torch.tensor([[0, 1], [3, 3], [IGNORE, 2], [1, IGNORE], [2, 0]])
    for t in (t1, t2):
        for chunk in (None, 1, 2):
            assert torch.autograd.gradcheck(lambda x: token_logprobs(x, t, chunk_rows=chunk), (x,))


def test_ignored_positions_give_zero_and_no_gradient():
    x = rand(3, 5)
    t = torch.tensor([1, IGNORE, 4])
    lp = token_logprobs(x, t)
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert lp[1].item() == 0.0 and torch.all(g[1] == 0)


def test_shift_targets():
    ids = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4]])
    assert shift_targets(ids).tolist() == [[6, 7, 8, IGNORE], [2, 3, 4, IGNORE]]
    assert shift_targets(ids, ignore_index=0).tolist() == [[6, 7, 8, 0], [2, 3, 4, 0]]
    assert shift_targets(torch.tensor([9])).tolist() == [IGNORE]


# ---- WeightedCrossEntropy ------------------------------------------------------------------------

def hand_weighted_ce(x, t, w, reduction="weight_mean"):
    num = den = 0.0
    for row, tt, i in token_list(x, t):
        num = num + w.reshape(-1)[i] * hand_lp(row, tt)
        den = den + w.reshape(-1)[i]
    return -num if reduction == "sum" else -num / den


@pytest.mark.parametrize("lead,shape", [((6,), (6,)), ((6,), (6, 3)), ((2, 4), (2, 4))], ids=["N", "N_K", "B_T"])
@pytest.mark.parametrize("reduction", ["weight_mean", "sum"])
def test_weighted_cross_entropy_matches_the_hand_formula(lead, shape, reduction):
    V = 5
    x = rand(*lead, V)
    t = ints(V, *shape)
    t.view(-1)[2] = IGNORE
    w = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    out = WeightedCrossEntropy(reduction)(x, t, w)
    assert isinstance(out, LossTensor) and set(out.metrics) >= {"weight_sum", "zero_weight_batches"}
    if reduction == "weight_mean":
        # the parts: total is the sum form, denominator the weight sum over counted tokens
        assert abs(out.total.item() - hand_weighted_ce(x, t, w, "sum").item()) < TOL
        assert abs(out.denominator.item() - (w.reshape(-1).sum() - w.reshape(-1)[2]).item()) < TOL
    else:
        assert out.is_sum
    assert_same(out, hand_weighted_ce(x, t, w, reduction), x)


def test_uniform_weights_give_f_cross_entropy():
    x = rand(3, 4, 7)
    t = ints(7, 3, 4)
    t[0, 1] = t[2, 3] = IGNORE
    ones = torch.ones(3, 4, dtype=torch.float64)
    flat = (x.reshape(-1, 7), t.reshape(-1))
    assert_same(weighted_cross_entropy(x, t, 2.5 * ones), F.cross_entropy(*flat, ignore_index=IGNORE), x)
    assert_same(weighted_cross_entropy(x, t, ones, "sum"),
                F.cross_entropy(*flat, ignore_index=IGNORE, reduction="sum"), x)
    assert_same(importance_weighted_cross_entropy(x, t, ones, ones), F.cross_entropy(*flat, ignore_index=IGNORE), x)


def test_weighted_cross_entropy_gradcheck():
    x = rand(4, 5)
    t = torch.tensor([0, 4, IGNORE, 2])
    w = torch.tensor([0.5, 2.0, 1.0, 0.0], dtype=torch.float64)
    tk = torch.tensor([[0, 1], [4, 3], [IGNORE, 2], [2, 2]])
    assert torch.autograd.gradcheck(lambda x: weighted_cross_entropy(x, t, w), (x,))
    assert torch.autograd.gradcheck(lambda x: weighted_cross_entropy(x, tk, torch.ones(4, 2, dtype=torch.float64), "sum"), (x,))


# ---- ImportanceWeightedCrossEntropy ----------------------------------------------------------------------

def hand_importance_sampling(x, t, w, iw, clip):
    num = den = 0.0
    for row, tt, i in token_list(x, t):
        r = iw.reshape(-1)[i].item()
        if clip is not None:
            r = max(-clip, min(clip, r))
        num = num + w.reshape(-1)[i] * r * hand_lp(row, tt)
        den = den + w.reshape(-1)[i]
    return -num / den


@pytest.mark.parametrize("clip", [None, 1.5])
def test_importance_sampling_matches_the_hand_formula(clip):
    V = 6
    x = rand(2, 5, V)
    t = ints(V, 2, 5)
    t[1, 4] = IGNORE
    g = torch.Generator().manual_seed(7)
    w = torch.rand(2, 5, generator=g, dtype=torch.float64)
    iw = 4 * torch.randn(2, 5, generator=g, dtype=torch.float64)  # some beyond +-1.5 both ways
    out = ImportanceWeightedCrossEntropy(clip_ratio=clip)(x, t, w, iw)
    assert isinstance(out, LossTensor) and not out.is_sum
    assert_same(out, hand_importance_sampling(x, t, w, iw, clip), x)
    counted = t != IGNORE
    expected_clipped = ((iw.abs() > 1.5) & counted).sum().item() / counted.sum().item() if clip else 0.0
    assert abs(out.metrics["clip_fraction"].item() - float(expected_clipped)) < TOL


def test_importance_sampling_gradcheck():
    x = rand(4, 3)
    t = torch.tensor([2, 0, 1, IGNORE])
    w, iw = torch.rand(4, dtype=torch.float64), torch.tensor([0.5, 3.0, -2.0, 1.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: importance_weighted_cross_entropy(x, t, w, iw, clip_ratio=1.2), (x,))


# ---- PolicyGradientLoss --------------------------------------------------------------------------

def hand_policy_gradient(x, t, q, adv, kind, lo, hi, beta):
    total = 0.0
    for row, tt, i in token_list(x, t):
        lp, qi, a = hand_lp(row, tt), q.reshape(-1)[i], adv.reshape(-1)[i]
        r = torch.exp(lp - qi)
        clipped = torch.clamp(r, lo, hi)
        if kind == "importance_sampling":
            term = r * a
        elif kind == "ppo":
            term = r * a if (r * a).item() <= (clipped * a).item() else clipped * a
        elif kind == "cispo":
            term = clipped.detach() * lp * a
        else:
            term = lp * a - beta / 2 * (lp - qi) ** 2
        total = total - term
    return total


@pytest.mark.parametrize("kind", ["importance_sampling", "ppo", "cispo", "dro"])
def test_policy_gradient_matches_the_hand_formula(kind):
    V = 5
    x = rand(3, 4, V, scale=1.0)
    t = ints(V, 3, 4)
    t[0, 0] = t[2, 1] = IGNORE
    g = torch.Generator().manual_seed(11)
    # the sampler's logprobs: near the learner's, so ratios fall both inside and outside [0.8, 1.2]
    with torch.no_grad():
        q = torch.log_softmax(x, -1).gather(-1, t.clamp(min=0)[..., None])[..., 0] + 0.4 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    q[0, 0] = 50.0  # an ignored position's sampler logprob must not matter (exp would overflow)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    loss = PolicyGradientLoss(kind, clip_low_threshold=0.8, clip_high_threshold=1.2, beta=0.3)(x, t, q, adv)
    assert isinstance(loss, LossTensor) and loss.is_sum
    metrics = loss.metrics
    assert_same(loss, hand_policy_gradient(x, t, q, adv, kind, 0.8, 1.2, 0.3), x)
    counted = t != IGNORE
    with torch.no_grad():
        r = torch.exp(torch.log_softmax(x, -1).gather(-1, t.clamp(min=0)[..., None])[..., 0] - q)[counted]
    assert abs(metrics["mean_ratio"].item() - r.mean().item()) < TOL
    assert abs(metrics["clip_fraction"].item() - ((r < 0.8) | (r > 1.2)).double().mean().item()) < TOL
    assert 0 < metrics["clip_fraction"].item() < 1
    assert abs(metrics["mean_advantage"].item() - adv[counted].mean().item()) < TOL


@pytest.mark.parametrize("kind", ["importance_sampling", "ppo", "cispo", "dro"])
def test_policy_gradient_gradcheck(kind):
    x = rand(4, 3, scale=0.5)
    t = torch.tensor([2, 0, 1, IGNORE])
    q = torch.tensor([-1.0, -1.3, -0.9, 0.0], dtype=torch.float64)
    if kind == "cispo":
        # gradcheck differentiates numerically through the stop-gradient too, so it can only check
        # CISPO where every ratio is clipped (the stopped factor is then constant): with its default
        # one-sided clip, ratios above 4
        q = torch.tensor([-4.0, -4.0, -4.0, 0.0], dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 2.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: policy_gradient_loss(x, t, q, adv, kind, beta=0.2), (x,))


# ---- KeyTokenWeightedLoss ------------------------------------------------------------------------

def course_keytoken_weighted_loss(inputs, logits, keytoken_ids, alpha=1.0):
    """The function of the Hugging Face course, chapter 7, as printed there."""
    shift_labels = inputs[..., 1:].contiguous()
    shift_logits = logits[..., :-1, :].contiguous()
    loss = F.cross_entropy(shift_logits.view(-1, shift_logits.size(-1)), shift_labels.view(-1), reduction="none")
    loss_per_sample = loss.view(shift_logits.size(0), shift_logits.size(1)).mean(axis=1)
    weights = torch.stack([(inputs == kt).float() for kt in keytoken_ids]).sum(axis=[0, 2])
    weights = alpha * (1.0 + weights)
    return (loss_per_sample * weights).mean()


def hand_keytoken(x, ids, mask, key, alpha):
    """By loops, with padding: targets t+1 where mask[t+1]; key tokens counted where mask."""
    per_sample = []
    for b in range(ids.shape[0]):
        ce = [-hand_lp(x[b, t], int(ids[b, t + 1])) for t in range(ids.shape[1] - 1) if mask[b, t + 1]]
        if not ce:
            continue
        n_key = sum(1 for t in range(ids.shape[1]) if mask[b, t] and int(ids[b, t]) in key)
        per_sample.append(alpha * (1 + n_key) * sum(ce) / len(ce))
    return sum(per_sample) / len(per_sample)


def test_key_token_loss_is_the_course_loss_without_padding():
    V, key = 8, [3, 5]
    x = rand(3, 6, V)
    ids = ints(V, 3, 6)
    ids[0, 2] = ids[1, 0] = ids[1, 4] = 3
    # alpha exact in float32: the course's weights are float32 (`.float()`)
    loss = KeyTokenWeightedLoss(key, alpha=0.75)(x, ids)
    assert isinstance(loss, LossTensor) and loss.denominator.item() == 3
    assert_same(loss, course_keytoken_weighted_loss(ids, x, key, alpha=0.75), x)
    assert_same(loss, hand_keytoken(x, ids, torch.ones_like(ids), key, 0.75), x)


def test_key_token_loss_excludes_padding_by_attention_mask_or_pad_token_id():
    V, key, pad = 8, [3], 0
    x = rand(3, 6, V)
    ids = ints(V - 1, 3, 6) + 1  # no pad id among the real tokens
    ids[0, 1] = ids[2, 0] = 3
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
    # a pad position holding a key token must not count
    ids[0, 5] = 3
    expected = hand_keytoken(x, ids, mask, key, 1.5)
    assert_same(key_token_weighted_loss(x, ids, key, 1.5, attention_mask=mask), expected, x)
    padded = torch.where(mask.bool(), ids, pad)
    assert_same(KeyTokenWeightedLoss(key, alpha=1.5, pad_token_id=pad)(x, padded),
                hand_keytoken(x, padded, mask, key, 1.5), x)


def test_key_token_sample_without_targets_counts_in_neither_sum():
    x = rand(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4], [1, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 0, 0, 0]])
    out = key_token_weighted_loss(x, ids, [2], attention_mask=mask)
    assert out.denominator.item() == 1
    assert_same(out, hand_keytoken(x, ids, mask, [2], 1.0), x)
    assert out.metrics["mean_sample_weight"].item() == 2.0


def test_key_token_gradcheck():
    x = rand(2, 4, 5)
    ids = torch.tensor([[1, 2, 3, 4], [2, 2, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    assert torch.autograd.gradcheck(lambda x: key_token_weighted_loss(x, ids, [2], 2.0, mask), (x,))


def test_key_token_uniform_lengths_no_key_tokens_give_f_cross_entropy():
    x = rand(2, 5, 6)
    ids = ints(5, 2, 5)
    flat = (x[:, :-1].reshape(-1, 6), ids[:, 1:].reshape(-1))
    assert_same(key_token_weighted_loss(x, ids, [5]), F.cross_entropy(*flat), x)
    assert math.isclose(key_token_weighted_loss(x, ids, [5], alpha=3.0).metrics["mean_sample_weight"].item(), 3.0)
