"""Hooks: forward hooks on a set of modules that are removed when the `with` block ends, however it ends."""

from collections.abc import Callable, Iterable
from typing import Any

from torch import nn

__all__ = ["Hooks"]


class Hooks:
    """Call `fn(index, module, inputs, output)` after the forward pass of each of `modules` (`index`
    is the module's position in `modules`), from entering the `with` block to leaving it; the hooks
    are removed on the way out, also when the block raises. `remove()` removes them early.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    >>> shapes = []
    >>> with Hooks(model, lambda i, m, inp, out: shapes.append((i, tuple(out.shape)))):
    ...     _ = model(torch.zeros(4, 2))
    >>> shapes
    [(0, (4, 3)), (1, (4, 3))]
    >>> len(model[0]._forward_hooks)
    0
    """

    def __init__(self, modules: Iterable[nn.Module], fn: Callable[[int, nn.Module, tuple, Any], None]):
        self.modules, self.fn = list(modules), fn
        self.handles: list = []

    def __enter__(self) -> "Hooks":
        for i, m in enumerate(self.modules):
            self.handles.append(m.register_forward_hook(lambda mod, inp, out, i=i: self.fn(i, mod, inp, out)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Remove every hook (once; a second call does nothing)."""
        for h in self.handles:
            h.remove()
        self.handles = []

    def __len__(self) -> int:
        return len(self.modules)
