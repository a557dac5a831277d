"""Training throughput and memory: qwenft against TRL's SFTTrainer and Qwen's recipe, one run.

Three arms train the same LoRA on the same model, the same generated dialogues (short,
multi-turn, mixed English / Chinese, shaped like the project's seed data) and the same
hardware, one epoch each, so all see the same trained tokens:

- qwenft, through its real entry point (``python -m qwenft_trainer.train --config ...``):
  packing on, its loss path from ``training.kernels: auto``;
- TRL (``bench/trl_sft_baseline.py``): ``SFTTrainer`` with packing on (its default ``bfd``
  strategy), the same LoRA, optimizer settings, batch tokens and gradient checkpointing;
- the Qwen recipe (``bench/qwen_finetune_baseline.py``): HF Trainer + PEFT, every sample
  padded to finetune.py's 512 tokens, the same tokens per micro-batch (4 x 512 = 2048).

The default CPU run uses Qwen's real vocabulary (151,936 embedding rows; random weights,
the tiny model's hidden size of 64, so the output head and its logits weigh what they do in
a real checkpoint's training step). Each arm runs in its own process, so peak memory is its
own. Reported per arm: trained tokens/s (assistant tokens / training seconds), useful-token
share, optimizer steps, peak memory (host RSS on CPU, CUDA max allocated on GPU) and the
loss on held-out dialogues after the epoch (on GPU also MFU), with the ratios against TRL.
Goals: against TRL >= 2x trained tokens/s, <= 0.6x peak memory, no worse held-out loss;
against the recipe >= 1.5x, useful-token share >= 0.95. It exits 1 naming every goal missed.

    python bench/bench_train.py                                   # CPU, minutes on 2 cores
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
# Rows of every Qwen2 / Qwen2.5 / Qwen3 checkpoint's embedding (the tokenizer, padded).
QWEN_VOCAB = 151_936
# How much higher qwenft's held-out loss may be than TRL's and still count as no worse.
LOSS_SLACK = 0.005
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


def build_model(arch: str, path: Path, *, vocab_size: int = QWEN_VOCAB) -> Path:
    """The tiny model at ``vocab_size`` rows, or random weights in Qwen2.5-1.5B's shape."""
    if arch == "tiny":
        return ensure_tiny_qwen(path, TinyModelSpec(model_vocab_size=vocab_size))
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
            "gradient_checkpointing": args.gradient_checkpointing,
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-arch", choices=["tiny", "qwen2.5-1.5b"], default="tiny")
    parser.add_argument(
        "--vocab-size", type=int, default=QWEN_VOCAB, help="tiny model: embedding rows"
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--samples", type=int, default=80, help="training dialogues")
    parser.add_argument("--eval-samples", type=int, default=32)
    parser.add_argument(
        "--max-seq-length", type=int, default=2048, help="qwenft and TRL: tokens per packed row"
    )
    parser.add_argument(
        "--baseline-max-seq-length", type=int, default=512, help="Qwen recipe: finetune.py's 512"
    )
    parser.add_argument("--rows-per-batch", type=int, default=1, help="qwenft, TRL: packed rows")
    parser.add_argument("--baseline-batch-size", type=int, default=4, help="padded samples")
    parser.add_argument("--grad-accum", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true", help="every arm")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=8)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/qwenft-bench"))
    return parser.parse_args(argv)


def run_qwenft(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    config_path = out / "train.yaml"
    config_path.write_text(yaml.safe_dump(qwenft_config(args, model, train, out)))
    print(f"qwenft: training {args.samples} dialogues (packing on) ...", flush=True)
    seconds, rss = run_measured(
        [sys.executable, "-m", "qwenft_trainer.train", "--config", str(config_path)],
        out.parent / "qwenft.log",
    )
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    real, computed = useful_share(config_path, cuda=args.device == "cuda")
    return {**summary, "process_seconds": seconds, "rss": rss, "real": real, "computed": computed}


def run_trl(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    print("trl: SFTTrainer, packing on (bfd) ...", flush=True)
    seconds, rss = run_measured(
        [sys.executable, str(ROOT / "bench" / "trl_sft_baseline.py"),
         "--model", str(model), "--data", str(train), "--output", str(out),
         "--max-seq-length", str(args.max_seq_length), "--batch-size", str(args.rows_per_batch),
         "--grad-accum", str(args.grad_accum), "--learning-rate", str(args.learning_rate),
         "--lora-r", str(args.lora_r), "--lora-alpha", str(2 * args.lora_r),
         "--precision", "bf16" if args.device == "cuda" else "fp32", "--seed", str(args.seed),
         *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])],
        out.parent / "trl.log",
    )  # fmt: skip
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return {**result, "process_seconds": seconds, "rss": rss}


def run_recipe(args: argparse.Namespace, model: Path, train: Path, out: Path) -> dict[str, Any]:
    print("baseline: Qwen finetune.py recipe (padding to max length) ...", flush=True)
    seconds, rss = run_measured(
        [sys.executable, str(ROOT / "bench" / "qwen_finetune_baseline.py"),
         "--model", str(model), "--data", str(train), "--output", str(out),
         "--max-seq-length", str(args.baseline_max_seq_length),
         "--batch-size", str(args.baseline_batch_size), "--grad-accum", str(args.grad_accum),
         "--learning-rate", str(args.learning_rate), "--lora-r", str(args.lora_r),
         "--lora-alpha", str(2 * args.lora_r),
         "--precision", "bf16" if args.device == "cuda" else "fp32", "--seed", str(args.seed),
         *(["--gradient-checkpointing"] if args.gradient_checkpointing else [])],
        out.parent / "baseline.log",
    )  # fmt: skip
    result: dict[str, Any] = json.loads((out / "result.json").read_text())
    return {**result, "process_seconds": seconds, "rss": rss}


def build_rows(
    args: argparse.Namespace,
    model: Path,
    arms: dict[str, dict[str, Any]],
    losses: dict[str, float],
) -> dict[str, list[Any]]:
    """metric -> [qwenft, TRL, Qwen recipe] values."""
    ours, trl, base = arms["qwenft"], arms["trl"], arms["recipe"]
    trained = base["trained_tokens"]  # same data, one epoch: the same in every arm
    per_second = [trained / arm["wall_seconds"] for arm in (ours, trl, base)]
    rows: dict[str, list[Any]] = {
        "trained tokens/s": per_second,
        "useful-token share": [
            ours["real"] / ours["computed"],
            None,
            base["real_tokens"] / base["computed_tokens"],
        ],
        "computed tokens": [ours["computed"], None, base["computed_tokens"]],
        "optimizer steps": [ours["steps"], trl["steps"], base["steps"]],
        "training seconds": [arm["wall_seconds"] for arm in (ours, trl, base)],
        "process seconds": [arm["process_seconds"] for arm in (ours, trl, base)],
        "held-out loss": [losses["qwenft"], losses["trl"], losses["recipe"]],
    }
    if args.device == "cuda":
        gib = 2**30
        rows["peak GPU memory GiB"] = [
            arm["peak_gpu_memory_bytes"] / gib for arm in (ours, trl, base)
        ]
        # PaLM counts attention over the sequence length T: here the average dialogue.
        context = ours["real"] / max(1, args.samples)
        rows["MFU"] = [mfu(model, real_rate, context) for real_rate in per_second]
    else:
        rows["peak RSS MiB"] = [arm["rss"] / 2**20 for arm in (ours, trl, base)]
    return rows


def memory_row(rows: dict[str, list[Any]]) -> str:
    return "peak GPU memory GiB" if "peak GPU memory GiB" in rows else "peak RSS MiB"


def check_goals(rows: dict[str, list[Any]]) -> list[tuple[str, bool]]:
    """(goal, met) for every goal of the benchmark."""
    speed = rows["trained tokens/s"]
    memory = rows[memory_row(rows)]
    loss = rows["held-out loss"]
    share = rows["useful-token share"][0]
    return [
        (f"trained tokens/s >= 2x TRL's ({speed[0] / speed[1]:.2f}x)", speed[0] >= 2 * speed[1]),
        (
            f"peak memory <= 0.6x TRL's ({memory[0] / memory[1]:.2f}x)",
            memory[0] <= 0.6 * memory[1],
        ),
        (
            f"held-out loss no worse than TRL's ({loss[0]:.4f} vs {loss[1]:.4f}, "
            f"<= {1 + LOSS_SLACK:g}x)",
            loss[0] <= loss[1] * (1 + LOSS_SLACK),
        ),
        (
            f"speed-up >= 1.5x the Qwen recipe ({speed[0] / speed[2]:.2f}x)",
            speed[0] >= 1.5 * speed[2],
        ),
        (f"useful-token share >= 0.95 ({share:.3f})", share >= 0.95),
    ]


def print_table(rows: dict[str, list[Any]]) -> None:
    def cell(value: Any) -> str:
        if value is None:
            return "-"
        return f"{value:,.3f}" if isinstance(value, float) else f"{value:,}"

    def ratio(a: Any, b: Any) -> str:
        ok = isinstance(a, int | float) and isinstance(b, int | float) and b
        return f"{a / b:.2f}x" if ok else "-"

    print(f"| {'metric':<20} | {'qwenft':>12} | {'TRL':>12} | {'Qwen recipe':>12} "
          f"| {'qwenft/TRL':>10} | {'recipe/TRL':>10} |")  # fmt: skip
    print(f"|{'-' * 22}|{'-' * 14}|{'-' * 14}|{'-' * 14}|{'-' * 12}|{'-' * 12}|")
    for name, (a, t, b) in rows.items():
        print(f"| {name:<20} | {cell(a):>12} | {cell(t):>12} | {cell(b):>12} "
              f"| {ratio(a, t):>10} | {ratio(b, t):>10} |")  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.device == "cpu":
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    name = f"model-{args.model_arch}" + (
        f"-v{args.vocab_size}" if args.model_arch == "tiny" else ""
    )
    model = build_model(args.model_arch, work / name, vocab_size=args.vocab_size)
    records = build_dialogues(args.samples + args.eval_samples, args.seed)
    train = write_jsonl(work / "train.jsonl", records[: args.samples])
    held_out = write_jsonl(work / "eval.jsonl", records[args.samples :])

    outs = {arm: work / arm for arm in ("qwenft", "trl", "recipe")}
    for path in outs.values():
        subprocess.run(["rm", "-rf", str(path)], check=True)
        path.mkdir(parents=True)
    arms = {
        "qwenft": run_qwenft(args, model, train, outs["qwenft"]),
        "trl": run_trl(args, model, train, outs["trl"]),
        "recipe": run_recipe(args, model, train, outs["recipe"]),
    }
    print("evaluating the three adapters on held-out dialogues ...", flush=True)
    length = max(args.max_seq_length, args.baseline_max_seq_length)
    losses = {
        arm: eval_loss(model, find_adapter(out), held_out, length, args.device)
        for arm, out in outs.items()
    }
    rows = build_rows(args, model, arms, losses)
    trained = arms["recipe"]["trained_tokens"]
    if arms["trl"]["trained_tokens"] != trained:
        print(f"warning: the recipe's {args.baseline_max_seq_length}-token truncation trains "
              f"{trained:,} tokens, the packed arms {arms['trl']['trained_tokens']:,}")  # fmt: skip
    vocab = json.loads((model / "config.json").read_text()).get("vocab_size")
    print(f"\n{args.model_arch} (vocabulary {vocab:,}) on {args.device}, {args.samples} dialogues, "
          f"{trained:,.0f} trained tokens each; qwenft / TRL: {args.rows_per_batch} x "
          f"{args.max_seq_length}-token packed rows, recipe: {args.baseline_batch_size} x "
          f"{args.baseline_max_seq_length} padded; {args.grad_accum} accumulation; qwenft loss "
          f"path: {arms['qwenft'].get('loss_path', '?')}\n")  # fmt: skip
    print_table(rows)
    (work / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    goals = check_goals(rows)
    print()
    for goal, met in goals:
        print(f"goal {'met' if met else 'NOT met'}: {goal}")
    missed = [goal for goal, met in goals if not met]
    if missed:
        print(f"\n{len(missed)} goal(s) not met: " + "; ".join(missed))
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
