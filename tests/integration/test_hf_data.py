"""Hugging Face data conventions without glue: a `datasets.Dataset` in torch format feeds
`DataLoaders.from_dsets`, and `DataCollatorForLanguageModeling(mlm=False)` batches (unshifted
`labels`, -100 on padding) train with the token losses through `LabelsToTargets`."""

import pickle
import warnings

import pytest
import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import DataCollatorForLanguageModeling

from minilearn import BatchWarning, DataLoaders, Learner, targets_from_labels
from minilearn.callbacks import AccelerateCustomCB, LossCB, MetricsCB
from minilearn.losses import KeyTokenWeightedLoss, WeightedCrossEntropy

from support import WORDS, collator, dataset, gpt2, tokenizer







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


def batch_warnings(learn, n_epochs=1, **kwargs) -> list[str]:
    """The messages of the BatchWarnings a fit gives (each shown, however often it repeats)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        learn.fit(n_epochs, **kwargs)
    return [str(w.message) for w in seen if issubclass(w.category, BatchWarning)]


def hf_loaders(collate, n_train=24, n_valid=8) -> DataLoaders:
    # 3 training batches of 8 texts of 6 or 10 tokens, padded to the longest of each batch.
    return DataLoaders.from_dsets(dataset(n_train, 0), dataset(n_valid, 1), bs=8, collate_fn=collate)


def test_labels_left_for_the_model_warn_once_a_fit_naming_the_model_and_the_fix():
    dls = hf_loaders(DataCollatorForLanguageModeling(tokenizer(), mlm=False))
    assert "labels" in next(iter(dls.train))
    learn = Learner(gpt2(), dls, lr=0.01, cbs=LossCB(KeyTokenWeightedLoss([3])))
    for _ in range(2):  # once in each fit of 3 training batches (2 epochs: 6)
        messages = batch_warnings(learn, 2)
        assert len(messages) == 1
    msg = messages[0]
    assert all(s in msg for s in ("'labels'", "GPT2LMHeadModel", "LossCB's KeyTokenWeightedLoss",
                                  "LabelsToTargets", "targets_from_labels", "TrainCB(model_inputs="))
    # The fixes: labels turned into targets, or a loss that trains on the model's own loss (which reads them).
    assert batch_warnings(Learner(gpt2(), hf_loaders(collator()), WeightedCrossEntropy(), lr=0.01)) == []
    own = Learner(gpt2(), dls, loss_func=lambda loss: loss, lr=0.01)
    assert batch_warnings(own) == [] and own.loss.ndim == 0


def test_a_hugging_face_causal_lm_is_called_without_a_kv_cache():
    model = gpt2()
    calls = []
    model.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("use_cache")), with_kwargs=True)
    learn = Learner(model, hf_loaders(collator()), WeightedCrossEntropy(), lr=0.01)
    learn.fit(1)
    learn.get_preds()
    assert calls == [False] * 5  # 3 training batches, 1 validation batch, get_preds
    assert "cache" not in learn.preds and "past_key_values" not in learn.preds
    # A batch that sets use_cache keeps it.
    batch = dict(collator()([dataset(2, 0)[i] for i in range(2)]), use_cache=True)
    calls.clear()
    Learner(model, DataLoaders([batch], []), WeightedCrossEntropy(), lr=0.01).fit(1)
    assert calls == [True]


def without_attention_mask(items):
    batch = collator()(items)
    del batch["attention_mask"]
    return batch


def test_padded_input_ids_without_an_attention_mask_warn_once_a_fit():
    # KeyTokenWeightedLoss counts the padding as targets (GPT-2 attends to it): a loss of another value.
    learn = Learner(gpt2(), hf_loaders(without_attention_mask), lr=0.01, cbs=LossCB(KeyTokenWeightedLoss([3])))
    for _ in range(2):
        messages = batch_warnings(learn)
        assert len(messages) == 1
    assert all(s in messages[0] for s in ("input_ids (8, 10)", "right-padded with token 0", "no attention_mask",
                                          "model GPT2LMHeadModel attends to it",
                                          "loss KeyTokenWeightedLoss counts it as targets"))
    padded = collator()([dataset(8, 0)[i] for i in range(8)])
    assert padded["attention_mask"].min() == 0
    loss, model = KeyTokenWeightedLoss([3]), gpt2()
    with_mask = loss(model(padded["input_ids"], attention_mask=padded["attention_mask"]).logits, padded["input_ids"],
                     padded["attention_mask"])
    assert not torch.isclose(loss(model(padded["input_ids"]).logits, padded["input_ids"]), with_mask)
    # With the mask, or with rows of one length (nothing padded), there is nothing to say.
    assert batch_warnings(Learner(gpt2(), hf_loaders(collator()), lr=0.01, cbs=LossCB(KeyTokenWeightedLoss([3])))) == []
    ids = torch.randint(1, len(WORDS) + 2, (24, 10), generator=torch.Generator().manual_seed(0))
    rows = Dataset.from_dict({"input_ids": ids.tolist()}).with_format("torch")
    unpadded = Learner(gpt2(), DataLoaders.from_dsets(rows, rows, bs=8), lr=0.01, cbs=LossCB(KeyTokenWeightedLoss([3])))
    assert batch_warnings(unpadded) == []


def test_left_padding_is_seen_too():
    tok = tokenizer()
    tok.padding_side = "left"
    collate = DataCollatorForLanguageModeling(tok, mlm=False)

    def left_padded(items):
        return {"input_ids": collate(items)["input_ids"]}

    learn = Learner(gpt2(), hf_loaders(left_padded), lr=0.01, cbs=LossCB(KeyTokenWeightedLoss([3])))
    messages = batch_warnings(learn)
    assert len(messages) == 1 and "left-padded with token 0" in messages[0] and "starts of rows" in messages[0]
