"""Training throughput: qwenft (packing) against Qwen's finetune.py recipe (padding), one run.

Both arms train the same LoRA on the same model, the same generated dialogues (short,
multi-turn, mixed English / Chinese, shaped like the project's seed data) and the same
hardware, one epoch each, so both see the same trained tokens. qwenft runs through its real
entry point (``python -m qwenft_trainer.train --config ...``); the baseline is
``bench/qwen_finetune_baseline.py`` (HF Trainer + PEFT, every sample padded to
max_seq_length). Each arm runs in its own process, so peak memory is its own.

Reported per arm: trained tokens/s (assistant tokens / training seconds), useful-token share
(real tokens / tokens the model computed), peak memory (host RSS on CPU, CUDA max allocated
on GPU), optimizer steps, and the loss on held-out dialogues after the epoch; on GPU also MFU.

    python bench/bench_train.py                                   # CPU, tiny model, minutes
    python bench/bench_train.py --model-arch qwen2.5-1.5b --device cuda --samples 2000 \\
        --max-seq-length 2048 --rows-per-batch 4 --baseline-batch-size 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from qwenft_trainer.formats import load_conversations
from qwenft_trainer.tiny import TinyModelSpec, build_tokenizer, ensure_tiny_qwen

ROOT = Path(__file__).resolve().parents[1]
POOL = ROOT / "trainer" / "qwenft_trainer" / "assets" / "quickstart-dialogues.jsonl"
# Dense bf16 peak of common training GPUs (tensor cores, no sparsity), FLOP/s.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}
# Qwen2.5-1.5B's shape (config.json of Qwen/Qwen2.5-1.5B), for random-weight GPU runs.
QWEN25_1_5B = {
    "hidden_size": 1536,
    "intermediate_size": 8960,
    "num_hidden_layers": 28,
    "num_attention_heads": 12,
    "num_key_value_heads": 2,
    "vocab_size": 151936,
    "max_position_embeddings": 32768,
    "rope_theta": 1_000_000.0,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
}


def build_dialogues(count: int, seed: int) -> list[dict[str, Any]]:
    """Records like the seed's: 1-3 exchanges, some system prompts, both record formats."""
    rng = random.Random(seed)
    exchanges: list[tuple[str, str]] = []
    systems: list[str] = []
    for conv in load_conversations(POOL):
        turns = list(conv.messages)
        if turns[0].role == "system":
            systems.append(turns.pop(0).content)
        exchanges += [(u.content, a.content) for u, a in zip(turns[::2], turns[1::2], strict=False)]
    records: list[dict[str, Any]] = []
    for n in range(count):
        messages: list[dict[str, str]] = []
        if rng.random() < 0.2:
            messages.append({"role": "system", "content": rng.choice(systems)})
        for user, assistant in rng.sample(exchanges, rng.choice([1, 1, 2, 2, 3])):
            messages += [
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
            ]
        if n % 2:
            records.append({"training_sample": {"domain": "bench", "conversations": messages}})
        else:
            records.append({"conversation_id": f"bench-{n}", "dialogue_sequence": messages})
    return records


def write_jsonl(path: Path, records: list[dict[str, Any]]) -> Path:
    lines = (json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def build_model(arch: str, path: Path) -> Path:
    """The tiny test model, or random weights in Qwen2.5-1.5B's shape (bf16, on the GPU)."""
    if arch == "tiny":
        return ensure_tiny_qwen(path)
    if (path / "config.json").exists():
        return path
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    path.mkdir(parents=True, exist_ok=True)
    build_tokenizer(path, vocab_size=TinyModelSpec().vocab_size)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(Qwen2Config(**QWEN25_1_5B, dtype="bfloat16"))
    model.to(torch.bfloat16).save_pretrained(str(path))
    return path


def run_measured(command: list[str], log: Path) -> tuple[float, int]:
    """Run a child process; (seconds, its peak RSS in bytes)."""
    start = time.perf_counter()
    with log.open("w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{' '.join(command[:4])} failed; see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - start, usage.ru_maxrss * 1024


def qwenft_config(args: argparse.Namespace, model: Path, data: Path, out: Path) -> dict[str, Any]:
    return {
        "model": {"name_or_path": str(model)},
        "data": {"path": str(data)},
        "method": "lora",
        "lora": {"r": args.lora_r, "alpha": 2 * args.lora_r, "dropout": 0.05},
        "training": {
            "epochs": 1,
            "per_device_batch_size": args.rows_per_batch,
            "gradient_accumulation_steps": args.grad_accum,
            "learning_rate": args.learning_rate,
            "max_seq_length": args.max_seq_length,
            "precision": "bf16" if args.device == "cuda" else "fp32",
            "gradient_checkpointing": False,
            "packing": True,
            "seed": args.seed,
        },
        "checkpoint": {"save_steps": 1_000_000},
        "output_dir": str(out),
        "run_name": "bench",
        "metrics_port": 0,
        "termination_log": str(out / "termination-log"),
    }


def useful_share(config_path: Path, *, cuda: bool) -> tuple[int, int]:
    """(real, computed) tokens of the batches qwenft's own dataset and collator produce.

    On CUDA the attention kernel may pad every row to max_seq_length (flex_attention).
    """
    from qwenft_trainer.attention import row_length
    from qwenft_trainer.config import load_config
    from qwenft_trainer.modeling import choose_attention, load_tokenizer
    from qwenft_trainer.train import build_collator, build_datasets

    config = load_config(config_path)
    tokenizer = load_tokenizer(config.model)
    items, _ = build_datasets(config, tokenizer)
    kernel = choose_attention(config, cuda=cuda).implementation
    rows = row_length(kernel, config.training.max_seq_length)
    collate = build_collator(config, tokenizer, row_length=rows)
    random.Random(config.training.seed).shuffle(items)
    size = config.training.per_device_batch_size
    real = sum(len(item["input_ids"]) for item in items)
    computed = sum(
        collate(items[i : i + size])["input_ids"].numel() for i in range(0, len(items), size)
    )
    return real, computed


def find_adapter(out: Path) -> Path:
    found = [p.parent for p in out.rglob("adapter_config.json") if "checkpoint-" not in str(p)]
    if not found:
        sys.exit(f"no adapter saved under {out}")
    return found[0]


def eval_loss(model_dir: Path, adapter: Path, data: Path, max_len: int, device: str) -> float:
    """Mean loss per assistant token on held-out dialogues, the same way for both arms."""
    import torch
    from peft import PeftModel
    from qwenft_trainer.data import tokenize_all
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(device)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for sample in tokenize_all(load_conversations(data), tokenizer, max_len):
            ids = torch.tensor([sample.input_ids], device=device)
            labels = torch.tensor([sample.labels], device=device)
            n = int((labels[:, 1:] != -100).sum())
            total += float(model(input_ids=ids, labels=labels).loss) * n
            count += n
    return total / count


def flops_per_token(config: dict[str, Any], context: float) -> float:
    """Training FLOPs per token, PaLM convention: 6·N (matmul weights, lm_head included)
    plus 12·layers·hidden·context for attention."""
    h, layers = config["hidden_size"], config["num_hidden_layers"]
    kv = h * config["num_key_value_heads"] // config["num_attention_heads"]
    per_layer = h * (2 * h + 2 * kv) + 3 * h * config["intermediate_size"]
    matmul_weights = layers * per_layer + config["vocab_size"] * h
    return float(6 * matmul_weights + 12 * layers * h * context)


def mfu(model_dir: Path, tokens_per_s: float, context: float) -> float | None:
    """Model FLOPs utilisation of the real tokens, against the GPU's dense bf16 peak."""
    import torch

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    if peak is None:
        return None
    config = json.loads((model_dir / "config.json").read_text())
    return flops_per_token(config, context) * tokens_per_s / peak


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-arch", choices=["tiny", "qwen2.5-1.5b"], default="tiny")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--samples", type=int, default=1000, help="training dialogues")
    parser.add_argument("--eval-samples", type=int, default=100)
    parser.add_argument("--max-seq-length", type=int, default=512, help="finetune.py's 512")
    parser.add_argument("--rows-per-batch", type=int, default=1, help="qwenft: packed rows")
    parser.add_argument("--baseline-batch-size", type=int, default=4, help="padded samples")
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qwenft-bench"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = build_model(args.model_arch, work / f"model-{args.model_arch}")
    records = build_dialogues(args.samples + args.eval_samples, args.seed)
    train = write_jsonl(work / "train.jsonl", records[: args.samples])
    held_out = write_jsonl(work / "eval.jsonl", records[args.samples :])

    ours_out, base_out = work / "qwenft", work / "baseline"
    for path in (ours_out, base_out):
        subprocess.run(["rm", "-rf", str(path)], check=True)
        path.mkdir(parents=True)
    config_path = ours_out / "train.yaml"
    config_path.write_text(yaml.safe_dump(qwenft_config(args, model, train, ours_out)))
    print(f"qwenft: training {args.samples} dialogues (packing on) ...", flush=True)
    ours_s, ours_rss = run_measured(
        [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config_path)],
        work / "qwenft.log",
    )
    ours = json.loads((ours_out / "summary.json").read_text())
    real, computed = useful_share(config_path, cuda=args.device == "cuda")
    print("baseline: Qwen finetune.py recipe (padding to max length) ...", flush=True)
    base_s, base_rss = run_measured(
        [sys.executable, str(ROOT / "bench" / "qwen_finetune_baseline.py"),
         "--model", str(model), "--data", str(train), "--output", str(base_out),
         "--max-seq-length", str(args.max_seq_length),
         "--batch-size", str(args.baseline_batch_size), "--grad-accum", str(args.grad_accum),
         "--learning-rate", str(args.learning_rate), "--lora-r", str(args.lora_r),
         "--lora-alpha", str(2 * args.lora_r),
         "--precision", "bf16" if args.device == "cuda" else "fp32", "--seed", str(args.seed)],
        work / "baseline.log",
    )  # fmt: skip
    base = json.loads((base_out / "result.json").read_text())
    trained = base["trained_tokens"]  # same data, one epoch: the same for both arms
    print("evaluating both adapters on held-out dialogues ...", flush=True)
    rows: dict[str, tuple[Any, Any]] = {
        "trained tokens/s": (trained / ours["wall_seconds"], trained / base["wall_seconds"]),
        "useful-token share": (real / computed, base["real_tokens"] / base["computed_tokens"]),
        "computed tokens": (computed, base["computed_tokens"]),
        "optimizer steps": (ours["steps"], base["steps"]),
        "training seconds": (ours["wall_seconds"], base["wall_seconds"]),
        "process seconds": (ours_s, base_s),
        "held-out loss": (
            eval_loss(model, find_adapter(ours_out), held_out, args.max_seq_length, args.device),
            eval_loss(model, find_adapter(base_out), held_out, args.max_seq_length, args.device),
        ),
    }
    if args.device == "cuda":
        gib = 2**30
        rows["peak GPU memory GiB"] = (
            ours["peak_gpu_memory_bytes"] / gib,
            base["peak_gpu_memory_bytes"] / gib,
        )
        # PaLM counts attention over the sequence length T: here the average dialogue.
        context = real / max(1, args.samples)
        rows["MFU"] = tuple(  # type: ignore[assignment]
            mfu(model, real / s, context) for s in (ours["wall_seconds"], base["wall_seconds"])
        )
    else:
        rows["peak RSS MiB"] = (ours_rss / 2**20, base_rss / 2**20)
    print(f"\n{args.model_arch} on {args.device}, {args.samples} dialogues, {trained:,.0f} "
          f"trained tokens each, max_seq_length {args.max_seq_length}\n")  # fmt: skip
    print(f"| {'metric':<20} | {'qwenft':>12} | {'baseline':>12} | {'ratio':>7} |")
    print(f"|{'-' * 22}|{'-' * 14}|{'-' * 14}|{'-' * 9}|")
    for name, (a, b) in rows.items():
        ratio = f"{a / b:.2f}x" if isinstance(a, int | float) and b else "-"
        fa, fb = (f"{v:,.3f}" if isinstance(v, float) else f"{v or '-':,}" for v in (a, b))
        print(f"| {name:<20} | {fa:>12} | {fb:>12} | {ratio:>7} |")
    (work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    speedup, share = rows["trained tokens/s"][0] / rows["trained tokens/s"][1], real / computed
    ok = speedup >= 1.5 and share >= 0.95
    print(f"\ngoals (share >= 0.95, speed-up >= 1.5x): {'met' if ok else 'NOT met'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
