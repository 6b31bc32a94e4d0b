"""A fingerprint of a Learner: what a callback added for one fit must leave as it found it. What training
is meant to change (weights, optimizer moments, `minilearn.LOOP_STATE`) is not part of it."""

from typing import Any

import torch

from minilearn.callback import Callback
from minilearn.events import LOOP_STATE
from minilearn.inputs import callable_name
from minilearn.learner import Learner
from minilearn.optim import optimizer_settings

__all__ = ["learner_fingerprint", "left_behind"]

# Fingerprinted under names of their own below.
_NAMED = ("model", "dls", "opt", "loss_func", "opt_func", "lr", "n_inp", "cbs")
# A fit builds the optimizer when there is none: that is not something left behind.
_BUILT_BY_FIT = ("learn.opt", "optimizer hyperparameters", "attributes of the optimizer")


class _Identity:
    """Compares by identity: for objects that must be the very same ones after the fit."""

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
    """Compares by type: for values a kept callback may refresh with a new object of the same kind."""

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


def learner_fingerprint(learn: Learner) -> dict[str, Any]:
    """What a temporary callback must leave as it found it, each under a readable name: the learner's
    model, data, optimizer, loss, lr, callbacks and other attributes, and torch's grad and autocast switches.

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
        "hooks on the model": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                                  + len(m._backward_pre_hooks) for m in model.modules()),
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
        # Objects by type: a kept MetricsCB refreshes `learn.epoch_metrics`, a temporary one leaves it None.
        if name not in LOOP_STATE and name not in _NAMED and not name.startswith("_"):
            plain = _plain(value)
            fp[f"learn.{name}"] = _Kind(value) if isinstance(plain, _Identity) else plain
    return fp


def _describe(key: str, before: Any, after: Any) -> str:
    if isinstance(before, frozenset) and isinstance(after, frozenset):
        parts = [f"{verb} {sorted(d)}" for verb, d in (("added", after - before), ("removed", before - after)) if d]
        return f"{key}: {' and '.join(parts)}"
    if key == "optimizer hyperparameters" and before is not None and after is not None:
        diffs = [f"param group {i} {k} {g0.get(k, '(none)')!r} -> {g1.get(k, '(none)')!r}"
                 for i, (g0, g1) in enumerate(zip(before, after)) for k in dict.fromkeys([*g0, *g1])
                 if g0.get(k) != g1.get(k)]
        return f"{key} changed: {', '.join(diffs)}"
    def show(v: Any) -> str:
        if key == "the model's forward":
            return "the one of its class" if v.obj is None else f"an instance attribute {v!r}"
        return "[" + ", ".join(map(repr, v)) + "]" if key == "learn.cbs" else repr(v)
    return f"{key} was {show(before)} before fit and {show(after)} after"


def left_behind(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """One sentence for each entry of two `learner_fingerprint`s that differs (an empty list when the
    learner is as it was). The optimizer a fit builds when there was none does not count."""
    pairs = ((k, before.get(k, "(absent)"), after.get(k, "(absent)")) for k in dict.fromkeys([*before, *after]))
    return [_describe(k, b, a) for k, b, a in pairs
            if not (b == a or (k in _BUILT_BY_FIT and (b is None or b == _Identity(None))))]
