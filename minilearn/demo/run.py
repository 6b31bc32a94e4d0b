"""The demo behind `python -m minilearn demo`: a key-token weighted code language model.

Following the Hugging Face course (chapter 7), a small causal transformer learns Python code that
uses numpy (numpy's own sources, read from the installed package), with the key-token weighted loss
that makes samples using `np` count more. The same model trained with plain cross-entropy is the
baseline; the demo reports how well each predicts the key token.
"""

import hashlib
import importlib.metadata
import textwrap
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from minilearn.callback import Callback
from minilearn.data import DataLoaders
from minilearn.demo.corpus import CodeTokenizer, lm_chunks, python_sources
from minilearn.demo.tiny_model import TinyCausalLM
from minilearn.learner import Learner
from minilearn.losses import KeyTokenWeightedLoss

__all__ = ["lm_batch", "next_token_scores", "key_token_accuracy", "NextTokenScoreCB", "run_demo"]

KEY_TOKENS = ("np",)


def lm_batch(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate rows of token ids `(T,)` into a Hugging Face style batch `{input_ids, attention_mask}`."""
    ids = torch.stack(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def next_token_scores(logits: torch.Tensor, input_ids: torch.Tensor, key_ids: list[int]) -> torch.Tensor:
    """What the demo compares, as sums over a batch: `[plain cross-entropy summed over next-token
    positions, number of positions, key-token hits, number of key-token targets]` (float64, `(4,)`).

    `logits` is `(B, T, V)` and `input_ids` `(B, T)`; position t predicts token t + 1.
    """
    logits, target = logits[:, :-1].float(), input_ids[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="sum")
    is_key = torch.isin(target, torch.tensor(key_ids, device=target.device))
    hits = (logits.argmax(-1) == target)[is_key].sum()
    n = torch.tensor(target.numel(), dtype=torch.float64, device=nll.device)
    return torch.stack([nll.double(), n, hits.double(), is_key.sum().double()])


@torch.no_grad()
def key_token_accuracy(model: torch.nn.Module, dl, key_ids: list[int]) -> tuple[float, int]:
    """Next-token accuracy over the positions whose target is a key token: `(accuracy, count)`."""
    model.eval()
    sums = sum(next_token_scores(model(b["input_ids"], b["attention_mask"]), b["input_ids"], key_ids) for b in dl)
    return sums[2].item() / max(sums[3].item(), 1), int(sums[3])


class NextTokenScoreCB(Callback):
    """Scores each validation pass on one footing for both runs, whatever loss trained them: the
    plain (unweighted) next-token cross-entropy and the key-token accuracy. Rows go to `history`:
    `{"epoch", "plain_valid_loss", "key_token_accuracy", "key_tokens"}`."""

    def __init__(self, key_ids: list[int]):
        self.key_ids, self.history = key_ids, []

    def before_fit(self, learn):
        self.history = []

    def before_epoch(self, learn):
        self.sums = torch.zeros(4, dtype=torch.float64)

    def after_loss(self, learn):
        if not learn.training:
            self.sums += next_token_scores(learn.preds, learn.batch["input_ids"], self.key_ids).cpu()

    def after_epoch(self, learn):
        if not learn.training:
            nll, n, hits, n_key = self.sums.tolist()
            self.history.append({"epoch": learn.epoch, "plain_valid_loss": nll / max(n, 1),
                                 "key_token_accuracy": hits / max(n_key, 1), "key_tokens": int(n_key)})


def run_demo(epochs: int = 2, max_chars: int = 1_000_000, vocab_size: int = 2048, seq_len: int = 64, bs: int = 32,
             lr: float = 3e-3, alpha: float = 1.0, out: str = "minilearn_demo_loss.png", seed: int = 0) -> dict:
    """Train the plain and the key-token weighted model, print their tables and key-token
    accuracies, and save to `out` a plot of both runs' plain validation loss and key-token accuracy
    per epoch; returns `{run name: key-token accuracy}`."""
    # Imported here: the core package never imports the callback library at import time.
    from minilearn.callbacks import AccelerateCustomCB, MetricsCB, OneCycleCB, ProgressCB

    corpus, files = python_sources("numpy", max_chars=max_chars)
    tok = CodeTokenizer(corpus, vocab_size)
    rows = lm_chunks(tok.encode(corpus), seq_len)
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]  # a random valid split
    n_valid = max(len(rows) // 10, 1)
    key_ids = [tok.stoi[t] for t in KEY_TOKENS if t in tok.stoi]
    # What the figures depend on: the same numpy version gives the same text (the digest says so).
    print(f"corpus: {len(corpus):,} characters (sha256 {hashlib.sha256(corpus.encode()).hexdigest()[:12]}) from "
          f"{len(files)} files of numpy {importlib.metadata.version('numpy')}, {rows.numel():,} tokens, vocabulary "
          f"{len(tok)}; key tokens {[tok.itos[i] for i in key_ids]}")
    print(textwrap.fill(", ".join(files), 110, initial_indent="  ", subsequent_indent="  ", break_on_hyphens=False,
                        break_long_words=False))

    runs = {"plain cross-entropy": KeyTokenWeightedLoss([], alpha=1.0),  # no key tokens: the token mean
            "key-token weighted": KeyTokenWeightedLoss(key_ids, alpha=alpha)}
    results, scores = {}, {}
    for name, loss in runs.items():
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)  # both runs see the same batches in the same order
        dls = DataLoaders(DataLoader(rows[n_valid:], batch_size=bs, shuffle=True, generator=g, collate_fn=lm_batch),
                          DataLoader(rows[:n_valid], batch_size=bs, collate_fn=lm_batch))
        model = TinyCausalLM(len(tok), dim=96, n_layers=2, n_heads=4, max_len=seq_len)
        score = NextTokenScoreCB(key_ids)
        learn = Learner(model, dls, lr=lr, opt_func=torch.optim.AdamW, cbs=[MetricsCB(), score, ProgressCB()])
        print(f"\n== {name} ==")
        start = time.monotonic()
        learn.fit(epochs, cbs=[AccelerateCustomCB(loss), OneCycleCB(lr_max=lr)])
        last = score.history[-1]
        results[name], scores[name] = last["key_token_accuracy"], score.history
        print(f"{name}: key-token next-token accuracy {last['key_token_accuracy']:.3f} over {last['key_tokens']} "
              f"validation key tokens, plain validation loss {last['plain_valid_loss']:.4f} "
              f"({time.monotonic() - start:.0f} s, {torch.get_num_threads()} threads)")
    plot_scores(scores, [tok.itos[i] for i in key_ids], out)
    print(f"\nplot written to {Path(out).resolve()}")
    return results


def plot_scores(scores: dict[str, list[dict]], key_tokens: list[str], out: str) -> None:
    """Save the two runs' `NextTokenScoreCB` histories side by side: plain validation loss and
    accuracy on `key_tokens` per epoch."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), constrained_layout=True)
    for ax, key, title, label in zip(axes, ("plain_valid_loss", "key_token_accuracy"),
                                     ("plain validation loss", "key-token accuracy"),
                                     ("unweighted cross-entropy (nats per token)",
                                      f"next-token accuracy on {', '.join(key_tokens)}")):
        for name, rows in scores.items():
            ax.plot([r["epoch"] for r in rows], [r[key] for r in rows], marker="o", label=name)
        ax.set(xlabel="epoch", ylabel=label, title=title)
        ax.xaxis.get_major_locator().set_params(integer=True)
    # Below the plots, so that it never covers a curve.
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=2)
    fig.suptitle("minilearn demo: the same model trained with plain vs key-token weighted loss")
    fig.savefig(out, dpi=100)
    plt.close(fig)
