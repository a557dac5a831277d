"""Conversations -> token ids and labels, with the loss on assistant turns only.

Every model family formats dialogues differently, so the text the model trains on comes
from the tokenizer's own chat template, never from hard-coded special tokens. Real Qwen
templates have no ``{% generation %}`` markers, so the assistant parts are found by
rendering prefixes of the dialogue: the text up to an assistant turn (with the generation
prompt) and up to the end of that turn bound the characters the model must learn to
produce, including the end-of-turn token. The full text is tokenized once with offsets and
each token inside such a span keeps its id as label; everything else (system prompt, user
turns, role headers) gets -100.

    convs = load_conversations("data.jsonl")
    samples = tokenize_all(convs, tokenizer, max_seq_length=2048)
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from qwenft_trainer.config import DataFormat
from qwenft_trainer.formats import (
    Conversation,
    DatasetError,
    Message,
    RecordProblem,
    load_conversations,
    read_conversations,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "Conversation",
    "DataFormat",
    "DatasetError",
    "Message",
    "RecordProblem",
    "TemplateError",
    "TokenizedSample",
    "assistant_spans",
    "load_conversations",
    "read_conversations",
    "tokenize_all",
    "tokenize_conversation",
]

log = logging.getLogger(__name__)

# Label value that torch's cross-entropy (and every HF loss) skips.
IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The tokenizer's chat template can't render a conversation in a way we can label."""


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids of one conversation and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    def to_features(self) -> dict[str, list[int]]:
        """The dict a Hugging Face dataset item holds."""
        return {"input_ids": list(self.input_ids), "labels": list(self.labels)}


def _render(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation: bool
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation
        )
    except Exception as err:  # jinja raises its own errors, and templates raise_exception()
        raise TemplateError(f"the chat template can't render this dialogue: {err}") from err
    if not isinstance(text, str):
        raise TemplateError(f"chat template returned {type(text).__name__}, expected text")
    return text


def _control_tokens(tokenizer: PreTrainedTokenizerBase) -> list[str]:
    tokens = set(tokenizer.all_special_tokens)
    tokens.update(str(token) for token in tokenizer.get_added_vocab())
    return sorted((t for t in tokens if t), key=len, reverse=True)


def assistant_spans(
    conv: Conversation, tokenizer: PreTrainedTokenizerBase
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered dialogue and the character span of each assistant reply in it.

    A span covers the reply and the template's end-of-turn token after it, but not the
    role header before it nor the whitespace the template puts between turns.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise TemplateError(
            "the tokenizer has no chat template; use an instruct/chat checkpoint or set "
            "tokenizer.chat_template"
        )
    messages = [{"role": m.role, "content": m.content} for m in conv.messages]
    full = _render(tokenizer, messages, generation=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        lined_up = False
        if i > 0:  # templates may not render an empty history, nor a default system prompt
            try:
                prompt = _render(tokenizer, messages[:i], generation=True)
                turn = _render(tokenizer, messages[: i + 1], generation=False)
            except TemplateError:
                prompt = turn = ""
            lined_up = full.startswith(prompt) and full.startswith(turn)
            lined_up = lined_up and cursor <= len(prompt) < len(turn)
        if lined_up:
            start, end = len(prompt), len(turn)
        else:
            start, end = _search_span(full, message["content"], cursor, tokenizer)
        end = start + len(full[start:end].rstrip())
        spans.append((start, end))
        cursor = end
    return full, spans


def _search_span(
    full: str, content: str, cursor: int, tokenizer: PreTrainedTokenizerBase
) -> tuple[int, int]:
    """Fallback for templates whose prefixes don't line up: find the reply text itself."""
    start = full.find(content, cursor)
    if start < 0:  # some templates strip the whitespace around a reply
        content = content.strip()
        start = full.find(content, cursor)
    if start < 0:
        raise TemplateError("the chat template dropped an assistant reply from the rendered text")
    end = start + len(content)
    for token in _control_tokens(tokenizer):
        if full.startswith(token, end):
            end += len(token)
            break
    return start, end


def tokenize_conversation(
    conv: Conversation, tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> TokenizedSample:
    """Token ids of the templated dialogue, labels only on assistant replies, cut to length."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError(
            "assistant-only labels need character offsets: load a fast tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    text, spans = assistant_spans(conv, tokenizer)
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    input_ids: list[int] = list(encoding["input_ids"])
    offsets: list[tuple[int, int]] = list(encoding["offset_mapping"])
    labels = _label_tokens(input_ids, offsets, spans)
    truncated = len(input_ids) > max_seq_length
    if truncated:
        input_ids, labels = input_ids[:max_seq_length], labels[:max_seq_length]
    return TokenizedSample(input_ids=input_ids, labels=labels, truncated=truncated)


def _label_tokens(
    input_ids: Sequence[int], offsets: Sequence[tuple[int, int]], spans: Sequence[tuple[int, int]]
) -> list[int]:
    """Each token whose first character lies inside a span keeps its id as label."""
    labels = [IGNORE_INDEX] * len(input_ids)
    span = 0
    for index, (token_start, token_end) in enumerate(offsets):
        while span < len(spans) and spans[span][1] <= token_start:
            span += 1
        if span == len(spans):
            break
        if spans[span][0] <= token_start < spans[span][1] and token_end > token_start:
            labels[index] = input_ids[index]
    return labels


def tokenize_all(
    convs: Iterable[Conversation], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> list[TokenizedSample]:
    """Tokenize every conversation; ones left with no trained token after truncation are dropped.

    A sample without any label would add nothing to the loss (and a batch made only of such
    samples divides by zero), so it is skipped with a warning naming its source.
    """
    samples: list[TokenizedSample] = []
    dropped: list[str] = []
    truncated = 0
    for conv in convs:
        sample = tokenize_conversation(conv, tokenizer, max_seq_length)
        truncated += sample.truncated
        if sample.trained_tokens:
            samples.append(sample)
        else:
            dropped.append(conv.source)
    if truncated:
        log.info("%d dialogue(s) were cut to max_seq_length=%d", truncated, max_seq_length)
    if dropped:
        log.warning(
            "%d conversation(s) have no assistant token within max_seq_length=%d and are "
            "skipped (first: %s); raise training.max_seq_length or shorten their prompts",
            len(dropped),
            max_seq_length,
            ", ".join(dropped[:5]),
        )
    return samples


def features(samples: Iterable[TokenizedSample]) -> list[dict[str, Any]]:
    """Dataset items (``input_ids``, ``labels``) for the padding collator."""
    return [sample.to_features() for sample in samples]
