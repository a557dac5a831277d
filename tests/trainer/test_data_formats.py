"""Reading dialogue files into conversations (qwenft_trainer.formats), without a tokenizer.

Covers: each record format (dialogue_sequence, training_sample / bare conversations,
ShareGPT from/value with human/gpt aliases, OpenAI messages), JSON arrays and JSONL with
blank lines, auto-detection per record and an explicit data.format that rejects other
shapes, the bundled quickstart set, and every error case (invalid JSON in JSONL and in an
array, unknown role, no assistant turn, empty content, wrong type, unknown format, empty
file, missing file), each reported with its file line, all at once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from qwenft_trainer.formats import (
    Conversation,
    DatasetError,
    Message,
    detect_format,
    load_conversations,
    read_conversations,
)

DATA = Path(__file__).parent / "data"
ASSETS = Path(__file__).parents[2] / "trainer" / "qwenft_trainer" / "assets"


def roles(conv: Conversation) -> list[str]:
    return [m.role for m in conv.messages]


def test_dialogue_sequence_jsonl_keeps_line_numbers_across_blank_lines() -> None:
    convs = load_conversations(DATA / "dialogue_sequence.jsonl")
    assert [c.source for c in convs] == [
        "dialogue_sequence.jsonl:1",
        "dialogue_sequence.jsonl:2",
        "dialogue_sequence.jsonl:4",
    ]
    assert convs[0].messages == (
        Message("system", "You are a terse assistant."),
        Message("user", "What is the capital of France?"),
        Message("assistant", "Paris."),
    )
    assert roles(convs[1]) == ["user", "assistant", "user", "assistant"]
    assert convs[2].messages[1].content == "中国的首都是北京。"


def test_training_sample_and_bare_conversations_in_a_json_array() -> None:
    convs = load_conversations(DATA / "training_sample.json")
    assert [c.source for c in convs] == ["training_sample.json:2", "training_sample.json:11"]
    assert roles(convs[0]) == ["user", "assistant"]
    assert convs[1].messages[0] == Message("system", "你是一个乐于助人的助手。")


def test_sharegpt_from_value_with_human_gpt_aliases() -> None:
    convs = load_conversations(DATA / "sharegpt.json", "sharegpt")
    assert roles(convs[0]) == ["user", "assistant"]
    assert roles(convs[1]) == ["system", "user", "assistant", "user", "assistant"]
    assert convs[1].messages[2].content == "你好！请问有什么可以帮您？"


def test_openai_messages_keep_code_verbatim() -> None:
    convs = load_conversations(DATA / "messages.jsonl", "messages")
    assert convs[0].messages[1].content == "def add(a, b):\n    return a + b\n"
    assert len(convs[1].messages) == 5


def test_auto_detects_each_record_of_a_mixed_file() -> None:
    convs = load_conversations(DATA / "mixed.jsonl")
    assert [c.messages[-1].content for c in convs] == [
        "Hi!",
        "你好！",
        "You're welcome.",
        "Goodbye!",
        "Pong",
    ]
    assert all(roles(c) == ["user", "assistant"] for c in convs)


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"dialogue_sequence": []}, "dialogue_sequence"),
        ({"training_sample": {}}, "conversations"),
        ({"conversations": [{"role": "user", "content": "x"}]}, "conversations"),
        ({"conversations": [{"from": "human", "value": "x"}]}, "sharegpt"),
        ({"messages": []}, "messages"),
    ],
)
def test_detect_format(record: dict[str, object], expected: str) -> None:
    assert detect_format(record) == expected


def test_explicit_format_rejects_records_of_another_shape() -> None:
    with pytest.raises(DatasetError) as caught:
        load_conversations(DATA / "mixed.jsonl", "messages")
    lines = [p.line for p in caught.value.problems]
    assert lines == [1, 2, 3, 4]
    assert "but data.format is 'messages'" in caught.value.problems[0].message


def test_bundled_quickstart_set_is_valid_and_varied() -> None:
    convs = load_conversations(ASSETS / "quickstart-dialogues.jsonl")
    assert 40 <= len(convs) <= 80
    multi_turn = [c for c in convs if sum(m.role == "assistant" for m in c.messages) > 1]
    chinese = [c for c in convs if any("\u4e00" <= ch <= "\u9fff" for ch in c.messages[-1].content)]
    with_system = [c for c in convs if c.messages[0].role == "system"]
    assert len(multi_turn) >= 5
    assert len(convs) // 5 <= len(chinese) <= len(convs) // 2
    assert len(with_system) >= 3


@pytest.mark.parametrize(
    ("name", "line", "words"),
    [
        ("invalid_json.jsonl", 2, "invalid JSON"),
        ("unknown_role.jsonl", 2, "unknown role 'bot' in messages[1].role"),
        ("unknown_role_sharegpt.jsonl", 1, "unknown role 'robot' in conversations[1].from"),
        ("no_assistant.jsonl", 2, "no assistant turn in 'dialogue_sequence'"),
        ("empty_content.jsonl", 3, "empty content in messages[1].content"),
        ("unknown_format.jsonl", 2, "unknown format"),
        ("invalid_array.json", 4, "invalid JSON at line 4"),
    ],
)
def test_each_bad_record_is_reported_with_its_line(name: str, line: int, words: str) -> None:
    convs, problems = read_conversations(DATA / "bad" / name)
    assert len(problems) == 1, problems
    assert problems[0].line == line
    assert problems[0].source == f"{name}:{line}"
    assert words in problems[0].message
    assert len(convs) >= 1  # the good records around it still parse


def test_wrong_types_are_each_named() -> None:
    with pytest.raises(DatasetError) as caught:
        load_conversations(DATA / "bad" / "wrong_type.jsonl")
    messages = [p.message for p in caught.value.problems]
    assert messages == [
        "wrong type: a record must be a JSON object, not a list",
        "wrong type: 'messages' must be a list of turns, not a string",
        "wrong type: messages[0].content must be a string, not a number",
        "wrong type: 'training_sample' must be an object, not a list",
    ]
    report = str(caught.value)
    assert report.startswith(f"dataset {DATA / 'bad' / 'wrong_type.jsonl'} has 4 bad records:")
    assert "  wrong_type.jsonl:3: wrong type: messages[0].content" in report


@pytest.mark.parametrize(
    ("path", "words"),
    [(DATA / "bad" / "empty.jsonl", "file is empty"), (DATA / "nope.jsonl", "can't read file")],
)
def test_unusable_files(path: Path, words: str) -> None:
    with pytest.raises(DatasetError, match=words):
        load_conversations(path)


def test_long_reports_are_cut(tmp_path: Path) -> None:
    bad = tmp_path / "many.jsonl"
    bad.write_text("{}\n" * 60, encoding="utf-8")
    with pytest.raises(DatasetError) as caught:
        load_conversations(bad)
    assert len(caught.value.problems) == 60
    assert str(caught.value).endswith("... and 10 more")
