"""A code corpus that needs no download: Python sources of installed packages, and a tokenizer.

The demo trains a small language model on code that uses numpy (and pandas, where installed),
read from the site-packages of the running interpreter.
"""

import re
import sysconfig
from collections import Counter
from pathlib import Path

import torch

__all__ = ["python_sources", "CodeTokenizer", "lm_chunks"]

# Identifiers, numbers, runs of spaces, newlines, and single other characters: enough structure for a
# small model to learn `np.` patterns, with a vocabulary of a few thousand.
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+|\n|[ ]+|.")


def python_sources(markers: tuple[str, ...] = ("import numpy as np", "import pandas as pd"),
                   max_chars: int = 2_000_000, root: str | Path | None = None) -> str:
    """Concatenate the installed `.py` files that contain one of `markers`, those that use the
    marked names (`np.`, `pd.`) most densely first, up to about `max_chars` characters. The order is
    fixed for a given set of installed packages. `root` defaults to this interpreter's site-packages."""
    root = Path(root) if root is not None else Path(sysconfig.get_paths()["purelib"])
    names = [m.rsplit(" ", 1)[-1] + "." for m in markers]  # "import numpy as np" -> "np."
    found = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if any(m in text for m in markers):
            density = sum(text.count(n) for n in names) / max(len(text), 1)
            found.append((-density, str(path), text))
    if not found:
        raise FileNotFoundError(f"no .py file under {root} contains any of {markers}")
    parts, total = [], 0
    for _, _, text in sorted(found):
        parts.append(text)
        total += len(text)
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars]


class CodeTokenizer:
    """A word-level tokenizer for code, built from a corpus: the `vocab_size - 2` most frequent
    tokens, plus `<pad>` (id 0) and `<unk>` (id 1).

    >>> tok = CodeTokenizer("x = np.zeros(3)\\ny = np.ones(3)\\n", vocab_size=20)
    >>> tok.decode(tok.encode("y = np.zeros(3)"))
    'y = np.zeros(3)'
    """

    pad_id, unk_id = 0, 1

    def __init__(self, corpus: str, vocab_size: int = 4096):
        counts = Counter(_TOKEN.findall(corpus))
        self.itos = ["<pad>", "<unk>"] + [t for t, _ in counts.most_common(vocab_size - 2)]
        self.stoi = {t: i for i, t in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`; tokens outside the vocabulary become `<unk>`."""
        return [self.stoi.get(t, self.unk_id) for t in _TOKEN.findall(text)]

    def decode(self, ids) -> str:
        """The text of a sequence of ids (`<pad>` dropped)."""
        return "".join(self.itos[i] for i in ids if i != self.pad_id)


def lm_chunks(ids: list[int], seq_len: int) -> torch.Tensor:
    """Cut a token stream into non-overlapping rows of `seq_len` ids: a `(n_rows, seq_len)` tensor
    (the incomplete tail is dropped)."""
    n = len(ids) // seq_len
    return torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len)
