"""Conversations -> token ids and labels: each assistant reply trained the way it is used.

Every model family formats dialogues differently, so the text the model trains on comes
from the tokenizer's own chat template, never from hard-coded special tokens. Each
assistant reply is trained in the context the model has when it writes that reply at
inference: the template's rendering of the dialogue before it plus the generation prompt
(``apply_chat_template(history, add_generation_prompt=True, enable_thinking=...)``). The
reply is what the template renders after that prompt when the reply is the last turn: its
reasoning block if it has one, the answer and the end-of-turn token. Those tokens keep
their ids as labels; everything else (system prompt, user turns, role headers) gets -100.

Replies share one sample while each one's context continues the sample so far
(qwenft_trainer.replies finds contexts, replies and groups); with Qwen2.5 or
Qwen3-Instruct-2507 a whole dialogue is one sample. Hybrid-thinking templates render the
history differently from how its replies were written (Qwen3 and Qwen3.5 drop the
reasoning block, empty or not, of every reply before the last user turn), so no single
text holds each reply in its inference context. Such a dialogue becomes one sample per
reply, each holding the history exactly as the template renders it. That repeats the
history's tokens (the validator counts them: ``samples``, ``tokens``), and no reply is
trained in a context the model never sees. ``training.thinking`` decides which prompt a
reply without reasoning follows (qwenft_trainer.thinking).

Context and reply are tokenized separately, as at inference (the prompt is tokenized and
the reply generated after it), so no token straddles the two.

    convs = formats.load_conversations("data.jsonl")
    samples = tokenize_all(convs, tokenizer, max_seq_length=2048, thinking="empty-in-prompt")
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from qwenft_trainer.config import ConfigError, ThinkingPolicy, TrainConfig
from qwenft_trainer.formats import Conversation
from qwenft_trainer.replies import TemplateError, TrainedReply, group_replies, trained_replies
from qwenft_trainer.thinking import DEFAULT_POLICY, TemplateThinking, probe_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = [
    "IGNORE_INDEX",
    "TemplateError",
    "TokenizedSample",
    "TrainedReply",
    "build_samples",
    "group_replies",
    "tokenize_all",
    "tokenize_dialogue",
    "trained_replies",
]

log = logging.getLogger(__name__)

# Label value that torch's cross-entropy (and every HF loss) skips.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class TokenizedSample:
    """Token ids of one training sample and its labels (-100 where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]
    truncated: bool
    # Token ranges [start, end) of the trained reasoning blocks.
    reasoning_spans: tuple[tuple[int, int], ...] = ()

    @property
    def trained_tokens(self) -> int:
        return sum(1 for label in self.labels if label != IGNORE_INDEX)

    @property
    def reasoning_tokens(self) -> int:
        """Trained tokens inside reasoning blocks (the rest of the trained tokens answer)."""
        kept = len(self.input_ids)
        return sum(max(0, min(end, kept) - start) for start, end in self.reasoning_spans)

    def cut(self, max_seq_length: int) -> TokenizedSample:
        """The sample's first ``max_seq_length`` tokens (itself when it fits)."""
        if len(self.input_ids) <= max_seq_length:
            return self
        return replace(
            self,
            input_ids=self.input_ids[:max_seq_length],
            labels=self.labels[:max_seq_length],
            truncated=True,
        )

    def to_features(self) -> dict[str, list[int]]:
        """The dict a Hugging Face dataset item holds."""
        return {"input_ids": list(self.input_ids), "labels": list(self.labels)}


def _tokenize_group(
    group: Sequence[TrainedReply], tokenizer: PreTrainedTokenizerBase, max_seq_length: int
) -> TokenizedSample:
    pieces: list[tuple[str, int | None]] = []  # (text, reasoning characters if trained)
    done = ""
    for reply in group:
        pieces += [(reply.context[len(done) :], None), (reply.reply, reply.reasoning_chars)]
        done = reply.context + reply.reply
    pieces.append((group[-1].tail, None))
    encoding = tokenizer(
        [text for text, _ in pieces], add_special_tokens=False, return_offsets_mapping=True
    )
    input_ids: list[int] = []
    labels: list[int] = []
    spans: list[tuple[int, int]] = []
    for (_, trained), ids, offsets in zip(
        pieces, encoding["input_ids"], encoding["offset_mapping"], strict=True
    ):
        if trained:
            thought = sum(1 for start, _ in offsets if start < trained)
            spans.append((len(input_ids), len(input_ids) + thought))
        input_ids += ids
        labels += ids if trained is not None else [IGNORE_INDEX] * len(ids)
    sample = TokenizedSample(input_ids, labels, truncated=False, reasoning_spans=tuple(spans))
    return sample.cut(max_seq_length)


def tokenize_dialogue(
    conv: Conversation,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    thinking: ThinkingPolicy = DEFAULT_POLICY,
    support: TemplateThinking | None = None,
) -> list[TokenizedSample]:
    """The training samples of one dialogue (one, or one per reply), each cut to length."""
    if not getattr(tokenizer, "is_fast", False):
        raise TemplateError(
            "assistant-only labels need character offsets: load a fast tokenizer "
            "(AutoTokenizer.from_pretrained(..., use_fast=True))"
        )
    replies = trained_replies(conv, tokenizer, thinking, support)
    return [_tokenize_group(g, tokenizer, max_seq_length) for g in group_replies(replies)]


def tokenize_all(
    convs: Iterable[Conversation],
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    thinking: ThinkingPolicy = DEFAULT_POLICY,
) -> list[TokenizedSample]:
    """Tokenize every conversation; samples left with no trained token after truncation are dropped.

    A sample without any label would add nothing to the loss (and a batch made only of such
    samples divides by zero), so it is skipped with a warning naming its source.
    """
    samples: list[TokenizedSample] = []
    dropped: list[str] = []
    truncated = 0
    support = probe_template(tokenizer)
    dialogues = 0
    for conv in convs:
        dialogues += 1
        for sample in tokenize_dialogue(conv, tokenizer, max_seq_length, thinking, support):
            truncated += sample.truncated
            if sample.trained_tokens:
                samples.append(sample)
            else:
                dropped.append(conv.source)
    if len(samples) + len(dropped) > dialogues:
        log.info(
            "%d dialogue(s) make %d samples: the chat template renders earlier replies "
            "differently from how they were written, so those replies train in samples of "
            "their own (%s template, training.thinking=%s)",
            dialogues,
            len(samples) + len(dropped),
            support.kind,
            thinking,
        )
    if truncated:
        log.info("%d sample(s) were cut to max_seq_length=%d", truncated, max_seq_length)
    if dropped:
        log.warning(
            "%d sample(s) have no assistant token within max_seq_length=%d and are "
            "skipped (first: %s); raise training.max_seq_length or shorten their prompts",
            len(dropped),
            max_seq_length,
            ", ".join(dropped[:5]),
        )
    return samples


def build_samples(
    config: TrainConfig, tokenizer: PreTrainedTokenizerBase
) -> tuple[list[TokenizedSample], list[TokenizedSample] | None]:
    """Train and (optional) eval samples: tokenized, with assistant-only labels, unpacked.

    Packing them is left to the session, which knows once the model is loaded whether the
    model can be packed exactly (:mod:`qwenft_trainer.packing_mode`).
    """
    from qwenft_trainer.formats import load_conversations

    t = config.training
    convs = load_conversations(config.data.path, config.data.format)
    eval_convs = []
    if config.evaluation.file:
        eval_convs = load_conversations(config.evaluation.file, config.data.format)
    elif config.evaluation.fraction > 0:
        order = list(range(len(convs)))
        random.Random(t.seed).shuffle(order)
        held = max(1, round(len(convs) * config.evaluation.fraction))
        eval_convs = [convs[i] for i in sorted(order[:held])]
        convs = [convs[i] for i in sorted(order[held:])]

    train = tokenize_all(convs, tokenizer, t.max_seq_length, thinking=t.thinking)
    if not train:
        raise ConfigError(f"{config.data.path}: no dialogue is left to train on")
    held_out = (
        tokenize_all(eval_convs, tokenizer, t.max_seq_length, thinking=t.thinking)
        if eval_convs
        else []
    )
    return train, held_out or None
