"""The tiny test models: Qwen-style tokenizer, real chat templates, every architecture."""

from __future__ import annotations

from pathlib import Path

import pytest
from qwenft_trainer.tiny import (
    TINY_ARCHS,
    TinyModelSpec,
    added_tokens,
    build_tiny_qwen,
    ensure_tiny_qwen,
)
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
)


def test_tokenizer_has_chatml_special_tokens_and_round_trips_chinese(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for token in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tokenizer(token, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1, f"{token} must be a single special token, got {ids}"
    text = "中国的首都是北京。 The capital of France is Paris."
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    assert len(ids) < len(text.encode("utf-8")), "BPE merges should beat raw bytes"


def test_chat_template_is_qwen_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_model_loads_as_qwen2_with_matching_vocab(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert model.config.model_type == "qwen2"
    assert model.config.vocab_size == len(tokenizer)
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


@pytest.mark.parametrize("arch", TINY_ARCHS)
def test_every_architecture_builds_and_loads_as_itself(
    arch: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    path = build_tiny_qwen(tmp_path_factory.mktemp(arch), TinyModelSpec(arch=arch))  # type: ignore[arg-type]
    tokenizer = AutoTokenizer.from_pretrained(path)
    config = AutoConfig.from_pretrained(path)
    assert config.model_type == arch
    text_config = config.get_text_config()
    assert text_config.vocab_size == len(tokenizer)
    for token in added_tokens(arch):
        assert len(tokenizer(token, add_special_tokens=False)["input_ids"]) == 1, token
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    # Qwen3.5's small models ship the template that writes an empty think block (thinking off).
    prompt_end = "<think>\n\n</think>\n\n" if arch.startswith("qwen3_5") else ""
    assert rendered.endswith("<|im_start|>assistant\n" + prompt_end)
    loader = AutoModelForImageTextToText if arch.startswith("qwen3_5") else AutoModelForCausalLM
    model = loader.from_pretrained(path)
    names = [name for name, _ in model.named_parameters()]
    assert any(".visual." in f".{n}" for n in names) == arch.startswith("qwen3_5")
    linear = "linear_attention" in (getattr(text_config, "layer_types", None) or [])
    assert linear == (arch in ("qwen3_next", "qwen3_5", "qwen3_5_moe"))
    ids = tokenizer("hello", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.shape[1], len(tokenizer))


def test_ensure_rebuilds_a_directory_of_another_architecture(tmp_path: Path) -> None:
    ensure_tiny_qwen(tmp_path, TinyModelSpec(arch="qwen2"))
    ensure_tiny_qwen(tmp_path, TinyModelSpec(arch="qwen3"))
    assert AutoConfig.from_pretrained(tmp_path).model_type == "qwen3"


def test_model_vocab_size_pads_the_embedding_like_a_qwen_checkpoint(tmp_path: Path) -> None:
    path = build_tiny_qwen(tmp_path / "wide", TinyModelSpec(model_vocab_size=4096))
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    assert len(tokenizer) < 4096
    assert model.config.vocab_size == 4096
    assert model.get_output_embeddings().weight.shape[0] == 4096
