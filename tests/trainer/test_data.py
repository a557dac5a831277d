"""Tokenizing conversations with assistant-only labels (qwenft_trainer.data), tiny Qwen tokenizer.

Covers: the token ids are exactly the chat template's rendering; labels cover every
assistant reply of a multi-turn dialogue plus its end-of-turn token and nothing else
(system prompt, user turns, role headers, the template's default system prompt and the
newline between turns are -100); English, Chinese, code and replies with leading spaces;
a template whose history doesn't continue its generation prompt (each reply then is its
own sample, after that prompt) and templates with other markers; truncation to
max_seq_length; tokenize_all dropping samples left without a trained token; clear errors
for a tokenizer with no chat template or without offsets. The real Qwen templates, with and
without thinking, are covered in test_thinking.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from qwenft_trainer.data import (
    IGNORE_INDEX,
    TemplateError,
    TokenizedSample,
    tokenize_all,
    tokenize_dialogue,
)
from qwenft_trainer.formats import Conversation, Message, load_conversations
from qwenft_trainer.tiny import IM_END

DATA = Path(__file__).parent / "data"

# Qwen2.5-Instruct's template without the tool-calling branches: a default system prompt
# when the dialogue has none.
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful "
    "assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) "
    "or (message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# Like Qwen3's history turns: replies stripped of surrounding newlines, and a generation
# prompt the history never shows.
STRIPPING_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content.strip('\\n') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
)

# No ChatML at all: plain-text headers and the tokenizer's eos token closing each reply.
PLAIN_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message.role == 'assistant' %}"
    "{{- '### Assistant:\\n' + message.content + eos_token + '\\n' }}"
    "{%- else %}"
    "{{- '### ' + message.role|capitalize + ':\\n' + message.content + '\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '### Assistant:\\n' }}{%- endif %}"
)


@pytest.fixture()
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def trained_segments(sample: TokenizedSample, tokenizer: Any) -> list[str]:
    """The decoded text of each run of consecutive labelled tokens."""
    segments: list[list[int]] = []
    previous = IGNORE_INDEX
    for token, label in zip(sample.input_ids, sample.labels, strict=True):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                segments.append([])
            segments[-1].append(label)
        previous = label
    return [tokenizer.decode(ids) for ids in segments]


def tokenize_conversation(dialogue: Conversation, tokenizer: Any, max_seq_length: int) -> Any:
    """The one sample of a dialogue whose template keeps the history as it was written."""
    samples = tokenize_dialogue(dialogue, tokenizer, max_seq_length)
    assert len(samples) == 1
    return samples[0]


def replies(conv: Conversation) -> list[str]:
    return [m.content for m in conv.messages if m.role == "assistant"]


def conv(*turns: tuple[str, str]) -> Conversation:
    return Conversation(tuple(Message(role, text) for role, text in turns), "test:1")  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["dialogue_sequence.jsonl", "sharegpt.json", "messages.jsonl"])
def test_labels_are_every_assistant_reply_with_its_end_token(name: str, tokenizer: Any) -> None:
    for dialogue in load_conversations(DATA / name):
        sample = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
        text = tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in dialogue.messages], tokenize=False
        )
        assert tokenizer.decode(sample.input_ids) == text
        assert trained_segments(sample, tokenizer) == [r + IM_END for r in replies(dialogue)]
        assert not sample.truncated


def test_system_user_and_headers_carry_no_loss(tokenizer: Any) -> None:
    dialogue = conv(
        ("system", "You are a terse assistant."),
        ("user", "Hello!"),
        ("assistant", "Hi!"),
        ("user", "你好"),
        ("assistant", "你好！"),
    )
    sample = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
    masked = [t for t, label in zip(sample.input_ids, sample.labels, strict=True) if label < 0]
    masked_text = tokenizer.decode(masked)
    assert "You are a terse assistant." in masked_text
    assert "Hello!" in masked_text and "你好" in masked_text
    assert masked_text.count("assistant\n") == 2  # both role headers
    assert "Hi!" not in masked_text and "你好！" not in masked_text
    assert sample.trained_tokens == len(sample.input_ids) - len(masked)


def test_replies_with_leading_space_newline_or_code(tokenizer: Any) -> None:
    dialogue = conv(
        ("user", "a"),
        ("assistant", " indented answer"),
        ("user", "b"),
        ("assistant", "\nstarts on a new line"),
        ("user", "code"),
        ("assistant", "```python\ndef add(a, b):\n    return a + b\n```"),
    )
    sample = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
    assert trained_segments(sample, tokenizer) == [r + IM_END for r in replies(dialogue)]


def test_template_with_a_default_system_prompt(tokenizer: Any) -> None:
    tokenizer.chat_template = QWEN25_TEMPLATE
    dialogue = conv(
        ("user", "Hello!"), ("assistant", "Hi!"), ("user", "Bye"), ("assistant", "再见")
    )
    sample = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
    assert trained_segments(sample, tokenizer) == ["Hi!" + IM_END, "再见" + IM_END]
    assert "You are Qwen" in tokenizer.decode(sample.input_ids)


def test_template_that_strips_replies(tokenizer: Any) -> None:
    tokenizer.chat_template = STRIPPING_TEMPLATE
    dialogue = conv(
        ("user", "Hi"), ("assistant", "\nHello.\n"), ("user", "Bye"), ("assistant", "Bye.")
    )
    samples = tokenize_dialogue(dialogue, tokenizer, max_seq_length=1024)
    assert [trained_segments(s, tokenizer) for s in samples] == [
        ["Hello." + IM_END],
        ["Bye." + IM_END],
    ]
    # Each reply follows the generation prompt (with its think block), as at inference.
    assert tokenizer.decode(samples[1].input_ids).endswith(
        "<|im_start|>assistant\n<think>\n\n</think>\n\nBye." + IM_END + "\n"
    )
    assert "assistant\nHello." + IM_END in tokenizer.decode(samples[1].input_ids)


def test_template_without_chatml_uses_its_own_end_token(tokenizer: Any) -> None:
    tokenizer.chat_template = PLAIN_TEMPLATE
    dialogue = conv(("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello."))
    sample = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
    assert tokenizer.decode(sample.input_ids).startswith("### System:\nBe brief.\n")
    assert trained_segments(sample, tokenizer) == ["Hello." + tokenizer.eos_token]


def test_truncation_cuts_ids_and_labels_together(tokenizer: Any) -> None:
    dialogue = load_conversations(DATA / "dialogue_sequence.jsonl")[1]
    full = tokenize_conversation(dialogue, tokenizer, max_seq_length=1024)
    cut = tokenize_conversation(dialogue, tokenizer, max_seq_length=len(full.input_ids) - 5)
    assert cut.truncated and not full.truncated
    assert cut.input_ids == full.input_ids[:-5]
    assert cut.labels == full.labels[:-5]


def test_tokenize_all_skips_samples_without_trained_tokens(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    long_prompt = conv(("user", "word " * 200), ("assistant", "ok"))
    short = conv(("user", "Hi"), ("assistant", "Hello!"))
    samples = tokenize_all([long_prompt, short], tokenizer, max_seq_length=64)
    assert len(samples) == 1
    assert samples[0].trained_tokens > 0
    assert "test:1" in caplog.text and "max_seq_length=64" in caplog.text


def test_tokenizer_without_chat_template_is_refused(tokenizer: Any) -> None:
    tokenizer.chat_template = None
    with pytest.raises(TemplateError, match="no chat template"):
        tokenize_dialogue(conv(("user", "Hi"), ("assistant", "Yo")), tokenizer, 64)


def test_template_that_fails_to_render_names_the_cause(tokenizer: Any) -> None:
    tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(TemplateError, match="roles must alternate"):
        tokenize_dialogue(conv(("user", "Hi"), ("assistant", "Yo")), tokenizer, 64)
