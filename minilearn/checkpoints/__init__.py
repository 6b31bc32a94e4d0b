"""Checkpoints: the files (`files`: atomic, checksummed, no pickled objects), the random states that
decide a run (`random_state`), and resuming a fit exactly where it was saved (`resume`), on which
`Learner.save`, `Learner.load` and `fit(resume=...)` are built.
"""

from minilearn.checkpoints.files import (MANIFEST, atomic_write, check_weights, is_checkpoint, read_checkpoint,
                                         remove_checkpoint, save_checkpoint)
from minilearn.checkpoints.random_state import loader_generators, random_states, set_random_states
from minilearn.checkpoints.resume import ResumeCB, TrainingPosition, stateful_callbacks

__all__ = ["MANIFEST", "atomic_write", "save_checkpoint", "read_checkpoint", "check_weights", "is_checkpoint",
           "remove_checkpoint", "loader_generators", "random_states", "set_random_states",
           "TrainingPosition", "ResumeCB", "stateful_callbacks"]
