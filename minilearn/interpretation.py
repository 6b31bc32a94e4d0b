"""`ClassificationInterpretation`, after fastai's: what a classifier gets wrong over a whole loader
(the confusion matrix, the pairs of classes it mixes up most, the items with the largest loss)."""

from collections.abc import Sequence
from typing import Any

import torch

from minilearn.data import to_device
from minilearn.predictions import get_preds_with_inputs
from minilearn.show import ShowFn, caption, show_items

__all__ = ["ClassificationInterpretation"]


class ClassificationInterpretation:
    """The inputs, class scores `preds` `(N, C)`, class-id `targets` `(N,)` and per-item `losses` `(N,)`
    of a classifier over a loader, all on the CPU, with the views that read them. `vocab` names the
    classes (default: their ids).

    >>> # interp = ClassificationInterpretation.from_learner(learn)
    >>> # interp.confusion_matrix(); interp.plot_confusion_matrix(); interp.plot_top_losses(9)
    """

    def __init__(self, inputs: Any, preds: torch.Tensor, targets: torch.Tensor, losses: torch.Tensor,
                 vocab: Sequence[str] | None = None):
        if not isinstance(preds, torch.Tensor) or preds.ndim != 2:
            raise ValueError(f"ClassificationInterpretation needs class scores of shape (N, classes); got "
                             f"{tuple(preds.shape) if isinstance(preds, torch.Tensor) else type(preds).__name__}")
        if not isinstance(targets, torch.Tensor) or targets.shape != preds.shape[:1] or targets.is_floating_point():
            got = f"{tuple(targets.shape)} {targets.dtype}" if isinstance(targets, torch.Tensor) else type(targets).__name__
            raise ValueError(f"ClassificationInterpretation needs one integer class id an item, targets of shape "
                             f"({len(preds)},); got {got}")
        if vocab is not None and len(vocab) != preds.shape[1]:
            raise ValueError(f"vocab names {len(vocab)} classes but preds scores {preds.shape[1]}")
        self.inputs, self.preds, self.targets, self.losses = to_device((inputs, preds, targets, losses), "cpu")
        self.vocab = [str(c) for c in range(preds.shape[1])] if vocab is None else list(vocab)

    @classmethod
    def from_learner(cls, learn, dl: Any = None, vocab: Sequence[str] | None = None) -> "ClassificationInterpretation":
        """Predict over `dl` (default `learn.dls.valid`) with per-item losses, in one pass."""
        inputs, (preds, targets, losses) = get_preds_with_inputs(learn, dl, with_loss=True)
        return cls(inputs, preds, targets, losses, vocab)

    @property
    def decoded(self) -> torch.Tensor:
        """`(N,)`: the predicted class of each item (its highest score)."""
        return self.preds.argmax(-1)

    def confusion_matrix(self) -> torch.Tensor:
        """`(C, C)` counts: row = the actual class, column = the predicted one."""
        n = len(self.vocab)
        return torch.bincount(self.targets * n + self.decoded, minlength=n * n).view(n, n)

    def most_confused(self, min_count: int = 1) -> list[tuple[str, str, int]]:
        """`(actual, predicted, count)` of the off-diagonal cells with at least `min_count` items, most first."""
        cm = self.confusion_matrix().fill_diagonal_(0)
        pairs = [(self.vocab[a], self.vocab[p], int(cm[a, p])) for a, p in (cm >= min_count).nonzero().tolist()]
        return sorted(pairs, key=lambda t: -t[2])

    def plot_confusion_matrix(self, normalize: bool = False, cmap: str = "Blues"):
        """The confusion matrix as a picture with its counts (or, `normalize`, each row's shares). Returns the figure."""
        import matplotlib.pyplot as plt
        cm = self.confusion_matrix().float()
        if normalize:
            cm = cm / cm.sum(1, keepdim=True).clamp(min=1)
        n = len(self.vocab)
        fig, ax = plt.subplots(figsize=(1.5 + 0.45 * n, 1.2 + 0.45 * n), layout="constrained")
        ax.imshow(cm.numpy(), cmap=cmap)
        for (a, p), v in zip(torch.cartesian_prod(torch.arange(n), torch.arange(n)).tolist(), cm.flatten().tolist()):
            ax.text(p, a, f"{v:.2f}" if normalize else int(v), ha="center", va="center", fontsize=8,
                    color="white" if v > cm.max() / 2 else "black")
        ax.set_xticks(range(n), self.vocab), ax.set_yticks(range(n), self.vocab)
        ax.set_xlabel("predicted"), ax.set_ylabel("actual"), ax.set_title("confusion matrix")
        return fig

    def plot_top_losses(self, k: int = 9, show: ShowFn | None = None):
        """The `k` items with the largest loss, captioned `predicted/actual` then `loss / probability of
        the prediction`, drawn by `show(xs, captions)` (default `show_items`); returns what it returns."""
        values, idx = self.losses.topk(min(k, len(self.losses)))
        probs = self.preds[idx].float().softmax(-1)
        captions = [f"{caption(p, self.vocab)}/{caption(t, self.vocab)}\n{loss:.2f} / {prob:.2f}"
                    for p, t, loss, prob in zip(self.decoded[idx], self.targets[idx], values.tolist(),
                                                probs.max(-1).values.tolist())]
        x = self.inputs
        items = (tuple(v[idx] for v in x) if isinstance(x, tuple) else
                 {key: v[idx] for key, v in x.items()} if isinstance(x, dict) else x[idx])
        return (show or show_items)(items, captions)
