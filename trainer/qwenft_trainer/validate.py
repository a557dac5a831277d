"""``qwenft data validate``: check a dataset before any GPU is taken.

A bad record found after the model loaded wastes a GPU allocation; one found after hours
of training wastes the run. This command (and :func:`validate_dataset`, which training
calls first) reads every record, tokenizes it with the model's own chat template, and
reports sizes, the share of tokens that carry loss, truncation, and each bad record with
its line and the problem. It also reads the model's config to name its architecture and
the packing mode training will use (or ``unknown`` when the config can't be read). The
operator's validation Job runs it with ``--json`` and puts the one-line ``message`` in the
run's status.

    qwenft data validate data.jsonl --model Qwen/Qwen2.5-7B-Instruct --max-seq-length 2048
    qwenft data validate data.json --model /models/qwen --format sharegpt --json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, Field, computed_field

from qwenft_trainer.config import DataFormat, TrainingSettings
from qwenft_trainer.data import TemplateError, tokenize_conversation
from qwenft_trainer.formats import Conversation, RecordProblem, read_conversations

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# How many problems the text report lists before summarising the rest.
TEXT_PROBLEM_LIMIT = 50
PROGRESS_EVERY = 10_000


class ValidationReport(BaseModel):
    """What a dataset holds once tokenized, and every reason it can't be trained on as is."""

    path: str
    format: DataFormat = "auto"
    max_seq_length: int
    records: int = Field(0, description="Records in the file, usable or not.")
    conversations: int = Field(0, description="Records that parsed into a usable dialogue.")
    turns: int = 0
    tokens: int = Field(0, description="Tokens after truncation to max_seq_length.")
    trained_tokens: int = Field(0, description="Tokens with loss (assistant replies).")
    masked_tokens: int = Field(0, description="Tokens without loss (system, user, headers).")
    truncated_samples: int = 0
    truncated_share: float = 0.0
    longest_sample_tokens: int = Field(0, description="Longest dialogue before truncation.")
    longest_sample_source: str | None = None
    problems: list[RecordProblem] = Field(default_factory=list)
    warnings: list[RecordProblem] = Field(default_factory=list)
    architecture: str = Field(
        "unknown", description="model_type (and class) of the model; unknown if unreadable."
    )
    packing: str = Field(
        "unknown", description="Packing mode training will use, before its start-up probe."
    )
    packing_reason: str = Field("", description="Why that packing mode.")

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not self.problems and self.conversations > 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """One line for a status field or a log."""
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            return f"{len(self.problems)} bad record(s); first: {first}{more}"
        if not self.conversations:
            return f"{self.path} holds no usable dialogue"
        return (
            f"{self.conversations} dialogues, {self.tokens} tokens ({self.trained_tokens} "
            f"trained), {self.truncated_share:.1%} truncated at {self.max_seq_length}"
        )

    def to_text(self) -> str:
        trained = self.trained_tokens / self.tokens if self.tokens else 0.0
        bad = self.records - self.conversations
        lines = [
            f"dataset {self.path} (format {self.format}, max_seq_length {self.max_seq_length})",
            f"  records          {self.records:>10,}  ({self.conversations:,} usable, {bad:,} bad)",
            f"  turns            {self.turns:>10,}",
            f"  tokens           {self.tokens:>10,}",
            f"  trained tokens   {self.trained_tokens:>10,}  ({trained:.1%} of tokens)",
            f"  masked tokens    {self.masked_tokens:>10,}",
            f"  truncated        {self.truncated_share:>10.1%}  "
            f"({self.truncated_samples:,} samples longer than {self.max_seq_length} tokens)",
            f"  longest sample   {self.longest_sample_tokens:>10,}  tokens"
            + (f" ({self.longest_sample_source})" if self.longest_sample_source else ""),
            f"  architecture     {self.architecture}",
            f"  packing          {self.packing}"
            + (f" ({self.packing_reason})" if self.packing_reason else ""),
        ]
        for title, items in (("problems", self.problems), ("warnings", self.warnings)):
            if items:
                lines.append(f"{title}:")
                lines += [f"  {item}" for item in items[:TEXT_PROBLEM_LIMIT]]
                if len(items) > TEXT_PROBLEM_LIMIT:
                    lines.append(f"  ... and {len(items) - TEXT_PROBLEM_LIMIT} more")
        lines.append(("OK: " if self.ok else "FAILED: ") + self.message)
        return "\n".join(lines)


def _control_token_in(conv: Conversation, tokenizer: PreTrainedTokenizerBase) -> str | None:
    """A chat control token written inside a message would forge the dialogue's structure."""
    tokens = [t for t in tokenizer.all_special_tokens if t]
    for i, message in enumerate(conv.messages):
        for token in tokens:
            if token in message.content:
                return f"message {i} ({message.role}) contains the control token {token!r}"
    return None


def validate_dataset(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    fmt: DataFormat = "auto",
) -> ValidationReport:
    """Read and tokenize the whole dataset; the report lists every problem found."""
    conversations, problems = read_conversations(path, fmt)
    report = ValidationReport(path=str(path), format=fmt, max_seq_length=max_seq_length)
    report.records = len(conversations) + sum(1 for p in problems if p.index is not None)
    usable = 0
    for count, conv in enumerate(conversations, start=1):
        if count % PROGRESS_EVERY == 0:
            log.info("validated %d/%d dialogues", count, len(conversations))
        line = int(conv.source.rsplit(":", 1)[-1]) if ":" in conv.source else None
        forged = _control_token_in(conv, tokenizer)
        if forged:
            problems.append(RecordProblem(source=conv.source, line=line, message=forged))
            continue
        try:
            sample = tokenize_conversation(conv, tokenizer, max_seq_length=1 << 62)
        except TemplateError as err:
            problems.append(RecordProblem(source=conv.source, line=line, message=str(err)))
            continue
        usable += 1
        length = len(sample.input_ids)
        if length > report.longest_sample_tokens:
            report.longest_sample_tokens, report.longest_sample_source = length, conv.source
        labels = sample.labels[:max_seq_length]
        trained = sum(1 for label in labels if label != -100)
        report.turns += len(conv.messages)
        report.tokens += len(labels)
        report.trained_tokens += trained
        report.masked_tokens += len(labels) - trained
        if length > max_seq_length:
            report.truncated_samples += 1
            if not trained:
                report.warnings.append(
                    RecordProblem(
                        source=conv.source,
                        line=line,
                        message=f"no assistant token within max_seq_length={max_seq_length} "
                        f"(dialogue has {length} tokens); it will be skipped",
                    )
                )
    report.conversations = usable
    report.truncated_share = report.truncated_samples / usable if usable else 0.0
    report.problems = sorted(problems, key=lambda p: p.line or 0)
    return report


def describe_model(name_or_path: str, *, packing: bool = True, **source: Any) -> dict[str, str]:
    """Architecture and packing plan of a model from its config (``unknown`` if unreadable).

    ``source`` are the ``from_pretrained`` keyword arguments of the model (revision,
    trust_remote_code). The packing plan is the rules' decision for a CUDA run with the
    kernels installed here, loading with sdpa as training does; the run's start-up probe
    can still turn it off.
    """
    from transformers import AutoConfig

    from qwenft_trainer.packing_mode import decide_packing, linear_kernel_problem_here

    try:
        config = AutoConfig.from_pretrained(name_or_path, **source)
    except (OSError, ValueError, KeyError) as err:
        reason = f"can't read the model config of {name_or_path}: {err}".splitlines()[0]
        return {"architecture": "unknown", "packing": "unknown", "packing_reason": reason}
    classes = getattr(config, "architectures", None) or []
    architecture = str(config.model_type) + (f" ({', '.join(classes)})" if classes else "")
    decision = decide_packing(
        config,
        requested=packing,
        attn_implementation="sdpa",
        linear_kernel_problem=linear_kernel_problem_here(cuda=True),
    )
    return {
        "architecture": architecture,
        "packing": decision.mode,
        "packing_reason": decision.reason,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft data validate",
        description="Check a dialogue dataset (JSON array or JSONL) against a model's tokenizer.",
    )
    parser.add_argument("file", type=Path, help="dataset file (.json array or .jsonl)")
    parser.add_argument(
        "--model", required=True, help="model directory or hub id whose tokenizer is used"
    )
    parser.add_argument(
        "--max-seq-length",
        type=int,
        default=TrainingSettings.model_fields["max_seq_length"].default,
        help="tokens per sample; longer dialogues are truncated (default: %(default)s)",
    )
    parser.add_argument(
        "--format",
        choices=get_args(DataFormat),
        default="auto",
        help="record format; 'auto' detects it per record (default: %(default)s)",
    )
    parser.add_argument(
        "--revision",
        help="hub branch, tag or commit of --model (the one training will use; default: main)",
    )
    parser.add_argument(
        "--no-packing",
        action="store_true",
        help="the run sets training.packing: false (for the packing line of the report)",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom tokenizer code"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        from transformers import AutoTokenizer

        pinned = {"revision": args.revision} if args.revision else {}
        tokenizer = AutoTokenizer.from_pretrained(
            args.model, trust_remote_code=args.trust_remote_code, **pinned
        )
    except (OSError, ValueError) as err:
        message = f"can't load the tokenizer of --model {args.model}: {err}"
        if args.json:
            print(json.dumps({"ok": False, "message": message}))
        else:
            print(f"qwenft data validate: {message}", file=sys.stderr)
        return 2
    report = validate_dataset(args.file, tokenizer, args.max_seq_length, args.format)
    facts = describe_model(
        args.model,
        packing=not args.no_packing,
        trust_remote_code=args.trust_remote_code,
        **pinned,
    )
    report = report.model_copy(update=facts)
    print(report.model_dump_json(indent=2) if args.json else report.to_text())
    return 0 if report.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
