"""Checks a merge runs before it loads any weights: adapter, base, shapes, disk space.

Loading a 72B base takes minutes and 150 GB of memory; finding out afterwards that the
adapter belongs to another model, or that the output disk is full, wastes all of it and
tends to end in a cryptic size-mismatch traceback or a truncated shard. Everything here
reads only JSON files and safetensors headers, so it runs in seconds on any node, and each
failure is a :class:`MergeError` whose message names the file and the fix.
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qwenft_trainer.hub_ids import HUB_ID
from qwenft_trainer.vllm_serving import AdapterConfigError, read_adapter_config

ADAPTER_PREFIX = "base_model.model."
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}
# Tokenizer, configs, chat template and the report: small next to any model's weights.
METADATA_BYTES = 64 * 1024**2

FreeSpaceProbe = Callable[[Path], int]
# What a merge needs from a hub snapshot: configs, weights, tokenizer, chat template.
BASE_FILES = ["*.json", "*.safetensors", "*.jinja", "*.txt", "*.model", "*.tiktoken"]


class MergeError(RuntimeError):
    """A merge that can't proceed; the message says what to change."""


@dataclass(frozen=True)
class AdapterInfo:
    path: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    summary: dict[str, Any]


@dataclass(frozen=True)
class BaseInfo:
    path: Path
    config: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]

    @property
    def parameter_count(self) -> int:
        total = 0
        for shape in self.shapes.values():
            count = 1
            for dim in shape:
                count *= dim
            total += count
        return total


def free_bytes(path: Path) -> int:
    """Free bytes on the filesystem holding ``path`` (its nearest existing ancestor)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return shutil.disk_usage(probe).free


def safetensors_shapes(files: list[Path]) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from safetensors headers, without reading any tensor data."""
    from safetensors import safe_open

    shapes: dict[str, tuple[int, ...]] = {}
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # noqa: SIM118 - safe_open has no __iter__
                shapes[name] = tuple(handle.get_slice(name).get_shape())
    return shapes


def read_adapter(adapter_dir: Path) -> AdapterInfo:
    """The adapter's config, tensor shapes and the trainer's summary.json (if any)."""
    if not adapter_dir.is_dir():
        raise MergeError(f"adapter directory {adapter_dir} does not exist")
    try:
        config = read_adapter_config(adapter_dir)
    except AdapterConfigError as err:
        raise MergeError(f"unreadable adapter: {err}") from err
    weights = adapter_dir / "adapter_model.safetensors"
    if not weights.is_file():
        raise MergeError(
            f"unreadable adapter: {weights} not found (save adapters with "
            "save_pretrained(safe_serialization=True))"
        )
    try:
        shapes = safetensors_shapes([weights])
    except Exception as err:  # safetensors raises its own error types for corrupt headers
        raise MergeError(
            f"unreadable adapter: {weights} is not a valid safetensors file: {err}"
        ) from err
    if not any(".lora_" in name for name in shapes):
        raise MergeError(f"unreadable adapter: {weights} holds no LoRA weights")
    summary: dict[str, Any] = {}
    for candidate in (adapter_dir / "summary.json", adapter_dir.parent / "summary.json"):
        if candidate.is_file():
            try:
                loaded = json.loads(candidate.read_text(encoding="utf-8"))
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(loaded, dict):
                summary = loaded
                break
    return AdapterInfo(path=adapter_dir, config=config, shapes=shapes, summary=summary)


def locate_base(base: str, *, revision: str | None = None) -> Path:
    """A local directory for ``base``: itself, or the hub snapshot of a repo id (downloaded
    into the Hugging Face cache unless it is there already; ``HF_TOKEN`` is used if set)."""
    path = Path(base)
    if path.is_dir():
        return path
    hint = (
        "pass --base with the local directory (or hub id) of the un-quantized base checkpoint "
        "the adapter was trained on"
    )
    if not re.fullmatch(HUB_ID, base):
        raise MergeError(f"base model {base} not found: {hint}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=base, revision=revision, allow_patterns=BASE_FILES))
    except Exception as err:  # offline, unknown repo, no access: all end here
        raise MergeError(
            f"base model {base} is not a local directory and can't be fetched from the hub "
            f"({type(err).__name__}: {err}); {hint}"
        ) from err


def read_base(base: str, *, revision: str | None = None) -> BaseInfo:
    """Config and tensor shapes of the base checkpoint (a directory or a hub id)."""
    path = locate_base(base, revision=revision)
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise MergeError(f"base model {base} has no readable config.json: {err}") from err
    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = sorted({path / name for name in weight_map.values()})
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise MergeError(f"base model {base} has no safetensors weights")
    shapes = safetensors_shapes(files)
    text = config.get("text_config", config)
    if text.get("tie_word_embeddings", config.get("tie_word_embeddings")) and (
        "lm_head.weight" not in shapes and "model.embed_tokens.weight" in shapes
    ):
        shapes["lm_head.weight"] = shapes["model.embed_tokens.weight"]
    return BaseInfo(path=path, config=config, shapes=shapes)


def _expected_base_shape(adapter_key: str, shape: tuple[int, ...]) -> tuple[str, str, int, int]:
    """(base weight name, adapter part, dim index in the base weight, expected size).

    AdaLoRA (``lora_A`` / ``lora_B`` / ``lora_E`` as bare parameters, ``[rank, in]``,
    ``[out, rank]``, ``[rank, 1]``) is checked like LoRA; its singular values ``lora_E``
    only need the adapted module to exist (dim -1 with part ``rank``).
    """
    name = adapter_key.removeprefix(ADAPTER_PREFIX)
    for part, dim, source in (
        (".lora_A.weight", 1, 1),
        (".lora_B.weight", 0, 0),
        (".lora_embedding_A", 0, 1),
        (".lora_embedding_B", 1, 0),
        (".lora_A", 1, 1),
        (".lora_B", 0, 0),
        (".lora_E", -1, 0),
    ):
        if name.endswith(part):
            size = shape[source] if dim >= 0 else 0
            label = part.strip(".") if dim >= 0 else "rank"
            return name[: -len(part)] + ".weight", label, dim, size
    return name, "full", -1, 0


# transformers writes a Qwen3.5 checkpoint's text model under ``model.language_model.`` (also
# from the text-only class), while an adapter trained on the text model names ``model.layers``.
def _base_names(name: str) -> list[str]:
    """``name`` as the base checkpoint spells it: as is, or under the text-model prefix."""
    if name.startswith("model.") and not name.startswith("model.language_model."):
        return [name, "model.language_model." + name.removeprefix("model.")]
    return [name]


def _tensor_target_problems(adapter: AdapterInfo, base: BaseInfo, keys: list[str]) -> list[str]:
    """Problems with LoRA pairs on bare tensors (peft ``target_parameters``: fused MoE
    experts). A pair's key names the module holding the tensor, wrapped once per adapted
    tensor (``mlp.experts.base_layer.lora_A.weight``), and a checkpoint may store that
    tensor fused or split per expert; so the checks are that the module exists in the base
    and that each pair maps from or to the model's hidden size, as expert projections do."""
    text = base.config.get("text_config", base.config)
    hidden = text.get("hidden_size", base.config.get("hidden_size"))
    problems: list[str] = []
    pairs: dict[str, dict[str, tuple[int, ...]]] = {}
    for key in keys:
        stem, _, part = key.removesuffix(".weight").rpartition(".")
        pairs.setdefault(stem, {})[part] = adapter.shapes[key]
    for stem, pair in sorted(pairs.items()):
        module = stem.removeprefix(ADAPTER_PREFIX).replace(".base_layer", "")
        holders = _base_names(module)
        if not any(name.startswith(h + ".") for name in base.shapes for h in holders):
            problems.append(f"adapter weights {stem}.lora_A/B adapt {module}, which the base lacks")
        elif "lora_A" in pair and "lora_B" in pair and isinstance(hidden, int):
            size_in, size_out = pair["lora_A"][1], pair["lora_B"][0]
            if hidden not in (size_in, size_out):
                problems.append(
                    f"{module}: adapter maps {size_in} -> {size_out} features, but the base's "
                    f"hidden size is {hidden}"
                )
    return problems


def check_compatible(adapter: AdapterInfo, base: BaseInfo) -> None:
    """Raise if the adapter was trained on a different architecture or vocabulary size."""
    problems: list[str] = []
    recorded = adapter.summary.get("base_model") if adapter.summary else None
    if isinstance(recorded, dict):
        for key in ("model_type", "vocab_size", "hidden_size", "num_hidden_layers"):
            want, have = recorded.get(key), base.config.get(key)
            if want is not None and have is not None and want != have:
                problems.append(f"{key}: adapter trained on {want}, base has {have}")
    holders = [t.rpartition(".")[0] for t in adapter.config.get("target_parameters") or []]
    tensor_targets = []
    for key, shape in sorted(adapter.shapes.items()):
        base_key, part, dim, size = _expected_base_shape(key, shape)
        base_shape = next((base.shapes[n] for n in _base_names(base_key) if n in base.shapes), None)
        module = base_key.removesuffix(".weight").replace(".base_layer", "")
        if part != "full" and any(module == h or module.endswith(f".{h}") for h in holders):
            tensor_targets.append(key)  # a pair on a bare tensor, not on a module's weight
        elif base_shape is None:
            problems.append(f"adapter weight {key} targets {base_key}, which the base lacks")
        elif part == "full" and base_shape != shape:
            what = "vocabulary size" if "embed" in base_key or "lm_head" in base_key else "shape"
            problems.append(
                f"{base_key} {what}: adapter has {list(shape)}, base {list(base_shape)}"
            )
        elif part not in ("full", "rank") and base_shape[dim] != size:
            problems.append(
                f"{base_key}: adapter's {part} expects size {size}, base has {base_shape[dim]}"
            )
        if len(problems) >= 5:
            break
    problems += _tensor_target_problems(adapter, base, tensor_targets)
    if problems:
        raise MergeError(
            f"adapter {adapter.path} does not match base {base.path} (trained on another "
            "architecture or vocabulary size?):\n  " + "\n  ".join(problems)
        )


def estimate_output_bytes(base: BaseInfo, dtype: str) -> int:
    """Bytes the merged checkpoint takes: every base parameter at ``dtype``, plus metadata."""
    return base.parameter_count * DTYPE_BYTES[dtype] + METADATA_BYTES


def check_disk_space(
    output: Path, needed: int, *, reserve: int = 0, probe: FreeSpaceProbe = free_bytes
) -> int:
    """Raise unless the output filesystem has ``needed + reserve`` bytes free; returns free."""
    free = probe(output.parent)
    if free < needed + reserve:
        raise MergeError(
            f"not enough disk space for {output}: the merged model needs about "
            f"{needed / 1024**3:.2f} GiB"
            + (f" plus a reserve of {reserve / 1024**3:.2f} GiB" if reserve else "")
            + f", but only {free / 1024**3:.2f} GiB is free; free space or choose another "
            "--output"
        )
    return free
