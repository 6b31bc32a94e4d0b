"""A fingerprint of a Learner: what a callback added for one fit must leave as it found it.

`learner_fingerprint(learn)` before a fit and again after it, then `left_behind(before, after)`, name
each thing a temporary callback changed and did not put back. What training is meant to change
(weights, the optimizer's moments, the loop's own state in `minilearn.LOOP_STATE`, a callback's own
counters, the values kept callbacks refresh, such as the row `learn.epoch_metrics`) is not part of
the fingerprint.
"""

from typing import Any

import torch

from minilearn.callback import Callback
from minilearn.events import LOOP_STATE
from minilearn.inputs import callable_name
from minilearn.learner import Learner
from minilearn.optim import optimizer_settings

__all__ = ["learner_fingerprint", "left_behind"]

# The learner's own attributes in the fingerprint below, under names of their own.
_NAMED = ("model", "dls", "opt", "loss_func", "opt_func", "lr", "n_inp", "cbs")
# A fit builds the optimizer when there is none: that is not something left behind.
_BUILT_BY_FIT = ("learn.opt", "optimizer hyperparameters", "attributes of the optimizer")


class _Identity:
    """Compares by identity, for objects that must be the very same ones after the fit."""

    def __init__(self, obj: Any):
        self.obj = obj

    def __eq__(self, other) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj

    def __repr__(self) -> str:
        if self.obj is None:
            return "None"
        if isinstance(self.obj, Callback):
            return self.obj.name
        if callable(self.obj) and not isinstance(self.obj, type):
            return callable_name(self.obj)
        return f"{type(self.obj).__name__} object at {id(self.obj):#x}"


class _Kind:
    """Compares by type, for values a kept callback may refresh with a new object of the same kind."""

    def __init__(self, obj: Any):
        self.kind = type(obj)

    def __eq__(self, other) -> bool:
        return isinstance(other, _Kind) and other.kind is self.kind

    def __repr__(self) -> str:
        return f"a {self.kind.__name__}"


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (bool, int, float, str, tuple, type(None))):
        return value
    return _Identity(value)


def _hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


def learner_fingerprint(learn: Learner) -> dict[str, Any]:
    """What a temporary callback must leave as it found it, each under a readable name: the learner's
    model object, its own `forward` (not a patched one), the model's attributes, mode, parameter
    dtypes, `requires_grad` and hooks; the data loaders, optimizer object, hyperparameters and
    attributes; the loss, lr and callbacks; the other attributes of the learner (plain values such as
    numbers by value, objects by type: a kept MetricsCB puts a new row on `learn.epoch_metrics` every
    epoch, but a temporary one must leave it None); and torch's gradient and autocast switches.

    >>> from minilearn.testing import tiny_learner
    >>> learn = tiny_learner()
    >>> before = learner_fingerprint(learn)
    >>> learn.lr = 0.5
    >>> left_behind(before, learner_fingerprint(learn))
    ['learn.lr was 0.1 before fit and 0.5 after']
    """
    model, opt = learn.model, learn.opt
    params = list(model.parameters())
    fp = {
        "learn.cbs": tuple(_Identity(cb) for cb in learn.cbs),
        "learn.model": _Identity(model),
        # Present in the instance's own attributes only when something replaced the class's forward.
        "the model's forward": _Identity(vars(model).get("forward")),
        "attributes of the model": frozenset(vars(model)),
        "model mode (training)": model.training,
        "dtypes of the parameters": tuple(str(p.dtype) for p in params),
        "requires_grad of the parameters": tuple(p.requires_grad for p in params),
        "hooks on the model": _hook_count(model),
        "learn.dls": _Identity(learn.dls),
        "learn.opt": _Identity(opt),
        "optimizer hyperparameters": None if opt is None else tuple(
            {k: _plain(v) for k, v in group.items()} for group in optimizer_settings(opt).hyperparameters),
        "attributes of the optimizer": None if opt is None else frozenset(vars(opt)),
        "learn.loss_func": _Identity(learn.loss_func),
        "learn.opt_func": _Identity(learn.opt_func),
        "learn.lr": learn.lr,
        "learn.n_inp": learn.n_inp,
        "attributes of the learner": frozenset(vars(learn)),
        "torch.is_grad_enabled()": torch.is_grad_enabled(),
        "autocast on the CPU": torch.is_autocast_enabled("cpu"),
        "autocast on CUDA": torch.is_autocast_enabled("cuda"),
    }
    for name, value in vars(learn).items():
        if name not in LOOP_STATE and name not in _NAMED and not name.startswith("_"):
            plain = _plain(value)
            fp[f"learn.{name}"] = _Kind(value) if isinstance(plain, _Identity) else plain
    return fp


def _describe(key: str, before: Any, after: Any) -> str:
    if isinstance(before, frozenset) and isinstance(after, frozenset):
        parts = []
        if after - before:
            parts.append(f"added {sorted(after - before)}")
        if before - after:
            parts.append(f"removed {sorted(before - after)}")
        return f"{key}: {' and '.join(parts)}"
    if key == "optimizer hyperparameters" and before is not None and after is not None:
        diffs = [f"param group {i} {k} {g0.get(k, '(none)')!r} -> {g1.get(k, '(none)')!r}"
                 for i, (g0, g1) in enumerate(zip(before, after)) for k in dict.fromkeys([*g0, *g1])
                 if g0.get(k) != g1.get(k)]
        return f"{key} changed: {', '.join(diffs)}"
    if key == "the model's forward":
        def which(f: _Identity) -> str:
            return "the one of its class" if f.obj is None else f"an instance attribute {f!r}"
        return f"{key} was {which(before)} before fit and {which(after)} after"
    def show(v: Any) -> str:
        return "[" + ", ".join(map(repr, v)) + "]" if key == "learn.cbs" else repr(v)
    return f"{key} was {show(before)} before fit and {show(after)} after"


def left_behind(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One sentence for each entry of two `learner_fingerprint`s that differs (an empty list when the
    learner is as it was). The optimizer a fit builds when there was none does not count."""
    changes = []
    for key in dict.fromkeys([*before, *after]):
        b, a = before.get(key, "(absent)"), after.get(key, "(absent)")
        if b == a or (key in _BUILT_BY_FIT and (b is None or b == _Identity(None))):
            continue
        changes.append(_describe(key, b, a))
    return changes
