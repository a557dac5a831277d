"""The dataset report (qwenft_trainer.validate) and ``qwenft data validate``.

Covers: counts of a clean file (records, turns, samples, tokens = trained + masked, longest
sample, matching the tokenizer); truncation share at a small max_seq_length and the warning for a
dialogue left without a trained token; every bad-record case reported with file:line and
the problem while the good records are still counted; a control token written inside a
message; the text report; the CLI through the ``qwenft`` dispatcher with exit status 0 on a
clean file, 1 on bad records, 2 on a model that can't load; ``--json`` output with
``ok`` and ``message``; ``--format`` forcing a format; a dataset truncation leaves with nothing
to train on fails with the max_seq_length that fixes it; the CLI's verdict on deep nesting,
lone surrogates and non-UTF-8 bytes (JSONL and JSON arrays) names the line; a UTF-8
byte-order mark is accepted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from qwenft_operator.cli import main as qwenft
from qwenft_trainer.data import tokenize_dialogue
from qwenft_trainer.formats import load_conversations
from qwenft_trainer.validate import validate_dataset

DATA = Path(__file__).parent / "data"
BAD = DATA / "bad"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


def test_clean_file_counts(tokenizer: Any) -> None:
    path = DATA / "dialogue_sequence.jsonl"
    report = validate_dataset(path, tokenizer, max_seq_length=1024)
    samples = [s for c in load_conversations(path) for s in tokenize_dialogue(c, tokenizer, 1024)]
    assert report.ok and not report.problems
    assert (report.records, report.conversations, report.turns) == (3, 3, 11)
    assert report.samples == len(samples) == 3  # the Qwen2 template keeps history as written
    assert report.tokens == sum(len(s.input_ids) for s in samples)
    assert report.trained_tokens == sum(s.trained_tokens for s in samples)
    assert report.trained_tokens + report.masked_tokens == report.tokens
    assert report.longest_sample_tokens == max(len(s.input_ids) for s in samples)
    assert report.longest_sample_source == "dialogue_sequence.jsonl:2"
    assert report.truncated_share == 0.0


def test_truncation_share_and_samples_left_without_loss(tokenizer: Any) -> None:
    report = validate_dataset(DATA / "dialogue_sequence.jsonl", tokenizer, max_seq_length=30)
    assert report.truncated_samples == 3
    assert report.truncated_share == 1.0
    assert report.tokens == 3 * 30
    assert report.longest_sample_tokens > 30
    assert report.ok  # truncation is reported, not refused
    # Line 2's first reply starts within 30 tokens; lines 1 and 4 lose every reply.
    assert [w.source for w in report.warnings] == [
        "dialogue_sequence.jsonl:1",
        "dialogue_sequence.jsonl:4",
    ]
    assert "no assistant token within max_seq_length=30" in report.warnings[0].message


@pytest.mark.parametrize(
    ("name", "where", "words"),
    [
        ("invalid_json.jsonl", "invalid_json.jsonl:2", "invalid JSON"),
        ("unknown_role.jsonl", "unknown_role.jsonl:2", "unknown role 'bot'"),
        ("no_assistant.jsonl", "no_assistant.jsonl:2", "no assistant turn"),
        ("empty_content.jsonl", "empty_content.jsonl:3", "empty content"),
        ("wrong_type.jsonl", "wrong_type.jsonl:1", "wrong type"),
        ("unknown_format.jsonl", "unknown_format.jsonl:2", "unknown format"),
        ("control_token.jsonl", "control_token.jsonl:2", "contains the control token"),
    ],
)
def test_bad_records_fail_the_report(tokenizer: Any, name: str, where: str, words: str) -> None:
    report = validate_dataset(BAD / name, tokenizer, max_seq_length=256)
    assert not report.ok
    assert report.problems[0].source == where
    assert words in report.problems[0].message
    assert report.records == report.conversations + len(report.problems)
    assert words in report.message and where in report.message


def test_text_report(tokenizer: Any) -> None:
    text = validate_dataset(BAD / "unknown_role.jsonl", tokenizer, 256).to_text()
    assert "records                   2  (1 usable, 1 bad)" in text
    assert "problems:\n  unknown_role.jsonl:2: unknown role 'bot'" in text
    assert text.splitlines()[-1].startswith("FAILED: 1 bad record(s)")


def test_cli_clean_file(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "validate", str(DATA / "mixed.jsonl"), "--model", str(tiny_model_dir)]
    assert qwenft(args) == 0
    out = capsys.readouterr().out
    assert "records                   5  (5 usable, 0 bad)" in out
    assert out.splitlines()[-1].startswith("OK: 5 dialogues")


def test_cli_json_with_problems(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    file = BAD / "wrong_type.jsonl"
    args = ["data", "validate", str(file), "--model", str(tiny_model_dir), "--json"]
    assert qwenft([*args, "--max-seq-length", "64"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False
    assert report["max_seq_length"] == 64
    assert [p["line"] for p in report["problems"]] == [1, 2, 3, 4]
    assert report["message"].startswith("4 bad record(s); first: wrong_type.jsonl:1: wrong type")


def test_cli_forced_format(tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "validate", str(DATA / "sharegpt.json"), "--model", str(tiny_model_dir)]
    assert qwenft([*args, "--format", "sharegpt", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == 2
    assert qwenft([*args, "--format", "messages", "--json"]) == 1
    assert "data.format is 'messages'" in json.loads(capsys.readouterr().out)["message"]


def test_cli_model_that_cannot_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "validate", str(DATA / "mixed.jsonl"), "--model", str(tmp_path), "--json"]
    assert qwenft(args) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and "can't read the config.json of" in out["message"]


def test_cli_revision_reaches_the_tokenizer_loader(
    tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pinned hub revision is the tokenizer the dataset is checked with."""
    import transformers

    plain = transformers.AutoTokenizer.from_pretrained
    asked: list[dict[str, Any]] = []

    def recording(name: str, **kwargs: Any) -> Any:
        asked.append(kwargs)
        return plain(name, **{k: v for k, v in kwargs.items() if k != "revision"})

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", recording)
    args = ["data", "validate", str(DATA / "mixed.jsonl"), "--model", str(tiny_model_dir)]
    assert qwenft([*args, "--revision", "0123abc", "--json"]) == 0
    assert qwenft([*args, "--json"]) == 0
    assert [a.get("revision") for a in asked] == ["0123abc", None]


def long_prompts(tmp_path: Path, words: list[int]) -> Path:
    """Dialogues whose first reply comes after a user prompt of ``words`` words each."""
    lines = [
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": " ".join(["question"] * count)},
                    {"role": "assistant", "content": "A short answer."},
                ]
            }
        )
        for count in words
    ]
    path = tmp_path / "long_prompts.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_nothing_left_to_train_fails_with_the_length_that_fixes_it(
    tokenizer: Any, tmp_path: Path
) -> None:
    path = long_prompts(tmp_path, [40, 60])
    report = validate_dataset(path, tokenizer, max_seq_length=16)
    assert not report.ok and report.trained_tokens == 0
    assert len(report.warnings) == 2  # each dialogue is named too
    message = report.problems[0].message
    assert message.startswith("nothing to train on: every dialogue loses all assistant tokens")
    assert "raise training.max_seq_length (--max-seq-length) to at least" in message
    assert report.message == f"{path}: {message}"
    assert report.to_text().splitlines()[-1] == f"FAILED: {path}: {message}"

    needed = int(message.split("to at least ")[1].split()[0])
    fixed = validate_dataset(path, tokenizer, max_seq_length=needed)
    assert fixed.ok and fixed.trained_tokens > 0 and not fixed.warnings
    short = validate_dataset(path, tokenizer, max_seq_length=needed - 1)
    assert [w.source for w in short.warnings] == ["long_prompts.jsonl:2"]  # the longer prompt


def test_dataset_problem_comes_before_the_bad_record_count(tokenizer: Any, tmp_path: Path) -> None:
    path = long_prompts(tmp_path, [40])
    with path.open("a", encoding="utf-8") as handle:
        handle.write("{}\n")
    report = validate_dataset(path, tokenizer, max_seq_length=16)
    assert report.message.startswith(f"{path}: nothing to train on")
    assert report.message.endswith(
        "; 1 bad record(s); first: long_prompts.jsonl:2: unknown format"
        ": expected a 'dialogue_sequence', 'training_sample', "
        "'conversations' or 'messages' key (found keys: none)"
    )


GOOD = json.dumps(
    {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}
)
DEEP_OBJECT = '{"a":' * 100_000 + "1" + "}" * 100_000
MALFORMED = {
    "deep.jsonl": (f"{GOOD}\n{'[' * 100_000}{']' * 100_000}\n").encode(),
    "deep.json": f"[{GOOD},\n{DEEP_OBJECT}]".encode(),
    "surrogate.jsonl": (GOOD + "\n" + GOOD.replace("Hello!", "Hello\\ud800!")).encode(),
    "surrogate.json": ("[" + GOOD + ",\n" + GOOD.replace("Hi", "\\udfffHi") + "]").encode(),
    "latin1.jsonl": GOOD.encode() + b"\n" + GOOD.replace("Hi", "Ol\u00e1").encode("latin-1"),
    "latin1.json": b"["
    + GOOD.encode()
    + b",\n"
    + GOOD.replace("Hi", "\u00e9").encode("latin-1")
    + b"]",
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("as_json", [False, True])
def test_cli_names_the_line_of_each_malformed_record(
    tiny_model_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    as_json: bool,
) -> None:
    path = tmp_path / name
    path.write_bytes(MALFORMED[name])
    args = ["data", "validate", str(path), "--model", str(tiny_model_dir)]
    assert qwenft([*args, "--json"] if as_json else args) == 1
    out = capsys.readouterr().out
    out.encode("utf-8")  # printable on a UTF-8 terminal or log
    verdict = json.loads(out)["message"] if as_json else out.splitlines()[-1]
    assert f"1 bad record(s); first: {name}:2: " in verdict
    reason = {"deep": "nested too deeply", "surrogate": "surrogate pair", "latin1": "not UTF-8"}
    assert reason[name.split(".")[0]] in verdict


@pytest.mark.parametrize("body", [f"{GOOD}\n{GOOD}\n", f"[{GOOD},\n{GOOD}]"])
def test_cli_accepts_a_utf8_byte_order_mark(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], body: str
) -> None:
    path = tmp_path / "excel-export.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())
    args = ["data", "validate", str(path), "--model", str(tiny_model_dir), "--json"]
    assert qwenft(args) == 0
    assert json.loads(capsys.readouterr().out)["conversations"] == 2
