"""How models, losses and metrics get their inputs from a batch, by the names of their parameters.

A batch is a tuple `(x, y, *extra)` or a mapping (a Hugging Face style collated dict).

- The model gets `batch[:n_inp]` from a tuple, or, from a mapping, the keys its `forward` names.
- A loss (or metric) `f(output, a, b)` gets the model output first, then its other parameters:
  from a tuple, `batch[n_inp:]` in order; from a mapping, the keys `"a"` and `"b"`.
"""

import difflib
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from accelerate.utils import extract_model_from_parallel

from minilearn.data import is_mapping
from minilearn.exceptions import LossOutputError, MissingInputError
from minilearn.normalized_loss import LossTensor, NormalizedLoss

__all__ = ["float32_outputs", "model_inputs", "Signature", "signature_of", "LastCall", "model_input_names", "input_module",
           "model_call", "loss_call", "per_item_losses", "select_output",
           "split_loss_output",
           "store_loss", "callable_name"]


@dataclass(frozen=True)
class Signature:
    """What a callable asks for: the name of its first parameter, then the names (and which of
    them are required) of the parameters after it."""

    first: str | None
    names: tuple[str, ...]
    required: tuple[str, ...]
    takes_var_positional: bool


def callable_name(f: Callable) -> str:
    """A readable name for a loss, metric or model in error messages."""
    if isinstance(f, torch.nn.Module):
        return type(f).__name__
    return getattr(f, "__qualname__", None) or getattr(getattr(f, "func", None), "__qualname__", None) or repr(f)


def signature_of(f: Callable) -> Signature:
    """Read the parameters of `f` (for an `nn.Module`, of its `forward`).

    >>> signature_of(lambda logits, target_tokens, weights=None: 0)
    Signature(first='logits', names=('target_tokens', 'weights'), required=('target_tokens',), takes_var_positional=False)
    """
    fn = f.forward if isinstance(f, torch.nn.Module) else f
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # some builtins have no readable signature: pass inputs positionally
        return Signature(None, (), (), True)
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    first = positional[0].name if positional else None
    rest = positional[1:]
    return Signature(
        first=first,
        names=tuple(p.name for p in rest),
        required=tuple(p.name for p in rest if p.default is p.empty),
        takes_var_positional=any(p.kind is p.VAR_POSITIONAL for p in params),
    )


class LastCall:
    """`fn(x)` for the last `x` it was asked about, computed again only when asked about another
    object (compared by identity). The loop asks every batch for what depends only on the model or
    the loss (a signature, the model's input names); reading a signature or unwrapping a model costs
    more than a small training step, and the model or loss may still be swapped between batches.

    >>> names = LastCall(signature_of)
    >>> f = lambda logits, weights: 0
    >>> names(f) is names(f), names(f).names
    (True, ('weights',))
    """

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn
        self._of: Any = None
        self._result: Any = None
        self._done = False

    def __call__(self, x: Any) -> Any:
        if not self._done or self._of is not x:
            self._of, self._result, self._done = x, self.fn(x), True
        return self._result


def model_input_names(sig: Signature) -> tuple[str, ...]:
    """The keys of a mapping batch that go to a model whose `forward` has the signature `sig`: the
    names of all its parameters.

    >>> model_input_names(signature_of(lambda input_ids, attention_mask=None: 0))
    ('input_ids', 'attention_mask')
    """
    return ((sig.first,) if sig.first else ()) + sig.names


def model_inputs(model: Callable) -> tuple[str, ...]:
    """The keys of a mapping batch that go to `model`: the parameters its `forward` names, looked for in
    the module inside its wrappers (`input_module`).

    >>> model_inputs(lambda input_ids, attention_mask=None: 0)
    ('input_ids', 'attention_mask')
    """
    return model_input_names(signature_of(input_module(model)))


def float32_outputs(x: Any) -> Any:
    """Every half-precision floating tensor of a nested model output upcast to float32 (float64 stays), for a
    loss computed in float32 under mixed precision. `LinearLogits` pass unchanged: their log-probabilities
    are computed in float32 anyway, and an upcast copy of the output layer is what they exist to avoid."""
    if isinstance(x, torch.Tensor):
        return x.float() if x.is_floating_point() and x.element_size() < 4 else x
    if isinstance(x, tuple) and not hasattr(x, "_fields"):
        return tuple(float32_outputs(v) for v in x)
    if isinstance(x, dict):
        return {k: float32_outputs(v) for k, v in x.items()}
    if hasattr(x, "logits") and isinstance(x.logits, torch.Tensor):
        x.logits = float32_outputs(x.logits)
    return x


def input_module(model: Callable) -> Callable:
    """The module whose `forward` says what `model` takes: `model` without the wrappers that pass
    `*inputs, **kwargs` through to it (DistributedDataParallel, FSDP, DeepSpeed, `torch.compile`, and
    a PEFT model's base model), so a wrapped Hugging Face model still gets `input_ids` and
    `attention_mask` from a mapping batch.

    >>> lm = torch.nn.Linear(2, 2)
    >>> input_module(torch.compile(lm)) is lm
    True
    """
    if not isinstance(model, torch.nn.Module):
        return model
    model = extract_model_from_parallel(model, keep_torch_compile=False)
    base = getattr(model, "get_base_model", None)  # PEFT's wrappers
    return base() if callable(base) else model


def _keys(batch: Mapping) -> list[str]:
    return list(batch.keys())


def _nearest(names: tuple[str, ...], batch: Mapping) -> tuple[str, str] | None:
    # `(name, key)`: the name of `names` and the batch key nearest to each other, when they are close
    # (difflib's ratio at its usual cutoff, 0.6), for a "did you mean" in a MissingInputError.
    score, name, key = max(((difflib.SequenceMatcher(None, n, k).ratio(), n, k) for n in names
                            for k in batch.keys() if isinstance(k, str)), default=(0.0, "", ""))
    return (name, key) if score >= 0.6 else None


def model_call(model: Callable, batch: Any, n_inp: int, names: tuple[str, ...],
               defaults: Mapping[str, Any] | None = None) -> Any:
    """Call `model` on the inputs of `batch`: `batch[:n_inp]` of a tuple, or, as keyword arguments,
    the keys of a mapping that are in `names`, and `defaults` where the mapping has none of its own
    (TrainCB's `use_cache=False`)."""
    if is_mapping(batch):
        kwargs = {k: batch[k] for k in names if k in batch}
        if not kwargs:
            near = _nearest(names, batch)
            hint = f" (did you mean {near[0]!r} for the batch's {near[1]!r}?)" if near else ""
            raise MissingInputError(
                f"model {callable_name(model)} takes {list(names)} but the batch has none of them; "
                f"the batch has keys {_keys(batch)}{hint}. Pass TrainCB(model_inputs=[...]) to choose them.")
        return model(**(defaults | kwargs if defaults else kwargs))
    return model(*batch[:n_inp])


def select_output(output: Any, first: str | None) -> Any:
    """What a loss's first parameter receives from the model output: the field it names when the
    output has one (`logits`, `hidden_states`, ...), else `.logits` when the output is a Hugging Face
    `ModelOutput`, else the output unchanged (a tensor, or a tuple)."""
    if isinstance(output, torch.Tensor) or isinstance(output, tuple):
        return output
    if first is not None and isinstance(output, Mapping) and first in output:
        return output[first]
    if first is not None and hasattr(output, first) and not callable(getattr(output, first)):
        return getattr(output, first)
    if hasattr(output, "logits"):
        return output.logits
    return output


def loss_call(f: Callable, output: Any, batch: Any, n_inp: int, sig: Signature | None = None,
              kind: str = "loss") -> Any:
    """Call a loss (or metric) `f` with the model output and the inputs its parameters name.

    `sig` is `signature_of(f)`, passed in by callers that cache it (`LastCall`): reading a signature
    costs more than a small training step. Raises `MissingInputError` naming `f`, the missing input and what the
    batch has, and the batch key nearest to the missing name when one is close (`did you mean 'input_ids'?`).
    """
    sig = sig or signature_of(f)
    preds = select_output(output, sig.first)
    if is_mapping(batch):
        missing = [k for k in sig.required if k not in batch]
        if missing:
            near = _nearest(missing[:1], batch)
            raise MissingInputError(
                f"{kind} {callable_name(f)} needs the input {missing[0]!r} (its parameters after the "
                f"model output: {list(sig.names)}), but the batch has keys {_keys(batch)}"
                f"{f'; did you mean {near[1]!r}?' if near else ''}")
        return f(preds, **{k: batch[k] for k in sig.names if k in batch})
    extras = tuple(batch[n_inp:])
    if len(extras) < len(sig.required):
        missing = sig.required[len(extras)]
        raise MissingInputError(
            f"{kind} {callable_name(f)} needs the input {missing!r} (its parameters after the model "
            f"output: {list(sig.required)}), but the batch is a tuple of {len(batch)} items of which "
            f"the first {n_inp} go to the model, leaving {len(extras)}")
    if not sig.takes_var_positional:
        extras = extras[:len(sig.names)]
    return f(preds, *extras)


def per_item_losses(loss: Callable, output: Any, batch: Any, n_inp: int) -> torch.Tensor | None:
    """The loss of each item of `batch` from the loss's own per-item form, `loss.per_item`, which takes
    the loss's inputs and returns `(B,)`, the value the loss gives on each item alone (the plug-in token
    losses have one: a value per sequence); None when the loss has no such form.

    >>> from minilearn.losses import WeightedCrossEntropy
    >>> per_item_losses(WeightedCrossEntropy(), torch.zeros(2, 3, 4), {"target_tokens": torch.zeros(2, 3, dtype=torch.long)}, 1)
    tensor([1.3863, 1.3863])
    """
    fn = getattr(loss, "per_item", None)
    if fn is None:
        return None
    out = loss_call(fn, output, batch, n_inp, signature_of(fn))
    rows = next(v.shape[0] for v in (batch.values() if is_mapping(batch) else batch) if isinstance(v, torch.Tensor))
    if not isinstance(out, torch.Tensor) or out.shape != (rows,):
        raise LossOutputError(f"{callable_name(loss)}.per_item must return one value per item, shape ({rows},), got "
                              f"{tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__}")
    return out


def split_loss_output(out: Any, f: Callable) -> tuple[torch.Tensor, dict, LossTensor | None]:
    """Check what a loss returned and split it into `(scalar_tensor, metrics_dict, parts)`.

    A loss may return a scalar tensor, `(scalar, metrics)`, a `NormalizedLoss` or a `LossTensor`
    (what the plug-in losses return; a `NormalizedLoss` is turned into one here). `parts` is the
    `LossTensor` when it has a denominator (its `.total` and `.denominator` are what the step owner
    normalises by), else None: plain scalars and sums are averaged per micro-batch. The metrics are
    a `LossTensor`'s own, then those of `(loss, metrics)`.

    >>> loss, metrics, parts = split_loss_output(NormalizedLoss(torch.tensor(3.0), 2, {"n": 2}), None)
    >>> loss, metrics, parts.total, parts.denominator
    (LossTensor(1.5000), {'n': 2}, tensor(3.), tensor(2))
    >>> split_loss_output((torch.tensor(3.0), {"n": 2}), None)
    (tensor(3.), {'n': 2}, None)
    """
    if isinstance(out, NormalizedLoss):
        out = out.as_tensor()
    metrics: dict = {}
    if isinstance(out, tuple):
        if len(out) != 2 or not isinstance(out[1], Mapping):
            raise LossOutputError(
                f"loss {callable_name(f)} returned a tuple of {len(out)} items; expected a scalar tensor "
                f"or (scalar tensor, dict of metrics) or NormalizedLoss(total, denominator, metrics)")
        out, metrics = out
    if not isinstance(out, torch.Tensor):
        raise LossOutputError(f"loss {callable_name(f)} returned {type(out).__name__}; expected a scalar tensor")
    if out.ndim != 0:
        raise LossOutputError(
            f"loss {callable_name(f)} returned a tensor of shape {tuple(out.shape)}; expected a scalar "
            f"(0-dim) tensor: reduce it, for example with .mean() or .sum()")
    if isinstance(out, LossTensor):
        return out, {**out.metrics, **metrics}, None if out.is_sum else out
    return out, dict(metrics), None


def store_loss(learn, out: Any, f: Callable) -> None:
    """Check what loss `f` returned and put it on the learner: `learn.loss` (the scalar),
    `learn.loss_metrics` and `learn.loss_parts` (an object with `.total` and `.denominator`, the
    `LossTensor` itself, or None; see `split_loss_output`)."""
    learn.loss, learn.loss_metrics, learn.loss_parts = split_loss_output(out, f)
