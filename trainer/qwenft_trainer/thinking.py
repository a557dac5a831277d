"""Reasoning in assistant replies, and what a chat template does with it.

Qwen3 and Qwen3.5 reply in two parts: a reasoning block ``<think>…</think>`` and the
answer. Their chat templates treat the two differently depending on where a reply sits:
the generation prompt opens the reply (``enable_thinking=False`` ends it with an empty
``<think>\\n\\n</think>\\n\\n`` block, Qwen3.5's thinking prompt already opens ``<think>``),
the reply after the last user message is rendered with its reasoning, and replies earlier in
the history are rendered without it. A model is trained the way it is used only if each
reply is learnt after exactly the text the template gives the model when it writes that
reply (qwenft_trainer.data builds that); this module holds the pieces that decision needs:

* :func:`split_reasoning`: a reply's reasoning written inline (``<think>…</think>answer``)
  read the way the Qwen templates read it, with an error for what they would mangle;
* :func:`probe_template`: whether a template renders reasoning and whether it has the
  ``enable_thinking`` switch (hybrid), found by rendering two probe dialogues, not by name;
* :func:`enable_thinking`: the switch each trained reply is rendered with, from the
  ``training.thinking`` policy.

The policy only decides what a reply *without* reasoning teaches on a hybrid template:

``empty-in-prompt`` (default)
    the reply is trained after the ``enable_thinking=False`` generation prompt, which ends
    with the empty think block; the block is context, not trained. This is how Qwen3 is
    used with thinking off, and the model keeps its switch: it still thinks when asked to.
``empty-in-reply``
    the reply is trained after the thinking prompt and the empty block is part of what the
    model learns to write, so it learns to skip thinking on its own even with thinking on.

A reply with reasoning is always trained after the ``enable_thinking=True`` prompt. A
reasoning block that is empty (``<think>\\n\\n</think>``) counts as no reasoning. Reasoning
on a template that can't render it (Qwen2.5, Qwen3-Instruct-2507) is an error: the template
would drop it (``reasoning_content``) or train the tags as plain text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from qwenft_trainer.config import DEFAULT_THINKING, ThinkingPolicy

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
DEFAULT_POLICY: ThinkingPolicy = DEFAULT_THINKING

TemplateKind = Literal["hybrid", "always", "none"]

_PROBE_QUESTION = "probe question"
_PROBE_REASONING = "probe reasoning 7f3a"
_PROBE_ANSWER = "probe answer"


class ReasoningError(ValueError):
    """A reply's inline reasoning can't be read unambiguously."""


def clean_reasoning(text: str | None) -> str | None:
    """Reasoning without the newlines around it; None when there is none (or it is blank)."""
    if text is None or not text.strip():
        return None
    return text.strip("\n")


def split_reasoning(content: str) -> tuple[str | None, str]:
    """``(reasoning, answer)`` of a reply, as Qwen's templates split ``<think>…</think>``.

    The opening tag may be missing (Qwen3.5 and thinking-only models get it from the
    generation prompt, so their outputs start inside the block). Text before ``<think>``,
    a second block, or an unclosed one are errors: the templates would silently drop text.
    """
    if THINK_CLOSE not in content:
        if THINK_OPEN in content:
            raise ReasoningError(f"has '{THINK_OPEN}' but no closing '{THINK_CLOSE}'")
        return None, content
    if content.count(THINK_CLOSE) > 1 or content.count(THINK_OPEN) > 1:
        raise ReasoningError(
            f"has more than one '{THINK_OPEN}…{THINK_CLOSE}' block; give one per reply"
        )
    before, answer = content.split(THINK_CLOSE)
    if THINK_OPEN in before:
        ahead, before = before.split(THINK_OPEN)
        if ahead.strip():
            raise ReasoningError(
                f"has text before '{THINK_OPEN}', which the chat template would drop"
            )
    return clean_reasoning(before), answer.lstrip("\n")


@dataclass(frozen=True)
class TemplateThinking:
    """What a chat template does with reasoning."""

    renders_reasoning: bool  # a reply's reasoning_content appears in the rendered text
    has_switch: bool  # the generation prompt depends on enable_thinking

    @property
    def kind(self) -> TemplateKind:
        """``hybrid`` (Qwen3, Qwen3.5), ``always`` (thinks on every reply) or ``none``."""
        if self.has_switch:
            return "hybrid"
        return "always" if self.renders_reasoning else "none"


def probe_template(tokenizer: PreTrainedTokenizerBase) -> TemplateThinking:
    """Render two probe dialogues to learn what the tokenizer's template does with reasoning."""
    question = [{"role": "user", "content": _PROBE_QUESTION}]
    reply = {"role": "assistant", "content": _PROBE_ANSWER, "reasoning_content": _PROBE_REASONING}
    try:
        rendered = tokenizer.apply_chat_template([*question, reply], tokenize=False)
        prompts = {
            str(
                tokenizer.apply_chat_template(
                    question, tokenize=False, add_generation_prompt=True, enable_thinking=flag
                )
            )
            for flag in (True, False)
        }
    except Exception:  # a template that can't render the probe has no usable thinking
        return TemplateThinking(renders_reasoning=False, has_switch=False)
    return TemplateThinking(
        renders_reasoning=_PROBE_REASONING in str(rendered), has_switch=len(prompts) > 1
    )


def enable_thinking(has_reasoning: bool, policy: ThinkingPolicy) -> bool:
    """The ``enable_thinking`` value a reply is trained under."""
    return has_reasoning or policy == "empty-in-reply"


def reasoning_end(reply: str) -> int:
    """Characters of a rendered reply up to the end of its reasoning block (0 if none)."""
    at = reply.find(THINK_CLOSE)
    return at + len(THINK_CLOSE) if at >= 0 else 0


def describe(support: TemplateThinking, policy: ThinkingPolicy) -> str:
    """One line for a report: the template's kind and what the policy does with it."""
    if support.kind == "hybrid":
        return f"hybrid template, replies without reasoning: {policy}"
    if support.kind == "always":
        return "template always thinks; training.thinking does not apply"
    return "template without thinking; training.thinking does not apply"
