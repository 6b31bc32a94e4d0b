"""Checkpoints: the files (`files`: atomic, checksummed, no pickled objects), the random states that
decide a run and those a forward pass draws from (`random_state`), what a learner puts in a checkpoint
and takes out (`learner_state`: `Learner.save` and `Learner.load`), and going on with a fit exactly
where it was saved (`resume`: `fit(resume=...)`).
"""

from minilearn.checkpoints.files import (MANIFEST, atomic_write, check_weights, is_checkpoint, read_checkpoint,
                                         remove_checkpoint, save_checkpoint)
from minilearn.checkpoints.random_state import (forward_random_state, forward_random_state_kept, loader_generators,
                                                random_states, set_forward_random_state, set_random_states)
from minilearn.checkpoints.learner_state import load_learner, restore_learner, save_learner, stateful_callbacks
from minilearn.checkpoints.resume import Resume, TrainingPosition

__all__ = ["MANIFEST", "atomic_write", "save_checkpoint", "read_checkpoint", "check_weights", "is_checkpoint",
           "remove_checkpoint", "loader_generators", "random_states", "set_random_states", "forward_random_state",
           "set_forward_random_state", "forward_random_state_kept",
           "TrainingPosition", "Resume", "stateful_callbacks", "save_learner", "load_learner",
           "restore_learner"]
