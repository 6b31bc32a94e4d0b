"""The demo behind `python -m minilearn demo`: a key-token weighted code language model.

Following the Hugging Face course (chapter 7), a small causal transformer learns Python code that
uses numpy (and pandas where it is installed), read from the installed packages, with the
key-token weighted loss that makes samples using `np` and `pd` count more. The same model trained
with plain cross-entropy is the baseline; the demo reports how well each predicts the key tokens.
"""

import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from minilearn.corpus import CodeTokenizer, lm_chunks, python_sources
from minilearn.data import DataLoaders
from minilearn.learner import Learner
from minilearn.losses import KeyTokenWeightedLoss
from minilearn.models import TinyCausalLM

__all__ = ["lm_batch", "key_token_accuracy", "run_demo"]

KEY_TOKENS = ("np", "pd")


def lm_batch(rows: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Collate rows of token ids `(T,)` into a Hugging Face style batch `{input_ids, attention_mask}`."""
    ids = torch.stack(rows)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.no_grad()
def key_token_accuracy(model: torch.nn.Module, dl, key_ids: list[int]) -> tuple[float, int]:
    """Next-token accuracy over the positions whose target is a key token: `(accuracy, count)`."""
    model.eval()
    hits = total = 0
    for batch in dl:
        ids = batch["input_ids"]
        preds = model(ids, batch["attention_mask"])[:, :-1].argmax(-1)
        target = ids[:, 1:]
        is_key = torch.isin(target, torch.tensor(key_ids))
        hits += (preds == target)[is_key].sum().item()
        total += is_key.sum().item()
    return hits / max(total, 1), total


def run_demo(epochs: int = 2, max_chars: int = 1_000_000, vocab_size: int = 2048, seq_len: int = 64, bs: int = 32,
             lr: float = 3e-3, alpha: float = 1.0, out: str = "minilearn_demo_loss.png", seed: int = 0) -> dict:
    """Train the plain and the key-token weighted model, print their tables and key-token
    accuracies, save both loss curves to `out`; returns `{run name: key-token accuracy}`."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    # Imported here: the core package never imports the callback library at import time.
    from minilearn.callbacks import AccelerateCustomCB, MetricsCB, OneCycleCB, ProgressCB, Recorder

    corpus = python_sources(max_chars=max_chars)
    tok = CodeTokenizer(corpus, vocab_size)
    rows = lm_chunks(tok.encode(corpus), seq_len)
    rows = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))]  # a random valid split
    n_valid = max(len(rows) // 10, 1)
    key_ids = [tok.stoi[t] for t in KEY_TOKENS if t in tok.stoi]
    print(f"corpus: {len(corpus):,} characters of installed Python code using numpy/pandas, {rows.numel():,} "
          f"tokens, vocabulary {len(tok)}; key tokens {[tok.itos[i] for i in key_ids]}")

    runs = {"plain cross-entropy": KeyTokenWeightedLoss([], alpha=1.0),  # no key tokens: the token mean
            "key-token weighted": KeyTokenWeightedLoss(key_ids, alpha=alpha)}
    results, fig, ax = {}, *plt.subplots(figsize=(7, 4))
    for name, loss in runs.items():
        torch.manual_seed(seed)
        g = torch.Generator().manual_seed(seed)  # both runs see the same batches in the same order
        dls = DataLoaders(DataLoader(rows[n_valid:], batch_size=bs, shuffle=True, generator=g, collate_fn=lm_batch),
                          DataLoader(rows[:n_valid], batch_size=bs, collate_fn=lm_batch))
        model = TinyCausalLM(len(tok), dim=96, n_layers=2, n_heads=4, max_len=seq_len)
        learn = Learner(model, dls, lr=lr, opt_func=torch.optim.AdamW, cbs=[MetricsCB(), Recorder(), ProgressCB()])
        print(f"\n== {name} ==")
        start = time.monotonic()
        learn.fit(epochs, cbs=[AccelerateCustomCB(loss), OneCycleCB(lr_max=lr)])
        acc, n = key_token_accuracy(learn.model, dls.valid, key_ids)
        results[name] = acc
        print(f"{name}: key-token next-token accuracy {acc:.3f} over {n} validation key tokens "
              f"({time.monotonic() - start:.0f} s)")
        ax.plot(learn.recorder.losses, label=name, alpha=0.8)
    ax.set(xlabel="training batch", ylabel="training loss (each run's own loss)",
           title="minilearn demo: code LM, plain vs key-token weighted loss")
    ax.legend()
    fig.savefig(out, dpi=100)
    print(f"\nloss plot written to {Path(out).resolve()}")
    return results
