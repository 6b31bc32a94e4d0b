"""`Learner.get_preds` and `Learner.top_losses`: the model's outputs over a whole data loader, the
targets beside them, and one loss per item, for looking at what the model gets right and wrong."""

from collections.abc import Mapping
from typing import Any, NamedTuple

import torch
from accelerate.data_loader import DataLoaderDispatcher, DataLoaderShard

from minilearn.data import batch_size, is_mapping, take_rows
from minilearn.distributed import cat_padded, world_size
from minilearn.inputs import input_module, model_input_names, signature_of
from minilearn.logprobs.linear import LinearLogits
from minilearn.logprobs.per_token import IGNORE_INDEX
from minilearn.train import TrainCB

__all__ = ["Predictions", "get_preds", "get_preds_with_inputs", "top_losses", "pad_value", "TARGET_KEYS"]

# Keys whose padding is "no target" rather than 0 (masks, weights, ids pad with 0).
TARGET_KEYS: tuple[str, ...] = ("target_tokens", "labels")


class Predictions(NamedTuple):
    """What `get_preds` returns: `preds`, the model outputs in dataset order (a tensor, a tuple of
    them, a `ModelOutput`, `LinearLogits`), `targets` (the non-model part of each batch: one tensor,
    a tuple, or a dict of the other keys) and `losses` (`(N,)`, one per item, or None)."""

    preds: Any
    targets: Any
    losses: torch.Tensor | None


def pad_value(key: str | None, t: torch.Tensor) -> float:
    """What pads `t` when sequences of different lengths are joined: `IGNORE_INDEX` for targets (the
    keys `target_tokens`, `labels`, or an integer item of a tuple batch), else 0.

    >>> pad_value("target_tokens", torch.zeros(2, dtype=torch.long)), pad_value("attention_mask", torch.zeros(2))
    (-100, 0)
    """
    if key is None:
        return 0 if t.is_floating_point() or t.dtype == torch.bool else IGNORE_INDEX
    return IGNORE_INDEX if key in TARGET_KEYS else 0


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


def _split(learn, batch: Any) -> tuple[Any, Any]:
    # (what the model takes, the rest): for a tuple batch one tensor each where there is one.
    if is_mapping(batch):
        train = next((cb for cb in learn.cbs if isinstance(cb, TrainCB)), None)
        names = train.model_input_names(learn.model) if train else model_input_names(
            signature_of(input_module(learn.model)))
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
        learn.preds = _row(preds, i, rows)
        learn.batch = take_rows(batch, slice(i, i + 1), rows)
        learn.get_loss()
        out.append(learn.loss.detach().as_subclass(torch.Tensor))
    learn.preds, learn.batch = preds, batch
    return out


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
    saved = (learn.dl, learn.training, learn.batch, learn.preds, learn.loss, learn.loss_parts, learn.loss_metrics)
    was_training = learn.model.training
    preds, targets, losses = [], [], []
    try:
        learn.model.eval()
        learn.training, learn.dl = False, dl
        with torch.no_grad():
            for learn.batch in dl:
                learn.callback("before_batch")  # devices: DeviceCB, AccelerateCB
                learn.predict()
                learn.callback("after_predict")  # AccelerateCB gathers the processes' outputs here
                preds.append(_detached(learn.preds))
                model_inputs, rest = _split(learn, learn.batch)
                targets.append(rest)
                if inputs is not None:
                    inputs.append(model_inputs)
                if with_loss:
                    owner = learn.step_owners["get_loss"]
                    own = owner.item_losses(learn) if hasattr(owner, "item_losses") else None
                    losses += list(own.detach()) if own is not None else _item_losses(learn, batch_size(learn.batch))
    finally:
        learn.model.train(was_training)
        learn.dl, learn.training, learn.batch, learn.preds, learn.loss, learn.loss_parts, learn.loss_metrics = saved
    if not preds:
        raise ValueError("get_preds was given a loader without batches")
    return Predictions(_join(preds), _join(targets), torch.stack(losses) if with_loss else None)


def top_losses(learn, k: int = 9, dl: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The indices (in `dl`'s order) and losses of the `k` items with the largest loss, largest first."""
    losses = get_preds(learn, dl, with_loss=True).losses
    values, indices = losses.topk(min(k, len(losses)))
    return indices, values
