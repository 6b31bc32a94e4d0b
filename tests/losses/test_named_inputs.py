"""Bad inputs to the plug-in losses raise clear errors (one test each); a batch whose weights sum to
zero gives a zero loss with zero gradient; log-probabilities are float32 under bf16/half logits and
float64 stays float64; no float32 copy of the whole log-softmax is kept for the backward."""

import pytest
import torch

from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy,
                              importance_weighted_cross_entropy, key_token_weighted_loss, policy_gradient_loss, token_logprobs,
                              weighted_cross_entropy)

IGNORE = -100


def logits(*shape, dtype=torch.float32, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype, requires_grad=True)


# ---- one test a bad input ---------------------------------------------------------------------

def test_non_integer_targets_are_refused():
    with pytest.raises(TypeError, match=r"target_tokens must hold integer token ids, got dtype torch.float32; "
                                        r"target_tokens shape \(4,\), logits shape \(4, 6\)"):
        weighted_cross_entropy(logits(4, 6), torch.tensor([0.0, 1.0, 2.0, 3.0]), torch.ones(4))


def test_targets_that_do_not_line_up_with_the_logits_are_refused():
    with pytest.raises(ValueError, match=r"target_tokens of shape \(2, 5\) does not line up with logits of shape "
                                         r"\(2, 4, 6\): expected target_tokens of shape \(2, 4\) .* or \(2, 4, 'K'\)"):
        token_logprobs(logits(2, 4, 6), torch.zeros(2, 5, dtype=torch.long))


def test_weights_of_another_shape_than_the_targets_are_refused():
    with pytest.raises(ValueError, match=r"weights of shape \(4, 1\) must have the shape of target_tokens, \(4,\)"):
        WeightedCrossEntropy()(logits(4, 6), torch.tensor([0, 1, 2, 3]), torch.ones(4, 1))


def test_a_target_id_outside_the_vocabulary_is_refused_before_gather():
    with pytest.raises(ValueError, match=r"target_tokens holds the id 6, outside \[0, 6\) .* ignore_index=-100 .*"
                                         r"target_tokens shape \(3,\), logits shape \(3, 6\)"):
        token_logprobs(logits(3, 6), torch.tensor([0, 6, IGNORE]))
    with pytest.raises(ValueError, match="holds the id -1"):
        token_logprobs(logits(3, 6), torch.tensor([0, -1, 2]))


def test_non_finite_weights_are_refused():
    for bad in (float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"weights holds 1 non-finite value\(s\) \(inf or NaN\) of 3; weights "
                                             r"shape \(3,\), target_tokens shape \(3,\)"):
            weighted_cross_entropy(logits(3, 6), torch.tensor([0, 1, 2]), torch.tensor([1.0, bad, 1.0]))


def test_other_per_token_inputs_are_checked_under_their_own_names():
    x, t, ones = logits(3, 6), torch.tensor([0, 1, 2]), torch.ones(3)
    with pytest.raises(ValueError, match=r"importance_weights of shape \(2,\)"):
        importance_weighted_cross_entropy(x, t, ones, torch.ones(2))
    with pytest.raises(ValueError, match=r"importance_weights holds 1 non-finite"):
        ImportanceWeightedCrossEntropy()(x, t, ones, torch.tensor([1.0, float("inf"), 1.0]))
    with pytest.raises(ValueError, match=r"logprobs of shape \(3, 1\)"):
        policy_gradient_loss(x, t, torch.zeros(3, 1), ones)
    with pytest.raises(ValueError, match=r"advantages holds 1 non-finite"):
        PolicyGradientLoss("ppo")(x, t, torch.zeros(3), torch.tensor([1.0, float("nan"), 1.0]))


def test_key_token_loss_names_input_ids_and_attention_mask():
    with pytest.raises(TypeError, match=r"input_ids must hold integer token ids, got dtype torch.float32"):
        key_token_weighted_loss(logits(2, 3, 6), torch.zeros(2, 3), [1])
    with pytest.raises(ValueError, match=r"input_ids holds the id 9, outside \[0, 6\)"):
        KeyTokenWeightedLoss([1])(logits(1, 3, 6), torch.tensor([[1, 9, 2]]))
    with pytest.raises(ValueError, match=r"attention_mask of shape \(2, 2\) must have the shape of input_ids, \(2, 3\)"):
        key_token_weighted_loss(logits(2, 3, 6), torch.zeros(2, 3, dtype=torch.long), [1], attention_mask=torch.ones(2, 2))
    with pytest.raises(TypeError, match="keytoken_ids must be a sequence of integer token ids"):
        KeyTokenWeightedLoss([1.5])


def test_bad_settings_are_refused_at_construction():
    with pytest.raises(ValueError, match=r"reduction must be one of \('weight_mean', 'sum'\), got 'mean'"):
        WeightedCrossEntropy("mean")
    with pytest.raises(ValueError, match=r"kind must be one of .* got 'grpo'"):
        PolicyGradientLoss("grpo")
    with pytest.raises(ValueError, match="clip_low_threshold <= clip_high_threshold"):
        PolicyGradientLoss("ppo", clip_low_threshold=1.2, clip_high_threshold=0.8)
    with pytest.raises(ValueError, match="clip_low_threshold <= clip_high_threshold"):
        PolicyGradientLoss("cispo", clip_high_threshold=-1.0)
    with pytest.raises(ValueError, match="clip_ratio must be a positive number or None, got -1"):
        ImportanceWeightedCrossEntropy(clip_ratio=-1)


def test_zero_sum_weights_give_zero_loss_zero_gradient_and_say_so():
    x, t = logits(4, 6), torch.tensor([0, 1, IGNORE, 3])
    w = torch.tensor([0.0, 0.0, 5.0, 0.0])  # the only non-zero weight sits on an ignored position
    for out in (weighted_cross_entropy(x, t, w), importance_weighted_cross_entropy(x, t, w, torch.full((4,), 2.0))):
        (g,) = torch.autograd.grad(out, x)
        assert out.item() == 0.0 and torch.all(g == 0) and not torch.isnan(g).any()
        assert out.metrics["zero_weight_batches"].item() == 1.0 and out.metrics["weight_sum"].item() == 0.0
    loss = weighted_cross_entropy(x, t, w, "sum")
    assert loss.item() == 0.0 and loss.metrics["zero_weight_batches"].item() == 1.0
    assert weighted_cross_entropy(x, t, torch.ones(4)).metrics["zero_weight_batches"].item() == 0.0


def test_all_ignored_tokens_give_zero_and_no_nan_in_any_loss():
    x, t, z = logits(2, 6), torch.tensor([IGNORE, IGNORE]), torch.zeros(2)
    losses = [weighted_cross_entropy(x, t, z + 1), importance_weighted_cross_entropy(x, t, z + 1, z + 1),
              *(policy_gradient_loss(x, t, z, z + 1, kind) for kind in ("importance_sampling", "ppo", "cispo", "dro")),
              key_token_weighted_loss(logits(1, 2, 6), torch.tensor([[1, 2]]), [1],
                                      attention_mask=torch.tensor([[1, 0]]))]
    for loss in losses:
        assert loss.item() == 0.0


# ---- precision -------------------------------------------------------------------------------------

@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_logits_give_float32_logprobs(half):
    x = logits(64, 1000).detach().to(half)
    t = torch.randint(0, 1000, (64,), generator=torch.Generator().manual_seed(1))
    lp = token_logprobs(x, t)
    assert lp.dtype == torch.float32
    # the same values computed in float32 from the upcast logits: only float32 rounding differs
    ref = torch.log_softmax(x.float(), -1).gather(-1, t[:, None])[:, 0]
    assert torch.allclose(lp, ref, atol=1e-5, rtol=0)
    x.requires_grad_()
    (g,) = torch.autograd.grad(token_logprobs(x, t).sum(), x)
    assert g.dtype == half
    xf = x.detach().float().requires_grad_()
    (gf,) = torch.autograd.grad(torch.log_softmax(xf, -1).gather(-1, t[:, None]).sum(), xf)
    assert torch.allclose(g.float(), gf, atol=1e-2, rtol=0)  # only the cast of the gradient to half differs
    loss = weighted_cross_entropy(x, t, torch.ones(64))
    assert loss.dtype == torch.float32


def test_float64_stays_float64():
    x = logits(3, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    assert token_logprobs(x, t).dtype == torch.float64
    assert weighted_cross_entropy(x, t, torch.ones(3)).dtype == torch.float64
    assert policy_gradient_loss(x, t, torch.zeros(3), torch.ones(3)).dtype == torch.float64


def test_backward_keeps_no_float32_copy_of_the_logits():
    x = logits(256, 4096).detach().bfloat16().requires_grad_()
    t = torch.randint(0, 4096, (256,), generator=torch.Generator().manual_seed(2))
    saved = []

    def pack(tensor):
        saved.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        lp = token_logprobs(x, t, chunk_rows=16)
    logits_bytes = x.numel() * x.element_size()
    assert sum(saved) < logits_bytes + 64 * 256  # the bf16 logits themselves (already alive) and per-row scraps
    (g,) = torch.autograd.grad(lp.sum(), x)
    assert torch.isfinite(g.float()).all()
