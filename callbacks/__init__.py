"""The callback library, imported as `minilearn.callbacks`.

`TrainCB` and `LRFinderCB` live in the core (the Learner needs them) and are re-exported here so
that every ready callback is found in one place.
"""

from minilearn.callbacks.activation_stats import ActivationStatsCB
from minilearn.callbacks.accelerate import AccelerateCB, AccelerateCustomCB
from minilearn.callbacks.csv_logger import CSVLoggerCB
from minilearn.callbacks.debug import SingleBatchCB
from minilearn.callbacks.device import DeviceCB
from minilearn.callbacks.early_stopping import EarlyStoppingCB
from minilearn.callbacks.grad_clip import GradClipCB
from minilearn.callbacks.logprob_loss import LogprobLossCB
from minilearn.callbacks.loss import LossCB
from minilearn.callbacks.metrics import MetricsCB
from minilearn.callbacks.monitor import Monitor
from minilearn.callbacks.progress import ProgressCB
from minilearn.callbacks.recorder import Recorder
from minilearn.callbacks.rollouts import RolloutCB
from minilearn.callbacks.save_model import SaveModelCB
from minilearn.callbacks.schedule import BatchSchedCB, OneCycleCB
from minilearn.callbacks.terminate_nan import TerminateOnNaNCB
from minilearn.callbacks.tracker import TrackerCB
from minilearn.distributed import reset_accelerate_state
from minilearn.lr_finder import LRFinderCB
from minilearn.train import TrainCB

__all__ = ["AccelerateCB", "AccelerateCustomCB", "TrainCB", "LRFinderCB", "DeviceCB", "MetricsCB", "Recorder", "ProgressCB", "BatchSchedCB",
           "OneCycleCB", "GradClipCB", "SingleBatchCB", "LossCB", "LogprobLossCB",
           "SaveModelCB", "EarlyStoppingCB", "RolloutCB", "CSVLoggerCB", "TrackerCB", "ActivationStatsCB", "TerminateOnNaNCB", "Monitor", "reset_accelerate_state"]
