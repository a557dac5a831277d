"""The ``qwenft`` command: one entry point over the trainer's and the operator's programs.

Each subcommand is a module with its own ``main(argv) -> int`` and argparse help, so
``qwenft train --help`` and ``python -m qwenft_trainer.train --help`` are the same thing.
Modules are imported only when their subcommand runs: the operator image has no torch,
and the trainer image has no kopf.

    qwenft data validate data.jsonl --model /models/qwen
    qwenft train --config run.yaml
    qwenft run examples/quickstart-local.yaml --local
    qwenft estimate examples/lora-single-gpu.yaml --gpu-memory 80Gi
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable

# subcommand words -> (module, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str]] = {
    ("train",): ("qwenft_trainer.train", "fine-tune a model from a TrainConfig file"),
    ("data", "validate"): ("qwenft_trainer.validate", "check a dataset before training"),
    ("merge",): ("qwenft_trainer.merge", "merge a LoRA adapter into its base model"),
    ("serve",): ("qwenft_trainer.serve", "serve a model over an OpenAI-compatible API"),
    ("tiny-model",): (
        "qwenft_trainer.tiny",
        "build a tiny Qwen model (--arch) for tests and demos",
    ),
    ("estimate",): (
        "qwenft_operator.estimate",
        "estimate a manifest's GPU memory per GPU (no cluster)",
    ),
    ("run",): ("qwenft_operator.local", "run a QwenFineTune manifest (--local: no cluster)"),
    ("operator",): ("qwenft_operator.main", "run the operator against the current cluster"),
    ("render",): ("qwenft_operator.cli_render", "print the objects the operator makes for a run"),
    ("status",): ("qwenft_operator.cli_status", "show a run's phase, progress and endpoint"),
    ("logs",): ("qwenft_operator.cli_logs", "print or follow the logs of a run's pods"),
}


def usage() -> str:
    lines = ["usage: qwenft COMMAND [ARGS...]", "", "commands:"]
    for words, (_, help_text) in COMMANDS.items():
        lines.append(f"  {' '.join(words):<16}{help_text}")
    lines.append("")
    lines.append("Run 'qwenft COMMAND --help' for the options of a command.")
    return "\n".join(lines)


def resolve(argv: list[str]) -> tuple[str, list[str]] | None:
    """The module that handles ``argv`` and the arguments left for it, or None."""
    for words, (module, _) in sorted(COMMANDS.items(), key=lambda item: -len(item[0])):
        if tuple(argv[: len(words)]) == words:
            return module, argv[len(words) :]
    return None


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in {"-h", "--help", "help"}:
        print(usage())
        return 0
    found = resolve(args)
    if found is None:
        print(f"qwenft: unknown command '{' '.join(args[:2])}'\n\n{usage()}", file=sys.stderr)
        return 2
    module_name, rest = found
    entry: Callable[[list[str]], int] = importlib.import_module(module_name).main
    return entry(rest)


if __name__ == "__main__":
    raise SystemExit(main())
