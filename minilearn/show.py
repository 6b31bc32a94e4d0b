"""Pictures of a few items: `show_items` draws images as a grid and feature rows as a table, each with
a caption; `show_batch` draws the first items of a batch with their targets.

A `show` function is called as `show(xs, captions) -> Figure`, `xs` the items (`(N, ...)`, on the CPU),
`captions` one string an item: pass your own for inputs these defaults do not draw (text, audio).
"""

from collections.abc import Callable, Sequence
from typing import Any

import torch

from minilearn.data import batch_size, is_mapping, take_rows, to_device

__all__ = ["show_images", "show_table", "show_items", "show_batch", "caption", "ShowFn"]

ShowFn = Callable[[Any, Sequence[str]], Any]


def show_images(xs: torch.Tensor, captions: Sequence[str], ncols: int = 6, size: float = 1.6):
    """A grid of images, one caption above each; `xs` `(N, H, W)` (grey) or `(N, C, H, W)` with C 1 or 3
    (channels first, as PyTorch keeps them; colour values in [0, 1]). Returns the figure."""
    import matplotlib.pyplot as plt
    if xs.ndim == 4:
        xs = xs[:, 0] if xs.shape[1] == 1 else xs.permute(0, 2, 3, 1).clamp(0, 1)
    rows, cols = -(-len(xs) // ncols), min(ncols, len(xs))
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols, size * rows + 0.3 * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, x, text in zip(axes.flat, xs, captions):
        ax.imshow(x.float().numpy(), cmap="gray_r" if x.ndim == 2 else None)
        ax.set_title(text, fontsize=9)
    return fig


def show_table(xs: torch.Tensor, captions: Sequence[str], max_columns: int = 8):
    """A table of feature rows, `xs` `(N, F)`, the caption of each row in a last column (the first
    `max_columns` features shown, then `...`). Returns the figure."""
    import matplotlib.pyplot as plt
    shown = min(xs.shape[1], max_columns)
    more = ["..."] if xs.shape[1] > shown else []
    header = [f"x{j}" for j in range(shown)] + more + [""]
    cells = [[f"{v:.3g}" for v in row[:shown].tolist()] + more + [text] for row, text in zip(xs.float(), captions)]
    fig, ax = plt.subplots(figsize=(0.8 * len(header) + 1.5, 0.3 * (len(cells) + 1) + 0.2), layout="constrained")
    ax.set_axis_off()
    ax.table(cellText=cells, colLabels=header, loc="center")
    return fig


def show_items(xs: Any, captions: Sequence[str]):
    """The default `show`: `show_images` for `(N, H, W)` or `(N, C, H, W)` tensors (C 1 or 3),
    `show_table` for `(N, F)`; anything else is refused with the shape it got."""
    if isinstance(xs, torch.Tensor) and (xs.ndim == 3 or (xs.ndim == 4 and xs.shape[1] in (1, 3))):
        return show_images(xs, captions)
    if isinstance(xs, torch.Tensor) and xs.ndim == 2:
        return show_table(xs, captions)
    got = f"a tensor of shape {tuple(xs.shape)}" if isinstance(xs, torch.Tensor) else f"a {type(xs).__name__}"
    raise ValueError(f"no default picture for inputs that are {got}: the defaults draw (N, H, W) or (N, C, H, W) "
                     f"images (C 1 or 3) and (N, F) tables; pass show=your_function(xs, captions) -> Figure")


def caption(y: Any, vocab: Sequence[str] | None = None) -> str:
    """How an item's target is written: its class name from `vocab` for a class id, else the number
    (or the values) it holds."""
    if isinstance(y, torch.Tensor) and y.numel() == 1:
        y = y.item()
    if isinstance(y, int) and vocab is not None:
        return str(vocab[y])
    if isinstance(y, float):
        return f"{y:.3g}"
    return str(y.tolist() if isinstance(y, torch.Tensor) else y)


def show_batch(learn, dl: Any = None, n: int = 9, show: ShowFn | None = None, vocab: Sequence[str] | None = None):
    """Draw the first `n` items of the first batch of `dl` (default `learn.dls.train`), on the CPU, with
    their targets as captions, through `show` (default `show_items`); returns what `show` returns. `show`
    gets the model inputs: a tensor (one input), a tuple (several) or a dict (a mapping batch)."""
    batch = next(iter(learn.dls.train if dl is None else dl), None)
    if batch is None:
        raise ValueError("show_batch was given a loader without batches")
    rows = batch_size(batch)
    n = min(n, rows)
    batch = to_device(take_rows(batch, slice(0, n), rows), "cpu")
    if is_mapping(batch):
        return (show or show_items)(batch, [""] * n)
    xs = batch[0] if learn.n_inp == 1 else tuple(batch[:learn.n_inp])
    ys = batch[learn.n_inp] if len(batch) > learn.n_inp else [""] * n
    return (show or show_items)(xs, [caption(y, vocab) for y in ys])
