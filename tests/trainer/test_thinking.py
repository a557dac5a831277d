"""Thinking models trained the way they are used, with the real Qwen chat templates.

The templates are the ones Qwen ships (trainer/qwenft_trainer/assets/chat_templates: Qwen2.5,
Qwen3 hybrid, Qwen3-Instruct-2507, Qwen3.5 think and nothink), set on the tiny Qwen3
tokenizer (which has ``<think>``/``</think>`` as added tokens, like Qwen's).

Covers: what each template does with thinking (probe); a plain two-turn dialogue under both
``training.thinking`` policies, every reply treated alike and the labels decoding to exactly
the expected text; multi-turn reasoning dialogues (inline ``<think>`` and
``reasoning_content``) accepted, each reply's reasoning trained; the honest check that the
token ids before every trained reply equal ``apply_chat_template(history,
add_generation_prompt=True, enable_thinking=...)`` tokenized, i.e. what the model is given
at inference, and that every reply is trained exactly once; the same dialogue read from the
messages, ShareGPT and dialogue_sequence formats with either reasoning form; reasoning on a
template without thinking refused; malformed inline reasoning reported with its field;
the validator's samples, reasoning vs answer tokens and thinking policy (report, text and
``qwenft data validate --thinking --json``); tokenize_all's sample count and its log line.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
from qwenft_operator.cli import main as qwenft
from qwenft_trainer.data import (
    IGNORE_INDEX,
    TemplateError,
    TokenizedSample,
    tokenize_all,
    tokenize_dialogue,
)
from qwenft_trainer.formats import Conversation, Message, read_conversations
from qwenft_trainer.thinking import probe_template
from qwenft_trainer.tiny import IM_END, TinyModelSpec, build_tiny_qwen, chat_template
from qwenft_trainer.validate import validate_dataset

TEMPLATES = ["qwen2_5", "qwen3", "qwen3_instruct_2507", "qwen3_5_think", "qwen3_5_nothink"]
HYBRID = ["qwen3", "qwen3_5_think", "qwen3_5_nothink"]
WITHOUT_THINKING = ["qwen2_5", "qwen3_instruct_2507"]
POLICIES = ["empty-in-prompt", "empty-in-reply"]
EMPTY = "<think>\n\n</think>\n\n"

# What the model writes after its generation prompt, per template and kind of reply.
# Qwen3's prompt ends at the role header; Qwen3.5's thinking prompt already opens <think>.
REPLY = {
    ("qwen3", "reasoning"): "<think>\n{reasoning}\n</think>\n\n{answer}",
    ("qwen3", "empty-in-prompt"): "{answer}",
    ("qwen3", "empty-in-reply"): EMPTY + "{answer}",
    ("qwen3_5", "reasoning"): "{reasoning}\n</think>\n\n{answer}",
    ("qwen3_5", "empty-in-prompt"): "{answer}",
    ("qwen3_5", "empty-in-reply"): "\n</think>\n\n{answer}",
}
# How the generation prompt before such a reply ends.
PROMPT_END = {
    ("qwen3", "reasoning"): "<|im_start|>assistant\n",
    ("qwen3", "empty-in-prompt"): "<|im_start|>assistant\n" + EMPTY,
    ("qwen3", "empty-in-reply"): "<|im_start|>assistant\n",
    ("qwen3_5", "reasoning"): "<|im_start|>assistant\n<think>\n",
    ("qwen3_5", "empty-in-prompt"): "<|im_start|>assistant\n" + EMPTY,
    ("qwen3_5", "empty-in-reply"): "<|im_start|>assistant\n<think>\n",
}


def family(template: str) -> str:
    return "qwen3_5" if template.startswith("qwen3_5") else "qwen3"


def template_text(name: str) -> str:
    files = resources.files("qwenft_trainer") / "assets" / "chat_templates"
    return (files / f"{name}.jinja").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A whole tiny Qwen3 checkpoint: the validator reads its config.json too."""
    return build_tiny_qwen(tmp_path_factory.mktemp("tiny-qwen3"), TinyModelSpec(arch="qwen3"))


@pytest.fixture()
def tokenizer(tokenizer_dir: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_dir))


def use(tokenizer: Any, name: str) -> Any:
    tokenizer.chat_template = template_text(name)
    return tokenizer


def dialogue(*turns: tuple[str, str] | tuple[str, str, str]) -> Conversation:
    return Conversation(tuple(Message(*turn) for turn in turns), "test:1")  # type: ignore[arg-type]


PLAIN = dialogue(
    ("system", "You are a terse assistant."),
    ("user", "Hello!"),
    ("assistant", "Hi!"),
    ("user", "Bye"),
    ("assistant", "再见"),
)
REASONING = dialogue(
    ("user", "What is 2 + 3?"),
    ("assistant", "5.", "Two plus three is five."),
    ("user", "And times 4?"),
    ("assistant", "20.", "Five times four\nis twenty."),
    ("user", "Thanks"),
    ("assistant", "You're welcome!", "Be polite."),
)
MIXED = dialogue(
    ("user", "Hello!"),
    ("assistant", "Hi!", "A greeting; greet back."),
    ("user", "Bye"),
    ("assistant", "再见"),
)


def segments(sample: TokenizedSample) -> list[tuple[int, list[int]]]:
    """(start, ids) of each run of consecutive labelled tokens."""
    runs: list[tuple[int, list[int]]] = []
    previous = IGNORE_INDEX
    for index, (token, label) in enumerate(zip(sample.input_ids, sample.labels, strict=True)):
        if label != IGNORE_INDEX:
            assert label == token
            if previous == IGNORE_INDEX:
                runs.append((index, []))
            runs[-1][1].append(label)
        previous = label
    return runs


def trained_texts(samples: list[TokenizedSample], tokenizer: Any) -> list[list[str]]:
    return [[tokenizer.decode(ids) for _, ids in segments(s)] for s in samples]


def expected_reply(template: str, message: Message, policy: str) -> str:
    kind = "reasoning" if message.reasoning is not None else policy
    if template in WITHOUT_THINKING:
        return message.content + IM_END
    text = REPLY[family(template), kind].format(reasoning=message.reasoning, answer=message.content)
    return text + IM_END


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("qwen2_5", "none"),
        ("qwen3", "hybrid"),
        ("qwen3_instruct_2507", "none"),
        ("qwen3_5_think", "hybrid"),
        ("qwen3_5_nothink", "hybrid"),
    ],
)
def test_probe_finds_each_templates_thinking(tokenizer: Any, name: str, kind: str) -> None:
    assert probe_template(use(tokenizer, name)).kind == kind


def test_probe_of_the_qwen2_template(tokenizer: Any) -> None:
    tokenizer.chat_template = chat_template("qwen2")
    assert probe_template(tokenizer).kind == "none"


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", TEMPLATES)
def test_plain_two_turn_dialogue(tokenizer: Any, name: str, policy: str) -> None:
    samples = tokenize_dialogue(PLAIN, use(tokenizer, name), 1024, thinking=policy)  # type: ignore[arg-type]
    texts = trained_texts(samples, tokenizer)
    if name in WITHOUT_THINKING:  # the history is rendered as written: one sample
        assert texts == [["Hi!" + IM_END, "再见" + IM_END]]
        return
    # Qwen3 / Qwen3.5 render earlier replies without a think block: one sample per reply,
    # and both replies get the same treatment of the empty think block.
    reply = REPLY[family(name), policy]
    assert texts == [[reply.format(answer="Hi!") + IM_END], [reply.format(answer="再见") + IM_END]]
    # Each reply follows exactly its inference prompt; the first reply is in the second
    # sample's history as the template renders history (no think block).
    system = "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
    first = system + "<|im_start|>user\nHello!<|im_end|>\n"
    second = first + "<|im_start|>assistant\nHi!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
    prompt_end = PROMPT_END[family(name), policy]
    for sample, history, answer in zip(samples, (first, second), ("Hi!", "再见"), strict=True):
        start = segments(sample)[0][0]
        assert tokenizer.decode(sample.input_ids[:start]) == history + prompt_end
        assert (
            tokenizer.decode(sample.input_ids[start:])
            == reply.format(answer=answer) + IM_END + "\n"
        )
    assert all(sample.reasoning_tokens == 0 for sample in samples)


CASES = [(name, policy, "plain") for name in TEMPLATES for policy in POLICIES] + [
    (name, policy, kind)
    for name in HYBRID
    for policy in POLICIES
    for kind in ("reasoning", "mixed")
]


@pytest.mark.parametrize(("name", "policy", "kind"), CASES)
def test_every_reply_is_trained_after_its_inference_prompt(
    tokenizer: Any, name: str, policy: str, kind: str
) -> None:
    """The honest check: what precedes each trained reply is what inference feeds the model."""
    conv = {"plain": PLAIN, "reasoning": REASONING, "mixed": MIXED}[kind]
    use(tokenizer, name)
    samples = tokenize_dialogue(conv, tokenizer, 4096, thinking=policy)  # type: ignore[arg-type]
    trained = [(s, start, ids) for s in samples for start, ids in segments(s)]
    turns = [i for i, m in enumerate(conv.messages) if m.role == "assistant"]
    assert len(trained) == len(turns)  # every reply trained once
    for (sample, start, ids), turn in zip(trained, turns, strict=True):
        message = conv.messages[turn]
        history = [m.as_template_message() for m in conv.messages[:turn]]
        thinking = message.reasoning is not None or policy == "empty-in-reply"
        prompt = tokenizer.apply_chat_template(
            history, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
        )
        assert tokenizer.decode(sample.input_ids[:start]) == prompt
        assert sample.input_ids[:start] == tokenizer(prompt, add_special_tokens=False).input_ids
        assert tokenizer.decode(ids) == expected_reply(name, message, policy)
        if name in HYBRID:
            assert prompt.endswith(
                PROMPT_END[family(name), "reasoning" if message.reasoning else policy]
            )


@pytest.mark.parametrize("name", HYBRID)
def test_multi_turn_reasoning_is_accepted_and_trained(tokenizer: Any, name: str) -> None:
    samples = tokenize_dialogue(REASONING, use(tokenizer, name), 4096)
    texts = trained_texts(samples, tokenizer)
    assert texts == [
        [expected_reply(name, m, "empty-in-prompt")]
        for m in REASONING.messages
        if m.role == "assistant"
    ]
    assert "Five times four\nis twenty." in texts[1][0]
    # Earlier replies are in the history without their reasoning, as Qwen renders them.
    last = tokenizer.decode(samples[2].input_ids)
    assert "Two plus three" not in last and "Five times four" not in last
    assert "<|im_start|>assistant\n5.<|im_end|>" in last
    replies = [m for m in REASONING.messages if m.role == "assistant"]
    for sample, message in zip(samples, replies, strict=True):
        block = REPLY[family(name), "reasoning"].format(reasoning=message.reasoning, answer="")
        block = block[: block.index("</think>") + len("</think>")]
        assert sample.reasoning_tokens == len(tokenizer(block, add_special_tokens=False).input_ids)
        assert 0 < sample.reasoning_tokens < sample.trained_tokens


@pytest.mark.parametrize("name", WITHOUT_THINKING)
def test_reasoning_on_a_template_without_thinking_is_refused(tokenizer: Any, name: str) -> None:
    with pytest.raises(TemplateError, match=r"message 1 \(assistant\) has reasoning.*Qwen3"):
        tokenize_dialogue(MIXED, use(tokenizer, name), 1024)


RECORDS = {
    "messages": {
        "messages": [
            {"role": "user", "content": "What is 2 + 3?"},
            {"role": "assistant", "content": "5.", "reasoning_content": "Two plus three is five."},
            {"role": "user", "content": "And times 4?"},
            {
                "role": "assistant",
                "content": "<think>\nFive times four\nis twenty.\n</think>\n\n20.",
            },
        ]
    },
    "sharegpt": {
        "conversations": [
            {"from": "human", "value": "What is 2 + 3?"},
            {"from": "gpt", "value": "<think>Two plus three is five.</think>5."},
            {"from": "human", "value": "And times 4?"},
            {"from": "gpt", "value": "20.", "reasoning_content": "Five times four\nis twenty."},
        ]
    },
    "dialogue_sequence": {
        "dialogue_sequence": [
            {"role": "user", "content": "What is 2 + 3?"},
            # Outputs of Qwen3.5 start inside the block its prompt opened.
            {"role": "assistant", "content": "Two plus three is five.\n</think>\n\n5."},
            {"role": "user", "content": "And times 4?"},
            {
                "role": "assistant",
                "content": "20.",
                "reasoning_content": "\nFive times four\nis twenty.\n",
            },
        ]
    },
}


def test_reasoning_from_content_or_field_in_every_format(tmp_path: Path, tokenizer: Any) -> None:
    file = tmp_path / "reasoning.jsonl"
    file.write_text("".join(json.dumps(r) + "\n" for r in RECORDS.values()), encoding="utf-8")
    convs, problems = read_conversations(file)
    assert not problems
    expected = REASONING.messages[:4]
    assert [c.messages for c in convs] == [expected] * 3
    use(tokenizer, "qwen3")
    ids = [[s.input_ids for s in tokenize_dialogue(c, tokenizer, 1024)] for c in convs]
    assert ids[0] == ids[1] == ids[2]


@pytest.mark.parametrize(
    ("turn", "words"),
    [
        ({"role": "assistant", "content": "<think>never closed"}, "no closing '</think>'"),
        ({"role": "assistant", "content": "<think>a</think>b<think>c</think>d"}, "more than one"),
        ({"role": "assistant", "content": "So: <think>a</think>b"}, "text before '<think>'"),
        (
            {"role": "assistant", "content": "<think>a</think>\n"},
            "empty answer in messages[1].content",
        ),
        (
            {"role": "assistant", "content": "<think>a</think>b", "reasoning_content": "a"},
            "gives reasoning twice",
        ),
        (
            {"role": "assistant", "content": "b", "reasoning_content": 3},
            "reasoning_content must be a string",
        ),
        ({"role": "user", "content": "b", "reasoning_content": "a"}, "only for assistant turns"),
    ],
)
def test_malformed_reasoning_is_reported_with_its_field(
    tmp_path: Path, turn: dict[str, Any], words: str
) -> None:
    record = {
        "messages": [{"role": "user", "content": "q"}, turn, {"role": "assistant", "content": "x"}]
    }
    file = tmp_path / "bad.jsonl"
    file.write_text(json.dumps(record) + "\n", encoding="utf-8")
    convs, problems = read_conversations(file)
    assert not convs
    assert problems[0].source == "bad.jsonl:1"
    assert words in problems[0].message
    assert "messages[1]" in problems[0].message


def test_empty_reasoning_counts_as_none() -> None:
    from qwenft_trainer.thinking import split_reasoning

    assert split_reasoning("<think>\n\n</think>\n\nHi") == (None, "Hi")
    assert split_reasoning("<think>\nwhy\n</think>\n\nHi") == ("why", "Hi")
    assert split_reasoning("plain") == (None, "plain")


def write_reasoning_data(tmp_path: Path) -> Path:
    file = tmp_path / "reasoning.jsonl"
    records = [RECORDS["messages"], {"messages": [m.as_template_message() for m in PLAIN.messages]}]
    file.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return file


@pytest.mark.parametrize("policy", POLICIES)
def test_validator_reports_reasoning_answer_tokens_and_policy(
    tmp_path: Path, tokenizer: Any, policy: str
) -> None:
    file = write_reasoning_data(tmp_path)
    use(tokenizer, "qwen3")
    report = validate_dataset(file, tokenizer, 4096, thinking=policy)  # type: ignore[arg-type]
    samples = [
        s
        for c in read_conversations(file)[0]
        for s in tokenize_dialogue(c, tokenizer, 4096, policy)  # type: ignore[arg-type]
    ]
    assert report.ok
    assert (report.conversations, report.samples, report.reasoning_turns) == (2, 4, 2)
    assert report.tokens == sum(len(s.input_ids) for s in samples)
    assert report.reasoning_tokens == sum(s.reasoning_tokens for s in samples) > 0
    assert report.reasoning_tokens + report.answer_tokens == report.trained_tokens
    assert (report.thinking, report.template_thinking) == (policy, "hybrid")
    empty_blocks = 2 * len(tokenizer(EMPTY, add_special_tokens=False).input_ids)
    plain_answers = sum(
        len(tokenizer(t + IM_END, add_special_tokens=False).input_ids) for t in ("Hi!", "再见")
    )
    answers = report.answer_tokens - sum(
        len(tokenizer("\n\n" + a + IM_END, add_special_tokens=False).input_ids)
        for a in ("5.", "20.")
    )
    assert answers == plain_answers + (empty_blocks if policy == "empty-in-reply" else 0)
    assert report.message.startswith("2 dialogues (4 samples), ")
    text = report.to_text()
    assert f"thinking         hybrid template, replies without reasoning: {policy}" in text
    assert f"reasoning        {report.reasoning_tokens:>10,}  trained tokens in 2 replies" in text


def test_validator_on_a_template_without_thinking(tmp_path: Path, tokenizer: Any) -> None:
    file = write_reasoning_data(tmp_path)
    report = validate_dataset(file, use(tokenizer, "qwen2_5"), 4096)
    assert not report.ok
    assert report.template_thinking == "none"
    assert report.problems[0].source == "reasoning.jsonl:1"
    assert "has reasoning" in report.problems[0].message
    assert "does not apply" in report.to_text()


def test_cli_thinking_option(
    tmp_path: Path, tokenizer_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    file = write_reasoning_data(tmp_path)
    args = ["data", "validate", str(file), "--model", str(tokenizer_dir), "--json"]
    assert qwenft(args) == 0
    default = json.loads(capsys.readouterr().out)
    assert qwenft([*args, "--thinking", "empty-in-reply"]) == 0
    in_reply = json.loads(capsys.readouterr().out)
    assert (default["thinking"], in_reply["thinking"]) == ("empty-in-prompt", "empty-in-reply")
    assert default["template_thinking"] == "hybrid"
    assert default["reasoning_tokens"] == in_reply["reasoning_tokens"] > 0
    assert in_reply["trained_tokens"] > default["trained_tokens"]  # the empty blocks


def test_tokenize_all_counts_and_logs_the_per_reply_samples(
    tokenizer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="qwenft_trainer.data")
    samples = tokenize_all([PLAIN, REASONING], use(tokenizer, "qwen3"), 4096)
    assert len(samples) == 5  # one per reply: 2 + 3
    assert sum(s.trained_tokens for s in samples) == sum(
        len(tokenizer(expected_reply("qwen3", m, "empty-in-prompt")).input_ids)
        for c in (PLAIN, REASONING)
        for m in c.messages
        if m.role == "assistant"
    )
    assert "2 dialogue(s) make 5 samples" in caplog.text
    assert "hybrid template, training.thinking=empty-in-prompt" in caplog.text
    caplog.clear()
    assert len(tokenize_all([PLAIN], use(tokenizer, "qwen2_5"), 4096)) == 1
    assert "make" not in caplog.text


@pytest.mark.slow
def test_tiny_qwen3_trains_on_multi_turn_reasoning(tmp_path: Path) -> None:
    """The trainer runs end to end on reasoning data with the real Qwen3 template."""
    from qwenft_trainer.train import main
    from trainrun import write_config

    model = build_tiny_qwen(tmp_path / "tiny-qwen3", TinyModelSpec(arch="qwen3"))
    data = tmp_path / "train.jsonl"
    records = [RECORDS["messages"], RECORDS["sharegpt"], RECORDS["dialogue_sequence"]] * 4
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    training = {"max_steps": 2, "thinking": "empty-in-reply", "max_seq_length": 256}
    config = write_config(tmp_path / "train.yaml", model, data, tmp_path / "out", training=training)
    assert main(["--config", str(config)]) == 0
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["steps"] == 2
    assert summary["trained_tokens"] > 0 and summary["train_loss"] > 0
