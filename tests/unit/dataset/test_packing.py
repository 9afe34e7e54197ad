"""Acceptance: per-example loss of a packed batch equals the unpacked loss within 1e-5 (fp32, tiny random LLaMA).

Run: /work/venv/bin/pytest tests/test_packing.py -q

Real examples from the project's sample (built with the shipped tiny tokenizer) are packed several to a row,
collated with the block-causal 4D mask and restarting position ids, and run through a tiny random
LlamaForCausalLM; each example's mean cross-entropy on its label tokens is compared with the same example run
alone. A negative control (a plain 2D mask over the same packed rows) shows the comparison can fail. The
pad-to-longest path is compared with Alpaca's DataCollatorForSupervisedDataset, re-written here from its code.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from alpaca_ds.config import load_config
from alpaca_ds.dataset import build
from alpaca_ds.dataset.collate import collate
from alpaca_ds.dataset.config import DataBuildConfig
from alpaca_ds.dataset.sampler import MicroBatchSampler, pack
from alpaca_ds.dataset.shards import TokenizedDataset
from helpers.evaluation import random_llama

IGNORE_INDEX = -100  # Alpaca's train.py value, restated rather than imported
TOL = 1e-5


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenized")
    build.run(
        load_config(
            DataBuildConfig, None, [f"output={out}", "workers=1", "val_fraction=0"], defaults=build.default_config()
        )
    )
    ds = TokenizedDataset(out)
    tok = ds.manifest["tokenizer"]
    assert tok["pad_token_id"] is not None
    return ds, int(tok["vocab_size"]), int(tok["pad_token_id"])


def supervised(ds, i) -> bool:
    """Has at least one label that a model predicts (the first token is never predicted)."""
    return bool((ds[i]["labels"][1:] != IGNORE_INDEX).any())


@pytest.fixture(scope="module")
def packed_rows(dataset):
    """3 rows of several real examples each (best-fit packing of the 12 shortest supervised examples)."""
    ds, _, _ = dataset
    usable = [i for i in range(len(ds)) if supervised(ds, i)]
    chosen = np.array(sorted(usable, key=lambda i: (int(ds.lengths[i]), i))[:12])
    rows = pack(chosen, ds.lengths, 512)
    assert len(rows) == 3 and all(len(r) >= 2 for r in rows), rows
    # rows of different lengths, so the collator also pads
    assert len({int(ds.lengths[r].sum()) for r in rows}) == 3
    return rows


def tiny_llama(vocab_size: int, attn: str) -> LlamaForCausalLM:
    model = random_llama(vocab_size, hidden=64, layers=2, heads=4, kv_heads=2, attn_implementation=attn)
    model = model.float().eval()
    assert model.config._attn_implementation == attn
    return model


def batch_logits(model: LlamaForCausalLM, batch: dict) -> torch.Tensor:
    """The model's logits over a collated batch, with the collator's attention mask and position ids."""
    return model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).logits


def example_loss(logits: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """Mean cross-entropy of one example: logits at t predict the label at t + 1 (labels in the example's own
    frame, straight from the dataset)."""
    return F.cross_entropy(logits[:-1].double(), torch.from_numpy(labels[1:]), ignore_index=IGNORE_INDEX)


@torch.no_grad()
def alone_losses(model, ds, indices) -> dict[int, torch.Tensor]:
    out = {}
    for i in indices:
        e = ds[i]
        logits = model(input_ids=torch.from_numpy(e["input_ids"])[None], use_cache=False).logits[0]
        out[i] = example_loss(logits, e["labels"])
    return out


@torch.no_grad()
def packed_losses(model, ds, rows, batch) -> dict[int, torch.Tensor]:
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).logits
    out = {}
    for b, row in enumerate(rows):
        start = 0
        for i in row:
            e = ds[i]
            n = len(e["input_ids"])
            assert torch.equal(batch["input_ids"][b, start : start + n], torch.from_numpy(e["input_ids"]))
            out[i] = example_loss(logits[b, start : start + n], e["labels"])
            start += n
    return out


# --------------------------------------------------------------------------------------------------- acceptance


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_loss_equals_unpacked_loss_per_example(dataset, packed_rows, attn):
    ds, vocab, pad_id = dataset
    model = tiny_llama(vocab, attn)
    batch = collate([[ds[i] for i in row] for row in packed_rows], pad_id)
    assert batch["attention_mask"].dim() == 4 and batch["attention_mask"].dtype == torch.float32
    packed = packed_losses(model, ds, packed_rows, batch)
    alone = alone_losses(model, ds, [i for row in packed_rows for i in row])
    diffs = {i: abs(packed[i] - alone[i]).item() for i in alone}
    assert all(torch.isfinite(v) for v in alone.values())
    assert max(diffs.values()) < TOL, diffs

    # The training loss as the loop computes it (collated labels, shifted once over the whole row) is the same
    # token sum as the examples alone: no cross-boundary prediction, no padding counted.
    with torch.no_grad():
        logits = batch_logits(model, batch)
    total_packed = F.cross_entropy(
        logits[:, :-1].reshape(-1, vocab).double(),
        batch["labels"][:, 1:].reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    tokens_alone = {i: int((ds[i]["labels"][1:] != IGNORE_INDEX).sum()) for i in alone}
    total_alone = sum(alone[i] * tokens_alone[i] for i in alone)
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == sum(tokens_alone.values())
    assert abs(total_packed - total_alone).item() < TOL * sum(tokens_alone.values())


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_negative_control_plain_mask_changes_losses(dataset, packed_rows, attn):
    """Without the block mask, later examples of a row attend to earlier ones: the check above must notice."""
    ds, vocab, pad_id = dataset
    model = tiny_llama(vocab, attn)
    batch = collate([[ds[i] for i in row] for row in packed_rows], pad_id)
    leaky = dict(batch, attention_mask=torch.ones_like(batch["input_ids"]))
    packed = packed_losses(model, ds, packed_rows, leaky)
    alone = alone_losses(model, ds, [i for row in packed_rows for i in row])
    diffs = {i: abs(packed[i] - alone[i]).item() for i in alone}
    assert max(diffs.values()) > 1e-3, diffs
    # the first example of each row sees nothing before it, so it is unaffected even here
    assert all(diffs[row[0]] < TOL for row in packed_rows), diffs


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_micro_batches_from_the_sampler(dataset, attn):
    """The same equality for micro-batches as MicroBatchSampler hands them out (packed mode, a 1024-token row),
    including the longest (truncated to 512) examples."""
    ds, vocab, pad_id = dataset
    model = tiny_llama(vocab, attn)
    sampler = MicroBatchSampler(ds.lengths, 2, seed=1, mode="packed", pack_length=1024)
    batches = sampler.epoch_batches(0)
    longest = int(np.argmax(ds.lengths))
    picked = [batches[0], next(b for b in batches if any(longest in r for r in b))]
    for rows in picked:
        rows = [[i for i in r if supervised(ds, i)] for r in rows]
        rows = [r for r in rows if r]
        batch = collate([[ds[i] for i in r] for r in rows], pad_id)
        packed = packed_losses(model, ds, rows, batch)
        alone = alone_losses(model, ds, [i for r in rows for i in r])
        diffs = {i: abs(packed[i] - alone[i]).item() for i in alone}
        assert max(diffs.values()) < TOL, diffs


def test_packed_labels_and_positions(dataset, packed_rows):
    ds, _, pad_id = dataset
    batch = collate([[ds[i] for i in row] for row in packed_rows], pad_id)
    width = max(int(ds.lengths[r].sum()) for r in packed_rows)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["position_ids"].shape == (3, width)
    assert batch["attention_mask"].shape == (3, 1, width, width)
    allowed = batch["attention_mask"][:, 0] == 0
    for b, row in enumerate(packed_rows):
        start = 0
        for i in row:
            e = ds[i]
            n = len(e["input_ids"])
            labels = batch["labels"][b, start : start + n]
            # no prediction across the boundary: the first token of every example carries no label
            assert labels[0].item() == IGNORE_INDEX
            assert torch.equal(labels[1:], torch.from_numpy(e["labels"][1:]))
            assert torch.equal(batch["position_ids"][b, start : start + n], torch.arange(n))
            # each token sees exactly the earlier tokens of its own example
            block = allowed[b, start : start + n]
            expect = torch.zeros(n, width, dtype=torch.bool)
            expect[:, start : start + n] = torch.ones(n, n, dtype=torch.bool).tril()
            assert torch.equal(block, expect)
            start += n
        assert (batch["input_ids"][b, start:] == pad_id).all()
        assert (batch["labels"][b, start:] == IGNORE_INDEX).all()
        # padding sees no real token (and no real token sees padding)
        assert not allowed[b, start:, :start].any() and not allowed[b, :start, start:].any()
    # every supervised token of every example is still supervised, except each example's first token
    real = sum(int((ds[i]["labels"][1:] != IGNORE_INDEX).sum()) for r in packed_rows for i in r)
    assert int((batch["labels"] != IGNORE_INDEX).sum()) == real


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_fully_labelled_examples_get_no_cross_boundary_label(dataset, attn):
    """Examples whose every token is a label (no prompt to mask): the collator itself must drop the label of
    each example's first token, which would otherwise be predicted from the previous example's last token."""
    ds, vocab, pad_id = dataset
    rng = np.random.default_rng(1)
    examples = []
    for n in (17, 5, 30, 9, 12):
        ids = rng.integers(3, vocab - 1, size=n).astype(np.int64)
        examples.append({"input_ids": ids, "labels": ids.copy()})
    rows = [examples[:3], examples[3:]]
    batch = collate(rows, pad_id)
    model = tiny_llama(vocab, attn)
    with torch.no_grad():
        logits = batch_logits(model, batch)
        for b, row in enumerate(rows):
            start = 0
            for e in row:
                n = len(e["input_ids"])
                assert batch["labels"][b, start].item() == IGNORE_INDEX
                assert torch.equal(batch["labels"][b, start + 1 : start + n], torch.from_numpy(e["labels"][1:]))
                alone = model(input_ids=torch.from_numpy(e["input_ids"])[None], use_cache=False).logits[0]
                assert (
                    abs(
                        example_loss(logits[b, start : start + n], e["labels"]) - example_loss(alone, e["labels"])
                    ).item()
                    < TOL
                )
                start += n
    # the loop's whole-batch loss counts exactly the in-example predictions
    assert int((batch["labels"][:, 1:] != IGNORE_INDEX).sum()) == sum(len(e["input_ids"]) - 1 for e in examples)


# --------------------------------------------------------------------------------------------------- Alpaca's collator


def alpaca_data_collator(instances: list[dict], pad_token_id: int) -> dict:
    """DataCollatorForSupervisedDataset.__call__ from tatsu-lab/stanford_alpaca train.py."""
    input_ids, labels = tuple([instance[key] for instance in instances] for key in ("input_ids", "labels"))
    input_ids = torch.nn.utils.rnn.pad_sequence(input_ids, batch_first=True, padding_value=pad_token_id)
    labels = torch.nn.utils.rnn.pad_sequence(labels, batch_first=True, padding_value=IGNORE_INDEX)
    return dict(input_ids=input_ids, labels=labels, attention_mask=input_ids.ne(pad_token_id))


def test_pad_to_longest_reproduces_alpaca_collator(dataset):
    ds, _, pad_id = dataset
    rng = np.random.default_rng(0)
    for size in (1, 2, 5, 8):
        idx = rng.choice(len(ds), size=size, replace=False).tolist()
        ours = collate([[ds[i]] for i in idx], pad_id)
        ref = alpaca_data_collator(
            [{k: torch.from_numpy(ds[i][k]) for k in ("input_ids", "labels")} for i in idx], pad_id
        )
        assert torch.equal(ours["input_ids"], ref["input_ids"])
        assert ours["input_ids"].dtype == torch.long
        assert torch.equal(ours["labels"], ref["labels"])
        assert torch.equal(ours["attention_mask"].bool(), ref["attention_mask"])
        assert "position_ids" not in ours


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_pad_to_longest_loss_equals_unpadded(dataset, attn):
    """The random / length_grouped path: right padding with a 2D mask changes no example's loss."""
    ds, vocab, pad_id = dataset
    model = tiny_llama(vocab, attn)
    lengths = ds.lengths
    idx = [i for i in np.argsort(lengths, kind="stable")[::12].tolist() if supervised(ds, i)][:6]
    assert len({int(lengths[i]) for i in idx}) > 1
    batch = collate([[ds[i]] for i in idx], pad_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
    alone = alone_losses(model, ds, idx)
    for b, i in enumerate(idx):
        n = int(lengths[i])
        assert abs(example_loss(logits[b, :n], ds[i]["labels"]) - alone[i]).item() < TOL
