"""Hugging Face data conventions without glue: a `datasets.Dataset` in torch format feeds
`DataLoaders.from_dsets`, and `DataCollatorForLanguageModeling(mlm=False)` batches (unshifted
`labels`, -100 on padding) train with the token losses through `LabelsToTargets`."""

import pickle

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from minilearn import DataLoaders, LabelsToTargets, Learner, targets_from_labels
from minilearn.callbacks import AccelerateCustomCB, MetricsCB
from minilearn.losses import WeightedCrossEntropy

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


def dataset(n: int, seed: int) -> Dataset:
    tok = tokenizer()
    ds = Dataset.from_dict({"text": texts(n, seed)})
    ds = ds.map(lambda b: tok(b["text"]), batched=True, remove_columns=["text"])
    return ds.with_format("torch")


def gpt2(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(vocab_size=len(WORDS) + 2, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                                      bos_token_id=0, eos_token_id=0))


def collator() -> LabelsToTargets:
    return LabelsToTargets(DataCollatorForLanguageModeling(tokenizer(), mlm=False))


def test_shifted_labels_give_the_loss_the_hugging_face_model_computes_itself():
    hf_collate = DataCollatorForLanguageModeling(tokenizer(), mlm=False)
    items = [dataset(6, 0)[i] for i in range(6)]
    hf_batch = hf_collate(items)
    assert (hf_batch["labels"] == -100).any(), "the texts differ in length, so some positions are padding"
    batch = collator()(items)
    assert "labels" not in batch and batch["target_tokens"].shape == hf_batch["input_ids"].shape
    model = gpt2().double()
    out = model(input_ids=hf_batch["input_ids"], attention_mask=hf_batch["attention_mask"], labels=hf_batch["labels"])
    ours = WeightedCrossEntropy()(out.logits, batch["target_tokens"])
    # The model's own loss shifts inside (and computes in float32); restated here in float64.
    V = out.logits.shape[-1]
    shifted = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), hf_batch["labels"][:, 1:].reshape(-1))
    torch.testing.assert_close(ours.as_subclass(torch.Tensor), shifted, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours.float().as_subclass(torch.Tensor), out.loss, rtol=1e-6, atol=1e-6)


def test_a_torch_format_dataset_and_the_collator_train_a_gpt2_under_accelerate():
    dls = DataLoaders.from_dsets(dataset(32, 0), dataset(16, 1), bs=8, collate_fn=collator())
    batch = next(iter(dls.train))
    assert set(batch) == {"input_ids", "attention_mask", "target_tokens"}
    metrics = MetricsCB()
    model = gpt2()
    learn = Learner(model, dls, lr=0.05, cbs=[AccelerateCustomCB(WeightedCrossEntropy(), cpu=True), metrics])
    learn.fit(3)
    valid = [row["loss"] for row in metrics.history if row["phase"] == "valid"]
    assert valid[-1] < valid[0] - 0.1


def test_equal_length_rows_of_a_torch_format_dataset_need_no_collator():
    ids = torch.arange(40).view(10, 4) % (len(WORDS) + 2)
    ds = Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": [[1] * 4] * 10}).with_format("torch")
    dls = DataLoaders.from_dsets(ds, ds, bs=4)
    batch = next(iter(dls.valid))
    assert torch.equal(batch["input_ids"], ids[:4]) and batch["attention_mask"].dtype == torch.int64


def test_the_collate_function_can_be_pickled_for_dataloader_workers():
    collate = pickle.loads(pickle.dumps(collator()))
    items = [dataset(4, 2)[i] for i in range(4)]
    assert torch.equal(collate(items)["target_tokens"], collator()(items)["target_tokens"])


def test_a_batch_without_labels_or_with_both_kinds_of_target_is_an_error_naming_its_keys():
    ids = torch.tensor([[3, 4]])
    with pytest.raises(KeyError, match=r"needs a 'labels' key.*keys \['input_ids'\]"):
        targets_from_labels({"input_ids": ids})
    with pytest.raises(ValueError, match="both 'labels' and 'target_tokens'"):
        targets_from_labels({"input_ids": ids, "labels": ids, "target_tokens": ids})
