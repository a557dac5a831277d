"""Packing short dialogues into full sequences, and the collators that batch them.

Chat datasets are mostly short dialogues; padding each to ``max_seq_length`` spends most
of the compute on pad tokens. Packing puts several samples in one sequence instead, and
keeps them independent: position ids restart at 0 for every sample, and with no
``attention_mask`` in the batch, transformers derives a block-diagonal causal mask from
those position ids (``masking_utils.find_packed_sequence_indices`` for sdpa / eager;
flash-attention uses the same boundaries). Whether a model may be packed at all, and in
which of the two batch layouts, is :mod:`qwenft_trainer.packing_mode`'s decision.

    rows = pack_samples(tokenize_all(convs, tok, 2048), max_seq_length=2048)
    trainer = Trainer(..., train_dataset=[r.to_features() for r in rows],
                      data_collator=PackedCollator(pad_token_id=tok.pad_token_id))
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from qwenft_trainer.data import IGNORE_INDEX, TokenizedSample

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class PackedSequence:
    """One training row holding whole samples back to back."""

    input_ids: list[int] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    position_ids: list[int] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)

    def to_features(self) -> dict[str, list[int]]:
        """The dict a Hugging Face dataset item holds."""
        return {
            "input_ids": list(self.input_ids),
            "labels": list(self.labels),
            "position_ids": list(self.position_ids),
        }


def pack_samples(samples: Sequence[TokenizedSample], max_seq_length: int) -> list[PackedSequence]:
    """Best-fit-decreasing packing: fewest rows of at most ``max_seq_length`` tokens.

    Samples are never split; each keeps its own positions (0..len-1). The first label of
    every sample is -100 so no token learns to predict the start of the next sample.
    Rows come out in a deterministic order; the trainer shuffles them.
    """
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i].input_ids), i))
    rows: list[list[int]] = []
    # Sorted (free space, row) pairs: the best fit is the first row with enough room.
    free: list[tuple[int, int]] = []
    for index in order:
        length = len(samples[index].input_ids)
        if length > max_seq_length:
            raise ValueError(
                f"sample of {length} tokens is longer than max_seq_length={max_seq_length}; "
                "tokenize with the same max_seq_length to truncate it"
            )
        if length == 0:
            continue
        slot = bisect.bisect_left(free, (length, -1))
        if slot < len(free):
            room, row = free.pop(slot)
            rows[row].append(index)
            bisect.insort(free, (room - length, row))
        else:
            rows.append([index])
            bisect.insort(free, (max_seq_length - length, len(rows) - 1))
    return [_build_row([samples[i] for i in members]) for members in rows]


def _build_row(members: Sequence[TokenizedSample]) -> PackedSequence:
    row = PackedSequence()
    for sample in members:
        row.input_ids.extend(sample.input_ids)
        row.labels.extend([IGNORE_INDEX, *sample.labels[1:]])
        row.position_ids.extend(range(len(sample.input_ids)))
        row.lengths.append(len(sample.input_ids))
    return row


class PackedCollator:
    """Batches packed rows as ``[rows, longest row]`` with restarting positions, no mask.

    The batch has ``input_ids``, ``labels`` and ``position_ids`` and deliberately no
    ``attention_mask``: transformers builds the per-sample causal mask from the position
    ids. A row shorter than the longest is filled with a pad segment of its own (positions
    from 0, labels -100) that no real token attends to. Rows are stacked rather than
    flattened into one ``[1, tokens]`` row because sdpa and eager attention cost grows with
    the square of the row length; ``flatten=True`` hands the batch to
    :class:`transformers.DataCollatorWithFlattening` instead, for flash-attention kernels
    that run variable-length segments without any padding. ``row_length`` pads every row
    to that width instead of the longest row's, so every batch has one shape (kernels
    compiled per shape, flex_attention, then compile once).
    """

    def __init__(
        self,
        *,
        pad_token_id: int = 0,
        flatten: bool = False,
        return_flash_attn_kwargs: bool = False,
        row_length: int | None = None,
    ) -> None:
        if flatten and row_length is not None:
            raise ValueError("a flattened batch has no rows to pad; pass flatten or row_length")
        self.pad_token_id = pad_token_id
        self.row_length = row_length
        self._flatten: Any = None
        if flatten:
            from transformers import DataCollatorWithFlattening

            self._flatten = DataCollatorWithFlattening(
                return_position_ids=True,
                separator_id=IGNORE_INDEX,
                return_flash_attn_kwargs=return_flash_attn_kwargs,
            )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        import torch

        if self._flatten is not None:
            pieces = [piece for feature in features for piece in _split_row(feature)]
            flat: dict[str, torch.Tensor] = self._flatten(pieces, return_tensors="pt")
            return flat
        rows = [_row_lists(feature) for feature in features]
        width = max(len(ids) for ids, _, _ in rows)
        if self.row_length is not None:
            if width > self.row_length:
                raise ValueError(
                    f"a packed row of {width} tokens is longer than the row length "
                    f"{self.row_length}; pack with the same max_seq_length"
                )
            width = self.row_length
        batch: dict[str, list[list[int]]] = {"input_ids": [], "labels": [], "position_ids": []}
        for ids, labels, positions in rows:
            fill = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * fill)
            batch["labels"].append(labels + [IGNORE_INDEX] * fill)
            batch["position_ids"].append(positions + list(range(fill)))
        return {key: torch.tensor(value, dtype=torch.long) for key, value in batch.items()}


def _row_lists(feature: dict[str, Any]) -> tuple[list[int], list[int], list[int]]:
    input_ids = _as_list(feature["input_ids"])
    labels = _as_list(feature["labels"])
    positions = _as_list(feature.get("position_ids", range(len(input_ids))))
    return input_ids, labels, positions


def _as_list(values: Any) -> list[int]:
    return [int(v) for v in (values.tolist() if hasattr(values, "tolist") else values)]


def _split_row(feature: dict[str, Any]) -> list[dict[str, list[int]]]:
    """A packed row back into its samples, cut where the position ids restart."""
    input_ids, labels, positions = _row_lists(feature)
    starts = [i for i, position in enumerate(positions) if position == 0] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    ends = [*starts[1:], len(input_ids)]
    return [
        {"input_ids": input_ids[start:end], "labels": labels[start:end]}
        for start, end in zip(starts, ends, strict=True)
    ]


class PaddingCollator:
    """Pads each batch (to its longest sample, or to ``max_seq_length``) with an attention mask.

    Labels are -100 on padding. This is the non-packed path (``training.packing: false``)
    and the benchmark's baseline (``pad_to_max=True``, as Qwen's ``finetune.py`` does).
    """

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        max_seq_length: int | None = None,
        pad_to_max: bool = False,
    ) -> None:
        from transformers import DataCollatorForSeq2Seq

        if pad_to_max and max_seq_length is None:
            raise ValueError("pad_to_max=True needs max_seq_length")
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; set tokenizer.pad_token (Qwen uses "
                "'<|endoftext|>') before training without packing"
            )
        self._pad = DataCollatorForSeq2Seq(
            tokenizer,
            padding="max_length" if pad_to_max else "longest",
            max_length=max_seq_length if pad_to_max else None,
            label_pad_token_id=IGNORE_INDEX,
            return_tensors="pt",
        )

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        rows = [{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features]
        batch: dict[str, torch.Tensor] = dict(self._pad(rows))
        return batch


def build_features(
    samples: Sequence[TokenizedSample], max_seq_length: int, *, packing: bool
) -> list[dict[str, list[int]]]:
    """Dataset items for the Trainer: packed rows, or one item per sample."""
    if packing:
        return [row.to_features() for row in pack_samples(samples, max_seq_length)]
    return [sample.to_features() for sample in samples]
