"""The exactness matrix: {TinyCausalLM, GPT-2 from a config, a Llama-style config} x {weighted
cross-entropy on padded batches, the key-token loss, Tinker's sum-reduced importance-sampling loss, DPO through
LogprobLossCB, the fused head} trained on padded, variable-length dict batches.

`run(model, loss, processes_bs, gas, accelerate)` trains one cell and returns its final weights and
epoch table. Run with torchrun, this script trains every cell under the processes it was started
with, for each accumulation in `--gas`, and the main process saves `{cell: (weights, table)}` to OUT,
so the whole two-process half of the matrix is one launch. tests/integration/test_real_models.py compares it
with one process.

Usage: torchrun --standalone --nproc_per_node 2 matrix.py OUT [--gas 1 2]
"""

import argparse
import os

import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from minilearn import DataLoaders, FusedHead, Learner
from minilearn.callbacks import AccelerateCB, AccelerateCustomCB, LogprobLossCB, LossCB, MetricsCB
from minilearn.demo import TinyCausalLM
from minilearn.losses import (IGNORE_INDEX, KeyTokenWeightedLoss, PolicyGradientLoss, WeightedCrossEntropy,
                              make_dpo_loss)

VOCAB, MAX_LEN, GLOBAL_BS, EPOCHS = 40, 12, 8, 2
# The sum-reduced loss's gradient is as large as the batch has tokens: a smaller step keeps every
# model in the range where float32 rounding, not chaos, sets the gap between two summation orders.
LRS = {"weighted_ce": 0.2, "key_token": 0.2, "is_sum": 0.003, "dpo": 0.2, "fused_head": 0.2}
MODELS = ("tiny", "gpt2", "llama")
# The dropout row: GPT-2 with its default dropout of 0.1 and the weighted cross-entropy. Each process
# draws its masks from its own stream, seeded DROPOUT_SEED + its index by AccelerateCB(seed=...).
DROPOUT_MODEL, DROPOUT_SEED = "gpt2_dropout", 1234
LOSSES = ("weighted_ce", "key_token", "is_sum", "dpo", "fused_head")


def model(name: str, seed: int = 0) -> torch.nn.Module:
    """The smallest model of each family that still runs its real code paths (attention masks,
    rotary embeddings, grouped key-value heads); no dropout, so every process computes the same,
    except in the dropout row (`DROPOUT_MODEL`)."""
    torch.manual_seed(seed)
    if name == DROPOUT_MODEL:
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=16, n_layer=1, n_head=2,
                                          use_cache=False, bos_token_id=None, eos_token_id=None))
    if name == "tiny":
        return TinyCausalLM(VOCAB, dim=16, n_layers=1, n_heads=2, max_len=MAX_LEN)
    if name == "gpt2":
        return GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=MAX_LEN, n_embd=16, n_layer=1, n_head=2,
                                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                                          bos_token_id=None, eos_token_id=None))
    return LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=MAX_LEN,
                                        use_cache=False))


def sequences(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`n` sequences of 4 to MAX_LEN tokens, each with its token weights, sampler log-probabilities
    and advantages (the inputs of every loss in the matrix)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(4, MAX_LEN + 1, (1,), generator=g))
        out.append({"input_ids": torch.randint(0, VOCAB, (length,), generator=g),
                    "weights": torch.rand(length, generator=g) + 0.5,
                    "logprobs": -torch.rand(length, generator=g) * 3,
                    "advantages": torch.randn(length, generator=g)})
    return out


def collate(items: list[dict]) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sequence of this batch (so batches, and processes, differ in length)."""
    longest = max(len(it["input_ids"]) for it in items)
    batch = {"input_ids": torch.zeros(len(items), longest, dtype=torch.long),
             "attention_mask": torch.zeros(len(items), longest, dtype=torch.long),
             "target_tokens": torch.full((len(items), longest), IGNORE_INDEX),
             **{k: torch.zeros(len(items), longest) for k in ("weights", "logprobs", "advantages")}}
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        batch["input_ids"][i, :n], batch["attention_mask"][i, :n] = it["input_ids"], 1
        batch["target_tokens"][i, :n - 1] = it["input_ids"][1:]
        for k in ("weights", "logprobs", "advantages"):
            batch[k][i, :n] = it[k]
    return batch


def loss_callbacks(loss: str, model_name: str, accelerate: bool, gas: int) -> list:
    """The callbacks of a cell: the loss under AccelerateCB (or, in the reference, without it)."""
    if model_name == DROPOUT_MODEL:
        return [AccelerateCustomCB(WeightedCrossEntropy(), gradient_accumulation_steps=gas, seed=DROPOUT_SEED)]
    acc = [AccelerateCB(gradient_accumulation_steps=gas)] if accelerate else []
    if loss == "dpo":
        return [*acc, LogprobLossCB(make_dpo_loss(beta=0.5), ref_model=model(model_name, seed=1))]
    fn = {"weighted_ce": WeightedCrossEntropy(), "fused_head": WeightedCrossEntropy(),
          "key_token": KeyTokenWeightedLoss([3, 7, 11], alpha=2.0), "is_sum": PolicyGradientLoss("importance_sampling")}[loss]
    return [AccelerateCustomCB(fn, gradient_accumulation_steps=gas)] if accelerate else [LossCB(fn)]


def network(model_name: str, loss: str) -> torch.nn.Module:
    """The model a cell trains: the fused-head cells wrap the same weights in a FusedHead."""
    net = model(model_name)
    if loss != "fused_head":
        return net
    if model_name != "tiny":
        return FusedHead.from_causal_lm(net)
    fused = TinyCausalLM(VOCAB, dim=16, n_layers=1, n_heads=2, max_len=MAX_LEN, fused_head=True)
    fused.load_state_dict(net.state_dict())
    return fused


def run(model_name: str, loss: str, bs: int, gas: int = 1, accelerate: bool = True) -> tuple[dict, list]:
    """Train one cell: `bs` sequences a process and micro-batch, `gas` micro-batches a step."""
    net = network(model_name, loss)
    dls = DataLoaders(DataLoader(sequences(32, seed=0), batch_size=bs, collate_fn=collate),
                      DataLoader(sequences(16, seed=1), batch_size=bs, collate_fn=collate))
    metrics = MetricsCB()
    learn = Learner(net, dls, lr=LRS[loss], cbs=[metrics, *loss_callbacks(loss, model_name, accelerate, gas)])
    learn.fit(EPOCHS)
    weights = {k: v.detach().clone() for k, v in learn.unwrapped_model.state_dict().items()}
    table = [{k: row[k] for k in ("epoch", "phase", "loss")} for row in metrics.history]
    return weights, table


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--gas", type=int, nargs="+", default=[1, 2])
    args = p.parse_args()
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    results = {}
    for gas in args.gas:
        for model_name in MODELS:
            for loss in LOSSES:
                results[f"{model_name}/{loss}/gas{gas}"] = run(model_name, loss, GLOBAL_BS // (processes * gas), gas)
        results[f"{DROPOUT_MODEL}/weighted_ce/gas{gas}"] = run(DROPOUT_MODEL, "weighted_ce",
                                                               GLOBAL_BS // (processes * gas), gas)
    if int(os.environ.get("RANK", "0")) == 0:
        torch.save(results, args.out)


if __name__ == "__main__":
    main()
