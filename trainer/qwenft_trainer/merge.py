"""Merge a LoRA / Q-LoRA adapter into its base model and write a standalone checkpoint.

The merged directory loads with plain ``from_pretrained`` (and in vLLM or TGI) without
peft: safetensors weights (sharded with an index above ``--max-shard-size``), the
tokenizer, its chat template and the generation config. Q-LoRA adapters are merged into
the un-quantized base, never into 4-bit weights; one trained over a GPTQ / AWQ checkpoint
is merged into the un-quantized release it was made from (``--base``), and a quantized
``--base`` is refused. Before the output appears, the merge
reloads what it wrote and compares its logits with base + adapter on a probe batch;
``merge_report.json`` records the difference and the tolerance, and a disagreement fails
the merge. Work happens in ``<output>.partial-<pid>``, renamed into place only when
complete, so a crash or a full disk never leaves an output that looks finished.

    python -m qwenft_trainer.merge --adapter /runs/demo/adapter --output /runs/demo/merged
    python -m qwenft_trainer.merge --adapter /runs/demo --checkpoint best --output /runs/demo/merged
    qwenft merge --adapter ./adapter --base ./Qwen2.5-7B-Instruct --output ./merged --dtype bf16

Memory: the base is loaded once, on the CPU, at the output dtype (bf16: 2 bytes per
parameter): about 16 GB of RAM for a 7B model, 30 GB for 14B, 146 GB for 72B, plus 1-2 GB
of working space. No GPU is needed.

It is over 300 lines because the merge, its verification against the unmerged model and its
command line are one step that must fail as a whole.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from qwenft_trainer import architectures, exit_codes
from qwenft_trainer.base_checks import BaseConfigError, read_base_config
from qwenft_trainer.checkpoint_choice import (
    CheckpointChoice,
    CheckpointNotFound,
    parse_choice,
    resolve_checkpoint,
)
from qwenft_trainer.config import DTYPE_NAMES
from qwenft_trainer.merge_checks import (
    AdapterInfo,
    BaseInfo,
    FreeSpaceProbe,
    MergeError,
    check_compatible,
    check_disk_space,
    estimate_output_bytes,
    free_bytes,
    read_adapter,
    read_base,
)
from qwenft_trainer.quantized import checkpoint_quantization, merge_problem

DtypeName = Literal["auto", "bf16", "fp16", "fp32"]
# Max |merged - (base + adapter)| allowed, relative to the largest reference logit. Both
# sides round differently (W + BA rounded once to the output dtype; base and adapter
# outputs rounded separately), so half precision needs room: bf16 keeps 8 mantissa bits,
# fp16 11. A merge that drops or mis-scales the adapter differs by the adapter's whole
# effect on the logits (reported as adapter_effect), which is far larger on a trained one.
RELATIVE_TOLERANCE = {"float32": 1e-4, "float16": 3e-2, "bfloat16": 8e-2}
RESERVE_ENV = "QWENFT_MERGE_RESERVE_BYTES"
REPORT_NAME = "merge_report.json"

# Short on purpose: on CPUs without native bf16 matmuls (AVX2) a 72B forward pass runs at a
# few GFLOP/s, and verification makes three passes over these tokens.
PROBE_DIALOGUES = [
    [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
    ],
    [{"role": "user", "content": "请用一句话解释什么是微调。def add(a, b): return a + b"}],
]


@dataclass(frozen=True)
class MergeOptions:
    adapter: Path
    output: Path
    base: str | None = None
    revision: str | None = None
    dtype: DtypeName = "auto"
    method: Literal["lora", "qlora"] | None = None
    max_shard_size: str = "5GB"
    tolerance: float | None = None
    overwrite: bool = False
    reserve_bytes: int = 0
    # A checkpoint of the run whose output directory ``adapter`` is: its step, or "best"
    # by eval loss (qwenft_trainer.checkpoint_choice); None merges ``adapter`` itself.
    checkpoint: CheckpointChoice | None = None


@dataclass
class MergeReport:
    adapter: str
    base: str
    output: str
    method: str
    dtype: str
    merged_into: str
    parameters: int
    estimated_bytes: int
    probe_tokens: int = 0
    max_abs_diff: float = float("nan")
    tolerance: float = float("nan")
    adapter_effect: float = float("nan")
    passed: bool = False
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n"


def _log(message: str) -> None:
    print(f"[merge] {message}", file=sys.stderr, flush=True)


def resolve_dtype(requested: DtypeName, base: BaseInfo) -> str:
    """The output dtype: the requested one, else the base's own, else bf16."""
    if requested != "auto":
        return DTYPE_NAMES[requested]
    text = base.config.get("text_config", base.config)
    found = next(
        (
            config[key]
            for config in (text, base.config)
            for key in ("dtype", "torch_dtype")
            if config.get(key)
        ),
        None,
    )
    return found if found in RELATIVE_TOLERANCE else "bfloat16"


def detect_method(options: MergeOptions, adapter: AdapterInfo) -> str:
    """``qlora`` or ``lora``: ``--method``, else what the trainer recorded, else lora."""
    if options.method:
        return options.method
    recorded = adapter.summary.get("method")
    return str(recorded) if recorded in {"lora", "qlora"} else "lora"


def _probe_batch(tokenizer: Any) -> dict[str, Any]:
    texts = [tokenizer.apply_chat_template(d, tokenize=False) for d in PROBE_DIALOGUES]
    return dict(tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False))


def _logits(model: Any, batch: dict[str, Any]) -> Any:
    import torch

    with torch.inference_mode():
        logits = model(**batch).logits.float()
    return logits[batch["attention_mask"].bool()]


def _load_model(path: Path | str, dtype: str) -> Any:
    import torch

    # The whole checkpoint (a multimodal base keeps its vision tower). Weights go straight
    # from the safetensors files into tensors of the final dtype, on the CPU, so peak memory
    # stays near one copy of the model.
    model_class = architectures.model_class(architectures.read_architecture(str(path)))
    return model_class.from_pretrained(
        str(path), dtype=getattr(torch, dtype), device_map="cpu", low_cpu_mem_usage=True
    ).eval()


def refuse_quantized_base(base: str, *, revision: str | None) -> None:
    """Raise when ``base`` is a GPTQ / AWQ (or other quantized) checkpoint.

    Only its config.json is read, so a quantized hub base is refused before its weights
    download; one that can't be read is left to :func:`read_base`, which says why.
    """
    try:
        config = read_base_config(base, **({"revision": revision} if revision else {}))
    except BaseConfigError:
        return
    packed = merge_problem(checkpoint_quantization(config), name=base)
    if packed:
        raise MergeError(packed)


def merge(options: MergeOptions, *, probe: FreeSpaceProbe = free_bytes) -> MergeReport:
    """Merge, verify and write; raises :class:`MergeError` and leaves no output on failure
    (:class:`~qwenft_trainer.checkpoint_choice.CheckpointNotFound` for a missing checkpoint).
    """
    started = time.monotonic()
    adapter = read_adapter(resolve_checkpoint(options.adapter, options.checkpoint))
    base_name = options.base or adapter.config.get("base_model_name_or_path")
    if not base_name:
        raise MergeError("the adapter's config names no base model: pass --base")
    refuse_quantized_base(str(base_name), revision=options.revision)
    base = read_base(str(base_name), revision=options.revision)
    check_compatible(adapter, base)
    method = detect_method(options, adapter)
    dtype = resolve_dtype(options.dtype, base)
    output = options.output.resolve()
    if output.exists() and any(output.iterdir()) and not options.overwrite:
        raise MergeError(f"output {output} exists and is not empty: pass --overwrite")
    report = MergeReport(
        adapter=str(adapter.path),
        base=str(base.path),
        output=str(output),
        method=method,
        dtype=dtype,
        merged_into=f"un-quantized base in {dtype}",
        parameters=base.parameter_count,
        estimated_bytes=estimate_output_bytes(base, dtype),
    )
    if method == "qlora":
        report.notes.append(
            "Q-LoRA adapter merged into the un-quantized base (never into 4-bit weights); "
            "the merged model can differ slightly from the 4-bit model used in training"
        )
    check_disk_space(output, report.estimated_bytes, reserve=options.reserve_bytes, probe=probe)

    partial = output.with_name(f"{output.name}.partial-{os.getpid()}")
    try:
        _merge_into(partial, options, adapter, base, report)
        report.seconds = round(time.monotonic() - started, 2)
        (partial / REPORT_NAME).write_text(report.to_json(), encoding="utf-8")
        if not report.passed:
            raise MergeError(
                f"verification failed: merged logits differ from base + adapter by "
                f"{report.max_abs_diff:.3g} (tolerance {report.tolerance:.3g}); nothing was "
                f"written to {output}\n{report.to_json()}"
            )
        if output.exists():
            shutil.rmtree(output)
        partial.rename(output)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return report


def _merge_into(
    partial: Path, options: MergeOptions, adapter: AdapterInfo, base: BaseInfo, report: MergeReport
) -> None:
    import gc

    from peft import PeftModel
    from transformers import AutoTokenizer

    has_tokenizer = (adapter.path / "tokenizer_config.json").is_file()
    tokenizer = AutoTokenizer.from_pretrained(str(adapter.path if has_tokenizer else base.path))
    batch = _probe_batch(tokenizer)
    report.probe_tokens = int(batch["attention_mask"].sum())

    count = (
        f"{report.parameters / 1e9:.2f}B" if report.parameters >= 1e8 else f"{report.parameters:,}"
    )
    _log(f"loading base {base.path} ({count} parameters, {report.dtype})")
    model = PeftModel.from_pretrained(_load_model(base.path, report.dtype), str(adapter.path))
    model.eval()
    reference = _logits(model, batch)
    with model.disable_adapter():
        report.adapter_effect = float((reference - _logits(model, batch)).abs().max())
    _log("merging adapter into the base weights")
    merged = model.merge_and_unload(safe_merge=True)

    _log(f"writing {partial} (shards up to {options.max_shard_size})")
    partial.mkdir(parents=True)
    merged.save_pretrained(str(partial), max_shard_size=options.max_shard_size)
    tokenizer.save_pretrained(str(partial))
    del model, merged
    gc.collect()

    _log("verifying: reloading the merged model and comparing logits with base + adapter")
    reloaded = _load_model(partial, report.dtype)
    diff = float((_logits(reloaded, batch) - reference).abs().max())
    del reloaded
    gc.collect()
    rtol = options.tolerance or RELATIVE_TOLERANCE[report.dtype]
    report.tolerance = rtol * max(1.0, float(reference.abs().max()))
    report.max_abs_diff = diff
    report.passed = diff <= report.tolerance


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwenft merge", description=__doc__.splitlines()[0], epilog=__doc__.split("\n\n")[2]
    )
    parser.add_argument("--adapter", type=Path, required=True, help="PEFT adapter directory")
    parser.add_argument("--output", type=Path, required=True, help="merged model directory")
    parser.add_argument(
        "--base",
        help="un-quantized base model: a directory or a hub id (default: the adapter config's)",
    )
    parser.add_argument("--revision", help="hub revision of the base, when --base is a hub id")
    parser.add_argument(
        "--dtype",
        choices=["auto", *DTYPE_NAMES],
        default="auto",
        help="output dtype; auto keeps the base's (bf16 when the base doesn't say)",
    )
    parser.add_argument(
        "--method",
        choices=["lora", "qlora"],
        help="how the adapter was trained (default: the trainer's summary.json, else lora)",
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest safetensors shard, e.g. 5GB or 500MB"
    )
    parser.add_argument(
        "--tolerance",
        type=float,
        help="allowed max |logit diff| relative to the largest logit (default per dtype)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument(
        "--checkpoint",
        type=_checkpoint,
        help="merge checkpoint-STEP of the run in --adapter (its output directory), or 'best' "
        "(the kept checkpoint with the lowest eval loss), instead of the final adapter",
    )
    return parser


def _checkpoint(text: str) -> CheckpointChoice:
    try:
        return parse_choice(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        reserve = int(os.environ.get(RESERVE_ENV, "0"))
    except ValueError:
        print(f"error: {RESERVE_ENV} must be a number of bytes", file=sys.stderr)
        return exit_codes.MERGE_USAGE
    options = MergeOptions(
        adapter=args.adapter,
        output=args.output,
        base=args.base,
        revision=args.revision,
        dtype=args.dtype,
        method=args.method,
        max_shard_size=args.max_shard_size,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
        reserve_bytes=reserve,
        checkpoint=args.checkpoint,
    )
    try:
        report = merge(options)
    except CheckpointNotFound as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.CHECKPOINT_NOT_FOUND
    except MergeError as err:
        print(f"error: {err}", file=sys.stderr)
        return exit_codes.MERGE_FAILED
    if options.checkpoint is not None:
        _log(f"checkpoint {options.checkpoint}: {report.adapter}")
    _log(
        f"merged {report.method} adapter into {report.merged_into}: {report.output} "
        f"(max |logit diff| {report.max_abs_diff:.3g} <= {report.tolerance:.3g}, "
        f"{report.seconds:.1f}s)"
    )
    for note in report.notes:
        _log(note)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
