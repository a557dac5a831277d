"""``qwenft data validate``: check a dataset before any GPU is taken.

A bad record found after the model loaded wastes a GPU allocation; one found after hours
of training wastes the run. This command (and :func:`validate_dataset`, which training
calls first) reads every record, tokenizes it with the model's own chat template, and
reports sizes, the share of tokens that carry loss, truncation, the chat template's thinking
and the trained reasoning vs answer tokens, and each bad record with its line and the
problem. A dataset that truncation would leave with nothing to train on fails, naming the
``max_seq_length`` that keeps every dialogue. It also reads the model's config to name its
architecture, the attention kernel a CUDA run will load it with and the packing mode it
will use (or ``unknown`` when the config can't be read), and reports the config's shape
fields (``base_config``), from which the operator estimates the run's GPU memory
(:mod:`qwenft_trainer.fit_estimate`). The operator's validation Job runs it with ``--json``
and puts the one-line ``message`` in the run's status; a report that passed is also
written, short, to ``/dev/termination-log`` when that file exists (it does in a pod), so
the operator reads the shape from the pod's termination message.

    qwenft data validate data.jsonl --model Qwen/Qwen2.5-7B-Instruct --max-seq-length 2048
    qwenft data validate data.json --model /models/qwen --format sharegpt --json
    qwenft data validate reasoning.jsonl --model Qwen/Qwen3-8B --thinking empty-in-prompt
    qwenft data validate data.jsonl --model Qwen/Qwen2.5-7B-Instruct-GPTQ-Int4 --method qlora \
        --merge-into Qwen/Qwen2.5-7B-Instruct

The model's ``config.json`` is checked first (:mod:`qwenft_trainer.base_checks`): a Qwen1
checkpoint, or a method or merge its quantization rules out, fails here too.

With ``--token-cache-from-env VAR`` (the operator's validation Job) a dataset that passed is
also tokenized for the trainer config held in ``VAR`` (YAML) and saved in its output
directory's token cache (:mod:`qwenft_trainer.token_cache`), under the key training
computes, so the training pods load the samples instead of validating and tokenizing while
their GPUs wait; that config's ``evaluation.file`` is validated too. A cache that can't be
written only costs the training pods the tokenizing.

It is over 300 lines because the dataset checks, the model checks and the validation Job's
report (with the token cache it prebuilds) are the one command the validation Job runs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from pydantic import BaseModel, Field, computed_field

from qwenft_trainer import exit_codes
from qwenft_trainer.config import (
    AttentionSetting,
    DataFormat,
    Method,
    ThinkingPolicy,
    TrainingSettings,
)
from qwenft_trainer.data import IGNORE_INDEX, TemplateError, tokenize_dialogue
from qwenft_trainer.formats import Conversation, RecordProblem, read_conversations
from qwenft_trainer.summary import write_termination_log
from qwenft_trainer.thinking import DEFAULT_POLICY, TemplateKind, describe, probe_template

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = logging.getLogger(__name__)

# Memory per token of tokenized samples (an id and a label, each a pointer and an int
# object in a Python list), and where a container's memory limit is read.
CACHE_BYTES_PER_TOKEN = 80
CGROUP_DIR = "/sys/fs/cgroup"
# How many problems the text report lists before summarising the rest.
TEXT_PROBLEM_LIMIT = 50
PROGRESS_EVERY = 10_000
# Kubernetes shows this file's contents as the pod's termination message.
TERMINATION_LOG = "/dev/termination-log"


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
    longest_sample_tokens: int = Field(0, description="Longest sample before truncation.")
    longest_sample_source: str | None = None
    samples: int = Field(
        0,
        description="Training samples: one per dialogue, or one per reply where the chat "
        "template renders earlier replies differently from how they were written (Qwen3).",
    )
    thinking: ThinkingPolicy = Field(
        DEFAULT_POLICY, description="training.thinking: replies without reasoning."
    )
    template_thinking: TemplateKind = Field(
        "none", description="The chat template's thinking: hybrid, always or none."
    )
    thinking_summary: str = Field("", description="What training.thinking does here.")
    reasoning_turns: int = Field(0, description="Assistant replies that carry reasoning.")
    reasoning_tokens: int = Field(0, description="Trained tokens inside reasoning blocks.")
    answer_tokens: int = Field(0, description="Trained tokens outside reasoning blocks.")
    problems: list[RecordProblem] = Field(default_factory=list)
    warnings: list[RecordProblem] = Field(default_factory=list)
    architecture: str = Field(
        "unknown", description="model_type (and class) of the model; unknown if unreadable."
    )
    packing: str = Field(
        "unknown", description="Packing mode training will use, before its start-up probe."
    )
    packing_reason: str = Field("", description="Why that packing mode.")
    attention: str = Field(
        "unknown", description="Attention implementation a CUDA run (training.attention auto) uses."
    )
    attention_reason: str = Field("", description="Why that attention implementation.")
    base_config: dict[str, Any] | None = Field(
        None,
        description="The shape fields of the model's config.json (model_shapes.shape_fields), "
        "for the GPU-fit estimate; None if unreadable.",
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def ok(self) -> bool:
        return not self.problems and self.conversations > 0

    @computed_field  # type: ignore[prop-decorator]
    @property
    def message(self) -> str:
        """One line for a status field or a log."""
        if self.problems:
            # Problems of the whole file (no line) first, then the count of bad records.
            parts = [str(p) for p in self.problems if p.line is None]
            records = [p for p in self.problems if p.line is not None]
            if records:
                more = f" (and {len(records) - 1} more)" if len(records) > 1 else ""
                parts.append(f"{len(records)} bad record(s); first: {records[0]}{more}")
            return "; ".join(parts)
        if not self.conversations:
            return f"{self.path} holds no usable dialogue"
        split = f" ({self.samples} samples)" if self.samples != self.conversations else ""
        return (
            f"{self.conversations} dialogues{split}, {self.tokens} tokens ({self.trained_tokens} "
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
            f"  samples          {self.samples:>10,}",
            f"  reasoning        {self.reasoning_tokens:>10,}  trained tokens in "
            f"{self.reasoning_turns:,} replies with reasoning",
            f"  answer tokens    {self.answer_tokens:>10,}",
            f"  thinking         {self.thinking_summary or self.thinking}",
            f"  truncated        {self.truncated_share:>10.1%}  "
            f"({self.truncated_samples:,} samples longer than {self.max_seq_length} tokens)",
            f"  longest sample   {self.longest_sample_tokens:>10,}  tokens"
            + (f" ({self.longest_sample_source})" if self.longest_sample_source else ""),
            f"  architecture     {self.architecture}",
            f"  attention        {self.attention}"
            + (f" ({self.attention_reason})" if self.attention_reason else ""),
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
            if token in message.content or token in (message.reasoning or ""):
                return f"message {i} ({message.role}) contains the control token {token!r}"
    return None


def validate_dataset(
    path: str | Path,
    tokenizer: PreTrainedTokenizerBase,
    max_seq_length: int,
    fmt: DataFormat = "auto",
    thinking: ThinkingPolicy = DEFAULT_POLICY,
) -> ValidationReport:
    """Read and tokenize the whole dataset; the report lists every problem found."""
    conversations, problems = read_conversations(path, fmt)
    support = probe_template(tokenizer)
    report = ValidationReport(
        path=str(path),
        format=fmt,
        max_seq_length=max_seq_length,
        thinking=thinking,
        template_thinking=support.kind,
        thinking_summary=describe(support, thinking),
    )
    report.records = len(conversations) + sum(1 for p in problems if p.index is not None)
    usable = 0
    needed = 0  # the max_seq_length at which every dialogue keeps its first trained token
    for count, conv in enumerate(conversations, start=1):
        if count % PROGRESS_EVERY == 0:
            log.info("validated %d/%d dialogues", count, len(conversations))
        line = int(conv.source.rsplit(":", 1)[-1]) if ":" in conv.source else None
        forged = _control_token_in(conv, tokenizer)
        if forged:
            problems.append(RecordProblem(source=conv.source, line=line, message=forged))
            continue
        try:
            samples = tokenize_dialogue(conv, tokenizer, 1 << 62, thinking, support)
        except TemplateError as err:
            problems.append(RecordProblem(source=conv.source, line=line, message=str(err)))
            continue
        usable += 1
        report.turns += len(conv.messages)
        report.reasoning_turns += sum(m.reasoning is not None for m in conv.messages)
        report.samples += len(samples)
        for sample in samples:
            length = len(sample.input_ids)
            if length > report.longest_sample_tokens:
                report.longest_sample_tokens, report.longest_sample_source = length, conv.source
            labels = sample.labels[:max_seq_length]
            trained = sum(1 for label in labels if label != IGNORE_INDEX)
            reasoning = sample.cut(max_seq_length).reasoning_tokens
            report.tokens += len(labels)
            report.trained_tokens += trained
            report.masked_tokens += len(labels) - trained
            report.reasoning_tokens += reasoning
            report.answer_tokens += trained - reasoning
            if length > max_seq_length:
                report.truncated_samples += 1
                first = _first_trained_token(sample.labels)
                if not trained and first is not None:
                    needed = max(needed, first + 1)
                    report.warnings.append(
                        RecordProblem(
                            source=conv.source,
                            line=line,
                            message=f"no assistant token within max_seq_length={max_seq_length} "
                            f"(sample has {length} tokens, its first reply starts at token "
                            f"{first + 1}); it will be skipped",
                        )
                    )
    report.conversations = usable
    report.truncated_share = report.truncated_samples / report.samples if report.samples else 0.0
    if usable and not report.trained_tokens:
        problems.append(RecordProblem(source=str(path), message=_nothing_to_train(report, needed)))
    report.problems = sorted(problems, key=lambda p: p.line or 0)
    return report


def _first_trained_token(labels: list[int]) -> int | None:
    return next((i for i, label in enumerate(labels) if label != IGNORE_INDEX), None)


def _nothing_to_train(report: ValidationReport, needed: int) -> str:
    """The verdict on a dataset whose every dialogue would be skipped, and the fix."""
    if not needed:
        return "nothing to train on: no dialogue has a token that carries loss"
    return (
        f"nothing to train on: every dialogue loses all assistant tokens to truncation at "
        f"max_seq_length={report.max_seq_length}; raise training.max_seq_length "
        f"(--max-seq-length) to at least {needed} or shorten the prompts"
    )


def describe_model(
    name_or_path: str,
    *,
    packing: bool = True,
    attention: AttentionSetting = "auto",
    **source: Any,
) -> dict[str, Any]:
    """Architecture and packing plan of a model from its config (``unknown`` if unreadable).

    ``source`` are the ``from_pretrained`` keyword arguments of the model (revision,
    trust_remote_code). Attention and packing are the rules' decisions for a bf16 CUDA run
    with ``training.attention`` set to ``attention`` and the kernels installed here, as
    training decides them (:mod:`qwenft_trainer.attention`); a kernel that setting names
    but that can't run makes the attention ``unknown``, with the reason training would
    fail with. The run's start-up probe can still turn packing off. ``base_config`` holds
    the config's shape fields, for the GPU-fit estimate.
    """
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(name_or_path, **source)
    except (OSError, ValueError, KeyError) as err:
        reason = f"can't read the model config of {name_or_path}: {err}".splitlines()[0]
        return {
            "architecture": "unknown",
            "packing": "unknown",
            "packing_reason": reason,
            "attention": "unknown",
            "attention_reason": reason,
        }
    from qwenft_trainer.model_shapes import shape_fields

    fields = shape_fields(config.to_dict())
    facts = _describe_config(config, packing=packing, attention=attention)
    return {**facts, "base_config": fields}


def _describe_config(config: Any, *, packing: bool, attention: AttentionSetting) -> dict[str, str]:
    from qwenft_trainer.architectures import concrete_model_class
    from qwenft_trainer.attention import (
        AttentionError,
        decide_attention,
        kernel_problems_here,
        supported_implementations,
    )
    from qwenft_trainer.packing_mode import decide_packing, linear_kernel_problem_here

    classes = getattr(config, "architectures", None) or []
    architecture = str(config.model_type) + (f" ({', '.join(classes)})" if classes else "")
    try:
        choice = decide_attention(
            requested=attention,
            cuda=True,
            precision="bf16",
            supported=supported_implementations(concrete_model_class(config)),
            problems=kernel_problems_here(cuda=True),
        )
    except AttentionError as err:
        return {
            "architecture": architecture,
            "packing": "unknown",
            "packing_reason": "it depends on the attention kernel",
            "attention": "unknown",
            "attention_reason": str(err),
        }
    decision = decide_packing(
        config,
        requested=packing,
        attn_implementation=choice.implementation,
        linear_kernel_problem=linear_kernel_problem_here(cuda=True),
    )
    return {
        "architecture": architecture,
        "packing": decision.mode,
        "packing_reason": decision.reason,
        "attention": choice.implementation,
        "attention_reason": choice.reason,
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
        "--thinking",
        choices=get_args(ThinkingPolicy),
        default=TrainingSettings.model_fields["thinking"].default,
        help="training.thinking: what replies without reasoning teach on a hybrid-thinking "
        "template (default: %(default)s)",
    )
    parser.add_argument(
        "--revision",
        help="hub branch, tag or commit of --model (the one training will use; default: main)",
    )
    parser.add_argument(
        "--method",
        choices=get_args(Method),
        help="training method; checked against the model's quantization (default: not checked)",
    )
    parser.add_argument(
        "--merge-into",
        metavar="MODEL",
        help="model the adapter will be merged into after training; refused when quantized",
    )
    parser.add_argument(
        "--no-packing",
        action="store_true",
        help="the run sets training.packing: false (for the packing line of the report)",
    )
    parser.add_argument(
        "--attention",
        choices=get_args(AttentionSetting),
        default="auto",
        help="the run's training.attention (for the attention line of the report; "
        "default: %(default)s)",
    )
    parser.add_argument(
        "--token-cache-from-env",
        metavar="VAR",
        help="when the dataset passes, tokenize it for the trainer config (YAML) in "
        "environment variable VAR and save it in that run's token cache",
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.add_argument(
        "--trust-remote-code", action="store_true", help="allow custom tokenizer code"
    )
    return parser


def _refuse(args: argparse.Namespace, message: str) -> None:
    if args.json:
        print(json.dumps({"ok": False, "message": message}))
    else:
        print(f"qwenft data validate: {message}", file=sys.stderr)


def check_model(args: argparse.Namespace) -> int | None:
    """The exit status when ``--model`` can't be trained as asked (1) or read (2), else None."""
    from qwenft_trainer.base_checks import BaseConfigError, base_model_problems

    pinned = {"revision": args.revision} if args.revision else {}
    try:
        problems = base_model_problems(
            args.model, method=args.method, merge_into=args.merge_into, **pinned
        )
    except BaseConfigError as err:
        _refuse(args, str(err))
        return exit_codes.VALIDATION_UNREADABLE
    if problems:
        _refuse(args, "; ".join(problems))
        return exit_codes.VALIDATION_FAILED
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    refused = check_model(args)
    if refused is not None:
        return refused
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
        return exit_codes.VALIDATION_UNREADABLE
    report = validate_dataset(
        args.file, tokenizer, args.max_seq_length, args.format, thinking=args.thinking
    )
    facts = describe_model(
        args.model,
        packing=not args.no_packing,
        attention=args.attention,
        trust_remote_code=args.trust_remote_code,
        **pinned,
    )
    report = report.model_copy(update=facts)
    if report.ok and args.token_cache_from_env and fits_in_memory(report.tokens):
        problem = prebuild_token_cache(os.environ.get(args.token_cache_from_env, ""))
        if problem is not None:
            _refuse(args, problem)
            return exit_codes.VALIDATION_FAILED
    print(report.model_dump_json(indent=2) if args.json else report.to_text())
    if report.ok:
        write_termination_log(
            TERMINATION_LOG,
            {"ok": True, "message": report.message, "base_config": report.base_config},
        )
    return 0 if report.ok else exit_codes.VALIDATION_FAILED


def available_memory_bytes() -> int | None:
    """Memory this process may still take: its cgroup's limit less its use, else the free
    physical memory; None when neither can be read."""
    try:
        limit = Path(CGROUP_DIR, "memory.max").read_text().strip()
        if limit != "max":
            used = int(Path(CGROUP_DIR, "memory.current").read_text().strip())
            return int(limit) - used
    except (OSError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return None


def fits_in_memory(tokens: int) -> bool:
    """Whether the samples of ``tokens`` tokens fit in half the memory left (as Python lists:
    :data:`CACHE_BYTES_PER_TOKEN`). A validation pod too small to hold them leaves the
    tokenizing to training, which holds them anyway, rather than being killed."""
    available = available_memory_bytes()
    needed = tokens * CACHE_BYTES_PER_TOKEN
    if available is None or needed <= available // 2:
        return True
    log.warning(
        "no token cache written: %d tokens take about %.1f GiB to tokenize, %.1f GiB is free; "
        "the training pods tokenize",
        tokens,
        needed / 1024**3,
        available / 1024**3,
    )
    return False


def prebuild_token_cache(config_text: str) -> str | None:
    """Tokenize for the trainer config in ``config_text`` into its run's token cache, as
    training's rank 0 would; the reason when its ``evaluation.file`` is invalid, else None.

    A config that can't be read is logged and skipped (training reads it again and says
    why). The cache's log line goes to stderr: stdout holds only the report.
    """
    import contextlib

    import yaml

    from qwenft_trainer.config import ConfigError, TrainConfig
    from qwenft_trainer.data import build_samples
    from qwenft_trainer.distributed import DistributedEnv
    from qwenft_trainer.modeling import load_tokenizer
    from qwenft_trainer.token_cache import Samples, load_or_build

    if not config_text.strip():  # e.g. ``qwenft run --local``: training builds the cache
        return None
    try:
        config = TrainConfig.model_validate(yaml.safe_load(config_text))
    except (yaml.YAMLError, ValueError) as err:
        log.warning("no token cache written: the trainer config can't be read: %s", err)
        return None

    def build(config: TrainConfig, tokenizer: PreTrainedTokenizerBase) -> Samples:
        if config.evaluation.file:
            held_out = validate_dataset(
                config.evaluation.file,
                tokenizer,
                config.training.max_seq_length,
                config.data.format,
                thinking=config.training.thinking,
            )
            if not held_out.ok:
                raise ConfigError(f"evaluation.file: {held_out.message}")
        return build_samples(config, tokenizer)

    try:
        with contextlib.redirect_stdout(sys.stderr):
            load_or_build(config, DistributedEnv(), load_tokenizer(config.model), build=build)
    except ConfigError as err:
        return str(err)
    except (OSError, ValueError) as err:
        log.warning("no token cache written: %s", err)
    return None


if __name__ == "__main__":
    raise SystemExit(main())
