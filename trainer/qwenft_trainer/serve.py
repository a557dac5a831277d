"""``qwenft serve``: an OpenAI-compatible chat server for a merged model or base + adapters.

Serves ``POST /v1/chat/completions`` (plain and SSE streaming), ``GET /v1/models``,
``/healthz`` (liveness), ``/readyz`` (ready once the model is loaded) and ``/metrics``
(Prometheus). The model answers to ``--served-model-name``; each ``--adapter name=path``
is served under its own name over the same base, picked by the request's ``model`` field.

    python -m qwenft_trainer.serve --model /runs/demo/merged --served-model-name demo
    qwenft serve --model ./Qwen2.5-7B-Instruct --served-model-name qwen2.5-7b \\
        --adapter support=/runs/support/adapter --adapter sql=/runs/sql/adapter
    qwenft serve --model ./Qwen2.5-7B-Instruct --adapter demo=/runs/demo --checkpoint best

    curl localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "demo", "messages": [{"role": "user", "content": "Hello"}]}'
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from qwenft_trainer import exit_codes
from qwenft_trainer.checkpoint_choice import (
    CheckpointChoice,
    CheckpointNotFound,
    parse_choice,
    resolve_checkpoint,
)
from qwenft_trainer.generation import EngineConfig, load_engine


def _adapter(value: str) -> tuple[str, str]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=PATH, got '{value}'")
    return name, path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qwenft serve", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", required=True, help="merged or base model: a directory or a hub id"
    )
    parser.add_argument(
        "--revision", help="hub branch, tag or commit of --model when it is a hub id"
    )
    parser.add_argument(
        "--served-model-name",
        help="name clients put in 'model' (default: the directory name or hub id)",
    )
    parser.add_argument(
        "--adapter",
        type=_adapter,
        action="append",
        default=[],
        metavar="NAME=PATH",
        help="serve a PEFT adapter over the base under NAME (repeatable)",
    )
    parser.add_argument(
        "--checkpoint",
        type=_checkpoint,
        help="serve checkpoint-STEP, or 'best' (the kept checkpoint with the lowest eval "
        "loss), of the run whose output directory is the one --adapter (or, without one, "
        "--model: a full fine-tune) instead of its final weights",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on")
    parser.add_argument("--device", default="auto", help="cuda, cuda:1, cpu (auto: cuda if any)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "bf16", "fp16", "fp32"],
        default="auto",
        help="weights dtype (auto: bf16 on GPU, the checkpoint's own on CPU)",
    )
    parser.add_argument("--max-model-len", type=int, help="context length (default: the model's)")
    parser.add_argument(
        "--max-concurrency",
        type=int,
        default=2,
        help="generate calls running at the same time (each a stream or a batch)",
    )
    parser.add_argument(
        "--max-queue", type=int, default=16, help="requests waiting beyond those; more get 429"
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=8,
        help="non-streaming requests generated together in one call",
    )
    parser.add_argument(
        "--default-max-tokens",
        type=int,
        default=256,
        help="completion length when a request sets no max_tokens",
    )
    parser.add_argument("--log-level", default="info", help="uvicorn log level")
    return parser


def _checkpoint(text: str) -> CheckpointChoice:
    try:
        return parse_choice(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def resolve_served(
    model: str, adapters: list[tuple[str, str]], choice: CheckpointChoice | None
) -> tuple[str, list[tuple[str, str]]]:
    """``--model`` and ``--adapter`` with the chosen checkpoint put in: the one adapter's
    run, or the model's (a full fine-tune) when no adapter is given."""
    if choice is None:
        return model, adapters
    if len(adapters) > 1:
        raise ValueError("--checkpoint picks a checkpoint of one run: give at most one --adapter")
    if adapters:
        name, path = adapters[0]
        return model, [(name, str(resolve_checkpoint(path, choice)))]
    return str(resolve_checkpoint(model, choice)), adapters


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Like vLLM: the model is a directory or a hub id; a directory is served by its name.
    local = Path(args.model).is_dir()
    served = args.served_model_name or (Path(args.model).resolve().name if local else args.model)
    try:
        args.model, args.adapter = resolve_served(args.model, args.adapter, args.checkpoint)
    except CheckpointNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.CHECKPOINT_NOT_FOUND
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import uvicorn

    from qwenft_trainer.serve_app import ServerLimits, create_app

    adapters = dict(args.adapter)
    if served in adapters or len(adapters) != len(args.adapter):
        print(
            "error: adapter names must be unique and differ from --served-model-name",
            file=sys.stderr,
        )
        return 2
    missing = [path for path in adapters.values() if not Path(path).is_dir()]
    if missing:
        print(f"error: adapter directory not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    if args.max_concurrency < 1 or args.max_queue < 0 or args.max_batch_size < 1:
        print(
            "error: --max-concurrency and --max-batch-size must be >= 1, --max-queue >= 0",
            file=sys.stderr,
        )
        return 2
    config = EngineConfig(
        model=args.model,
        revision=args.revision,
        served_model_name=served,
        adapters=adapters,
        device=args.device,
        dtype=args.dtype,
        max_model_len=args.max_model_len,
    )
    limits = ServerLimits(
        max_concurrency=args.max_concurrency,
        max_queue=args.max_queue,
        max_batch_size=args.max_batch_size,
        default_max_tokens=args.default_max_tokens,
    )
    app = create_app(lambda: load_engine(config), limits)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
