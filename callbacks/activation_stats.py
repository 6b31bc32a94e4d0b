"""ActivationStatsCB: how each layer's outputs are distributed during training, batch by batch (fast.ai's
activation statistics), and the plots that read them."""

import torch
from torch import nn

from minilearn.callback import Callback
from minilearn.hooks import Hooks
from minilearn.order import Order

__all__ = ["ActivationStatsCB"]


class ActivationStatsCB(Callback):
    """Record, for each of `modules` (default: the model's children) and each training batch, the mean
    and standard deviation of the module's output and a histogram of its absolute values (`bins` bins
    over `[0, hist_max]`). The hooks live for the fit only. Reading the statistics waits for the device
    every batch: this is a callback for looking, not for long runs.

    After the fit: `means`, `stds` (`(modules, batches)`), `hists` (`(modules, batches, bins)`), and
    the plots `plot_stats()`, `color_dim()` and `dead_chart()`.
    """

    order = Order.ACTIVATION_STATS

    def __init__(self, modules: list[nn.Module] | None = None, bins: int = 40, hist_max: float = 10.0):
        self.watched, self.bins, self.hist_max = modules, bins, hist_max
        self.hooks: Hooks | None = None
        self._stats: list[list[tuple[float, float, torch.Tensor]]] = []  # per module: (mean, std, hist) a batch

    def before_fit(self, learn):
        modules = self.watched if self.watched is not None else list(learn.unwrapped_model.children())
        if not modules:
            raise ValueError(f"ActivationStatsCB has no modules to watch: {type(learn.unwrapped_model).__name__} has no "
                             f"children; pass ActivationStatsCB(modules=[...])")
        self._stats, self._recording = [[] for _ in modules], False
        self.hooks = Hooks(modules, self._record).__enter__()

    def _record(self, i: int, module: nn.Module, inputs: tuple, output) -> None:
        if not self._recording or not isinstance(output, torch.Tensor):
            return
        out = output.detach().float()
        hist = torch.histc(out.abs(), self.bins, 0, self.hist_max).cpu()
        self._stats[i].append((out.mean().item(), out.std().item() if out.numel() > 1 else 0.0, hist))

    def before_batch(self, learn):
        self._recording = learn.training

    def cleanup_fit(self, learn):
        if self.hooks is not None:
            self.hooks.remove()
            self.hooks = None

    @property
    def means(self) -> torch.Tensor:
        """`(modules, batches)`: the mean output of each module at each training batch."""
        return torch.tensor([[s[0] for s in per] for per in self._stats])

    @property
    def stds(self) -> torch.Tensor:
        """`(modules, batches)`: the standard deviation of each module's output at each training batch."""
        return torch.tensor([[s[1] for s in per] for per in self._stats])

    @property
    def hists(self) -> torch.Tensor:
        """`(modules, batches, bins)`: the histogram of the absolute outputs at each training batch."""
        if not self._stats or not self._stats[0]:  # nothing recorded yet
            return torch.zeros(len(self._stats), 0, self.bins)
        return torch.stack([torch.stack([s[2] for s in per]) for per in self._stats])

    def dead_fraction(self) -> torch.Tensor:
        """`(modules, batches)`: the share of outputs in the lowest bin (near zero: units that do nothing)."""
        h = self.hists
        return h[..., 0] / h.sum(-1).clamp(min=1)

    def plot_stats(self):
        """The mean and the standard deviation of each module's output, batch by batch. Returns the figure
        (with room for a `fig.suptitle`)."""
        import matplotlib.pyplot as plt
        fig, (ax_mean, ax_std) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
        for i, (m, s) in enumerate(zip(self.means, self.stds)):
            ax_mean.plot(m.numpy(), label=str(i))
            ax_std.plot(s.numpy())
        for ax, title in ((ax_mean, "means"), (ax_std, "standard deviations")):
            ax.set_title(title), ax.set_xlabel("training batch")
        fig.legend(title="module", loc="outside right upper")
        return fig

    def color_dim(self):
        """Each module's histograms as an image: batches left to right, |output| upwards, log counts as
        colour (a collapsing layer turns dark above the floor). Returns the figure."""
        import matplotlib.pyplot as plt
        h = self.hists
        fig, axes = plt.subplots(1, len(h), figsize=(3 * len(h), 3), squeeze=False, layout="constrained")
        for i, (ax, hist) in enumerate(zip(axes[0], h)):
            ax.imshow(hist.T.log1p().numpy(), origin="lower", aspect="auto")
            ax.set_title(f"module {i}"), ax.set_xlabel("training batch")
        return fig

    def dead_chart(self):
        """The share of each module's outputs near zero, batch by batch (`dead_fraction`). Returns the figure."""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
        for i, d in enumerate(self.dead_fraction()):
            ax.plot(d.numpy(), label=str(i))
        ax.set_ylim(-0.03, 1.03)  # a line at 0 or 1 (all dead) drawn inside the frame, not on it
        ax.set_title("share of outputs near zero"), ax.set_xlabel("training batch")
        fig.legend(title="module", loc="outside right upper")
        return fig
