"""Fuzzing with hypothesis: random shapes, dtypes and values (NaN and inf included) fed to every public
loss and to `fit` on tiny models. Each call gives a correct-looking result or one of the documented
errors (TypeError, ValueError, MissingInputError, LossOutputError) whose message names the input at
fault; an error from the user's own model or loss keeps its type and carries minilearn's note naming
the step, the batch's and output's shapes. Never a bare error from inside torch."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given, settings
from hypothesis import strategies as st
from torch import nn

from minilearn import DataLoaders, Learner, LossOutputError, MissingInputError
from minilearn.losses import (ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy,
                              importance_weighted_cross_entropy, key_token_weighted_loss, policy_gradient_loss, token_logprobs,
                              weighted_cross_entropy)

FUZZ = settings(max_examples=60, deadline=None)
FLOATS = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
DTYPES = FLOATS + [torch.int64, torch.int32, torch.bool]
ARGS = ("logits", "target_tokens", "weights", "importance_weights", "logprobs", "advantages", "input_ids",
        "attention_mask", "keytoken_ids", "reduction", "clip_ratio", "kind")
DOCUMENTED = (TypeError, ValueError, MissingInputError, LossOutputError)


@st.composite
def tensors(draw, shape=None, dtype=None, low=-3, high=3, non_finite=True):
    """A tensor of a drawn (or given) shape and dtype; floats sometimes hold NaN or inf."""
    shape = shape if shape is not None else tuple(draw(st.lists(st.integers(0, 4), min_size=0, max_size=3)))
    dtype = dtype or draw(st.sampled_from(DTYPES))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    if dtype.is_floating_point:
        t = torch.randn(shape, generator=g, dtype=torch.float64)
        if non_finite and t.numel() and draw(st.booleans()):
            t.view(-1)[draw(st.integers(0, t.numel() - 1))] = draw(st.sampled_from([float("nan"), float("inf")]))
        return t.to(dtype)
    return torch.randint(low, high + 1, shape, generator=g).to(dtype)


@st.composite
def token_inputs(draw):
    """logits (..., V) and three per-token float inputs: half the time all well-formed (so that results
    are checked), otherwise each may have a wrong shape or dtype, or hold NaN, inf or bad ids."""
    clean = draw(st.booleans())
    shape = (*draw(st.lists(st.integers(1, 3), min_size=0, max_size=2)), draw(st.integers(1, 4))) if clean else None
    logits = draw(tensors(shape=shape, dtype=draw(st.sampled_from(FLOATS)) if clean else None, non_finite=not clean))
    lead = tuple(logits.shape[:-1]) if logits.ndim else ()
    vocab = logits.shape[-1] if logits.ndim else 1

    def per_token(dtype, low=-3, high=3):
        if clean:
            return draw(tensors(shape=lead, dtype=dtype, low=low, high=high, non_finite=False))
        shape = lead if draw(st.booleans()) else None
        return draw(tensors(shape=shape, dtype=dtype if draw(st.booleans()) else None, low=low, high=high))

    targets = per_token(torch.int64, low=-1 if not clean else 0, high=vocab if not clean else vocab - 1)
    if clean and targets.numel() and draw(st.booleans()):
        targets.view(-1)[0] = -100  # an ignored position
    weights = per_token(torch.float32)
    return logits, targets, weights.abs() if clean else weights, per_token(torch.float32), per_token(torch.float32)


def finite(*xs):
    return all(not x.is_floating_point() or bool(torch.isfinite(x).all()) for x in xs)


def check(call, *inputs, scalar=True):
    """Run one loss call: a documented error naming an input, or a result of the right form."""
    try:
        out = call()
    except DOCUMENTED as e:
        assert any(name in str(e) for name in ARGS), f"{type(e).__name__} names no input: {e}"
        event(f"refused: {type(e).__name__}")
        return
    event("computed")
    assert isinstance(out, torch.Tensor) and out.is_floating_point()
    if scalar:
        assert out.ndim == 0
    if finite(*inputs):
        assert torch.isfinite(out).all(), (out, inputs)


@FUZZ
@given(token_inputs(), st.sampled_from(["weight_mean", "sum"]))
def test_fuzz_token_logprobs_and_weighted_cross_entropy(inputs, reduction):
    logits, targets, weights, _, _ = inputs
    check(lambda: token_logprobs(logits, targets), logits, scalar=False)
    check(lambda: weighted_cross_entropy(logits, targets, weights, reduction), logits, weights)
    check(lambda: WeightedCrossEntropy(reduction)(logits, targets, weights), logits, weights)


@FUZZ
@given(token_inputs(), st.sampled_from([None, 0.5, 2.0]))
def test_fuzz_importance_sampling(inputs, clip_ratio):
    logits, targets, weights, iw, _ = inputs
    check(lambda: importance_weighted_cross_entropy(logits, targets, weights, iw, clip_ratio), logits, weights, iw)
    check(lambda: ImportanceWeightedCrossEntropy(clip_ratio)(logits, targets, weights, iw), logits, weights, iw)


@FUZZ
@given(token_inputs(), st.sampled_from(["importance_sampling", "ppo", "cispo", "dro"]))
def test_fuzz_policy_gradient(inputs, kind):
    logits, targets, _, q, adv = inputs
    q = q.clamp(max=0) if q.is_floating_point() else q  # sampler logprobs are <= 0; exp(lp - q) stays finite
    check(lambda: policy_gradient_loss(logits, targets, q, adv, kind), logits, q, adv)
    check(lambda: PolicyGradientLoss(kind)(logits, targets, q, adv), logits, q, adv)


@FUZZ
@given(token_inputs(), st.lists(st.integers(-1, 5), max_size=3), st.booleans())
def test_fuzz_key_token_weighted_loss(inputs, keytoken_ids, with_mask):
    logits, input_ids, mask, _, _ = inputs
    mask = (mask > 0).long() if with_mask and mask.is_floating_point() else mask if with_mask else None
    check(lambda: key_token_weighted_loss(logits, input_ids, keytoken_ids, attention_mask=mask), logits)
    check(lambda: KeyTokenWeightedLoss(keytoken_ids)(logits, input_ids, mask), logits)


LOSSES = {"mse": F.mse_loss, "cross_entropy": F.cross_entropy, "weighted_ce": WeightedCrossEntropy(),
          "bad_return": lambda preds, y: preds}


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 4), st.integers(1, 3), st.integers(1, 3), st.integers(1, 3), st.sampled_from(sorted(LOSSES)),
       st.data())
def test_fuzz_fit_on_tiny_models(bs, n_in, n_out, n_items, loss_name, data):
    x = data.draw(tensors(shape=data.draw(st.sampled_from([(bs, n_in), (bs, n_in + 1), (bs,)])),
                          dtype=data.draw(st.sampled_from([torch.float32, torch.float64, torch.int64]))))
    extras = [data.draw(tensors(shape=data.draw(st.sampled_from([(bs,), (bs, n_out), (bs + 1,)])), low=-1, high=n_out))
              for _ in range(n_items)]
    n_epochs = data.draw(st.sampled_from([0, 1, 2, -1, 1.5]))
    learn = Learner(nn.Linear(n_in, n_out), DataLoaders([(x, *extras)], [(x, *extras)]), LOSSES[loss_name])
    try:
        learn.fit(n_epochs)
        event("trained")
    except Exception as e:
        notes = getattr(e, "__notes__", [])
        if notes:  # raised in a step: by the user's model or loss (nn.Linear, F.mse_loss ...) or minilearn's checks
            assert notes[0].startswith("minilearn: raised by the step ") and "batch: (" in notes[0], notes
            event(f"raised {type(e).__name__} in a step, with a note")
        else:
            assert isinstance(e, DOCUMENTED) and "n_epochs" in str(e), f"unexplained {type(e).__name__}: {e}"
            event(f"refused: {type(e).__name__}")
    # whatever happened, the learner is usable: a good batch trains
    good = (torch.randn(2, n_in), torch.randn(2, n_out))
    learn.dls, learn.loss_func = DataLoaders([good], [good]), F.mse_loss
    learn.fit(1)
    assert learn.model.training and len(learn.cbs) == 1


def test_what_the_fuzzing_found_logits_without_vocabulary_or_zero_candidates_are_refused():
    with pytest.raises(ValueError, match=r"logits must have a last \(vocabulary\) dimension of size >= 1, got shape \(\)"):
        token_logprobs(torch.tensor(1.5), torch.tensor(1))
    with pytest.raises(ValueError, match=r"logits must have a last .* got shape \(3, 0\)"):
        weighted_cross_entropy(torch.zeros(3, 0), torch.zeros(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match=r"target_tokens of shape \(0,\) does not line up .*K >= 1 candidate"):
        policy_gradient_loss(torch.zeros(1), torch.zeros(0, dtype=torch.long), torch.tensor(0.0), torch.tensor(1.0))
