"""Dialogue files -> conversations: the record formats the trainer accepts, and their errors.

Fine-tuning data arrives in several shapes (the seed's ``dialogue_sequence`` and
``training_sample`` records, Qwen's original ShareGPT-style ``conversations``, and the
OpenAI / Qwen2 ``messages``), as a JSON array or as JSONL. This module reads any of them
into one :class:`Conversation` type, and collects *every* bad record with its file line
so a user can fix a dataset in one pass instead of one error per training launch: invalid
JSON, nesting too deep to parse, bytes that are not UTF-8 and half surrogate pairs are
problems with a line like any other, and a UTF-8 byte-order mark is skipped. It imports
neither torch nor transformers.

    from qwenft_trainer.formats import load_conversations
    convs = load_conversations("data.jsonl")          # raises DatasetError listing bad records
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict

from qwenft_trainer.config import DataFormat

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
FORMATS: tuple[str, ...] = tuple(f for f in get_args(DataFormat) if f != "auto")

# ShareGPT (Qwen's original finetune.py data) speaker names -> chat roles.
SHAREGPT_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
}


@dataclass(frozen=True)
class Message:
    """One turn of a dialogue."""

    role: Role
    content: str


@dataclass(frozen=True)
class Conversation:
    """A whole dialogue and where it came from (``file.jsonl:12`` or ``file.json:12``)."""

    messages: tuple[Message, ...]
    source: str


class RecordProblem(BaseModel):
    """Why one record (or the whole file) can't be used, and where it is."""

    model_config = ConfigDict(frozen=True)

    source: str
    line: int | None = None
    index: int | None = None
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


class DatasetError(Exception):
    """The dataset has records that can't be trained on; ``problems`` lists each one."""

    def __init__(self, path: str | Path, problems: list[RecordProblem], limit: int = 50) -> None:
        self.path = str(path)
        self.problems = problems
        self.limit = limit
        super().__init__(self.report())

    def report(self) -> str:
        count = len(self.problems)
        lines = [f"dataset {self.path} has {count} bad record{'s' if count != 1 else ''}:"]
        lines += [f"  {problem}" for problem in self.problems[: self.limit]]
        if count > self.limit:
            lines.append(f"  ... and {count - self.limit} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class RawRecord:
    """One parsed JSON value with its position in the file."""

    value: Any
    index: int
    line: int
    source: str


class RecordError(ValueError):
    """A record that doesn't describe a usable conversation."""


# Bytes that are not UTF-8, decoded with "surrogateescape" (U+DC80..U+DCFF stand for them).
_RAW_BYTE = re.compile("[\udc80-\udcff]")
# A surrogate code point in a parsed string: a JSON escape such as \ud800 without its pair.
_SURROGATE = re.compile("[\ud800-\udfff]")
_UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)
_JSON_SPACE = " \t\r\n"
NESTING_PROBLEM = (
    "invalid JSON: nested too deeply for the parser (a record is an object holding a list "
    "of turns, a few levels deep)"
)


def iter_records(path: Path) -> tuple[list[RawRecord], list[RecordProblem]]:
    """Parse a JSON array or a JSONL file, keeping each record's line number.

    A UTF-8 byte-order mark at the start is skipped; bytes that are not UTF-8, JSON the
    parser can't take and strings holding half a surrogate pair are each reported with
    their line, never raised.
    """
    try:
        data = path.read_bytes()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return [], [RecordProblem(source=str(path), message=f"can't read file: {reason}")]
    if data.startswith(_UTF16_BOMS):
        message = "file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8"
        return [], [RecordProblem(source=str(path), message=message)]
    text = data.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    stripped = text.lstrip(_JSON_SPACE)
    if not stripped:
        return [], [RecordProblem(source=str(path), message="file is empty")]
    if stripped.startswith("[") and not _first_line_is_a_record(stripped):
        return _parse_array(path, text)
    return _parse_jsonl(path, text)


def _first_line_is_a_record(text: str) -> bool:
    """A JSONL file whose first record is a list, rather than a JSON array of records."""
    first, _, rest = text.partition("\n")
    if not rest.strip(_JSON_SPACE):
        return False
    try:
        json.loads(first)
    except (ValueError, RecursionError):
        return False
    return True


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _not_utf8(text: str, start: int = 0, end: int | None = None) -> tuple[int, str] | None:
    """Where ``text[start:end]`` holds a byte that is not UTF-8, and the problem, or None."""
    found = _RAW_BYTE.search(text, start, len(text) if end is None else end)
    if found is None:
        return None
    byte = ord(found.group()) - 0xDC00
    column = found.start() - text.rfind("\n", 0, found.start())
    return found.start(), (
        f"not UTF-8 text: byte 0x{byte:02X} at column {column}; save the file as UTF-8"
    )


def _lone_surrogate(value: Any) -> str | None:
    """Why a parsed record holds a string that isn't text (half a surrogate pair), or None.

    JSON writes characters beyond U+FFFF as two escapes (\\ud83d\\ude00); one of them alone
    decodes to a code point no tokenizer, file or HTTP body can encode. Walks the value
    without recursion, so a deep record can't exhaust the stack.
    """
    stack: list[tuple[str, Any]] = [("the record", value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            strings: list[tuple[str, str]] = [(where, item)]
        elif isinstance(item, dict):
            strings = [(f"a key of {where}", key) for key in item]
            prefix = "" if where == "the record" else f"{where}."
            stack.extend(reversed([(f"{prefix}{_show(k, 40)}", v) for k, v in item.items()]))
        elif isinstance(item, list):
            strings = []
            stack.extend(reversed([(f"{where}[{i}]", v) for i, v in enumerate(item)]))
        else:
            continue
        for place, string in strings:
            found = _SURROGATE.search(string)
            if found is not None:
                escape = f"\\u{ord(found.group()):04x}"
                return (
                    f"invalid string in {place}: the escape {escape} is half of a UTF-16 "
                    "surrogate pair, not a character; write the character itself (or both "
                    "escapes of its pair)"
                )
    return None


def _json_problem(err: ValueError | RecursionError, *, with_line: bool = False) -> str:
    if isinstance(err, RecursionError):
        return NESTING_PROBLEM
    if isinstance(err, json.JSONDecodeError):
        if with_line:
            return f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        return f"invalid JSON (column {err.colno}): {err.msg}"
    if "digits" in str(err):  # an integer longer than Python converts
        return f"invalid JSON: a number has more than {sys.get_int_max_str_digits()} digits"
    return f"invalid JSON: {err}"


def _parse_array(path: Path, text: str) -> tuple[list[RawRecord], list[RecordProblem]]:
    decoder = json.JSONDecoder()
    records: list[RawRecord] = []
    problems: list[RecordProblem] = []
    index = 0
    pos = counted = text.index("[") + 1
    line = _line_of(text, pos)

    def stop(at: int, message: str) -> tuple[list[RawRecord], list[RecordProblem]]:
        where = _line_of(text, at)
        problem = RecordProblem(source=f"{path.name}:{where}", line=where, message=message)
        return records, [*problems, problem]

    while True:
        pos = _skip_space(text, pos)
        line, counted = line + text.count("\n", counted, pos), pos
        if text.startswith("]", pos) and not index:
            break
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as err:
            raw = _not_utf8(text, err.pos, err.pos + 1)
            return stop(err.pos, raw[1] if raw else _json_problem(err, with_line=True))
        except (ValueError, RecursionError) as err:
            return stop(pos, _json_problem(err))
        source = f"{path.name}:{line}"
        raw = _not_utf8(text, pos, end)
        if raw:
            where = _line_of(text, raw[0])
            problems.append(
                RecordProblem(
                    source=f"{path.name}:{where}", line=where, index=index, message=raw[1]
                )
            )
        elif surrogate := _lone_surrogate(value):
            problems.append(RecordProblem(source=source, line=line, index=index, message=surrogate))
        else:
            records.append(RawRecord(value, index, line, source))
        index += 1
        pos = _skip_space(text, end)
        if text.startswith(",", pos):
            pos += 1
            continue
        if text.startswith("]", pos):
            break
        raw = _not_utf8(text, pos, pos + 1)
        unexpected = json.JSONDecodeError("expected ',' or ']' after a record", text, pos)
        return stop(pos, raw[1] if raw else _json_problem(unexpected, with_line=True))
    if _skip_space(text, pos + 1) < len(text):
        return stop(pos + 1, "invalid JSON: extra data after the closing ']'")
    return records, problems


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in _JSON_SPACE:
        pos += 1
    return pos


def _parse_jsonl(path: Path, text: str) -> tuple[list[RawRecord], list[RecordProblem]]:
    records: list[RawRecord] = []
    problems: list[RecordProblem] = []
    index = 0
    # Split on newlines only: str.splitlines() also breaks at U+2028, U+0085 and other
    # characters that JSON allows unescaped inside a string.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(_JSON_SPACE):
            continue
        source = f"{path.name}:{number}"
        raw = _not_utf8(line)
        problem = raw[1] if raw else None
        if problem is None:
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as err:
                problem = _json_problem(err)
            else:
                problem = _lone_surrogate(value)
        if problem is None:
            records.append(RawRecord(value, index, number, source))
        else:
            problems.append(RecordProblem(source=source, line=number, index=index, message=problem))
        index += 1
    return records, problems


def detect_format(record: Any) -> str:
    """The format of one record, or raise RecordError naming what was found instead."""
    if not isinstance(record, dict):
        raise RecordError(f"wrong type: a record must be a JSON object, not {_kind(record)}")
    if "dialogue_sequence" in record:
        return "dialogue_sequence"
    if "training_sample" in record:
        return "conversations"
    if "conversations" in record:
        turns = record["conversations"]
        first = turns[0] if isinstance(turns, list) and turns else None
        if isinstance(first, dict) and "from" in first and "role" not in first:
            return "sharegpt"
        return "conversations"
    if "messages" in record:
        return "messages"
    names = sorted(map(str, record))
    keys = ", ".join(_show(name, 40) for name in names[:10]) or "none"
    keys += f" and {len(names) - 10} more" if len(names) > 10 else ""
    raise RecordError(
        "unknown format: expected a 'dialogue_sequence', 'training_sample', 'conversations' "
        f"or 'messages' key (found keys: {keys})"
    )


def parse_record(record: Any, fmt: DataFormat, source: str) -> Conversation:
    """One record -> Conversation, in the given format (``auto`` detects it)."""
    found = detect_format(record)
    if fmt != "auto" and found != fmt:
        raise RecordError(
            f"unknown format: record looks like '{found}', but data.format is '{fmt}'"
        )
    if found == "dialogue_sequence":
        turns = record["dialogue_sequence"]
        key = "dialogue_sequence"
    elif found == "messages":
        turns, key = record["messages"], "messages"
    elif "training_sample" in record:
        sample = record["training_sample"]
        if not isinstance(sample, dict):
            raise RecordError(
                f"wrong type: 'training_sample' must be an object, not {_kind(sample)}"
            )
        if "conversations" not in sample:
            raise RecordError("unknown format: 'training_sample' has no 'conversations' list")
        turns, key = sample["conversations"], "training_sample.conversations"
    else:
        turns, key = record["conversations"], "conversations"
    sharegpt = found == "sharegpt"
    messages = tuple(_parse_turns(turns, key, sharegpt))
    if not any(m.role == "assistant" for m in messages):
        raise RecordError(f"no assistant turn in '{key}': there is nothing to train on")
    return Conversation(messages=messages, source=source)


def _parse_turns(turns: Any, key: str, sharegpt: bool) -> Iterator[Message]:
    if not isinstance(turns, list):
        raise RecordError(f"wrong type: '{key}' must be a list of turns, not {_kind(turns)}")
    if not turns:
        raise RecordError(f"no assistant turn: '{key}' is empty")
    role_key, content_key = ("from", "value") if sharegpt else ("role", "content")
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise RecordError(f"wrong type: {where} must be an object, not {_kind(turn)}")
        for field in (role_key, content_key):
            if field not in turn:
                raise RecordError(f"wrong type: {where} has no '{field}'")
        speaker, content = turn[role_key], turn[content_key]
        allowed = SHAREGPT_ROLES if sharegpt else {r: r for r in ROLES}
        if not isinstance(speaker, str) or speaker not in allowed:
            names, shown = ", ".join(allowed), _show(repr(speaker), 60)
            raise RecordError(f"unknown role {shown} in {where}.{role_key} (use one of {names})")
        if not isinstance(content, str):
            raise RecordError(
                f"wrong type: {where}.{content_key} must be a string, not {_kind(content)}"
            )
        if not content.strip():
            raise RecordError(f"empty content in {where}.{content_key}")
        yield Message(role=cast(Role, allowed[speaker]), content=content)


def _show(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, so a huge value can't flood a report."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    return type(value).__name__


def read_conversations(
    path: str | Path, fmt: DataFormat = "auto"
) -> tuple[list[Conversation], list[RecordProblem]]:
    """Every usable conversation in the file, and a problem for every record that isn't."""
    file = Path(path)
    records, problems = iter_records(file)
    conversations: list[Conversation] = []
    for record in records:
        try:
            conversations.append(parse_record(record.value, fmt, record.source))
        except RecordError as err:
            problems.append(
                RecordProblem(
                    source=record.source, line=record.line, index=record.index, message=str(err)
                )
            )
    problems.sort(key=lambda p: p.line or 0)
    if not records and not problems:
        problems.append(RecordProblem(source=str(file), message="file holds no records"))
    return conversations, problems


def load_conversations(path: str | Path, fmt: DataFormat = "auto") -> list[Conversation]:
    """All conversations in a JSON array or JSONL file; DatasetError lists every bad record."""
    conversations, problems = read_conversations(path, fmt)
    if problems:
        raise DatasetError(path, problems)
    return conversations
