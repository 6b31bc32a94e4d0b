"""check_loss: deliberately wrong losses fail the right check with the right explanation, correct ones
(the plug-in losses among them) pass, and the report reads well in a notebook and a terminal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
# The Accelerate state reset of the Accelerate tests; `fresh_accelerate` is an autouse fixture there and here.
from torch import nn

from minilearn import NormalizedLoss
from minilearn.callbacks import AccelerateCB
from minilearn.losses import ImportanceWeightedCrossEntropy, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy
from minilearn.testing import CheckFailed, CheckReport, check_loss, sample_preds
from minilearn.testing.tiny import tiny_learner

pytestmark = pytest.mark.usefixtures("fresh_accelerate")  # Accelerate's process-wide state, fresh

V = 7


def token_batch(seed=0, bs=4, t=5, ignored=True):
    """A mapping batch for token losses whose two halves (rows [:2], [2:]) have different weight sums
    and, when `ignored`, different numbers of targets (one is -100)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, V, (bs, t), generator=g)
    if ignored:
        targets[0, -1] = -100
    weights = torch.rand(bs, t, generator=g) * torch.linspace(1.0, 0.1, bs)[:, None]
    return {"target_tokens": targets, "weights": weights, "input_ids": targets.clamp(min=0),
            "importance_weights": 0.5 + torch.rand(bs, t, generator=g),
            "logprobs": -2.0 + 0.2 * torch.randn(bs, t, generator=g), "advantages": torch.randn(bs, t, generator=g)}


def logits_for(batch, seed=1):
    return torch.randn(*batch["target_tokens"].shape, V, generator=torch.Generator().manual_seed(seed))


def target_logprobs(logits, target_tokens):
    """log p(target) in the dtype of the logits but never below float32; 0 where the target is -100."""
    lp = torch.log_softmax(logits.float() if logits.element_size() < 4 else logits, -1)
    return torch.where(target_tokens != -100, lp.gather(-1, target_tokens.clamp(min=0)[..., None])[..., 0], 0)


def weighted_ce_exact(logits, target_tokens, weights):
    w = weights * (target_tokens != -100)
    return NormalizedLoss(-(w * target_logprobs(logits, target_tokens)).sum(), w.sum())


def weighted_ce_per_micro_batch(logits, target_tokens, weights):
    """The same ratio returned as a plain scalar: averaged per micro-batch under accumulation."""
    return weighted_ce_exact(logits, target_tokens, weights).value


def weighted_ce_formula(logits, target_tokens, weights):
    """The reference, written independently: cross-entropy per token, weighted mean."""
    per_token = F.cross_entropy(logits.transpose(1, 2), target_tokens.clamp(min=0), reduction="none")
    w = weights * (target_tokens != -100)
    return (w * per_token).sum() / w.sum()


def by_name(report):
    return {c.name: c for c in report.checks}


def test_a_correct_loss_passes_every_check():
    batch = token_batch()
    report = check_loss(weighted_ce_exact, batch, preds=logits_for(batch), reference=weighted_ce_formula)
    assert bool(report), str(report)
    assert [c.name for c in report.checks] == ["inputs", "scalar", "differentiable", "gradcheck", "reference",
                                               "accelerate", "accumulation", "bf16"]
    assert "weights <- batch['weights'] (4, 5)" in by_name(report)["inputs"].explanation
    assert "NormalizedLoss" in by_name(report)["scalar"].explanation
    assert report.raise_if_failed() is report


@pytest.mark.parametrize("loss", [WeightedCrossEntropy(), ImportanceWeightedCrossEntropy(clip_ratio=2.0),
                                  KeyTokenWeightedLoss([2, 5], alpha=1.5), PolicyGradientLoss("ppo"),
                                  PolicyGradientLoss("dro", beta=0.3)], ids=lambda m: repr(m))
def test_the_plug_in_losses_pass(loss):
    batch = token_batch()
    assert check_loss(loss, batch, preds=logits_for(batch)), str(check_loss(loss, batch, preds=logits_for(batch)))


def test_a_loss_that_stops_a_gradient_on_purpose_passes_with_gradcheck_skipped():
    batch = token_batch()
    loss = PolicyGradientLoss("cispo")
    assert by_name(check_loss(loss, batch, preds=logits_for(batch)))["gradcheck"].passed is False
    report = check_loss(loss, batch, preds=logits_for(batch), skip=("gradcheck",))
    assert report and "gradcheck" not in by_name(report)


def test_a_per_micro_batch_mean_fails_accumulation_only_and_points_to_normalized_loss():
    batch = token_batch()
    report = check_loss(weighted_ce_per_micro_batch, batch, preds=logits_for(batch), reference=weighted_ce_formula)
    assert [c.name for c in report.failed] == ["accumulation"]
    text = report.failed[0].explanation
    assert "averages within each micro-batch" in text and "NormalizedLoss(total=" in text


@settings(max_examples=10, deadline=None)
@given(st.lists(st.floats(0.05, 5.0), min_size=5, max_size=5), st.permutations(range(5)), st.booleans())
def test_accumulation_fails_exactly_when_the_halves_weigh_differently(row_weights, perm, same_sums):
    # Two rows of five tokens, one a micro-batch each: permuting a row's weights keeps its sum.
    first = torch.tensor(row_weights)
    second = first[list(perm)] if same_sums else 1.5 * first
    batch = {"target_tokens": torch.randint(0, V, (2, 5), generator=torch.Generator().manual_seed(0)),
             "weights": torch.stack([first, second])}
    preds = torch.randn(2, 5, V, generator=torch.Generator().manual_seed(1))
    skip = ("gradcheck", "reference", "accelerate", "bf16")
    plain = by_name(check_loss(weighted_ce_per_micro_batch, batch, preds=preds, skip=skip))["accumulation"]
    exact = by_name(check_loss(weighted_ce_exact, batch, preds=preds, skip=skip))["accumulation"]
    assert plain.passed is same_sums and exact.passed is True


def test_a_detached_loss_fails_differentiable_and_ends_the_report():
    batch = token_batch()
    report = check_loss(lambda logits, target_tokens, weights: weighted_ce_formula(logits, target_tokens, weights).detach(),
                        batch, preds=logits_for(batch))
    assert [c.name for c in report.checks] == ["inputs", "scalar", "differentiable"] and not report
    assert "cut the graph" in report.failed[0].explanation


def test_a_partly_detached_loss_fails_gradcheck():
    def half_detached(logits, target_tokens, weights):
        lp = target_logprobs(logits, target_tokens)
        focus = 1 - lp.detach().exp()   # a focal-style factor that depends on the logits, detached
        return NormalizedLoss(-(weights * focus * lp).sum(), weights.sum())
    batch = token_batch()
    report = check_loss(half_detached, batch, preds=logits_for(batch))
    assert [c.name for c in report.failed] == ["gradcheck"]
    assert "differs from finite differences" in report.failed[0].explanation


def test_a_vector_valued_loss_fails_scalar_with_the_shape_and_the_fix():
    batch = token_batch()
    report = check_loss(lambda logits, target_tokens: -target_logprobs(logits, target_tokens).mean(-1), batch,
                        preds=logits_for(batch))
    assert [c.name for c in report.failed] == ["scalar"] and len(report.checks) == 2
    assert "shape (4,)" in report.failed[0].explanation and ".mean() or .sum()" in report.failed[0].explanation


def test_a_missing_input_fails_inputs_naming_it_and_the_batch_keys():
    batch = token_batch()
    report = check_loss(lambda logits, labels: logits.sum(), batch, preds=logits_for(batch))
    assert [c.name for c in report.checks] == ["inputs"] and not report
    assert "'labels'" in report.checks[0].explanation and "'target_tokens'" in report.checks[0].explanation


def test_a_loss_that_raises_is_a_failed_check_and_raise_if_failed_names_it():
    def unfinished(logits, target_tokens):
        raise NotImplementedError("write the loss here")
    batch = token_batch()
    report = check_loss(unfinished, batch, preds=logits_for(batch))
    assert by_name(report)["scalar"].explanation == "unfinished raised NotImplementedError: write the loss here"
    with pytest.raises(CheckFailed, match=r"(?s)check_loss\(unfinished\): 1 passed, 1 failed.*FAIL  scalar.*write the"):
        report.raise_if_failed()


def test_a_non_finite_loss_fails_scalar():
    report = check_loss(lambda logits, target_tokens: torch.log(torch.zeros(())) + logits.sum() * 0, token_batch())
    assert [c.name for c in report.failed] == ["scalar"] and "-inf" in report.failed[0].explanation


def test_a_metric_that_is_not_a_number_fails_scalar():
    def with_vector_metric(logits, target_tokens):
        lp = target_logprobs(logits, target_tokens)
        return -lp.mean(), {"per_row": lp.mean(-1)}
    report = check_loss(with_vector_metric, token_batch())
    assert "the metric 'per_row' is a (4,)" in report.failed[0].explanation


def test_a_loss_that_ignores_preds_fails_differentiable():
    report = check_loss(lambda logits, weights: weights.sum() + 0 * logits.sum(), token_batch())
    assert "zero everywhere" in report.failed[0].explanation


def test_a_loss_that_differs_from_the_reference_fails_reference_with_both_values():
    batch = token_batch()
    unweighted = lambda logits, target_tokens, weights: -target_logprobs(logits, target_tokens).sum() / (  # noqa: E731
        target_tokens != -100).sum()
    failed = check_loss(unweighted, batch, preds=logits_for(batch), reference=weighted_ce_formula).failed
    assert [c.name for c in failed][:1] == ["reference"]
    assert "but the reference weighted_ce_formula gives" in failed[0].explanation


def test_same_value_but_another_gradient_fails_reference_on_the_gradient():
    def same_value(logits, target_tokens, weights):
        exact = weighted_ce_formula(logits, target_tokens, weights)
        return exact.detach() + 2 * (exact - exact.detach())
    batch = token_batch()
    report = check_loss(same_value, batch, preds=logits_for(batch), reference=weighted_ce_formula, skip=("bf16",))
    assert "the values agree but the gradients differ" in by_name(report)["reference"].explanation


def test_a_loss_computing_in_bfloat16_fails_bf16():
    batch = token_batch(ignored=False)
    in_bf16 = lambda logits, target_tokens: F.cross_entropy(logits.transpose(1, 2), target_tokens)  # noqa: E731
    def upcast_at_the_end(logits, target_tokens):
        return in_bf16(logits, target_tokens).to(torch.promote_types(logits.dtype, torch.float32))
    failed = check_loss(in_bf16, batch, preds=logits_for(batch)).failed
    assert [c.name for c in failed] == ["bf16"] and "give a torch.bfloat16 loss" in failed[0].explanation
    failed = check_loss(upcast_at_the_end, batch, preds=logits_for(batch)).failed
    assert [c.name for c in failed] == ["bf16"] and "still computes in bfloat16" in failed[0].explanation


def test_a_loss_that_downcasts_float64_fails_gradcheck_with_the_reason():
    batch = token_batch(ignored=False)
    report = check_loss(lambda logits, target_tokens: F.cross_entropy(logits.float().transpose(1, 2), target_tokens),
                        batch, preds=logits_for(batch))
    assert [c.name for c in report.failed] == ["gradcheck"]
    assert "float64 preds give a torch.float32 loss" in report.failed[0].explanation


class CallCounting(nn.Module):
    """A loss whose value depends on how often it was called: no two training steps agree."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, logits, target_tokens):
        self.calls += 1
        return -self.calls * target_logprobs(logits, target_tokens).mean()


def test_a_loss_that_changes_between_calls_fails_accelerate():
    batch = token_batch()
    report = check_loss(CallCounting(), batch, preds=logits_for(batch), skip=("gradcheck",))
    assert "gives another gradient than the plain loop" in by_name(report)["accelerate"].explanation


def test_the_checks_leave_an_accelerate_callback_built_before_them_usable():
    learn = tiny_learner(cbs=AccelerateCB())
    batch = token_batch()
    assert check_loss(weighted_ce_exact, batch, preds=logits_for(batch))
    learn.fit(1)  # would refuse to run if the checks had left Accelerate's state changed


def test_a_batch_of_one_row_skips_accumulation():
    batch = {k: v[:1] for k, v in token_batch().items()}
    report = check_loss(weighted_ce_exact, batch)
    assert by_name(report)["accumulation"].passed is None and report


def test_tuple_batches_bind_by_position():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 3, generator=g), torch.randint(0, 4, (6,), generator=g)
    w = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.5, 0.5])
    def weighted(logits, y, w): return (w * F.cross_entropy(logits.double(), y, reduction="none")).sum() / w.sum()
    report = check_loss(weighted, (x, y, w), n_inp=1, skip=("bf16",))
    assert "y <- batch[1] (6,); w <- batch[2] (6,)" in by_name(report)["inputs"].explanation
    assert [c.name for c in report.failed] == ["accumulation"]


def test_sample_preds_ignores_negative_ids_and_needs_a_tensor_input():
    assert sample_preds(lambda logits, target_tokens: 0, {"target_tokens": torch.tensor([[2, -100]])}).shape == (1, 2, 3)
    assert sample_preds(lambda out, y: 0, (torch.zeros(3), torch.zeros(3, 2))).dtype == torch.float64
    with pytest.raises(ValueError, match="cannot guess the model output for <lambda>.*pass preds="):
        sample_preds(lambda out, flag: 0, {"flag": True})


def test_bad_arguments_are_clear_errors():
    batch = token_batch()
    with pytest.raises(ValueError, match=r"skip names unknown checks \['gradchek'\]"):
        check_loss(weighted_ce_exact, batch, skip=("gradchek",))
    with pytest.raises(TypeError, match=r"preds must be a floating-point tensor.*got \(4, 5\) torch.int64"):
        check_loss(weighted_ce_exact, batch, preds=batch["target_tokens"])


def test_the_report_is_a_table_in_a_notebook_and_text_in_a_terminal():
    report = CheckReport("check_loss(<my loss>)").add("bf16", False, "a < b").add("reference", None, "none given")
    html = report._repr_html_()
    assert "<table>" in html and "&lt;my loss&gt;" in html and "a &lt; b" in html and ">FAIL<" in html
    assert str(report) == repr(report) == ("check_loss(<my loss>): 0 passed, 1 failed, 1 skipped\n"
                                           "  FAIL  bf16       a < b\n  skip  reference  none given")
    assert not report and not CheckReport("nothing")
    with pytest.raises(CheckFailed, match="no check ran"):
        CheckReport("nothing").raise_if_failed()


KEY_IDS = [3, 5]


def key_token_batch(padded=False):
    ids = torch.tensor([[1, 3, 5, 2, 3, 0], [4, 4, 6, 2, 1, 0], [5, 5, 6, 1, 2, 3], [0, 2, 3, 6, 1, 4]])
    batch = {"input_ids": ids}
    if padded:  # right padding of different lengths: a mean over all tokens is no longer a mean of row means
        batch["attention_mask"] = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 3 + [0] * 3, [1] * 6])
    return batch


def student_key_token_loss(shift=True, per_row=True, offset=1, reduce=torch.mean):
    """A student's key-token loss, with one of the common mistakes or none, written with F.cross_entropy."""
    def loss(logits, input_ids, attention_mask=None):
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        labels = input_ids.masked_fill(mask == 0, -100)
        if shift:
            logits, labels = logits[:, :-1], labels[:, 1:]
        token_loss = F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")    # 0 at -100
        n = (labels != -100).sum(1)
        weights = 2.0 * (offset + (torch.isin(input_ids, torch.tensor(KEY_IDS)) & (mask == 1)).sum(1))
        if not per_row:
            return weights.mean() * token_loss.sum() / n.sum()
        return reduce(weights * token_loss.sum(1) / n)
    return loss


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("mistake, says", [
    (dict(shift=False), "your value matches the loss without the shift of labels by one position"),
    (dict(per_row=False), "your value matches the loss with one mean over all the tokens of the batch"),
    (dict(offset=0), "your value matches the loss with weights alpha * (number of key tokens), without the offset"),
    (dict(reduce=torch.sum), "your value matches the loss with the sum over rows instead of their mean"),
])
def test_a_key_token_loss_with_a_common_mistake_is_told_which(mistake, says, padded):
    batch = key_token_batch(padded)
    logits = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    reference = KeyTokenWeightedLoss(KEY_IDS, alpha=2.0)
    assert check_loss(student_key_token_loss(), batch, preds=logits, reference=reference, skip=("bf16",))
    explanation = by_name(check_loss(student_key_token_loss(**mistake), batch, preds=logits,
                                     reference=reference))["reference"].explanation
    assert explanation.startswith("value ") and "but the reference KeyTokenWeightedLoss gives" in explanation
    assert says in explanation and explanation.count("matches") == 1


def test_a_loss_computed_from_bfloat16_preds_is_told_so_at_reference():
    batch = key_token_batch()
    def in_bf16(logits, input_ids):
        return student_key_token_loss()(logits.bfloat16().float(), input_ids)
    logits = torch.randn(4, 6, 8, generator=torch.Generator().manual_seed(0))
    explanation = by_name(check_loss(in_bf16, batch, preds=logits,
                                     reference=KeyTokenWeightedLoss(KEY_IDS, alpha=2.0)))["reference"].explanation
    assert "your value matches the loss computed in bfloat16" in explanation


@pytest.mark.parametrize("reduction, wrong, says", [
    ("weight_mean", lambda lp, w: -lp.sum() / lp.ne(0).sum(), "without the weights (the plain mean"),
    ("weight_mean", lambda lp, w: -(w * lp).sum() / lp.ne(0).sum(), "divided by the number of target tokens"),
    ("weight_mean", lambda lp, w: -(w * lp).sum(), "with the weighted sum, not divided by the sum of the weights"),
    ("sum", lambda lp, w: -(w * lp).sum() / w.sum(), "with the weighted mean instead of the sum"),
])
def test_a_weighted_cross_entropy_with_a_common_mistake_is_told_which(reduction, wrong, says):
    batch = token_batch()
    def student(logits, target_tokens, weights):
        return wrong(target_logprobs(logits, target_tokens), weights * (target_tokens != -100))
    explanation = by_name(check_loss(student, batch, preds=logits_for(batch),
                                     reference=WeightedCrossEntropy(reduction)))["reference"].explanation
    assert says in explanation


def test_the_mistakes_of_an_exercise_can_be_given_and_a_value_matching_none_says_only_the_values():
    batch = token_batch()
    def times(k):
        return lambda logits, target_tokens, weights: k * weighted_ce_formula(logits, target_tokens, weights)
    mistakes = {"counted twice": times(2), "of its negative": times(-1)}
    def explanation(loss):
        return by_name(check_loss(loss, batch, preds=logits_for(batch), reference=weighted_ce_formula,
                                  mistakes=mistakes))["reference"].explanation
    assert explanation(times(2)).startswith("value ")
    assert explanation(times(2)).endswith(": your value matches the loss counted twice")
    assert "matches" not in explanation(times(3)) and explanation(times(3)).startswith("value ")


def test_a_float32_value_is_compared_with_a_float64_reference_as_a_number():
    batch = token_batch(ignored=False)
    def in_float32(logits, target_tokens):
        return F.cross_entropy(logits.float().transpose(1, 2), target_tokens)
    report = check_loss(in_float32, batch, preds=logits_for(batch),
                        reference=lambda logits, target_tokens: F.cross_entropy(logits.transpose(1, 2), target_tokens))
    assert by_name(report)["reference"].passed      # the value agrees; gradcheck says why float32 is too coarse
    assert [c.name for c in report.failed] == ["gradcheck"]


@pytest.mark.parametrize("holder", [float, torch.tensor, lambda v: torch.tensor([v]), lambda v: torch.tensor([[v]]),
                                    np.float32, np.float64, np.array],
                         ids=["float", "0-dim", "1-element", "1x1", "np.float32", "np.float64", "0-dim array"])
def test_add_close_compares_numbers_whatever_holds_them(holder):
    report = CheckReport("norms").add_close("norm", holder(0.75), 0.75).add_close("norms", [holder(0.5), holder(2.0)],
                                                                                    [0.5, 2.0])
    assert report, str(report)
    assert CheckReport("norms").add_close("norms", torch.tensor([0.5, 2.0]), (0.5, 2.0))  # a 1-dim tensor of them
    failed = CheckReport("norms").add_close("norms", [holder(0.5), holder(2.5)], [0.5, 2.0]).failed
    assert failed[0].explanation == "norms[1] is 2.5 but 2 is expected (rtol 1e-05)"


@pytest.mark.parametrize("got, says", [
    ([0.5, torch.tensor([2.0, 1.0])], "norms[1] is a tensor of shape (2,), not one number (expected 2)"),
    (None, "norms is None, not a sequence of numbers (expected [0.5, 2.0])"),
    ([0.5], "norms holds 1 number where 2 are expected: [0.5] against [0.5, 2.0]"),
    ([0.5, "2.0"], "norms[1] is str '2.0', not one number (expected 2)"),

])
def test_add_close_names_what_is_not_a_number_where_one_is_expected(got, says):
    report = CheckReport("norms").add_close("norms", got, [0.5, 2.0])
    assert not report and report.failed[0].explanation == says
