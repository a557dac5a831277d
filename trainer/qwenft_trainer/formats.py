"""Dialogue files -> conversations: the record formats the trainer accepts, and their errors.

Fine-tuning data arrives in several shapes (the seed's ``dialogue_sequence`` and
``training_sample`` records, Qwen's original ShareGPT-style ``conversations``, and the
OpenAI / Qwen2 ``messages``), as a JSON array or as JSONL. This module reads any of them
into one :class:`Conversation` type, and collects *every* bad record with its file line
so a user can fix a dataset in one pass instead of one error per training launch (reading
the file itself, and what makes one unreadable, is :mod:`qwenft_trainer.records`).
An assistant turn's reasoning, given as ``reasoning_content`` or inline as
``<think>…</think>`` in its content, is kept apart from its answer in every format.
It imports neither torch nor transformers.

    from qwenft_trainer.formats import load_conversations
    convs = load_conversations("data.jsonl")          # raises DatasetError listing bad records
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from qwenft_trainer import thinking
from qwenft_trainer.config import DataFormat
from qwenft_trainer.records import RecordProblem as RecordProblem
from qwenft_trainer.records import iter_records, shorten

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


class RecordError(ValueError):
    """A record that doesn't describe a usable conversation."""


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
    keys = ", ".join(shorten(name, 40) for name in names[:10]) or "none"
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
            names, shown = ", ".join(allowed), shorten(repr(speaker), 60)
            raise RecordError(f"unknown role {shown} in {where}.{role_key} (use one of {names})")
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
