"""Checkers for coursework: run a loss or a callback you wrote and get a report, check by check, of
what is right and what is wrong with it, as a table in a notebook and as text in a terminal.

`import minilearn` does not import it: it builds on the callback library (your loss runs under `AccelerateCustomCB`).

>>> from minilearn.testing import check_callback, check_loss
"""

from minilearn.testing.callback_checks import check_callback
from minilearn.testing.fingerprint import learner_fingerprint, left_behind
from minilearn.testing.loss_checks import LOSS_CHECKS, check_loss, sample_preds
from minilearn.testing.mistakes import loss_mistakes
from minilearn.testing.report import Check, CheckFailed, CheckReport
from minilearn.testing.tiny import tiny_learner

__all__ = ["check_loss", "check_callback", "CheckReport", "Check", "CheckFailed", "LOSS_CHECKS", "loss_mistakes",
           "sample_preds", "tiny_learner", "learner_fingerprint", "left_behind"]
