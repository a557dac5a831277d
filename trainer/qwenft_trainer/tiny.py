"""A tiny Qwen2-architecture model and tokenizer, built locally from a config.

Tests, the local quickstart and the CPU benchmarks need a model that loads through the
same ``from_pretrained`` code paths as a real Qwen checkpoint, without any hub download.
This module trains a byte-level BPE tokenizer the way Qwen's is built (Qwen's
pre-tokenizer split, NFC normalisation, ChatML special tokens, Qwen's chat template) and
saves a randomly initialised ``Qwen2ForCausalLM`` next to it.

    python -m qwenft_trainer.tiny /tmp/tiny-qwen
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

# Qwen2's pre-tokenizer regex (tokenizer.json of every Qwen2 / Qwen2.5 checkpoint).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]

# Qwen2's chat template, as shipped in tokenizer_config.json of Qwen2-*-Instruct.
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Text the tokenizer is trained on: English, Chinese, code and ChatML scaffolding, so
# every test string tokenizes into a handful of merged tokens rather than raw bytes.
_TRAINING_TEXT = [
    "You are a helpful assistant.",
    "system user assistant",
    "Hello! How can I help you today?",
    "What is the capital of France? The capital of France is Paris.",
    "Explain LoRA in one sentence. LoRA trains small low-rank matrices next to frozen weights.",
    "Write a Python function that adds two numbers. def add(a, b):\n    return a + b\n",
    "Kubernetes schedules pods onto nodes with GPUs.",
    "The quick brown fox jumps over the lazy dog. 0123456789",
    "你好！请问有什么可以帮您？",
    "中国的首都是北京。北京是一座历史悠久的城市。",
    "请用一句话解释什么是微调。微调是在预训练模型上用少量数据继续训练。",
    "谢谢你的帮助。不客气，祝你有美好的一天！",
    "Thank you very much. You're welcome, have a nice day!",
]


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape of the tiny model: small enough to train on 2 CPU cores in seconds."""

    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0


def build_tokenizer(output_dir: Path, *, vocab_size: int = 512) -> None:
    """Train a Qwen-style byte-level BPE tokenizer and save it with transformers."""
    from tokenizers import (
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_TRAINING_TEXT * 4, trainer=trainer)

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        split_special_tokens=False,
    )
    fast.chat_template = QWEN_CHAT_TEMPLATE
    fast.save_pretrained(str(output_dir))


def build_tiny_qwen(output_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write a tokenizer and a randomly initialised Qwen2ForCausalLM to ``output_dir``.

    The directory then loads with ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained`` like any Qwen2 checkpoint. Returns the path.
    """
    import torch
    from transformers import AutoTokenizer, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    spec = spec or TinyModelSpec()
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, vocab_size=spec.vocab_size)
    tokenizer = AutoTokenizer.from_pretrained(str(path))

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
        eos_token_id=tokenizer.convert_tokens_to_ids(IM_END),
        pad_token_id=tokenizer.convert_tokens_to_ids(ENDOFTEXT),
    )
    torch.manual_seed(spec.seed)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=[config.eos_token_id, config.bos_token_id],
        pad_token_id=config.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "qwenft_tiny.json").write_text(json.dumps(spec.__dict__, indent=2) + "\n")
    return path


def ensure_tiny_qwen(output_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Build the tiny model at ``output_dir`` unless a complete one is already there."""
    path = Path(output_dir)
    if (path / "qwenft_tiny.json").exists() and (path / "config.json").exists():
        return path
    return build_tiny_qwen(path, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="directory to write the model into")
    args = parser.parse_args(argv)
    path = build_tiny_qwen(args.output_dir)
    print(f"tiny Qwen2 model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
