"""check_loss: run a loss written for minilearn on a sample batch and report, check by check, what is
right and what is wrong with it, before a grader or a long training run finds out."""

from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from accelerate.state import AcceleratorState, GradientState, PartialState
from torch import nn
from torch.autograd.gradcheck import GradcheckError

from minilearn.callback import Callback
from minilearn.callbacks import AccelerateCustomCB, LossCB
from minilearn.data import DataLoaders, is_mapping, take_rows
from minilearn.distributed import trains_alone
from minilearn.exceptions import LossOutputError, MissingInputError
from minilearn.inputs import Signature, callable_name, loss_call, signature_of, split_loss_output
from minilearn.learner import Learner
from minilearn.normalized_loss import LossTensor, NormalizedLoss
from minilearn.order import Order
from minilearn.testing.mistakes import _UPCAST_HINT, loss_mistakes
from minilearn.testing.report import CheckReport

__all__ = ["check_loss", "sample_preds", "LOSS_CHECKS"]

LOSS_CHECKS: tuple[str, ...] = ("inputs", "scalar", "differentiable", "gradcheck", "reference", "accelerate",
                                "accumulation", "bf16")
"""The names of `check_loss`'s checks, in the order it runs them (`skip=` takes any of them)."""

# Gradients of float32 training steps over the same rows, summed in another order, agree to ~1e-7.
_STEP_TOLERANCE = 1e-4
# How closely a value matches a mistake computed in each precision (float64 as closely as the reference).
_MATCH_RTOL = {torch.float64: 1e-6, torch.float32: 1e-5}


def _name(f: Callable) -> str:
    # A loss defined inside a function is named without the `outer.<locals>.` of its qualified name.
    return callable_name(f).rsplit("<locals>.", 1)[-1]


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _error(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


def _bindings(sig: Signature, preds: torch.Tensor, batch: Any, n_inp: int) -> str:
    """Which argument of the loss gets what, e.g. `logits <- preds (4, 6, 11); weights <- batch['weights'] (4, 6)`."""
    parts = [f"{sig.first or 'its first argument'} <- preds {_shape(preds)}"]
    if is_mapping(batch):
        parts += [f"{k} <- batch[{k!r}] {_shape(batch[k])}" for k in sig.names if k in batch]
    else:
        parts += [f"{k} <- batch[{i}] {_shape(batch[i])}" for i, k in enumerate(sig.names, start=n_inp) if i < len(batch)]
    return "; ".join(parts)


def sample_preds(loss: Callable, batch: Any, n_inp: int = 1, seed: int = 0) -> torch.Tensor:
    """Random float64 model outputs to check `loss` on when none are given, shaped from the first
    tensor input the loss takes from `batch`: logits `(*t.shape, V)` for integer targets `t`
    (`V` one more than the largest id, at least 2; negative ids such as -100 are ignored), or a
    tensor of the shape of a floating-point target (regression). Standard normal, seeded.

    >>> sample_preds(lambda logits, target_tokens: 0, {"target_tokens": torch.tensor([[4, 1, -100]])}).shape
    torch.Size([1, 3, 5])
    >>> sample_preds(torch.nn.functional.mse_loss, (torch.zeros(8, 3), torch.zeros(8, 1))).shape
    torch.Size([8, 1])
    """
    g, sig = torch.Generator().manual_seed(seed), signature_of(loss)
    for t in [batch[k] for k in sig.names if k in batch] if is_mapping(batch) else batch[n_inp:]:
        if not isinstance(t, torch.Tensor) or t.dtype == torch.bool or t.is_complex():
            continue
        if t.is_floating_point():
            return torch.randn(t.shape, generator=g, dtype=torch.float64)
        vocab = max(int(t.max()) + 1 if t.numel() else 0, 2)
        return torch.randn((*t.shape, vocab), generator=g, dtype=torch.float64)
    raise ValueError(f"check_loss cannot guess the model output for {_name(loss)}: none of the inputs it "
                     f"takes from the batch ({_bindings(sig, torch.empty(0), batch, n_inp)}) is a "
                     f"numeric tensor; pass preds=<a model output>")


def _value(loss: Callable, preds: torch.Tensor, batch: Any, n_inp: int, sig: Signature) -> torch.Tensor:
    return split_loss_output(loss_call(loss, preds, batch, n_inp, sig), loss)[0]


def _relative_gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(torch.finfo(b.dtype).tiny)).item()


class _PredsModel(nn.Module):
    """A model whose output is its one parameter, so a training step's gradient is the loss's
    gradient with respect to the model output."""

    def __init__(self, preds: torch.Tensor):
        super().__init__()
        self.preds = nn.Parameter(preds.detach().clone())

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.preds


class _ServePreds(Callback):
    """Gives micro-batch `i` the rows `row_slices[i]` of the model output; keeps the stepped gradient."""

    order = Order.CHECK_PREDICT

    def __init__(self, param: nn.Parameter, row_slices: list[slice]):
        self.param, self.row_slices, self.grad = param, row_slices, None

    def predict(self, learn):
        learn.preds = self.param[self.row_slices[learn.iter]]

    def after_step(self, learn):
        self.grad = self.param.grad.detach().clone()


@contextmanager
def _accelerate_state_kept():
    # Building an AccelerateCB starts Accelerate's process-wide state afresh; put back what was there,
    # so that an AccelerateCB the user built before the check still runs after it.
    states = (PartialState, AcceleratorState, GradientState)
    saved = [dict(s._shared_state) for s in states]
    try:
        yield
    finally:
        for state, kept in zip(states, saved):
            state._shared_state.clear()
            state._shared_state.update(kept)


def _step_gradient(preds: torch.Tensor, batch: Any, n_parts: int, step_owner: Callback, n_inp: int) -> torch.Tensor:
    """The gradient of one optimizer step with `step_owner` over `batch` cut into `n_parts` micro-batches."""
    n = preds.shape[0]
    cuts = [round(i * n / n_parts) for i in range(n_parts + 1)]
    row_slices = [slice(a, b) for a, b in zip(cuts, cuts[1:])]
    model = _PredsModel(preds)
    serve = _ServePreds(model.preds, row_slices)
    learn = Learner(model, DataLoaders([take_rows(batch, s, n) for s in row_slices], []), lr=0.0,
                    cbs=[serve, step_owner], n_inp=n_inp)
    learn.fit(1, valid=False)
    return serve.grad


def _check_split(report: CheckReport, name: str, loss: Callable, preds: torch.Tensor, batch: Any, n_inp: int,
                 n_parts: int, plain: torch.Tensor) -> None:
    what = ("under AccelerateCustomCB" if n_parts == 1 else
            f"over {n_parts} micro-batches (AccelerateCustomCB(gradient_accumulation_steps={n_parts}))")
    try:
        with _accelerate_state_kept():
            grad = _step_gradient(preds, batch, n_parts, AccelerateCustomCB(loss, gradient_accumulation_steps=n_parts),
                                  n_inp)
    except Exception as e:
        report.add(name, False, f"a training step {what} raised {_error(e)}")
        return
    gap = _relative_gap(grad, plain)
    if gap <= _STEP_TOLERANCE:
        same = "the plain loop's gradient" if n_parts == 1 else "the whole batch's gradient"
        report.add(name, True, f"a training step {what} gives {same} (relative gap {gap:.1e})")
    elif n_parts == 1:
        report.add(name, False, f"a training step {what} gives another gradient than the plain loop "
                                f"(relative gap {gap:.2g})")
    elif _relative_gap(grad * n_parts, plain) <= _STEP_TOLERANCE:
        # Plain losses are averaged over a step's micro-batches, so a sum loses only a constant factor.
        report.add(name, True, f"a sum: a training step {what} gives 1/{n_parts} of the whole batch's gradient, the "
                               f"same direction (plain losses are averaged over micro-batches)")
    else:
        report.add(name, False,
                   f"a training step {what} gives another gradient than the whole batch (relative gap {gap:.2g}): "
                   f"the loss averages within each micro-batch; if it divides a sum by a count or a sum of weights, "
                   f"return NormalizedLoss(total=the sum, denominator=the count) so the step divides by the "
                   f"total over the whole step")


def check_loss(loss: Callable, batch: Any, preds: torch.Tensor | None = None, reference: Callable | None = None,
               n_inp: int = 1, skip: Iterable[str] = (), mistakes: Mapping[str, Callable] | None = None) -> CheckReport:
    """Run `loss` (an `nn.Module` or a function `loss(preds, *named inputs)`, see `minilearn.inputs`)
    on a sample `batch` and report each check with pass/fail and a one-line explanation:

    - `inputs`: the inputs it names resolve from the batch; `scalar`: it returns a finite scalar,
      `(scalar, metrics)`, a `NormalizedLoss` or a `LossTensor`;
    - `differentiable`: a finite, not everywhere zero gradient with respect to `preds`, which
      `gradcheck` compares with finite differences in float64;
    - `reference`: it equals `reference` in value and gradient; a differing value is named with the
      one of `mistakes` (default `loss_mistakes(reference)`) it matches;
    - `accelerate`, `accumulation`: a training step under `AccelerateCustomCB`, whole or in two
      micro-batches, gives the plain loop's gradient; `bf16`: bfloat16 `preds` compute in float32.

    `batch`: a tuple `(x, y, *extra)` (the loss gets the items after the first `n_inp`) or a mapping.
    `preds`: the model output the loss gets, a floating-point tensor whose first dimension is the
    batch's; when None, random logits shaped from the batch (`sample_preds`). `skip`: names of checks
    not to run. A loss that fails `inputs`, `scalar` or `differentiable` ends the report there.

    >>> import torch.nn.functional as F
    >>> batch = (torch.randn(6, 3), torch.randint(0, 4, (6,)))     # (x, y): the loss gets y
    >>> report = check_loss(F.cross_entropy, batch)                # preds: random logits (6, 4)
    >>> bool(report), [c.name for c in report.failed]              # it computes in bfloat16
    (False, ['bf16'])
    >>> def upcast_ce(logits, y): return F.cross_entropy(logits.float() if logits.element_size() < 4 else logits, y)
    >>> bool(check_loss(upcast_ce, batch, reference=F.cross_entropy))
    True
    """
    unknown = set(skip) - set(LOSS_CHECKS)
    if unknown:
        raise ValueError(f"skip names unknown checks {sorted(unknown)}; the checks are {LOSS_CHECKS}")
    if preds is None:
        preds = sample_preds(loss, batch, n_inp)
    if not isinstance(preds, torch.Tensor) or not preds.is_floating_point() or preds.ndim == 0:
        raise TypeError(f"preds must be a floating-point tensor with a batch dimension (the model output the loss "
                        f"receives), got {_shape(preds)} {getattr(preds, 'dtype', '')}".rstrip())
    report = CheckReport(f"check_loss({_name(loss)})")
    sig = signature_of(loss)
    runs = [name for name in LOSS_CHECKS if name not in skip]
    preds64 = preds.detach().to(torch.float64)
    x = preds64.clone().requires_grad_()
    try:
        out = loss_call(loss, x, batch, n_inp, sig)
    except MissingInputError as e:
        return report.add("inputs", False, str(e))
    except Exception as e:
        report.add("inputs", True, _bindings(sig, x, batch, n_inp))
        return report.add("scalar", False, f"{_name(loss)} raised {_error(e)}")
    report.add("inputs", True, _bindings(sig, x, batch, n_inp))

    try:
        value, metrics, parts = split_loss_output(out, loss)
    except LossOutputError as e:
        return report.add("scalar", False, str(e))
    if not torch.isfinite(value):
        return report.add("scalar", False, f"returned {value.item()} on float64 preds: look for log(0), 0/0 or exp "
                                           f"overflow (log_softmax and logsumexp are the stable forms)")
    bad = [k for k, v in metrics.items() if not (isinstance(v, (int, float)) or
                                                 (isinstance(v, torch.Tensor) and v.numel() == 1))]
    if bad:
        return report.add("scalar", False, f"the metric {bad[0]!r} is a {_shape(metrics[bad[0]])}; metrics must be "
                                           f"numbers or one-element tensors")
    form = ("NormalizedLoss(total, denominator)" if isinstance(out, NormalizedLoss) else
            "a LossTensor with total and denominator" if parts is not None else
            f"a LossTensor sum with metrics {sorted(metrics)}" if isinstance(out, LossTensor) else
            f"(scalar, metrics {sorted(metrics)})" if isinstance(out, tuple) else "a scalar")
    report.add("scalar", True, f"returns {form}: {value.item():.6g}")

    grad = torch.autograd.grad(value, x, allow_unused=True)[0] if value.requires_grad else None
    if grad is None:
        return report.add("differentiable", False,
                          "the value has no gradient with respect to preds: something cut the graph (.detach(), "
                          ".item(), .numpy(), torch.tensor(...) of a computed value, or torch.no_grad())")
    if not torch.isfinite(grad).all():
        return report.add("differentiable", False, f"the gradient holds {grad[~torch.isfinite(grad)][0].item()} at "
                                                   f"preds{tuple(torch.nonzero(~torch.isfinite(grad))[0].tolist())}")
    if not grad.any():
        return report.add("differentiable", False, "the gradient with respect to preds is zero everywhere: the value "
                                                   "does not depend on preds (or only through argmax, round, ...)")
    report.add("differentiable", True, f"gradient with respect to preds of norm {grad.norm().item():.4g}")

    def value_of(p):
        return _value(loss, p, batch, n_inp, sig)

    if "gradcheck" in runs and value.dtype != torch.float64:
        report.add("gradcheck", False, f"float64 preds give a {value.dtype} loss, too coarse to compare with finite "
                                       f"differences: upcast only half precision ({_UPCAST_HINT}) or use "
                                       f"minilearn.losses.token_logprobs")
    elif "gradcheck" in runs:
        try:
            # Past a few thousand numbers the full Jacobian costs too many calls; fast mode
            # compares it along random directions instead.
            torch.autograd.gradcheck(value_of, (x.detach().requires_grad_(),), eps=1e-6, atol=1e-5, rtol=1e-3,
                                     fast_mode=preds.numel() > 2000)
            report.add("gradcheck", True, "the float64 gradient matches finite differences")
        except GradcheckError:
            report.add("gradcheck", False, "the gradient differs from finite differences in float64: part of the "
                                           "graph is cut (a .detach() on a term that depends on preds) or a "
                                           "custom backward is wrong; skip=('gradcheck',) if on purpose")
        except Exception as e:
            report.add("gradcheck", False, f"gradcheck raised {_error(e)}")

    if "reference" in runs:
        _check_reference(report, value, grad, reference, mistakes, preds64, batch, n_inp)

    splits = {name: n for name, n in (("accelerate", 1), ("accumulation", 2)) if name in runs}
    one_process = trains_alone()
    preds32 = preds.detach().float()
    plain = _step_gradient(preds32, batch, 1, LossCB(loss), n_inp) if splits and one_process else None
    for name, n_parts in splits.items():
        if not one_process:
            report.add(name, None, "runs in a single process only")
        elif n_parts > 1 and preds.shape[0] < 2:
            report.add(name, None, "needs a batch of at least 2 rows")
        else:
            _check_split(report, name, loss, preds32, batch, n_inp, n_parts, plain)

    if "bf16" in runs:
        _check_bf16(report, value_of, preds)
    return report


def _check_reference(report: CheckReport, value: torch.Tensor, grad: torch.Tensor, reference: Callable | None,
                     mistakes: Mapping[str, Callable] | None, preds: torch.Tensor, batch: Any, n_inp: int) -> None:
    if reference is None:
        report.add("reference", None, "no reference given")
        return
    sig = signature_of(reference)
    x = preds.detach().clone().requires_grad_()
    try:
        ref_value = _value(reference, x, batch, n_inp, sig)
        ref_grad = torch.autograd.grad(ref_value, x)[0]
    except Exception as e:
        report.add("reference", False, f"the reference {_name(reference)} raised {_error(e)}")
        return
    # Compared as numbers: a float32 value against a float64 reference is a difference of precision, not of type.
    value, ref_value = value.detach().double(), ref_value.detach()
    if not torch.allclose(value, ref_value.double(), rtol=1e-6, atol=1e-8):
        mistake = _matching_mistake(value, loss_mistakes(reference) if mistakes is None else mistakes,
                                    preds, batch, n_inp, sig)
        report.add("reference", False, f"value {value.item():.8g} but the reference {_name(reference)} gives "
                                       f"{ref_value.item():.8g}{mistake}")
    elif (gap := _relative_gap(grad, ref_grad)) > 1e-6:
        report.add("reference", False, f"the values agree but the gradients differ (relative gap {gap:.2g})")
    else:
        report.add("reference", True, f"equals {_name(reference)} in value and gradient (float64)")


def _matching_mistake(value: torch.Tensor, mistakes: Mapping[str, Callable], preds: torch.Tensor, batch: Any,
                      n_inp: int, sig: Signature) -> str:
    """`: your value matches the loss <mistake>` for the mistake nearest to `value` within the precision
    it computes in; empty when none matches."""
    nearest = None
    for name, wrong in mistakes.items():
        try:
            with torch.no_grad():
                got = _value(wrong, preds, batch, n_inp, sig)
        except Exception:  # a mistake that cannot happen on this batch
            continue
        gap = (value - got.double()).abs().item()
        if gap <= 1e-8 + _MATCH_RTOL.get(got.dtype, 1e-2) * got.abs().item() and (nearest is None or gap < nearest[0]):
            nearest = gap, name
    return f": your value matches the loss {nearest[1]}" if nearest else ""


def _check_bf16(report: CheckReport, value_of: Callable, preds: torch.Tensor) -> None:
    low = preds.detach().to(torch.bfloat16)
    try:
        got, want = value_of(low).detach(), value_of(low.float()).detach()
    except Exception as e:
        report.add("bf16", False, f"raised {_error(e)} with bfloat16 preds")
        return
    if got.dtype in (torch.float16, torch.bfloat16):
        report.add("bf16", False, f"bfloat16 preds give a {got.dtype} loss: compute in float32, upcasting the preds "
                                  f"first ({_UPCAST_HINT}) or with minilearn.losses.token_logprobs")
    elif not torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6):
        report.add("bf16", False, f"bfloat16 preds give {got.item():.6g} but the same values in float32 give "
                                  f"{want.item():.6g}: part of the loss still computes in bfloat16; upcast the preds "
                                  f"before the first operation")
    else:
        report.add("bf16", True, f"bfloat16 preds give a {got.dtype} loss equal to the float32 computation")
