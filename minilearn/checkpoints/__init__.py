"""Checkpoints: the files (`files`: atomic, checksummed, no pickled objects), the random states that
decide a run and those a forward pass draws from (`random_state`), what a learner puts in a checkpoint
and takes out (`learner_state`: `Learner.save` and `Learner.load`), and going on with a fit exactly
where it was saved (`resume`: `fit(resume=...)`). Import from the module that defines a name.
"""

__all__: list[str] = []
