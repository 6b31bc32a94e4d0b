"""The names of the loop's events and steps: the whole vocabulary a callback can speak."""

__all__ = ["EVENTS", "STEPS", "VALID_BATCH", "TRAIN_BATCH", "LOOP_STATE"]

EVENTS: tuple[str, ...] = (
    "before_fit", "after_fit", "cleanup_fit",
    "before_epoch", "after_epoch", "cleanup_epoch",
    "before_batch", "after_batch", "cleanup_batch",
    "after_predict", "after_loss", "after_backward", "after_step",
)
"""The events: every callback that defines one runs, in `order`. `cleanup_*` always runs (it is called from a
`finally`), so it is where a callback undoes what its `before_*` did."""

STEPS: tuple[str, ...] = ("predict", "get_loss", "backward", "step", "zero_grad")
"""The steps of a batch: each is run by exactly one callback, the highest-`order` one that defines it."""

# What one batch runs, in order, between before_batch and after_batch: each step, then the event
# that follows it. A validation batch stops after the loss.
VALID_BATCH: tuple[str, ...] = ("predict", "after_predict", "get_loss", "after_loss")
TRAIN_BATCH: tuple[str, ...] = VALID_BATCH + ("backward", "after_backward", "step", "after_step", "zero_grad")

LOOP_STATE: tuple[str, ...] = ("epoch", "n_epochs", "epochs", "iter", "training", "dl", "batch", "preds", "loss",
                               "loss_metrics", "loss_parts")
"""The Learner's attributes that the loop itself sets as it runs (a callback may read them, and replace `batch`,
`preds`, `loss`, `dl` or `epochs` for the batch or fit at hand). Everything else on the learner belongs to the
user, or to a callback that puts it back when it is removed."""
