"""A code corpus that needs no download: the Python sources of one installed package, and a tokenizer.

The demo trains a small language model on numpy's own sources (its tests use `np.` densely). Reading one
named package, not all of site-packages, makes the corpus depend on that package's version only, not on
whatever else happens to be installed, so a run's figures reproduce.
"""

import importlib.util
import re
from collections import Counter
from pathlib import Path

import torch

__all__ = ["python_sources", "CodeTokenizer", "lm_chunks"]

# Identifiers, numbers, runs of spaces, newlines, and single other characters: enough structure for a
# small model to learn `np.` patterns, with a vocabulary of a few thousand.
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z_0-9]*|\d+|\n|[ ]+|.")


def python_sources(package: str = "numpy", markers: tuple[str, ...] = ("import numpy as np",),
                   max_chars: int = 2_000_000) -> tuple[str, list[str]]:
    """The `.py` files of the installed `package` that contain one of `markers`, those that use the
    marked names (`np.` for `import numpy as np`) most densely first, joined up to `max_chars`
    characters: returns `(text, files)`, `files` being the paths used relative to site-packages
    (`"numpy/_core/tests/test_ufunc.py"`, ...). The text depends only on the package's version.

    >>> text, files = python_sources(max_chars=10_000)
    >>> len(text), files[0].startswith("numpy/")
    (10000, True)
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"python_sources reads the .py files of an installed package, but {package!r} is "
                                  f"not one (no such package, or a single module)")
    root = Path(spec.submodule_search_locations[0])
    names = [m.rsplit(" ", 1)[-1] + "." for m in markers]  # "import numpy as np" -> "np."
    found = []
    for path in sorted(root.rglob("*.py")):
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if any(m in text for m in markers):
            density = sum(text.count(n) for n in names) / max(len(text), 1)
            found.append((-density, path.relative_to(root.parent).as_posix(), text))
    if not found:
        raise FileNotFoundError(f"no .py file of {package!r} (under {root}) contains any of {markers}")
    parts, files, total = [], [], 0
    for _, name, text in sorted(found):
        parts.append(text)
        files.append(name)
        total += len(text) + 1
        if total >= max_chars:
            break
    return "\n".join(parts)[:max_chars], files


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
