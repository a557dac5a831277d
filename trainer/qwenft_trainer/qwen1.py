"""Qwen1 checkpoints (``Qwen/Qwen-7B-Chat`` and family), refused with their successor named.

The first Qwen generation is not a transformers architecture: ``QWenLMHeadModel`` runs only as
remote code, its tokenizer is a tiktoken file with its own special tokens, and its chat format
and module names (``c_attn``, ``w1``/``w2``) differ from every later generation. Training it
here would fail late (tokenizer, template, LoRA targets) or quietly wrong, and Qwen has
replaced it: Qwen2.5 and Qwen3 are better at every size. So a Qwen1 base is recognised from its
``config.json`` alone (``model_type: qwen`` or ``architectures: [QWenLMHeadModel]``, no code
run) and refused before any GPU is taken, with the model to use instead.

    qwen1_problem(config_dict, name="Qwen/Qwen-7B-Chat")
    # 'Qwen/Qwen-7B-Chat is a Qwen1 checkpoint ... use Qwen/Qwen2.5-7B-Instruct (or Qwen/Qwen3-8B)'
"""

from __future__ import annotations

import re
from typing import Any

QWEN1_MODEL_TYPE = "qwen"
QWEN1_ARCHITECTURE = "QWenLMHeadModel"
# Qwen1 size -> (Qwen2.5 of that size, the Qwen3 nearest to it).
SUCCESSORS = {
    "1_8B": ("Qwen2.5-1.5B", "Qwen3-1.7B"),
    "7B": ("Qwen2.5-7B", "Qwen3-8B"),
    "14B": ("Qwen2.5-14B", "Qwen3-14B"),
    "72B": ("Qwen2.5-72B", "Qwen3-32B"),
}
# Qwen3 sizes released as base (pre-trained only) models too.
QWEN3_BASE_RELEASES = {"Qwen3-1.7B", "Qwen3-8B", "Qwen3-14B"}
# (hidden_size, num_hidden_layers) of each Qwen1 size, for a directory whose name doesn't say.
SIZES_BY_SHAPE = {(2048, 24): "1_8B", (4096, 32): "7B", (5120, 40): "14B", (8192, 80): "72B"}
_NAME = re.compile(r"Qwen-(1_8B|1\.8B|7B|14B|72B)(-Chat)?(-Int[48])?", re.IGNORECASE)


def is_qwen1(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` describes a first-generation Qwen checkpoint."""
    architectures = config.get("architectures") or []
    return config.get("model_type") == QWEN1_MODEL_TYPE or QWEN1_ARCHITECTURE in architectures


def successor(config: dict[str, Any], *, name: str) -> tuple[str, str | None]:
    """(Qwen2.5 model, Qwen3 model or None) to use instead of this Qwen1 checkpoint.

    Chat models map to ``-Instruct``, base models to base models, Int4 / Int8 releases to
    Qwen2.5's ``-GPTQ-Int4`` / ``-GPTQ-Int8`` (Qwen3 has no GPTQ release, so none is named).
    """
    match = _NAME.search(name)
    size = match.group(1).upper().replace(".", "_") if match else None
    if size not in SUCCESSORS:
        shape = (config.get("hidden_size"), config.get("num_hidden_layers"))
        size = SIZES_BY_SHAPE.get(shape, "7B")  # type: ignore[arg-type]
    qwen25, qwen3 = SUCCESSORS[size]
    quantized = config.get("quantization_config")
    bits = quantized.get("bits") if isinstance(quantized, dict) else None
    if match and match.group(3):
        bits = int(match.group(3)[-1])
    chat = bool(match and match.group(2)) or not match or bits is not None
    if bits in (4, 8):
        return f"Qwen/{qwen25}-Instruct-GPTQ-Int{bits}", None
    if chat:
        return f"Qwen/{qwen25}-Instruct", f"Qwen/{qwen3}"
    return f"Qwen/{qwen25}", f"Qwen/{qwen3}-Base" if qwen3 in QWEN3_BASE_RELEASES else None


def qwen1_problem(config: dict[str, Any], *, name: str) -> str | None:
    """The refusal for a Qwen1 base, naming its successor; None for any other checkpoint."""
    if not is_qwen1(config):
        return None
    qwen25, qwen3 = successor(config, name=name)
    instead = qwen25 + (f" (or {qwen3})" if qwen3 else "")
    return (
        f"base model {name} is a Qwen1 checkpoint (model_type 'qwen', QWenLMHeadModel: remote "
        "code with a tiktoken tokenizer), which qwenft does not fine-tune: use "
        f"{instead}, its successor with the same chat use, a transformers architecture and "
        "Qwen's ChatML template"
    )
