"""Reading dialogue files into conversations (qwenft_trainer.formats), without a tokenizer.

Covers: each record format (dialogue_sequence, training_sample / bare conversations,
ShareGPT from/value with human/gpt aliases, OpenAI messages), JSON arrays and JSONL with
blank lines, auto-detection per record and an explicit data.format that rejects other
shapes, the bundled quickstart set, and every error case (invalid JSON in JSONL and in an
array, unknown role, no assistant turn, empty content, wrong type, unknown format, empty
file, missing file), each reported with its file line, all at once. Malformed files:
nesting 100k deep, lone surrogate escapes, bytes that are not UTF-8, UTF-16, a UTF-8
byte-order mark (skipped), line separators inside strings, numbers too long to convert, huge
values cut in messages. Properties (Hypothesis, derandomized): any JSON values or any bytes
get conversations and problems on real lines, never an exception; valid records round-trip
through JSONL and JSON arrays.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from qwenft_trainer.formats import (
    Conversation,
    DatasetError,
    Message,
    RecordProblem,
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


# Malformed files: each gets a verdict naming its line, never an exception.

GOOD = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
GOOD_LINE = json.dumps(GOOD)


def write(tmp_path: Path, name: str, data: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogatepass")
    path.write_bytes(data)
    return path


def only_problem(path: Path) -> tuple[list[Conversation], RecordProblem]:
    convs, problems = read_conversations(path)
    assert len(problems) == 1, problems
    return convs, problems[0]


@pytest.mark.parametrize(
    "deep", ["[" * 100_000 + "]" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000]
)
def test_pathological_nesting_is_a_problem_of_its_line(tmp_path: Path, deep: str) -> None:
    lines = write(tmp_path, "deep.jsonl", f"{GOOD_LINE}\n{deep}\n{GOOD_LINE}\n")
    convs, problem = only_problem(lines)
    assert (problem.source, problem.line) == ("deep.jsonl:2", 2)
    assert "nested too deeply" in problem.message
    assert [c.source for c in convs] == ["deep.jsonl:1", "deep.jsonl:3"]

    array = write(tmp_path, "deep.json", f"[\n{GOOD_LINE},\n{deep}\n]\n")
    convs, problem = only_problem(array)
    assert (problem.source, problem.line) == ("deep.json:3", 3)
    assert "nested too deeply" in problem.message
    assert [c.source for c in convs] == ["deep.json:2"]


def test_lone_surrogate_escape_is_named_with_line_and_field(tmp_path: Path) -> None:
    half = GOOD_LINE.replace('"yo"', '"y\\ud800o"')
    convs, problem = only_problem(write(tmp_path, "half.jsonl", f"{GOOD_LINE}\n{half}\n"))
    assert problem.source == "half.jsonl:2"
    assert "messages[1].content" in problem.message and "\\ud800" in problem.message
    assert "surrogate pair" in problem.message and len(convs) == 1

    key = '{"\\udc00": 1}'
    convs, problem = only_problem(write(tmp_path, "half.json", f"[{GOOD_LINE},\n{key}]"))
    assert problem.source == "half.json:2" and "a key of the record" in problem.message
    assert len(convs) == 1
    str(DatasetError("half.json", [problem])).encode("utf-8")  # printable as it is


def test_a_whole_surrogate_pair_is_the_character(tmp_path: Path) -> None:
    pair = GOOD_LINE.replace('"yo"', '"\\ud83d\\ude00"')
    convs = load_conversations(write(tmp_path, "pair.jsonl", pair))
    assert convs[0].messages[1].content == "\U0001f600"


def test_bytes_that_are_not_utf8_are_named_by_line(tmp_path: Path) -> None:
    bad = GOOD_LINE.encode().replace(b"yo", b"y\xffo")
    lines = write(tmp_path, "latin.jsonl", GOOD_LINE.encode() + b"\n" + bad + b"\n")
    convs, problem = only_problem(lines)
    column = bad.index(b"\xff") + 1
    assert problem.source == "latin.jsonl:2"
    assert f"not UTF-8 text: byte 0xFF at column {column}" in problem.message
    assert len(convs) == 1  # the good line still parses

    array = write(tmp_path, "latin.json", b"[\n" + GOOD_LINE.encode() + b",\n" + bad + b"\n]")
    _, problem = only_problem(array)
    assert problem.source == "latin.json:3" and "byte 0xFF" in problem.message


def test_utf16_file_is_told_to_be_saved_as_utf8(tmp_path: Path) -> None:
    _, problem = only_problem(write(tmp_path, "wide.jsonl", GOOD_LINE.encode("utf-16")))
    assert "UTF-16" in problem.message and "save it as UTF-8" in problem.message


@pytest.mark.parametrize("name", ["bom.jsonl", "bom.json"])
def test_utf8_byte_order_mark_is_skipped(tmp_path: Path, name: str) -> None:
    body = f"{GOOD_LINE}\n{GOOD_LINE}\n" if name.endswith("l") else f"[{GOOD_LINE},\n{GOOD_LINE}]"
    convs = load_conversations(write(tmp_path, name, b"\xef\xbb\xbf" + body.encode()))
    assert [c.source for c in convs] == [f"{name}:1", f"{name}:2"]
    assert convs[0].messages[0].content == "hi"


def test_line_separators_inside_strings_stay_in_their_record(tmp_path: Path) -> None:
    text = "first\u2028second\x85third"
    record = json.dumps(
        {**GOOD, "messages": [GOOD["messages"][0], {**GOOD["messages"][1], "content": text}]},
        ensure_ascii=False,
    )
    convs = load_conversations(write(tmp_path, "sep.jsonl", f"{record}\n{GOOD_LINE}\n"))
    assert [c.source for c in convs] == ["sep.jsonl:1", "sep.jsonl:2"]
    assert convs[0].messages[1].content == text


def test_number_too_long_to_convert(tmp_path: Path) -> None:
    record = '{"messages": ' + "9" * 5000 + "}"
    _, problem = only_problem(write(tmp_path, "digits.jsonl", f"{record}\n{GOOD_LINE}\n"))
    assert problem.source == "digits.jsonl:1" and "more than 4300 digits" in problem.message


def test_huge_values_are_cut_in_messages(tmp_path: Path) -> None:
    record = {"messages": [{"role": "x" * 10_000, "content": "hi"}]}
    _, problem = only_problem(write(tmp_path, "huge.jsonl", json.dumps(record)))
    assert problem.message.startswith("unknown role 'xxx") and len(problem.message) < 200


# Properties: whatever a file holds, the reader answers with conversations and problems.

PROPERTY_SETTINGS = settings(
    max_examples=60, derandomize=True, database=None, deadline=None, print_blob=True
)
# Any text, lone surrogates included (written as \u escapes or as CESU-8 bytes); they are
# rare among all characters, so some are added.
ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=12) | st.sampled_from(
    ["\ud800", "a\udfff", "\ud83d\ude00"]
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | ANY_TEXT,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT, inner, max_size=4),
    max_leaves=16,
)
TURN_LIKE = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["user", "assistant", "system", "bot"]) | JSON_VALUES,
        "content": ANY_TEXT | JSON_VALUES,
        "from": st.sampled_from(["human", "gpt"]),
        "value": ANY_TEXT,
    },
)
RECORD_LIKE = st.dictionaries(
    st.sampled_from(["messages", "conversations", "dialogue_sequence", "training_sample"]),
    st.lists(TURN_LIKE, max_size=3) | JSON_VALUES,
    min_size=1,
    max_size=2,
)
# A good record whose reply is any text at all.
ANY_REPLY = ANY_TEXT.map(
    lambda text: {"messages": [GOOD["messages"][0], {"role": "assistant", "content": text}]}
)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: bool(s.strip())
)


def check_answer(path: Path, lines: int) -> tuple[list[Conversation], list[RecordProblem]]:
    """The reader's contract: no exception, problems on real lines, printable messages."""
    convs, problems = read_conversations(path)
    for conv in convs:  # text a tokenizer can encode
        assert all(m.content.encode("utf-8") for m in conv.messages)
    for problem in problems:
        assert problem.line is None or 1 <= problem.line <= lines, problem
        str(problem).encode("utf-8")
    try:
        load_conversations(path)
    except DatasetError as err:
        assert err.problems == problems
        err.report().encode("utf-8")
    return convs, problems


@PROPERTY_SETTINGS
@given(
    values=st.lists(JSON_VALUES | RECORD_LIKE | ANY_REPLY, min_size=1, max_size=5),
    ascii=st.booleans(),
)
def test_any_json_values_get_one_verdict_per_record(
    tmp_path_factory: pytest.TempPathFactory, values: list[object], ascii: bool
) -> None:
    folder = tmp_path_factory.mktemp("values", numbered=True)
    # A good first record: a file whose only line is a list is a JSON array, not JSONL.
    lines = [GOOD_LINE, *(json.dumps(value, ensure_ascii=ascii) for value in values)]
    for name, text, first in (
        ("values.jsonl", "\n".join(lines) + "\n", 1),
        ("values.json", "[\n" + ",\n".join(lines) + "\n]", 2),
    ):
        convs, problems = check_answer(write(folder, name, text), len(lines) + 2)
        answered = [int(c.source.rsplit(":")[-1]) for c in convs] + [p.line for p in problems]
        assert sorted(answered) == list(range(first, first + len(lines)))  # type: ignore[type-var]
        assert convs[0].source == f"{name}:{first}"


@PROPERTY_SETTINGS
@given(lines=st.lists(st.binary(max_size=40), min_size=1, max_size=6))
def test_any_bytes_get_problems_not_exceptions(
    tmp_path_factory: pytest.TempPathFactory, lines: list[bytes]
) -> None:
    folder = tmp_path_factory.mktemp("bytes", numbered=True)
    data = b"\n".join(lines)
    check_answer(write(folder, "bytes.jsonl", data), data.count(b"\n") + 1)
    check_answer(write(folder, "bytes.json", b"[" + data), data.count(b"\n") + 1)


@PROPERTY_SETTINGS
@given(
    dialogues=st.lists(
        st.lists(st.tuples(st.sampled_from(["system", "user", "assistant"]), TEXT), max_size=4).map(
            lambda turns: [*turns, ("assistant", "ok")]
        ),
        min_size=1,
        max_size=4,
    ),
    sharegpt=st.booleans(),
    ascii=st.booleans(),
    bom=st.booleans(),
)
def test_valid_records_round_trip(
    tmp_path_factory: pytest.TempPathFactory,
    dialogues: list[list[tuple[str, str]]],
    sharegpt: bool,
    ascii: bool,
    bom: bool,
) -> None:
    def record(turns: list[tuple[str, str]]) -> dict[str, object]:
        if sharegpt:
            speaker = {"system": "system", "user": "human", "assistant": "gpt"}
            return {"conversations": [{"from": speaker[r], "value": c} for r, c in turns]}
        return {"messages": [{"role": r, "content": c} for r, c in turns]}

    folder = tmp_path_factory.mktemp("round-trip", numbered=True)
    prefix = "\ufeff" if bom else ""
    lines = [json.dumps(record(turns), ensure_ascii=ascii) for turns in dialogues]
    expected = [tuple(Message(r, c) for r, c in turns) for turns in dialogues]  # type: ignore[arg-type]
    jsonl = load_conversations(write(folder, "dialogues.jsonl", prefix + "\n".join(lines)))
    assert [c.messages for c in jsonl] == expected
    assert [c.source for c in jsonl] == [f"dialogues.jsonl:{i}" for i in range(1, len(lines) + 1)]
    array = json.dumps([record(turns) for turns in dialogues], ensure_ascii=ascii, indent=1)
    assert [
        c.messages for c in load_conversations(write(folder, "dialogues.json", prefix + array))
    ] == expected
