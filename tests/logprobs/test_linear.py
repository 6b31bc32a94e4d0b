"""linear_token_logprobs and LinearLogits against the naive `log_softmax(hidden @ weight.T + bias)`:
values and gradients of hidden, weight and bias in float64 (1e-10), float32 (1e-5) and bfloat16
(against float32), with ignore_index, multi-target and any tiling; gradcheck; every loss family
through LinearLogits; nothing of size (tokens, vocab) saved for the backward; bad inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, LinearLogits, PolicyGradientLoss,
                              WeightedCrossEntropy, linear_tile_shape, linear_token_logprobs, token_logprobs)

IGNORE = -100


def layer(n=13, d=6, v=17, dtype=torch.float64, seed=0, lead=()):
    """Hidden states `(*lead, n, d)`, weight `(v, d)` and bias `(v,)`, all requiring grad."""
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
                 for shape in ((*lead, n, d), (v, d), (v,)))


def targets(v, *shape, seed=0):
    t = torch.randint(0, v, shape, generator=torch.Generator().manual_seed(seed + 1))
    t.view(-1)[1] = IGNORE
    t.view(-1)[-1] = IGNORE
    return t


def naive(hidden, weight, bias, t):
    """The definition: log_softmax of the full logits, gathered at the targets, 0 where ignored."""
    logits = hidden @ weight.T + (0 if bias is None else bias)
    index = t.clamp(min=0) if t.ndim == logits.ndim else t.clamp(min=0).unsqueeze(-1)
    lp = torch.log_softmax(logits, -1).gather(-1, index).reshape(t.shape)
    return lp.masked_fill(t == IGNORE, 0.0)


def values_and_grads(lp, inputs, seed=5):
    """The values and the gradients of every input of a weighted sum of `lp` (a different weight on
    each position, so that every position's gradient is checked)."""
    w = torch.randn(lp.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(lp.dtype)
    return (lp.detach(), *torch.autograd.grad((lp * w).sum(), inputs))


def assert_close(got, expected, atol):
    for name, a, b in zip(("values", "hidden", "weight", "bias"), got, expected):
        assert a.dtype == b.dtype and a.shape == b.shape, (name, a.dtype, b.dtype, a.shape, b.shape)
        assert torch.allclose(a, b, atol=atol, rtol=0), (name, (a - b).abs().max().item())


# ---- exactness ------------------------------------------------------------------------------------

@pytest.mark.parametrize("lead,k", [((), None), ((), 3), ((2,), None), ((2,), 2)], ids=["N", "N_K", "B_T", "B_T_K"])
@pytest.mark.parametrize("chunk_size", [None, 4, (4, 5), (1, 1), (13, 17)])
def test_float64_values_and_gradients_match_the_naive_computation(lead, k, chunk_size):
    h, w, b = layer(lead=lead)
    t = targets(17, *lead, 13, *((k,) if k else ()))
    got = values_and_grads(linear_token_logprobs(h, w, t, b, chunk_size=chunk_size), (h, w, b))
    assert_close(got, values_and_grads(naive(h, w, b, t), (h, w, b)), 1e-10)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 9), v=st.integers(1, 12), k=st.integers(0, 3), rows=st.integers(1, 10),
       cols=st.integers(1, 13), bias=st.booleans(), seed=st.integers(0, 10_000))
def test_any_tiling_gives_the_naive_values_and_gradients(n, v, k, rows, cols, bias, seed):
    h, w, b = layer(n, 3, v, seed=seed)
    b = b if bias else None
    t = torch.randint(0, v, (n, k) if k else (n,), generator=torch.Generator().manual_seed(seed))
    t[torch.rand(t.shape, generator=torch.Generator().manual_seed(seed + 1)) < 0.3] = IGNORE
    inputs = (h, w) if b is None else (h, w, b)
    got = values_and_grads(linear_token_logprobs(h, w, t, b, chunk_size=(rows, cols)), inputs)
    assert_close(got, values_and_grads(naive(h, w, b, t), inputs), 1e-10)


def test_float32_matches_the_naive_computation_within_1e_5():
    h, w, b = layer(64, 16, 300, dtype=torch.float32)
    t = targets(300, 64, 2)
    got = values_and_grads(linear_token_logprobs(h, w, t, b, chunk_size=(16, 64)), (h, w, b))
    assert_close(got, values_and_grads(naive(h, w, b, t), (h, w, b)), 1e-5)


def test_bfloat16_inputs_are_computed_in_float32():
    """bf16 inputs give float32 log-probabilities equal, within float32 rounding (1e-5), to the
    float32 computation on the same (bf16-valued) inputs; the gradients come back in bf16 and differ
    from the float32 ones only by that final rounding (relative 2^-8, so 1e-2 at these sizes)."""
    h, w, b = layer(48, 16, 500, dtype=torch.bfloat16)
    t = targets(500, 48)
    lp = linear_token_logprobs(h, w, t, b, chunk_size=(16, 128))
    assert lp.dtype == torch.float32
    got = values_and_grads(lp, (h, w, b))
    h32, w32, b32 = (x.detach().float().requires_grad_() for x in (h, w, b))
    ref = values_and_grads(naive(h32, w32, b32, t), (h32, w32, b32))
    assert torch.allclose(got[0], ref[0], atol=1e-5, rtol=0)
    for a, r in zip(got[1:], ref[1:]):
        assert a.dtype == torch.bfloat16 and torch.allclose(a.float(), r, atol=1e-2, rtol=2 ** -7)


def test_bfloat16_hidden_with_a_float32_layer_under_autocast():
    """What a mixed-precision model hands over: bf16 hidden states, the float32 head. Autocast would
    run the products in bf16; they run in float32, like the naive computation on the float32 logits."""
    h, w, b = layer(32, 16, 200, dtype=torch.float32)
    hb = h.detach().bfloat16().requires_grad_()
    t = targets(200, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp = linear_token_logprobs(hb, w, t, b)
    got = values_and_grads(lp, (hb, w, b))
    h32 = hb.detach().float().requires_grad_()
    ref = values_and_grads(naive(h32, w, b, t), (h32, w, b))
    assert got[1].dtype == torch.bfloat16 and got[2].dtype == torch.float32
    assert_close(got[:1] + got[2:], ref[:1] + ref[2:], 1e-5)
    assert torch.allclose(got[1].float(), ref[1], atol=1e-2, rtol=2 ** -7)


def test_gradcheck():
    h, w, b = layer(5, 3, 7)
    t = torch.tensor([[1, 6], [0, IGNORE], [3, 3], [IGNORE, 2], [6, 0]])
    for chunk_size in (None, (2, 3)):
        assert torch.autograd.gradcheck(lambda h, w, b: linear_token_logprobs(h, w, t, b, chunk_size=chunk_size),
                                        (h, w, b))
    assert torch.autograd.gradcheck(lambda h, w: linear_token_logprobs(h, w, t[:, 0], chunk_size=(3, 4)), (h, w))


def test_only_the_inputs_that_need_a_gradient_get_one():
    h, w, b = layer()
    frozen = w.detach()  # a frozen output layer: only the hidden states are trained
    t = targets(17, 13)
    (g,) = torch.autograd.grad(linear_token_logprobs(h, frozen, t, b.detach()).sum(), h)
    (ref,) = torch.autograd.grad(naive(h, frozen, b.detach(), t).sum(), h)
    assert torch.allclose(g, ref, atol=1e-10, rtol=0)


def test_token_logprobs_takes_linear_logits_and_linear_logits_materialize():
    h, w, b = layer(lead=(2,))
    t = targets(17, 2, 13)
    logits = LinearLogits(h, w, b)
    assert logits.shape == (2, 13, 17) and logits.ndim == 3 and logits.dtype == torch.float64
    assert torch.equal(token_logprobs(logits, t), linear_token_logprobs(h, w, t, b))
    assert torch.allclose(logits.materialize(), h @ w.T + b, atol=1e-12, rtol=0)
    assert LinearLogits(h.bfloat16(), w.float()).dtype == torch.float32


# ---- every loss family through LinearLogits ------------------------------------------------------

@pytest.mark.parametrize("name", ["weighted_ce", "weighted_ce_sum_top_k", "importance_sampling", "ppo", "cispo",
                                  "dro", "key_token"])
def test_each_loss_gives_the_same_value_and_gradients_on_linear_logits(name):
    h, w, b = layer(6, 5, 11, lead=(3,))
    g = torch.Generator().manual_seed(3)
    t, t_k = targets(11, 3, 6), targets(11, 3, 6, 2)
    weights, q = torch.rand(3, 6, generator=g, dtype=torch.float64), -torch.rand(3, 6, generator=g, dtype=torch.float64)
    adv = torch.randn(3, 6, generator=g, dtype=torch.float64)
    loss, inputs = {
        "weighted_ce": (WeightedCrossEntropy(), (t, weights)),
        "weighted_ce_sum_top_k": (WeightedCrossEntropy("sum"), (t_k, torch.ones(3, 6, 2, dtype=torch.float64))),
        "importance_sampling": (ImportanceWeightedCrossEntropy(clip_ratio=1.5), (t, weights, 2 * weights)),
        "ppo": (PolicyGradientLoss("ppo"), (t, q, adv)),
        "cispo": (PolicyGradientLoss("cispo"), (t, q, adv)),
        "dro": (PolicyGradientLoss("dro"), (t, q, adv)),
        "key_token": (KeyTokenWeightedLoss([2, 5], alpha=0.5), (t.clamp(min=0), torch.ones(3, 6).tril())),
    }[name]
    fused = loss(LinearLogits(h, w, b), *inputs)
    plain = loss(h @ w.T + b, *inputs)
    assert_close(values_and_grads(fused, (h, w, b)), values_and_grads(plain, (h, w, b)), 1e-10)


# ---- memory ---------------------------------------------------------------------------------------

def test_nothing_of_the_size_of_the_logits_is_saved_for_the_backward():
    n, d, v = 512, 16, 2048
    h, w, b = layer(n, d, v, dtype=torch.float32)
    t = targets(v, n)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda x: saved.append(x.numel()) or x, lambda x: x):
        lp = linear_token_logprobs(h, w, t, b)
    assert max(saved) <= max(n * d, v * d) and sum(saved) < n * v // 8  # the inputs, targets and n logsumexps
    assert torch.isfinite(torch.autograd.grad(lp.sum(), h)[0]).all()


def test_the_tile_shape_follows_the_budget_and_can_be_set():
    assert linear_tile_shape(512, 128_256, budget=1 << 20) == (512, 2048)    # every token
    assert linear_tile_shape(4096, 128_256, budget=1 << 20) == (1024, 1024)  # the narrowest tile: fewer tokens
    assert linear_tile_shape(10, 1000, budget=1 << 20) == (10, 1000)         # all of it
    assert linear_tile_shape(4096, 1000, chunk_size=64, budget=1 << 20) == (64, 1000)
    assert linear_tile_shape(4096, 128_256, chunk_size=64, budget=1 << 20) == (64, 16384)
    for n in (1, 300, 5000, 10**6):
        for v in (2, 50_000, 300_000):
            rows, cols = linear_tile_shape(n, v)
            assert rows * cols <= 1 << 23 and (rows == n or cols <= 1024) and (cols == v or rows > 1)


# ---- bad inputs -----------------------------------------------------------------------------------

def test_bad_targets_get_the_errors_of_token_logprobs():
    h, w, _ = layer(4, 3, 6)
    with pytest.raises(ValueError, match=r"target_tokens holds the id 6, outside \[0, 6\) .* target_tokens shape "
                                         r"\(4,\), logits shape \(4, 6\)"):
        linear_token_logprobs(h, w, torch.tensor([0, 6, IGNORE, 1]))
    with pytest.raises(ValueError, match=r"target_tokens of shape \(5,\) does not line up with logits of shape \(4, 6\)"):
        linear_token_logprobs(h, w, torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError, match=r"target_tokens must hold integer token ids, got dtype torch.float32"):
        linear_token_logprobs(h, w, torch.zeros(4))


def test_a_layer_that_does_not_fit_the_hidden_states_is_refused():
    h, w, b = layer(4, 3, 6)
    with pytest.raises(ValueError, match=r"hidden of shape \(4, 3\) and weight of shape \(6, 5\) do not make logits: "
                                         r"expected hidden \(..., D\) and weight \(V, D\) with the same D"):
        LinearLogits(h, torch.zeros(6, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"bias of shape \(5,\) must be \(V,\) = \(6,\)"):
        linear_token_logprobs(h, w, torch.zeros(4, dtype=torch.long), bias=b[:5])
    with pytest.raises(TypeError, match=r"weight must be a floating-point tensor, got torch.int64"):
        LinearLogits(h, torch.zeros(6, 3, dtype=torch.long))
    with pytest.raises(ValueError, match=r"hidden, weight and bias must be on one device, got \['cpu', 'meta'\]"):
        LinearLogits(h, torch.zeros(6, 3, device="meta"))


def test_a_bad_chunk_size_is_refused():
    h, w, _ = layer(4, 3, 6)
    for bad in (0, (4, 0), (2.5, 3)):
        with pytest.raises(ValueError, match="chunk_size must be a positive number of tokens or a"):
            linear_token_logprobs(h, w, torch.zeros(4, dtype=torch.long), chunk_size=bad)


def test_logits_that_are_neither_a_tensor_nor_lazy_logits_are_refused():
    with pytest.raises(TypeError, match=r"logits must be a floating-point tensor \(or LazyLogits, such as "
                                        r"LinearLogits\), got list"):
        token_logprobs([[0.0, 1.0]], torch.tensor([0]))
