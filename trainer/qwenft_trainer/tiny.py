"""Tiny random Qwen models of every architecture, built locally from a config.

Tests, the local quickstart and the CPU benchmarks need models that load through the same
``from_pretrained`` code paths as real Qwen checkpoints, without any hub download. This
module trains a byte-level BPE tokenizer the way Qwen's is built (Qwen's pre-tokenizer
split, NFC normalisation, ChatML special tokens, the architecture's real chat template from
``assets/chat_templates``) and saves a randomly initialised model of the chosen
architecture next to it:

| arch | model class | chat template |
| --- | --- | --- |
| qwen2 | Qwen2ForCausalLM (Qwen2 / Qwen2.5) | Qwen2-Instruct |
| qwen3 | Qwen3ForCausalLM (dense, hybrid thinking) | Qwen3 |
| qwen3_moe | Qwen3MoeForCausalLM (fused experts) | Qwen3 |
| qwen3_next | Qwen3NextForCausalLM (Gated DeltaNet + attention, MoE) | Qwen3-Instruct-2507 |
| qwen3_5 | Qwen3_5ForConditionalGeneration (vision tower + hybrid text) | Qwen3.5 |
| qwen3_5_moe | Qwen3_5MoeForConditionalGeneration | Qwen3.5 |

    python -m qwenft_trainer.tiny /tmp/tiny-qwen3 --arch qwen3

It is over 300 lines because it holds one config builder per architecture (dense, MoE, Gated
DeltaNet hybrid, multimodal) with the tokenizer they share.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any, Literal, get_args

TinyArch = Literal["qwen2", "qwen3", "qwen3_moe", "qwen3_next", "qwen3_5", "qwen3_5_moe"]
TINY_ARCHS: tuple[str, ...] = get_args(TinyArch)

# Qwen2's pre-tokenizer regex (tokenizer.json of every Qwen2 / Qwen2.5 / Qwen3 checkpoint).
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]
# Added (not special) tokens of the Qwen3 / Qwen3.5 tokenizers that their templates write.
THINKING_TOKENS = ["<think>", "</think>", "<tool_call>", "</tool_call>"]
# Qwen3.5's vision placeholders; the model config points at their ids.
VISION_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]

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
# The real template each architecture's checkpoints ship (assets/chat_templates/README.md).
ARCH_TEMPLATES: dict[str, str] = {
    "qwen3": "qwen3.jinja",
    "qwen3_moe": "qwen3.jinja",
    "qwen3_next": "qwen3_instruct_2507.jinja",
    "qwen3_5": "qwen3_5_nothink.jinja",
    "qwen3_5_moe": "qwen3_5_nothink.jinja",
}

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

    arch: TinyArch = "qwen2"
    vocab_size: int = 512
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    num_experts: int = 4  # MoE architectures
    num_experts_per_tok: int = 2
    initializer_range: float = 0.02
    seed: int = 0
    # Embedding rows when more than the tokenizer's (Qwen pads its checkpoints to 151,936),
    # so the output head and the logits have a real checkpoint's width.
    model_vocab_size: int | None = None


def chat_template(arch: str) -> str:
    """The chat template the tiny model of ``arch`` ships with."""
    if arch == "qwen2":
        return QWEN_CHAT_TEMPLATE
    files = resources.files("qwenft_trainer") / "assets" / "chat_templates"
    return (files / ARCH_TEMPLATES[arch]).read_text(encoding="utf-8")


def added_tokens(arch: str) -> list[str]:
    """Tokens beyond ChatML the architecture's template and config refer to."""
    if arch == "qwen2":
        return []
    return THINKING_TOKENS + (VISION_TOKENS if arch.startswith("qwen3_5") else [])


def build_tokenizer(output_dir: Path, *, vocab_size: int = 512, arch: str = "qwen2") -> None:
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
    extra = added_tokens(arch)
    if extra:
        fast.add_tokens(extra)
    fast.chat_template = chat_template(arch)
    fast.save_pretrained(str(output_dir))


def _text_fields(spec: TinyModelSpec, token_ids: dict[str, int]) -> dict[str, Any]:
    """Config fields every architecture's text model shares."""
    return {
        "vocab_size": token_ids["vocab"],
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_hidden_layers,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "initializer_range": spec.initializer_range,
        "bos_token_id": token_ids[ENDOFTEXT],
        "eos_token_id": token_ids[IM_END],
        "pad_token_id": token_ids[ENDOFTEXT],
    }


def _moe_fields(spec: TinyModelSpec) -> dict[str, Any]:
    return {
        "num_experts": spec.num_experts,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "moe_intermediate_size": spec.intermediate_size // 2,
    }


def _hybrid_fields(spec: TinyModelSpec) -> dict[str, Any]:
    """Gated DeltaNet (linear attention) layers first, full attention last."""
    head = spec.hidden_size // spec.num_attention_heads
    layers = ["linear_attention"] * (spec.num_hidden_layers - 1) + ["full_attention"]
    return {
        "head_dim": head,
        "layer_types": layers,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": head,
        "linear_value_head_dim": head,
        "linear_num_key_heads": spec.num_key_value_heads,
        "linear_num_value_heads": spec.num_attention_heads,
    }


def build_config(spec: TinyModelSpec, token_ids: dict[str, int]) -> Any:
    """The transformers config of the tiny model of ``spec.arch``."""
    import transformers as tf

    text = _text_fields(spec, token_ids)
    head = spec.hidden_size // spec.num_attention_heads
    if spec.arch == "qwen2":
        return tf.Qwen2Config(**text, tie_word_embeddings=True)
    if spec.arch == "qwen3":
        return tf.Qwen3Config(**text, head_dim=head, tie_word_embeddings=True)
    if spec.arch == "qwen3_moe":
        return tf.Qwen3MoeConfig(**text, **_moe_fields(spec), head_dim=head)
    if spec.arch == "qwen3_next":
        return tf.Qwen3NextConfig(
            **text,
            **_moe_fields(spec),
            **_hybrid_fields(spec),
            shared_expert_intermediate_size=spec.intermediate_size // 2,
        )
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "patch_size": 4,
        "out_hidden_size": spec.hidden_size,
        "num_position_embeddings": 64,
    }
    media = {
        "vision_start_token_id": token_ids["<|vision_start|>"],
        "vision_end_token_id": token_ids["<|vision_end|>"],
        "image_token_id": token_ids["<|image_pad|>"],
        "video_token_id": token_ids["<|video_pad|>"],
    }
    if spec.arch == "qwen3_5":
        text_config = tf.Qwen3_5TextConfig(**text, **_hybrid_fields(spec))
        return tf.Qwen3_5Config(text_config=text_config.to_dict(), vision_config=vision, **media)
    moe_text = {k: v for k, v in text.items() if k != "intermediate_size"}
    text_config = tf.Qwen3_5MoeTextConfig(
        **moe_text,
        **_moe_fields(spec),
        **_hybrid_fields(spec),
        shared_expert_intermediate_size=spec.intermediate_size // 2,
    )
    return tf.Qwen3_5MoeConfig(text_config=text_config.to_dict(), vision_config=vision, **media)


def build_model(spec: TinyModelSpec, config: Any) -> Any:
    """A randomly initialised model of the architecture (multimodal for Qwen3.5)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    torch.manual_seed(spec.seed)
    if spec.arch.startswith("qwen3_5"):
        return AutoModelForImageTextToText.from_config(config)
    return AutoModelForCausalLM.from_config(config)


def build_tiny_qwen(output_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Write a tokenizer and a randomly initialised model of ``spec.arch`` to ``output_dir``.

    The directory then loads with ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained`` (Qwen3.5: ``AutoModelForImageTextToText``)
    like a real checkpoint of that architecture. Returns the path.
    """
    from transformers import AutoTokenizer, GenerationConfig

    spec = spec or TinyModelSpec()
    path = Path(output_dir)
    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, vocab_size=spec.vocab_size, arch=spec.arch)
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    token_ids.update({t: tokenizer.convert_tokens_to_ids(t) for t in added_tokens(spec.arch)})
    token_ids["vocab"] = max(len(tokenizer), spec.model_vocab_size or 0)
    model = build_model(spec, build_config(spec, token_ids))
    model.generation_config = GenerationConfig(
        bos_token_id=token_ids[ENDOFTEXT],
        eos_token_id=[token_ids[IM_END], token_ids[ENDOFTEXT]],
        pad_token_id=token_ids[ENDOFTEXT],
        do_sample=False,
    )
    model.save_pretrained(str(path), safe_serialization=True)
    (path / "qwenft_tiny.json").write_text(json.dumps(asdict(spec), indent=2) + "\n")
    return path


def ensure_tiny_qwen(output_dir: str | Path, spec: TinyModelSpec | None = None) -> Path:
    """Build the tiny model at ``output_dir`` unless one of the same spec is already there."""
    path = Path(output_dir)
    marker = path / "qwenft_tiny.json"
    wanted = asdict(spec or TinyModelSpec())
    if marker.exists() and (path / "config.json").exists():
        built = {**asdict(TinyModelSpec()), **json.loads(marker.read_text())}
        if built == wanted:
            return path
    return build_tiny_qwen(path, spec)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output_dir", type=Path, help="directory to write the model into")
    parser.add_argument(
        "--arch", choices=TINY_ARCHS, default="qwen2", help="architecture (default qwen2)"
    )
    args = parser.parse_args(argv)
    path = build_tiny_qwen(args.output_dir, replace(TinyModelSpec(), arch=args.arch))
    print(f"tiny {args.arch} model written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
