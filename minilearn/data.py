"""Data helpers: a train/valid pair of data loaders, moving nested batches to a device, batch size."""

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["IGNORE_INDEX", "DataLoaders", "batches_in_pass", "to_device", "is_mapping", "is_per_row", "take_rows",
           "batch_size", "default_device", "describe", "looks_padded"]

# The target id of a position that predicts nothing (padding, a prompt): PyTorch's and Hugging Face's.
IGNORE_INDEX = -100
"""The target of a position where nothing is predicted (padding, a prompt): PyTorch's and Hugging Face's -100."""


def default_device() -> torch.device:
    """The device minilearn trains on when none is named: CUDA, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class DataLoaders:
    """A training and a validation iterable of batches: the simplest Learner `dls` (any object with
    `train` and `valid` iterables works).

    >>> dls = DataLoaders([(torch.zeros(2, 3), torch.zeros(2))], [])
    >>> len(dls.train), len(dls.valid)
    (1, 0)
    """

    def __init__(self, train: Iterable, valid: Iterable):
        self.train, self.valid = train, valid

    @classmethod
    def from_dsets(cls, train_ds: Dataset, valid_ds: Dataset, bs: int = 64,
                   collate_fn: Callable | None = None, **kwargs: Any) -> "DataLoaders":
        """Wrap two datasets in `torch.utils.data.DataLoader`s of batch size `bs`; the training one
        shuffles. `kwargs` go to both loaders (`num_workers`, `pin_memory`, ...). An empty training set
        is an error; an empty validation set a warning (the epochs would have no validation loss)."""
        if len(train_ds) == 0:
            raise ValueError(f"the training set is empty (len(train_ds) == 0, a {type(train_ds).__name__}): "
                             f"there is nothing to train on; check how the data was split or filtered")
        if len(valid_ds) == 0:
            warnings.warn(f"the validation set is empty (len(valid_ds) == 0, a {type(valid_ds).__name__}): the "
                          f"epochs will have no validation loss; for none on purpose, DataLoaders(train_loader, [])",
                          stacklevel=2)
        return cls(DataLoader(train_ds, batch_size=bs, shuffle=True, collate_fn=collate_fn, **kwargs),
                   DataLoader(valid_ds, batch_size=bs, shuffle=False, collate_fn=collate_fn, **kwargs))


def to_device(x: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """Move every tensor in a nested structure of tuples, lists and mappings to `device`;
    other values are returned unchanged. Tuples stay tuples and mappings keep their type where they can.

    >>> to_device({"ids": torch.zeros(2), "n": 3}, "cpu")
    {'ids': tensor([0., 0.]), 'n': 3}
    """
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=non_blocking)
    if isinstance(x, Mapping):
        moved = {k: to_device(v, device, non_blocking) for k, v in x.items()}
        try:
            return type(x)(moved)
        except TypeError:  # a mapping type that cannot be built from a dict
            return moved
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a namedtuple
        return type(x)(*(to_device(v, device, non_blocking) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_device(v, device, non_blocking) for v in x)
    return x


def is_mapping(batch: Any) -> bool:
    """Whether a batch is a mapping of names to values (a dict, a Hugging Face `BatchEncoding`)
    rather than a tuple or list `(x, y, ...)`.

    >>> is_mapping({"input_ids": torch.zeros(2, 3)}), is_mapping([torch.zeros(2, 3), torch.zeros(2)])
    (True, False)
    """
    # The tuple check first: it is the common case, and isinstance against an ABC costs a Python call.
    return not isinstance(batch, (tuple, list)) and isinstance(batch, Mapping)


def is_per_row(value: Any, n_rows: int) -> bool:
    """Whether `value` is a tensor with one entry per row of a batch of `n_rows` rows (first dim
    `n_rows`); what is not (a scalar, a vocabulary-wide table) belongs to the whole batch.

    >>> is_per_row(torch.zeros(4, 7), 4), is_per_row(torch.tensor(2.0), 4), is_per_row(torch.zeros(10), 4)
    (True, False, False)
    """
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == n_rows


def take_rows(batch: Any, rows: slice, n_rows: int) -> Any:
    """The part of `batch` (a mapping, or a tuple or list) in `rows`: every per-row tensor (see
    `is_per_row`) cut to `rows`, anything else as it is. A mapping comes back as a dict.

    >>> take_rows({"ids": torch.arange(6).view(3, 2), "scale": torch.tensor(2.0)}, slice(1, 3), 3)
    {'ids': tensor([[2, 3],
            [4, 5]]), 'scale': tensor(2.)}
    """
    def cut(v):
        return v[rows] if is_per_row(v, n_rows) else v
    if is_mapping(batch):
        return {k: cut(v) for k, v in batch.items()}
    return type(batch)(cut(v) for v in batch)


def batch_size(batch: Any) -> int:
    """The number of samples in a batch: the length of its first tensor (first item of a tuple,
    first tensor value of a mapping)."""
    items = batch.values() if is_mapping(batch) else batch
    for v in items:
        if isinstance(v, torch.Tensor):
            return v.shape[0] if v.ndim else 1
        if isinstance(v, (list, tuple)):
            return len(v)
    raise ValueError(f"cannot tell the batch size of a batch of type {type(batch).__name__} with no tensor in it")


def describe(x: Any) -> str:
    """A short description of a nested batch or model output for error messages (tensors: dtype, shape).

    >>> describe((torch.zeros(4, 3), {"ids": torch.zeros(4, dtype=torch.long)}, 7))
    '(float32 (4, 3), {ids: int64 (4,)}, int)'
    """
    if isinstance(x, torch.Tensor):
        return f"{str(x.dtype).removeprefix('torch.')} {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k}: {describe(v)}" for k, v in x.items()) + "}"
    if isinstance(x, (list, tuple)):
        inner = ", ".join(describe(v) for v in x)
        return f"[{inner}]" if isinstance(x, list) else f"({inner})"
    if hasattr(x, "logits"):
        return f"{type(x).__name__}(logits: {describe(x.logits)})"
    return type(x).__name__


def looks_padded(input_ids: Any) -> tuple[str, int] | None:
    """`(side, token)` when the rows of `input_ids` `(B, T)` look padded with `token` on `side`
    (`"right"` or `"left"`), else None: for a batch with no `attention_mask`, where padding would pass
    for text.

    Right padding: a token found only in runs at the ends of rows, of different lengths, at least
    `max(2, B / 4)` of them of length 2 or more (left padding: the same at the starts). Text or random
    tokens practically never look like that; padding of a single row, or by one token, goes unseen.

    >>> looks_padded(torch.tensor([[5, 6, 0, 0], [7, 8, 0, 0], [7, 8, 9, 1]]))
    ('right', 0)
    >>> looks_padded(torch.tensor([[2, 2, 5, 6], [2, 2, 2, 8], [4, 7, 9, 1]]))
    ('left', 2)
    >>> looks_padded(torch.tensor([[5, 6, 0, 0], [7, 8, 0, 1], [7, 8, 9, 0]])) is None   # 0 inside a row
    True
    """
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
        return None
    enough = max(2, -(-input_ids.shape[0] // 4))
    for side, ids in (("right", input_ids), ("left", input_ids.flip(1))):
        for token in ids[:, -1].unique().tolist():
            is_token = ids == token
            runs = is_token.flip(1).cumprod(1).sum(1)  # the length of each row's run of `token` at its end
            if (runs >= 2).sum() >= enough and runs.min() < runs.max() and is_token.sum() == runs.sum():
                return side, token
    return None


def batches_in_pass(loader: Any, needed_by: str) -> int | None:
    """The number of batches of a pass over `loader`, for `needed_by` (a callback whose last accumulation
    window must end with the pass); None for a `DataLoader` without a length (Accelerate's prepared
    loader then marks its last batch); any other loader without `len()` is refused."""
    try:
        return len(loader)
    except TypeError:
        if isinstance(loader, DataLoader):
            return None
        raise TypeError(f"{needed_by} needs to know where a training pass ends, so that its last micro-batches still "
                        f"make a step, but the training loader ({type(loader).__name__}) has no len(): pass a "
                        f"DataLoader or a list of batches") from None
