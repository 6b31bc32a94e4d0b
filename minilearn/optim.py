"""Taking a note of an optimizer's settings and putting them back: what lets a schedule be temporary."""

from dataclasses import dataclass

import torch

__all__ = ["OptimizerSettings", "optimizer_settings", "restore_optimizer_settings"]


@dataclass(frozen=True)
class OptimizerSettings:
    """What a schedule may change on an optimizer and must put back: each parameter group's
    hyperparameters (`lr`, `momentum` or `betas`, `weight_decay`, and keys a scheduler adds such as
    `initial_lr`), and the names of the optimizer's own attributes (a PyTorch scheduler wraps
    `optimizer.step` in an instance attribute). The optimizer's state (Adam's moments) is not part
    of it: that is what training changes, and it stays."""

    hyperparameters: tuple[dict, ...]
    attributes: frozenset[str]


def _copy(value):
    return value.clone() if isinstance(value, torch.Tensor) else value  # a tensor lr is updated in place


def optimizer_settings(opt: torch.optim.Optimizer) -> OptimizerSettings:
    """Note `opt`'s hyperparameters and attribute names, for `restore_optimizer_settings`.

    >>> opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1, momentum=0.9)
    >>> settings = optimizer_settings(opt)
    >>> opt.param_groups[0]["lr"] = 5.0
    >>> restore_optimizer_settings(opt, settings); opt.param_groups[0]["lr"]
    0.1
    """
    return OptimizerSettings(
        tuple({k: _copy(v) for k, v in group.items() if k != "params"} for group in opt.param_groups),
        frozenset(vars(opt)))


def restore_optimizer_settings(opt: torch.optim.Optimizer, settings: OptimizerSettings) -> None:
    """Put back the hyperparameters and drop the attributes added since `settings` were noted."""
    if len(opt.param_groups) != len(settings.hyperparameters):
        raise ValueError(f"the optimizer has {len(opt.param_groups)} parameter groups now and had "
                         f"{len(settings.hyperparameters)} when its settings were noted")
    for group, hypers in zip(opt.param_groups, settings.hyperparameters):
        params = group["params"]
        group.clear()
        group["params"] = params
        group.update({k: _copy(v) for k, v in hypers.items()})
    for name in set(vars(opt)) - settings.attributes:
        delattr(opt, name)
