"""The token cache's key: everything that shapes the tokenized samples, in one place.

A cached entry may only be reused by a run that would have tokenized exactly the same
samples, so the key (:func:`build_key`) is a SHA-256 over :data:`FORMAT`, the bytes of the
files named by :data:`FILE_SETTINGS` (not their paths), the values of
:data:`VALUE_SETTINGS`, the loaded tokenizer itself (vocabulary, merges, normaliser, special
tokens, chat template and options, wherever it was loaded from: that is how
:data:`TOKENIZER_SETTINGS` count), the versions of the libraries that tokenize and render
templates, and the source of the trainer modules that read, validate, split and tokenize.
Every other TrainConfig field is in :data:`OTHER_SETTINGS` with the reason it can't change
the samples; a test fails when a field is in none of these tables, so a new setting can't
silently reuse a stale entry.

    key = build_key(config, tokenizer)
    key.name, key.inputs  # directory name, and what went into the digest
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qwenft_trainer.config import TrainConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

# Layout of a cache entry; raise it when the stored arrays or meta.json change shape.
FORMAT = 1
KEY_CHARS = 16  # an entry's directory name: the key's first hex digits

# Settings whose value shapes the samples.
VALUE_SETTINGS: dict[str, str] = {
    "data.format": "how records are read",
    "training.max_seq_length": "where samples are cut",
    "training.thinking": "which prompt replies without reasoning follow",
    "evaluation.fraction": "how many dialogues are held out",
    "training.seed": "which dialogues evaluation.fraction holds out (only when it is > 0)",
}
# Settings naming a file whose bytes shape the samples (the path itself does not).
FILE_SETTINGS: dict[str, str] = {
    "data.path": "the training dialogues",
    "evaluation.file": "the evaluation dialogues",
}
# Settings that choose the tokenizer; the loaded tokenizer is hashed, not these values.
TOKENIZER_SETTINGS: dict[str, str] = {
    "model.name_or_path": "where the tokenizer comes from",
    "model.revision": "which hub revision of it",
    "model.trust_remote_code": "whether its own code may run",
    "model.cache_dir": "where it is cached",
    "model.token_env": "the hub token used to fetch it",
}
# Settings that can't change the samples, and why.
OTHER_SETTINGS: dict[str, str] = {
    "method": "what is trained, not on what",
    "training.packing": "applied to the cached samples once the model decides the mode",
    "training.epochs": "passes over the samples",
    "training.max_steps": "steps over the samples",
    "training.per_device_batch_size": "batching",
    "training.gradient_accumulation_steps": "batching",
    "training.learning_rate": "optimisation",
    "training.scheduler": "optimisation",
    "training.warmup_ratio": "optimisation",
    "training.weight_decay": "optimisation",
    "training.max_grad_norm": "optimisation",
    "training.precision": "compute",
    "training.gradient_checkpointing": "compute",
    "lora.adaptive.target_rank": "adapter shape",
    "lora.adaptive.warmup_steps": "adapter schedule",
    "lora.adaptive.final_steps": "adapter schedule",
    "lora.adaptive.interval": "adapter schedule",
    "lora.adaptive.beta1": "adapter schedule",
    "lora.adaptive.beta2": "adapter schedule",
    "lora.adaptive.orthogonal_regularization": "optimisation",
    "training.attention": "compute (batches are padded for it after the cache)",
    "training.kernels": "compute (the loss path)",
    "training.logging_steps": "reporting",
    "evaluation.steps": "when evaluation runs",
    "lora.r": "the adapter",
    "lora.alpha": "the adapter",
    "lora.dropout": "the adapter",
    "lora.target_modules": "the adapter",
    "lora.target_parameters": "the adapter",
    "lora.train_router": "the adapter",
    "lora.modules_to_save": "the adapter",
    "quantization.quant_type": "the base weights",
    "quantization.double_quant": "the base weights",
    "quantization.compute_dtype": "the base weights",
    "deepspeed.enabled": "distribution",
    "deepspeed.zero_stage": "distribution",
    "deepspeed.offload_optimizer": "distribution",
    "deepspeed.offload_parameters": "distribution",
    "checkpoint.save_steps": "checkpointing",
    "checkpoint.keep": "checkpointing",
    "checkpoint.resume": "checkpointing",
    "output_dir": "where the cache lives, not what it holds",
    "run_name": "reporting",
    "metrics_port": "reporting",
    "termination_log": "reporting",
}
# Trainer modules whose code turns files into samples: reading, validating, splitting,
# tokenizing, and this module's own storage.
CODE_MODULES = (
    "qwenft_trainer.records",
    "qwenft_trainer.formats",
    "qwenft_trainer.thinking",
    "qwenft_trainer.replies",
    "qwenft_trainer.data",
    "qwenft_trainer.validate",
    "qwenft_trainer.train",
    "qwenft_trainer.token_keys",
    "qwenft_trainer.token_cache",
)
LIBRARIES = ("transformers", "tokenizers", "jinja2", "numpy")
# init_kwargs of a tokenizer that say where it was loaded from, not how it tokenizes.
_LOCATION_KWARGS = ("name_or_path", "is_local", "local_files_only", "cache_dir", "token")


@dataclass(frozen=True)
class CacheKey:
    """The digest an entry is stored under and everything that went into it."""

    digest: str
    inputs: dict[str, Any]

    @property
    def name(self) -> str:
        return self.digest[:KEY_CHARS]


def setting(config: TrainConfig, dotted: str) -> Any:
    """The value of a dotted TrainConfig field (None inside an unset section)."""
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part) if value is not None else None
    return value


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def tokenizer_sha256(tokenizer: PreTrainedTokenizerBase) -> str:
    """What the tokenizer does, independent of where it was loaded from."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    options = {
        k: v
        for k, v in tokenizer.init_kwargs.items()
        if k not in _LOCATION_KWARGS and not k.endswith("_file")
    }
    described = {
        "class": type(tokenizer).__qualname__,
        "backend": backend.to_str() if backend is not None else None,
        "vocab": None if backend is not None else sorted(tokenizer.get_vocab().items()),
        "chat_template": tokenizer.chat_template,
        "special_tokens": tokenizer.special_tokens_map,
        "all_special_tokens": tokenizer.all_special_tokens,
        "options": options,
    }
    text = json.dumps(described, sort_keys=True, default=_describe, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _describe(value: object) -> str:
    """A JSON stand-in for an option value (AddedToken and the like print their settings)."""
    kind = type(value)
    if kind.__repr__ is not object.__repr__ or kind.__str__ is not object.__str__:
        return str(value)
    return kind.__qualname__  # its default repr holds a memory address, not a setting


def code_sha256() -> str:
    digest = hashlib.sha256()
    for name in CODE_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec else None
        digest.update(name.encode())
        digest.update(Path(origin).read_bytes() if origin else b"?")
    return digest.hexdigest()


def key_inputs(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> dict[str, Any]:
    """Everything that shapes the samples: the one place the key is derived from."""
    values = {name: setting(config, name) for name in VALUE_SETTINGS}
    if not config.evaluation.fraction:
        del values["training.seed"]  # nothing is held out, so the seed picks nothing
    files: dict[str, str | None] = {}
    for name in FILE_SETTINGS:
        path = setting(config, name)
        files[name] = file_sha256(path) if path else None
    libraries: dict[str, str | None] = {}
    for package in LIBRARIES:
        try:
            libraries[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            libraries[package] = None
    return {
        "format": FORMAT,
        "settings": values,
        "files": files,
        "tokenizer": tokenizer_sha256(tokenizer),
        "libraries": libraries,
        "code": code_sha256(),
    }


def build_key(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> CacheKey:
    inputs = key_inputs(config, tokenizer)
    text = json.dumps(inputs, sort_keys=True)
    return CacheKey(hashlib.sha256(text.encode()).hexdigest(), inputs)
