"""minilearn: a small, readable, callback-driven Learner for PyTorch, built for custom losses."""

from minilearn.callback import Callback, misspelt_events
from minilearn.data import DataLoaders, batch_size, default_device, to_device
from minilearn.events import EVENTS, STEPS
from minilearn.exceptions import (CancelBatchException, CancelEpochException, CancelFitException, CheckpointError,
                                  LossOutputError, MissingInputError, UnknownEventError)
from minilearn.learner import Learner
from minilearn.lr_finder import LRFinderCB
from minilearn.normalized_loss import NormalizedLoss
from minilearn.train import TrainCB

__version__ = "0.1.0"

__all__ = [
    "Learner", "Callback", "TrainCB", "LRFinderCB", "EVENTS", "STEPS", "misspelt_events",
    "CancelFitException", "CancelEpochException", "CancelBatchException",
    "UnknownEventError", "MissingInputError", "LossOutputError", "CheckpointError",
    "NormalizedLoss", "DataLoaders", "to_device", "batch_size", "default_device",
]
