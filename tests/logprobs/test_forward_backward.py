"""Losses over per-sequence log-probabilities: two passes give the gradient of direct autograd (each
ready loss, and random user functions with hypothesis), micro-batches change nothing, DPO matches
an independent formula, LogprobLossCB trains in `fit` (also under AccelerateCB), and bad input
raises clear errors that leave the learner usable."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.

from minilearn import Callback, DataLoaders, Learner, LossOutputError, MissingInputError, logprob_targets, sequence_logprobs
from minilearn.callbacks import AccelerateCB, LogprobLossCB, MetricsCB
from minilearn.losses import make_bradley_terry_loss, make_candidate_ce_loss, make_dpo_loss, token_logprobs, make_variance_loss
from minilearn.demo.tiny_model import TinyCausalLM

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

V, T, K = 13, 7, 3


def make_model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T).to(dtype)


def lm_batch(n=6, seed=0, candidates=False, dtype=torch.float64):
    """Right-padded sequences of varying length; per-token reference logprobs; with `candidates`,
    K candidate targets at one or two answer positions of each sequence and the correct index."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (n, T), generator=g)
    mask = (torch.arange(T)[None] < torch.randint(3, T + 1, (n, 1), generator=g)).long()
    batch = {"input_ids": ids, "attention_mask": mask,
             "ref_logprobs": -2.5 + 0.3 * torch.randn(n, T, generator=g, dtype=dtype)}
    if candidates:
        targets = torch.full((n, T, K), -100)
        for i in range(n):
            for t in torch.randperm(T - 1, generator=g)[:1 + i % 2]:
                targets[i, t] = torch.randperm(V, generator=g)[:K]
        batch = {**batch, "target_tokens": targets, "correct_index": torch.randint(0, K, (n,), generator=g)}
    return batch


def grads_of(model):
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def gradient(fn, batch, two_pass, micro_batch_size=None, dtype=torch.float64, ref_model=None):
    learn = Learner(make_model(dtype), DataLoaders([], []))
    out = learn.forward_backward_custom(batch, fn, two_pass=two_pass, micro_batch_size=micro_batch_size,
                                        ref_model=ref_model)
    return out, grads_of(learn.model)


READY = {"dpo": (make_dpo_loss(beta=0.3), False), "bradley_terry": (make_bradley_terry_loss(), False),
         "candidate_ce": (make_candidate_ce_loss("correct_index"), True), "variance": (make_variance_loss(0.5), False)}


@pytest.mark.parametrize("name", READY)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_two_pass_gives_the_gradient_of_direct_autograd_for_each_ready_loss(name, dtype, tol):
    fn, candidates = READY[name]
    batch = lm_batch(candidates=candidates, dtype=dtype)
    direct, g_direct = gradient(fn, batch, two_pass=False, dtype=dtype)
    two, g_two = gradient(fn, batch, two_pass=True, dtype=dtype)
    assert g_direct.abs().max() > 1e-3  # a real gradient, not two zeros
    assert torch.allclose(g_two, g_direct, atol=tol, rtol=tol), (g_two - g_direct).abs().max()
    assert math.isclose(two.loss, direct.loss, rel_tol=tol) and two.metrics.keys() == direct.metrics.keys()


@pytest.mark.parametrize("name", READY)
@pytest.mark.parametrize("micro_batch_size", [1, 4])
def test_micro_batched_two_pass_equals_one_shot_two_pass(name, micro_batch_size):
    fn, candidates = READY[name]
    batch = lm_batch(candidates=candidates)
    whole, g_whole = gradient(fn, batch, two_pass=True)
    parts, g_parts = gradient(fn, batch, two_pass=True, micro_batch_size=micro_batch_size)
    assert torch.allclose(g_parts, g_whole, atol=1e-10, rtol=1e-10) and math.isclose(parts.loss, whole.loss, rel_tol=1e-12)


# ---- random user functions ---------------------------------------------------------------------

REDUCE = {"sum": torch.sum, "mean": torch.mean, "max": torch.max, "logsumexp": lambda x: torch.logsumexp(x, 0)}
SHAPE = {"identity": lambda x: x, "tanh": torch.tanh, "square": torch.square, "exp": torch.exp,
         "softplus": torch.nn.functional.softplus}
COUPLE = {"mean": torch.mean, "variance": lambda s: s.var(correction=0), "logsumexp": lambda s: torch.logsumexp(s, 0),
          "softmax_weighted": lambda s: (torch.softmax(s, 0) * s).sum(), "product": lambda s: torch.tanh(s).prod()}


@st.composite
def user_functions(draw):
    """fn(batch, logprobs): a reduction of each sequence, a shape, a coupling of the batch, times a
    random coefficient a sequence."""
    reduce, shape, couple = (draw(st.sampled_from(sorted(d))) for d in (REDUCE, SHAPE, COUPLE))
    coefs = draw(st.lists(st.floats(-2, 2), min_size=6, max_size=6))

    def fn(batch, logprobs):
        scores = torch.stack([REDUCE[reduce](lp) for lp in logprobs])
        return COUPLE[couple](SHAPE[shape](scores * torch.tensor(coefs[:len(logprobs)], dtype=scores.dtype)))
    fn.__qualname__ = f"{reduce}-{shape}-{couple}"
    return fn


@settings(max_examples=15, deadline=None)
@given(fn=user_functions(), seed=st.integers(0, 1000), micro_batch_size=st.sampled_from([None, 2, 5]))
def test_two_pass_equals_direct_autograd_for_random_user_functions(fn, seed, micro_batch_size):
    batch = lm_batch(seed=seed)
    direct, g_direct = gradient(fn, batch, two_pass=False)
    two, g_two = gradient(fn, batch, two_pass=True, micro_batch_size=micro_batch_size)
    # Relative to the gradient's largest entry: the two passes add the same float64 terms in another
    # order, so an entry's rounding error scales with the largest terms (an `exp` of a big score makes
    # entries of 1e14 next to entries near 0, where an elementwise rtol would ask for more than float64 has).
    gap = (g_two - g_direct).abs().max()
    assert gap <= 1e-10 * (1 + g_direct.abs().max()), (fn.__qualname__, gap, g_direct.abs().max())
    assert math.isclose(two.loss, direct.loss, rel_tol=1e-12, abs_tol=1e-12)


# ---- what fn receives ----------------------------------------------------------------------------

def test_fn_gets_each_sequences_target_logprobs_without_padding():
    batch = lm_batch()
    learn = Learner(make_model(), DataLoaders([], []))
    seen = {}

    def fn(data, logprobs):
        seen["lps"], seen["ref"] = logprobs, data["ref_logprobs"]
        return -torch.cat(logprobs).sum()
    learn.forward_backward_custom(batch, fn)
    logits = learn.model(batch["input_ids"], batch["attention_mask"])
    for i, lp in enumerate(seen["lps"]):
        n = int(batch["attention_mask"][i].sum()) - 1          # real tokens, less the last (it predicts nothing)
        ids = batch["input_ids"][i]
        expected = torch.log_softmax(logits[i, :n], -1).gather(1, ids[1:n + 1, None])[:, 0]
        assert lp.shape == (n,) and torch.allclose(lp, expected, atol=1e-12)
        assert torch.equal(seen["ref"][i], batch["ref_logprobs"][i, :n])


def test_targets_ignore_left_padding_and_candidate_padding():
    ids, mask = torch.tensor([[0, 0, 5, 6, 7]]), torch.tensor([[0, 0, 1, 1, 1]])
    assert logprob_targets({"input_ids": ids, "attention_mask": mask}).tolist() == [[-100, -100, 6, 7, -100]]
    lps = sequence_logprobs(torch.zeros(1, 2, 4, dtype=torch.float64), torch.tensor([[[1, 2], [-100, -100]]]))
    assert lps[0].shape == (1, 2) and torch.allclose(lps[0], torch.full((1, 2), -math.log(4), dtype=torch.float64))


# ---- DPO against an independent formula ----------------------------------------------------------

def hand_dpo(chosen, rejected, ref_chosen, ref_rejected, beta):
    """-log sigmoid(beta ((c - c_ref) - (r - r_ref))), averaged over pairs, by the definition."""
    terms = [-torch.log(1 / (1 + torch.exp(-beta * ((c - rc) - (r - rr)))))
             for c, r, rc, rr in zip(chosen, rejected, ref_chosen, ref_rejected)]
    return sum(terms) / len(terms)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_dpo_loss_matches_the_dpo_formula_in_value_and_gradient(beta):
    g = torch.Generator().manual_seed(int(beta * 10))
    lps = [(-torch.rand(3 + i % 3, generator=g, dtype=torch.float64) * 2).requires_grad_() for i in range(8)]
    ref = [-torch.rand(3 + i % 3, generator=g, dtype=torch.float64) * 2 for i in range(8)]
    loss, metrics = make_dpo_loss(beta)({"ref_logprobs": ref}, lps)
    s, r = [lp.sum() for lp in lps], [x.sum() for x in ref]
    expected = hand_dpo(s[0::2], s[1::2], r[0::2], r[1::2], beta)
    assert abs(loss.item() - expected.item()) < 1e-12
    got = torch.autograd.grad(loss, lps, retain_graph=True)
    want = torch.autograd.grad(expected, lps)
    assert all(torch.allclose(a, b, atol=1e-12, rtol=0) for a, b in zip(got, want))
    rewards = [beta * (a - b).item() for a, b in zip(s, r)]
    assert math.isclose(metrics["chosen_reward"].item(), sum(rewards[0::2]) / 4, rel_tol=1e-12)
    assert metrics["accuracy"].item() == sum(c > x for c, x in zip(rewards[0::2], rewards[1::2])) / 4


def test_dpo_with_a_reference_model_equals_dpo_with_its_logprobs_in_the_batch():
    batch = lm_batch()
    del batch["ref_logprobs"]
    ref_model = make_model(seed=3)
    with_model, g_model = gradient(make_dpo_loss(0.5), batch, two_pass=True, micro_batch_size=4, ref_model=ref_model)
    targets = logprob_targets(batch)
    per_token = token_logprobs(ref_model(batch["input_ids"], batch["attention_mask"]), targets).detach()
    precomputed, g_pre = gradient(make_dpo_loss(0.5), {**batch, "ref_logprobs": per_token}, two_pass=False)
    assert torch.allclose(g_model, g_pre, atol=1e-10) and math.isclose(with_model.loss, precomputed.loss, rel_tol=1e-12)
    assert ref_model.training and all(p.grad is None for p in ref_model.parameters())  # left as it was


def test_ready_losses_report_their_metrics():
    names = {"dpo": {"accuracy", "margin", "chosen_reward", "rejected_reward"},
             "bradley_terry": {"accuracy", "margin", "chosen_reward", "rejected_reward"},
             "candidate_ce": {"accuracy", "correct_prob"}, "variance": {"mean_nll", "nll_std"}}
    for name, (fn, candidates) in READY.items():
        out, _ = gradient(fn, lm_batch(candidates=candidates), two_pass=True)
        assert set(out.metrics) == names[name] and all(isinstance(v, float) for v in out.metrics.values())


def test_candidate_ce_renormalises_over_the_candidates_only():
    lp = torch.log(torch.tensor([[0.2, 0.1, 0.05]], dtype=torch.float64))
    loss, m = make_candidate_ce_loss(1)({}, [lp])
    assert math.isclose(loss.item(), -math.log(0.1 / 0.35), rel_tol=1e-12) and m["accuracy"].item() == 0.0


# ---- in fit ----------------------------------------------------------------------------------------

def fit_weights(cbs, batches, lr=0.5):
    learn = Learner(make_model(), DataLoaders(batches, []), lr=lr, cbs=[MetricsCB()])
    learn.fit(1, cbs=cbs, valid=False)
    return learn


def test_logprob_loss_cb_trains_like_forward_backward_custom_and_optim_step():
    batches = [lm_batch(seed=s) for s in range(3)]
    fn = make_dpo_loss(0.5)
    direct = fit_weights(LogprobLossCB(fn), batches)
    two = fit_weights(LogprobLossCB(fn, two_pass=True, micro_batch_size=2), batches)
    manual = Learner(make_model(), DataLoaders([], []), lr=0.5)
    for b in batches:
        manual.forward_backward_custom(b, fn)
        manual.optim_step()
    for learn in (direct, two):
        assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(learn.model.parameters(), manual.model.parameters()))
        assert {"loss", "accuracy", "margin"} <= set(learn.epoch_metrics)
    assert not any(isinstance(cb, LogprobLossCB) for cb in two.cbs) and two._owners["get_loss"].name == "TrainCB"


class GraphSpy(Callback):
    """Records, after the loss, the loop's predictions (None, or whether they carry a graph) and whether grad is on."""

    def __init__(self): self.seen = []
    def after_loss(self, learn): self.seen.append((learn.preds if learn.preds is None else learn.preds.requires_grad,
                                                   torch.is_grad_enabled()))


def test_two_pass_in_fit_keeps_no_logits_of_the_whole_batch():
    spy = GraphSpy()
    learn = Learner(make_model(), DataLoaders([lm_batch()], [lm_batch(seed=1)]),
                    cbs=[LogprobLossCB(make_variance_loss(), two_pass=True), spy])
    learn.fit(1)
    assert spy.seen == [(None, True), (False, False)]  # training: the passes ran in get_loss; validation: the loop's


def test_under_accelerate_with_accumulation_it_averages_the_micro_batches():
    batches = [lm_batch(seed=s) for s in range(4)]
    fn = make_variance_loss(0.5)
    acc = Learner(make_model(), DataLoaders(batches, []), lr=0.5,
                  cbs=[AccelerateCB(gradient_accumulation_steps=2), LogprobLossCB(fn, two_pass=True, micro_batch_size=3)])
    acc.fit(1)
    manual = Learner(make_model(), DataLoaders([], []), lr=0.5)
    for i, b in enumerate(batches):
        manual.forward_backward_custom(b, lambda data, lps: fn(data, lps)[0] / 2)
        if i % 2:
            manual.optim_step()
    assert all(torch.allclose(a, b, atol=1e-10) for a, b in zip(acc.model.parameters(), manual.model.parameters()))


def test_validation_computes_the_loss_without_gradients():
    learn = Learner(make_model(), DataLoaders([], [lm_batch()]), cbs=[MetricsCB(), LogprobLossCB(make_dpo_loss(), two_pass=True)])
    learn.fit(1, train=False)
    assert learn.epoch_metrics["phase"] == "valid" and math.isfinite(learn.epoch_metrics["loss"])
    assert all(p.grad is None for p in learn.model.parameters())


# ---- dropout: the surrogate pass replays the first pass's random state ----------------------------

def dropout_model(name):
    """A model in train mode whose forward draws dropout masks (p = 0.1), the same weights at each call."""
    torch.manual_seed(0)
    if name == "tiny":
        return TinyCausalLM(V, dim=16, n_layers=1, n_heads=2, max_len=T, dropout=0.1).train()
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, resid_pdrop=0.1, embd_pdrop=0.1,
                                     attn_pdrop=0.1, bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(config).train()


def micro_batched_direct(model, batch, fn, size):
    """Direct autograd through the forward of the micro-batches of `size` sequences run one after another
    (the masks two passes with `micro_batch_size=size` draw): their log-probabilities joined, then `fn`."""
    targets, lps = logprob_targets(batch), []
    for i in range(0, targets.shape[0], size):
        out = model(input_ids=batch["input_ids"][i:i + size], attention_mask=batch["attention_mask"][i:i + size])
        lps += sequence_logprobs(getattr(out, "logits", out), targets[i:i + size])
    fn(batch, lps)[0].backward()


def dropout_gradient(name, micro_batch_size, two_pass, seed=5, fn=make_variance_loss(0.5)):
    """The gradient, and the next number torch draws, after one call from the random state `seed`: two
    passes, direct mode (micro_batch_size None) or the micro-batched direct reference."""
    learn = Learner(dropout_model(name), DataLoaders([], []))
    torch.manual_seed(seed)
    if two_pass or micro_batch_size is None:
        learn.forward_backward_custom(lm_batch(), fn, two_pass=two_pass, micro_batch_size=micro_batch_size)
    else:
        micro_batched_direct(learn.model, lm_batch(), fn, micro_batch_size)
    return grads_of(learn.model), torch.rand(1).item()


@pytest.mark.parametrize("micro_batch_size", [None, 2])
@pytest.mark.parametrize("name", ["tiny", "gpt2"])
def test_with_dropout_two_passes_give_the_gradient_of_direct_autograd(name, micro_batch_size):
    # micro_batch_size=None: direct mode itself; 2: direct autograd through the same micro-batched forward
    want, _ = dropout_gradient(name, micro_batch_size, two_pass=False)
    got, _ = dropout_gradient(name, micro_batch_size, two_pass=True)
    other_masks, _ = dropout_gradient(name, micro_batch_size, two_pass=False, seed=6)
    assert (other_masks - want).abs().max() > 1e-3 * want.abs().max()  # the masks matter
    assert (got - want).abs().max() <= 1e-6 * want.abs().max(), ((got - want).abs().max(), want.abs().max())


@pytest.mark.parametrize("micro_batch_size", [None, 2])
def test_two_passes_leave_the_random_generator_where_direct_autograd_leaves_it(micro_batch_size):
    def drawing_fn(batch, lps):  # draws after the forward: the surrogate's replay must not undo it
        return make_variance_loss(0.5)(batch, lps)[0] + 0 * torch.rand(()), {}
    _, want = dropout_gradient("tiny", micro_batch_size, two_pass=False, fn=drawing_fn)
    _, got = dropout_gradient("tiny", micro_batch_size, two_pass=True, fn=drawing_fn)
    torch.manual_seed(5)
    assert got == want != torch.rand(1).item()  # and the forward did draw


@pytest.mark.parametrize("micro_batch_size", [None, 2])
@pytest.mark.parametrize("name", ["tiny", "gpt2"])
def test_with_dropout_logprob_loss_cb_two_pass_trains_like_direct_autograd(name, micro_batch_size):
    batches, fn = [lm_batch(seed=s) for s in range(2)], make_variance_loss(0.5)
    start = copy.deepcopy(dropout_model(name).state_dict())
    two = Learner(dropout_model(name), DataLoaders(batches, []), lr=0.5)
    torch.manual_seed(7)
    two.fit(1, cbs=LogprobLossCB(fn, two_pass=True, micro_batch_size=micro_batch_size), valid=False)
    after_two = torch.rand(1).item()
    ref = Learner(dropout_model(name), DataLoaders(batches, []), lr=0.5)
    torch.manual_seed(7)
    if micro_batch_size is None:
        ref.fit(1, cbs=LogprobLossCB(fn), valid=False)
    else:
        for b in batches:
            micro_batched_direct(ref.model, b, fn, micro_batch_size)
            ref.optim_step()
    assert torch.rand(1).item() == after_two
    moved = max((v - start[k]).abs().max() for k, v in ref.model.state_dict().items())
    gap = max((v - ref.model.state_dict()[k]).abs().max() for k, v in two.model.state_dict().items())
    assert moved > 1e-3 and gap <= 1e-6 * moved, (gap, moved)


# ---- bad input -------------------------------------------------------------------------------------

def check_error_leaves_learner_usable(fn, batch, error, match, **kwargs):
    learn = Learner(make_model(), DataLoaders([], []))
    before = copy.deepcopy(learn.model.state_dict())
    with pytest.raises(error, match=match):
        learn.forward_backward_custom(batch, fn, **kwargs)
    assert all(p.grad is None for p in learn.model.parameters())   # nothing half back-propagated
    learn.forward_backward_custom(lm_batch(), make_dpo_loss())            # and it still works
    learn.optim_step()
    assert any(not torch.equal(before[k], v) for k, v in learn.model.state_dict().items())


@pytest.mark.parametrize("two_pass", [False, True])
@pytest.mark.parametrize("fn, batch, error, match", [
    (lambda b, lps: torch.stack([lp.sum() for lp in lps]), lm_batch(), LossOutputError, r"shape \(6,\).*scalar"),
    (lambda b, lps: (torch.cat(lps).sum(), 1.0, 2.0), lm_batch(), LossOutputError, "tuple of 3"),
    (lambda b, lps: torch.tensor(1.0, dtype=torch.float64), lm_batch(), ValueError, "does not depend"),
    (make_dpo_loss(), {k: v[:5] for k, v in lm_batch().items()}, ValueError, "5 sequences.*even"),
    (make_dpo_loss(), {k: v for k, v in lm_batch().items() if k != "ref_logprobs"}, MissingInputError, "ref_model"),
    (make_dpo_loss(), {**lm_batch(), "ref_logprobs": torch.zeros(4)}, ValueError, "ref_logprobs has 4 sequences"),
    (make_dpo_loss(), {**lm_batch(), "ref_logprobs": torch.zeros(6, 5)}, ValueError, r"ref_logprobs of shape \(6, 5\)"),
    (make_candidate_ce_loss(), lm_batch(), ValueError, r"target_tokens \(B, T, K\)"),
    (make_candidate_ce_loss(K), lm_batch(candidates=True), ValueError, r"in \[0, 3\)"),
    (make_candidate_ce_loss("answer"), lm_batch(candidates=True), MissingInputError, "'answer'.*keys"),
    (make_variance_loss(), {**lm_batch(), "target_tokens": torch.full((6, T), -100)}, ValueError, r"sequences \[0, 1"),
    (make_dpo_loss(), {"attention_mask": torch.ones(2, 3)}, MissingInputError, "'target_tokens' or 'input_ids'"),
    (make_dpo_loss(), {"input_ids": torch.zeros(2, 3, dtype=torch.long), "target_tokens": torch.full((2, 3), V)},
     ValueError, "holds the id 13"),
])
def test_bad_input_raises_a_clear_error_and_leaves_the_learner_usable(fn, batch, error, match, two_pass):
    check_error_leaves_learner_usable(fn, batch, error, match, two_pass=two_pass)


def test_partial_candidate_sets_are_refused():
    batch = lm_batch(candidates=True)
    batch["target_tokens"][0, 0] = torch.tensor([1, 2, -100])
    check_error_leaves_learner_usable(make_candidate_ce_loss(), batch, ValueError, "some but not all of its K")


@pytest.mark.parametrize("kwargs, match", [({"micro_batch_size": 0, "two_pass": True}, "whole number >= 1"),
                                           ({"micro_batch_size": 2}, "needs two_pass=True")])

def test_bad_micro_batch_size_is_refused(kwargs, match):
    check_error_leaves_learner_usable(make_dpo_loss(), lm_batch(), ValueError, match, **kwargs)


def test_a_tuple_batch_or_a_non_callable_fn_is_refused():
    learn = Learner(make_model(), DataLoaders([], []))
    with pytest.raises(TypeError, match="mapping batch"):
        learn.forward_backward_custom((torch.zeros(2, 3, dtype=torch.long),), make_dpo_loss())
    with pytest.raises(TypeError, match=r"fn must be a function fn\(batch, logprobs\)"):
        learn.forward_backward_custom(lm_batch(), "dpo")
    with pytest.raises(ValueError, match="needs two_pass=True"):
        LogprobLossCB(make_dpo_loss(), micro_batch_size=2)
