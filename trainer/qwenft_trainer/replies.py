"""Each assistant reply with the text the model is given when it writes that reply.

A reply is trained the way it is used only if the tokens before it are what inference
feeds the model: the chat template's rendering of the history plus the generation prompt
(``apply_chat_template(history, add_generation_prompt=True, enable_thinking=...)``). This
module finds, with the tokenizer's own template, that context and the reply the template
renders after it (reasoning block, answer, end-of-turn token) for every assistant turn,
and groups replies that can share one sample: a reply joins the sample before it only when
its context continues that sample's text exactly. With Qwen2.5 every reply of a dialogue
shares one sample; Qwen3 and Qwen3.5 render earlier replies without their think block, so
each reply is its own sample (qwenft_trainer.data explains the cost). Real Qwen templates
have no ``{% generation %}`` markers, hence the rendering of prefixes.

    replies = trained_replies(conv, tokenizer, thinking="empty-in-prompt")
    samples = group_replies(replies)   # list of lists of replies
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from qwenft_trainer.config import ThinkingPolicy
from qwenft_trainer.formats import Conversation
from qwenft_trainer.thinking import (
    DEFAULT_POLICY,
    TemplateThinking,
    enable_thinking,
    probe_template,
    reasoning_end,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


class TemplateError(ValueError):
    """The tokenizer's chat template can't render a conversation in a way we can label."""


@dataclass(frozen=True)
class TrainedReply:
    """One assistant reply in its inference context, as text."""

    turn: int  # index of the reply in the dialogue's messages
    context: str  # what the model is given: the rendered history and the generation prompt
    reply: str  # what it learns to write: reasoning block, answer, end-of-turn token
    tail: str  # template text after the reply up to the next turn (no loss)
    reasoning_chars: int  # leading characters of ``reply`` that are its reasoning block


def _render(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, str]],
    generation: bool,
    thinking: bool,
) -> str:
    try:
        text = tokenizer.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation, enable_thinking=thinking
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


def trained_replies(
    conv: Conversation,
    tokenizer: PreTrainedTokenizerBase,
    thinking: ThinkingPolicy = DEFAULT_POLICY,
    support: TemplateThinking | None = None,
) -> list[TrainedReply]:
    """Each assistant reply with the context it is written in at inference.

    The reply is the text the template renders after the generation prompt when the reply
    is the last turn. Templates whose rendering of the turn doesn't continue the prompt
    (an assistant turn first, a prompt the history never shows) fall back to finding the
    answer text itself; a reply with reasoning can't be placed that way and is refused.
    """
    if getattr(tokenizer, "chat_template", None) is None:
        raise TemplateError(
            "the tokenizer has no chat template; use an instruct/chat checkpoint or set "
            "tokenizer.chat_template"
        )
    support = support or probe_template(tokenizer)
    messages = [m.as_template_message() for m in conv.messages]
    replies: list[TrainedReply] = []
    for i, message in enumerate(conv.messages):
        if message.role != "assistant":
            continue
        reasons = message.reasoning is not None
        if reasons and not support.renders_reasoning:
            raise TemplateError(
                f"message {i} (assistant) has reasoning, but the model's chat template has no "
                "thinking (Qwen2.5 and Qwen3-Instruct-2507 are not thinking models): train a "
                "thinking model (Qwen3, Qwen3.5) or remove the reasoning from the data"
            )
        flag = enable_thinking(reasons, thinking)
        full = _render(tokenizer, messages[: i + 1], False, flag)
        context = None
        if i > 0:  # templates may not render an empty history, nor a history without a query
            try:
                context = _render(tokenizer, messages[:i], True, flag)
            except TemplateError:
                context = None
        if context is not None and full.startswith(context) and len(full) > len(context):
            start = len(context)
        elif reasons:
            raise TemplateError(
                f"the chat template doesn't render message {i} (assistant) as a continuation "
                "of its generation prompt, so its reasoning can't be trained in place"
            )
        else:
            start = _search_reply(full, message.content, tokenizer)
            context = context if context is not None else full[:start]
        reply = full[start:].rstrip()
        reasoning = reasoning_end(reply) if reasons else 0
        tail = full[start + len(reply) :]
        replies.append(TrainedReply(i, context, reply, tail, reasoning))
    return replies


def _search_reply(full: str, content: str, tokenizer: PreTrainedTokenizerBase) -> int:
    """Fallback for templates whose prefixes don't line up: where the last reply's text is.

    The reply is the last turn rendered, so only control tokens and whitespace follow it.
    """
    controls = _control_tokens(tokenizer)
    for text in dict.fromkeys((content, content.strip())):  # some templates strip replies
        start = full.rfind(text)
        while start >= 0:
            rest = full[start + len(text) :]
            for token in controls:
                rest = rest.replace(token, "")
            if not rest.strip():
                return start
            start = full.rfind(text, 0, start + len(text) - 1)
    raise TemplateError("the chat template dropped an assistant reply from the rendered text")


def group_replies(replies: Sequence[TrainedReply]) -> list[list[TrainedReply]]:
    """Replies that can share a sample: each one's context continues the text before it."""
    groups: list[list[TrainedReply]] = []
    text = ""
    for reply in replies:
        if groups and reply.context.startswith(text):
            groups[-1].append(reply)
        else:
            groups.append([reply])
        text = reply.context + reply.reply
    return groups
