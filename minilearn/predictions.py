"""`Learner.get_preds` and `Learner.top_losses`: the model's outputs over a whole data loader, the
targets beside them, and one loss per item, for looking at what the model gets right and wrong."""

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import torch
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

from minilearn.callback import replacing
from minilearn.data import batch_size, is_mapping, take_rows
from minilearn.distributed import PADDING, cat_padded, pad_across_processes, pad_value, world_size
from minilearn.inputs import model_inputs
from minilearn.logprobs.linear import LinearLogits
from minilearn.sampling.sample import eval_mode

__all__ = ["Predictions", "get_preds", "get_preds_with_inputs", "top_losses", "gather_valid_batch"]


class Predictions(NamedTuple):
    """What `get_preds` returns: `preds`, the model outputs in dataset order (a tensor, a tuple of
    them, a `ModelOutput`, `LinearLogits`), `targets` (the non-model part of each batch: one tensor,
    a tuple, or a dict of the other keys) and `losses` (`(N,)`, one per item, or None)."""

    preds: Any
    targets: Any
    losses: torch.Tensor | None


def _join(parts: list, key: str | None = None) -> Any:
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return cat_padded(parts, pad_value(key, first)) if first.ndim else torch.stack(parts)
    if isinstance(first, LinearLogits):
        return LinearLogits(cat_padded([p.hidden for p in parts]), first.weight, first.bias)
    if isinstance(first, Mapping):
        joined = {k: _join([p[k] for p in parts], k) for k, v in first.items() if isinstance(v, torch.Tensor)}
        return joined if type(first) is dict else type(first)(**joined)
    if isinstance(first, tuple):
        return tuple(_join([p[i] for p in parts]) for i in range(len(first)))
    return parts


def _input_names(learn) -> tuple[str, ...]:
    # The keys of a mapping batch the model takes: those the owner of predict passes (TrainCB's `model_inputs`),
    # else those its forward names.
    owner = learn.step_owners["predict"]
    return owner.model_input_names(learn.model) if hasattr(owner, "model_input_names") else model_inputs(learn.model)


def _split(learn, batch: Any, names: tuple[str, ...]) -> tuple[Any, Any]:
    # (what the model takes, the rest): for a tuple batch one tensor each where there is one.
    if is_mapping(batch):
        return ({k: v for k, v in batch.items() if k in names}, {k: v for k, v in batch.items() if k not in names})
    inputs, rest = tuple(batch[:learn.n_inp]), tuple(batch[learn.n_inp:])
    return inputs[0] if len(inputs) == 1 else inputs, rest[0] if len(rest) == 1 else rest


def _detached(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, LinearLogits):
        return LinearLogits(x.hidden.detach(), x.weight.detach(), None if x.bias is None else x.bias.detach())
    if isinstance(x, Mapping):
        out = {k: _detached(v) for k, v in x.items()}
        return out if type(x) is dict else type(x)(**out)
    if isinstance(x, tuple):
        return tuple(_detached(v) for v in x)
    return x


def _row(preds: Any, i: int, rows: int) -> Any:
    # Item i of a model output, keeping its kind.
    if isinstance(preds, torch.Tensor):
        return preds[i:i + 1]
    if isinstance(preds, LinearLogits):
        return LinearLogits(preds.hidden[i:i + 1], preds.weight, preds.bias)
    if isinstance(preds, Mapping) and type(preds) is not dict:  # a ModelOutput
        return type(preds)(**take_rows(preds, slice(i, i + 1), rows))
    return take_rows(preds, slice(i, i + 1), rows)


def _item_losses(learn, rows: int) -> list[torch.Tensor]:
    # The loss owner called on each item alone: the loss of that item, whatever the loss is (for a
    # loss without a per-item form of its own).
    preds, batch, out = learn.preds, learn.batch, []
    for i in range(rows):
        with replacing(learn, preds=_row(preds, i, rows), batch=take_rows(batch, slice(i, i + 1), rows)):
            learn.get_loss()
            out.append(learn.loss.detach().as_subclass(torch.Tensor))
    return out


def _batch_losses(learn) -> list[torch.Tensor]:
    # From the loss's per-item form where the owner of get_loss has one, else the loss of each item alone.
    owner = learn.step_owners["get_loss"]
    own = owner.item_losses(learn) if hasattr(owner, "item_losses") else None
    return list(own.detach()) if own is not None else _item_losses(learn, batch_size(learn.batch))


def get_preds(learn, dl: Any = None, with_loss: bool = False) -> Predictions:
    """The model's outputs over `dl` (default `learn.dls.valid`), in dataset order, with the targets and,
    when `with_loss`, one loss per item; see `Learner.get_preds`."""
    return _predict(learn, dl, with_loss, None)


def get_preds_with_inputs(learn, dl: Any = None, with_loss: bool = True) -> tuple[Any, Predictions]:
    """`(inputs, get_preds(learn, dl, with_loss))` from one pass: the model inputs of every item too
    (a tensor for a tuple batch with one input, a tuple or dict of them otherwise), in the same order,
    on the device they were given to the model (gathered from every process under AccelerateCB), for
    showing the items beside what the model made of them (`ClassificationInterpretation`)."""
    inputs: list = []
    preds = _predict(learn, dl, with_loss, inputs)
    return _join(inputs), preds


def _predict(learn, dl: Any, with_loss: bool, inputs: list | None) -> Predictions:
    dl = learn.dls.valid if dl is None else dl
    if world_size() > 1 and not isinstance(dl, (DataLoaderShard, DataLoaderDispatcher)):
        raise ValueError(f"under {world_size()} processes get_preds needs a loader Accelerate prepared (so that each "
                         f"process predicts its share and the shares are gathered once): learn.dls.valid after a fit "
                         f"with AccelerateCB, or accelerator.prepare(dl); got a {type(dl).__name__}")
    preds, targets, losses, names = [], [], [], _input_names(learn)
    # A validation pass's batch events and steps, without the epoch's: the owners of predict and get_loss,
    # the device and gathering callbacks run as in validation, and cleanup_batch however a batch ends.
    with replacing(learn, dl=dl, training=False, iter=0, batch=None, preds=None, loss=None, loss_parts=None,
                   loss_metrics={}), eval_mode(learn.model):
        for learn.iter, learn.batch in enumerate(dl):
            try:
                learn.callback("before_batch")
                learn.predict()
                learn.callback("after_predict")  # AccelerateCB gathers the processes' outputs here
                model_input, rest = _split(learn, learn.batch, names)
                preds.append(_detached(learn.preds))
                targets.append(rest)
                if inputs is not None:
                    inputs.append(model_input)
                if with_loss:
                    losses += _batch_losses(learn)
            finally:
                learn.callback("cleanup_batch")
    if not preds:
        raise ValueError("get_preds was given a loader without batches")
    return Predictions(_join(preds), _join(targets), torch.stack(losses) if with_loss else None)


def gather_valid_batch(gather: Callable, preds: Any, batch: Any, padding: Mapping[str, float] = PADDING) -> tuple[Any, Any]:
    """`(preds, batch)` of every process joined, for validation metrics over the whole set: `gather` is
    Accelerate's `gather_for_metrics` (which drops the duplicates even sharding adds). Each tensor is first
    padded to the longest on any process (`padding` per key; a tuple batch pads integer tensors as targets).
    Model outputs of any kind: a tensor, a tuple, a Hugging Face `ModelOutput`, `LinearLogits` (every process
    holds the same output layer: only the hidden states are gathered)."""
    if is_mapping(batch):
        batch = {k: pad_across_processes(v, padding.get(k, 0)) if isinstance(v, torch.Tensor) else v
                 for k, v in batch.items()}
    else:
        batch = type(batch)(pad_across_processes(v, pad_value(None, v)) if isinstance(v, torch.Tensor) else v
                            for v in batch)
    if isinstance(preds, LinearLogits):
        hidden, batch = gather((pad_across_processes(preds.hidden), batch))
        return LinearLogits(hidden, preds.weight, preds.bias), batch
    if isinstance(preds, Mapping):  # a ModelOutput: its tensors (a cache object stays behind)
        gathered, batch = gather(({k: pad_across_processes(v) for k, v in preds.items() if isinstance(v, torch.Tensor)},
                                  batch))
        return type(preds)(**gathered), batch
    if isinstance(preds, tuple):
        return gather((tuple(pad_across_processes(v) for v in preds), batch))
    return gather((pad_across_processes(preds), batch))


def top_losses(learn, k: int = 9, dl: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (in `dl`'s order) and losses of the `k` items with the largest loss, largest first."""
    losses = get_preds(learn, dl, with_loss=True).losses
    values, indices = losses.topk(min(k, len(losses)))
    return indices, values
