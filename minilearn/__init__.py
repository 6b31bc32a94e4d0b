"""minilearn: a small, readable, callback-driven Learner for PyTorch, built for custom losses."""

import warnings

# Importing Accelerate imports tqdm.auto (for big-model loading bars minilearn never shows), which in a Jupyter
# kernel without ipywidgets prints a red "IProgress not found" warning at every `import minilearn`. Import it
# first with that one warning off; tqdm falls back to its text bars as it would anyway, also for transformers.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message="IProgress not found")
    import accelerate  # noqa: F401

from minilearn.callback import Callback, MisspeltEventWarning, misspelt_events
from minilearn.data import DataLoaders, batch_size, default_device, to_device
from minilearn.events import EVENTS, LOOP_STATE, STEPS
from minilearn.exceptions import (CancelBatchException, CancelEpochException, CancelFitException, CheckpointError,
                                  LossOutputError, MissingInputError, UnknownEventError)
from minilearn.hooks import Hooks
from minilearn.interpretation import ClassificationInterpretation
from minilearn.learner import Learner
from minilearn.logprobs import (IGNORE_INDEX, CustomLossResult, FusedHead, LabelsToTargets, forward_backward_custom,
                                logprob_targets, sequence_logprobs, targets_from_labels)
from minilearn.lr_finder import LRFinderCB
from minilearn.normalized_loss import LossTensor, NormalizedLoss
from minilearn.order import Order
from minilearn.predictions import Predictions
from minilearn.train import BatchWarning, TrainCB

__version__ = "0.1.0"

__all__ = [
    "Learner", "Callback", "Order", "TrainCB", "LRFinderCB", "EVENTS", "STEPS", "LOOP_STATE", "misspelt_events",
    "MisspeltEventWarning", "BatchWarning",
    "CancelFitException", "CancelEpochException", "CancelBatchException",
    "UnknownEventError", "MissingInputError", "LossOutputError", "CheckpointError",
    "NormalizedLoss", "LossTensor", "forward_backward_custom", "CustomLossResult", "logprob_targets", "sequence_logprobs",
    "DataLoaders", "to_device", "batch_size", "default_device", "FusedHead", "IGNORE_INDEX",
    "targets_from_labels", "LabelsToTargets", "Hooks", "Predictions", "ClassificationInterpretation",
]
