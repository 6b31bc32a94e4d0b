"""What several test files share: launching real processes, Hugging Face test models and data, running a
notebook, and a learner whose fits can be interrupted and resumed."""

import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from datasets import Dataset as HFDataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from minilearn import Callback, DataLoaders, LabelsToTargets, Learner
from minilearn.callbacks import MetricsCB

DIST = Path(__file__).parent / "integration" / "dist"  # the scripts that run under torchrun
sys.path.insert(0, str(DIST))
import train_weighted as script  # noqa: E402

# How a notebook is run (a fresh kernel, the small setting) is the documentation build's: one rule for both.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "docs"))
from build_hooks import run_notebook  # noqa: E402,F401


WORDS = "the a cat dog sat ran on under mat log and then it slept".split()


def tokenizer() -> PreTrainedTokenizerFast:
    # Built from a word list: nothing is downloaded.
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", *WORDS])}
    tok = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]")


def texts(n: int, seed: int) -> list[str]:
    # Sentences of a small grammar, of 6 or 10 words: something a model can learn, in batches of
    # different lengths.
    g = torch.Generator().manual_seed(seed)
    slots = [("the", "a"), ("cat", "dog"), ("sat", "ran"), ("on", "under"), ("the", "a"), ("mat", "log")]
    out = []
    for _ in range(n):
        words = [pair[int(torch.randint(2, (1,), generator=g))] for pair in slots]
        out.append(" ".join(words + (["and", "then", "it", "slept"] if torch.rand(1, generator=g) < 0.5 else [])))
    return out


class Jittered(Dataset):
    """x plus noise from Python's `random` and numpy's global generator: both must be restored."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.01 * random.gauss(0, 1) + 0.01 * float(np.random.randn()), self.y[i]


SCRIPT = DIST / "train_weighted.py"


def torchrun(out, *args, script=SCRIPT, stdout=None, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(script), str(out), *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    if stdout is not None:
        stdout.append(res.stdout)
    return torch.load(out, weights_only=True)


def one_process(loss, global_bs, epochs=2):
    m = script.model()
    dls = DataLoaders(DataLoader(script.dataset(), batch_size=global_bs), [])
    Learner(m, dls, script.WeightedCE() if loss == "weighted" else script.plain_ce, lr=0.5).fit(epochs)
    return m.state_dict()


def assert_same(a, b, tol=1e-6):
    for k in a:
        assert torch.allclose(a[k], b[k], atol=tol, rtol=0), (k, (a[k] - b[k]).abs().max().item())


NBS_DIR = Path(__file__).resolve().parents[1] / "nbs"


def dataset(n: int, seed: int) -> HFDataset:
    tok = tokenizer()
    ds = HFDataset.from_dict({"text": texts(n, seed)})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    return ds.with_format("torch")


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 2, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def collator() -> LabelsToTargets:
    return LabelsToTargets(DataCollatorForLanguageModeling(tokenizer(), mlm=False))


def make_learner(own_generator=False, seed=0):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    y = x.sum(1, keepdim=True)
    gen = torch.Generator().manual_seed(7) if own_generator else None
    train = DataLoader(Jittered(x[:48], y[:48]), batch_size=8, shuffle=True, generator=gen)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.2), nn.ReLU(), nn.Linear(8, 1))
    dls = DataLoaders(train, DataLoader(TensorDataset(x[48:], y[48:]), batch_size=8))
    return Learner(model, dls, F.mse_loss, lr=0.05, opt_func=torch.optim.Adam, cbs=MetricsCB())


def seed_everything(seed):
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


class SaveThenInterrupt(Callback):
    order = 100

    def __init__(self, path, epoch, iter=None):
        self.path, self.epoch, self.iter = path, epoch, iter

    def after_batch(self, learn):
        if learn.training and learn.epoch == self.epoch and learn.iter == self.iter:
            learn.save(self.path)
            raise KeyboardInterrupt

    def after_epoch(self, learn):
        if not learn.training and learn.epoch == self.epoch and self.iter is None:
            learn.save(self.path)
            raise KeyboardInterrupt
