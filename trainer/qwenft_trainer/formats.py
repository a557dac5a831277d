"""Dialogue files -> conversations: the record formats the trainer accepts, and their errors.

Fine-tuning data arrives in several shapes (the seed's ``dialogue_sequence`` and
``training_sample`` records, Qwen's original ShareGPT-style ``conversations``, and the
OpenAI / Qwen2 ``messages``), as a JSON array or as JSONL. This module reads any of them
into one :class:`Conversation` type, and collects *every* bad record with its file line
so a user can fix a dataset in one pass instead of one error per training launch.
An assistant turn's reasoning, given as ``reasoning_content`` or inline as
``<think>…</think>`` in its content, is kept apart from its answer in every format.
It imports neither torch nor transformers.

    from qwenft_trainer.formats import load_conversations
    convs = load_conversations("data.jsonl")          # raises DatasetError listing bad records
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from pydantic import BaseModel, ConfigDict

from qwenft_trainer import thinking
from qwenft_trainer.config import DataFormat

Role = Literal["system", "user", "assistant"]
ROLES: tuple[str, ...] = get_args(Role)
FORMATS: tuple[str, ...] = tuple(f for f in get_args(DataFormat) if f != "auto")

# An assistant turn's reasoning apart from its answer (the field Qwen's templates, vLLM and
# DeepSeek's API use); inline <think>…</think> in the content works as well.
REASONING_KEY = "reasoning_content"

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
    """One turn of a dialogue; an assistant reply may carry its reasoning apart from the answer.

    ``content`` is the answer only: reasoning written inline as ``<think>…</think>`` is moved
    to ``reasoning`` when the record is read (qwenft_trainer.thinking).
    """

    role: Role
    content: str
    reasoning: str | None = None

    def as_template_message(self) -> dict[str, str]:
        """The dict a chat template renders (``reasoning_content`` as Qwen's templates read it)."""
        message = {"role": self.role, "content": self.content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        return message


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


def iter_records(path: Path) -> tuple[list[RawRecord], list[RecordProblem]]:
    """Parse a JSON array or a JSONL file, keeping each record's line number."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        reason = err.strerror if isinstance(err, OSError) else f"not UTF-8 text ({err.reason})"
        return [], [RecordProblem(source=str(path), message=f"can't read file: {reason}")]
    stripped = text.lstrip()
    if not stripped:
        return [], [RecordProblem(source=str(path), message="file is empty")]
    if stripped.startswith("[") and not _first_line_is_a_record(stripped):
        return _parse_array(path, text)
    return _parse_jsonl(path, text)


def _first_line_is_a_record(text: str) -> bool:
    """A JSONL file whose first record is a list, rather than a JSON array of records."""
    first, _, rest = text.partition("\n")
    if not rest.strip():
        return False
    try:
        json.loads(first)
    except json.JSONDecodeError:
        return False
    return True


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _parse_array(path: Path, text: str) -> tuple[list[RawRecord], list[RecordProblem]]:
    decoder = json.JSONDecoder()
    records: list[RawRecord] = []
    pos = text.index("[") + 1
    try:
        while True:
            pos = _skip_space(text, pos)
            if text.startswith("]", pos) and not records:
                break
            value, end = decoder.raw_decode(text, pos)
            line = _line_of(text, pos)
            records.append(RawRecord(value, len(records), line, f"{path.name}:{line}"))
            pos = _skip_space(text, end)
            if text.startswith(",", pos):
                pos += 1
                continue
            if text.startswith("]", pos):
                break
            raise json.JSONDecodeError("expected ',' or ']' after a record", text, pos)
    except json.JSONDecodeError as err:
        where = f"{path.name}:{err.lineno}"
        message = f"invalid JSON at line {err.lineno} column {err.colno}: {err.msg}"
        return records, [RecordProblem(source=where, line=err.lineno, message=message)]
    if _skip_space(text, pos + 1) < len(text):
        line = _line_of(text, pos + 1)
        message = "invalid JSON: extra data after the closing ']'"
        return records, [RecordProblem(source=f"{path.name}:{line}", line=line, message=message)]
    return records, []


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _parse_jsonl(path: Path, text: str) -> tuple[list[RawRecord], list[RecordProblem]]:
    records: list[RawRecord] = []
    problems: list[RecordProblem] = []
    index = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        source = f"{path.name}:{number}"
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            message = f"invalid JSON (column {err.colno}): {err.msg}"
            problems.append(RecordProblem(source=source, line=number, index=index, message=message))
        else:
            records.append(RawRecord(value, index, number, source))
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
    keys = ", ".join(sorted(map(str, record))) or "none"
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
            names = ", ".join(allowed)
            raise RecordError(
                f"unknown role {speaker!r} in {where}.{role_key} (use one of {names})"
            )
        if not isinstance(content, str):
            raise RecordError(
                f"wrong type: {where}.{content_key} must be a string, not {_kind(content)}"
            )
        if not content.strip():
            raise RecordError(f"empty content in {where}.{content_key}")
        role = cast(Role, allowed[speaker])
        reasoning, content = _reasoning(turn, role, content, f"{where}.{content_key}")
        yield Message(role=role, content=content, reasoning=reasoning)


def _reasoning(
    turn: dict[str, Any], role: Role, content: str, where: str
) -> tuple[str | None, str]:
    """An assistant reply's reasoning (``reasoning_content`` or inline ``<think>``) and answer."""
    field = turn.get(REASONING_KEY)
    base = where.rsplit(".", 1)[0]
    if field is not None and role != "assistant":
        raise RecordError(f"'{REASONING_KEY}' in {base} is only for assistant turns (role {role})")
    if field is not None and not isinstance(field, str):
        raise RecordError(
            f"wrong type: {base}.{REASONING_KEY} must be a string, not {_kind(field)}"
        )
    if role != "assistant":
        return None, content
    try:
        inline, answer = thinking.split_reasoning(content)
    except thinking.ReasoningError as err:
        raise RecordError(f"reasoning in {where} {err}") from err
    if inline is not None and field is not None:
        raise RecordError(
            f"{base} gives reasoning twice ('{REASONING_KEY}' and <think> in its content); keep one"
        )
    if not answer.strip():
        raise RecordError(f"empty answer in {where} after its reasoning")
    return inline if field is None else thinking.clean_reasoning(field), answer


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
