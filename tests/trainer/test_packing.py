"""Packing samples into rows and batching them (qwenft_trainer.packing).

Covers: every sample lands in exactly one row, whole and in order of its tokens; rows never
exceed max_seq_length; position ids restart at 0 per sample; the first label of every
sample is -100; best-fit packing fills short dialogues to >= 95% of the slots; the packed
collator flattens rows into one row without an attention mask; no leakage between packed
samples: each sample's logits inside a packed row equal its logits run alone (tiny model,
fp32, sdpa and eager); configure_model_for_packing turns the KV cache off (with the cache on,
transformers ignores the packing, which the test shows) and refuses attention kernels that
can't keep samples apart; the padding collator pads labels with -100 and builds the
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
    configure_model_for_packing,
    pack_samples,
    packing_efficiency,
)


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
    assert packing_efficiency(rows, 2048) >= 0.95


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


def test_packed_collator_flattens_rows_without_attention_mask() -> None:
    rows = [r.to_features() for r in pack_samples([fake_sample(3, 0), fake_sample(4, 10)], 4)]
    batch = PackedCollator()(rows)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    assert batch["input_ids"].tolist() == [[10, 11, 12, 13, 0, 1, 2]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0, 1, 2]]
    assert batch["labels"].tolist() == [[IGNORE_INDEX, 11, 12, 13, IGNORE_INDEX, 1, 2]]


@pytest.fixture(scope="module")
def tiny_samples(tiny_model_dir: Path) -> list[TokenizedSample]:
    from qwenft_trainer.data import load_conversations, tokenize_all
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


def packed_and_alone_logits(model: Any, samples: list[TokenizedSample]) -> list[tuple[Any, Any]]:
    import torch

    rows = pack_samples(samples, max_seq_length=512)
    assert len(rows) == 1 and len(rows[0].lengths) == len(samples)
    batch = PackedCollator()([rows[0].to_features()])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits[0]
        pairs = []
        offset = 0
        for length in rows[0].lengths:
            ids = batch["input_ids"][:, offset : offset + length]
            alone = model(input_ids=ids).logits[0]
            pairs.append((packed[offset : offset + length], alone))
            offset += length
    return pairs


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_samples_do_not_leak_into_each_other(
    attention: str, tiny_model_dir: Path, tiny_samples: list[TokenizedSample]
) -> None:
    import torch

    model = load_tiny(tiny_model_dir, attention)
    configure_model_for_packing(model)
    assert model.config.use_cache is False
    for packed, alone in packed_and_alone_logits(model, tiny_samples):
        torch.testing.assert_close(packed, alone, atol=1e-5, rtol=0)


def test_with_the_kv_cache_on_packed_samples_would_leak(
    tiny_model_dir: Path, tiny_samples: list[TokenizedSample]
) -> None:
    model = load_tiny(tiny_model_dir, "sdpa")
    model.config.use_cache = True
    pairs = packed_and_alone_logits(model, tiny_samples)
    assert (pairs[0][0] - pairs[0][1]).abs().max() < 1e-5  # the first sample sees nothing before it
    assert max((p - a).abs().max().item() for p, a in pairs[1:]) > 1e-3


def test_attention_kernels_that_ignore_packing_are_refused(tiny_model_dir: Path) -> None:
    model = load_tiny(tiny_model_dir, "sdpa")
    model.config._attn_implementation = "paged_attention"
    with pytest.raises(ValueError, match="can't keep packed samples apart"):
        configure_model_for_packing(model)


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
