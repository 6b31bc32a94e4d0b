"""The demo behind `python -m minilearn demo`, with what it is made of: a code corpus read from an
installed package (numpy's sources) and its tokenizer (`corpus`), a small causal transformer
(`tiny_model`), and the run itself (`run`). Tests and notebooks use the same pieces.

>>> from minilearn.demo import TinyCausalLM, CodeTokenizer
"""

from minilearn.demo.corpus import CodeTokenizer, lm_chunks, python_sources
from minilearn.demo.run import NextTokenScoreCB, key_token_accuracy, lm_batch, next_token_scores, run_demo
from minilearn.demo.tiny_model import TinyCausalLM

__all__ = ["TinyCausalLM", "CodeTokenizer", "lm_chunks", "python_sources", "lm_batch", "next_token_scores",
           "key_token_accuracy", "NextTokenScoreCB", "run_demo"]
