"""minilearn.sampling.sample: the sampler's log-probabilities are the model's (recomputed by a forward
pass over the returned batch), eos and padding are handled, seeds reproduce, modes are restored."""

import pytest
import torch
import torch.nn.functional as F
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from minilearn import FusedHead
from minilearn.demo import TinyCausalLM
from minilearn.losses import IGNORE_INDEX, token_logprobs
from minilearn.sampling import completion_tokens, sample

VOCAB = 13
PROMPTS = [[1, 2, 3], [4], [5, 6]]


def models() -> dict:
    torch.manual_seed(0)
    return {
        "tiny": TinyCausalLM(VOCAB, dim=16, n_layers=2, n_heads=2, max_len=32),
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16, n_layer=2, n_head=2)),
        "llama": LlamaForCausalLM(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=32,
                                              num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                              max_position_embeddings=32)),
        "fused": FusedHead.from_causal_lm(GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_positions=32, n_embd=16,
                                                                     n_layer=1, n_head=2))),
    }


def recomputed(model, out, temperature=1.0):
    # The model's log-probabilities of the drawn tokens, from one forward pass over the returned batch.
    model.eval()
    with torch.no_grad():
        res = model(input_ids=out["input_ids"], attention_mask=out["attention_mask"])
    logits = res.materialize() if hasattr(res, "materialize") else getattr(res, "logits", res)
    return token_logprobs(logits.double() / temperature, out["target_tokens"])


@pytest.mark.parametrize("name", ["tiny", "gpt2", "llama", "fused"])
def test_logprobs_equal_the_model_recomputed_on_the_batch(name):
    model = models()[name]
    out = sample(model, PROMPTS, max_new_tokens=6, group_size=3, eos_token_id=0,
                 generator=torch.Generator().manual_seed(1))
    counted = out["target_tokens"] != IGNORE_INDEX
    assert counted.sum() > 10
    torch.testing.assert_close(out["logprobs"].double(), recomputed(model, out), atol=1e-5, rtol=0)
    assert (out["logprobs"][~counted] == 0).all()


def test_the_cache_and_the_whole_sequence_agree():
    # GPT-2 samples through its KV cache; the same model behind a signature without past_key_values
    # runs the whole sequence every step: the same seed must give the same tokens and logprobs.
    gpt2 = models()["gpt2"]

    class NoCache(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lm = gpt2

        def forward(self, input_ids, attention_mask=None):
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits

    a = sample(gpt2, PROMPTS, 5, group_size=2, generator=torch.Generator().manual_seed(3))
    b = sample(NoCache(), PROMPTS, 5, group_size=2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["input_ids"], b["input_ids"])
    torch.testing.assert_close(a["logprobs"], b["logprobs"], atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_hugging_face_models_are_run_one_new_token_at_a_time(name):
    model = models()[name]
    widths = []
    hook = model.register_forward_pre_hook(lambda m, args, kwargs: widths.append(kwargs["input_ids"].shape[1]),
                                           with_kwargs=True)
    try:
        sample(model, PROMPTS, 4, generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert widths == [3, 1, 1, 1]  # the prompts once, then each drawn token alone: the KV cache holds the rest


@pytest.mark.parametrize("temperature,top_k", [(0.7, None), (1.5, 4), (1.0, 1)])
def test_logprobs_are_those_of_the_distribution_sampled(temperature, top_k):
    model = models()["tiny"]
    out = sample(model, PROMPTS, 5, temperature=temperature, top_k=top_k, group_size=4,
                 generator=torch.Generator().manual_seed(2))
    model.eval()
    with torch.no_grad():
        logits = model(out["input_ids"], out["attention_mask"]).double() / temperature
    if top_k is not None:  # the k most likely tokens, renormalised
        kth = logits.topk(top_k, -1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    counted = out["target_tokens"] != IGNORE_INDEX
    expected = torch.where(counted, token_logprobs(logits, out["target_tokens"]), 0.0)
    torch.testing.assert_close(out["logprobs"].double(), expected, atol=1e-5, rtol=0)
    if top_k is not None:  # every drawn token is among the k most likely
        assert torch.isfinite(expected[counted]).all()
    if top_k == 1:
        assert (out["logprobs"][counted] == 0).all()


def test_greedy_picks_the_argmax():
    model = models()["tiny"]
    out = sample(model, PROMPTS, 4, temperature=0.0, group_size=2)
    a, b = out["input_ids"][0::2], out["input_ids"][1::2]
    assert torch.equal(a, b)  # no randomness: a group is one completion repeated
    model.eval()
    with torch.no_grad():
        logits = model(out["input_ids"], out["attention_mask"])
    counted = out["target_tokens"] != IGNORE_INDEX
    assert torch.equal(logits.argmax(-1)[counted], out["target_tokens"][counted])
    torch.testing.assert_close(out["logprobs"].double(), recomputed(model, out), atol=1e-5, rtol=0)


def test_layout_groups_prompts_and_padding():
    out = sample(models()["tiny"], PROMPTS, max_new_tokens=4, group_size=2, pad_token_id=9,
                 generator=torch.Generator().manual_seed(0))
    assert out["input_ids"].shape == (6, 3 + 4)
    assert out["prompt_index"].tolist() == [0, 0, 1, 1, 2, 2]
    # Prompts are left-padded: [4] sits in the last column of the prompt block.
    assert out["input_ids"][2, :3].tolist() == [9, 9, 4] and out["attention_mask"][2, :3].tolist() == [0, 0, 1]
    # Without eos every row draws all 4 tokens: targets at positions 2..5, the drawn tokens shifted by one.
    counted = out["target_tokens"] != IGNORE_INDEX
    assert counted.sum(1).tolist() == [4] * 6 and counted[:, 2:6].all()
    assert torch.equal(out["target_tokens"][:, 2:6], out["input_ids"][:, 3:7])
    assert completion_tokens(out) == out["input_ids"][:, 3:].tolist()


class Countdown(torch.nn.Module):
    """A causal LM that prefers token `n - 1` after token n, and eos (0) after 1: a row starting at n
    stops after n tokens."""

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(30.0))

    def forward(self, input_ids, attention_mask=None):
        target = (input_ids - 1).clamp(min=0)
        return self.scale * F.one_hot(target, VOCAB).float()


def test_each_row_stops_at_eos_and_is_padded_after():
    out = sample(Countdown(), [[3], [1], [6]], max_new_tokens=8, eos_token_id=0, pad_token_id=12)
    # Rows stop after 3, 1 and 6 drawn tokens (eos included); the batch ends when the last one stops.
    assert out["input_ids"].shape == (3, 1 + 6)
    assert completion_tokens(out, eos_token_id=0) == [[2, 1], [], [5, 4, 3, 2, 1]]
    assert completion_tokens(out) == [[2, 1, 0], [0], [5, 4, 3, 2, 1, 0]]
    assert out["input_ids"][1].tolist() == [1, 0, 12, 12, 12, 12, 12]
    assert out["attention_mask"][1].tolist() == [1, 1, 0, 0, 0, 0, 0]
    assert (out["target_tokens"] != IGNORE_INDEX).sum(1).tolist() == [3, 1, 6]
    assert (out["logprobs"][out["target_tokens"] == IGNORE_INDEX] == 0).all()


def test_all_rows_stopping_ends_early():
    out = sample(Countdown(), [[2], [2]], max_new_tokens=50, eos_token_id=0)
    assert out["input_ids"].shape == (2, 3)


def test_the_same_seed_gives_the_same_samples():
    model = models()["gpt2"]
    draws = [sample(model, PROMPTS, 6, group_size=4, generator=torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert torch.equal(draws[0]["input_ids"], draws[1]["input_ids"])
    assert torch.equal(draws[0]["logprobs"], draws[1]["logprobs"])
    assert not torch.equal(draws[0]["input_ids"], draws[2]["input_ids"])


def test_modes_restored_and_no_graph():
    model = models()["tiny"]
    model.train()
    model.blocks.eval()  # a mixed state must come back as it was
    out = sample(model, PROMPTS, 3)
    assert model.training and not model.blocks.training and model.norm.training
    assert not out["logprobs"].requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_tokenizer_output_as_prompts():
    model = models()["tiny"]
    enc = {"input_ids": torch.tensor([[0, 0, 4], [1, 2, 3]]), "attention_mask": torch.tensor([[0, 0, 1], [1, 1, 1]])}
    a = sample(model, enc, 3, generator=torch.Generator().manual_seed(0))
    b = sample(model, [[4], [1, 2, 3]], 3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["input_ids"], b["input_ids"])


@pytest.mark.parametrize("kwargs,message", [
    (dict(prompts=[]), "at least one prompt"),
    (dict(prompts=[[1], []]), "every prompt at least one token"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(group_size=0), "group_size"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(prompts=torch.ones(3, dtype=torch.long)), "shape (3,)"),
])
def test_bad_arguments_are_named(kwargs, message):
    args = dict(prompts=PROMPTS, max_new_tokens=3) | kwargs
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sample(models()["tiny"], **args)


def test_a_model_that_returns_no_logits_is_named():
    class Scalar(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, input_ids, attention_mask=None):
            return {"loss": self.w}

    with pytest.raises(TypeError, match="logits"):
        sample(Scalar(), PROMPTS, 2)
