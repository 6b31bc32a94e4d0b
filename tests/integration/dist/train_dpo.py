"""DPO steps under AccelerateCB with LogprobLossCB; run by tests/integration/test_logprob_loss_multiprocess.py with torchrun.

Each dataset item is a preference pair of token sequences of different lengths; the collate function
lays a batch out as chosen, rejected, chosen, ... and pads it to its own longest sequence, so the
processes' batches differ in length and the log-probabilities are gathered with padding.
Usage: torchrun --standalone --nproc_per_node 2 train_dpo.py OUT --bs 4 [--two-pass --micro 3]
With `--dropout P` it trains twice in the same launch, direct and with two passes, each from the same
weights and the same random state (its own in each process), and saves both as {"direct", "two_pass"}.
"""

import argparse

import torch
from torch.utils.data import DataLoader

from minilearn import DataLoaders, Learner, TrainCB
from minilearn.callbacks import AccelerateCB, LogprobLossCB
from minilearn.distributed import rank
from minilearn.losses import make_dpo_loss
from minilearn.demo.tiny_model import TinyCausalLM

VOCAB, MAX_LEN = 17, 12


def pairs(n=16, seed=0):
    """`n` (chosen, rejected) pairs of random token sequences, 4 to MAX_LEN tokens long."""
    g = torch.Generator().manual_seed(seed)
    def seq(): return torch.randint(0, VOCAB, (int(torch.randint(4, MAX_LEN + 1, (1,), generator=g)),), generator=g)
    return [(seq(), seq()) for _ in range(n)]


def collate(items):
    """Sequences 2i chosen, 2i+1 rejected, right padded to the longest of this batch."""
    seqs = [s for pair in items for s in pair]
    longest = max(len(s) for s in seqs)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, :len(s)], mask[i, :len(s)] = s, 1
    return {"input_ids": ids, "attention_mask": mask}


def model(seed=0, dropout=0.0):
    torch.manual_seed(seed)
    return TinyCausalLM(VOCAB, dim=16, n_layers=1, n_heads=2, max_len=MAX_LEN, dropout=dropout)


def callbacks(args):
    """The loss callback, and TrainCB told the model's inputs: it cannot read them from the
    signature of DistributedDataParallel's forward (*inputs, **kwargs)."""
    return [TrainCB(model_inputs=["input_ids", "attention_mask"]),
            LogprobLossCB(make_dpo_loss(beta=0.5), two_pass=args.two_pass, micro_batch_size=args.micro,
                          ref_model=model(seed=1))]


def parse(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--bs", type=int, default=4, help="pairs a process")
    p.add_argument("--two-pass", action="store_true")
    p.add_argument("--micro", type=int, default=None, help="sequences a surrogate pass")
    p.add_argument("--dropout", type=float, default=0.0, help="train direct and two-pass with this dropout")
    return p.parse_args(argv)


def train(args) -> tuple[dict, bool]:
    """The weights after one epoch, and whether this is the main process."""
    dls = DataLoaders(DataLoader(pairs(), batch_size=args.bs, collate_fn=collate), [])
    learn = Learner(model(dropout=args.dropout), dls, lr=0.5, cbs=[AccelerateCB(), *callbacks(args)])
    torch.manual_seed(100 + rank())  # each process draws its own dropout masks
    learn.fit(1)
    return {k: v.clone() for k, v in learn.unwrapped_model.state_dict().items()}, learn.is_main_process


def main():
    args = parse()
    if args.dropout:
        runs = {name: train(argparse.Namespace(**{**vars(args), "two_pass": two_pass}))
                for name, two_pass in (("direct", False), ("two_pass", True))}
        weights, main_process = {name: w for name, (w, _) in runs.items()}, runs["direct"][1]
    else:
        weights, main_process = train(args)
    if main_process:
        torch.save(weights, args.out)


if __name__ == "__main__":
    main()
