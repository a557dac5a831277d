"""Streamed replies: one text piece per token, incomplete UTF-8 held back, nothing lost.

The tiny model's tokenizer is byte-level BPE trained the way Qwen's is, so a rare CJK
character splits into byte tokens that decode to U+FFFD until the character is complete.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import torch
from qwenft_trainer.streaming import INCOMPLETE, token_streamer
from transformers import AutoTokenizer

# No spaces (a heuristic that waits for one would send this in one piece at the end),
# a run of ASCII symbols, and CJK characters the tiny vocabulary splits into bytes.
REPLY = '{"城市":"北京","人口":2154}<tag>鬱龘齉</tag>'


def stream(tokenizer: object, ids: list[int]) -> list[str]:
    """The pieces the streamer yields for ``ids`` fed one token at a time after a prompt."""

    async def run() -> list[str]:
        streamer = token_streamer(tokenizer)
        streamer.put(torch.tensor([[1, 2, 3]]))  # the prompt, skipped
        for token in ids:
            streamer.put(torch.tensor([token]))
        streamer.end()
        return [piece async for piece in streamer if piece]

    return asyncio.run(run())


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> object:
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def test_each_token_streams_as_soon_as_its_text_is_final(tokenizer: object) -> None:
    ids = tokenizer.encode(REPLY)  # type: ignore[attr-defined]

    def final(n: int) -> str:
        """The text of the first ``n`` tokens that no later token can change."""
        return str(tokenizer.decode(ids[:n])).rstrip(INCOMPLETE)  # type: ignore[attr-defined]

    expected = [final(n + 1)[len(final(n)) :] for n in range(len(ids))]
    assert "" in expected, "the reply must contain a character split into byte tokens"
    pieces = stream(tokenizer, ids)
    assert pieces == [piece for piece in expected if piece]
    assert "".join(pieces) == REPLY
    assert len(pieces) > len(ids) // 2


def test_a_character_never_completed_still_arrives(tokenizer: object) -> None:
    ids = tokenizer.encode("ab鬱")  # type: ignore[attr-defined]
    truncated = ids[:-1]
    text = tokenizer.decode(truncated)  # type: ignore[attr-defined]
    assert text.endswith(INCOMPLETE)
    assert "".join(stream(tokenizer, truncated)) == text
