"""Packing samples into rows and batching them (qwenft_trainer.packing).

Covers: every sample lands in exactly one row, whole and in order of its tokens; rows never
exceed max_seq_length; position ids restart at 0 per sample; the first label of every
sample is -100; best-fit packing fills short dialogues to >= 95% of the slots; the packed
collator stacks rows (a short row gets a pad segment of its own) or flattens them, without
an attention mask; no leakage between packed samples: each sample's logits inside a batch
of packed rows equal its logits run alone (tiny model, fp32, sdpa and eager, stacked and
flattened); configure_model_for_packing turns the KV cache off (with the cache on,
transformers ignores the packing, which the test shows) and turns packing off for attention
kernels that can't keep samples apart; the padding collator pads labels with -100 and builds the
attention mask, to the batch's longest sample or to max_seq_length.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer.data import IGNORE_INDEX, TokenizedSample
from qwenft_trainer.packing import (
    PackedCollator,
    PaddingCollator,
    build_features,
    pack_samples,
)
from qwenft_trainer.packing_mode import configure_model_for_packing


def fake_sample(length: int, start: int) -> TokenizedSample:
    ids = list(range(start, start + length))
    return TokenizedSample(input_ids=ids, labels=list(ids), truncated=False)


def random_samples(count: int, seed: int = 0) -> list[TokenizedSample]:
    rng = random.Random(seed)
    return [fake_sample(rng.randint(20, 300), 1000 * i) for i in range(count)]


def test_every_sample_is_packed_whole_once_within_the_limit() -> None:
    samples = random_samples(200)
    rows = pack_samples(samples, max_seq_length=1024)
    assert all(len(row.input_ids) <= 1024 for row in rows)
    pieces: list[tuple[int, ...]] = []
    for row in rows:
        assert len(row.input_ids) == len(row.labels) == len(row.position_ids) == sum(row.lengths)
        offset = 0
        for length in row.lengths:
            assert row.position_ids[offset : offset + length] == list(range(length))
            assert row.labels[offset] == IGNORE_INDEX
            assert (
                row.labels[offset + 1 : offset + length]
                == row.input_ids[offset + 1 : offset + length]
            )
            pieces.append(tuple(row.input_ids[offset : offset + length]))
            offset += length
    assert sorted(pieces) == sorted(tuple(s.input_ids) for s in samples)


def test_short_dialogues_fill_the_rows() -> None:
    rows = pack_samples(random_samples(500), max_seq_length=2048)
    # the share of the rows' token slots that hold real tokens
    filled = sum(len(row.input_ids) for row in rows) / (len(rows) * 2048)
    assert filled >= 0.95


def test_samples_longer_than_the_limit_are_refused() -> None:
    with pytest.raises(ValueError, match="longer than max_seq_length=8"):
        pack_samples([fake_sample(9, 0)], max_seq_length=8)


def test_build_features_packed_or_not() -> None:
    samples = [fake_sample(3, 0), fake_sample(4, 10)]
    assert build_features(samples, 8, packing=True) == [
        {
            "input_ids": [10, 11, 12, 13, 0, 1, 2],
            "labels": [IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 1, 2],
            "position_ids": [0, 1, 2, 3, 0, 1, 2],
        }
    ]
    assert build_features(samples, 8, packing=False)[0] == {
        "input_ids": [0, 1, 2],
        "labels": [0, 1, 2],
    }


def test_packed_collator_stacks_rows_with_a_pad_segment_and_no_mask() -> None:
    samples = [fake_sample(3, 0), fake_sample(4, 10), fake_sample(2, 20)]
    rows = [r.to_features() for r in pack_samples(samples, 5)]
    batch = PackedCollator(pad_token_id=99)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 99], [0, 1, 2, 20, 21]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [
        [IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX],
        [IGNORE_INDEX, 1, 2, IGNORE_INDEX, 21],
    ]


def test_packed_collator_can_flatten_for_varlen_kernels() -> None:
    rows = [r.to_features() for r in pack_samples([fake_sample(3, 0), fake_sample(4, 10)], 4)]
    batch = PackedCollator(flatten=True)(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 0, 1, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 1, 2]]


@pytest.fixture(scope="module")
def tiny_samples(tiny_model_dir: Path) -> list[TokenizedSample]:
    from qwenft_trainer.data import tokenize_all
    from qwenft_trainer.formats import load_conversations
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    data = Path(__file__).parent / "data"
    convs = load_conversations(data / "dialogue_sequence.jsonl") + load_conversations(
        data / "sharegpt.json"
    )
    return tokenize_all(convs, tokenizer, max_seq_length=256)


def load_tiny(path: Path, attention: str) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(path), attn_implementation=attention, dtype=torch.float32
    )
    return model.eval()


def packed_and_alone_logits(
    model: Any, samples: list[TokenizedSample], *, flatten: bool = False
) -> list[tuple[Any, Any]]:
    """(logits inside the packed batch, logits run alone) for every sample."""
    import torch

    rows = pack_samples(samples, max_seq_length=128)  # 3 rows of 96, 124 and 120 tokens
    assert sorted(len(r.lengths) for r in rows) == [1, 2, 2]
    batch = PackedCollator(flatten=flatten)([r.to_features() for r in rows])
    pairs = []
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
        starts = (batch["position_ids"] == 0).nonzero().tolist()
        bounds = [(b, s) for b, s in starts]  # (row, first token) of every segment
        for (b, start), (b_next, s_next) in zip(bounds, [*bounds[1:], (-1, -1)], strict=True):
            end = s_next if b_next == b else batch["input_ids"].shape[1]
            ids = batch["input_ids"][b, start:end]
            if batch["labels"][b, start:end].eq(IGNORE_INDEX).all():
                continue  # the pad segment of a short row
            alone = model(input_ids=ids[None]).logits[0]
            pairs.append((logits[b, start:end], alone))
    assert len(pairs) == len(samples)
    return pairs


@pytest.mark.parametrize(
    ("attention", "flatten"), [("sdpa", False), ("eager", False), ("sdpa", True)]
)
def test_packed_samples_do_not_leak_into_each_other(
    attention: str, flatten: bool, tiny_model_dir: Path, tiny_samples: list[TokenizedSample]
) -> None:
    import torch

    model = load_tiny(tiny_model_dir, attention)
    model.config.use_cache = True
    decision = configure_model_for_packing(model, requested=True, pad_token_id=0)
    assert decision.mode == "padded_rows"
    assert model.config.use_cache is False
    for packed, alone in packed_and_alone_logits(model, tiny_samples, flatten=flatten):
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_with_the_kv_cache_on_packed_samples_would_leak(
    tiny_model_dir: Path, tiny_samples: list[TokenizedSample]
) -> None:
    model = load_tiny(tiny_model_dir, "sdpa")
    model.config.use_cache = True
    errors = [(p - a).abs().max().item() for p, a in packed_and_alone_logits(model, tiny_samples)]
    assert min(errors) < 1e-5  # a sample first in its row sees nothing before it
    assert max(errors) > 1e-3  # the second sample of a row attends to the first


def test_attention_kernels_that_ignore_packing_turn_it_off(tiny_model_dir: Path) -> None:
    model = load_tiny(tiny_model_dir, "sdpa")
    model.config._attn_implementation = "paged_attention"
    decision = configure_model_for_packing(model, requested=True, pad_token_id=0)
    assert decision.mode == "off"
    assert "can't keep packed samples apart" in decision.reason


def test_padding_collator_pads_to_longest_or_to_max(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    pad = tokenizer.pad_token_id
    features = [fake_sample(3, 5).to_features(), fake_sample(5, 20).to_features()]
    batch = PaddingCollator(tokenizer)(features)
    assert batch["input_ids"].tolist() == [[5, 6, 7, pad, pad], [20, 21, 22, 23, 24]]
    assert batch["labels"].tolist()[0] == [5, 6, 7, IGNORE_INDEX, IGNORE_INDEX]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    padded = PaddingCollator(tokenizer, max_seq_length=8, pad_to_max=True)(features)
    assert padded["input_ids"].shape == padded["labels"].shape == (2, 8)
    assert padded["attention_mask"].sum().item() == 8


def test_padding_collator_needs_a_pad_token(tiny_model_dir: Path) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    tokenizer.pad_token = None
    with pytest.raises(ValueError, match="no pad token"):
        PaddingCollator(tokenizer)
