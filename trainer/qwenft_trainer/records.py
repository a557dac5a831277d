"""JSON array and JSONL files -> parsed records with their lines, and why a line is unusable.

Datasets come from scripts, spreadsheets and Windows exports, so a file can hold anything:
invalid JSON, nesting too deep for the parser, bytes that are not UTF-8, a ``\\ud800``
escape without the other half of its surrogate pair, a UTF-8 byte-order mark. Each of
these becomes a :class:`RecordProblem` naming the line (the byte-order mark is skipped),
never an exception, so :mod:`qwenft_trainer.formats` can report every bad record at once.

    records, problems = iter_records(Path("data.jsonl"))
"""

from __future__ import annotations

import codecs
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class RecordProblem(BaseModel):
    """Why one record (or the whole file) can't be used, and where it is."""

    model_config = ConfigDict(frozen=True)

    source: str
    line: int | None = None
    index: int | None = None
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.message}"


@dataclass(frozen=True)
class RawRecord:
    """One parsed JSON value with its position in the file."""

    value: Any
    index: int
    line: int
    source: str


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
            stack.extend(reversed([(f"{prefix}{shorten(k, 40)}", v) for k, v in item.items()]))
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


def shorten(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, so a huge value can't flood a report."""
    return text if len(text) <= limit else f"{text[: limit - 3]}..."
