"""The `order` of every callback minilearn ships, in one table.

`order` decides two things: the order in which callbacks run an event (lower first), and which
callback owns a step (the highest `order` that defines it). So the table reads from the bottom of
the loop to the top, and each value says which callbacks it must come after or before. A callback of
your own picks a number between two of these (any int works; ties keep the order of adding).
"""

__all__ = ["Order"]


class Order:
    """Named `order` values, lowest first (see the module docstring).

    >>> Order.TRAIN < Order.LOSS < Order.ACCELERATE < Order.LOGPROB_LOSS
    True
    """

    # Sees a bad loss at after_loss before any other callback does (and before it is back-propagated).
    TERMINATE_ON_NAN = -20
    # Moves the model and each batch to the device before anything else looks at them.
    DEVICE = -10
    # The default owner of all five steps: every callback that defines a step takes it over.
    TRAIN = 0
    # check_loss's stand-in model owns predict over TrainCB.
    CHECK_PREDICT = 1
    # Owns get_loss over TrainCB. LR_FINDER sets the learning rate at before_batch.
    LOSS = 10
    LR_FINDER = 10
    # Owns backward and step over TrainCB, and get_loss (AccelerateCustomCB) over LossCB: a loss
    # callback added alongside it is overruled by the one it was given.
    ACCELERATE = 20
    # Owns get_loss and backward over AccelerateCB, whose step and prepared model it uses.
    LOGPROB_LOSS = 30
    # Clips at after_backward, once AccelerateCB (lower) has made the gradients those of the whole step.
    GRAD_CLIP = 30
    # Only watches (its hooks record during the forward pass): anywhere after the device is set.
    ACTIVATION_STATS = 35
    # Reads each batch's loss and metrics after the step owners are done with them.
    METRICS = 40
    # Samples a round of rollouts at before_epoch; adds its reward to the row MetricsCB wrote at after_epoch,
    # before the callbacks below print and log that row.
    ROLLOUTS = 42
    # Records the loss and lr, and can read the epoch's row MetricsCB wrote at after_epoch.
    RECORDER = 45
    # Prints the row MetricsCB wrote at after_epoch.
    PROGRESS = 50
    # Writes the row MetricsCB wrote at after_epoch, before SaveModelCB saves: a checkpoint never
    # runs ahead of the file, so a resumed fit knows which rows to keep.
    CSV_LOGGER = 55
    # Logs the row MetricsCB wrote, and the loss of each batch, like CSV_LOGGER.
    TRACKER = 55
    # Sets the learning rate at before_batch and steps the schedule after the optimizer step.
    SCHEDULE = 60
    # Counts the epoch after MetricsCB wrote its row, before SaveModelCB saves (so a checkpoint holds
    # this epoch's count).
    EARLY_STOPPING = 65
    # Saves after the epoch's row is written and EarlyStoppingCB counted it.
    SAVE_MODEL = 70
    # Stops the fit after one batch, once every other callback has seen that batch.
    SINGLE_BATCH = 100
    # check_callback's recorder: after the callback under test, to see what it left.
    CHECK_RECORDER = 10_000
