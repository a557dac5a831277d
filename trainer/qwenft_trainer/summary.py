"""The record a finished (or refused) run leaves behind: ``summary.json`` and the termination log.

``summary.json`` sits next to the adapter or weights in the output directory, for people
and for the merge step. Kubernetes shows the contents of ``/dev/termination-log`` as the
pod's termination message, which the operator reads without parsing logs; it is capped
at 4 KiB there, so that file gets a short version.

    summary = TrainSummary(run_name=config.run_name, method=config.method, ...)
    write_summary(output_dir, summary)
    write_termination_log(config.termination_log, short_summary(summary))
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

log = logging.getLogger(__name__)

SUMMARY_FILE = "summary.json"
# Kubernetes keeps at most 4096 bytes of a termination message.
TERMINATION_LOG_LIMIT = 4096


class TokenCacheRecord(BaseModel):
    """Where a run's tokenized samples came from (:mod:`qwenft_trainer.token_cache`)."""

    status: Literal["built", "loaded", "tokenized"] = Field(
        description="'built': tokenized and saved to the cache; 'loaded': read from it; "
        "'tokenized': tokenized without saving (the cache could not be written or reached)."
    )
    key: str = Field(description="SHA-256 of everything that shapes the samples.")
    path: str = Field(description="The cache entry's directory.")
    seconds: float = Field(description="Seconds spent getting the samples (hashing included).")


class TrainSummary(BaseModel):
    """What a run did, in numbers."""

    status: str = "succeeded"
    run_name: str
    method: str
    output_dir: str
    output: str = Field(description="'adapter' (peft) or 'full' weights.")
    steps: int
    total_steps: int
    epochs: float
    train_loss: float | None = Field(description="Loss at the last logging step.")
    eval_loss: float | None = None
    trained_tokens: int = Field(description="Non-padding tokens processed, all ranks.")
    wall_seconds: float = Field(description="Seconds this process spent training.")
    tokens_per_second: float
    peak_gpu_memory_bytes: int | None = Field(description="Max allocated on rank 0 (CUDA).")
    peak_host_memory_bytes: int
    resumed_from_step: int
    world_size: int
    effective_batch_size: int
    packing: str = Field(
        "off", description="Packing mode trained with: padded_rows, flattened_varlen or off."
    )
    packing_reason: str = Field("", description="Why that packing mode (or none).")
    token_cache: TokenCacheRecord | None = Field(
        None, description="Whether the samples were tokenized or loaded from the token cache."
    )
    attention: str = Field(
        "sdpa", description="Attention implementation trained with: sdpa, flex_attention, ..."
    )
    attention_reason: str = Field("", description="Why that attention implementation.")
    loss_path: str = Field(
        "plain", description="How the loss was computed: liger, chunked or plain (full logits)."
    )
    loss_path_reason: str = Field("", description="Why that loss path.")


def last_logged(log_history: list[dict[str, Any]], key: str) -> float | None:
    """The last value of ``key`` in the Trainer's log history."""
    for entry in reversed(log_history):
        value = entry.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            return float(value)
    return None


def peak_host_memory_bytes() -> int:
    """Peak resident memory of this process (Linux reports KiB)."""
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def peak_gpu_memory_bytes() -> int | None:
    import torch

    return int(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else None


def write_summary(output_dir: str | Path, summary: TrainSummary) -> Path:
    path = Path(output_dir) / SUMMARY_FILE
    path.write_text(summary.model_dump_json(indent=2) + "\n", encoding="utf-8")
    return path


def build_termination_message(fields: dict[str, Any], limit: int = TERMINATION_LOG_LIMIT) -> str:
    """Compact JSON under ``limit`` bytes; a long ``message`` field is shortened to fit."""
    text = json.dumps(fields, separators=(",", ":"), ensure_ascii=False)
    message = str(fields.get("message", ""))
    while len(text.encode("utf-8")) > limit and message:
        message = message[: max(0, len(message) // 2 - 1)] + "…"
        if len(message) <= 1:
            message = ""
        text = json.dumps({**fields, "message": message}, separators=(",", ":"), ensure_ascii=False)
    if len(text.encode("utf-8")) > limit:
        text = json.dumps({"status": fields.get("status", "unknown")})
    return text


def short_summary(summary: TrainSummary) -> dict[str, Any]:
    """The fields the termination message carries."""
    return summary.model_dump(
        include={
            "status",
            "steps",
            "total_steps",
            "epochs",
            "train_loss",
            "eval_loss",
            "trained_tokens",
            "tokens_per_second",
            "resumed_from_step",
            "output_dir",
            "output",
        }
    )


def write_termination_log(path: str | Path, fields: dict[str, Any]) -> bool:
    """Write the message when ``path`` exists (it does in a Kubernetes container)."""
    target = Path(path)
    if not target.exists():
        return False
    try:
        target.write_text(build_termination_message(fields), encoding="utf-8")
    except OSError as err:
        log.warning("can't write the termination log %s: %s", target, err)
        return False
    return True
