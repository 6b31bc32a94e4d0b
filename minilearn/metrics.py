"""The metrics a fastai user passes first: `accuracy`, `error_rate`, `top_k_accuracy`, `mae`, `mse`.

Each is a metric as `MetricsCB` calls it, `metric(preds, target)`, returning the mean over the batch's
items. MetricsCB weights each batch's mean by its rows and adds the sums up over the pass (and across
processes), so the figure of a pass is the metric over the whole pass, whatever the batch sizes.
That holds for means over items only: a root mean squared error is the square root of the `mse`
column, not an average of batch values, so it is not offered here.

>>> from minilearn.callbacks import MetricsCB
>>> cb = MetricsCB(accuracy=accuracy, error_rate=error_rate, top3=top_k_accuracy(3))
"""

from collections.abc import Callable

import torch

__all__ = ["accuracy", "error_rate", "top_k_accuracy", "mae", "mse"]


def _check_classes(name: str, preds: torch.Tensor, target: torch.Tensor) -> None:
    if preds.ndim < 1 or preds.shape[:-1] != target.shape:
        raise ValueError(f"{name} needs scores of shape (*target.shape, classes) and target of class ids; got preds "
                         f"{tuple(preds.shape)} and target {tuple(target.shape)}")
    if target.is_floating_point():
        raise ValueError(f"{name} compares class ids: target should hold integers, got {target.dtype} (for one-hot "
                         f"targets pass target.argmax(-1))")


def accuracy(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The share of items whose highest score is the target class.

    `preds`: `(N, C)` scores (logits or probabilities; also `(N, T, C)` with `target` `(N, T)`, exact
    over a pass when every row has the same number of targets); `target`: `(N,)` class ids.

    >>> accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([1, 1]))
    tensor(0.5000)
    """
    _check_classes("accuracy", preds, target)
    return (preds.argmax(-1) == target).float().mean()


def error_rate(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """`1 - accuracy`: the share of items the model gets wrong."""
    _check_classes("error_rate", preds, target)
    return (preds.argmax(-1) != target).float().mean()


def top_k_accuracy(k: int = 5) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """A metric: the share of items whose target class is among the `k` highest scores.

    A function of `k` that makes the metric (so that no batch item is ever taken for `k`):
    `MetricsCB(top5=top_k_accuracy(5))`. Shapes as for `accuracy`.
    """
    if isinstance(k, torch.Tensor):  # the model output: top_k_accuracy itself was passed as the metric
        raise TypeError("top_k_accuracy(k) makes a metric: pass top_k_accuracy(5), not top_k_accuracy itself "
                        f"(it was called with a tensor of shape {tuple(k.shape)} for k)")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"top_k_accuracy(k) needs a whole number k >= 1, got k={k!r}")

    def top_k(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        _check_classes(f"top_k_accuracy({k})", preds, target)
        if k > preds.shape[-1]:
            raise ValueError(f"top_k_accuracy({k}) needs at least {k} classes, preds has {preds.shape[-1]}")
        return (preds.topk(k, dim=-1).indices == target[..., None]).any(-1).float().mean()

    top_k.__qualname__ = f"top_k_accuracy({k})"
    return top_k


def _check_same_shape(name: str, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    # (N, 1) against (N,) would broadcast to (N, N) and give a wrong number without a word.
    if preds.shape == (*target.shape, 1):
        return preds[..., 0]
    if preds.shape != target.shape:
        raise ValueError(f"{name} needs preds and target of the same shape (or preds with one trailing output of 1); "
                         f"got preds {tuple(preds.shape)} and target {tuple(target.shape)}")
    return preds


def mae(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean absolute error; `preds` and `target` of the same shape, or `(N, 1)` and `(N,)`."""
    return (_check_same_shape("mae", preds, target) - target).abs().float().mean()


def mse(preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The mean squared error (its square root over a pass is the RMSE); shapes as for `mae`."""
    return ((_check_same_shape("mse", preds, target) - target) ** 2).float().mean()
